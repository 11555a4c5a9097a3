"""Entropy-coded scalar quantisation (ECSQ): the lossy KV codec's chunk coder.

A chunk is T rows (tokens) of C channels (heads x head_dim). Every value is
quantised with one uniform step, q = round(x / step), and the integers are
rANS coded channel by channel, each channel with a quantised-Gaussian model
of two numbers (a mean and a width), from which encoder and decoder derive
the same integer frequency table. No table is shipped: both sides build the
same NKEYS tables, once per process, with integer arithmetic and float64
basic operations only (an exp written out from +, -, *, floor and ldexp), so
they are identical on every machine (DESIGN.md, determinism).

Channel parameters: base (an integer), frac (the mean's fraction in eighths),
sigma index (a width on a grid of eighths of an octave, 1/16 .. 8), shift k.
A channel wider than the grid codes floor((q - base) / 2^k) with the table and
stores the k low bits raw; values outside a table's range (+-4.5 sigma) are
coded as an escape symbol plus a zigzag varint. The decoder rebuilds
q = base + (sym << k) + low and x = float32(q) * step (one IEEE multiply).

Payload (little-endian; FORMAT.md):
    f32      step (finite, > 0)
    per channel: varint zigzag(base), u8 sigma index, u8 frac | k << 3
    varint   number of escapes, then zigzag varints (in element order)
    varint   bytes of low bits, then the bit string (channel after channel,
             T values of k bits each, LSB first)
    varint   nwords, [u8 0 to even position], u16 x nwords: the rANS stream
             (the kv archive's 8-lane coder, 12-bit frequencies), elements in
             channel-major order (channel c, then token t: i = c * T + t)
"""
import math
import threading

import numpy as np
from numba import njit

from ssmzip.errors import SSMZipError
from ssmzip.kv import _rans
from ssmzip.kv._io import Reader, varint
from ssmzip.kv._rans import LANES, PROB_BITS, PROB_MASK, PROB_SCALE, RANS_L, STATE_WORDS

NSIG = 57                   # sigma = (8 + s % 8) / 8 * 2^(s // 8 - 4): 1/16 .. 8
NFRAC = 8                   # mean fraction in eighths
NKEYS = NSIG * NFRAC
ESC_FREQ = 4                # of 4096: an escape costs 10 bits plus its varint
MAX_SHIFT = 31
MAX_ABS_Q = 1 << 30         # |q| beyond this is refused (step far too small for the data)
_U = np.uint64


# ---------------------------------------------------------------- the shared tables

