"""Integer tables shared by every model: squash/stretch and bit-history states.

All tables are built at import time by exact arithmetic (``decimal`` for the
logistic function, integers for the state machine), so every machine builds
the same tables bit for bit -- no libm involved.

Probabilities are 12-bit integers (1..4095 = P(bit is 1) * 4096); the
logistic ("stretch") domain is -2047..2047, i.e. ln(p/(1-p)) * 256.
"""
from __future__ import annotations

from decimal import Decimal, getcontext

import numpy as np


def _build_squash() -> np.ndarray:
    """squash(d) = 4096 / (1 + e^(-d/256)) for d in -2047..2047, rounded, 1..4095.

    e^(-d/256) is built as a power of one exactly rounded constant at 40
    digits, so the error stays far below what could change a rounded value.
    """
    getcontext().prec = 40
    step = (Decimal(-1) / 256).exp()
    out = np.empty(4095, dtype=np.int32)
    e = Decimal(1)
    for d in range(0, 2048):                 # squash(-d) = 4096 - squash(d)
        v = int((Decimal(4096) / (1 + e)).to_integral_value())
        out[2047 + d] = min(4095, v)
        out[2047 - d] = max(1, 4096 - v)
        e *= step
    return out


def _build_stretch(squash: np.ndarray) -> np.ndarray:
    """stretch(p) = smallest d with squash(d) >= p (the inverse of squash)."""
    out = np.empty(4096, dtype=np.int32)
    j = 0
    for p in range(4096):
        while j < 4094 and squash[j] < p:
            j += 1
        out[p] = j - 2047
    return out


SQUASH = _build_squash()            # index d + 2047
STRETCH = _build_stretch(SQUASH)    # index p (0..4095)
# An APM's 33 points start on the squash curve, 128 stretch units apart, in
# 16.16 fixed point; tables hold each point's difference from this (mixer.py)
APM_RAMP = np.array([SQUASH[min(4094, max(0, (j - 16) * 128 + 2047))] * 16 for j in range(33)], dtype=np.int32)


# ---------------------------------------------------------------------------
# Bit-history states. A state stands for a pair of counts (n0, n1) of zeros
# and ones seen in one context. Counts are bounded (the less frequent count
# limits the more frequent), and when a bit is seen the opposite count is
# partly forgotten, so a state favours recent behaviour. An adaptive map per
# model turns each state into a probability learned on the data.

_MAX_MAJOR = {0: 40, 1: 16, 2: 10, 3: 7, 4: 5, 5: 5}   # minor count -> largest major count


def _allowed(n0: int, n1: int) -> bool:
    lo, hi = min(n0, n1), max(n0, n1)
    return lo in _MAX_MAJOR and hi <= _MAX_MAJOR[lo]


def _build_states():
    """States are (n0, n1, last bit); the last bit is kept only when both counts are
    non-zero (otherwise it is implied), as it tells apart histories like 0001 and 1000."""
    pairs = [(a, b) for a in range(64) for b in range(64) if _allowed(a, b)]
    keys = []
    for a, b in pairs:
        if a and b:
            keys += [(a, b, 0), (a, b, 1)]
        else:
            keys.append((a, b, 1 if b else 0))
    keys.sort(key=lambda t: (t[0] + t[1], t[1], t[2]))
    assert len(keys) <= 256
    index = {k: i for i, k in enumerate(keys)}
    nxt = np.zeros((len(keys), 2), dtype=np.uint8)
    for (n0, n1, _), s in index.items():
        for y in (0, 1):
            a, b = (n0, n1) if y == 0 else (n1, n0)   # a: count of y, b: the other
            a += 1
            if b > 2:
                b = b // 2 + 1
            while not _allowed(a, b):
                if b > 0:
                    b -= 1
                else:
                    a -= 1
            m0, m1 = (a, b) if y == 0 else (b, a)
            last = y if (m0 and m1) else (1 if m1 else 0)
            nxt[s, y] = index[(m0, m1, last)]
    counts = np.array([k[:2] for k in keys], dtype=np.int32)
    return nxt, counts


STATE_NEXT, STATE_COUNTS = _build_states()          # next[state, bit]; (n0, n1) per state
N_STATES = len(STATE_COUNTS)
STATE_PRIORITY = (STATE_COUNTS[:, 0] + STATE_COUNTS[:, 1]).astype(np.int32)


def state_map_init() -> np.ndarray:
    """Initial 22-bit probability of a 1 for each state: (n1 + 1/2) / (n + 1)."""
    n0 = STATE_COUNTS[:, 0].astype(np.int64)
    n1 = STATE_COUNTS[:, 1].astype(np.int64)
    return (((2 * n1 + 1) << 22) // (2 * (n0 + n1) + 2)).astype(np.int32)


# Reciprocals for count-based adaptation rates: RECIPROCAL[n] = 65536 / (n + 1.5).
RECIPROCAL = np.array([(2 * 65536) // (2 * n + 3) for n in range(1024)], dtype=np.int32)
