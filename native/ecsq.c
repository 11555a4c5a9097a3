/* The lossy KV codec's hot loops in C: quantisation, rANS encoding and
 * decoding of ECSQ chunks. ssmzip/kv/ecsq.py is the reference: its numba
 * kernels (_quantize, _encode_symbols, _decode_symbols) do the same integer
 * and float32 operations in the same order, so both backends write the same
 * bytes and decode to the same words; tests/test_kv_native.py checks it.
 *
 * Floats: only IEEE basic operations in float32 (x * inv, q * step), float32
 * partial sums folded into doubles in a fixed order for the error statistics,
 * no contraction (-ffp-contract=off). float16 <-> float32 conversions are
 * exact IEEE ones (round to nearest even): with F16C instructions where the
 * CPU has them, otherwise the same results from integer code.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#define PROB_BITS 12
#define PROB_MASK ((1 << PROB_BITS) - 1)
#define RANS_L (1 << 15)
#define LANES 8
#define STATE_WORDS (2 * LANES)

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define HAVE_X86 1
#endif

/* ---------------------------------------------------------------- conversions (portable) */

static inline uint32_t h2f_bits(uint32_t h)
{
    uint32_t s = (h & 0x8000u) << 16, e = (h >> 10) & 0x1F, m = h & 0x3FF;
    if (e == 0) {
        if (m == 0)
            return s;
        e = 113;
        while ((m & 0x400) == 0) {
            m <<= 1;
            e--;
        }
        return s | (e << 23) | ((m & 0x3FF) << 13);
    }
    if (e == 31)
        return s | 0x7F800000u | (m << 13);
    return s | ((e + 112) << 23) | (m << 13);
}

static inline uint32_t f2h_bits(uint32_t u)
{
    uint32_t s = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    if (a >= 0x7F800000u)
        return s | 0x7C00u | (a > 0x7F800000u ? 0x200u : 0);
    if (a >= 0x477FF000u)
        return s | 0x7C00u;
    if (a >= 0x38800000u)
        return s | ((a - 0x38000000u + 0x0FFFu + ((a >> 13) & 1)) >> 13);
    if (a <= 0x33000000u)
        return s;
    uint32_t e = a >> 23, m = (a & 0x7FFFFFu) | 0x800000u, sh = 126 - e;
    uint32_t r = m >> sh, rem = m & ((1u << sh) - 1), half = 1u << (sh - 1);
    if (rem > half || (rem == half && (r & 1)))
        r++;
    return s | r;
}

static inline float bits_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t f_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* word of dtype code (1 float32, 2 float16, 3 bfloat16) <-> float32 */
static inline float word_to_f32(const void *w, int64_t i, int64_t code)
{
    if (code == 2)
        return bits_f(h2f_bits(((const uint16_t *)w)[i]));
    if (code == 3)
        return bits_f((uint32_t)((const uint16_t *)w)[i] << 16);
    return ((const float *)w)[i];
}

static inline float round_f32(float x, int64_t code)
{
    uint32_t u = f_bits(x);
    if (code == 2)
        return bits_f(h2f_bits(f2h_bits(u)));
    if (code == 3)
        return bits_f((uint32_t)((((uint64_t)u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF) << 16);
    return x;
}

static inline void f32_to_word(float x, void *w, int64_t i, int64_t code)
{
    uint32_t u = f_bits(x);
    if (code == 2)
        ((uint16_t *)w)[i] = (uint16_t)f2h_bits(u);
    else if (code == 3)
        ((uint16_t *)w)[i] = (uint16_t)(((uint64_t)u + 0x7FFF + ((u >> 16) & 1)) >> 16);
    else
        ((uint32_t *)w)[i] = u;
}

/* ---------------------------------------------------------------- quantisation */

/* ---------------------------------------------------------------- the kernels, twice */

#define LOAD_F32 word_to_f32
#define STORE_WORD f32_to_word
#define ROUND_F32 round_f32
#define KNAME(x) x##_portable
#include "ecsq_kernels.h"
#undef LOAD_F32
#undef STORE_WORD
#undef ROUND_F32
#undef KNAME

#if defined(HAVE_X86)
#pragma GCC push_options
#pragma GCC target("f16c,avx")
/* Eight float16 values at once: word = half(float32(j + bias) * step), the
 * same IEEE operations as the scalar path. 0 (nothing stored) if one of the
 * eight is an escape or the dtype is not float16. */
static inline int store8_f16c(int32_t j0, int32_t j1, int32_t j2, int32_t j3, int32_t j4, int32_t j5, int32_t j6,
                              int32_t j7, int64_t escj, int64_t bias, float step, void *out, int64_t at, int64_t code)
{
    if (code != 2)
        return 0;
    __m128i lo = _mm_setr_epi32(j0, j1, j2, j3), hi = _mm_setr_epi32(j4, j5, j6, j7);   /* from registers */
    __m128i e = _mm_set1_epi32((int)escj);
    if (_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi32(lo, e), _mm_cmpeq_epi32(hi, e))))
        return 0;
    __m128i b = _mm_set1_epi32((int)bias);
    __m256 v = _mm256_cvtepi32_ps(_mm256_set_m128i(_mm_add_epi32(hi, b), _mm_add_epi32(lo, b)));
    v = _mm256_mul_ps(v, _mm256_set1_ps(step));
    _mm_storeu_si128((__m128i *)((uint16_t *)out + at), _mm256_cvtps_ph(v, 0));
    return 1;
}
#define STORE8 store8_f16c

