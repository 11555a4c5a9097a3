"""Numba kernels of the lossless float codec: field split, rANS, checksum.

rANS (FORMAT.md, "rANS stream"):

- 8 or 32 interleaved lanes (32 in files written since archive version 3),
  element ``i`` is coded by lane ``i % lanes``;
- 32-bit states kept in ``[2**15, 2**31)``, renormalised by 16-bit words, at
  most one word per symbol;
- frequencies quantised to 12 bits (each table sums to 4096);
- decoding is table driven: one 4096-entry ``uint64`` table per model; the
  entry for slot ``x & 4095`` packs ``bias = slot - cum`` (bits 0-15), the
  frequency (bits 16-31) and the symbol already shifted into place in the
  output word (bits 32-63), so a decode step is one load, one multiply, one
  add and a branch-free renormalisation;
- encoding divides by the frequency with ryg's exact reciprocal
  (``q = (x * rcp) >> 32 >> shift``, exact for x < 2**31).

Field split: a word of ``W`` bits (sign, exponent, mantissa) becomes a symbol
of ``S`` bits, ``(w >> R) & (2**S - 1)`` with ``R = W - 1 - S`` (the exponent
and the leading mantissa bits), and ``R + 1`` raw bits (the sign above the
``R`` low mantissa bits), stored as ``(R + 1) // 8`` little-endian bytes per
element followed by the other ``(R + 1) % 8`` high bits, bit-packed by
blocks of 8 elements.

All kernels release the GIL (``nogil``) so that chunks run in parallel
threads. Decoders never read or write outside their arrays whatever the
bytes; a corrupted stream ends with a False status (word count or final
state mismatch) or a wrong checksum, never a crash.
"""
import sys

import numpy as np
from numba import njit

if sys.byteorder != "little":  # the format is little-endian and the kernels read words natively
    raise ImportError("ssmzip.kv needs a little-endian machine")

PROB_BITS = 12
PROB_SCALE = 1 << PROB_BITS
PROB_MASK = PROB_SCALE - 1
RANS_L = 1 << 15
LANES = 8
STATE_WORDS = 2 * LANES  # the 8 final encoder states (low word, high word) open an 8-lane stream

_U = np.uint64


# ---------------------------------------------------------------- statistics

@njit(cache=True, nogil=True)
def hist_symbols(words, rbits, smask, hist4):
    """hist4: int64[4, smask + 1], zeroed; counts of (w >> rbits) & smask in 4 sub-histograms."""
    n = words.shape[0]
    n4 = n & ~3
    for i in range(0, n4, 4):
        hist4[0, (np.int64(words[i]) >> rbits) & smask] += 1
        hist4[1, (np.int64(words[i + 1]) >> rbits) & smask] += 1
        hist4[2, (np.int64(words[i + 2]) >> rbits) & smask] += 1
        hist4[3, (np.int64(words[i + 3]) >> rbits) & smask] += 1
    for i in range(n4, n):
        hist4[0, (np.int64(words[i]) >> rbits) & smask] += 1


@njit(cache=True, nogil=True)
def hist_channels2d(rows, rbits, smask, remap, hist):
    """hist: int32[C, nsym], zeroed; counts of symbol indices per column of rows[r, C]."""
    for i in range(rows.shape[0]):
        for c in range(rows.shape[1]):
            hist[c, remap[(np.int64(rows[i, c]) >> rbits) & smask]] += 1


@njit(cache=True, nogil=True)
def hist_groups(words, rbits, smask, remap, C, ctxmap, hist):
    """hist: int64[T, nsym], zeroed; counts of symbol indices per group ctxmap[i % C] (n % C == 0)."""
    T, nsym = hist.shape
    gbase = np.empty(C, np.int64)
    for c in range(C):
        gbase[c] = np.int64(ctxmap[c]) * nsym
    flat = np.zeros(T * nsym, np.int32)
    rows = words.shape[0] // C
    for i in range(rows):
        o = i * C
        for c in range(C):
            flat[gbase[c] + remap[(np.int64(words[o + c]) >> rbits) & smask]] += 1
    for t in range(T):
        for s in range(nsym):
            hist[t, s] = flat[t * nsym + s]


NLOGN = np.zeros(1 << 12)  # k * log2(k): channel_bits looks small counts up instead of taking logs
NLOGN[1:] = np.arange(1, 1 << 12) * np.log2(np.arange(1, 1 << 12))


@njit(cache=True, nogil=True, inline="always")
def _nlogn(k, table):
    return table[k] if k < table.shape[0] else k * np.log2(float(k))


