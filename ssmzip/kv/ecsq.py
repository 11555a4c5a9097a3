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

from ssmzip.engine.native import address as _p
from ssmzip.errors import SSMZipError
from ssmzip.kv import _rans
from ssmzip.kv._io import Reader, varint
from ssmzip.kv._rans import LANES, PROB_BITS, PROB_MASK, PROB_SCALE, RANS_L, STATE_WORDS

NSIG = 57                   # sigma = (8 + s % 8) / 8 * 2^(s // 8 - 4): 1/16 .. 8
NFRAC = 8                   # mean fraction in eighths
NKEYS = NSIG * NFRAC
ESC_FREQ = 4                # of 4096: an escape costs 10 bits plus its varint
COST_ONE = 1 << 16          # code lengths for the encoder's choices, in 1/65536 bit
ESC_EXTRA = 12 * COST_ONE   # about what an escape's varint adds
MAX_SHIFT = 31
MAX_ABS_Q = 1 << 20         # |q| beyond this is refused (a step this small: use mode="lossless")
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
        # decoding: one uint32 per slot, j | f << 7 | (slot - cum) << 20 (16 KiB a table)
        assert width <= 128 and self.freqs.max() < 1 << 13
        self.dec = np.zeros(NKEYS << PROB_BITS, np.uint32)
        for key in range(NKEYS):
            f = self.freqs[key].astype(np.int64)
            j = np.repeat(np.arange(width), f)
            cum = np.concatenate([[0], np.cumsum(f)[:-1]])
            slot = np.arange(PROB_SCALE)
            self.dec[key << PROB_BITS:(key + 1) << PROB_BITS] = j | f[j] << 7 | (slot - cum[j]) << 20
        with np.errstate(divide="ignore"):
            bits = np.where(self.freqs > 0, PROB_BITS - np.log2(np.maximum(self.freqs, 1)), 0.0)
        # code lengths in 1/65536 bit, as integers: their sums do not depend on order or machine
        self.cost = np.rint(bits * COST_ONE).astype(np.int64)
        # for the C kernels: the tables' addresses (they live as long as the process)
        self.addr = {n: getattr(self, n).__array_interface__["data"][0] for n in ("W", "enc0", "enc1", "cost", "dec")}


_tables = None
_lock = threading.Lock()


def tables():
    global _tables
    if _tables is None:
        with _lock:
            if _tables is None:
                _tables = Tables()
    return _tables


# ---------------------------------------------------------------- the C kernels (native/ecsq.c)

_NATIVE = None


def native():
    """The C kernels (a namespace of ctypes functions) or None: numba is used
    when the C library was not built or SSMZIP_BACKEND=numba (same bytes)."""
    global _NATIVE
    if _NATIVE is None:
        import ctypes

        from ssmzip.engine import native as nat
        P, I, F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
        k = nat.bind({
            "ssmzip_ecsq_quantize": ([P, I, I, I, I, I, I, F, F, F, P, P, P, P], I),
            "ssmzip_ecsq_encode": ([P, I, I, P, P, P, P, P, I, P, P, P, I, P, P], I),
            "ssmzip_ecsq_decode": ([P, I, P, P, P, P, P, P, I, P, I, F, I, I, I, P], I),
            "ssmzip_ecsq_choose": ([P, I, I, P, P, P, P, P, I, P, P, I, P, P, I, I], None),
            "ssmzip_ecsq_scatter": ([P, I, I, I, I, I, I, P, I, I], None),
            "ssmzip_ecsq_sumsq": ([P, I, I, I, I, I, I, P], ctypes.c_double),
        })
        if k is None:
            _NATIVE = False
        else:
            class K:
                quantize = k.ssmzip_ecsq_quantize
                encode = k.ssmzip_ecsq_encode
                decode = k.ssmzip_ecsq_decode
                choose = k.ssmzip_ecsq_choose
                scatter = k.ssmzip_ecsq_scatter
                sumsq = k.ssmzip_ecsq_sumsq
            _NATIVE = K
    return _NATIVE or None




