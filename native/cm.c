/* The context-mixing coding kernel in C: the same model, bit for bit, as
 * ssmzip/engine/predictor.py's _code_segment. At levels 7-9 the SSM's part
 * (forward pass, per-bit logit, training) is called through function pointers:
 * native/ssm_step.c's, or numba's (ssm_callbacks.py) when tests compare them.
 *
 * predictor.py is the reference: every model, table and rounding here follows
 * it line by line (read its docstrings for the why). All arithmetic is on
 * integers whose ranges are bounded there, so the C and numba backends give
 * the same bytes on every CPU; tests/test_native.py checks it at every level.
 *
 * The caller (ssmzip/engine/native.py) owns every array and passes them in
 * one struct; the kernel allocates nothing and keeps no state between calls
 * (the coder and history registers live in `regs`, as in the numba kernel).
 *
 * Built by `pip install` (setup.py) with -O2 -ffp-contract=off; the whole
 * kernel is compiled twice, for AVX2 and for any x86-64, and the CPU picks
 * one at load time (target_clones). Integer results do not depend on which.
 */
#include <stdint.h>
#include <string.h>

#include "learner.h"

#if !defined(__GNUC__) && !defined(__clang__)
#define __builtin_prefetch(p) ((void)(p))      /* a hint only: nothing is lost without it */
#endif

#define M32 0xFFFFFFFFull

/* Context kinds: presets.py CTX_* (part of the file format). */
enum {
    CTX_ORDER1, CTX_ORDER2, CTX_ORDER3, CTX_ORDER4, CTX_ORDER5, CTX_ORDER6, CTX_ORDER8,
    CTX_WORD, CTX_WORD2, CTX_SPARSE2, CTX_SPARSE34, CTX_COLUMN, CTX_ORDER12, CTX_SPARSE23,
    CTX_WORDPOS, CTX_INDIRECT1, CTX_INDIRECT2, CTX_TAG, CTX_LINESTART, CTX_WORD1, CTX_WORD02,
    CTX_TAGWORD, CTX_WORDSTART, CTX_LINEWORD, CTX_TAGORDER2, CTX_TAGORDER3
};

/* Registers kept between segments: predictor.py R_*. */
enum {
    R_X1, R_X2, R_X, R_IO, R_C4, R_C8, R_C12, R_WORD, R_WORD1, R_WORDPRE,
    R_LINE, R_PREVLINE, R_MPTR, R_MLEN, R_TAG, R_TAGPOS, R_SSM_ROW, R_LINE0, R_WORD2
};

#define ENCODE 0
#define RUN_FROM 2
#define RUN_COUNT_CLASSES 32
#define SM_LIMIT 1023
#define MATCH_SM_LIMIT 255
#define ORDER0_RATE 5
#define APM_POINTS 33
#define WEIGHT_LIMIT (1 << 19)
#define MATCH_MAX_LEN 65535
#define VERIFY_LEN 32
#define LEN_BUCKETS 32
#define MAX_CTX 26
#define APM4_ROWS (1 << 18)
#define KNOWN_CLASSES 32
#define MIXERS_WIDE 1

/* Everything one call needs. Mirrored field for field by native.py's Segment;
 * SSMZIP_ABI changes whenever it does, so that a stale library is refused. */
#define SSMZIP_ABI 14  /* 3: the library also holds native/ecsq.c; 4: and native/split.c; 5: and native/split_encode.c;
                          6: and native/ssm.c; 7: mixers 4-5, APM 4; 8: mixer_skip, apm_first, apm3_bits;
                          9: mixer_design, APM 5; 10: and native/bwt.c (level 1); 11: the SSM's learning thread;
                          12: ssmzip_vexp (tests); 13: and native/ssm_backward.c; 14: and native/ssm_step.c */
