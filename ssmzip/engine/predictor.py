"""TEMPORARY order-0 engine so that the layers above can be built; replaced by the CM engine."""
import numpy as np
from numba import njit

from .coder import decode_bit, decode_start, encode_bit, encode_flush


@njit(cache=True)
def _enc(data, out):
    t = np.full(256 * 2, 2048, dtype=np.int64)
    x1, x2, op = 0, 0xFFFFFFFF, 0
    for i in range(data.shape[0]):
        c = data[i]
        c0 = 1
        for j in range(7, -1, -1):
            p = t[c0]
            bit = (c >> j) & 1
            x1, x2, op = encode_bit(x1, x2, bit, p, out, op)
            t[c0] += ((bit << 12) - p) >> 4
            if t[c0] < 1: t[c0] = 1
            if t[c0] > 4095: t[c0] = 4095
            c0 = c0 * 2 + bit
    return encode_flush(x1, out, op)


@njit(cache=True)
def _dec(src, out):
    t = np.full(256 * 2, 2048, dtype=np.int64)
    x1, x2 = 0, 0xFFFFFFFF
    x, ip = decode_start(src)
    for i in range(out.shape[0]):
        c0 = 1
        for j in range(8):
            p = t[c0]
            bit, x1, x2, x, ip = decode_bit(x1, x2, x, p, src, ip)
            t[c0] += ((bit << 12) - p) >> 4
            if t[c0] < 1: t[c0] = 1
            if t[c0] > 4095: t[c0] = 4095
            c0 = c0 * 2 + bit
        out[i] = c0 & 255


def encode_block(data, preset, progress=None):
    a = np.frombuffer(bytes(data), dtype=np.uint8)
    out = np.zeros(len(a) * 2 + 64, dtype=np.uint8)
    n = _enc(a, out)
    if progress: progress(len(a))
    return out[:n].tobytes()


def decode_block(payload, size, preset, progress=None):
    out = np.zeros(size, dtype=np.uint8)
    _dec(np.frombuffer(bytes(payload), dtype=np.uint8), out)
    if progress: progress(size)
    return out.tobytes()