static inline float word_to_f32_f16c(const void *w, int64_t i, int64_t code)
{
    if (code == 2)
        return _cvtsh_ss(((const uint16_t *)w)[i]);
    return word_to_f32(w, i, code);
}

static inline void f32_to_word_f16c(float x, void *w, int64_t i, int64_t code)
{
    if (code == 2)
        ((uint16_t *)w)[i] = (uint16_t)_cvtss_sh(x, 0);    /* 0: round to nearest even */
    else
        f32_to_word(x, w, i, code);
}

static inline float round_f32_f16c(float x, int64_t code)
{
    if (code == 2)
        return _cvtsh_ss(_cvtss_sh(x, 0));
    return round_f32(x, code);
}

#define LOAD_F32 word_to_f32_f16c
#define STORE_WORD f32_to_word_f16c
#define ROUND_F32 round_f32_f16c
#define KNAME(x) x##_f16c
#include "ecsq_kernels.h"
#undef LOAD_F32
#undef STORE_WORD
#undef ROUND_F32
#undef KNAME
#undef STORE8
#pragma GCC pop_options

static int use_f16c(int64_t code)
{
    static int has = -1;
    if (has < 0)
        has = __builtin_cpu_supports("f16c") ? 1 : 0;
    return code == 2 && has;
}
#else
static int use_f16c(int64_t code) { (void)code; return 0; }
#define quantize_f16c quantize_portable
#define decode_f16c decode_portable
#endif

#if defined(HAVE_X86)
#pragma GCC push_options
#pragma GCC target("f16c,avx2")
/* quantize_f16c for float16, eight channels at a time (one AVX register =
 * eight channels of one token): the same operations per element as the
 * scalar kernel, each channel's squared errors in the same four chains
 * (t & 3) and added to the total in the same channel order, so the results
 * are identical. Channels beyond the last multiple of 8 go through the scalar code. */