typedef struct {
    int64_t mode, start, end, io_len;
    int64_t n_ctx, table_bits, use_runs, match_min, n_mixers, lr, final_lr, n_apms, apm_rate;
    int64_t match_mask, n_states;
    int64_t mixer_skip, apm_first, apm3_bits;              /* Preset.mixer_skip, .apm_first, .apm3_bits */
    int64_t mixer_design;                                  /* Preset.mixer_design */
    uint8_t *buf, *io;
    int64_t *regs, *kinds, *slots, *hashes, *run_state;   /* run_state: 5 rows of n_ctx */
    uint8_t *table;
    int32_t *sm_p, *sm_n;
    uint32_t *runs;
    int32_t *rsm_p, *rsm_n, *mindex, *o0, *ind;
    int32_t *w1, *w2, *w3, *wf, *x, *xf, *apm1, *apm2, *apm3;
    const int32_t *sq, *st;
    const uint8_t *state_next;                             /* [state][bit] */
    const int32_t *priority, *recip;
    int32_t *w4, *w5, *apm4;                               /* mixers 4-5 and APM 4 (level 9) */
    int32_t *apm5;                                         /* APM 5 (level 9) */
    /* levels 7-9: the SSM, run by numba through these (ssmzip/engine/ssm_callbacks.py) */
    int64_t use_ssm;
    int64_t *ssm_ctx;
    void (*ssm_byte)(int64_t *ctx, int64_t row, int64_t c4, int64_t c8, int64_t word);
    float (*ssm_bit)(int64_t *ctx, int64_t row, int64_t c0, int64_t bitpos);
    int64_t (*ssm_end)(int64_t *ctx, int64_t row, int64_t byte);
    /* a lagged SSM learning on a second thread (learner.h), with a second set of
     * buffers; ssm_ctx2 == 0: it learns in series, inside ssm_end */
    int64_t ssm_chunk;
    int64_t *ssm_ctx2;
    int64_t *ssm_side;                                     /* [0]: which set codes now (kept between calls) */
    void (*ssm_turn)(int64_t *ctx, int64_t *next);
    void (*ssm_learn)(int64_t *ctx);
} Segment;

static inline uint64_t hash32(uint64_t x)
{
    x = ((x & M32) * 0x9E3779B1ull + (x >> 32)) & M32;
    x ^= x >> 15;
    x = (x * 0x2C1B3C6Dull) & M32;
    x ^= x >> 12;
    x = (x * 0x297A2D39ull) & M32;
    x ^= x >> 15;
    return x;
}

static inline uint64_t hash2(uint64_t a, uint64_t b)
{
    return hash32((hash32(a) * 0x3C6EF372ull + b + 1) & 0xFFFFFFFFFFFFull);
}

static inline uint64_t context_value(int64_t kind, uint64_t c4, uint64_t c8, uint64_t c12,
                                     uint64_t word, uint64_t word1, uint64_t word2, uint64_t wordpre,
                                     uint64_t above, uint64_t ind1, uint64_t ind2, uint64_t tag, uint64_t line0)
{
    switch (kind) {
    case CTX_ORDER1: return c4 & 0xFF;
    case CTX_ORDER2: return c4 & 0xFFFF;
    case CTX_ORDER3: return c4 & 0xFFFFFF;
    case CTX_ORDER4: return c4;
    case CTX_ORDER5: return hash2(c4, c8 & 0xFF);
    case CTX_ORDER6: return hash2(c4, c8 & 0xFFFF);
    case CTX_ORDER8: return hash2(c4, c8);
    case CTX_ORDER12: return hash2(hash2(c4, c8), c12);
    case CTX_WORD: return hash2(word, c4 & 0xFF);
    case CTX_WORD2: return hash2(word, word1);
    case CTX_WORDPOS: return hash2(word, wordpre);
    case CTX_SPARSE2: return c4 & 0xFF00;
    case CTX_SPARSE34: return c4 & 0xFFFF0000;
    case CTX_SPARSE23: return c4 & 0xFFFF00;
    case CTX_COLUMN: return (above << 8) | (c4 & 0xFF);
    case CTX_INDIRECT1: return (ind1 << 8) | (c4 & 0xFF);
    case CTX_INDIRECT2: return (ind2 << 16) | (c4 & 0xFFFF);
    case CTX_TAG: return hash2(tag, c4 & 0xFF);
    case CTX_LINESTART: return hash2(line0, c4 & 0xFFFF);
    case CTX_WORD1: return hash2(word1, c4 & 0xFF);
    case CTX_WORD02: return hash2(word, word2 + 7);
    case CTX_TAGWORD: return hash2(tag, word + 5);
    case CTX_WORDSTART: return hash2(wordpre, c4 & 0xFF);
    case CTX_LINEWORD: return hash2(line0, word + 11);
    case CTX_TAGORDER2: return hash2(tag, c4 & 0xFFFF);
    case CTX_TAGORDER3: return hash2(tag, c4 & 0xFFFFFF);
    default: return 0;
    }
}

/* contexts.py find_slot: three probes in one 64-byte group, else replace the least used. */
static inline int64_t find_slot(uint8_t *table, int64_t base, int64_t nslots, uint64_t key,
                                const int32_t *priority)
{
    uint8_t chk = (uint8_t)(key & 0xFF);
    int64_t group = (int64_t)((key >> 8) & (uint64_t)(nslots - 1));
    int64_t best = -1, best_pri = 1 << 30;
    for (int64_t k = 0; k < 3; k++) {
        int64_t off = base + ((group ^ k) << 4);
        if (table[off] == chk)
            return off;
        int64_t pri = priority[table[off + 1]];
        if (pri < best_pri) {
            best_pri = pri;
            best = off;
        }
    }
    memset(table + best, 0, 16);
    table[best] = chk;
    return best;
}

