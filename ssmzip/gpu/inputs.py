"""What the SSM reads besides its own state, computed on the CPU as the coder does.

Each row's input is the previous byte and the hashed n-gram rows of ssm.ngram_rows,
taken from the same registers (last 8 bytes, current word) that the context
models keep in predictor._code_segment; and after each chunk the n-gram step
needs each used row once, with the rows of the chunk where it was used.
"""
import numpy as np
from numba import njit

from ..engine.contexts import word_hash, word_letter
from ..engine.ssm import ngram_rows

# per-block registers: the last 4 bytes (newest lowest), the 4 before, the current word's hash
R_C4, R_C8, R_WORD = 0, 1, 2
N_REGS = 3


@njit(cache=True, inline="always")
def _advance(regs, b, c):
    """The byte c is known: update the registers as predictor._code_segment does."""
    c4, c8, word = regs[b, R_C4], regs[b, R_C8], regs[b, R_WORD]
    c8 = ((c8 << 8) | (c4 >> 24)) & 0xFFFFFFFF
    c4 = ((c4 << 8) | c) & 0xFFFFFFFF
    lc = word_letter(c)
    if lc >= 0:
        word = word_hash(word, lc)
    else:
        word = 0
    regs[b, R_C4], regs[b, R_C8], regs[b, R_WORD] = c4, c8, word


@njit(cache=True)
def segment_inputs(buf, start, end, regs, b, dims, tokens, rows, targets):
    """Inputs of positions start..end-1 of one block (the encoder knows them all):
    tokens[i] the byte before, rows[i * NG:] its n-gram rows, targets[i] the byte.
    regs[b] holds the registers at `start` and is left at `end`."""
    for i in range(end - start):
        tokens[i] = regs[b, R_C4] & 0xFF
        ngram_rows(regs[b, R_C4], regs[b, R_C8], regs[b, R_WORD], dims, rows, i)
        c = np.int64(buf[start + i])
        targets[i] = c
        _advance(regs, b, c)


@njit(cache=True)
def step_inputs(regs, dims, tokens, rows):
    """Inputs of the next position of every block (a decoder's step): rows is (B, NG)."""
    for b in range(regs.shape[0]):
        tokens[b] = regs[b, R_C4] & 0xFF
        ngram_rows(regs[b, R_C4], regs[b, R_C8], regs[b, R_WORD], dims, rows[b], 0)


@njit(cache=True)
def advance_all(regs, bytes_):
    for b in range(regs.shape[0]):
        _advance(regs, b, np.int64(bytes_[b]))


@njit(cache=True)
def ngram_groups(rows, ng, bits, target, uses):
    """For each block, the n-gram rows a chunk used (rows: B x T x NG), each once in
    order of first use (as ssm.ngram_step visits them): target[b, u] the embedding
    row, uses[b, u, :] the chunk rows that used it, in order. Padding: target the
    spare row (NG << bits), uses T. Returns the used widths (U, M)."""
    B, T = rows.shape[0], rows.shape[1]
    target[:] = ng << bits
    uses[:] = T
    umax, mmax = 1, 1
    for b in range(B):
        u = 0
        for a in range(T * ng):
            t, k = a // ng, a % ng
            r = rows[b, t, k]
            dup = False
            for t2 in range(t):
                if rows[b, t2, k] == r:
                    dup = True
                    break
            if dup:
                continue
            target[b, u] = (k << bits) + r
            m = 0
            for t2 in range(t, T):
                if rows[b, t2, k] == r:
                    uses[b, u, m] = t2
                    m += 1
            mmax = max(mmax, m)
            u += 1
        umax = max(umax, u)
    return umax, mmax