static int64_t quantize_avx2(const uint16_t *w, int64_t T, int64_t C, int64_t D, int64_t sH, int64_t sT, float inv,
                             float step, float lim, int32_t *qT, uint16_t *recT, int64_t *sums, double *stats)
{
    int64_t C8 = C & ~(int64_t)7;
    double se = 0.0;
    __m256 vmx = _mm256_setzero_ps(), vinv = _mm256_set1_ps(inv), vstep = _mm256_set1_ps(step);
    __m256 vhalf = _mm256_set1_ps(0.5f), vlim = _mm256_set1_ps(lim);
    __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 vbad = _mm256_setzero_ps();
    int32_t qb[32][8];
    uint16_t rb[32][8];
    float mxs = 0.0f;
    int bad = 0;
    for (int64_t t0 = 0; t0 < T; t0 += 32) {
        int64_t t1 = t0 + 32 < T ? t0 + 32 : T, n = t1 - t0;
        for (int64_t c0 = 0; c0 < C8; c0 += 8) {
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            const uint16_t *wc = w + (c0 / D) * sH + c0 % D;     /* D % 8 == 0: the group is in one head */
            for (int64_t t = t0; t < t1; t++) {
                __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wc + t * sT)));
                __m256 v = _mm256_mul_ps(x, vinv);
                vbad = _mm256_or_ps(vbad, _mm256_cmp_ps(_mm256_and_ps(v, absmask), vlim, _CMP_NLE_UQ));
                __m256i q = _mm256_cvttps_epi32(_mm256_floor_ps(_mm256_add_ps(v, vhalf)));
                __m128i rw = _mm256_cvtps_ph(_mm256_mul_ps(_mm256_cvtepi32_ps(q), vstep), 0);
                __m256 e = _mm256_sub_ps(_mm256_cvtph_ps(rw), x);
                acc[t & 3] = _mm256_add_ps(acc[t & 3], _mm256_mul_ps(e, e));
                vmx = _mm256_max_ps(vmx, _mm256_and_ps(e, absmask));
                _mm256_storeu_si256((__m256i *)qb[t - t0], q);
                _mm_storeu_si128((__m128i *)rb[t - t0], rw);
            }
            float part[8];
            _mm256_storeu_ps(part, _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
            for (int i = 0; i < 8; i++) {          /* channel c0 + i: its tile, transposed */
                int64_t c = c0 + i, s1 = 0, s2 = 0;
                int32_t *qrow = qT + c * T + t0;
                uint16_t *rrow = recT + c * T + t0;
                for (int64_t t = 0; t < n; t++) {
                    int64_t q = qb[t][i];
                    qrow[t] = (int32_t)q;
                    rrow[t] = rb[t][i];
                    s1 += q;
                    s2 += q * q;
                }
                sums[2 * c] += s1;
                sums[2 * c + 1] += s2;
                se += (double)part[i];
            }
        }
        /* the last C % 8 channels: the scalar kernel's steps */
        for (int64_t c = C8; c < C; c++) {
            int64_t s1 = 0, s2 = 0, cb = (c / D) * sH + c % D;
            float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int64_t t = t0; t < t1; t++) {
                float x = _cvtsh_ss(w[t * sT + cb]);
                float v = x * inv;
                bad |= !(fabsf(v) <= lim);
                float y = v + 0.5f;
                int64_t q = bad ? 0 : (int64_t)y;
                q -= (float)q > y;
                qT[c * T + t] = (int32_t)q;
                uint16_t rw = (uint16_t)_cvtss_sh((float)q * step, 0);
                recT[c * T + t] = rw;
                float e = _cvtsh_ss(rw) - x;
                a[t & 3] += e * e;
                float ae = fabsf(e);
                mxs = ae > mxs ? ae : mxs;
                s1 += q;
                s2 += q * q;
            }
            sums[2 * c] += s1;
            sums[2 * c + 1] += s2;
            se += (double)((a[0] + a[1]) + (a[2] + a[3]));
        }
    }
    float m[8];
    _mm256_storeu_ps(m, vmx);
    for (int i = 0; i < 8; i++)
        mxs = m[i] > mxs ? m[i] : mxs;
    stats[0] = se;
    stats[1] = (double)mxs;
    return (bad || _mm256_movemask_ps(vbad)) ? -1 : 0;
}
#pragma GCC pop_options

static int use_avx2(void)
{
    static int has = -1;
    if (has < 0)
        has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") ? 1 : 0;
    return has;
}
#endif

int64_t ssmzip_ecsq_quantize(const void *words, int64_t code, int64_t T, int64_t C, int64_t D, int64_t sH, int64_t sT,
                             float inv, float step, float lim, int32_t *qT, void *recT, int64_t *sums, double *stats)
{
#if defined(HAVE_X86)
    if (code == 2 && D % 8 == 0 && use_avx2())
        return quantize_avx2((const uint16_t *)words, T, C, D, sH, sT, inv, step, lim, qT, (uint16_t *)recT, sums,
                             stats);
#endif
    if (use_f16c(code))
        return quantize_f16c(words, code, T, C, D, sH, sT, inv, step, lim, qT, recT, sums, stats);
    return quantize_portable(words, code, T, C, D, sH, sT, inv, step, lim, qT, recT, sums, stats);
}

/* ---------------------------------------------------------------- rANS encoding */

typedef struct {
    uint16_t *out;
    int64_t pos;
    int64_t *esc;
    int64_t nesc;
} Enc;