# ---------------------------------------------------------------- float conversions inside kernels

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
def _word_to_f32(w, code):
    """A stored word (dtype code 1 float32, 2 float16, 3 bfloat16) as float32."""
    if code == 2:
        h = np.int64(w)
        if 0x0400 <= (h & 0x7FFF) < 0x7C00:       # normal: rebias the exponent
            u = ((h & 0x8000) << 16) | (((h & 0x7FFF) + 0x1C000) << 13)
        else:
            u = _f16_to_f32(h)
    elif code == 3:
        u = np.int64(w) << 16
    else:
        u = np.int64(w)
    return np.uint32(u).view(np.float32)


@njit(cache=True, nogil=True, inline="always")
def _f32_to_word(x, code):
    """float32 -> the stored word of dtype code (round to nearest even)."""
    u = np.int64(np.float32(x).view(np.uint32))
    if code == 2:
        a = u & 0x7FFFFFFF
        if 0x38800000 <= a < 0x477FF000:           # a normal float16
            return ((u >> 16) & 0x8000) | ((a - 0x38000000 + 0x0FFF + ((a >> 13) & 1)) >> 13)
        return _f32_to_f16(u)
    if code == 3:
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    return u


# ---------------------------------------------------------------- encoder

@njit(cache=True, nogil=True)
def _quantize(words, code, inv, step, qT, recT, sums, stats):
    """For stored words [H, T, D] of dtype code (channel c = h * D + d):
    qT[c, t] = round(x * inv),
    recT[c, t] = the stored word of float32(q) * step (both channel-major),
    sums[c] = (sum q, sum q^2), stats = (squared error, largest error) of the
    reconstruction; the squared errors of a channel's 32-token tile are summed
    in float32 in four chains (t & 3), then into a float64 total (native/
    ecsq_kernels.h does the same). False if a value is not finite or its
    symbol too large."""
    H, T, D = words.shape
    C = H * D
    se = 0.0
    mx = np.float32(0.0)
    bad = False
    e2 = np.zeros(4, np.float32)
    lim = np.float32(MAX_ABS_Q)
    for t0 in range(0, T, 32):
        t1 = min(t0 + 32, T)
        for c in range(C):
            s1 = np.int64(0)
            s2 = np.int64(0)
            e2[:] = 0
            for t in range(t0, t1):
                x = _word_to_f32(words[c // D, t, c % D], code)
                v = x * inv
                bad |= not (abs(v) <= lim)
                q = np.int64(math.floor(v + np.float32(0.5))) if not bad else np.int64(0)
                qT[c, t] = q
                rw = _f32_to_word(np.float32(q) * step, code)
                recT[c, t] = rw
                e = _word_to_f32(rw, code) - x
                e2[t & 3] += e * e
                mx = max(mx, abs(e))
                s1 += q
                s2 += q * q
            sums[c, 0] += s1
            sums[c, 1] += s2
            se += np.float64((e2[0] + e2[1]) + (e2[2] + e2[3]))
    stats[0] = se
    stats[1] = mx
    return not bad


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
def _sumsq_words(words, code, bad):
    H, T, D = words.shape
    a = np.zeros(4, np.float64)
    nb = 0
    i = 0
    for t in range(T):
        for h in range(H):
            for d in range(D):
                x = _word_to_f32(words[h, t, d], code)
                nb += not np.isfinite(x)
                a[i & 3] += np.float64(x) * np.float64(x)
                i += 1
    bad[0] = nb
    return (a[0] + a[1]) + (a[2] + a[3])


def as_heads(words):
    """A [heads, tokens, head_dim] view (head_dim contiguous) of stored words
    given so or as [tokens, channels] (one head); copies only if it must."""
    if words.ndim == 2:
        words = words[None]
    if words.strides[2] != words.itemsize or words.strides[1] % words.itemsize or words.strides[0] % words.itemsize:
        words = np.ascontiguousarray(words)
    return words


def _strides(w):
    return w.strides[0] // w.itemsize, w.strides[1] // w.itemsize


def _addr(a):
    return a.__array_interface__["data"][0]


def sumsq_words(words, code):
    """(sum of x^2 in float64 over the elements in (token, head, head_dim) order, in
    four chains as native/ecsq.c; all finite?) of stored words [H, T, D] or [T, C]."""
    w = as_heads(words)
    H, T, D = w.shape
    bad = np.zeros(1, np.int64)
    nat = native()
    if nat is not None:
        sH, sT = _strides(w)
        a = nat.sumsq(_addr(w), code, H, T, D, sH, sT, _p(bad)) if w.size else 0.0
    else:
        a = _sumsq_words(w, code, bad)
    return float(a), bool(bad[0] == 0)


@njit(cache=True, nogil=True, inline="always")
def _sym(q, b0, k, b2):
    return ((np.int64(q) - b0) >> k) - b2


@njit(cache=True, nogil=True)
def _choose_keys(qT, b0, k, b2, s0, frac, W, cost, width, keys, bits_out):
    """Per channel, the sigma index near s0 whose table codes the channel's
    symbols in the fewest bits (bits_out[c]: that cost in 1/65536 bit,
    escapes and raw low bits included; integers, so any machine picks alike)."""
    C, T = qT.shape
    maxw = (width - 3) // 2
    nb = 2 * maxw + 3                      # the last bin: outside every table
    hist = np.zeros((4, nb), np.int64)     # 4 interleaved histograms: no store-to-load chains
    for c in range(C):
        hist[:, :] = 0
        bc, kc, b2c = b0[c], k[c], b2[c]
        for t in range(T):
            v = _sym(qT[c, t], bc, kc, b2c) + maxw
            v = v if 0 <= v < nb - 1 else nb - 1
            hist[t & 3, v] += 1
        best = np.int64(1) << 62
        bk = 0
        for s in range(max(0, s0[c] - 3), min(NSIG, s0[c] + 4)):
            key = s * NFRAC + frac[c]
            w = W[key]
            bits = np.int64(0)
            esc = 0
            for v in range(nb):
                h = hist[0, v] + hist[1, v] + hist[2, v] + hist[3, v]
                if h == 0:
                    continue
                d = v - maxw
                if v < nb - 1 and -w <= d <= w + 1:
                    bits += h * cost[key, d + w]
                else:
                    esc += h
            bits += esc * (cost[key, 2 * w + 2] + ESC_EXTRA)
            if bits < best:
                best = bits
                bk = key
        keys[c] = bk
        bits_out[c] = best + kc * T * COST_ONE


@njit(cache=True, nogil=True, inline="always")
def _estep(x, sv, w, kb, enc0, enc1, out, pos, esc, nesc):
    """One rANS encode step of symbol sv (relative to the base) with the table at kb."""
    j = sv + w
    if j < 0 or j > 2 * w + 1:
        esc[nesc] = sv
        nesc += 1
        j = 2 * w + 2
    e0 = np.int64(enc0[kb + j])
    e1 = np.int64(enc1[kb + j])
    if x >= (e0 & 0xFFFFFFFF):      # a branch: the position is shared by the lanes (see _dstep)
        pos -= 1
        out[pos] = np.uint16(x & 0xFFFF)
        x >>= 16
    q = ((x * (e1 & 0xFFFFFFFF)) >> 32) >> (e1 >> 48)
    return x + (e0 >> 32) + q * ((e1 >> 32) & 0xFFFF), pos, nesc


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
        kb = key * width
        bc, kc, b2c = b0[c], k[c], b2[c]
        T8 = T & ~7
        for t in range(T - 1, T8 - 1, -1):      # token t is on lane t & 7; the last T % 8 first
            st[t & 7], pos, nesc = _estep(st[t & 7], _sym(qT[c, t], bc, kc, b2c), w, kb, enc0, enc1,
                                          out, pos, esc, nesc)
        if T8:                                  # then eight at a time, the states in registers
            x0, x1, x2, x3, x4, x5, x6, x7 = st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7]
            for t in range(T8 - 8, -1, -8):
                x7, pos, nesc = _estep(x7, _sym(qT[c, t + 7], bc, kc, b2c), w, kb, enc0, enc1, out, pos, esc, nesc)
                x6, pos, nesc = _estep(x6, _sym(qT[c, t + 6], bc, kc, b2c), w, kb, enc0, enc1, out, pos, esc, nesc)
                x5, pos, nesc = _estep(x5, _sym(qT[c, t + 5], bc, kc, b2c), w, kb, enc0, enc1, out, pos, esc, nesc)
                x4, pos, nesc = _estep(x4, _sym(qT[c, t + 4], bc, kc, b2c), w, kb, enc0, enc1, out, pos, esc, nesc)
                x3, pos, nesc = _estep(x3, _sym(qT[c, t + 3], bc, kc, b2c), w, kb, enc0, enc1, out, pos, esc, nesc)
                x2, pos, nesc = _estep(x2, _sym(qT[c, t + 2], bc, kc, b2c), w, kb, enc0, enc1, out, pos, esc, nesc)
                x1, pos, nesc = _estep(x1, _sym(qT[c, t + 1], bc, kc, b2c), w, kb, enc0, enc1, out, pos, esc, nesc)
                x0, pos, nesc = _estep(x0, _sym(qT[c, t], bc, kc, b2c), w, kb, enc0, enc1, out, pos, esc, nesc)
            st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7] = x0, x1, x2, x3, x4, x5, x6, x7
    pos = _rans.flush_states(st, out, pos)
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


