"""Logistic mixing and APM/SSE refinement, in exact integer arithmetic.

Mixer: p = squash(sum_i w_i * x_i >> 16) over stretched inputs x_i in
[-2047, 2047], with 16.16 fixed-point weights. One weight set is chosen per
bit by a small context. Online gradient step on coding cost:
w_i += x_i * err * lr >> 10, err = (bit << 12) - p. Products are formed in
int64, so no intermediate can overflow (|x| < 2^11, |w| < 2^31).

APM (adaptive probability map): refines a probability given a context by
interpolating between 33 learned points over the stretch domain; only the
nearer point is updated.
"""
import numpy as np
from numba import njit

WEIGHT_ONE = 1 << 16
APM_POINTS = 33


@njit(cache=True, inline="always")
def clamp_stretch(d):
    if d > 2047:
        return 2047
    if d < -2047:
        return -2047
    return d


@njit(cache=True, inline="always")
def mix_dot(w, wbase, x, n):
    s = 0
    for i in range(n):
        s += np.int64(w[wbase + i]) * x[i]
    return clamp_stretch(s >> 16)


@njit(cache=True, inline="always")
def mix_update(w, wbase, x, n, err):
    for i in range(n):
        w[wbase + i] += (x[i] * err + 32768) >> 16


def new_weights(n_sets: int, n_inputs: int, init: int) -> np.ndarray:
    return np.full(n_sets * n_inputs, init, dtype=np.int32)


def new_apm(n_contexts: int, squash: np.ndarray) -> np.ndarray:
    row = np.array([squash[min(4094, max(0, (j - 16) * 128 + 2047))] * 16 for j in range(APM_POINTS)],
                   dtype=np.int32)
    return np.tile(row, n_contexts)


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
    p = (t[base] * (128 - w) + t[base + 1] * w) >> 11
    if p < 1:
        p = 1
    if p > 4095:
        p = 4095
    return p, base + (w >> 6)


@njit(cache=True, inline="always")
def apm_update(t, idx, bit, rate):
    t[idx] += ((bit << 16) - t[idx]) >> rate
