"""Binary arithmetic coder: 32-bit range, exact integer arithmetic.

The coder keeps a range [x1, x2] of 32-bit integers. A bit with probability
p (12-bit, P(bit = 1) = p / 4096, 1 <= p <= 4095) splits the range at xmid;
the encoder keeps the part of the bit it codes and shifts out the leading
bytes on which x1 and x2 agree. The decoder mirrors it with x, the next four
bytes of the stream. Reading past the end of the stream yields 0xFF bytes,
which is what makes a one-byte flush sufficient.

The functions take and return the coder registers so that numba keeps them in
machine registers inside the coding loop.
"""
from numba import njit

MASK32 = 0xFFFFFFFF


@njit(cache=True, inline="always")
def split(x1, x2, p):
    """The split point for a 12-bit probability p of a 1 (exact, no overflow in int64)."""
    r = x2 - x1
    return x1 + (r >> 12) * p + (((r & 0xFFF) * p) >> 12)


@njit(cache=True, inline="always")
def encode_bit(x1, x2, bit, p, out, op):
    xmid = split(x1, x2, p)
    if bit:
        x2 = xmid
    else:
        x1 = xmid + 1
    while ((x1 ^ x2) & 0xFF000000) == 0:
        out[op] = x2 >> 24
        op += 1
        x1 = (x1 << 8) & MASK32
        x2 = ((x2 << 8) & MASK32) | 0xFF
    return x1, x2, op


@njit(cache=True, inline="always")
def encode_flush(x1, out, op):
    out[op] = x1 >> 24
    return op + 1


@njit(cache=True, inline="always")
def next_byte(src, ip):
    if ip < src.shape[0]:
        return src[ip]
    return 0xFF


@njit(cache=True, inline="always")
def decode_start(src):
    x = 0
    for i in range(4):
        x = (x << 8) | next_byte(src, i)
    return x, 4


@njit(cache=True, inline="always")
def decode_bit(x1, x2, x, p, src, ip):
    xmid = split(x1, x2, p)
    if x <= xmid:
        bit = 1
        x2 = xmid
    else:
        bit = 0
        x1 = xmid + 1
    while ((x1 ^ x2) & 0xFF000000) == 0:
        x1 = (x1 << 8) & MASK32
        x2 = ((x2 << 8) & MASK32) | 0xFF
        x = ((x << 8) & MASK32) | next_byte(src, ip)
        ip += 1
    return bit, x1, x2, x, ip