static inline int64_t length_bucket(int64_t n)
{
    if (n < 16)
        return n;
    int64_t b = 16 + ((n - 16) >> 3);
    return b < LEN_BUCKETS ? b : LEN_BUCKETS - 1;
}

static inline int32_t clamp_stretch(int32_t d)
{
    return d > 2047 ? 2047 : d < -2047 ? -2047 : d;
}

/* mixer.py mix_dot / mix_update: int32 throughout, bounds argued there. */
static inline int32_t mix_dot(const int32_t *w, const int32_t *x, int64_t n)
{
    int32_t s = 0;
    for (int64_t i = 0; i < n; i++)
        s += (w[i] * x[i]) >> 8;
    return clamp_stretch(s >> 8);
}

static inline void mix_update(int32_t *w, const int32_t *x, int64_t n, int64_t err, int64_t lr,
                              int64_t skip)
{
    if (-skip < err && err < skip)
        return;
    int32_t e = (int32_t)(err * lr);
    for (int64_t i = 0; i < n; i++) {
        int32_t v = w[i] + ((x[i] * e + 32768) >> 16);
        w[i] = v < -WEIGHT_LIMIT ? -WEIGHT_LIMIT : v > WEIGHT_LIMIT ? WEIGHT_LIMIT : v;
    }
}

/* mixer.py apm_predict / apm_update: tables hold each point's difference from
 * `ramp` (counters.APM_RAMP), so that a new table is zeros */
static inline int64_t apm_predict(const int32_t *t, const int32_t *ramp, int64_t ctx, int64_t st, int64_t *idx)
{
    int64_t s = st + 2048;
    if (s < 0) s = 0;
    if (s > 4095) s = 4095;
    int64_t lo = s >> 7, w = s & 127;
    int64_t base = ctx * APM_POINTS + lo;
    int64_t p = ((int64_t)(t[base] + ramp[lo]) * (128 - w) + (int64_t)(t[base + 1] + ramp[lo + 1]) * w) >> 11;
    if (p < 1) p = 1;
    if (p > 4095) p = 4095;
    *idx = base + (w >> 6);
    return p;
}

static inline void apm_update(int32_t *t, const int32_t *ramp, int64_t idx, int64_t bit, int64_t rate)
{
    t[idx] += (int32_t)((((int64_t)bit << 16) - (t[idx] + ramp[idx % APM_POINTS])) >> rate);
}

static inline void sm_update(int32_t *sm_p, int32_t *sm_n, int64_t k, int64_t bit, int64_t limit,
                             const int32_t *recip)
{
    int64_t n = sm_n[k], pv = sm_p[k];
    sm_p[k] = (int32_t)(pv + (((((bit << 22) - pv) >> 3) * recip[n]) >> 13));
    if (n < limit)
        sm_n[k] = (int32_t)(n + 1);
}

static inline int64_t split(int64_t x1, int64_t x2, int64_t p)
{
    int64_t r = x2 - x1;
    return x1 + (r >> 12) * p + (((r & 0xFFF) * p) >> 12);
}

/* match.py match_update, in two halves with the same result. After byte
 * buf[pos]: extend the match, hash the last minlen bytes and prefetch their
 * index entry (match_hash; returns the slot, or -1 when too few bytes). The
 * index is read and written only at the next byte boundary, once the
 * context tables' lookups have been issued too (match_lookup), so the two
 * cache misses overlap instead of one waiting for the other. */
static inline int64_t match_hash(const uint8_t *buf, int64_t pos, const int32_t *index, int64_t mask,
                                 int64_t minlen, int64_t *mptr, int64_t *mlen)
{
    if (*mlen > 0 && *mptr <= pos && buf[*mptr] == buf[pos]) {
        *mlen += 1;
        if (*mlen > MATCH_MAX_LEN)
            *mlen = MATCH_MAX_LEN;
        *mptr += 1;
    } else {
        *mlen = 0;
    }
    if (pos + 1 < minlen)
        return -1;
    uint64_t h = 0;
    for (int64_t k = 0; k < minlen; k++) {
        h = (h << 8) | buf[pos - k];
        h = hash32(h);
    }
    int64_t slot = (int64_t)(h & (uint64_t)mask);
    __builtin_prefetch(index + slot);
    return slot;
}