_local = threading.local()


def _scratch(name, n, dtype):
    """A per-thread buffer of at least n elements, reused call after call (fresh
    pages for every chunk cost ~5 % of encoding). Valid until the next call."""
    buf = getattr(_local, name, None)
    if buf is None or buf.dtype != dtype or buf.shape[0] < n:
        buf = np.empty(max(n, 1), dtype)
        setattr(_local, name, buf)
    return buf[:n]


def quantize(words, code, step):
    """(qT int32 [C, T], reconstructed words [C, T] (channel-major), sums [C, 2],
    (squared error, largest error)) for stored words [H, T, D] (channel h * D + d)
    or [T, C] of dtype code. qT and the words are per-thread scratch buffers:
    valid until the next call."""
    step = _check_step(step)
    words = as_heads(words)
    H, T, D = words.shape
    C = H * D
    qT = _scratch("q", C * T, np.int32).reshape(C, T)
    recT = _scratch("r", C * T, words.dtype).reshape(C, T)
    sums = np.zeros((C, 2), np.int64)
    stats = np.zeros(2, np.float64)
    nat = native()
    inv = np.float32(1.0) / step
    if nat is not None:
        sH, sT = _strides(words)
        ok = nat.quantize(_addr(words), code, T, C, D, sH, sT, float(inv), float(step), float(np.float32(MAX_ABS_Q)),
                          _p(qT), _p(recT), _p(sums), _p(stats)) == 0
    else:
        ok = _quantize(words, code, inv, step, qT, recT, sums, stats)
    if not ok:
        raise SSMZipError("lossy coding needs finite values and a step that is not vanishingly small")
    return qT, recT, sums, stats