@njit(cache=True, nogil=True)
def channel_bits(hist, nlogn):
    """Sum over channels of the order-0 bits of each channel's histogram, with
    the Miller-Madow correction ((m - 1) / (2 ln 2) bits for m used symbols)
    so that short channels do not look better than they are. nlogn: NLOGN."""
    b = 0.0
    for c in range(hist.shape[0]):
        tot = 0
        s = 0.0
        m = 0
        for j in range(hist.shape[1]):
            h = np.int64(hist[c, j])
            if h:
                tot += h
                m += 1
                s += _nlogn(h, nlogn)
        b += _nlogn(tot, nlogn) - s
        if m > 1:
            b += (m - 1) * 0.7213475204444817
    return b


@njit(cache=True, nogil=True)
def normalize_freqs(counts, freqs):
    """Quantise counts (zeros allowed) to frequencies summing to 4096.

    Every symbol with a count gets a frequency >= 1; the rounding error is
    corrected greedily where it costs fewest bits. Returns False if no symbol
    is present or if more than 4096 are.
    """
    m = counts.shape[0]
    total = 0
    present = 0
    for s in range(m):
        total += np.int64(counts[s])
        if counts[s] > 0:
            present += 1
    if total == 0 or present > PROB_SCALE:
        return False
    fsum = 0
    for s in range(m):
        c = np.int64(counts[s])
        if c > 0:
            f = (c * PROB_SCALE + total // 2) // total
            if f < 1:
                f = 1
            freqs[s] = f
            fsum += f
        else:
            freqs[s] = 0
    while fsum != PROB_SCALE:
        best = -1
        bestv = 0.0
        if fsum > PROB_SCALE:
            for s in range(m):
                f = np.int64(freqs[s])
                if f > 1:
                    v = counts[s] * np.log2(f / (f - 1.0))
                    if best < 0 or v < bestv:
                        best = s
                        bestv = v
            freqs[best] -= 1
            fsum -= 1
        else:
            for s in range(m):
                f = np.int64(freqs[s])
                if f > 0:
                    v = counts[s] * np.log2((f + 1.0) / f)
                    if best < 0 or v > bestv:
                        best = s
                        bestv = v
            freqs[best] += 1
            fsum += 1
    return True


@njit(cache=True, nogil=True)
def quantized_bits(counts, freqs):
    """normalize_freqs(counts, freqs), then the exact bits of the counts coded
    with those frequencies (0.0 if there are none). Summed in symbol order, as
    native/split_encode.c does, so that both pick the same models."""
    if not normalize_freqs(counts, freqs):
        return 0.0
    b = 0.0
    for s in range(counts.shape[0]):
        c = np.int64(counts[s])
        if c > 0:
            b += c * (PROB_BITS - np.log2(float(freqs[s])))
    return b


@njit(cache=True, nogil=True)
def entropy_bits(counts):
    """Order-0 code length in bits of a histogram (float64)."""
    n = 0
    for s in range(counts.shape[0]):
        n += np.int64(counts[s])
    if n == 0:
        return 0.0
    b = 0.0
    ln = np.log2(float(n))
    for s in range(counts.shape[0]):
        c = np.int64(counts[s])
        if c > 0:
            b += c * (ln - np.log2(float(c)))
    return b


@njit(cache=True, nogil=True)
def cluster_channels(hist, T, iters, assign):
    """Group the C channel histograms (int32[C, nsym]) into at most T groups.

    Start from equal-count groups of the channels sorted by mean symbol
    index, then move each channel to the group whose distribution codes it
    best (a few k-means passes with cross-entropy as the distance). assign:
    int32[C] out. Returns the order-0 bits of the grouped data.
    """
    C, nsym = hist.shape
    # sparse copy of the histograms: (symbol, count) of the non-zero entries
    nnz = 0
    for c in range(C):
        for s in range(nsym):
            if hist[c, s]:
                nnz += 1
    start = np.empty(C + 1, np.int64)
    sym = np.empty(nnz, np.int64)
    cnt = np.empty(nnz, np.float64)
    mean = np.empty(C, np.float64)
    k = 0
    for c in range(C):
        start[c] = k
        s0 = 0.0
        s1 = 0.0
        for s in range(nsym):
            h = hist[c, s]
            if h:
                sym[k] = s
                cnt[k] = h
                k += 1
                s0 += h
                s1 += h * s
        mean[c] = s1 / s0 if s0 > 0 else 0.0
    start[C] = k
    order = np.argsort(mean, kind="mergesort")  # stable: ties keep channel order, as in C
    for j in range(C):
        assign[order[j]] = (j * T) // C
    gh = np.zeros((T, nsym), np.int64)
    logp = np.empty((nsym, T), np.float64)  # symbol-major: the group loop below is contiguous
    v = np.empty(T, np.float64)
    for it in range(iters + 1):
        gh[:, :] = 0
        for c in range(C):
            g = assign[c]
            for j in range(start[c], start[c + 1]):
                gh[g, sym[j]] += np.int64(cnt[j])
        if it == iters:
            break
        for g in range(T):
            tot = 0.0
            for s in range(nsym):
                tot += gh[g, s]
            # add-half smoothing so that a symbol new to a group costs finite bits
            den = np.log2(tot + 0.5 * nsym)
            for s in range(nsym):
                logp[s, g] = den - np.log2(gh[g, s] + 0.5)
        moved = 0
        for c in range(C):
            v[:] = 0.0
            for j in range(start[c], start[c + 1]):
                k = cnt[j]
                row = sym[j]
                for g in range(T):
                    v[g] += k * logp[row, g]
            best = assign[c]
            bestv = 1e300
            for g in range(T):
                if v[g] < bestv:
                    bestv = v[g]
                    best = g
            if best != assign[c]:
                moved += 1
                assign[c] = best
        if moved == 0:  # converged: recount and stop
            gh[:, :] = 0
            for c in range(C):
                g = assign[c]
                for j in range(start[c], start[c + 1]):
                    gh[g, sym[j]] += np.int64(cnt[j])
            break
    bits = 0.0
    for g in range(T):
        bits += entropy_bits(gh[g])
    return bits


@njit(cache=True, nogil=True)
def group_hist(hist, assign, T, out):
    """out: int64[T, nsym] = sum of the channel histograms of each group."""
    C, nsym = hist.shape
    out[:, :] = 0
    for c in range(C):
        g = assign[c]
        for s in range(nsym):
            out[g, s] += hist[c, s]


# ---------------------------------------------------------------- tables

@njit(cache=True, nogil=True)
def build_enc_table(freqs, enc0, enc1):
    """freqs: uint32[ntab, nsym] -> flat uint64[ntab * nsym] tables
    enc0 = x_max | bias << 32, enc1 = rcp | cmpl << 32 | shift << 48."""
    ntab, nsym = freqs.shape
    for t in range(ntab):
        cum = 0
        for s in range(nsym):
            j = t * nsym + s
            f = np.int64(freqs[t, s])
            if f == 0:
                enc0[j] = 0
                enc1[j] = 0
                continue
            if f < PROB_SCALE:
                xmax = ((RANS_L >> PROB_BITS) << 16) * f
            else:
                xmax = np.int64(0xFFFFFFFF)
            cmpl = PROB_SCALE - f
            if f < 2:
                rcp = np.int64(0xFFFFFFFF)
                shift = 0
                bias = cum + PROB_SCALE - 1
            else:
                shift = 0
                while f > (np.int64(1) << shift):
                    shift += 1
                rcp = ((np.int64(1) << (shift + 31)) + f - 1) // f
                shift -= 1
                bias = cum
            enc0[j] = _U(xmax | (bias << 32))
            enc1[j] = _U(rcp | (cmpl << 32) | (shift << 48))
            cum += f


@njit(cache=True, nogil=True)
def build_dec_table(freqs, outvals, dec):
    """freqs: uint32[ntab, nsym] (rows sum to 4096), outvals: int64[nsym] -> dec: uint64[ntab * 4096]."""
    ntab, nsym = freqs.shape
    for t in range(ntab):
        base = t << PROB_BITS
        cum = 0
        for s in range(nsym):
            f = np.int64(freqs[t, s])
            hi = (np.int64(outvals[s]) << 32) | (f << 16)
            for j in range(f):
                dec[base + cum + j] = _U(hi | j)
            cum += f


@njit(cache=True, nogil=True)
def period_map(C, ctxmap, scale, lanes=LANES):
    """Table offsets (ctxmap[c % C] * scale) over one period P = lcm(C, lanes)."""
    g = C
    b = lanes
    while b:
        g, b = b, g % b
    P = C * lanes // g
    m = np.empty(P, np.int64)
    for c in range(P):
        m[c] = np.int64(ctxmap[c % C]) * scale
    return m


# ---------------------------------------------------------------- encoding

@njit(cache=True, nogil=True)
def split_rest(words, rbits, nbytes, mbits, parts):
    """The raw bits r = sign << rbits | low rbits mantissa bits of each element, as
    parts: uint8[nbytes + (mbits > 0), n]; parts[b] = byte b of r (b < nbytes),
    parts[nbytes] = the mbits bits above them."""
    n = words.shape[0]
    lowmask = (np.int64(1) << rbits) - 1
    wtop = words.itemsize * 8 - 1
    mmask = (np.int64(1) << mbits) - 1
    lowbits = 8 * nbytes
    for i in range(n):
        w = np.int64(words[i])
        r = (((w >> wtop) & 1) << rbits) | (w & lowmask)
        for b in range(nbytes):
            parts[b, i] = np.uint8((r >> (8 * b)) & 0xFF)
        if mbits > 0:
            parts[nbytes, i] = np.uint8((r >> lowbits) & mmask)


@njit(cache=True, nogil=True)
def pack_bits(vals, mbits, out):
    """Bit-pack vals (each < 2**mbits), LSB first: 8 values fill mbits bytes. Returns bytes written.
    out needs 8 bytes of slack."""
    n = vals.shape[0]
    nfull = n - (n & 7)
    o = 0
    for i in range(0, nfull, 8):
        v = (np.int64(vals[i]) | (np.int64(vals[i + 1]) << mbits) | (np.int64(vals[i + 2]) << (2 * mbits))
             | (np.int64(vals[i + 3]) << (3 * mbits)) | (np.int64(vals[i + 4]) << (4 * mbits))
             | (np.int64(vals[i + 5]) << (5 * mbits)) | (np.int64(vals[i + 6]) << (6 * mbits))
             | (np.int64(vals[i + 7]) << (7 * mbits)))
        for k in range(8):
            out[o + k] = np.uint8((v >> (8 * k)) & 0xFF)
        o += mbits
    v = np.int64(0)
    for j in range(n - nfull):
        v |= np.int64(vals[nfull + j]) << (j * mbits)
    nb = ((n - nfull) * mbits + 7) >> 3
    for k in range(nb):
        out[o + k] = np.uint8((v >> (8 * k)) & 0xFF)
    return o + nb


@njit(cache=True, nogil=True, inline="always")
def _estep(x, w, rbits, smask, remap, enc0, enc1, tb, out, pos):
    j = _U(tb + remap[_U((np.int64(w) >> rbits) & smask)])
    e0 = np.int64(enc0[j])
    e1 = np.int64(enc1[j])
    nd = x >= (e0 & 0xFFFFFFFF)
    out[_U(pos - 1)] = np.uint16(x & 0xFFFF)
    y = x >> 16
    x = y if nd else x
    pos -= np.int64(nd)
    q = ((x * (e1 & 0xFFFFFFFF)) >> 32) >> (e1 >> 48)
    x = x + (e0 >> 32) + q * ((e1 >> 32) & 0xFFFF)
    return x, pos


@njit(cache=True, nogil=True)
def encode_symbols(words, rbits, smask, C, ctxmap, remap, enc0, enc1, nsym, lanes, out):
    """rANS-code the symbols of one chunk with `lanes` interleaved states
    (element i on lane i % lanes); table of element i is ctxmap[i % C].

    out: uint16 buffer with room for n + 2 * lanes + 1 words, filled from its
    end. Returns the number of words used (the stream is out[-nwords:]).
    """
    n = words.shape[0]
    pos = out.shape[0]
    st = np.full(lanes, RANS_L, np.int64)
    lane = (n - 1) % lanes if n else 0
    c = (n - 1) % C if n else 0
    for i in range(n - 1, -1, -1):
        tb = np.int64(ctxmap[c]) * nsym
        st[lane], pos = _estep(st[lane], words[i], rbits, smask, remap, enc0, enc1, tb, out, pos)
        lane = lane - 1 if lane > 0 else lanes - 1
        c = c - 1 if c > 0 else C - 1
    return out.shape[0] - flush_states(st, out, pos)


@njit(cache=True, nogil=True, inline="always")
def flush_states(st, out, pos):
    """Push the final encoder states (the last lane first, high word before low
    word) below out[pos]; returns the new position: the stream opens with lane 0."""
    for lane in range(st.shape[0] - 1, -1, -1):
        x = st[lane]
        pos -= 1
        out[pos] = np.uint16(x >> 16)
        pos -= 1
        out[pos] = np.uint16(x & 0xFFFF)
    return pos


# ---------------------------------------------------------------- decoding

@njit(cache=True, nogil=True, inline="always")
def _dstep(x, dec, base, stream, p, out, i, rv):
    """One rANS decode step: symbol value (already in place) | raw bits rv -> out[i]."""
    e = np.int64(dec[_U(base + (x & PROB_MASK))])
    x = ((e >> 16) & 0xFFFF) * (x >> PROB_BITS) + (e & 0xFFFF)
    w = np.int64(stream[_U(p)])
    nd = x < RANS_L
    y = (x << 16) | w
    x = y if nd else x
    p += np.int64(nd)
    out[_U(i)] = (e >> 32) | rv
    return x, p


@njit(cache=True, nogil=True, inline="always")
def _dblock(x0, x1, x2, x3, x4, x5, x6, x7, p, dec, b0, b1, b2, b3, b4, b5, b6, b7, stream, out, i,
            r0, r1, r2, r3, r4, r5, r6, r7):
    x0, p = _dstep(x0, dec, b0, stream, p, out, i, r0)
    x1, p = _dstep(x1, dec, b1, stream, p, out, i + 1, r1)
    x2, p = _dstep(x2, dec, b2, stream, p, out, i + 2, r2)
    x3, p = _dstep(x3, dec, b3, stream, p, out, i + 3, r3)
    x4, p = _dstep(x4, dec, b4, stream, p, out, i + 4, r4)
    x5, p = _dstep(x5, dec, b5, stream, p, out, i + 5, r5)
    x6, p = _dstep(x6, dec, b6, stream, p, out, i + 6, r6)
    x7, p = _dstep(x7, dec, b7, stream, p, out, i + 7, r7)
    return x0, x1, x2, x3, x4, x5, x6, x7, p


@njit(cache=True, nogil=True, inline="always")
def _load56(packed64, ob):
    """The 56 bits at byte offset ob of the little-endian bit string held in packed64."""
    q = ob >> 3
    s = _U((ob & 7) << 3)
    lo = packed64[_U(q)]
    hi = packed64[_U(q + 1)]
    v = (lo >> s) | ((hi << _U(1)) << (_U(63) - s))
    return np.int64(v & _U(0x00FFFFFFFFFFFFFF))


@njit(cache=True, nogil=True)
def _combine1(p0, rbits, wtop, out, a, b):
    lowmask = (np.int64(1) << rbits) - 1
    for i in range(a, b):
        r = np.int64(p0[i])
        out[i] |= ((r >> rbits) << wtop) | (r & lowmask)


@njit(cache=True, nogil=True)
def _combine(parts, nbytes, mbits, packed, rbits, out, a, b):
    """OR the raw bits of elements [a, b) (a multiple of 8) into out.

    Planes parts[0:nbytes] hold the low bytes; the mbits bits above them are
    parts[nbytes] if present, else bit-packed in packed.
    """
    if nbytes == 0 and mbits == 0:
        return
    wtop = out.itemsize * 8 - 1
    if nbytes == 1 and mbits == 0:
        _combine1(parts[0], rbits, wtop, out, a, b)
        return
    lowmask = (np.int64(1) << rbits) - 1
    lowbits = 8 * nbytes
    if mbits == 0 or parts.shape[0] > nbytes:
        np_ = parts.shape[0]
        for i in range(a, b):
            r = np.int64(0)
            for k in range(np_):
                r |= np.int64(parts[k, i]) << (8 * k)
            out[i] |= ((r >> rbits) << wtop) | (r & lowmask)
        return
    mmask = (np.int64(1) << mbits) - 1
    ob = (a * mbits) >> 3
    i = a
    while i < b:
        v = np.int64(0)
        k = 0
        while k < mbits and ob + k < packed.shape[0]:
            v |= np.int64(packed[ob + k]) << (8 * k)
            k += 1
        ob += mbits
        e = min(b, i + LANES)
        for j in range(e - i):
            r = ((v >> (j * mbits)) & mmask) << lowbits
            for k in range(nbytes):
                r |= np.int64(parts[k, i + j]) << (8 * k)
            out[i + j] |= ((r >> rbits) << wtop) | (r & lowmask)
        i = e


SUB = 4096  # elements per pass of the generic path (symbols, then raw bits) to stay in L1/L2


@njit(cache=True, nogil=True)
def rest_lut(rbits, wbits, nvals):
    """Output bits of each raw value r < nvals: the sign (bit rbits of r) on top, the mantissa below."""
    lut = np.empty(nvals, np.int64)
    lowmask = (np.int64(1) << rbits) - 1
    for r in range(nvals):
        lut[r] = (((r >> rbits) & 1) << (wbits - 1)) | (r & lowmask)
    return lut


@njit(cache=True, nogil=True)
def _read_states(stream, nwords, st):
    """The stream's opening states (low word, high word per lane) into st;
    False if the stream is too short or a state lies outside [L, 2**31)."""
    lanes = st.shape[0]
    if nwords < 2 * lanes or nwords > stream.shape[0]:
        return False
    for lane in range(lanes):
        x = np.int64(stream[2 * lane]) | (np.int64(stream[2 * lane + 1]) << 16)
        if x < RANS_L or x >= (np.int64(1) << 31):
            return False
        st[lane] = x
    return True


@njit(cache=True, nogil=True)
def decode_chunk(stream, nwords, C, ctxmap, dec, parts, nbytes, mbits, packed, packed64, rbits, out):
    """Decode one split chunk into out (uint8/16/32[n]).

    stream: uint16[nwords]; dec: the tables; raw bits as in _combine (when
    they are only bit-packed, packed must have 16 bytes of slack after them
    and packed64 be the same memory viewed as uint64, for the fused path).
    Returns True iff all words were consumed and every lane ended in the
    encoder's initial state.
    """
    n = out.shape[0]
    st = np.empty(LANES, np.int64)
    if not _read_states(stream, nwords, st):
        return False
    x0 = st[0]
    x1 = st[1]
    x2 = st[2]
    x3 = st[3]
    x4 = st[4]
    x5 = st[5]
    x6 = st[6]
    x7 = st[7]
    bmap = period_map(C, ctxmap, PROB_SCALE)
    P = bmap.shape[0]
    single = True
    for c in range(P):
        if bmap[c] != 0:
            single = False
    wbits = out.itemsize * 8
    # fused raw bits: mode 1 = one byte plane, mode 2 = bit-packed only, 0 = generic (separate pass)
    mode = 0
    if nbytes == 1 and mbits == 0 and parts.shape[0] == 1:
        mode = 1
    elif nbytes == 0 and mbits > 0 and parts.shape[0] == 0 and 8 * packed64.shape[0] >= (n * mbits + 7) // 8 + 16:
        mode = 2
    lut = rest_lut(rbits, wbits, 256 if mode == 1 else (1 << mbits))
    p = STATE_WORDS
    i = 0
    ci = 0
    nblk = n - (n & (LANES - 1))
    z = np.int64(0)
    if mode == 1 and single:
        p0 = parts[0]
        while i < nblk and p + LANES <= nwords:
            x0, x1, x2, x3, x4, x5, x6, x7, p = _dblock(
                x0, x1, x2, x3, x4, x5, x6, x7, p, dec, z, z, z, z, z, z, z, z, stream, out, i,
                lut[p0[i]], lut[p0[i + 1]], lut[p0[i + 2]], lut[p0[i + 3]],
                lut[p0[i + 4]], lut[p0[i + 5]], lut[p0[i + 6]], lut[p0[i + 7]])
            i += LANES
    elif mode == 1:
        p0 = parts[0]
        while i < nblk and p + LANES <= nwords:
            x0, x1, x2, x3, x4, x5, x6, x7, p = _dblock(
                x0, x1, x2, x3, x4, x5, x6, x7, p, dec,
                bmap[ci], bmap[ci + 1], bmap[ci + 2], bmap[ci + 3], bmap[ci + 4], bmap[ci + 5], bmap[ci + 6], bmap[ci + 7],
                stream, out, i,
                lut[p0[i]], lut[p0[i + 1]], lut[p0[i + 2]], lut[p0[i + 3]],
                lut[p0[i + 4]], lut[p0[i + 5]], lut[p0[i + 6]], lut[p0[i + 7]])
            ci = ci + LANES if ci + LANES < P else 0
            i += LANES
    elif mode == 2:
        mm = (np.int64(1) << mbits) - 1
        ob = 0
        if single:
            while i < nblk and p + LANES <= nwords:
                v = _load56(packed64, ob)
                ob += mbits
                x0, x1, x2, x3, x4, x5, x6, x7, p = _dblock(
                    x0, x1, x2, x3, x4, x5, x6, x7, p, dec, z, z, z, z, z, z, z, z, stream, out, i,
                    lut[v & mm], lut[(v >> mbits) & mm], lut[(v >> (2 * mbits)) & mm], lut[(v >> (3 * mbits)) & mm],
                    lut[(v >> (4 * mbits)) & mm], lut[(v >> (5 * mbits)) & mm], lut[(v >> (6 * mbits)) & mm],
                    lut[(v >> (7 * mbits)) & mm])
                i += LANES
        else:
            while i < nblk and p + LANES <= nwords:
                v = _load56(packed64, ob)
                ob += mbits
                x0, x1, x2, x3, x4, x5, x6, x7, p = _dblock(
                    x0, x1, x2, x3, x4, x5, x6, x7, p, dec,
                    bmap[ci], bmap[ci + 1], bmap[ci + 2], bmap[ci + 3], bmap[ci + 4], bmap[ci + 5], bmap[ci + 6], bmap[ci + 7],
                    stream, out, i,
                    lut[v & mm], lut[(v >> mbits) & mm], lut[(v >> (2 * mbits)) & mm], lut[(v >> (3 * mbits)) & mm],
                    lut[(v >> (4 * mbits)) & mm], lut[(v >> (5 * mbits)) & mm], lut[(v >> (6 * mbits)) & mm],
                    lut[(v >> (7 * mbits)) & mm])
                ci = ci + LANES if ci + LANES < P else 0
                i += LANES
    else:
        while True:
            i0 = i
            iend = min(nblk, i + SUB)
            if single:
                while i < iend and p + LANES <= nwords:
                    x0, x1, x2, x3, x4, x5, x6, x7, p = _dblock(
                        x0, x1, x2, x3, x4, x5, x6, x7, p, dec, z, z, z, z, z, z, z, z, stream, out, i,
                        z, z, z, z, z, z, z, z)
                    i += LANES
            else:
                while i < iend and p + LANES <= nwords:
                    x0, x1, x2, x3, x4, x5, x6, x7, p = _dblock(
                        x0, x1, x2, x3, x4, x5, x6, x7, p, dec,
                        bmap[ci], bmap[ci + 1], bmap[ci + 2], bmap[ci + 3], bmap[ci + 4], bmap[ci + 5], bmap[ci + 6],
                        bmap[ci + 7], stream, out, i, z, z, z, z, z, z, z, z)
                    ci = ci + LANES if ci + LANES < P else 0
                    i += LANES
            _combine(parts, nbytes, mbits, packed, rbits, out, i0, i)
            if i == iend and iend < nblk:
                continue
            break
    st[0] = x0
    st[1] = x1
    st[2] = x2
    st[3] = x3
    st[4] = x4
    st[5] = x5
    st[6] = x6
    st[7] = x7
    return _decode_rest(st, stream, nwords, p, dec, bmap, out, i, parts, nbytes, mbits, packed, rbits, i)


@njit(cache=True, nogil=True)
def _decode_rest(st, stream, nwords, p, dec, bmap, out, i, parts, nbytes, mbits, packed, rbits, i0):
    """Elements [i, n) one at a time, every read checked; then the raw bits of
    [i0, n) and the final checks: all words read, every lane back at L."""
    n = out.shape[0]
    lanes = st.shape[0]
    P = bmap.shape[0]
    while i < n:
        lane = i % lanes
        x = st[lane]
        e = np.int64(dec[bmap[i % P] + (x & PROB_MASK)])
        x = ((e >> 16) & 0xFFFF) * (x >> PROB_BITS) + (e & 0xFFFF)
        if x < RANS_L:
            if p >= nwords:
                return False
            x = (x << 16) | np.int64(stream[p])
            p += 1
        st[lane] = x
        out[i] = e >> 32
        i += 1
    _combine(parts, nbytes, mbits, packed, rbits, out, i0, n)
    if p != nwords:
        return False
    for lane in range(lanes):
        if st[lane] != RANS_L:
            return False
    return True


@njit(cache=True, nogil=True)
def decode_lanes(stream, nwords, C, ctxmap, dec, parts, nbytes, mbits, packed, rbits, lanes, out):
    """decode_chunk for any number of lanes, one element at a time: the
    reference for streams of 32 lanes (native/split.c has the fast decoder)."""
    n = out.shape[0]
    st = np.empty(lanes, np.int64)
    if not _read_states(stream, nwords, st):
        return False
    p = 2 * lanes
    # whole blocks of `lanes` elements while a block of words is left: no checks
    bmap = period_map(C, ctxmap, PROB_SCALE, lanes)
    P = bmap.shape[0]
    ci = 0
    i = 0
    while i + lanes <= n and p + lanes <= nwords:
        for lane in range(lanes):
            x = st[lane]
            e = np.int64(dec[bmap[ci + lane] + (x & PROB_MASK)])
            x = ((e >> 16) & 0xFFFF) * (x >> PROB_BITS) + (e & 0xFFFF)
            nd = x < RANS_L
            y = (x << 16) | np.int64(stream[p])
            st[lane] = y if nd else x   # a select, not a branch: renormalisation is unpredictable
            p += np.int64(nd)
            out[i + lane] = e >> 32
        i += lanes
        ci = ci + lanes if ci + lanes < P else 0
    return _decode_rest(st, stream, nwords, p, dec, bmap, out, i, parts, nbytes, mbits, packed, rbits, 0)


# ---------------------------------------------------------------- checksum

_P1 = _U(0x9E3779B185EBCA87)
_P2 = _U(0xC2B2AE3D27D4EB4F)
_P3 = _U(0x165667B19E3779F9)
_P4 = _U(0x85EBCA77C2B2AE63)
_P5 = _U(0x27D4EB2F165667C5)


@njit(cache=True, inline="always")
def _rotl(x, r):
    return (x << _U(r)) | (x >> _U(64 - r))


@njit(cache=True, inline="always")
def _round(acc, v):
    acc = acc + v * _P2
    acc = _rotl(acc, 31)
    return acc * _P1


@njit(cache=True, inline="always")
def _merge(h, v):
    h = h ^ _round(_U(0), v)
    return h * _P1 + _P4


@njit(cache=True, nogil=True)
def xxh64(data, words):
    """XXH64 (seed 0) of a contiguous uint8 array; words: the same bytes' first
    (n // 8) * 8 viewed as little-endian uint64 (see checksum())."""
    n = data.shape[0]
    p = 0
    if n >= 32:
        v1 = _P1 + _P2
        v2 = _P2
        v3 = _U(0)
        v4 = _U(0) - _P1
        while p + 32 <= n:
            q = p >> 3
            v1 = _round(v1, words[q])
            v2 = _round(v2, words[q + 1])
            v3 = _round(v3, words[q + 2])
            v4 = _round(v4, words[q + 3])
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _merge(h, v1)
        h = _merge(h, v2)
        h = _merge(h, v3)
        h = _merge(h, v4)
    else:
        h = _P5
    h = h + _U(n)
    while p + 8 <= n:
        h = h ^ _round(_U(0), words[p >> 3])
        h = _rotl(h, 27) * _P1 + _P4
        p += 8
    if p + 4 <= n:
        k = _U(0)
        for j in range(4):
            k |= _U(data[p + j]) << _U(8 * j)
        h = h ^ (k * _P1)
        h = _rotl(h, 23) * _P2 + _P3
        p += 4
    while p < n:
        h = h ^ (_U(data[p]) * _P5)
        h = _rotl(h, 11) * _P1
        p += 1
    h = h ^ (h >> _U(33))
    h = h * _P2
    h = h ^ (h >> _U(29))
    h = h * _P3
    h = h ^ (h >> _U(32))
    return h


def checksum(arr):
    """XXH64 (seed 0) of the bytes of a C-contiguous numpy array, as a Python int."""
    b = arr.reshape(-1).view(np.uint8)
    n8 = (b.shape[0] // 8) * 8
    return int(xxh64(b, b[:n8].view(np.uint64)))


# ---------------------------------------------------------------- varints

@njit(cache=True, nogil=True)
def pack_varints(vals, out):
    """LEB128 of each value (non-negative, < 2**63) into out; returns bytes written."""
    o = 0
    for i in range(vals.shape[0]):
        v = np.int64(vals[i])
        while v >= 0x80:
            out[o] = np.uint8((v & 0x7F) | 0x80)
            o += 1
            v >>= 7
        out[o] = np.uint8(v)
        o += 1
    return o


@njit(cache=True, nogil=True, inline="always")
def read_varint(buf, pos, end):
    """(value, new position) of the LEB128 at buf[pos:end]; position -1 if
    truncated, over-long or longer than 9 bytes."""
    v = np.int64(0)
    shift = 0
    while True:
        if pos >= end or shift > 56:
            return v, -1
        b = np.int64(buf[pos])
        pos += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            if b == 0 and shift > 0:  # over-long
                return v, -1
            return v, pos
        shift += 7


@njit(cache=True, nogil=True)
def unpack_varints(buf, pos, end, out, limit):
    """Read out.shape[0] LEB128 values (each <= limit) from buf[pos:end].
    Returns the new position, or -1 if truncated or out of range."""
    for i in range(out.shape[0]):
        v, pos = read_varint(buf, pos, end)
        if pos < 0 or v > limit:
            return -1
        out[i] = v
    return pos


@njit(cache=True, nogil=True)
def read_runs(buf, pos, end, nruns, sbits, used):
    """The symbol list as nruns (gap, length) varint pairs (FORMAT.md, "model")
    into used (all of it); returns the new position, or -1 if the runs are
    truncated, out of range or do not fill used exactly."""
    nsym = used.shape[0]
    k = 0
    prev = 0
    for _ in range(nruns):
        gap, pos = read_varint(buf, pos, end)
        if pos < 0 or gap > (1 << sbits):
            return -1
        length, pos = read_varint(buf, pos, end)
        start = prev + gap
        if pos < 0 or length < 1 or k + length > nsym or start + length > (1 << sbits):
            return -1
        for j in range(length):
            used[k + j] = start + j
        k += length
        prev = start + length
    if k != nsym:
        return -1
    return pos