static inline void match_lookup(const uint8_t *buf, int64_t pos, int32_t *index, int64_t slot,
                                int64_t minlen, int64_t *mptr, int64_t *mlen)
{
    if (*mlen == 0) {
        int64_t cand = index[slot];
        if (cand > 0) {
            int64_t n = 0;
            while (n < VERIFY_LEN && cand - 1 - n >= 0 && buf[cand - 1 - n] == buf[pos - n])
                n++;
            if (n >= minlen) {
                *mlen = n;
                *mptr = cand;
            }
        }
    }
    index[slot] = (int32_t)(pos + 1);
}

/* One build per CPU level, chosen when the library loads (an ELF ifunc: Linux and the BSDs). */
#if defined(__GNUC__) && defined(__ELF__) && (defined(__x86_64__) || defined(__i386__)) \
    && !defined(SSMZIP_NO_CLONES)
__attribute__((target_clones("avx2", "default")))
#endif
int64_t ssmzip_cm_segment(const Segment *a)
{
    const int64_t n_ctx = a->n_ctx, use_runs = a->use_runs, n_mixers = a->n_mixers, n_apms = a->n_apms;
    if (n_ctx < 1 || n_ctx > MAX_CTX)
        return -1;
    const int64_t use_ssm = a->use_ssm;
    int64_t n_in = n_ctx + 3;
    if (use_runs)
        n_in += n_ctx - RUN_FROM;
    if (use_ssm)
        n_in += 1;                           /* the SSM's logit, last */
    const int64_t nslots = ((int64_t)1 << a->table_bits) >> 4;
    const int64_t rbits = a->table_bits - 4;
    const int64_t n_states = a->n_states;
    const int64_t msm = n_ctx * n_states;
    const int64_t lr = a->lr, final_lr = a->final_lr, apm_rate = a->apm_rate;
    const int64_t skip = a->mixer_skip, apm_first = a->apm_first;
    const uint64_t apm3_mask = ((uint64_t)1 << a->apm3_bits) - 1;
    const int wide = a->mixer_design == MIXERS_WIDE;
    uint8_t *buf = a->buf, *io = a->io, *table = a->table;
    int64_t *regs = a->regs, *slots = a->slots, *hashes = a->hashes;
    int64_t *r_idx = a->run_state, *r_byte = r_idx + n_ctx, *r_cnt = r_byte + n_ctx;
    int64_t *r_k = r_cnt + 2 * n_ctx;        /* row 3 (the numba kernel's live bytes) unused here */
    int32_t *sm_p = a->sm_p, *sm_n = a->sm_n, *rsm_p = a->rsm_p, *rsm_n = a->rsm_n;
    uint32_t *runs = a->runs;
    int32_t *x = a->x, *xf = a->xf, *o0 = a->o0, *ind = a->ind;
    int32_t *w1 = a->w1, *w2 = a->w2, *w3 = a->w3, *w4 = a->w4, *w5 = a->w5, *wf = a->wf;
    int32_t *apm1 = a->apm1, *apm2 = a->apm2, *apm3 = a->apm3, *apm4 = a->apm4, *apm5 = a->apm5;
    const int32_t *sq = a->sq, *st = a->st, *priority = a->priority, *recip = a->recip;
    const uint8_t *state_next = a->state_next;
    int32_t ramp[APM_POINTS];                /* counters.APM_RAMP: where every APM point starts */
    for (int64_t j = 0; j < APM_POINTS; j++) {
        const int64_t d = (j - 16) * 128 + 2047;
        ramp[j] = sq[d < 0 ? 0 : d > 4094 ? 4094 : d] * 16;
    }
    int64_t sm_idx[MAX_CTX + 1];
    uint64_t nib[2][MAX_CTX];                /* second-nibble keys for either last bit */
    int64_t live[MAX_CTX];                   /* contexts whose run still agrees, this byte */

    int64_t x1 = regs[R_X1], x2 = regs[R_X2], xc = regs[R_X], iop = regs[R_IO];
    uint64_t c4 = (uint64_t)regs[R_C4], c8 = (uint64_t)regs[R_C8], c12 = (uint64_t)regs[R_C12];
    uint64_t word = (uint64_t)regs[R_WORD], word1 = (uint64_t)regs[R_WORD1];
    uint64_t word2 = (uint64_t)regs[R_WORD2], line0 = (uint64_t)regs[R_LINE0];
    uint64_t wordpre = (uint64_t)regs[R_WORDPRE];
    int64_t line = regs[R_LINE], prevline = regs[R_PREVLINE];
    int64_t mptr = regs[R_MPTR], mlen = regs[R_MLEN];
    uint64_t tag = (uint64_t)regs[R_TAG];
    int64_t tagpos = regs[R_TAGPOS];
    int64_t s_row = regs[R_SSM_ROW];
    int64_t mslot = -1;
    /* the SSM's buffer set in use; with a learning thread, the sets take turns by chunk */
    const int threaded = use_ssm && a->ssm_ctx2 != 0;
    int64_t side = threaded ? a->ssm_side[0] : 0;
    int64_t *sctx = side ? a->ssm_ctx2 : a->ssm_ctx;
    Learner learner;
    if (threaded)
        learner_start(&learner, a->ssm_learn);

    for (int64_t pos = a->start; pos < a->end; pos++) {
        /* byte boundary: hash every context and prefetch, then find the slots */
        int64_t col = pos - line;
        uint64_t above = 0;
        if (prevline + col < line)
            above = buf[prevline + col];
        int64_t c1 = (int64_t)(c4 & 0xFF);
        uint64_t ind1 = (uint64_t)ind[c1], ind2 = (uint64_t)ind[256 + (c4 & 0xFFFF)];
        for (int64_t i = 0; i < n_ctx; i++) {
            uint64_t h = hash2(context_value(a->kinds[i], c4, c8, c12, word, word1, word2, wordpre, above,
                                             ind1, ind2, tag, line0), (uint64_t)i);
            hashes[i] = (int64_t)h;
            int64_t g = (int64_t)((h >> 8) & (uint64_t)(nslots - 1));
            __builtin_prefetch(table + (i << a->table_bits) + ((g & ~3) << 4));
            if (use_runs && i >= RUN_FROM)
                __builtin_prefetch(runs + (i << rbits) + g);
        }
        for (int64_t i = 0; i < n_ctx; i++) {
            uint64_t h = (uint64_t)hashes[i];
            slots[i] = find_slot(table, i << a->table_bits, nslots, h, priority);
            if (use_runs && i >= RUN_FROM) {
                int64_t ri = (i << rbits) + (int64_t)((h >> 8) & (uint64_t)(nslots - 1));
                r_idx[i] = ri;
                int64_t e = runs[ri];
                if (e != 0 && (uint64_t)(e >> 24) == (h & 0xFF)) {
                    r_byte[i] = (e & 0xFF) | 256;
                    int64_t rc = (e >> 8) & 0xFF;
                    r_cnt[i] = rc < RUN_COUNT_CLASSES ? rc : RUN_COUNT_CLASSES - 1;
                } else {
                    r_byte[i] = -1;
                }
            }
        }
        /* the contexts whose remembered byte still agrees with the bits so far */
        int64_t n_live = 0;
        if (use_runs) {
            for (int64_t i = RUN_FROM; i < n_ctx; i++) {
                r_k[i] = -1;
                x[n_ctx + 3 + i - RUN_FROM] = 0;
                if (r_byte[i] >= 0)
                    live[n_live++] = i;
            }
        }
        if (mslot >= 0) {                 /* the previous byte's match lookup, deferred */
            match_lookup(buf, pos - 1, a->mindex, mslot, a->match_min, &mptr, &mlen);
            mslot = -1;
        }
        int64_t expected = -1;
        if (mlen > 0)
            expected = buf[mptr] | 256;
        const int64_t mbucket = length_bucket(mlen);
        const int64_t h_apm3 = (int64_t)((hash2(c4 & 0xFFFF, 99) & apm3_mask) << 8);
        const int64_t h_apm4 = (int64_t)((hash2(c4 & 0xFFFFFF, 77) & ((APM4_ROWS >> 8) - 1)) << 8);
        if (use_ssm)
            a->ssm_byte(sctx, s_row, (int64_t)c4, (int64_t)c8, (int64_t)word);

        int64_t c0 = 1, node = 1, c = 0;
        if (a->mode == ENCODE)
            c = buf[pos];
        for (int64_t bitpos = 0; bitpos < 8; bitpos++) {
            /* the fifth APM's row (predictor.py) */
            const int64_t r5 = n_apms <= 4 ? 0 : expected >= 0 ? 256 + (expected & 0xFF)
                               : mlen > 0 ? 512 + (int64_t)buf[mptr] : (int64_t)((c4 >> 8) & 0xFF);
            const int64_t ra2 = (c0 | (c1 << 8)) * APM_POINTS;
            __builtin_prefetch(apm2 + ra2);
            __builtin_prefetch(apm2 + ra2 + 16);
            __builtin_prefetch(apm2 + ra2 + 32);
            if (n_apms > 4) {
                const int64_t ra5 = (r5 * 256 + c0) * APM_POINTS;
                __builtin_prefetch(apm5 + ra5);
                __builtin_prefetch(apm5 + ra5 + 16);
                __builtin_prefetch(apm5 + ra5 + 32);
            }
            if (n_apms > 2) {
                const int64_t ra3 = (h_apm3 | c0) * APM_POINTS;
                __builtin_prefetch(apm3 + ra3);
                __builtin_prefetch(apm3 + ra3 + 16);
                __builtin_prefetch(apm3 + ra3 + 32);
                if (n_apms > 3) {
                    const int64_t ra4 = (h_apm4 | c0) * APM_POINTS;
                    __builtin_prefetch(apm4 + ra4);
                    __builtin_prefetch(apm4 + ra4 + 16);
                    __builtin_prefetch(apm4 + ra4 + 32);
                }
            }
            /* predict: context models */
            int64_t known = 0;
            for (int64_t i = 0; i < n_ctx; i++) {
                int64_t s = table[slots[i] + node];
                int64_t k = i * n_states + s;
                sm_idx[i] = k;
                x[i] = st[sm_p[k] >> 10];
                known += (s != 0) & (i > 0);
            }
            /* their runs: a live one predicts its byte's next bit, a dead one stays 0 */
            {
                int64_t m = 0;
                for (int64_t j = 0; j < n_live; j++) {
                    const int64_t i = live[j], rb = r_byte[i], xi = n_ctx + 3 + i - RUN_FROM;
                    if ((rb >> (8 - bitpos)) == c0) {
                        const int64_t k = (i * RUN_COUNT_CLASSES + r_cnt[i]) * 2 + ((rb >> (7 - bitpos)) & 1);
                        r_k[i] = k;
                        x[xi] = st[rsm_p[k] >> 10];
                        live[m++] = i;
                    } else {
                        r_k[i] = -1;
                        x[xi] = 0;
                    }
                }
                n_live = m;
            }
            /* match model, order 0, bias */
            int64_t ebit = -1, msel = 0;
            x[n_ctx] = 0;
            if (expected >= 0 && (expected >> (8 - bitpos)) == c0) {
                ebit = (expected >> (7 - bitpos)) & 1;
                int64_t k = msm + ((mbucket * 2 + ebit) << 8) + c1;
                sm_idx[n_ctx] = k;
                x[n_ctx] = st[sm_p[k] >> 10];
                msel = 1 + (mbucket >> 1);
            }
            x[n_ctx + 1] = st[o0[c0] >> 4];
            x[n_ctx + 2] = 256;
            if (use_ssm) {                   /* |logit| < 8: inside the stretch domain */
                const float lg = a->ssm_bit(sctx, s_row, c0, bitpos);
                x[n_in - 1] = (int32_t)(int64_t)(lg * 256.0f);
            }

            /* mix */
            int64_t order = known;
            if (msel > 0)
                order = wide ? (1 + (msel >> 2)) * KNOWN_CLASSES + known : n_ctx + (msel >> 2);
            const int64_t b1 = (order * 8 + (c1 >> 5)) * n_in;
            int64_t b2 = 0, b3 = 0, b4 = 0, b5 = 0, nf = 0;
            int32_t d = mix_dot(w1 + b1, x, n_in);
            const int32_t d1 = d;
            if (n_mixers > 1) {
                xf[0] = d1;
                b2 = c0 * n_in;
                xf[1] = mix_dot(w2 + b2, x, n_in);
                nf = 2;
                if (n_mixers > 2) {
                    b3 = (wide ? c1 * 256 + c0 : c1 * 8 + bitpos) * n_in;
                    xf[2] = mix_dot(w3 + b3, x, n_in);
                    nf = 3;
                }
                if (n_mixers > 3) {
                    b4 = ((int64_t)((c4 >> 8) & 0xFF) * 8 + bitpos) * n_in;
                    xf[3] = mix_dot(w4 + b4, x, n_in);
                    nf = 4;
                }
                if (n_mixers > 4) {
                    const int64_t mlc = mbucket < 15 ? mbucket : 15;
                    b5 = (((ebit + 1) * 16 + mlc) * 8 + bitpos) * n_in;
                    xf[4] = mix_dot(w5 + b5, x, n_in);
                    nf = 5;
                }
                xf[nf] = 256;
                nf++;
                d = mix_dot(wf + c0 * nf, xf, nf);
            }
            const int64_t pm = sq[d + 2047];

            /* refine: APM chain */
            int64_t ia1, ia2, ia3 = 0, ia4 = 0, ia5 = 0;
            int64_t pa = apm_predict(apm1, ramp, c0, d, &ia1);
            int64_t p = (pm * (4 - apm_first) + pa * apm_first) >> 2;
            pa = apm_predict(apm2, ramp, c0 | (c1 << 8), st[p], &ia2);
            p = (p + 3 * pa) >> 2;
            if (n_apms > 2) {
                pa = apm_predict(apm3, ramp, h_apm3 | c0, st[p], &ia3);
                p = (p + 3 * pa) >> 2;
            }
            if (n_apms > 3) {
                pa = apm_predict(apm4, ramp, h_apm4 | c0, st[p], &ia4);
                p = (p + 3 * pa) >> 2;
            }
            if (n_apms > 4) {
                pa = apm_predict(apm5, ramp, r5 * 256 + c0, st[p], &ia5);
                p = (p + pa) >> 1;
            }
            if (p < 1)
                p = 1;
            else if (p > 4095)
                p = 4095;

            /* code the bit */
            int64_t bit;
            const int64_t xmid = split(x1, x2, p);
            if (a->mode == ENCODE) {
                bit = (c >> (7 - bitpos)) & 1;
                if (bit)
                    x2 = xmid;
                else
                    x1 = xmid + 1;
                while (((x1 ^ x2) & 0xFF000000) == 0) {
                    io[iop++] = (uint8_t)(x2 >> 24);
                    x1 = (x1 << 8) & (int64_t)M32;
                    x2 = ((x2 << 8) & (int64_t)M32) | 0xFF;
                }
            } else {
                if (xc <= xmid) {
                    bit = 1;
                    x2 = xmid;
                } else {
                    bit = 0;
                    x1 = xmid + 1;
                }
                while (((x1 ^ x2) & 0xFF000000) == 0) {
                    x1 = (x1 << 8) & (int64_t)M32;
                    x2 = ((x2 << 8) & (int64_t)M32) | 0xFF;
                    xc = ((xc << 8) & (int64_t)M32) | (iop < a->io_len ? io[iop] : 0xFF);
                    iop++;
                }
            }

            /* learn */
            for (int64_t i = 0; i < n_ctx; i++) {
                sm_update(sm_p, sm_n, sm_idx[i], bit, SM_LIMIT, recip);
                int64_t o = slots[i] + node;
                table[o] = state_next[table[o] * 2 + bit];
            }
            for (int64_t j = 0; j < n_live; j++)      /* the runs that predicted this bit */
                sm_update(rsm_p, rsm_n, r_k[live[j]], bit, SM_LIMIT, recip);
            if (ebit >= 0) {
                sm_update(sm_p, sm_n, sm_idx[n_ctx], bit, MATCH_SM_LIMIT, recip);
                if (ebit != bit)
                    expected = -1;
            }
            o0[c0] += (int32_t)(((bit << 16) - o0[c0]) >> ORDER0_RATE);

            int64_t lre = lr;                 /* learn faster while the weights are young */
            if (pos < (1 << 18))
                lre = lr + ((2 * lr * ((1 << 18) - pos)) >> 18);
            mix_update(w1 + b1, x, n_in, (bit << 12) - sq[d1 + 2047], lre, skip);
            const int64_t lr_fast = wide ? (lre * 3) >> 1 : lre;
            if (n_mixers > 1) {
                mix_update(w2 + b2, x, n_in, (bit << 12) - sq[xf[1] + 2047], lr_fast, skip);
                if (n_mixers > 2)
                    mix_update(w3 + b3, x, n_in, (bit << 12) - sq[xf[2] + 2047], wide ? 2 * lre : lre, skip);
                if (n_mixers > 3)
                    mix_update(w4 + b4, x, n_in, (bit << 12) - sq[xf[3] + 2047], lr_fast, skip);
                if (n_mixers > 4)
                    mix_update(w5 + b5, x, n_in, (bit << 12) - sq[xf[4] + 2047], lre, skip);
                mix_update(wf + c0 * nf, xf, nf, (bit << 12) - pm, final_lr, skip);
            }
            apm_update(apm1, ramp, ia1, bit, apm_rate);
            apm_update(apm2, ramp, ia2, bit, apm_rate);
            if (n_apms > 2)
                apm_update(apm3, ramp, ia3, bit, apm_rate);
            if (n_apms > 3)
                apm_update(apm4, ramp, ia4, bit, apm_rate);
            if (n_apms > 4)
                apm_update(apm5, ramp, ia5, bit, apm_rate - 1);

            c0 = c0 * 2 + bit;
            node = node * 2 + bit;
            if (bitpos == 2) {
                /* the second nibble's slots are keyed by the first: with one bit of it
                 * to go, hash both candidates and prefetch their groups, so that the
                 * lookups after the next bit find them in cache */
                for (int64_t i = 0; i < n_ctx; i++) {
                    const uint64_t hi = hash32((uint64_t)hashes[i]) * 0x3C6EF372ull;   /* hash2's first half */
                    for (int64_t b = 0; b < 2; b++) {
                        uint64_t h = hash32((hi + (uint64_t)(c0 * 2 + b) + 1) & 0xFFFFFFFFFFFFull);
                        nib[b][i] = h;
                        int64_t g = (int64_t)((h >> 8) & (uint64_t)(nslots - 1));
                        __builtin_prefetch(table + (i << a->table_bits) + ((g & ~3) << 4));
                    }
                }
            } else if (bitpos == 3) {        /* second nibble: new slots keyed by the first */
                node = 1;
                for (int64_t i = 0; i < n_ctx; i++)
                    slots[i] = find_slot(table, i << a->table_bits, nslots, nib[bit][i], priority);
            }
        }

        /* byte known: update histories */
        c = c0 & 0xFF;
        if (a->mode != ENCODE)
            buf[pos] = (uint8_t)c;
        if (use_ssm) {                       /* a full chunk: the SSM learns from it */
            s_row = a->ssm_end(sctx, s_row, c);
            if (threaded && s_row == a->ssm_chunk) {
                /* the previous chunk's step done and put in force, the state carried
                 * to the other set; this chunk learned from beside the next one */
                int64_t *next = side ? a->ssm_ctx : a->ssm_ctx2;
                learner_wait(&learner);
                a->ssm_turn(sctx, next);
                learner_give(&learner, sctx);
                side ^= 1;
                sctx = next;
                s_row = 0;
            }
        }
        if (use_runs) {
            for (int64_t i = RUN_FROM; i < n_ctx; i++) {
                int64_t cnt = 1;
                if (r_byte[i] == (c | 256))
                    cnt = r_cnt[i] + 1;
                runs[r_idx[i]] = (uint32_t)(((hashes[i] & 0xFF) << 24) | (cnt << 8) | c);
            }
        }
        ind[c4 & 0xFF] = ((ind[c4 & 0xFF] << 8) | (int32_t)c) & 0xFFFF;
        ind[256 + (c4 & 0xFFFF)] = ((ind[256 + (c4 & 0xFFFF)] << 8) | (int32_t)c) & 0xFFFF;
        if (c == 60 || c == 91 || c == 123) {            /* < [ { */
            tag = (uint64_t)c;
            tagpos = pos;
        } else if (c == 62 || c == 93 || c == 125) {     /* > ] } */
            tag = 0;
        } else if (pos - tagpos <= 3 && tag != 0) {
            tag = ((tag << 8) | (uint64_t)c) & M32;
        }
        c12 = ((c12 << 8) | (c8 >> 24)) & M32;
        c8 = ((c8 << 8) | (c4 >> 24)) & M32;
        c4 = ((c4 << 8) | (uint64_t)c) & M32;
        int64_t lc = c;
        if (65 <= c && c <= 90)
            lc = c + 32;
        if (97 <= lc && lc <= 122) {
            if (word == 0)
                wordpre = (c4 >> 8) & 0xFF;
            word = ((word + (uint64_t)lc + 1) * 0x2F0F3A5Bull) & M32;
        } else if (word != 0) {
            word2 = word1;
            word1 = word;
            word = 0;
        }
        if (pos == line)
            line0 = (uint64_t)c;
        if (c == 10) {
            prevline = line;
            line = pos + 1;
        }
        if (a->match_min > 0)
            mslot = match_hash(buf, pos, a->mindex, a->match_mask, a->match_min, &mptr, &mlen);
    }
    if (threaded) {                        /* the last step stays pending until the next chunk's end */
        learner_stop(&learner);
        a->ssm_side[0] = side;
    }
    if (mslot >= 0)                        /* leave the registers as the numba kernel does */
        match_lookup(buf, a->end - 1, a->mindex, mslot, a->match_min, &mptr, &mlen);

    regs[R_X1] = x1;
    regs[R_X2] = x2;
    regs[R_X] = xc;
    regs[R_IO] = iop;
    regs[R_C4] = (int64_t)c4;
    regs[R_C8] = (int64_t)c8;
    regs[R_C12] = (int64_t)c12;
    regs[R_WORD] = (int64_t)word;
    regs[R_WORD1] = (int64_t)word1;
    regs[R_WORDPRE] = (int64_t)wordpre;
    regs[R_WORD2] = (int64_t)word2;
    regs[R_LINE0] = (int64_t)line0;
    regs[R_LINE] = line;
    regs[R_PREVLINE] = prevline;
    regs[R_MPTR] = mptr;
    regs[R_MLEN] = mlen;
    regs[R_TAG] = (int64_t)tag;
    regs[R_TAGPOS] = tagpos;
    regs[R_SSM_ROW] = s_row;
    return 0;
}

int64_t ssmzip_native_abi(void) { return SSMZIP_ABI; }

/* So that setuptools can build this as an extension module on every platform
 * (Windows exports PyInit_<name>). It is loaded with ctypes, never imported. */
void *PyInit__native(void) { return 0; }