def encode(x, step):
    """encode_words for float32 values x [T, C]: (pieces, reconstruction float32 [T, C];
    a view of a scratch buffer, valid until this thread's next call)."""
    x = np.ascontiguousarray(x, np.float32)
    pieces, recT, _ = encode_words(x.view(np.uint32), 1, step)
    return pieces, recT.T.view(np.float32)


def encode_words(words, code, step):
    """Payload (list of bytes pieces) coding stored words [T, C], or [H, T, D]
    with channel c = h * D + d, of dtype code (1 float32, 2 float16, 3 bfloat16)
    with one step. Returns (pieces, reconstructed words [C, T] (channel-major:
    what the chunk checksum covers), (squared error, largest error))."""
    tb = tables()
    qT, recT, sums, stats = quantize(words, code, step)
    C, T = qT.shape
    b0, k, b2, keys, _ = _fit(qT, sums)
    out = np.empty(C * T + STATE_WORDS + 1, np.uint16)
    esc = np.empty(C * T, np.int64)
    nat = native()
    if nat is not None:
        ne = np.zeros(1, np.int64)
        nwords = nat.encode(_p(qT), C, T, _p(b0), _p(k), _p(b2), _p(keys), tb.addr['W'], tb.width, tb.addr['enc0'],
                            tb.addr['enc1'], _p(out), out.shape[0], _p(esc), _p(ne))
        nesc = int(ne[0])
    else:
        nwords, nesc = _encode_symbols(qT, b0, k, b2, keys, tb.W, tb.width, tb.enc0, tb.enc1, out, esc)
    base = b0 + (b2 << k)
    head = bytearray(np.float32(step).tobytes())
    head += _channel_params(base, keys, k)
    head += varint(nesc) + _varints(_zigzag(esc[:nesc]))
    lowbytes = b""
    if k.any():
        buf = np.empty((int(k.sum()) * T + 7) // 8 + 1, np.uint8)
        lowbytes = buf[:_pack_low(qT, b0, k, buf)].tobytes()
    head += varint(len(lowbytes)) + lowbytes
    head += varint(nwords)
    if len(head) & 1:
        head += b"\0"
    return [bytes(head), out[out.shape[0] - nwords:]], recT, stats


def estimate_bits(words, code, step):
    """The model's code length (bits) of the symbols encode_words would code,
    without coding them or counting the chunk's parameters (for rate control)."""
    qT, _, sums, _ = quantize(words, code, step)
    return float(_fit(qT, sums)[4].sum()) / COST_ONE


@njit(cache=True, nogil=True)
def _pack_params(pz, keys, k, out):
    o = 0
    for c in range(pz.shape[0]):
        v = pz[c]
        while v >= 0x80:
            out[o] = np.uint8((v & 0x7F) | 0x80)
            o += 1
            v >>= 7
        out[o] = np.uint8(v)
        out[o + 1] = np.uint8(keys[c] // NFRAC)
        out[o + 2] = np.uint8((keys[c] % NFRAC) | (k[c] << 3))
        o += 3
    return o


def _channel_params(base, keys, k):
    """Per channel: varint zigzag(base), u8 sigma index, u8 frac | k << 3."""
    out = np.empty(base.shape[0] * 13, np.uint8)
    return out[:_pack_params(_zigzag(base), keys, k, out)].tobytes()


def _fit(qT, sums):
    """Each channel's model: (b0, k, b2, table keys, code length in bits)."""
    tb = tables()
    C, T = qT.shape
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
    # the nearest grid width, about: the grid has 8 steps an octave from 1/16 (the search looks 3 either side)
    sdk = np.maximum(sd / (2.0 ** k), 1.0 / 64)
    s0 = np.clip(np.rint(8.0 * np.log2(sdk * 16.0) - 0.5), 0, NSIG - 1).astype(np.int64)
    keys = np.empty(C, np.int64)
    bits = np.empty(C, np.int64)
    nat = native()
    if nat is not None:
        nat.choose(_p(qT), C, T, _p(b0), _p(k), _p(b2), _p(s0), _p(frac), NSIG, tb.addr['W'], tb.addr['cost'], tb.width,
                   _p(keys), _p(bits), ESC_EXTRA, COST_ONE)
    else:
        _choose_keys(qT, b0, k, b2, s0, frac, tb.W, tb.cost, tb.width, keys, bits)
    return b0, k, b2, keys, bits


# ---------------------------------------------------------------- decoder

@njit(cache=True, nogil=True, inline="always")
def _dstep(x, dec, tb, stream, p):
    """One rANS decode step: (new state, new stream position, table index j).
    A branch, not a select: the read position is shared by the eight lanes,
    and a data dependency through it would serialise them; the predicted
    branch lets them run in parallel. The stream is padded (no bounds test)."""
    e = np.int64(dec[tb + (x & PROB_MASK)])
    x = ((e >> 7) & 0x1FFF) * (x >> PROB_BITS) + (e >> 20)
    if x < RANS_L:
        x = (x << 16) | np.int64(stream[p])
        p += 1
    return x, p, e & 0x7F


@njit(cache=True, nogil=True, inline="always")
def _value(j, w, esc, ne, bc, step, code):
    """(stored word, escapes used) of table index j in a channel with base bc, no shift."""
    if j == 2 * w + 2:
        s = esc[min(ne, esc.shape[0] - 1)]     # esc is padded by one; the count is checked at the end
        ne += 1
    else:
        s = j - w
    return _f32_to_word(np.float32(bc + s) * step, code), ne


@njit(cache=True, nogil=True)
def _decode_symbols(stream, nwords, base, keys, k, W, dec, esc, low, lowlen, step, T, code, out):
    """Decode C * T symbols (channel-major) into out (stored words [C, T] of
    dtype code): out[c, t] = word of float32(q) * step. stream has at least
    8 words of padding after nwords; esc one entry. Returns 0, or -1 if the
    data is inconsistent."""
    C = keys.shape[0]
    nesc = esc.shape[0] - 1
    if nwords < STATE_WORDS:
        return -1
    st = np.empty(LANES, np.int64)
    for lane in range(LANES):
        x = np.int64(stream[2 * lane]) | (np.int64(stream[2 * lane + 1]) << 16)
        if x < RANS_L or x >= (np.int64(1) << 31):
            return -1
        st[lane] = x
    p = np.int64(STATE_WORDS)
    ne = 0
    lb = 0          # bit position in low
    for c in range(C):
        key = keys[c]
        tb = key << PROB_BITS
        w = W[key]
        kc = k[c]
        bc = base[c]
        t0 = 0
        if kc == 0 and T >= 8:           # token t is on lane t & 7: eight at a time, states in registers
            t0 = T & ~7
            x0, x1, x2, x3, x4, x5, x6, x7 = st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7]
            for t in range(0, t0, 8):
                x0, p, j0 = _dstep(x0, dec, tb, stream, p)
                x1, p, j1 = _dstep(x1, dec, tb, stream, p)
                x2, p, j2 = _dstep(x2, dec, tb, stream, p)
                x3, p, j3 = _dstep(x3, dec, tb, stream, p)
                x4, p, j4 = _dstep(x4, dec, tb, stream, p)
                x5, p, j5 = _dstep(x5, dec, tb, stream, p)
                x6, p, j6 = _dstep(x6, dec, tb, stream, p)
                x7, p, j7 = _dstep(x7, dec, tb, stream, p)
                if p > nwords:
                    return -1
                out[c, t], ne = _value(j0, w, esc, ne, bc, step, code)
                out[c, t + 1], ne = _value(j1, w, esc, ne, bc, step, code)
                out[c, t + 2], ne = _value(j2, w, esc, ne, bc, step, code)
                out[c, t + 3], ne = _value(j3, w, esc, ne, bc, step, code)
                out[c, t + 4], ne = _value(j4, w, esc, ne, bc, step, code)
                out[c, t + 5], ne = _value(j5, w, esc, ne, bc, step, code)
                out[c, t + 6], ne = _value(j6, w, esc, ne, bc, step, code)
                out[c, t + 7], ne = _value(j7, w, esc, ne, bc, step, code)
            st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7] = x0, x1, x2, x3, x4, x5, x6, x7
        for t in range(t0, T):
            lane = t & 7
            st[lane], p, j = _dstep(st[lane], dec, tb, stream, p)
            if p > nwords:
                return -1
            if j == 2 * w + 2:
                if ne >= nesc:
                    return -1
                sv = esc[ne]
                ne += 1
            else:
                sv = j - w
            if kc:
                if lb + kc > lowlen * 8:
                    return -1
                v = np.int64(0)
                for b in range(kc):
                    v |= np.int64((low[(lb + b) >> 3] >> ((lb + b) & 7)) & 1) << b
                lb += kc
                qv = bc + (sv << kc) + v
            else:
                qv = bc + sv
            out[c, t] = _f32_to_word(np.float32(qv) * step, code)
    if p != nwords or ne != nesc or (lb + 7) // 8 != lowlen:
        return -1
    for lane in range(LANES):
        if st[lane] != RANS_L:
            return -1
    return 0


