"""Sizes, flat-array layouts and initial values of the online SSM (ssm.py).

Kept apart from the numba kernels so that presets, the model's arrays and the
C backend can be used without importing numba (it costs a third of a second
at start-up).
"""
from __future__ import annotations

import math

import numpy as np

f32 = np.float32
CONV = 4                                 # causal conv width

# --- layout -------------------------------------------------------------------
# dims: model sizes, shared by every kernel
D_DM, D_DI, D_DS, D_R, D_NL, D_T, D_NG, D_NGB = range(8)
N_DIMS = 8
# per-layer parameter blocks, in this order, at lay[l * N_LP + k]
L_G, L_WIN, L_CW, L_CB, L_WX, L_WDT, L_DTB, L_ALOG, L_D, L_WOUT = range(10)
N_LP = 10
# per-layer activation blocks, at act_lay[l * N_LA + k]
A_XIN, A_R, A_U, A_XB, A_Z, A_XC, A_XS, A_PJ, A_DT, A_DEC, A_H, A_Y, A_O = range(13)
N_LA = 13
# globals after the layers: parameters at lay[NL * N_LP + k], activations at act_lay[NL * N_LA + k]
G_EMB, G_GF, G_WH, G_HB = range(4)
G_XF, G_RF, G_F, G_LG = range(4)
# the flag array of a block's SSM (int64; ssm.py, "the lagged SSM"): the preset's
# lag, which of the two parameter arrays is in force, whether a step is pending,
# how many n-gram rows it staged, then the staged rows' offsets
F_LAG, F_PARITY, F_PENDING, F_STAGED, F_ROWS = range(5)


# The SSM's arrays as a block's state holds them (state.py), in the order of the
# `ctx` that the per-byte steps take (native/ssm_step.c, ssm_callbacks.py): name, dtype
CTX_ARRAYS = (("sP", np.float32), ("sG", np.float32), ("sV", np.float32), ("sopt", np.float32),
              ("slay", np.int64), ("sA", np.float32), ("salay", np.int64), ("sdims", np.int64),
              ("sS", np.float32), ("sib", np.int32), ("stok", np.int64), ("sNE", np.float32),
              ("sNV", np.float32), ("srows", np.int64), ("slr", np.float32), ("skern", np.int64),
              ("sPn", np.float32), ("sflag", np.int64), ("sstage", np.float32))
# what a second buffer set replaces: the chunk's activations, inputs and targets, scratch
SECOND_SET = ("sA", "stok", "srows", "sS", "sib")


def make_context(state, second: bool = False) -> np.ndarray:
    """[address, length] of each array of CTX_ARRAYS, from a BlockState; with
    `second`, its second buffer set (state.sA2, ...) in place of SECOND_SET.
    The arrays must outlive every call that is given it."""
    ctx = np.zeros(2 * len(CTX_ARRAYS), dtype=np.int64)
    for i, (name, dtype) in enumerate(CTX_ARRAYS):
        a = getattr(state, name + "2" if second and name in SECOND_SET else name)
        assert a.dtype == dtype and a.flags.c_contiguous, name
        ctx[2 * i], ctx[2 * i + 1] = a.ctypes.data, a.shape[0]
    return ctx


class Shape:
    """Sizes and flat-array layouts of one SSM. Parameters, gradients, Adam's
    second moments and activations each live in one preallocated float32 array."""

    def __init__(self, dm, di, ds, rank, layers, chunk, ngram=0, ngram_bits=0):
        self.dm, self.di, self.ds, self.rank, self.layers, self.chunk = dm, di, ds, rank, layers, chunk
        self.ngram, self.ngram_bits = ngram, ngram_bits
        self.dims = np.array([dm, di, ds, rank, layers, chunk, ngram, ngram_bits], dtype=np.int64)
        # hashed n-gram input embeddings (orders 2 .. ngram, and the word), kept apart from P:
        # they are updated sparsely, only the rows a chunk used
        self.n_ngram = (ngram << ngram_bits) * dm if ngram else 1
        T, K = chunk, rank + 2 * ds
        per_layer = [dm, dm * 2 * di, CONV * di, di, di * K, rank * di, di, di, di, di * dm]
        glob = [256 * dm, dm, 256 * dm, 256]
        self.lay, self.n_params = _offsets(per_layer, layers, glob)
        act_layer = [T * dm, T, T * dm, (T + CONV - 1) * di, T * di, T * di, T * di, T * K, T * di, T * di,
                     (T + 1) * ds * di, T * di, T * di]
        act_glob = [T * dm, T, T * dm, T * 8]
        self.act_lay, self.n_act = _offsets(act_layer, layers, act_glob)
        w = max(2 * di, dm, K)
        self.n_scratch = N_SBUF * (T + CONV) * w + ds * di + N_SVEC * di     # see scratch layout below

    def memory(self) -> int:
        return 4 * (3 * self.n_params + self.n_act + self.n_scratch + 2 * self.n_ngram)

    def lag_memory(self) -> int:
        """What a lagged SSM adds: the second parameter array, the staged n-gram rows."""
        return 4 * (self.n_params + self.chunk * self.ngram * (self.dm + 2))


