"""The model that codes a Burrows-Wheeler transformed block (level 1), in numba.

A transformed block is runs of few symbols whose mix drifts slowly along it;
on enwik8 over half of its bytes repeat the byte before. So each byte is first
one binary decision, "the same as the previous byte?" (the repeat flag), and
only when it is not are its 8 bits coded: 4.2 decisions a byte instead of 8,
for 0.7 % more bytes than coding every byte's bits (measured on enwik8_1M).

  - the flag: three adaptive probabilities -- by the run length (0..15), by the
    previous byte and the run length, by the last 12 flags -- and a bias, in
    one logistic mixer whose weights are chosen by the run length;
  - a byte's bits: order 0 over the transform, adapting very fast (rate 1/4);
    order 1 (the previous byte) at two speeds (1/16 and 1/128); the bit that
    the byte before the current run predicts, with a confidence learned per
    run length; and a bias, mixed by weights chosen by the partial byte and
    the two flags before this one.

Hashed order 2 and an APM were measured and gained under 0.2 % on enwik8_1M:
not worth their time here. Everything is exact integer arithmetic:
probabilities are 16-bit counters (12 bits reach the engine's binary
arithmetic coder), mixer weights 16.16 fixed point clamped to +-2^22, dot
products in 64 bits. native/bwt.c does the same, bit for bit.

bwt_block.py frames a block's payload and picks this or native/bwt.c.
"""
import numpy as np
from numba import njit

from . import counters as C
from .coder import decode_bit, decode_start, encode_bit, encode_flush

N_INPUTS = 5                         # a byte's bits: order 0, order 1 fast and slow, the run's byte, bias
FLAG_INPUTS = 4                      # the flag: run length, previous byte, flag history, bias
RUN_LENGTHS = 16                     # run length classes 0..15
HISTORY_BITS = 12                    # flags in the flag's history context
TREE_SETS = 4                        # weight sets per partial byte: the two flags before this byte's
RATE_O0, RATE_O1_FAST, RATE_O1_SLOW, RATE_RUN, RATE_FLAG = 2, 4, 7, 7, 5
MIXER_RATE = 3                       # weight step: input x error x 3 / 2^13
WEIGHT_INIT, WEIGHT_LIMIT = 1 << 14, 1 << 22
RUN_INIT = 60000                     # the run input starts out trusting the predicted bit
ENCODE, DECODE = 0, 1


@njit(cache=True, inline="always")
def _mix(st, w, row, squash):
    """The mixer's probability (12 bits) for inputs st with weight set w[row]."""
    dot = 0
    for j in range(st.shape[0]):
        dot += np.int64(st[j]) * w[row, j]
    d = min(max(dot >> 16, -2047), 2047)
    return squash[d + 2047]


@njit(cache=True, inline="always")
def _learn(st, w, row, bit, p):
    err = ((bit << 12) - p) * MIXER_RATE
    for j in range(st.shape[0]):
        v = w[row, j] + ((st[j] * err) >> 13)
        w[row, j] = min(max(v, -WEIGHT_LIMIT), WEIGHT_LIMIT)


@njit(cache=True, inline="always")
def _code_bit(mode, bit, p, x1, x2, x, io, ip, op):
    """Encode `bit`, or decode it, with probability p (native/bwt.c code_bit)."""
    if mode == ENCODE:
        x1, x2, op = encode_bit(x1, x2, bit, p, io, op)
    else:
        bit, x1, x2, x, ip = decode_bit(x1, x2, x, p, io, ip)
    return bit, x1, x2, x, ip, op


