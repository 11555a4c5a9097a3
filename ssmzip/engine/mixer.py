"""Logistic mixing and APM/SSE refinement, in exact integer arithmetic.

Mixer: p = squash(sum_i (w_i * x_i >> 8) >> 8) over stretched inputs x_i in
[-2047, 2047], with 16.16 fixed-point weights. One weight set is chosen per
bit by a small context. Online gradient step on coding cost:
w_i += (x_i * err * lr) >> 16, err = (bit << 12) - p, skipped when |err| is small.

Everything stays in int32 so that LLVM vectorises the loops (8 lanes with
AVX2), and integer sums are exact in any order, so vectorised and scalar code
(NUMBA_CPU_NAME=generic or host) give the same bits. Bounds: |x| <= 2047 < 2^11
and |w| <= 2^19 (weights are clamped to +-8.0), so |w * x| < 2^30; each term is
shifted before the sum, so 64 terms stay below 2^28; the rate is at most 96
(3 x 16 while the weights are young, x 2 for mixer 3 of the wide design), so
|err * lr| <= 4095 * 96 < 2^19 and |x * err * lr| < 2^30.

APM (adaptive probability map): refines a probability given a context by
interpolating between 33 learned points over the stretch domain; only the
nearer point is updated. A table holds each point's difference from where it
starts (counters.APM_RAMP, the squash curve), so a new table is all zeros,
which the OS hands out as pages are first touched: writing the curve into
level 9's 207 MB of APMs made its state take 0.04-0.13 s to build (now
0.008-0.024 s).
"""
import numpy as np
from numba import njit

from .counters import APM_RAMP
from .presets import APM_POINTS


@njit(cache=True, inline="always")
def clamp_stretch(d):
    if d > 2047:
        return 2047
    if d < -2047:
        return -2047
    return d


WEIGHT_LIMIT = 1 << 19


@njit(cache=True, inline="always")
def mix_dot(w, wbase, x, n):
    s = np.int32(0)
    for i in range(n):
        s = np.int32(s + (np.int32(w[wbase + i] * x[i]) >> 8))
    return clamp_stretch(s >> 8)


@njit(cache=True, inline="always")
def mix_update(w, wbase, x, n, err, lr, skip):
    """err = (bit << 12) - p. Nearly right predictions (|err| < skip) teach little
    and are the majority, so they are skipped: faster, and at skip = 100
    measured slightly smaller than none at levels 1-6 (level 9, with more
    inputs to weigh, does best at 32: Preset.mixer_skip)."""
    if -skip < err < skip:
        return
    e = np.int32(err * lr)
    lo = np.int32(-WEIGHT_LIMIT)
    hi = np.int32(WEIGHT_LIMIT)
    for i in range(n):
        v = np.int32(w[wbase + i] + (np.int32(x[i] * e + 32768) >> 16))
        w[wbase + i] = min(max(v, lo), hi)


@njit(cache=True, inline="always")
def apm_predict(t, ctx, st):
    """Refined 12-bit probability and the index of the point to update. st = stretch(p)."""
    s = st + 2048
    if s < 0:
        s = 0
    if s > 4095:
        s = 4095
    lo = s >> 7
    w = s & 127
    base = ctx * APM_POINTS + lo
    p = ((t[base] + APM_RAMP[lo]) * (128 - w) + (t[base + 1] + APM_RAMP[lo + 1]) * w) >> 11
    if p < 1:
        p = 1
    if p > 4095:
        p = 4095
    return p, base + (w >> 6)


@njit(cache=True, inline="always")
def apm_update(t, idx, bit, rate):
    t[idx] += ((bit << 16) - (t[idx] + APM_RAMP[idx % APM_POINTS])) >> rate
