"""Wires a preset's models, mixers and APMs to the coder; encode_block / decode_block.

Per bit, every context model reads the bit-history state of its current node
and maps it to a probability through its own adaptive state map; the match
model and an order-0 counter add their own. The stretched probabilities are
mixed by one to three mixers whose weight sets are selected by different
small contexts (partial byte; match state; previous byte), a final mixer
combines those, and two or three APMs refine the result. After the bit is
known every part learns from it.

Encoder and decoder run the same function (`_code_segment`), so they cannot
drift apart: the only difference is whether a bit is read from the input
byte and written to the coder, or read from the coder.

Arithmetic: integers only (see counters.py, mixer.py), so the output does not
depend on the CPU or the compiler.
"""
import numpy as np
from numba import njit

from . import counters as C
from .coder import decode_bit, decode_start, encode_bit, encode_flush
from .contexts import context_value, find_slot, hash2, new_table
from .match import LEN_BUCKETS, length_bucket, match_update
from .mixer import apm_predict, apm_update, mix_dot, mix_update, new_apm, new_weights, WEIGHT_ONE

import os
TUNE = np.array([int(v) for v in os.environ.get('SSMZIP_TUNE', '0,8,7,4,0,0,0,0').split(',')], dtype=np.int64)
ENCODE, DECODE = 0, 1
SEGMENT = 1 << 16            # bytes coded per call into numba (progress granularity)

# Registers of the model state kept between segments (an int64 array).
R_X1, R_X2, R_X, R_IO = 0, 1, 2, 3
R_C4, R_C8, R_C12 = 4, 5, 6
R_WORD, R_WORD1, R_WORDPRE = 7, 8, 9
R_LINE, R_PREVLINE = 10, 11
R_MPTR, R_MLEN = 12, 13
N_REGS = 16