def sigma_of(s):
    return (8 + s % 8) / 8 * 2.0 ** (s // 8 - 4)


def half_width(s):
    """Symbols -W .. W+1 around the base have their own frequency; the rest escape."""
    return int(math.ceil(4.5 * sigma_of(s))) + 2


_INV_FACT = [1.0 / math.factorial(k) for k in range(18)]
_LN2 = 0.6931471805599453
_INV_LN2 = 1.4426950408889634


def det_exp_neg(y):
    """exp(-y) for y >= 0 (float64 array) from basic IEEE operations only: the
    same bits on every machine, unlike a library exp."""
    y = np.minimum(y, 1000.0)
    n = np.floor(y * _INV_LN2)
    r = y - n * _LN2
    p = np.full_like(y, _INV_FACT[17])
    for k in range(16, -1, -1):
        p = p * (-r) + _INV_FACT[k]
    return np.ldexp(p, -n.astype(np.int64))


def _table(s, frac):
    """Frequencies (int64, sum 4096) of symbols -W .. W+1 and the escape (last)."""
    W = half_width(s)
    sig = sigma_of(s)
    d = np.arange(-W, W + 2, dtype=np.float64)
    mass = np.zeros(d.shape[0])
    for j in range(4):          # the mass of [d - 1/2, d + 1/2): midpoint rule, 4 points
        z = (d + ((j + 0.5) / 4 - 0.5) - frac / 8) / sig
        mass = mass + det_exp_neg(z * z * 0.5)
    total = math.fsum(mass.tolist())  # exactly rounded: no summation-order question
    avail = PROB_SCALE - ESC_FREQ - d.shape[0]
    f = np.floor(mass * (avail / total)).astype(np.int64) + 1
    f[int(np.argmax(mass))] += PROB_SCALE - ESC_FREQ - int(f.sum())
    return np.concatenate([f, [ESC_FREQ]])


class Tables:
    """The NKEYS coding tables (key = sigma index * 8 + frac), built once per process."""

    def __init__(self):
        self.W = np.array([half_width(k // NFRAC) for k in range(NKEYS)], np.int64)
        width = int(2 * self.W.max() + 3)
        self.freqs = np.zeros((NKEYS, width), np.uint32)
        for k in range(NKEYS):
            f = _table(k // NFRAC, k % NFRAC)
            self.freqs[k, :f.shape[0]] = f
        self.width = width
        self.enc0 = np.zeros(NKEYS * width, np.uint64)
        self.enc1 = np.zeros(NKEYS * width, np.uint64)
        _rans.build_enc_table(self.freqs, self.enc0, self.enc1)
        self.dec = np.zeros(NKEYS << PROB_BITS, np.uint64)
        _rans.build_dec_table(self.freqs, np.arange(width, dtype=np.int64), self.dec)
        with np.errstate(divide="ignore"):
            self.cost = np.where(self.freqs > 0, PROB_BITS - np.log2(np.maximum(self.freqs, 1)), 0.0)
        self.sigmas = np.array([sigma_of(s) for s in range(NSIG)])


_tables = None
_lock = threading.Lock()


def tables():
    global _tables
    if _tables is None:
        with _lock:
            if _tables is None:
                _tables = Tables()
    return _tables


# ---------------------------------------------------------------- encoder

@njit(cache=True, nogil=True)
def _quantize(words, code, inv, step, qT, recw, sums, stats):
    """For stored words [T, C] of dtype code: qT[c, t] = round(x * inv)
    (channel-major), recw[t, c] = the stored word of float32(q) * step,
    sums[c] = (sum q, sum q^2), stats = (squared error, largest error, sum
    x^2) of the reconstruction. False if a value is not finite or its symbol
    too large."""
    T, C = words.shape
    ub = np.empty(1, np.uint32)
    fb = ub.view(np.float32)
    se = 0.0
    mx = 0.0
    nrm = 0.0
    for t0 in range(0, T, 32):
        t1 = min(t0 + 32, T)
        for c in range(C):
            s1 = np.int64(0)
            s2 = 0.0
            for t in range(t0, t1):
                ub[0] = np.uint32(_word_to_bits(words[t, c], code))
                x = fb[0]
                v = np.float64(x * inv)
                if not abs(v) <= MAX_ABS_Q:
                    return False
                q = np.int64(math.floor(v + 0.5))
                qT[c, t] = q
                fb[0] = np.float32(q) * step
                rw = _bits_to_word(np.int64(ub[0]), code)
                recw[t, c] = rw
                ub[0] = np.uint32(_word_to_bits(rw, code))
                e = np.float64(fb[0]) - np.float64(x)
                se += e * e
                nrm += np.float64(x) * np.float64(x)
                if abs(e) > mx:
                    mx = abs(e)
                s1 += q
                s2 += np.float64(q) * np.float64(q)
            sums[c, 0] += s1
            sums[c, 1] += s2
    stats[0] = se
    stats[1] = mx
    stats[2] = nrm
    return True


@njit(cache=True, nogil=True)
def err_stats(x, y):
    """(sum of squared errors, largest absolute error, sum of squares of x), in float64."""
    se = 0.0
    mx = 0.0
    nrm = 0.0
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(xf.shape[0]):
        a = np.float64(xf[i])
        e = np.float64(yf[i]) - a
        se += e * e
        nrm += a * a
        if abs(e) > mx:
            mx = abs(e)
    return se, mx, nrm


@njit(cache=True, nogil=True)
def sumsq(x):
    """Sum of squares in float64."""
    a = 0.0
    xf = x.reshape(-1)
    for i in range(xf.shape[0]):
        v = np.float64(xf[i])
        a += v * v
    return a


@njit(cache=True, nogil=True)
def _sym(q, b0, k, b2):
    return ((np.int64(q) - b0) >> k) - b2


@njit(cache=True, nogil=True)
def _choose_keys(qT, b0, k, b2, s0, frac, W, cost, width, keys):
    """Per channel, the sigma index near s0 whose table codes the channel's
    symbols in the fewest bits."""
    C, T = qT.shape
    maxw = (width - 3) // 2
    hist = np.zeros(2 * maxw + 2, np.int64)
    for c in range(C):
        hist[:] = 0
        outside = 0
        for t in range(T):
            v = _sym(qT[c, t], b0[c], k[c], b2[c]) + maxw
            if 0 <= v < hist.shape[0]:
                hist[v] += 1
            else:
                outside += 1
        best = 1e300
        bk = 0
        for s in range(max(0, s0[c] - 3), min(NSIG, s0[c] + 4)):
            key = s * NFRAC + frac[c]
            w = W[key]
            bits = 0.0
            esc = outside
            for v in range(2 * maxw + 2):
                d = v - maxw
                if hist[v] == 0:
                    continue
                if -w <= d <= w + 1:
                    bits += hist[v] * cost[key, d + w]
                else:
                    esc += hist[v]
            bits += esc * (cost[key, 2 * w + 2] + 12.0)
            if bits < best:
                best = bits
                bk = key
        keys[c] = bk


@njit(cache=True, nogil=True)
def _encode_symbols(qT, b0, k, b2, keys, W, width, enc0, enc1, out, esc):
    """rANS-code the symbols (channel-major order) with table keys[c]; out
    (uint16) is filled from its end. Returns (words used, escapes written to
    esc in element order)."""
    C, T = qT.shape
    pos = out.shape[0]
    st = np.full(LANES, RANS_L, np.int64)
    nesc = 0
    for c in range(C - 1, -1, -1):
        key = keys[c]
        w = W[key]
        kb = key * width + w
        bc, kc, b2c = b0[c], k[c], b2[c]
        for t in range(T - 1, -1, -1):
            lane = (c * T + t) & 7
            sv = _sym(qT[c, t], bc, kc, b2c)
            j = sv + w
            if j < 0 or j > 2 * w + 1:
                esc[nesc] = sv
                nesc += 1
                j = 2 * w + 2
            e0 = np.int64(enc0[kb - w + j])
            e1 = np.int64(enc1[kb - w + j])
            x = st[lane]
            if x >= (e0 & 0xFFFFFFFF):
                pos -= 1
                out[pos] = np.uint16(x & 0xFFFF)
                x >>= 16
            q = ((x * (e1 & 0xFFFFFFFF)) >> 32) >> (e1 >> 48)
            st[lane] = x + (e0 >> 32) + q * ((e1 >> 32) & 0xFFFF)
    for lane in range(LANES - 1, -1, -1):
        x = st[lane]
        pos -= 1
        out[pos] = np.uint16(x >> 16)
        pos -= 1
        out[pos] = np.uint16(x & 0xFFFF)
    esc[:nesc] = esc[:nesc][::-1].copy()
    return out.shape[0] - pos, nesc


@njit(cache=True, nogil=True)
def _pack_low(qT, b0, k, out):
    """Bit-pack the k[c] low bits of q - b0[c], channel after channel, LSB first."""
    C, T = qT.shape
    acc = np.int64(0)
    nb = 0
    o = 0
    for c in range(C):
        kc = k[c]
        if kc == 0:
            continue
        mask = (np.int64(1) << kc) - 1
        for t in range(T):
            acc |= ((np.int64(qT[c, t]) - b0[c]) & mask) << nb
            nb += kc
            while nb >= 8:
                out[o] = np.uint8(acc & 0xFF)
                o += 1
                acc >>= 8
                nb -= 8
    if nb > 0:
        out[o] = np.uint8(acc & 0xFF)
        o += 1
    return o


def _zigzag(v):
    v = np.asarray(v, np.int64)
    return ((v << 1) ^ (v >> 63)).astype(np.int64)


def _varints(vals):
    vals = np.ascontiguousarray(vals, np.int64)
    buf = np.empty(vals.shape[0] * 10 + 1, np.uint8)
    return buf[:_rans.pack_varints(vals, buf)].tobytes()


def _check_step(step):
    step = float(np.float32(step))
    if not (math.isfinite(step) and step > 0):
        raise SSMZipError(f"bad quantisation step {step}")
    return np.float32(step)


def quantize(words, code, step):
    """(qT int32 [C, T], reconstructed words [T, C], sums [C, 2], (se, max, sum x^2))
    for stored words [T, C] of dtype code."""
    step = _check_step(step)
    words = np.ascontiguousarray(words)
    T, C = words.shape
    qT = np.empty((C, T), np.int32)
    recw = np.empty((T, C), words.dtype)
    sums = np.zeros((C, 2), np.float64)
    stats = np.zeros(3, np.float64)
    if not _quantize(words, code, np.float32(1.0) / step, step, qT, recw, sums, stats):
        raise SSMZipError("lossy coding needs finite values and a step that is not vanishingly small")
    return qT, recw, sums, stats


def encode(x, step):
    """encode_words for float32 values x [T, C]: (pieces, reconstruction float32 [T, C])."""
    x = np.ascontiguousarray(x, np.float32)
    pieces, recw, _ = encode_words(x.view(np.uint32), 1, step)
    return pieces, recw.view(np.float32)


def encode_words(words, code, step):
    """Payload (list of bytes pieces) coding stored words [T, C] of dtype code
    (1 float32, 2 float16, 3 bfloat16) with one step. Returns (pieces,
    reconstructed words [T, C], (squared error, largest error, sum x^2))."""
    step = _check_step(step)
    tb = tables()
    T, C = words.shape
    qT, recw, sums, stats = quantize(words, code, step)
    mean = sums[:, 0] / T
    var = np.maximum(sums[:, 1] / T - mean * mean - 1.0 / 12, 1.0 / 1024)

    sd = np.sqrt(var)
    # channels wider than the grid: code floor((q - b) / 2^k), k low bits raw
    k = np.zeros(C, np.int64)
    wide = sd > 8.0
    k[wide] = np.minimum(np.ceil(np.log2(sd[wide] / 6.0)), MAX_SHIFT).astype(np.int64)
    b0 = np.where(wide, np.rint(mean), 0).astype(np.int64)
    dmean = mean.copy()
    if wide.any():
        dmean[wide] = ((qT[wide].astype(np.int64) - b0[wide, None]) >> k[wide, None]).mean(axis=1)
    m8 = np.rint(dmean * 8).astype(np.int64)
    b2 = m8 >> 3
    frac = m8 & 7
    sdk = np.maximum(sd / (2.0 ** k), 1.0 / 64)
    s0 = np.argmin(np.abs(np.log(tb.sigmas)[None, :] - np.log(sdk)[:, None]), axis=1).astype(np.int64)
    keys = np.empty(C, np.int64)
    _choose_keys(qT, b0, k, b2, s0, frac, tb.W, tb.cost, tb.width, keys)
    out = np.empty(C * T + STATE_WORDS + 1, np.uint16)
    esc = np.empty(C * T, np.int64)
    nwords, nesc = _encode_symbols(qT, b0, k, b2, keys, tb.W, tb.width, tb.enc0, tb.enc1, out, esc)
    base = b0 + (b2 << k)
    head = bytearray(np.float32(step).tobytes())
    params = np.empty(C * 12, np.uint8)
    pz = _zigzag(base)
    o = 0
    for c in range(C):   # small: C channels
        v = int(pz[c])
        while v >= 0x80:
            params[o] = (v & 0x7F) | 0x80
            o += 1
            v >>= 7
        params[o] = v
        params[o + 1] = keys[c] // NFRAC
        params[o + 2] = int(frac[c]) | int(k[c]) << 3
        o += 3
    head += params[:o].tobytes()
    head += varint(nesc) + _varints(_zigzag(esc[:nesc]))
    lowbytes = b""
    if wide.any():
        buf = np.empty((int(k.sum()) * T + 7) // 8 + 1, np.uint8)
        lowbytes = buf[:_pack_low(qT, b0, k, buf)].tobytes()
    head += varint(len(lowbytes)) + lowbytes
    head += varint(nwords)
    if len(head) & 1:
        head += b"\0"
    return [bytes(head), out[out.shape[0] - nwords:]], recw, stats


# ---------------------------------------------------------------- decoder

@njit(cache=True, nogil=True)
def _decode_symbols(stream, nwords, base, keys, k, W, dec, esc, low, lowlen, step, T, code, out):
    """Decode C * T symbols (channel-major) into out (stored words [T, C] of
    dtype code): out[t, c] = word of float32(q) * step. Returns 0, or -1 if
    the data is inconsistent."""
    ub = np.empty(1, np.uint32)
    fb = ub.view(np.float32)
    C = keys.shape[0]
    if nwords < STATE_WORDS:
        return -1
    st = np.empty(LANES, np.int64)
    for lane in range(LANES):
        x = np.int64(stream[2 * lane]) | (np.int64(stream[2 * lane + 1]) << 16)
        if x < RANS_L or x >= (np.int64(1) << 31):
            return -1
        st[lane] = x
    p = STATE_WORDS
    ne = 0
    lb = 0          # bit position in low
    for c in range(C):
        key = keys[c]
        tb = key << PROB_BITS
        w = W[key]
        escj = 2 * w + 2
        kc = k[c]
        bc = base[c]
        for t in range(T):
            i = c * T + t
            x = st[i & 7]
            e = np.int64(dec[tb + (x & PROB_MASK)])
            x = ((e >> 16) & 0xFFFF) * (x >> PROB_BITS) + (e & 0xFFFF)
            if x < RANS_L:
                if p >= nwords:
                    return -1
                x = (x << 16) | np.int64(stream[p])
                p += 1
            st[i & 7] = x
            j = e >> 32
            if j == escj:
                if ne >= esc.shape[0]:
                    return -1
                s = esc[ne]
                ne += 1
            else:
                s = j - w
            if kc:
                if lb + kc > lowlen * 8:
                    return -1
                v = np.int64(0)
                for b in range(kc):
                    v |= np.int64((low[(lb + b) >> 3] >> ((lb + b) & 7)) & 1) << b
                lb += kc
                qv = bc + (s << kc) + v
            else:
                qv = bc + s
            fb[0] = np.float32(qv) * step
            out[t, c] = _bits_to_word(np.int64(ub[0]), code)
    if p != nwords or ne != esc.shape[0] or (lb + 7) // 8 != lowlen:
        return -1
    for lane in range(LANES):
        if st[lane] != RANS_L:
            return -1
    return 0


@njit(cache=True, nogil=True)
def _read_params(buf, pos, end, C, base, keys, k):
    """Parse the per-channel parameters; returns the new position or -1."""
    for c in range(C):
        v = np.int64(0)
        shift = 0
        while True:
            if pos >= end or shift > 63:
                return -1
            b = np.int64(buf[pos])
            pos += 1
            v |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        base[c] = (v >> 1) ^ -(v & 1)
        if pos + 2 > end:
            return -1
        s = np.int64(buf[pos])
        fk = np.int64(buf[pos + 1])
        pos += 2
        if s >= NSIG:
            return -1
        keys[c] = s * NFRAC + (fk & 7)
        k[c] = fk >> 3
    return pos


def decode(payload, T, C, where):
    """float32 [T, C] reconstruction from a payload made by encode()."""
    return decode_words(payload, T, C, 1, np.uint32, where).view(np.float32)


def decode_words(payload, T, C, code, wdtype, where):
    """Stored words [T, C] (dtype code, numpy dtype wdtype) from a payload made by encode_words()."""
    tb = tables()
    buf = np.frombuffer(payload, np.uint8)
    r = Reader(payload, where)
    step = float(np.frombuffer(bytes(r.take(4)), np.float32)[0])
    if not (math.isfinite(step) and step > 0):
        raise SSMZipError(f"corrupt data: bad quantisation step in {where}")
    base = np.empty(C, np.int64)
    keys = np.empty(C, np.int64)
    k = np.empty(C, np.int64)
    pos = _read_params(buf, r.pos, len(buf), C, base, keys, k)
    if pos < 0:
        raise SSMZipError(f"corrupt data: bad channel parameters in {where}")
    r.pos = pos
    nesc = r.varint(T * C)
    esc = np.empty(nesc, np.int64)
    pos = _rans.unpack_varints(buf, r.pos, len(buf), esc, (1 << 63) - 1)
    if pos < 0:
        raise SSMZipError(f"corrupt data: bad escapes in {where}")
    esc = (esc >> 1) ^ -(esc & 1)
    r.pos = pos
    lowlen = r.varint(r.remaining())
    low = buf[r.pos:r.pos + lowlen]
    r.pos += lowlen
    nwords = r.varint(T * C + STATE_WORDS + 1)
    if r.pos & 1:
        r.take(1)
    raw = r.take(2 * nwords)
    r.done()
    stream = np.frombuffer(raw, np.uint16)
    out = np.empty((T, C), wdtype)
    if _decode_symbols(stream, nwords, base, keys, k, tb.W, tb.dec, esc, low, lowlen, np.float32(step), T,
                       code, out) < 0:
        raise SSMZipError(f"corrupt data: inconsistent symbol stream in {where}")
    return out


# ---------------------------------------------------------------- float32 <-> stored words

def to_words(x, code):
    """Words of dtype code (1 float32, 2 float16, 3 bfloat16) for float32 values:
    IEEE round to nearest even, the same on every machine."""
    x = np.ascontiguousarray(x, np.float32)
    if code == 1:
        return x.view(np.uint32)
    if code == 2:
        return x.astype(np.float16).view(np.uint16)
    if code == 3:
        u = x.view(np.uint32)
        return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    raise SSMZipError(f"lossy coding is for float32, float16 and bfloat16 tensors (dtype code {code})")


def from_words(words, code):
    """float32 values of stored words (the inverse of to_words, exact)."""
    if code == 1:
        return words.view(np.float32)
    if code == 2:
        return words.view(np.float16).astype(np.float32)
    if code == 3:
        return (words.astype(np.uint32) << np.uint32(16)).view(np.float32)
    raise SSMZipError(f"lossy coding is for float32, float16 and bfloat16 tensors (dtype code {code})")


# ---------------------------------------------------------------- the same conversions inside kernels

@njit(cache=True, nogil=True, inline="always")
def _f32_to_f16(u):
    """float32 bits -> float16 bits, round to nearest even (IEEE, as numpy's astype)."""
    s = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    if a >= 0x7F800000:
        return s | 0x7C00 | (0x200 if a > 0x7F800000 else 0)
    if a >= 0x477FF000:
        return s | 0x7C00
    if a >= 0x38800000:
        h = a - 0x38000000
        h = h + 0x0FFF + ((h >> 13) & 1)
        return s | (h >> 13)
    if a <= 0x33000000:
        return s
    e = a >> 23
    m = (a & 0x7FFFFF) | 0x800000
    sh = 126 - e
    r = m >> sh
    rem = m & ((np.int64(1) << sh) - 1)
    half = np.int64(1) << (sh - 1)
    if rem > half or (rem == half and (r & 1) == 1):
        r += 1
    return s | r


@njit(cache=True, nogil=True, inline="always")
def _f16_to_f32(h):
    """float16 bits -> float32 bits (exact)."""
    s = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        if m == 0:
            return s
        e = 113
        while (m & 0x400) == 0:
            m <<= 1
            e -= 1
        return s | (e << 23) | ((m & 0x3FF) << 13)
    if e == 31:
        return s | 0x7F800000 | (m << 13)
    return s | ((e + 112) << 23) | (m << 13)


@njit(cache=True, nogil=True, inline="always")
def _word_to_bits(w, code):
    if code == 2:
        return _f16_to_f32(np.int64(w))
    if code == 3:
        return np.int64(w) << 16
    return np.int64(w)


@njit(cache=True, nogil=True, inline="always")
def _bits_to_word(u, code):
    if code == 2:
        return _f32_to_f16(u)
    if code == 3:
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    return u