@njit(cache=True, nogil=True)
def _read_params(buf, pos, end, C, base, keys, k):
    """Parse the per-channel parameters; returns the new position or -1."""
    for c in range(C):
        v, pos = _rans.read_varint(buf, pos, end)
        if pos < 0:
            return -1
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
    return decode_words(payload, T, C, 1, np.uint32, where).T.view(np.float32)


def decode_words(payload, T, C, code, wdtype, where, scratch=None):
    """Stored words [C, T] (channel-major; dtype code, numpy dtype wdtype) from a
    payload made by encode_words(); scratch: a reusable 1-D buffer of that
    dtype (the result is then a view of it: fresh pages cost ~6 % here)."""
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
    esc = np.zeros(nesc + 1, np.int64)
    pos = _rans.unpack_varints(buf, r.pos, len(buf), esc[:nesc], (1 << 63) - 1)
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
    stream = np.zeros(nwords + 8, np.uint16)
    stream[:nwords] = np.frombuffer(raw, np.uint16)
    if scratch is not None and scratch.dtype == wdtype and scratch.shape[0] >= C * T:
        out = scratch[:C * T].reshape(C, T)
    else:
        out = np.empty((C, T), wdtype)
    nat = native()
    if nat is not None:
        low = np.ascontiguousarray(low)
        rc = nat.decode(_p(stream), nwords, _p(base), _p(keys), _p(k), tb.addr['W'], tb.addr['dec'], _p(esc), nesc,
                        _p(low) if lowlen else 0, lowlen, float(step), T, C, code, _p(out))
    else:
        rc = _decode_symbols(stream, nwords, base, keys, k, tb.W, tb.dec, esc, low, lowlen, np.float32(step), T,
                             code, out)
    if rc < 0:
        raise SSMZipError(f"corrupt data: inconsistent symbol stream in {where}")
    return out


# ---------------------------------------------------------------- layout

def scatter(recT, H, D, a, b, dst):
    """dst[h, t - a, d] = recT[h * D + d, t] for t in [a, b): a decoded chunk
    (channel-major) into a [heads, tokens, head_dim] view whose last axis is contiguous."""
    Tc = recT.shape[1]
    nat = native()
    es = recT.dtype.itemsize
    if (nat is not None and recT.flags.c_contiguous and dst.strides[2] == es
            and dst.strides[0] % es == 0 and dst.strides[1] % es == 0):
        nat.scatter(_p(recT), es, H, D, Tc, a, b, dst.ctypes.data, dst.strides[0] // es, dst.strides[1] // es)
    else:
        dst[...] = recT.reshape(H, D, Tc)[:, :, a:b].transpose(0, 2, 1)


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
