/* The bodies of the ECSQ quantiser and decoder, included twice by ecsq.c:
 * once with portable float16 conversions and once with the F16C
 * instructions (a function attribute: the CPU is asked at run time). The
 * conversions are the same IEEE ones, so both give the same words.
 * KNAME(x) names the function, LOAD_F32 / STORE_WORD convert a stored word,
 * ROUND_F32 rounds a float32 to the stored dtype and back. */

/* ecsq.py _quantize: element (t, c) of the input is words[(c / D) * sH + t * sT + c % D]
 * (a [heads, tokens, head_dim] or [tokens, channels] layout, head_dim contiguous);
 * qT[c, t] = floor(x * inv + 0.5), recT[c, t] = word of
 * float32(q) * step, sums[c] = (sum q, sum q^2), stats = (squared error,
 * largest error). Returns 0, or -1 if a value is not finite or too large. */
static int64_t KNAME(quantize)(const void *words, int64_t code, int64_t T, int64_t C, int64_t D, int64_t sH,
                             int64_t sT, float inv, float step, float lim, int32_t *qT, void *recT, int64_t *sums,
                             double *stats)
{
    double se = 0.0;
    float mx0 = 0.0f, mx1 = 0.0f, mx2 = 0.0f, mx3 = 0.0f;     /* max: any order gives the same */
    int bad = 0;
    /* element t of a channel's 32-token tile: its squared error goes to chain t & 3 */
#define QELEM(t, acc, mxv)                                                      \
    do {                                                                        \
        float x = LOAD_F32(words, (t) * sT + cb, code);                         \
        float v = x * inv;                                                      \
        bad |= !(fabsf(v) <= lim);                                              \
        float y = v + 0.5f;                                                     \
        int64_t q = bad ? 0 : (int64_t)y;        /* floor, without libm */      \
        q -= (float)q > y;                                                      \
        qT[c * T + (t)] = (int32_t)q;                                           \
        float r = (float)q * step;                                              \
        STORE_WORD(r, recT, c * T + (t), code);                                 \
        float e = ROUND_F32(r, code) - x;        /* the stored value */         \
        acc += e * e;                                                           \
        float ae = fabsf(e);                                                    \
        mxv = ae > mxv ? ae : mxv;                                              \
        s1 += q;                                                                \
        s2 += q * q;                                                            \
    } while (0)
    for (int64_t t0 = 0; t0 < T; t0 += 32) {
        int64_t t1 = t0 + 32 < T ? t0 + 32 : T;
        for (int64_t c = 0; c < C; c++) {
            int64_t s1 = 0, s2 = 0, cb = (c / D) * sH + c % D;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            int64_t t = t0;
            for (; t + 4 <= t1; t += 4) {
                QELEM(t, a0, mx0);
                QELEM(t + 1, a1, mx1);
                QELEM(t + 2, a2, mx2);
                QELEM(t + 3, a3, mx3);
            }
            if (t < t1)
                QELEM(t, a0, mx0);
            if (t + 1 < t1)
                QELEM(t + 1, a1, mx1);
            if (t + 2 < t1)
                QELEM(t + 2, a2, mx2);
            sums[2 * c] += s1;
            sums[2 * c + 1] += s2;
            se += (double)((a0 + a1) + (a2 + a3));
        }
    }
#undef QELEM
    float m01 = mx0 > mx1 ? mx0 : mx1, m23 = mx2 > mx3 ? mx2 : mx3;
    stats[0] = se;
    stats[1] = (double)(m01 > m23 ? m01 : m23);
    return bad ? -1 : 0;
}

/* ecsq.py _decode_symbols: out[c, t] (words of dtype code, channel-major).
 * stream is padded by 8 words, esc by one entry (nesc real ones). 0 or -1. */