@njit(cache=True)
def _code(mode, last, io, squash, stretch):
    """Encode `last` into `io` (returns the bytes written, or -1 when io is too small)
    or decode into `last` from `io` (returns 0)."""
    n = last.shape[0]
    f_len = np.full(RUN_LENGTHS, 32768, np.int32)           # P(repeat | run length)
    f_byte = np.full(256 * RUN_LENGTHS, 32768, np.int32)    # P(repeat | previous byte, run length)
    f_hist = np.full(1 << HISTORY_BITS, 32768, np.int32)    # P(repeat | the last 12 flags)
    fw = np.full((RUN_LENGTHS, FLAG_INPUTS), WEIGHT_INIT, np.int32)
    fst = np.zeros(FLAG_INPUTS, np.int32)
    fst[3] = 256
    o0 = np.full(256, 32768, np.int32)
    o1_fast = np.full(65536, 32768, np.int32)
    o1_slow = np.full(65536, 32768, np.int32)
    run_p = np.full(RUN_LENGTHS, RUN_INIT, np.int32)
    w = np.full((256 * TREE_SETS, N_INPUTS), WEIGHT_INIT, np.int32)
    st = np.zeros(N_INPUTS, np.int32)
    st[4] = 256
    x1, x2 = 0, 0xFFFFFFFF
    x, ip = 0, 0
    if mode == DECODE:
        x, ip = decode_start(io)
    op = 0
    cap = io.shape[0] - 16               # room for one byte's output (<= 12 bytes) and the flush
    c1 = 0                               # previous byte of the transform
    before_run = 0                       # the byte before the current run of c1
    run = 0                              # how many bytes before c1 equal it
    hist = 0                             # the last 16 flags, newest in bit 0
    for i in range(n):
        if mode == ENCODE and op > cap:
            return -1
        c = last[i] if mode == ENCODE else 0
        rl = min(run, RUN_LENGTHS - 1)
        kb = c1 * RUN_LENGTHS + rl
        kh = hist & ((1 << HISTORY_BITS) - 1)
        fst[0] = stretch[f_len[rl] >> 4]
        fst[1] = stretch[f_byte[kb] >> 4]
        fst[2] = stretch[f_hist[kh] >> 4]
        p = _mix(fst, fw, rl, squash)
        repeat, x1, x2, x, ip, op = _code_bit(mode, 1 if c == c1 else 0, p, x1, x2, x, io, ip, op)
        _learn(fst, fw, rl, repeat, p)
        target = repeat << 16
        f_len[rl] += (target - f_len[rl]) >> RATE_FLAG
        f_byte[kb] += (target - f_byte[kb]) >> RATE_FLAG
        f_hist[kh] += (target - f_hist[kh]) >> RATE_FLAG
        hist = ((hist << 1) | repeat) & 0xFFFF
        if repeat:
            if mode == DECODE:
                last[i] = c1
            run += 1
            continue
        node = 1
        row1 = c1 << 8
        wsel = (hist >> 1) & (TREE_SETS - 1)
        for b in range(7, -1, -1):
            k1 = row1 | node
            st[0] = stretch[o0[node] >> 4]
            st[1] = stretch[o1_fast[k1] >> 4]
            st[2] = stretch[o1_slow[k1] >> 4]
            on_run = (before_run | 256) >> (b + 1) == node
            expect = (before_run >> b) & 1
            if on_run:
                sv = stretch[run_p[rl] >> 4]
                st[3] = sv if expect else -sv
            else:
                st[3] = 0
            row = node * TREE_SETS + wsel
            p = _mix(st, w, row, squash)
            bit, x1, x2, x, ip, op = _code_bit(mode, (c >> b) & 1, p, x1, x2, x, io, ip, op)
            _learn(st, w, row, bit, p)
            target = bit << 16
            o0[node] += (target - o0[node]) >> RATE_O0
            o1_fast[k1] += (target - o1_fast[k1]) >> RATE_O1_FAST
            o1_slow[k1] += (target - o1_slow[k1]) >> RATE_O1_SLOW
            if on_run:
                run_p[rl] += (((1 if bit == expect else 0) << 16) - run_p[rl]) >> RATE_RUN
            node = (node << 1) | bit
        c = node & 255
        if mode == DECODE:
            last[i] = c
        run = 0                          # (a corrupt stream may decode c == c1 here: no matter)
        before_run = c1
        c1 = c
    if mode == ENCODE and n:
        op = encode_flush(x1, io, op)
    return op


def encode_transform(last, out) -> int:
    """Code the transform (a uint8 array of n >= 1 bytes) into out: the bytes
    written, or -1 when out is too small (bwt_block.py then gives it more room)."""
    return _code(ENCODE, last, out, C.SQUASH, C.STRETCH)


def decode_transform(src, size: int) -> np.ndarray:
    """`size` transformed bytes decoded from src (a uint8 array)."""
    last = np.zeros(size, np.uint8)
    _code(DECODE, last, src, C.SQUASH, C.STRETCH)
    return last
