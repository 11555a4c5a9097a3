"""Wires a preset's models, mixers and APMs to the coder; encode_block / decode_block.

Per bit, every context model reads the bit-history state of its current node
and maps it to a probability through its own adaptive state map; with `runs`
on, each context but the first two (orders 1 and 2, rarely deterministic) also
remembers the byte that last followed it (and how many times in a row), which
predicts the next bits strongly in deterministic contexts. The match model and
an order-0 counter add their own inputs; at levels 7-9 the online SSM (ssm.py)
adds one more, its logit for the bit.

The stretched probabilities are mixed by up to three mixers whose weight sets
are selected by different small contexts -- (how many contexts have been seen
before, or the match length) x (top bits of the last byte); the partial byte;
the last byte x bit position; at -9 also the byte before last x bit position,
and the match model's state (expected bit, length class) x bit position -- a
final mixer combines them, and a chain of two to five APMs refines the result.
Level 9's "wide" mixer design (Preset.mixer_design) chooses mixer 1's weights
by the match length class together with the count of contexts seen, and mixer
3's by the last byte x the partial byte, and its fifth APM is keyed by what the
match model says: the byte it predicts, the byte it wrongly predicted earlier
in this byte, or (no match) the byte before last.
After the bit is known every part learns from it.

Encoder and decoder run the same function (`_code_segment`), so they cannot
drift apart: the only difference is whether a bit is taken from the input
byte and written to the coder, or read from the coder.

Arithmetic: integers only (see counters.py, mixer.py), so the output does not
depend on the CPU, the compiler or the numba version.
"""
import numpy as np
from numba import njit

from .coder import decode_bit, encode_bit
from .contexts import context_value, find_slot, hash2, word_hash, word_letter
from .match import length_bucket, match_update
from .mixer import apm_predict, apm_update, mix_dot, mix_update
from .prefetch import prefetch
from .ssm import D_NL, D_T, G_LG, N_LA, ngram_rows, params_in_force, ssm_chunk_end, ssm_forward, ssm_logit
from .presets import MIXERS_WIDE
from .cm_layout import (APM4_ROWS, APM_POINTS, DECODE, ENCODE, KNOWN_CLASSES, R_C4, R_C8, R_C12, R_IO, R_LINE, R_LINE0, R_MLEN, R_MPTR,
                    R_PREVLINE, R_SSM_ROW, R_TAG, R_TAGPOS, R_WORD, R_WORD1, R_WORD2, R_WORDPRE, R_X, R_X1, R_X2,
                    RUN_COUNT_CLASSES, RUN_FROM)

SM_LIMIT = 1023                      # state-map adaptation count limit
MATCH_SM_LIMIT = 255
ORDER0_RATE = 5
SSM_SCALE = np.float32(256.0)        # SSM logit (nats) -> stretch units


@njit(cache=True, inline="always")
def sm_update(sm_p, sm_n, k, bit, limit, recip):
    """Move an adaptive probability (22-bit) toward the bit, at rate 1/(n + 1.5)."""
    n = sm_n[k]
    pv = sm_p[k]
    sm_p[k] = pv + ((((bit << 22) - pv) >> 3) * recip[n] >> 13)
    if n < limit:
        sm_n[k] = n + 1