MIXER1_SETS = 256                    # selected by the partial byte
MIXER2_SETS = (LEN_BUCKETS // 2 + 1) * 8   # match length bucket x bit position
MIXER3_SETS = 256 * 8                # previous byte x bit position
APM_RATE = 7
SM_LIMIT = 1023                      # state-map adaptation count limit
MATCH_SM_LIMIT = 255


@njit(cache=True)
def _code_segment(mode, buf, start, end, io, regs, kinds, table_bits, match_min, n_mixers, lr,
                  n_apms, table, slots, sm_p, sm_n, mindex, o0, w1, w2, w3, wf, x, xf,
                  apm1, apm2, apm3, sq, st, state_next, priority, recip, tune):
    n_ctx = kinds.shape[0]
    if tune[0] > 0:
        lr = tune[0]
    n_in = n_ctx + 3                 # contexts, match, order 0, bias
    nslots = (1 << table_bits) >> 4
    n_states = priority.shape[0]
    msm = n_ctx * n_states           # state-map offset of the match model
    mmask = mindex.shape[0] - 1
    sm_idx = np.empty(n_ctx + 1, dtype=np.int64)

    x1 = regs[R_X1]
    x2 = regs[R_X2]
    xc = regs[R_X]
    iop = regs[R_IO]
    c4 = regs[R_C4]
    c8 = regs[R_C8]
    c12 = regs[R_C12]
    word = regs[R_WORD]
    word1 = regs[R_WORD1]
    wordpre = regs[R_WORDPRE]
    line = regs[R_LINE]
    prevline = regs[R_PREVLINE]
    mptr = regs[R_MPTR]
    mlen = regs[R_MLEN]

    for pos in range(start, end):
        # ---- byte boundary: hash every context, find its slot for the first nibble
        col = pos - line
        above = 0
        if prevline + col < line:
            above = buf[prevline + col]
        hashes = np.empty(n_ctx, dtype=np.int64)
        for i in range(n_ctx):
            h = hash2(context_value(kinds[i], c4, c8, c12, word, word1, wordpre, above), i)
            hashes[i] = h
            slots[i] = find_slot(table, i << table_bits, nslots, h, priority)
        expected = -1
        if mlen > 0:
            expected = buf[mptr] | 256
        mbucket = length_bucket(mlen)

        c0 = 1
        node = 1
        c = 0
        if mode == ENCODE:
            c = buf[pos]
        for bitpos in range(8):
            # ---- predict
            for i in range(n_ctx):
                s = table[slots[i] + node]
                k = i * n_states + s
                sm_idx[i] = k
                x[i] = st[sm_p[k] >> 10]
            ebit = -1
            if expected >= 0 and (expected >> (8 - bitpos)) == c0:
                ebit = (expected >> (7 - bitpos)) & 1
                k = msm + mbucket * 2 + ebit
                sm_idx[n_ctx] = k
                x[n_ctx] = st[sm_p[k] >> 10]
                msel = 1 + (mbucket >> 1)
            else:
                x[n_ctx] = 0
                msel = 0
            x[n_ctx + 1] = st[o0[c0] >> 4]
            x[n_ctx + 2] = 256

            d1 = mix_dot(w1, c0 * n_in, x, n_in)
            if n_mixers > 1:
                xf[0] = d1
                b2 = (msel * 8 + bitpos) * n_in
                xf[1] = mix_dot(w2, b2, x, n_in)
                nf = 2
                if n_mixers > 2:
                    b3 = ((c4 & 0xFF) * 8 + bitpos) * n_in
                    xf[2] = mix_dot(w3, b3, x, n_in)
                    nf = 3
                xf[nf] = 256
                nf += 1
                d = mix_dot(wf, c0 * nf, xf, nf)
            else:
                d = d1
            pm = sq[d + 2047]
            pa1, ia1 = apm_predict(apm1, c0, d)
            pa2, ia2 = apm_predict(apm2, c0 | ((c4 & 0xFF) << 8), d)
            if n_apms > 2:
                h3 = (hash2(c4 & 0xFFFF, 99) ^ c0) & 0xFFFF
                pa3, ia3 = apm_predict(apm3, h3, d)
                p = (2 * pm + pa1 + 2 * pa2 + 3 * pa3 + 4) >> 3
            else:
                ia3 = 0
                p = (pm + pa1 + 2 * pa2 + 2) >> 2
            if tune[4] == 1:
                p = pm
            if p < 1:
                p = 1
            elif p > 4095:
                p = 4095

            # ---- code the bit
            if mode == ENCODE:
                bit = (c >> (7 - bitpos)) & 1
                x1, x2, iop = encode_bit(x1, x2, bit, p, io, iop)
            else:
                bit, x1, x2, xc, iop = decode_bit(x1, x2, xc, p, io, iop)

            # ---- learn
            for i in range(n_ctx):
                k = sm_idx[i]
                n = sm_n[k]
                pv = sm_p[k]
                sm_p[k] = pv + ((((bit << 22) - pv) >> 3) * recip[n] >> 13)
                if n < SM_LIMIT:
                    sm_n[k] = n + 1
                o = slots[i] + node
                table[o] = state_next[table[o], bit]
            if ebit >= 0:
                k = sm_idx[n_ctx]
                n = sm_n[k]
                pv = sm_p[k]
                sm_p[k] = pv + ((((bit << 22) - pv) >> 3) * recip[n] >> 13)
                if n < MATCH_SM_LIMIT:
                    sm_n[k] = n + 1
                if ebit != bit:
                    expected = -1
            o0[c0] += ((bit << 16) - o0[c0]) >> 5

            err = ((bit << 12) - sq[d1 + 2047]) * lr
            mix_update(w1, c0 * n_in, x, n_in, err)
            if n_mixers > 1:
                mix_update(w2, b2, x, n_in, ((bit << 12) - sq[xf[1] + 2047]) * lr)
                if n_mixers > 2:
                    mix_update(w3, b3, x, n_in, ((bit << 12) - sq[xf[2] + 2047]) * lr)
                mix_update(wf, c0 * nf, xf, nf, ((bit << 12) - pm) * tune[1])
            apm_update(apm1, ia1, bit, APM_RATE)
            apm_update(apm2, ia2, bit, APM_RATE)
            if n_apms > 2:
                apm_update(apm3, ia3, bit, APM_RATE)

            c0 = c0 * 2 + bit
            node = node * 2 + bit
            if bitpos == 3:
                # second nibble: new slots keyed by the first nibble
                node = 1
                for i in range(n_ctx):
                    slots[i] = find_slot(table, i << table_bits, nslots, hash2(hashes[i], c0), priority)

        # ---- byte known: update histories
        c = c0 & 0xFF
        if mode == DECODE:
            buf[pos] = c
        c12 = ((c12 << 8) | (c8 >> 24)) & 0xFFFFFFFF
        c8 = ((c8 << 8) | (c4 >> 24)) & 0xFFFFFFFF
        c4 = ((c4 << 8) | c) & 0xFFFFFFFF
        lc = c
        if 65 <= c <= 90:
            lc = c + 32
        if 97 <= lc <= 122:
            if word == 0:
                wordpre = (c4 >> 8) & 0xFF
            word = ((word + lc + 1) * 0x2F0F3A5B) & 0xFFFFFFFF
        elif word != 0:
            word1 = word
            word = 0
        if c == 10:
            prevline = line
            line = pos + 1
        if match_min > 0:
            mptr, mlen = match_update(buf, pos, mindex, mmask, match_min, mptr, mlen)

    regs[R_X1] = x1
    regs[R_X2] = x2
    regs[R_X] = xc
    regs[R_IO] = iop
    regs[R_C4] = c4
    regs[R_C8] = c8
    regs[R_C12] = c12
    regs[R_WORD] = word
    regs[R_WORD1] = word1
    regs[R_WORDPRE] = wordpre
    regs[R_LINE] = line
    regs[R_PREVLINE] = prevline
    regs[R_MPTR] = mptr
    regs[R_MLEN] = mlen


class _Model:
    """All state of one block coder: preallocated arrays, sized by the preset only."""

    def __init__(self, preset):
        n = len(preset.contexts)
        n_in = n + 3
        self.preset = preset
        self.regs = np.zeros(N_REGS, dtype=np.int64)
        self.regs[R_X2] = 0xFFFFFFFF
        self.kinds = np.array(preset.contexts, dtype=np.int64)
        self.table = new_table(n, preset.table_bits)
        self.slots = np.zeros(n, dtype=np.int64)
        init = C.state_map_init()
        self.sm_p = np.concatenate([np.tile(init, n),
                                    np.full(LEN_BUCKETS * 2, 1 << 21, dtype=np.int32)]).astype(np.int32)
        self.sm_n = np.zeros(self.sm_p.shape[0], dtype=np.int32)
        self.mindex = np.zeros(1 << preset.match_bits, dtype=np.int32)
        self.o0 = np.full(256, 1 << 15, dtype=np.int32)
        w0 = WEIGHT_ONE // 4
        self.w1 = new_weights(MIXER1_SETS, n_in, w0)
        self.w2 = new_weights(MIXER2_SETS if preset.mixers > 1 else 1, n_in, w0)
        self.w3 = new_weights(MIXER3_SETS if preset.mixers > 2 else 1, n_in, w0)
        self.wf = new_weights(256, preset.mixers + 1, WEIGHT_ONE // preset.mixers)
        self.x = np.zeros(n_in, dtype=np.int64)
        self.xf = np.zeros(4, dtype=np.int64)
        self.apm1 = new_apm(256, C.SQUASH)
        self.apm2 = new_apm(1 << 16, C.SQUASH)
        self.apm3 = new_apm(1 << 16 if preset.apms > 2 else 1, C.SQUASH)

    def run(self, mode, buf, start, end, io):
        p = self.preset
        _code_segment(mode, buf, start, end, io, self.regs, self.kinds, p.table_bits, p.match_min,
                      p.mixers, p.mixer_lr, p.apms, self.table, self.slots, self.sm_p, self.sm_n,
                      self.mindex, self.o0, self.w1, self.w2, self.w3, self.wf, self.x, self.xf,
                      self.apm1, self.apm2, self.apm3, C.SQUASH, C.STRETCH, C.STATE_NEXT,
                      C.STATE_PRIORITY, C.RECIPROCAL, TUNE)


def encode_block(data, preset, progress=None) -> bytes:
    """Compress one block with `preset`; the result decodes with decode_block."""
    buf = np.frombuffer(data, dtype=np.uint8).copy()   # writable: one compiled variant serves both sides
    model = _Model(preset)
    out = np.empty(SEGMENT * 12 + 64, dtype=np.uint8)
    for start in range(0, len(buf), SEGMENT):
        end = min(start + SEGMENT, len(buf))
        # Worst case the coder emits 12 bits per coded bit; keep that much room.
        need = model.regs[R_IO] + (end - start) * 12 + 64
        if need > out.shape[0]:
            out = np.concatenate([out, np.empty(need - out.shape[0] + out.shape[0] // 2, dtype=np.uint8)])
        model.run(ENCODE, buf, start, end, out)
        if progress is not None:
            progress(end)
    op = int(model.regs[R_IO])
    if len(buf):
        op = encode_flush(model.regs[R_X1], out, op)
    return out[:op].tobytes()


def decode_block(payload, size, preset, progress=None) -> bytes:
    """Decompress `size` bytes from `payload`. Garbage in gives garbage out of the
    right size (never a crash or a hang): the container's checksum catches it."""
    src = np.frombuffer(payload, dtype=np.uint8).copy()
    buf = np.zeros(size, dtype=np.uint8)
    model = _Model(preset)
    if size:
        xc, ip = decode_start(src)
        model.regs[R_X] = xc
        model.regs[R_IO] = ip
    for start in range(0, size, SEGMENT):
        end = min(start + SEGMENT, size)
        model.run(DECODE, buf, start, end, src)
        if progress is not None:
            progress(end)
    return buf.tobytes()