def _offsets(per_layer, layers, glob):
    offs, o = [], 0
    for _ in range(layers):
        for n in per_layer:
            offs.append(o)
            o += n
    for n in glob:
        offs.append(o)
        o += n
    return np.array(offs, dtype=np.int64), o


def _uniform(n, seed, scale):
    """n float32 values uniform in [-scale, scale) from splitmix64 -- exact integer
    arithmetic and exact float scaling, the same on every machine and numpy."""
    with np.errstate(over="ignore"):
        k = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)
        k = (k ^ (k >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        k = (k ^ (k >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        k = k ^ (k >> np.uint64(31))
    u = (k >> np.uint64(40)).astype(np.float64) * math.ldexp(1.0, -24)      # exact: 24-bit integer / 2^24
    return ((u * 2.0 - 1.0) * float(f32(scale))).astype(np.float32)


def init_params(shape: Shape, seed: int) -> np.ndarray:
    """Initial parameters; only exactly rounded float operations (no log/exp, and
    sqrt rather than x ** 0.5, which goes through libm's pow)."""
    dm, di, ds, r = shape.dm, shape.di, shape.ds, shape.rank
    P = np.zeros(shape.n_params, dtype=np.float32)
    lay = shape.lay
    s = seed * 1000

    def put(k, n, scale):
        nonlocal s
        s += 1
        P[lay[k]:lay[k] + n] = _uniform(n, s, scale)

    for l in range(shape.layers):
        b = l * N_LP
        P[lay[b + L_G]:lay[b + L_G] + dm] = 1.0
        put(b + L_WIN, dm * 2 * di, 1.0 / math.sqrt(dm))
        put(b + L_CW, CONV * di, 0.5)
        put(b + L_WX, di * (r + 2 * ds), 1.0 / math.sqrt(di))
        put(b + L_WDT, r * di, 0.5 / math.sqrt(r))
        # step sizes from e^-7 to e^-2 across channels, decay rates A = e^0 .. e^2.5
        i = np.arange(di, dtype=np.float64)
        P[lay[b + L_DTB]:lay[b + L_DTB] + di] = (-7.0 + 5.0 * i / max(di - 1, 1)).astype(np.float32)
        P[lay[b + L_ALOG]:lay[b + L_ALOG] + di] = ((i % 8) * (2.5 / 7)).astype(np.float32)
        P[lay[b + L_D]:lay[b + L_D] + di] = 1.0
        put(b + L_WOUT, di * dm, 0.5 / math.sqrt(di))
    g = shape.layers * N_LP
    put(g + G_EMB, 256 * dm, 1.0)
    P[lay[g + G_GF]:lay[g + G_GF] + dm] = 1.0
    # the head starts at zero: p = 1/2 everywhere until it has learned something
    return P


# Scratch buffers of the backward pass, each (T + CONV) x W floats, row-major
# with t first ("T-major"), then dH (DS x DI) and three per-channel vectors.
S_DX, S_DO, S_DY, S_DZ, S_DXS, S_DPJ, S_DA, S_DXB, S_DXZ, S_DU, S_TA, S_TB = range(12)
N_SBUF = 12
N_SVEC = 5       # per-channel vectors after dH: 3 for the backward, 2 for the forward