@njit(cache=True)
def _code_segment(mode, buf, start, end, io, regs, kinds, table_bits, use_runs, match_min,
                  n_mixers, lr, final_lr, n_apms, apm_rate, skip, apm_first, mixer_design,
                  table, slots, hashes, sm_p, sm_n, runs, rsm_p, rsm_n, run_state,
                  mindex, o0, ind, w1, w2, w3, w4, w5, wf, x, xf, apm1, apm2, apm3, apm4, apm5,
                  sq, st, state_next, priority, recip,
                  use_ssm, sPa, sPb, sG, sV, sopt, slay, sA, salay, sdims, sS, sib, stok, slr,
                  sNE, sNV, srows, sflag, sstage, skern):
    n_ctx = kinds.shape[0]
    n_in = n_ctx + 3                 # contexts, match, order 0, bias (+ runs) (+ SSM, last)
    if use_runs:
        n_in += n_ctx - RUN_FROM
    if use_ssm:
        n_in += 1
    ssm_alone = use_ssm and n_ctx == 0   # ablation: the SSM's probability goes straight to the coder
    s_chunk = sdims[D_T]
    s_lg = salay[sdims[D_NL] * N_LA + G_LG]
    s_row = regs[R_SSM_ROW]
    nslots = (1 << table_bits) >> 4
    rbits = table_bits - 4
    n_states = priority.shape[0]
    msm = n_ctx * n_states           # state-map offset of the match model
    mmask = mindex.shape[0] - 1
    apm3_mask = ((apm3.shape[0] // APM_POINTS) >> 8) - 1    # Preset.apm3_bits (state.py sizes the table)
    wide = mixer_design == MIXERS_WIDE
    sm_idx = np.empty(n_ctx + 1, dtype=np.int64)
    # run_state rows: slot index, remembered byte (| 256, or -1), count, live expectation, map index
    r_idx = run_state[0]
    r_byte = run_state[1]
    r_cnt = run_state[2]
    r_live = run_state[3]
    r_k = run_state[4]

    x1 = regs[R_X1]
    x2 = regs[R_X2]
    xc = regs[R_X]
    iop = regs[R_IO]
    c4 = regs[R_C4]
    c8 = regs[R_C8]
    c12 = regs[R_C12]
    word = regs[R_WORD]
    word1 = regs[R_WORD1]
    word2 = regs[R_WORD2]
    wordpre = regs[R_WORDPRE]
    line0 = regs[R_LINE0]
    line = regs[R_LINE]
    prevline = regs[R_PREVLINE]
    mptr = regs[R_MPTR]
    mlen = regs[R_MLEN]
    tag = regs[R_TAG]
    tagpos = regs[R_TAGPOS]

    for pos in range(start, end):
        # ---- byte boundary: hash every context, find its slot for the first nibble
        col = pos - line
        above = 0
        if prevline + col < line:
            above = buf[prevline + col]
        c1 = c4 & 0xFF
        ind1 = ind[c1]
        ind2 = ind[256 + (c4 & 0xFFFF)]
        for i in range(n_ctx):       # hash all first and prefetch, so that the misses overlap
            h = hash2(context_value(kinds[i], c4, c8, c12, word, word1, word2, wordpre, above,
                                    ind1, ind2, tag, line0), i)
            hashes[i] = h
            prefetch(table, (i << table_bits) + (((h >> 8) & (nslots - 1) & ~3) << 4))
            if use_runs and i >= RUN_FROM:
                prefetch(runs, (i << rbits) + ((h >> 8) & (nslots - 1)))
        for i in range(n_ctx):
            h = hashes[i]
            slots[i] = find_slot(table, i << table_bits, nslots, h, priority)
            if use_runs and i >= RUN_FROM:
                ri = (i << rbits) + ((h >> 8) & (nslots - 1))
                r_idx[i] = ri
                e = np.int64(runs[ri])
                if e != 0 and (e >> 24) == (h & 0xFF):
                    r_byte[i] = (e & 0xFF) | 256
                    rc = (e >> 8) & 0xFF
                    r_cnt[i] = rc if rc < RUN_COUNT_CLASSES else RUN_COUNT_CLASSES - 1
                else:
                    r_byte[i] = -1
                r_live[i] = r_byte[i]
        expected = -1
        if mlen > 0:
            expected = buf[mptr] | 256
        mbucket = length_bucket(mlen)
        h_apm3 = (hash2(c4 & 0xFFFF, 99) & apm3_mask) << 8    # c0 in the low bits keeps one byte's rows together
        h_apm4 = (hash2(c4 & 0xFFFFFF, 77) & ((APM4_ROWS >> 8) - 1)) << 8
        if use_ssm:
            stok[s_row] = c4 & 0xFF
            ngram_rows(c4, c8, word, sdims, srows, s_row)
            sP = params_in_force(sPa, sPb, sflag)    # two arrays: see ssm.py on the lag
            ssm_forward(sP, slay, sA, salay, sdims, s_row, c4 & 0xFF, sS, sib, sNE, srows, skern)

        c0 = 1
        node = 1
        c = 0
        if mode == ENCODE:
            c = buf[pos]
        for bitpos in range(8):
            # the APM rows this bit will read (3 lines each), fetched while the models work
            ra2 = (c0 | (c1 << 8)) * APM_POINTS
            prefetch(apm2, ra2)
            prefetch(apm2, ra2 + 16)
            prefetch(apm2, ra2 + 32)
            r5 = 0
            if n_apms > 4:
                # the fifth APM's row: the byte the match model predicts while it holds, the
                # byte it wrongly predicted once it failed in this byte, else the byte before last
                if expected >= 0:
                    r5 = 256 + (expected & 0xFF)
                elif mlen > 0:
                    r5 = 512 + buf[mptr]
                else:
                    r5 = (c4 >> 8) & 0xFF
                ra5 = (r5 * 256 + c0) * APM_POINTS
                prefetch(apm5, ra5)
                prefetch(apm5, ra5 + 16)
                prefetch(apm5, ra5 + 32)
            if n_apms > 2:
                ra3 = (h_apm3 | c0) * APM_POINTS
                prefetch(apm3, ra3)
                prefetch(apm3, ra3 + 16)
                prefetch(apm3, ra3 + 32)
                if n_apms > 3:
                    ra4 = (h_apm4 | c0) * APM_POINTS
                    prefetch(apm4, ra4)
                    prefetch(apm4, ra4 + 16)
                    prefetch(apm4, ra4 + 32)
            # ---- predict: context models
            known = 0
            for i in range(n_ctx):
                s = table[slots[i] + node]
                k = i * n_states + s
                sm_idx[i] = k
                x[i] = st[sm_p[k] >> 10]
                if s != 0 and i > 0:
                    known += 1
                # runs: the byte that last followed this context, while it still agrees
                if use_runs and i >= RUN_FROM:
                    rb = r_live[i]
                    r_k[i] = -1
                    x[n_ctx + 3 + i - RUN_FROM] = 0
                    if rb >= 0:
                        if (rb >> (8 - bitpos)) == c0:
                            k = (i * RUN_COUNT_CLASSES + r_cnt[i]) * 2 + ((rb >> (7 - bitpos)) & 1)
                            r_k[i] = k
                            x[n_ctx + 3 + i - RUN_FROM] = st[rsm_p[k] >> 10]
                        else:
                            r_live[i] = -1
            # match model
            ebit = -1
            msel = 0
            x[n_ctx] = 0
            if expected >= 0 and (expected >> (8 - bitpos)) == c0:
                ebit = (expected >> (7 - bitpos)) & 1
                k = msm + ((mbucket * 2 + ebit) << 8) + c1
                sm_idx[n_ctx] = k
                x[n_ctx] = st[sm_p[k] >> 10]
                msel = 1 + (mbucket >> 1)
            x[n_ctx + 1] = st[o0[c0] >> 4]
            x[n_ctx + 2] = 256
            if use_ssm:
                lg = ssm_logit(params_in_force(sPa, sPb, sflag), slay, sA, salay, sdims, s_row, c0)
                sA[s_lg + s_row * 8 + bitpos] = lg
                x[n_in - 1] = np.int64(lg * SSM_SCALE)       # |lg| < 8: inside the stretch domain
            if ssm_alone:
                p = sq[x[n_in - 1] + 2047]
                if mode == ENCODE:
                    bit = (c >> (7 - bitpos)) & 1
                    x1, x2, iop = encode_bit(x1, x2, bit, p, io, iop)
                else:
                    bit, x1, x2, xc, iop = decode_bit(x1, x2, xc, p, io, iop)
                c0 = c0 * 2 + bit
                continue

            # ---- mix
            if msel > 0:
                order = (1 + (msel >> 2)) * KNOWN_CLASSES + known if wide else n_ctx + (msel >> 2)
            else:
                order = known
            b1 = (order * 8 + (c1 >> 5)) * n_in
            d = mix_dot(w1, b1, x, n_in)
            d1 = d
            nf = 0
            if n_mixers > 1:
                xf[0] = d1
                b2 = c0 * n_in
                xf[1] = mix_dot(w2, b2, x, n_in)
                nf = 2
                if n_mixers > 2:
                    b3 = (c1 * 256 + c0 if wide else c1 * 8 + bitpos) * n_in
                    xf[2] = mix_dot(w3, b3, x, n_in)
                    nf = 3
                if n_mixers > 3:
                    b4 = (((c4 >> 8) & 0xFF) * 8 + bitpos) * n_in
                    xf[3] = mix_dot(w4, b4, x, n_in)
                    nf = 4
                if n_mixers > 4:
                    mlc = mbucket if mbucket < 15 else 15
                    b5 = (((ebit + 1) * 16 + mlc) * 8 + bitpos) * n_in
                    xf[4] = mix_dot(w5, b5, x, n_in)
                    nf = 5
                xf[nf] = 256
                nf += 1
                d = mix_dot(wf, c0 * nf, xf, nf)
            pm = sq[d + 2047]

            # ---- refine: APM chain (order 0, order 1, hashed order 2)
            pa, ia1 = apm_predict(apm1, c0, d)
            p = (pm * (4 - apm_first) + pa * apm_first) >> 2
            pa, ia2 = apm_predict(apm2, c0 | (c1 << 8), st[p])
            p = (p + 3 * pa) >> 2
            ia3 = 0
            if n_apms > 2:
                pa, ia3 = apm_predict(apm3, h_apm3 | c0, st[p])
                p = (p + 3 * pa) >> 2
            ia4 = 0
            if n_apms > 3:
                pa, ia4 = apm_predict(apm4, h_apm4 | c0, st[p])
                p = (p + 3 * pa) >> 2
            ia5 = 0
            if n_apms > 4:
                pa, ia5 = apm_predict(apm5, r5 * 256 + c0, st[p])
                p = (p + pa) >> 1
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
                sm_update(sm_p, sm_n, sm_idx[i], bit, SM_LIMIT, recip)
                o = slots[i] + node
                table[o] = state_next[table[o], bit]
                if use_runs and i >= RUN_FROM and r_k[i] >= 0:
                    sm_update(rsm_p, rsm_n, r_k[i], bit, SM_LIMIT, recip)
            if ebit >= 0:
                sm_update(sm_p, sm_n, sm_idx[n_ctx], bit, MATCH_SM_LIMIT, recip)
                if ebit != bit:
                    expected = -1
            o0[c0] += ((bit << 16) - o0[c0]) >> ORDER0_RATE

            lre = lr                 # learn faster while the weights are young
            if pos < (1 << 18):
                lre = lr + ((2 * lr * ((1 << 18) - pos)) >> 18)
            mix_update(w1, b1, x, n_in, (bit << 12) - sq[d1 + 2047], lre, skip)
            # "wide": mixers 2 and 4 learn 1.5x as fast, mixer 3 (65536 weight sets) 2x
            lr_fast = (lre * 3) >> 1 if wide else lre
            if n_mixers > 1:
                mix_update(w2, b2, x, n_in, (bit << 12) - sq[xf[1] + 2047], lr_fast, skip)
                if n_mixers > 2:
                    mix_update(w3, b3, x, n_in, (bit << 12) - sq[xf[2] + 2047], 2 * lre if wide else lre, skip)
                if n_mixers > 3:
                    mix_update(w4, b4, x, n_in, (bit << 12) - sq[xf[3] + 2047], lr_fast, skip)
                if n_mixers > 4:
                    mix_update(w5, b5, x, n_in, (bit << 12) - sq[xf[4] + 2047], lre, skip)
                mix_update(wf, c0 * nf, xf, nf, (bit << 12) - pm, final_lr, skip)
            apm_update(apm1, ia1, bit, apm_rate)
            apm_update(apm2, ia2, bit, apm_rate)
            if n_apms > 2:
                apm_update(apm3, ia3, bit, apm_rate)
            if n_apms > 3:
                apm_update(apm4, ia4, bit, apm_rate)
            if n_apms > 4:
                apm_update(apm5, ia5, bit, apm_rate - 1)     # its rows see fewer bits: a faster rate

            c0 = c0 * 2 + bit
            node = node * 2 + bit
            if bitpos == 3:
                # second nibble: new slots keyed by the first nibble
                node = 1
                for i in range(n_ctx):
                    h = hash2(hashes[i], c0)
                    slots[i] = h
                    prefetch(table, (i << table_bits) + (((h >> 8) & (nslots - 1) & ~3) << 4))
                for i in range(n_ctx):
                    slots[i] = find_slot(table, i << table_bits, nslots, slots[i], priority)

        # ---- byte known: update histories
        c = c0 & 0xFF
        if mode == DECODE:
            buf[pos] = c
        if use_ssm:
            # a full chunk: learn from it (the decoder does the same at the same byte)
            stok[s_row + 1] = c
            s_row += 1
            if s_row == s_chunk:
                ssm_chunk_end(sPa, sPb, sG, sV, sopt, slr, slay, sA, salay, sdims, sS, sib, stok, sNE, sNV, srows,
                              sflag, sstage, skern)
                s_row = 0
        if use_runs:
            for i in range(RUN_FROM, n_ctx):
                cnt = 1
                if r_byte[i] == (c | 256):
                    cnt = r_cnt[i] + 1
                runs[r_idx[i]] = ((hashes[i] & 0xFF) << 24) | (cnt << 8) | c
        ind[(c4 & 0xFF)] = ((ind[(c4 & 0xFF)] << 8) | c) & 0xFFFF
        ind[256 + (c4 & 0xFFFF)] = ((ind[256 + (c4 & 0xFFFF)] << 8) | c) & 0xFFFF
        if c == 60 or c == 91 or c == 123:          # < [ {
            tag = c
            tagpos = pos
        elif c == 62 or c == 93 or c == 125:        # > ] }
            tag = 0
        elif pos - tagpos <= 3 and tag != 0:
            tag = ((tag << 8) | c) & 0xFFFFFFFF
        c12 = ((c12 << 8) | (c8 >> 24)) & 0xFFFFFFFF
        c8 = ((c8 << 8) | (c4 >> 24)) & 0xFFFFFFFF
        c4 = ((c4 << 8) | c) & 0xFFFFFFFF
        lc = word_letter(c)
        if lc >= 0:
            if word == 0:
                wordpre = (c4 >> 8) & 0xFF
            word = word_hash(word, lc)
        elif word != 0:
            word2 = word1
            word1 = word
            word = 0
        if pos == line:
            line0 = c
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
    regs[R_WORD2] = word2
    regs[R_WORDPRE] = wordpre
    regs[R_LINE0] = line0
    regs[R_LINE] = line
    regs[R_PREVLINE] = prevline
    regs[R_MPTR] = mptr
    regs[R_MLEN] = mlen
    regs[R_TAG] = tag
    regs[R_TAGPOS] = tagpos
    regs[R_SSM_ROW] = s_row