static inline uint32_t estep(uint32_t x0, int64_t sv, int64_t w, const uint64_t *enc0, const uint64_t *enc1,
                             Enc *e)
{
    uint64_t x = x0;
    int64_t j = sv + w;
    if (j < 0 || j > 2 * w + 1) {
        e->esc[e->nesc++] = sv;
        j = 2 * w + 2;
    }
    uint64_t a = enc0[j], b = enc1[j];
    if (x >= (a & 0xFFFFFFFFu)) {
        e->out[--e->pos] = (uint16_t)(x & 0xFFFF);
        x >>= 16;
    }
    uint64_t q = ((x * (b & 0xFFFFFFFFu)) >> 32) >> (b >> 48);
    return (uint32_t)(x + (a >> 32) + q * ((b >> 32) & 0xFFFF));
}

static inline int64_t symbol(int32_t q, int64_t b0, int64_t k, int64_t b2)
{
    return (((int64_t)q - b0) >> k) - b2;
}

/* ecsq.py _encode_symbols: returns the words used (at the end of out), escapes in esc. */
int64_t ssmzip_ecsq_encode(const int32_t *qT, int64_t C, int64_t T, const int64_t *b0, const int64_t *k,
                           const int64_t *b2, const int64_t *keys, const int64_t *W, int64_t width,
                           const uint64_t *enc0, const uint64_t *enc1, uint16_t *out, int64_t out_len,
                           int64_t *esc, int64_t *nesc_out)
{
    Enc e = {out, out_len, esc, 0};
    uint32_t st[LANES];
    for (int l = 0; l < LANES; l++)
        st[l] = RANS_L;
    for (int64_t c = C - 1; c >= 0; c--) {
        int64_t key = keys[c], w = W[key], bc = b0[c], kc = k[c], b2c = b2[c];
        const uint64_t *t0 = enc0 + key * width, *t1 = enc1 + key * width;
        const int32_t *row = qT + c * T;
        int64_t T8 = T & ~(int64_t)7;
        for (int64_t t = T - 1; t >= T8; t--)       /* token t is on lane t & 7 */
            st[t & 7] = estep(st[t & 7], symbol(row[t], bc, kc, b2c), w, t0, t1, &e);
        /* eight at a time, lane 7 first: each lane's table entry and renormalisation
         * flag, then the pushes at positions that follow from the flags (written
         * whether needed or not: a slot below the position is free until pushed) */
        uint64_t x0 = st[0], x1 = st[1], x2 = st[2], x3 = st[3], x4 = st[4], x5 = st[5], x6 = st[6], x7 = st[7];
#define EPRE(l)                                                                 \
        int64_t j##l = symbol(row[t + l], bc, kc, b2c) + w;                     \
        if (j##l < 0 || j##l > 2 * w + 1) {                                     \
            e.esc[e.nesc++] = j##l - w;                                         \
            j##l = 2 * w + 2;                                                   \
        }                                                                       \
        uint64_t a##l = t0[j##l], b##l = t1[j##l];                              \
        int64_t g##l = x##l >= (a##l & 0xFFFFFFFFu);
#define EPUT(l)                                                                 \
        e.out[e.pos - 1] = (uint16_t)(x##l & 0xFFFF);                           \
        e.pos -= g##l;                                                          \
        x##l = g##l ? x##l >> 16 : x##l;                                        \
        x##l = x##l + (a##l >> 32) + ((((x##l * (b##l & 0xFFFFFFFFu)) >> 32) >> (b##l >> 48)) \
               * ((b##l >> 32) & 0xFFFF));
        for (int64_t t = T8 - 8; t >= 0; t -= 8) {
            {   /* four lanes at a time: eight would not fit in the registers */
                EPRE(7) EPRE(6) EPRE(5) EPRE(4)
                EPUT(7) EPUT(6) EPUT(5) EPUT(4)
            }
            {
                EPRE(3) EPRE(2) EPRE(1) EPRE(0)
                EPUT(3) EPUT(2) EPUT(1) EPUT(0)
            }
        }
#undef EPRE
#undef EPUT
        st[0] = (uint32_t)x0, st[1] = (uint32_t)x1, st[2] = (uint32_t)x2, st[3] = (uint32_t)x3;
        st[4] = (uint32_t)x4, st[5] = (uint32_t)x5, st[6] = (uint32_t)x6, st[7] = (uint32_t)x7;
    }
    for (int l = LANES - 1; l >= 0; l--) {
        e.out[--e.pos] = (uint16_t)(st[l] >> 16);
        e.out[--e.pos] = (uint16_t)(st[l] & 0xFFFF);
    }
    /* escapes were collected last element first */
    for (int64_t i = 0, j = e.nesc - 1; i < j; i++, j--) {
        int64_t tmp = esc[i];
        esc[i] = esc[j];
        esc[j] = tmp;
    }
    *nesc_out = e.nesc;
    return out_len - e.pos;
}

/* ---------------------------------------------------------------- rANS decoding */

int64_t ssmzip_ecsq_decode(const uint16_t *stream, int64_t nwords, const int64_t *base, const int64_t *keys,
                           const int64_t *k, const int64_t *W, const uint32_t *dec, const int64_t *esc,
                           int64_t nesc, const uint8_t *low, int64_t lowlen, float step, int64_t T, int64_t C,
                           int64_t code, void *out)
{
    if (use_f16c(code))
        return decode_f16c(stream, nwords, base, keys, k, W, dec, esc, nesc, low, lowlen, step, T, C, code, out);
    return decode_portable(stream, nwords, base, keys, k, W, dec, esc, nesc, low, lowlen, step, T, C, code, out);
}

/* ecsq.py sumsq_words: sum of x^2 in double over element (t, h, d) = words[h * sH + t * sT + d]
 * in the order t, h, d, in four chains (element i of that order in chain i & 3) added as
 * (0 + 1) + (2 + 3): the order fixes the bits of the result, which sets the steps.
 * Counts the non-finite values. */
static double sumsq_portable(const void *w, int64_t code, int64_t H, int64_t T, int64_t D, int64_t sH, int64_t sT,
                             int64_t *bad)
{
    double a[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t nb = 0, i = 0;
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t d = 0; d < D; d++, i++) {
                float x = word_to_f32(w, h * sH + t * sT + d, code);
                nb += !isfinite(x);
                a[i & 3] += (double)x * (double)x;
            }
    *bad = nb;
    return (a[0] + a[1]) + (a[2] + a[3]);
}

#if defined(HAVE_X86)
#pragma GCC push_options
#pragma GCC target("f16c,avx")
static double sumsq_f16c(const void *w, int64_t code, int64_t H, int64_t T, int64_t D, int64_t sH, int64_t sT,
                         int64_t *bad)
{
    if (code != 2 || D % 4)
        return sumsq_portable(w, code, H, T, D, sH, sT, bad);
    /* D % 4 == 0: element (t, h, d) is in chain d & 3, the lane of a four-double register */
    const uint16_t *h16 = (const uint16_t *)w;
    __m256d acc = _mm256_setzero_pd();
    __m128i exp = _mm_set1_epi16(0x7C00), nonfinite = _mm_setzero_si128();
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            const uint16_t *row = h16 + h * sH + t * sT;
            for (int64_t d = 0; d < D; d += 4) {
                __m128i v = _mm_loadl_epi64((const __m128i *)(row + d));
                nonfinite = _mm_or_si128(nonfinite, _mm_cmpeq_epi16(_mm_and_si128(v, exp), exp));
                __m256d x = _mm256_cvtps_pd(_mm_cvtph_ps(v));
                acc = _mm256_add_pd(acc, _mm256_mul_pd(x, x));
            }
        }
    double a[4];
    _mm256_storeu_pd(a, acc);
    *bad = (_mm_movemask_epi8(nonfinite) & 0xFF) != 0;     /* the low four lanes hold the data */
    return (a[0] + a[1]) + (a[2] + a[3]);
}
#pragma GCC pop_options
#else
#define sumsq_f16c sumsq_portable
#endif

double ssmzip_ecsq_sumsq(const void *words, int64_t code, int64_t H, int64_t T, int64_t D, int64_t sH, int64_t sT,
                         int64_t *bad)
{
    return use_f16c(code) ? sumsq_f16c(words, code, H, T, D, sH, sT, bad)
                          : sumsq_portable(words, code, H, T, D, sH, sT, bad);
}

/* ecsq.py scatter: dst[h * sh + (t - a) * st + d] = src[(h * D + d) * Tc + t] for t in
 * [a, b): a channel-major chunk into a [heads, tokens, head_dim] array, in tiles of
 * 32 tokens so that both sides stay in the first-level cache. */
#define SCATTER(TYPE)                                                                   \
    for (int64_t h = 0; h < H; h++)                                                     \
        for (int64_t t0 = a; t0 < b; t0 += 32) {                                        \
            int64_t t1 = t0 + 32 < b ? t0 + 32 : b;                                     \
            for (int64_t d = 0; d < D; d++) {                                           \
                const TYPE *s = (const TYPE *)src + (h * D + d) * Tc;                   \
                TYPE *o = (TYPE *)dst + h * sh + d;                                     \
                for (int64_t t = t0; t < t1; t++)                                       \
                    o[(t - a) * st] = s[t];                                             \
            }                                                                           \
        }

void ssmzip_ecsq_scatter(const void *src, int64_t elsize, int64_t H, int64_t D, int64_t Tc, int64_t a, int64_t b,
                         void *dst, int64_t sh, int64_t st)
{
    if (elsize == 2) {
        SCATTER(uint16_t)
    } else {
        SCATTER(uint32_t)
    }
}

/* ecsq.py _choose_keys: per channel, the sigma index within 3 of s0[c] whose
 * table codes the channel's symbols in the fewest bits (integer code lengths,
 * so the choice is the same on every machine). keys[c], bits[c] out. */
void ssmzip_ecsq_choose(const int32_t *qT, int64_t C, int64_t T, const int64_t *b0, const int64_t *k,
                        const int64_t *b2, const int64_t *s0, const int64_t *frac, int64_t nsig, const int64_t *W,
                        const int64_t *cost, int64_t width, int64_t *keys, int64_t *bits_out, int64_t esc_extra,
                        int64_t cost_one)
{
    int64_t maxw = (width - 3) / 2, nb = 2 * maxw + 3;
    int32_t hist[4][256];
    int64_t h[256];
    if (nb > 256)
        return;
    for (int64_t c = 0; c < C; c++) {
        memset(hist, 0, sizeof hist[0] * 4);
        int64_t bc = b0[c], kc = k[c], b2c = b2[c];
        const int32_t *row = qT + c * T;
        if (kc == 0) {          /* the common case: symbol = q - b2 */
            int64_t off = maxw - b2c;
            uint64_t top = (uint64_t)(nb - 1);
#define BIN(q) ((uint64_t)((q) + off) < top ? (uint64_t)((q) + off) : top)
            int64_t t = 0;
            for (; t + 4 <= T; t += 4) {
                uint64_t v0 = BIN(row[t]), v1 = BIN(row[t + 1]), v2 = BIN(row[t + 2]), v3 = BIN(row[t + 3]);
                hist[0][v0]++;
                hist[1][v1]++;
                hist[2][v2]++;
                hist[3][v3]++;
            }
            for (; t < T; t++)
                hist[t & 3][BIN(row[t])]++;
#undef BIN
        } else {
            for (int64_t t = 0; t < T; t++) {
                int64_t v = symbol(row[t], bc, kc, b2c) + maxw;
                v = (v >= 0 && v < nb - 1) ? v : nb - 1;
                hist[t & 3][v]++;
            }
        }
        int64_t lo = nb, hi = -1;           /* the bins in use */
        for (int64_t v = 0; v < nb; v++) {
            h[v] = (int64_t)hist[0][v] + hist[1][v] + hist[2][v] + hist[3][v];
            if (h[v]) {
                lo = v < lo ? v : lo;
                hi = v;
            }
        }
        int64_t best = (int64_t)1 << 62, bk = 0;
        int64_t slo = s0[c] - 3 > 0 ? s0[c] - 3 : 0, shi = s0[c] + 4 < nsig ? s0[c] + 4 : nsig;
        for (int64_t s = slo; s < shi; s++) {
            int64_t key = s * 8 + frac[c], w = W[key], bits = 0, esc = 0;
            const int64_t *cst = cost + key * width;
            for (int64_t v = lo; v <= hi; v++) {
                if (h[v] == 0)
                    continue;
                int64_t d = v - maxw;
                if (v < nb - 1 && -w <= d && d <= w + 1)
                    bits += h[v] * cst[d + w];
                else
                    esc += h[v];
            }
            bits += esc * (cst[2 * w + 2] + esc_extra);
            if (bits < best) {
                best = bits;
                bk = key;
            }
        }
        keys[c] = bk;
        bits_out[c] = best + kc * T * cost_one;
    }
}
