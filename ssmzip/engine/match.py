"""Match model: finds the last occurrence of the current context and predicts
that the byte which followed it comes again.

An index maps a hash of the last `minlen` bytes to the position after them.
When no match is active, the candidate from the index is verified backwards
(so a hash collision never starts a false match) and its true length taken.
While the match holds, its length grows by one per byte; the first
mispredicted bit ends it for the rest of the byte.
"""
from numba import njit

from .contexts import hash32
from .cm_layout import LEN_BUCKETS

MAX_LEN = 65535
VERIFY_LEN = 32           # how far back a candidate is checked when found


@njit(cache=True, inline="always")
def length_bucket(n):
    """0..31: exact below 16, then coarser."""
    if n < 16:
        return n
    b = 16 + ((n - 16) >> 3)
    return b if b < LEN_BUCKETS else LEN_BUCKETS - 1


@njit(cache=True, inline="always")
def match_update(buf, pos, index, mask, minlen, mptr, mlen):
    """After byte buf[pos] is known: extend or find a match. Returns (mptr, mlen).

    mptr is the position of the predicted next byte; mlen 0 means no match.
    """
    if mlen > 0 and mptr <= pos and buf[mptr] == buf[pos]:
        mlen += 1
        if mlen > MAX_LEN:
            mlen = MAX_LEN
        mptr += 1
    else:
        mlen = 0
    if pos + 1 < minlen:
        return mptr, mlen
    h = 0
    for k in range(minlen):
        h = (h << 8) | buf[pos - k]
        h = hash32(h)
    slot = h & mask
    if mlen == 0:
        cand = index[slot]
        if cand > 0:
            n = 0
            while n < VERIFY_LEN and cand - 1 - n >= 0 and buf[cand - 1 - n] == buf[pos - n]:
                n += 1
            if n >= minlen:
                mlen = n
                mptr = cand
    index[slot] = pos + 1
    return mptr, mlen