static int64_t KNAME(decode)(const uint16_t *stream, int64_t nwords, const int64_t *base, const int64_t *keys,
                           const int64_t *k, const int64_t *W, const uint32_t *dec, const int64_t *esc,
                           int64_t nesc, const uint8_t *low, int64_t lowlen, float step, int64_t T, int64_t C,
                           int64_t code, void *out)
{
    if (nwords < STATE_WORDS)
        return -1;
    uint32_t st[LANES];
    for (int l = 0; l < LANES; l++) {
        uint32_t x = (uint32_t)stream[2 * l] | ((uint32_t)stream[2 * l + 1] << 16);
        if (x < RANS_L || x >= (1u << 31))
            return -1;
        st[l] = x;
    }
    int64_t p = STATE_WORDS, ne = 0, lb = 0;
    for (int64_t c = 0; c < C; c++) {
        int64_t key = keys[c], w = W[key], kc = k[c], bc = base[c], escj = 2 * w + 2;
        const uint32_t *tb = dec + (key << PROB_BITS);
        int64_t o = c * T;
        int64_t tfast = 0;
        if (kc == 0) {                    /* token t is on lane t & 7: eight at a time */
            tfast = T & ~(int64_t)7;
            uint32_t x0 = st[0], x1 = st[1], x2 = st[2], x3 = st[3], x4 = st[4], x5 = st[5], x6 = st[6], x7 = st[7];
/* one decode step without the renormalisation: the eight lanes' reads are
 * placed after it, at positions from a prefix sum of their flags, so no lane
 * waits on another (a branch here mispredicts on ~1 symbol in 5) */
#define DSTEP(x, jv, nd)                                                    \
    do {                                                                    \
        uint32_t e_ = tb[x & PROB_MASK];                                    \
        x = ((e_ >> 7) & 0x1FFF) * (x >> PROB_BITS) + (e_ >> 20);           \
        nd = x < RANS_L;                                                    \
        jv = (int32_t)(e_ & 0x7F);                                          \
    } while (0)
#define RENORM(x, nd, q) x = nd ? ((x << 16) | stream[q]) : x
            for (int64_t t = 0; t < tfast; t += 8) {
                int32_t j[LANES];
                uint32_t n0, n1, n2, n3, n4, n5, n6, n7;
                DSTEP(x0, j[0], n0);
                DSTEP(x1, j[1], n1);
                DSTEP(x2, j[2], n2);
                DSTEP(x3, j[3], n3);
                DSTEP(x4, j[4], n4);
                DSTEP(x5, j[5], n5);
                DSTEP(x6, j[6], n6);
                DSTEP(x7, j[7], n7);
                int64_t q1 = p + n0, q2 = q1 + n1, q3 = q2 + n2, q4 = q3 + n3, q5 = q4 + n4, q6 = q5 + n5,
                        q7 = q6 + n6;
                RENORM(x0, n0, p);
                RENORM(x1, n1, q1);
                RENORM(x2, n2, q2);
                RENORM(x3, n3, q3);
                RENORM(x4, n4, q4);
                RENORM(x5, n5, q5);
                RENORM(x6, n6, q6);
                RENORM(x7, n7, q7);
                p = q7 + n7;
                if (p > nwords)
                    return -1;
#ifdef STORE8
                if (STORE8(j[0], j[1], j[2], j[3], j[4], j[5], j[6], j[7], escj, bc - w, step, out, o + t, code))
                    continue;                     /* no escape among the 8 */
#endif
                for (int l = 0; l < LANES; l++) {
                    int64_t s;
                    if (j[l] == escj) {
                        s = esc[ne < nesc ? ne : nesc];
                        ne++;
                    } else {
                        s = j[l] - w;
                    }
                    STORE_WORD((float)(bc + s) * step, out, o + t + l, code);
                }
            }
#undef DSTEP
#undef RENORM
            st[0] = x0, st[1] = x1, st[2] = x2, st[3] = x3, st[4] = x4, st[5] = x5, st[6] = x6, st[7] = x7;
        }
        for (int64_t t = tfast; t < T; t++) {
            int lane = (int)(t & 7);
            uint32_t x = st[lane];
            uint32_t e = tb[x & PROB_MASK];
            x = ((e >> 7) & 0x1FFF) * (x >> PROB_BITS) + (e >> 20);
            if (x < RANS_L) {
                x = (x << 16) | stream[p];
                p++;
            }
            st[lane] = x;
            if (p > nwords)
                return -1;
            int64_t jj = (int64_t)(e & 0x7F), s;
            if (jj == escj) {
                if (ne >= nesc)
                    return -1;
                s = esc[ne++];
            } else {
                s = jj - w;
            }
            int64_t qv;
            if (kc) {
                if (lb + kc > lowlen * 8)
                    return -1;
                int64_t v = 0;
                for (int64_t b = 0; b < kc; b++)
                    v |= (int64_t)((low[(lb + b) >> 3] >> ((lb + b) & 7)) & 1) << b;
                lb += kc;
                qv = bc + s * ((int64_t)1 << kc) + v;
            } else {
                qv = bc + s;
            }
            STORE_WORD((float)qv * step, out, o + t, code);
        }
    }
    if (p != nwords || ne != nesc || (lb + 7) / 8 != lowlen)
        return -1;
    for (int l = 0; l < LANES; l++)
        if (st[l] != RANS_L)
            return -1;
    return 0;
}

