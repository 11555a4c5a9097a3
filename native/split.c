/* The lossless float codec's hot loops in C: field split, rANS encoding and
 * decoding of split chunks (FORMAT.md, "split chunk" and "rANS stream").
 *
 * ssmzip/kv/_rans.py is the reference: its numba kernels (split_rest,
 * pack_bits, encode_symbols, decode_lanes) define the bytes; these loops
 * compute the same integers, so both backends write the same streams and
 * decode the same words, and a corrupted stream fails here exactly when it
 * fails there. tests/test_kv_split_native.py checks it. The decoder here reads
 * 32-lane streams (files since archive version 3); 8-lane streams of older
 * files decode in numba.
 *
 * ssmzip_gather (the end of this file) copies many pieces into one buffer on
 * threads, for ssmzip/kv/_join.py.
 *
 * Decoders never read or write outside the arrays they are given, whatever
 * the bytes: the fast loops run only while a whole block of 32 stream words
 * is left, the rest is read one checked word at a time.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "split.h"

#define PROB_BITS 12
#define PROB_SCALE (1 << PROB_BITS)
#define PROB_MASK (PROB_SCALE - 1)
#define RANS_L (1u << 15)
#define LANES 32 /* the decoder's; the encoder writes 8 or 32 */
#define STATE_WORDS (2 * LANES)
#define SUB 4096 /* elements per decoder pass: symbols, raw bits, checksum while they are in cache */

#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_X86 1
#endif

static int simd_allowed = 1; /* tests turn it off to check the portable loops (ssmzip_split_simd) */

#if defined(HAVE_X86)
static int have_avx2(void)
{
    static int has = -1;
    if (has < 0)
        has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") ? 1 : 0;
    return has && simd_allowed;
}
#endif

/* element i of a 1-, 2- or 4-byte word array (width is a constant after inlining) */
INLINE uint32_t get_word(const void *w, int64_t i, int width)
{
    if (width == 1)
        return ((const uint8_t *)w)[i];
    if (width == 2)
        return ((const uint16_t *)w)[i];
    return ((const uint32_t *)w)[i];
}

INLINE void put_word(void *w, int64_t i, uint32_t v, int width)
{
    if (width == 1)
        ((uint8_t *)w)[i] = (uint8_t)v;
    else if (width == 2)
        ((uint16_t *)w)[i] = (uint16_t)v;
    else
        ((uint32_t *)w)[i] = v;
}

INLINE void or_word(void *w, int64_t i, uint32_t v, int width)
{
    put_word(w, i, get_word(w, i, width) | v, width);
}

/* ---------------------------------------------------------------- field split (encoder side) */

/* As _rans.split_rest: the raw bits r = sign << rbits | low rbits bits of each
 * element; bytes[b][i] = byte b of r (b < nbytes), top[i] = the mbits bits
 * above them (top may be NULL when mbits == 0). The two common layouts have
 * loops of their own that the compiler vectorises. */
INLINE void split_rest_w(const void *words, int64_t n, int width, int64_t rbits, int64_t nbytes, int64_t mbits,
                         uint8_t *bytes, uint8_t *top)
{
    const uint32_t lowmask = (uint32_t)((1ull << rbits) - 1), mmask = (1u << mbits) - 1;
    const int wtop = 8 * width - 1, lowbits = (int)(8 * nbytes);
    if (width == 2 && ((nbytes == 1 && mbits == 0) || nbytes == 0)) {
        const uint16_t *w = words;
        uint8_t *dst = nbytes ? bytes : top;
        const uint16_t lm = (uint16_t)lowmask;
        for (int64_t i = 0; i < n; i++)
            dst[i] = (uint8_t)(((w[i] >> 15) << rbits) | (w[i] & lm));
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        uint32_t w = get_word(words, i, width);
        uint32_t r = (((w >> wtop) & 1) << rbits) | (w & lowmask);
        for (int64_t b = 0; b < nbytes; b++)
            bytes[b * n + i] = (uint8_t)(r >> (8 * b));
        if (mbits)
            top[i] = (uint8_t)((r >> lowbits) & mmask);
    }
}

/* parts: uint8[nparts, n], nparts = nbytes + (mbits > 0), or only the nbytes
 * byte planes when top_too is 0 */
void ssmzip_split_rest(const void *words, int64_t n, int64_t width, int64_t rbits, int64_t nbytes, int64_t mbits,
                       int64_t top_too, uint8_t *parts)
{
    uint8_t *top = mbits && top_too ? parts + nbytes * n : 0;
    if (!top)
        mbits = 0;
    if (nbytes == 0 && mbits == 0)
        return;
    if (width == 1)
        split_rest_w(words, n, 1, rbits, nbytes, mbits, parts, top);
    else if (width == 2)
        split_rest_w(words, n, 2, rbits, nbytes, mbits, parts, top);
    else
        split_rest_w(words, n, 4, rbits, nbytes, mbits, parts, top);
}

/* As _rans.pack_bits: 8 values of mbits bits fill mbits bytes, LSB first; out needs
 * 8 bytes of slack. Returns the bytes written. */
int64_t ssmzip_split_pack_bits(const uint8_t *vals, int64_t n, int64_t mbits, uint8_t *out)
{
    int64_t nfull = n - (n & 7), o = 0;
    for (int64_t i = 0; i < nfull; i += 8) {
        uint64_t v = 0;
        for (int j = 0; j < 8; j++)
            v |= (uint64_t)vals[i + j] << (j * mbits);
        memcpy(out + o, &v, 8); /* little-endian machine: checked by _rans on import */
        o += mbits;
    }
    uint64_t v = 0;
    for (int64_t j = 0; j < n - nfull; j++)
        v |= (uint64_t)vals[nfull + j] << (j * mbits);
    int64_t nb = ((n - nfull) * mbits + 7) >> 3;
    for (int64_t k = 0; k < nb; k++)
        out[o + k] = (uint8_t)(v >> (8 * k));
    return o + nb;
}

#if defined(HAVE_X86)
#pragma GCC push_options
#pragma GCC target("bmi2")
/* pack_bits of the top bits of 16-bit words with no byte plane below them
 * (bfloat16 with S > 8): r's bits are the word's bits 0..rbits-1 and 15, in
 * that order, so one pext per 4 words lines them up */
static __attribute__((noinline)) int64_t pack_top16_pext(const uint16_t *w, int64_t nfull, int64_t rbits, uint8_t *out)
{
    const uint64_t one = 0x8000u | ((1u << rbits) - 1);
    const uint64_t mask = one | one << 16 | one << 32 | one << 48;
    const int64_t mbits = rbits + 1;
    int64_t o = 0;
    for (int64_t i = 0; i < nfull; i += 8, o += mbits) {
        uint64_t a, b;
        memcpy(&a, w + i, 8);
        memcpy(&b, w + i + 4, 8);
        uint64_t v = _pext_u64(a, mask) | _pext_u64(b, mask) << (4 * mbits);
        memcpy(out + o, &v, 8);
    }
    return o;
}
#pragma GCC pop_options

/* pext is one fast instruction on Intel since Haswell and AMD since Zen 3
 * (family 0x19); earlier AMD chips run it as slow microcode */
static int fast_pext(void)
{
    static int has = -1;
    if (has < 0) {
        unsigned a, b, c, d;
        has = 0;
        if (__builtin_cpu_supports("bmi2") && __get_cpuid(0, &a, &b, &c, &d)) {
            int amd = b == 0x68747541; /* "Auth"enticAMD */
            __get_cpuid(1, &a, &b, &c, &d);
            unsigned family = ((a >> 8) & 0xF) + (((a >> 8) & 0xF) == 0xF ? (a >> 20) & 0xFF : 0);
            has = !amd || family >= 0x19;
        }
    }
    return has && simd_allowed;
}
#endif

/* The bit-packed top bits (pack_bits of split_rest's top part) straight from
 * the words; out: room for ceil(n * mbits / 8) + 8 bytes. Returns the bytes written. */
int64_t ssmzip_split_pack_top(const void *words, int64_t n, int64_t width, int64_t rbits, int64_t nbytes,
                              int64_t mbits, uint8_t *out)
{
    int64_t nfull = n - (n & 7), o = 0, i = 0;
#if defined(HAVE_X86)
    if (width == 2 && nbytes == 0 && fast_pext()) {
        o = pack_top16_pext(words, nfull, rbits, out);
        i = nfull;
    }
#endif
    const uint32_t lowmask = (uint32_t)((1ull << rbits) - 1), mmask = (1u << mbits) - 1;
    const int wtop = 8 * (int)width - 1, lowbits = (int)(8 * nbytes);
    uint64_t v = 0;
    int j = 0;
    for (; i < n; i++) {
        uint32_t w = get_word(words, i, (int)width);
        uint32_t r = (((w >> wtop) & 1) << rbits) | (w & lowmask);
        v |= (uint64_t)((r >> lowbits) & mmask) << (j * mbits);
        if (++j == 8) {
            memcpy(out + o, &v, 8);
            o += mbits;
            v = 0;
            j = 0;
        }
    }
    int64_t nb = (j * mbits + 7) >> 3;
    for (int64_t k = 0; k < nb; k++)
        out[o + k] = (uint8_t)(v >> (8 * k));
    return o + nb;
}

/* ---------------------------------------------------------------- histograms */

/* As _rans.hist_symbols, into one int64 histogram (the counts are the same).
 * Returns -1 if out of memory. */
int64_t ssmzip_split_hist(const void *words, int64_t n, int64_t width, int64_t rbits, int64_t smask, int64_t *hist)
{
    /* four sub-histograms hide the store-to-load latency of repeated symbols */
    uint32_t *h4 = (uint32_t *)calloc(4 * (size_t)(smask + 1), sizeof(uint32_t));
    if (!h4)
        return -1;
    uint32_t *h0 = h4, *h1 = h4 + (smask + 1), *h2 = h1 + (smask + 1), *h3 = h2 + (smask + 1);
    const uint32_t sm = (uint32_t)smask;
    int64_t i = 0;
    /* counts stay below 2**32: chunks hold far fewer than 2**32 elements (the caller checks) */
#define HIST_LOOP(W)                                                                                               \
    for (; i + 4 <= n; i += 4) {                                                                                   \
        h0[(get_word(words, i, W) >> rbits) & sm]++;                                                               \
        h1[(get_word(words, i + 1, W) >> rbits) & sm]++;                                                           \
        h2[(get_word(words, i + 2, W) >> rbits) & sm]++;                                                           \
        h3[(get_word(words, i + 3, W) >> rbits) & sm]++;                                                           \
    }                                                                                                              \
    for (; i < n; i++)                                                                                             \
        h0[(get_word(words, i, W) >> rbits) & sm]++;
    if (width == 1) {
        HIST_LOOP(1)
    } else if (width == 2) {
        HIST_LOOP(2)
    } else {
        HIST_LOOP(4)
    }
#undef HIST_LOOP
    for (int64_t s = 0; s <= smask; s++)
        hist[s] += (int64_t)h0[s] + h1[s] + h2[s] + h3[s];
    free(h4);
    return 0;
}

/* As _rans.hist_channels2d: hist[c][remap[symbol]] (int32[C, nsym], zeroed)
 * over nrows rows of C words, row r starting at words + r * stride. */
void ssmzip_split_hist_channels(const void *words, int64_t nrows, int64_t stride, int64_t C, int64_t width,
                                int64_t rbits, int64_t smask, const int32_t *remap, int64_t nsym, int32_t *hist)
{
    const uint32_t sm = (uint32_t)smask;
#define HC_LOOP(W)                                                                                                 \
    for (int64_t r = 0; r < nrows; r++)                                                                            \
        for (int64_t c = 0; c < C; c++)                                                                            \
            hist[c * nsym + remap[(get_word(words, r * stride + c, W) >> rbits) & sm]]++;
    if (width == 1) {
        HC_LOOP(1)
    } else if (width == 2) {
        HC_LOOP(2)
    } else {
        HC_LOOP(4)
    }
#undef HC_LOOP
}

/* As _rans.hist_groups: hist[g][remap[symbol]] (int64[T, nsym], zeroed) over
 * all n words (n % C == 0), g = ctxmap[i % C]. Four sub-histograms (by channel
 * mod 4) hide the store-to-load latency when neighbours hit the same count.
 * Returns -1 if out of memory. */
int64_t ssmzip_split_hist_groups(const void *words, int64_t n, int64_t width, int64_t rbits, int64_t smask,
                                 int64_t C, const uint8_t *ctxmap, const int32_t *remap, int64_t nsym, int64_t T,
                                 int64_t *hist)
{
    const int64_t tn = T * nsym;
    uint32_t *sub = (uint32_t *)calloc((size_t)(4 * tn + C), sizeof(uint32_t));
    if (!sub)
        return -1;
    uint32_t *base = sub + 4 * tn; /* per channel: its sub-histogram and table offset */
    for (int64_t c = 0; c < C; c++)
        base[c] = (uint32_t)((c & 3) * tn + ctxmap[c] * nsym);
    const uint32_t sm = (uint32_t)smask;
    const int64_t rows = n / C;
#define HG_LOOP(W)                                                                                                 \
    for (int64_t r = 0; r < rows; r++) {                                                                           \
        int64_t o = r * C;                                                                                         \
        for (int64_t c = 0; c < C; c++)                                                                            \
            sub[base[c] + remap[(get_word(words, o + c, W) >> rbits) & sm]]++;                                     \
    }
    if (width == 1) {
        HG_LOOP(1)
    } else if (width == 2) {
        HG_LOOP(2)
    } else {
        HG_LOOP(4)
    }
#undef HG_LOOP
    for (int64_t k = 0; k < tn; k++)
        hist[k] += (int64_t)sub[k] + sub[tn + k] + sub[2 * tn + k] + sub[3 * tn + k];
    free(sub);
    return 0;
}

/* ---------------------------------------------------------------- encoding */

/* One encoder table entry per (table, symbol value), in one word: the
 * reciprocal (bits 0-31), the frequency f (32-44), the bias (45-57) and the
 * shift (58-61), the numbers of _rans.build_enc_table; x >= x_max is
 * (x >> 19) >= f here (never when f = 4096). */
#define E_F(e) ((uint32_t)((e) >> 32) & 0x1FFF)
#define E_BIAS(e) ((uint32_t)((e) >> 45) & 0x1FFF)
#define E_SHIFT(e) ((uint32_t)((e) >> 58))

static uint64_t enc_entry(uint32_t f, uint32_t cum)
{
    uint64_t rcp, shift, bias;
    if (f < 2) {
        rcp = 0xFFFFFFFFu;
        shift = 0;
        bias = cum + PROB_SCALE - 1;
    } else {
        shift = 0;
        while (f > (1u << shift))
            shift++;
        rcp = ((1ull << (shift + 31)) + f - 1) / f;
        shift -= 1;
        bias = cum;
    }
    return rcp | (uint64_t)f << 32 | bias << 45 | shift << 58;
}

/* Elements [lo, hi) backwards, one at a time, states in st (element i on lane
 * i & (lanes - 1)); words pushed below out[pos]. Returns the new pos. */
INLINE int64_t encode_w(const void *words, int64_t lo, int64_t hi, int width, int64_t rbits, uint32_t smask,
                        int64_t C, const uint8_t *ctxmap, const uint64_t *tab, int64_t lanes, uint32_t *st,
                        uint16_t *out, int64_t pos)
{
    const int64_t S1 = (int64_t)smask + 1;
    int64_t c = hi > 0 ? (hi - 1) % C : 0;
    /* the lanes are independent, so each state's chain is `lanes` elements long */
    for (int64_t i = hi - 1; i >= lo; i--) {
        uint32_t *px = st + (i & (lanes - 1));
        uint64_t e = tab[ctxmap[c] * S1 + ((get_word(words, i, width) >> rbits) & smask)];
        c = c > 0 ? c - 1 : C - 1;
        uint32_t x = *px, f = E_F(e);
        uint32_t nd = (x >> 19) >= f; /* x >= ((RANS_L >> PROB_BITS) << 16) * f */
        out[pos - 1] = (uint16_t)x;
        x >>= nd << 4; /* a shift, not a branch: renormalisation is unpredictable */
        pos -= nd;
        uint32_t q = (uint32_t)(((uint64_t)x * (uint32_t)e) >> 32) >> E_SHIFT(e);
        *px = x + E_BIAS(e) + q * (PROB_SCALE - f);
    }
    return pos;
}

#if defined(HAVE_X86)
/* for renormalisation mask m of a group of 8 lanes, output slot j (of 8) takes
 * the word of lane enc_perm[m][j]: the k pushed words fill the top k slots in
 * lane order, as the scalar loop pushes them (lane 7 first, downwards) */
static int32_t enc_perm[256][8] __attribute__((aligned(32)));

__attribute__((constructor)) static void init_enc_perm(void)
{
    for (int m = 0; m < 256; m++) {
        int k = __builtin_popcount((unsigned)m), r = 0;
        for (int j = 0; j < 8; j++)
            enc_perm[m][j] = 0;
        for (int l = 0; l < 8; l++)
            if ((m >> l) & 1)
                enc_perm[m][8 - k + r++] = l;
    }
}

#pragma GCC push_options
#pragma GCC target("avx2,popcnt")
/* Whole blocks of 32 elements [0, nfull) backwards with 32 lanes, the states
 * in four AVX2 registers; the same integers as encode_w. Table entries by
 * scalar loads; the pushed words of a group of 8 are gathered to the top of a
 * 16-byte store ending at pos (the slack below is overwritten later). bmap:
 * table offsets (ctxmap * (smask + 1)) over one period P (a multiple of 32). */
INLINE int64_t encode_blocks_avx2(const void *words, int64_t nfull, int width, int64_t rbits, uint32_t smask,
                                  const int32_t *bmap, int64_t P, int mapped, const uint64_t *tab, uint32_t *st,
                                  uint16_t *out, int64_t pos)
{
    __m256i xs[4];
    for (int g = 0; g < 4; g++)
        xs[g] = _mm256_loadu_si256((const __m256i *)(st + 8 * g));
    const __m128i rsh = _mm_cvtsi32_si128((int)rbits);
    const __m256i sm = _mm256_set1_epi32((int)smask), M13 = _mm256_set1_epi32(0x1FFF);
    const __m256i M16 = _mm256_set1_epi32(0xFFFF), SCALE = _mm256_set1_epi32(PROB_SCALE);
    int32_t idx[8] __attribute__((aligned(32)));
    int64_t ci = nfull > 0 ? (nfull - LANES) % P : 0;
    for (int64_t b = nfull - LANES; b >= 0; b -= LANES) {
        for (int g = 3; g >= 0; g--) {
            int64_t i = b + 8 * g;
            __m256i w;
            if (width == 2)
                w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)words + i)));
            else if (width == 4)
                w = _mm256_loadu_si256((const __m256i *)((const uint32_t *)words + i));
            else
                w = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((const uint8_t *)words + i)));
            __m256i k = _mm256_and_si256(_mm256_srl_epi32(w, rsh), sm);
            if (mapped)
                k = _mm256_add_epi32(k, _mm256_loadu_si256((const __m256i *)(bmap + ci + 8 * g)));
            _mm256_store_si256((__m256i *)idx, k);
            __m256i A = _mm256_set_epi64x((long long)tab[idx[5]], (long long)tab[idx[4]], (long long)tab[idx[1]],
                                          (long long)tab[idx[0]]);
            __m256i B = _mm256_set_epi64x((long long)tab[idx[7]], (long long)tab[idx[6]], (long long)tab[idx[3]],
                                          (long long)tab[idx[2]]);
            __m256i rcp = _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(A), _mm256_castsi256_ps(B), 0x88));
            __m256i hi = _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(A), _mm256_castsi256_ps(B), 0xDD));
            __m256i f = _mm256_and_si256(hi, M13);
            __m256i bias = _mm256_and_si256(_mm256_srli_epi32(hi, 13), M13);
            __m256i shift = _mm256_srli_epi32(hi, 26);
            __m256i x = xs[g];
            /* (x >> 19) >= f, i.e. > f - 1 (all small: a signed compare is right) */
            __m256i nd = _mm256_cmpgt_epi32(_mm256_srli_epi32(x, 19), _mm256_sub_epi32(f, _mm256_set1_epi32(1)));
            unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(nd));
            int cnt = _mm_popcnt_u32(m);
            __m256i lowx = _mm256_permutevar8x32_epi32(_mm256_and_si256(x, M16),
                                                      _mm256_load_si256((const __m256i *)enc_perm[m]));
            __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(lowx), _mm256_extracti128_si256(lowx, 1));
            _mm_storeu_si128((__m128i *)(out + pos - 8), packed);
            pos -= cnt;
            x = _mm256_blendv_epi8(x, _mm256_srli_epi32(x, 16), nd);
            /* q = (x * rcp) >> 32 >> shift, even and odd lanes by the 32 x 32 -> 64 multiply */
            __m256i pe = _mm256_srli_epi64(_mm256_mul_epu32(x, rcp), 32);
            __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), _mm256_srli_epi64(rcp, 32));
            __m256i q = _mm256_srlv_epi32(_mm256_blend_epi32(pe, po, 0xAA), shift);
            xs[g] = _mm256_add_epi32(_mm256_add_epi32(x, bias), _mm256_mullo_epi32(q, _mm256_sub_epi32(SCALE, f)));
        }
        ci = ci > 0 ? ci - LANES : P - LANES;
    }
    for (int g = 0; g < 4; g++)
        _mm256_storeu_si256((__m256i *)(st + 8 * g), xs[g]);
    return pos;
}

#define ENC_VARIANT(W, MAPPED)                                                                                     \
    static __attribute__((noinline)) int64_t enc_avx2_##W##_##MAPPED(                                              \
        const void *words, int64_t nfull, int64_t rbits, uint32_t smask, const int32_t *bmap, int64_t P,           \
        const uint64_t *tab, uint32_t *st, uint16_t *out, int64_t pos)                                             \
    {                                                                                                              \
        return encode_blocks_avx2(words, nfull, W, rbits, smask, bmap, P, MAPPED, tab, st, out, pos);              \
    }
ENC_VARIANT(1, 0)
ENC_VARIANT(1, 1)
ENC_VARIANT(2, 0)
ENC_VARIANT(2, 1)
ENC_VARIANT(4, 0)
ENC_VARIANT(4, 1)
#pragma GCC pop_options
#endif

/* As _rans.encode_symbols: rANS-code (w >> rbits) & smask of each word with
 * `lanes` (8 or 32) states; element i uses table ctxmap[i % C]. freqs:
 * uint32[ntab, nsym] for the symbol values used[nsym]; scratch: uint64[ntab *
 * (smask + 1) + lcm(C, 32) / 2 + 1]. out: room for n + 2 * lanes + 1 words,
 * filled from its end. Returns the number of words, or -1 for a bad argument. */
int64_t ssmzip_split_encode(const void *words, int64_t n, int64_t width, int64_t rbits, int64_t smask, int64_t C,
                            const uint8_t *ctxmap, const uint32_t *freqs, const int64_t *used, int64_t ntab,
                            int64_t nsym, int64_t lanes, uint64_t *scratch, uint16_t *out, int64_t outlen)
{
    if ((lanes != 8 && lanes != 32) || C < 1 || outlen < n + 2 * lanes + 1 || (width != 1 && width != 2 && width != 4))
        return -1;
    const int64_t S1 = smask + 1;
    uint64_t *tab = scratch;
    memset(tab, 0, (size_t)(ntab * S1) * sizeof(uint64_t));
    for (int64_t t = 0; t < ntab; t++) {
        uint32_t cum = 0;
        for (int64_t s = 0; s < nsym; s++) {
            uint32_t f = freqs[t * nsym + s];
            if (f) {
                tab[t * S1 + used[s]] = enc_entry(f, cum);
                cum += f;
            }
        }
    }
    uint32_t st[LANES];
    for (int l = 0; l < lanes; l++)
        st[l] = RANS_L;
    int64_t pos = outlen, lo = 0;
#if defined(HAVE_X86)
    if (lanes == LANES && have_avx2()) {
        /* the last n % 32 elements one at a time (they come first, backwards), then whole blocks */
        int64_t nfull = n & ~(int64_t)(LANES - 1);
        pos = encode_w(words, nfull, n, (int)width, rbits, (uint32_t)smask, C, ctxmap, tab, lanes, st, out, pos);
        int64_t g = C, b = LANES;
        while (b) {
            int64_t t = g % b;
            g = b;
            b = t;
        }
        int64_t P = C * LANES / g;
        int32_t *bmap = (int32_t *)(scratch + ntab * S1);
        int mapped = 0;
        for (int64_t c = 0; c < P; c++)
            mapped |= (bmap[c] = (int32_t)(ctxmap[c % C] * S1)) != 0;
        if (width == 1)
            pos = (mapped ? enc_avx2_1_1 : enc_avx2_1_0)(words, nfull, rbits, (uint32_t)smask, bmap, P, tab, st, out, pos);
        else if (width == 2)
            pos = (mapped ? enc_avx2_2_1 : enc_avx2_2_0)(words, nfull, rbits, (uint32_t)smask, bmap, P, tab, st, out, pos);
        else
            pos = (mapped ? enc_avx2_4_1 : enc_avx2_4_0)(words, nfull, rbits, (uint32_t)smask, bmap, P, tab, st, out, pos);
        n = 0; /* done */
    }
#endif
    if (n > lo) {
        if (width == 1)
            pos = encode_w(words, lo, n, 1, rbits, (uint32_t)smask, C, ctxmap, tab, lanes, st, out, pos);
        else if (width == 2)
            pos = encode_w(words, lo, n, 2, rbits, (uint32_t)smask, C, ctxmap, tab, lanes, st, out, pos);
        else
            pos = encode_w(words, lo, n, 4, rbits, (uint32_t)smask, C, ctxmap, tab, lanes, st, out, pos);
    }
    /* the final states, last lane first, high word before low word: the stream opens with lane 0 */
    for (int64_t l = lanes - 1; l >= 0; l--) {
        out[--pos] = (uint16_t)(st[l] >> 16);
        out[--pos] = (uint16_t)st[l];
    }
    return outlen - pos;
}

/* ---------------------------------------------------------------- checksum */

/* XXH64 with seed 0 (the archive's chunk checksum), as _rans.xxh64; the
 * decoder feeds it block by block while the words are still in cache */
#define XP1 0x9E3779B185EBCA87ull
#define XP2 0xC2B2AE3D27D4EB4Full
#define XP3 0x165667B19E3779F9ull
#define XP4 0x85EBCA77C2B2AE63ull
#define XP5 0x27D4EB2F165667C5ull

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t xround(uint64_t acc, uint64_t v) { return rotl64(acc + v * XP2, 31) * XP1; }
static inline uint64_t xmerge(uint64_t h, uint64_t v) { return (h ^ xround(0, v)) * XP1 + XP4; }
static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8); /* little-endian machine: checked by _rans on import */
    return v;
}

typedef struct {
    uint64_t v[4];
    int64_t done; /* bytes consumed, whole 32-byte stripes */
} Xxh;

static void xxh_init(Xxh *s)
{
    s->v[0] = XP1 + XP2, s->v[1] = XP2, s->v[2] = 0, s->v[3] = 0 - XP1;
    s->done = 0;
}

/* the whole stripes of data[0, len) */
static int64_t xxh_stripes(Xxh *s, const uint8_t *data, int64_t len)
{
    int64_t p = 0;
    uint64_t v1 = s->v[0], v2 = s->v[1], v3 = s->v[2], v4 = s->v[3];
    for (; p + 32 <= len; p += 32) {
        v1 = xround(v1, load64(data + p));
        v2 = xround(v2, load64(data + p + 8));
        v3 = xround(v3, load64(data + p + 16));
        v4 = xround(v4, load64(data + p + 24));
    }
    s->v[0] = v1, s->v[1] = v2, s->v[2] = v3, s->v[3] = v4;
    s->done += p;
    return p;
}

/* the hash of everything fed so far followed by rest[0, n) */
static uint64_t xxh_final(Xxh *s, const uint8_t *rest, int64_t n)
{
    int64_t total = s->done + n, p = 0;
    uint64_t h;
    if (total >= 32) {
        p = xxh_stripes(s, rest, n);
        h = rotl64(s->v[0], 1) + rotl64(s->v[1], 7) + rotl64(s->v[2], 12) + rotl64(s->v[3], 18);
        h = xmerge(xmerge(xmerge(xmerge(h, s->v[0]), s->v[1]), s->v[2]), s->v[3]);
    } else {
        h = XP5;
    }
    h += (uint64_t)total;
    for (; p + 8 <= n; p += 8)
        h = rotl64(h ^ xround(0, load64(rest + p)), 27) * XP1 + XP4;
    if (p + 4 <= n) {
        uint32_t k;
        memcpy(&k, rest + p, 4);
        h = rotl64(h ^ ((uint64_t)k * XP1), 23) * XP2 + XP3;
        p += 4;
    }
    for (; p < n; p++)
        h = rotl64(h ^ (rest[p] * XP5), 11) * XP1;
    h ^= h >> 33;
    h *= XP2;
    h ^= h >> 29;
    h *= XP3;
    h ^= h >> 32;
    return h;
}

uint64_t ssmzip_xxh64(const uint8_t *data, int64_t n)
{
    Xxh s;
    xxh_init(&s);
    return xxh_final(&s, data, n);
}

/* ---------------------------------------------------------------- decoding */

typedef struct {
    const uint8_t *plane[4]; /* byte planes 0 .. nparts-1 (n bytes each) */
    int64_t nparts, nbytes, mbits;
    const uint8_t *packed; /* bit-packed top bits (when not a plane), packed_len bytes */
    int64_t packed_len, rbits;
} Raw;

/* As _rans._combine: OR the raw bits of elements [a, b) (a multiple of 8) into out. */
INLINE void combine(const Raw *r, void *out, int width, int64_t a, int64_t b)
{
    const int64_t nbytes = r->nbytes, mbits = r->mbits;
    if (nbytes == 0 && mbits == 0)
        return;
    const int wtop = 8 * width - 1;
    const uint32_t lowmask = (uint32_t)((1ull << r->rbits) - 1);
    const int64_t rbits = r->rbits;
    if (mbits == 0 || r->nparts > nbytes) {
        for (int64_t i = a; i < b; i++) {
            uint32_t v = 0;
            for (int64_t k = 0; k < r->nparts; k++)
                v |= (uint32_t)r->plane[k][i] << (8 * k);
            or_word(out, i, ((v >> rbits) << wtop) | (v & lowmask), width);
        }
        return;
    }
    const uint32_t mmask = (1u << mbits) - 1;
    const int lowbits = (int)(8 * nbytes);
    int64_t ob = (a * mbits) >> 3;
    for (int64_t i = a; i < b;) {
        uint64_t v = 0;
        for (int64_t k = 0; k < mbits && ob + k < r->packed_len; k++)
            v |= (uint64_t)r->packed[ob + k] << (8 * k);
        ob += mbits;
        int64_t e = b < i + 8 ? b : i + 8;
        for (int64_t j = 0; j < e - i; j++) {
            uint32_t t = (uint32_t)((v >> (j * mbits)) & mmask) << lowbits;
            for (int64_t k = 0; k < nbytes; k++)
                t |= (uint32_t)r->plane[k][i + j] << (8 * k);
            or_word(out, i + j, ((t >> rbits) << wtop) | (t & lowmask), width);
        }
        i = e;
    }
}

/* The decoder's table, one word per (table, slot), as _rans.build_dec_table:
 * slot - cum (bits 0-15), the frequency (16-31) and the symbol's output bits
 * (32-63). */
typedef struct {
    const uint16_t *stream, *sp, *send; /* the words; the next one; the end */
    const uint64_t *dec;
    const int32_t *bmap; /* table offset of each element position over one period P */
    int64_t P;
    uint32_t st[LANES];
} Decoder;


/* Elements [i, n) one at a time, every read checked; 0 when the stream ends too early. */
static int64_t decode_rest(Decoder *d, void *out, int64_t i, int64_t n, int width)
{
    int64_t c = i % d->P;
    for (; i < n; i++, c = c + 1 < d->P ? c + 1 : 0) {
        uint32_t *px = d->st + (i & (LANES - 1));
        uint32_t x = *px;
        uint64_t e = d->dec[d->bmap[c] + (x & PROB_MASK)];
        x = ((uint32_t)(e >> 16) & 0xFFFF) * (x >> PROB_BITS) + ((uint32_t)e & 0xFFFF);
        if (x < RANS_L) {
            if (d->sp >= d->send)
                return 0;
            x = (x << 16) | *d->sp++;
        }
        *px = x;
        put_word(out, i, (uint32_t)(e >> 32), width);
    }
    return 1;
}

#if defined(HAVE_X86)
/* for renormalisation mask m (bit j: lane j of a group of 8 needs a word),
 * lane j takes word number popcount(m & ((1 << j) - 1)) of the 8 words at the
 * stream position: the lanes read in lane order, as the scalar loop */
static int32_t renorm_perm[256][8] __attribute__((aligned(32)));

__attribute__((constructor)) static void init_renorm_perm(void)
{
    for (int m = 0; m < 256; m++) {
        int k = 0;
        for (int j = 0; j < 8; j++) {
            renorm_perm[m][j] = k;
            k += (m >> j) & 1;
        }
    }
}

#pragma GCC push_options
#pragma GCC target("avx2,popcnt")
/* Whole blocks of 32 elements [i, iend) while 32 stream words are left, the
 * 32 states in four AVX2 registers of 8 lanes. The four groups' table
 * lookups and state updates are independent, so their latencies overlap;
 * only the stream position is passed from group to group (lane order). The
 * table entries come by scalar loads (faster than a gather here). Raw bits:
 * mode 1 one byte plane, mode 2 bit-packed, both merged in the same pass
 * (word width 2 only); mode 0 none here. The same integers as decode_rest. */
INLINE int64_t avx2_blocks(Decoder *d, void *out, int width, int64_t i, int64_t iend, int mapped, int mode,
                           const Raw *raw, int64_t *pci)
{
    const uint16_t *sp = d->sp, *slast = d->send - LANES;
    const uint64_t *dec = d->dec;
    const int32_t *bm = d->bmap + *pci, *bend = d->bmap + d->P;
    __m256i x0 = _mm256_loadu_si256((const __m256i *)d->st), x1 = _mm256_loadu_si256((const __m256i *)(d->st + 8));
    __m256i x2 = _mm256_loadu_si256((const __m256i *)(d->st + 16)), x3 = _mm256_loadu_si256((const __m256i *)(d->st + 24));
    const __m256i L = _mm256_set1_epi32(RANS_L), M12 = _mm256_set1_epi32(PROB_MASK), M16 = _mm256_set1_epi32(0xFFFF);
    const int64_t mbits = raw->mbits;
    const __m128i rsh = _mm_cvtsi32_si128((int)raw->rbits), wsh = _mm_cvtsi32_si128(8 * width - 1);
    const __m256i lowmask = _mm256_set1_epi32((int)((1u << raw->rbits) - 1)), mm = _mm256_set1_epi32((1 << mbits) - 1);
    const __m256i sh_even = _mm256_setr_epi64x(0, 2 * mbits, 4 * mbits, 6 * mbits);
    const __m256i sh_odd = _mm256_setr_epi64x(mbits, 3 * mbits, 5 * mbits, 7 * mbits);
    const uint8_t *src = mode == 1 ? raw->plane[0] + i : mode == 2 ? raw->packed + (i >> 3) * mbits : 0;
    int32_t idx[32] __attribute__((aligned(32)));
    for (; i < iend && sp <= slast; i += LANES) {
        __m256i b0 = _mm256_and_si256(x0, M12), b1 = _mm256_and_si256(x1, M12);
        __m256i b2 = _mm256_and_si256(x2, M12), b3 = _mm256_and_si256(x3, M12);
        if (mapped) {
            b0 = _mm256_add_epi32(b0, _mm256_loadu_si256((const __m256i *)bm));
            b1 = _mm256_add_epi32(b1, _mm256_loadu_si256((const __m256i *)(bm + 8)));
            b2 = _mm256_add_epi32(b2, _mm256_loadu_si256((const __m256i *)(bm + 16)));
            b3 = _mm256_add_epi32(b3, _mm256_loadu_si256((const __m256i *)(bm + 24)));
            bm += LANES;
            if (bm == bend)
                bm = d->bmap;
        }
        _mm256_store_si256((__m256i *)idx, b0);
        _mm256_store_si256((__m256i *)(idx + 8), b1);
        _mm256_store_si256((__m256i *)(idx + 16), b2);
        _mm256_store_si256((__m256i *)(idx + 24), b3);
        __m256i lo[4], hi[4], need[4];
        unsigned m[4];
        __m256i *xs[4] = {&x0, &x1, &x2, &x3};
        for (int g = 0; g < 4; g++) {
            const int32_t *k = idx + 8 * g;
            /* entries e0..e7 as [e0 e1 e4 e5] and [e2 e3 e6 e7]: one shuffle then splits low and high halves */
            __m256i A = _mm256_set_epi64x((long long)dec[k[5]], (long long)dec[k[4]], (long long)dec[k[1]],
                                          (long long)dec[k[0]]);
            __m256i B = _mm256_set_epi64x((long long)dec[k[7]], (long long)dec[k[6]], (long long)dec[k[3]],
                                          (long long)dec[k[2]]);
            lo[g] = _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(A), _mm256_castsi256_ps(B), 0x88));
            hi[g] = _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(A), _mm256_castsi256_ps(B), 0xDD));
            __m256i x = *xs[g];
            x = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_srli_epi32(lo[g], 16), _mm256_srli_epi32(x, PROB_BITS)),
                                 _mm256_and_si256(lo[g], M16));
            need[g] = _mm256_cmpgt_epi32(L, x);
            m[g] = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(need[g]));
            *xs[g] = x;
        }
        for (int g = 0; g < 4; g++) {
            __m256i x = *xs[g];
            __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)sp));
            w = _mm256_permutevar8x32_epi32(w, _mm256_load_si256((const __m256i *)renorm_perm[m[g]]));
            *xs[g] = _mm256_blendv_epi8(x, _mm256_or_si256(_mm256_slli_epi32(x, 16), w), need[g]);
            sp += _mm_popcnt_u32(m[g]);
            __m256i v = hi[g];
            if (mode) {
                __m256i r;
                if (mode == 1) {
                    r = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)src));
                    src += 8;
                } else {
                    uint64_t b;
                    memcpy(&b, src, 8); /* 16 bytes of slack after the packed bits */
                    src += mbits;
                    __m256i Bv = _mm256_set1_epi64x((long long)b);
                    r = _mm256_blend_epi32(_mm256_srlv_epi64(Bv, sh_even),
                                           _mm256_slli_epi64(_mm256_srlv_epi64(Bv, sh_odd), 32), 0xAA);
                    r = _mm256_and_si256(r, mm);
                }
                v = _mm256_or_si256(v, _mm256_or_si256(_mm256_sll_epi32(_mm256_srl_epi32(r, rsh), wsh),
                                                       _mm256_and_si256(r, lowmask)));
            }
            int64_t o = i + 8 * g;
            if (width == 4) {
                _mm256_storeu_si256((__m256i *)((uint32_t *)out + o), v);
            } else {
                __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
                if (width == 2)
                    _mm_storeu_si128((__m128i *)((uint16_t *)out + o), h);
                else
                    _mm_storel_epi64((__m128i *)((uint8_t *)out + o), _mm_packus_epi16(h, h));
            }
        }
    }
    _mm256_storeu_si256((__m256i *)d->st, x0);
    _mm256_storeu_si256((__m256i *)(d->st + 8), x1);
    _mm256_storeu_si256((__m256i *)(d->st + 16), x2);
    _mm256_storeu_si256((__m256i *)(d->st + 24), x3);
    d->sp = sp;
    *pci = bm - d->bmap;
    return i;
}

#define AVX2_VARIANT(W, MAPPED, MODE)                                                                              \
    static __attribute__((noinline)) int64_t avx2_##W##_##MAPPED##_##MODE(Decoder *d, void *out, int64_t i,        \
                                                                           int64_t iend, const Raw *raw,            \
                                                                           int64_t *pci)                            \
    {                                                                                                              \
        return avx2_blocks(d, out, W, i, iend, MAPPED, MODE, raw, pci);                                            \
    }
AVX2_VARIANT(2, 0, 0)
AVX2_VARIANT(2, 1, 0)
AVX2_VARIANT(2, 0, 1)
AVX2_VARIANT(2, 1, 1)
AVX2_VARIANT(2, 0, 2)
AVX2_VARIANT(2, 1, 2)
AVX2_VARIANT(1, 0, 0)
AVX2_VARIANT(1, 1, 0)
AVX2_VARIANT(4, 0, 0)
AVX2_VARIANT(4, 1, 0)
#pragma GCC pop_options

typedef int64_t (*blocks_fn)(Decoder *, void *, int64_t, int64_t, const Raw *, int64_t *);

/* the block loop for this word width, table layout and raw-bit mode, or NULL without AVX2 */
static blocks_fn avx2_for(int width, int mapped, int mode)
{
    if (!have_avx2())
        return 0;
    if (width == 2)
        return mode == 1 ? (mapped ? avx2_2_1_1 : avx2_2_0_1)
             : mode == 2 ? (mapped ? avx2_2_1_2 : avx2_2_0_2)
                         : (mapped ? avx2_2_1_0 : avx2_2_0_0);
    if (width == 1)
        return mapped ? avx2_1_1_0 : avx2_1_0_0;
    return mapped ? avx2_4_1_0 : avx2_4_0_0;
}
#else
typedef int64_t (*blocks_fn)(Decoder *, void *, int64_t, int64_t, const Raw *, int64_t *);
static blocks_fn avx2_for(int width, int mapped, int mode) { (void)width, (void)mapped, (void)mode; return 0; }
#endif

/* Allow (1) or forbid (0) the SIMD decoder, for tests; returns the previous setting. Not thread-safe. */
int64_t ssmzip_split_simd(int64_t allow)
{
    int64_t old = simd_allowed;
    simd_allowed = allow != 0;
    return old;
}

/* Decode into out; with hash, also its XXH64 (fed block by block). */
static int64_t decode_chunk(Decoder *d, const Raw *raw, void *out, int64_t n, int width, uint64_t *hash)
{
    int64_t nwords = d->send - d->stream;
    if (nwords < STATE_WORDS)
        return 0;
    for (int l = 0; l < LANES; l++) {
        uint32_t x = (uint32_t)d->stream[2 * l] | (uint32_t)d->stream[2 * l + 1] << 16;
        if (x < RANS_L || x >= (1u << 31))
            return 0;
        d->st[l] = x;
    }
    d->sp = d->stream + STATE_WORDS;
    int mapped = 0;
    for (int64_t c = 0; c < d->P; c++)
        mapped |= d->bmap[c] != 0;
    const int64_t nbytes = raw->nbytes, mbits = raw->mbits;
    /* raw-bit fast paths (16-bit words): 1 = one byte plane, 2 = bit-packed only (with slack), 0 = combine() */
    int mode = 0;
    if (width == 2 && nbytes == 1 && mbits == 0 && raw->nparts == 1)
        mode = 1;
    else if (width == 2 && nbytes == 0 && mbits > 0 && raw->nparts == 0 && raw->packed_len >= (n * mbits + 7) / 8 + 16)
        mode = 2;
    int64_t i = 0, ci = 0;
    const int64_t nblk = n - (n & (LANES - 1));
    uint8_t *bytes = (uint8_t *)out;
    Xxh xs;
    xxh_init(&xs);
    blocks_fn fn = avx2_for(width, mapped, mode);
    if (fn) {
        while (i < nblk) {
            int64_t i0 = i, iend = nblk < i + SUB ? nblk : i + SUB;
            i = fn(d, out, i, iend, raw, &ci);
            if (!mode)
                combine(raw, out, width, i0, i);
            if (hash) /* blocks of 32 words are whole stripes */
                xxh_stripes(&xs, bytes + i0 * width, (i - i0) * width);
            if (i < iend)
                break;
        }
    }
    /* the rest (everything without AVX2), one element at a time */
    int64_t i0 = i;
    if (!decode_rest(d, out, i, n, width))
        return 0;
    combine(raw, out, width, i0, n);
    if (d->sp != d->send)
        return 0;
    for (int l = 0; l < LANES; l++)
        if (d->st[l] != RANS_L)
            return 0;
    if (hash)
        *hash = xxh_final(&xs, bytes + xs.done, n * width - xs.done);
    return 1;
}

/* As _rans.decode_lanes with 32 lanes: decode one stream of a split chunk into out (n
 * words of width bytes). The symbol of element i has table ctxmap[i % C];
 * freqs: uint32[ntab, nsym] (rows sum to 4096); symval[s]: the output bits of
 * symbol rank s; scratch: uint64[ntab * 4096 + lcm(C, 32) / 2 + 1]. Raw bits:
 * parts uint8[nparts, n] byte planes; packed: the bit-packed top bits,
 * packed_len bytes (16 bytes of slack for the fast path). Returns 1 iff all
 * words were consumed and every lane ended in the encoder's initial state. */
static int64_t decode_stream(const uint16_t *stream, int64_t nwords, int64_t C, const uint8_t *ctxmap,
                             const uint32_t *freqs, const uint32_t *symval, int64_t ntab, int64_t nsym,
                             uint64_t *scratch, const Raw *raw, void *out, int64_t n, int width, uint64_t *hash)
{
    uint64_t *dec = scratch;
    for (int64_t t = 0; t < ntab; t++) {
        uint64_t *dt = dec + t * PROB_SCALE;
        uint32_t cum = 0;
        for (int64_t s = 0; s < nsym; s++) {
            uint32_t f = freqs[t * nsym + s];
            uint64_t hi = (uint64_t)symval[s] << 32 | (uint64_t)f << 16;
            for (uint32_t j = 0; j < f; j++)
                dt[cum + j] = hi | j;
            cum += f;
        }
    }
    Decoder d;
    d.stream = stream;
    d.send = stream + nwords;
    d.dec = dec;
    d.P = ssmzip_split_period(C); /* the table pattern's period over whole 32-lane blocks */
    int32_t *bmap = (int32_t *)(scratch + ntab * PROB_SCALE);
    for (int64_t c = 0; c < d.P; c++)
        bmap[c] = (int32_t)ctxmap[c % C] * PROB_SCALE;
    d.bmap = bmap;
    return decode_chunk(&d, raw, out, n, width, hash);
}

/* One rANS stream alone, the tables given as frequencies (the coder
 * microbenchmark of bench/kv_lossless.py; archives go through
 * ssmzip_split_decode_payload). */
int64_t ssmzip_split_decode(const uint16_t *stream, int64_t nwords, int64_t C, const uint8_t *ctxmap,
                            const uint32_t *freqs, const uint32_t *symval, int64_t ntab, int64_t nsym,
                            uint64_t *scratch, const uint8_t *parts, int64_t nparts, int64_t nbytes, int64_t mbits,
                            const uint8_t *packed, int64_t packed_len, int64_t rbits, void *out, int64_t n,
                            int64_t width)
{
    Raw raw = {{0}, nparts, nbytes, mbits, packed, packed_len, rbits};
    for (int64_t k = 0; k < nparts && k < 4; k++)
        raw.plane[k] = parts + k * n;
    return decode_stream(stream, nwords, C, ctxmap, freqs, symval, ntab, nsym, scratch, &raw, out, n, (int)width, 0);
}

/* ---------------------------------------------------------------- a whole split chunk */

/* The split chunk parser (FORMAT.md, "split chunk"), as floatsplit.decode_split
 * with 32-lane streams: the same checks in the same order, so a payload is
 * refused here exactly when it is refused there. Negative results name the
 * fault (floatsplit.PAYLOAD_ERRORS has the messages). */
enum {
    E_TRUNCATED = -1, E_VARINT = -2, E_RANGE = -3, E_WIDTH = -4, E_TABLES = -5, E_NOSYMBOLS = -6,
    E_SYMBOLS = -7, E_CHANNELS = -8, E_CTXMAP = -9, E_FREQS = -10, E_FREQSUM = -11, E_PADDING = -12,
    E_PARTMODE = -13, E_TRAILING = -14, E_LANES = -15, E_MEMORY = -16
};

typedef struct {
    const uint8_t *b;
    int64_t pos, end;
} Rd;

static int64_t rd_u8(Rd *r, uint32_t *v)
{
    if (r->pos >= r->end)
        return E_TRUNCATED;
    *v = r->b[r->pos++];
    return 0;
}

/* as _io.Reader.varint: canonical LEB128 of at most 64 bits, then <= limit */
static int64_t rd_varint(Rd *r, uint64_t limit, uint64_t *out)
{
    uint64_t v = 0;
    int shift = 0;
    for (;;) {
        if (r->pos >= r->end)
            return E_TRUNCATED;
        uint32_t b = r->b[r->pos++];
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            if (b == 0 && shift)
                return E_VARINT;
            break;
        }
        shift += 7;
        if (shift > 56) /* 9 bytes at most; a 10th could only give a value beyond every limit */
            return E_VARINT;
    }
    if (v > limit)
        return E_RANGE;
    *out = v;
    return 0;
}

#define TRY(x)                                                                                                     \
    do {                                                                                                           \
        int64_t e_ = (x);                                                                                          \
        if (e_ < 0)                                                                                                \
            return e_;                                                                                             \
    } while (0)

typedef struct {
    int64_t nsym, C;
    int64_t used[256];
    const uint8_t *ctxmap;
    uint32_t *freqs; /* [T, nsym], room for 64 * 256 */
} Model;

static const uint8_t zero_map[1] = {0};

/* as floatsplit._read_model */
static int64_t read_model(Rd *r, int64_t sbits, int64_t T, Model *m)
{
    uint64_t v, nruns;
    TRY(rd_varint(r, 256, &v));
    if (v < 1)
        return E_NOSYMBOLS;
    m->nsym = (int64_t)v;
    TRY(rd_varint(r, (uint64_t)m->nsym, &nruns));
    /* the runs: as _rans.read_runs (truncation or a bad varint there is a bad symbol list) */
    int64_t k = 0, prev = 0;
    for (uint64_t j = 0; j < nruns; j++) {
        uint64_t gap, len;
        if (rd_varint(r, UINT64_MAX >> 1, &gap) < 0 || gap > (1ull << sbits))
            return E_SYMBOLS;
        if (rd_varint(r, UINT64_MAX >> 1, &len) < 0)
            return E_SYMBOLS;
        int64_t start = prev + (int64_t)gap;
        if (len < 1 || k + (int64_t)len > m->nsym || start + (int64_t)len > (1ll << sbits))
            return E_SYMBOLS;
        for (int64_t q = 0; q < (int64_t)len; q++)
            m->used[k + q] = start + q;
        k += (int64_t)len;
        prev = start + (int64_t)len;
    }
    if (k != m->nsym)
        return E_SYMBOLS;
    m->C = 1;
    m->ctxmap = zero_map;
    if (T > 1) {
        TRY(rd_varint(r, 1 << 16, &v));
        if (v < 2)
            return E_CHANNELS;
        m->C = (int64_t)v;
        if (r->end - r->pos < m->C)
            return E_TRUNCATED;
        m->ctxmap = r->b + r->pos;
        r->pos += m->C;
        for (int64_t c = 0; c < m->C; c++)
            if (m->ctxmap[c] >= T)
                return E_CTXMAP;
    }
    /* frequencies: as _rans.unpack_varints (any fault is a bad table), then the sums */
    for (int64_t q = 0; q < T * m->nsym; q++) {
        if (rd_varint(r, PROB_SCALE, &v) < 0)
            return E_FREQS;
        m->freqs[q] = (uint32_t)v;
    }
    for (int64_t t = 0; t < T; t++) {
        uint64_t sum = 0;
        for (int64_t q = 0; q < m->nsym; q++)
            sum += m->freqs[t * m->nsym + q];
        if (sum != PROB_SCALE)
            return E_FREQSUM;
    }
    return 0;
}

/* as floatsplit._stream_at: padding to an even position, then nwords words */
static int64_t stream_at(Rd *r, uint64_t nwords, const uint8_t **at)
{
    if (r->pos & 1) {
        uint32_t pad;
        TRY(rd_u8(r, &pad));
        if (pad)
            return E_PADDING;
    }
    if ((uint64_t)(r->end - r->pos) < 2 * nwords)
        return E_TRUNCATED;
    *at = r->b + r->pos;
    r->pos += (int64_t)(2 * nwords);
    return 0;
}

enum { D_FREQS, D_PACKED, D_PLANES, D_TABLES, D_COPY }; /* Scratch slots of the decoder */

static int64_t decode_model_stream(const uint8_t *at, uint64_t nwords, Model *m, int64_t T, int64_t rbits,
                                   const Raw *raw, void *out, int64_t n, int width, uint64_t *hash, Scratch *x)
{
    /* the words as uint16: copied when the payload puts them at an odd address */
    const uint16_t *stream = (const uint16_t *)at;
    if ((uintptr_t)at & 1) {
        uint16_t *copy = (uint16_t *)scratch_get(x, D_COPY, 2 * nwords + 2);
        if (!copy)
            return E_MEMORY;
        memcpy(copy, at, 2 * nwords);
        stream = copy;
    }
    uint32_t symval[256];
    for (int64_t s = 0; s < m->nsym; s++)
        symval[s] = (uint32_t)(m->used[s] << rbits);
    uint64_t *tables = (uint64_t *)scratch_get(x, D_TABLES, ((size_t)T * PROB_SCALE + (size_t)ssmzip_split_period(m->C) / 2 + 1) * 8);
    if (!tables)
        return E_MEMORY;
    return decode_stream(stream, (int64_t)nwords, m->C, m->ctxmap, m->freqs, symval, T, m->nsym, tables, raw, out, n,
                         width, hash);
}

/* Decode a split chunk's payload (32-lane streams) into out (n words of W
 * bits, exponent E) and put the XXH64 of out's bytes in *hash. Returns 1, 0
 * if an entropy-coded stream does not decode, or a negative fault code. */
static int64_t decode_payload(const uint8_t *payload, int64_t len, int64_t W, int64_t E, void *out, int64_t n,
                              uint64_t *hash, Scratch *x)
{
    Rd r = {payload, 0, len};
    uint32_t S, T;
    TRY(rd_u8(&r, &S));
    if (!(S & 0x80))
        return E_LANES;
    S &= 0x7F;
    TRY(rd_u8(&r, &T));
    if (!((uint32_t)E <= S && S <= (uint32_t)W - 1))
        return E_WIDTH;
    if (!(1 <= T && T <= 64))
        return E_TABLES;
    const int64_t R = W - 1 - S, nbytes = (R + 1) / 8, mbits = (R + 1) % 8, nparts = nbytes + (mbits ? 1 : 0);
    const int width = (int)(W / 8);
    int64_t result = E_MEMORY;
    uint8_t *planes = 0, *packed = 0;
    Model m, pm;
    uint32_t *freqs = (uint32_t *)scratch_get(x, D_FREQS, (size_t)(T + 1) * 256 * sizeof(uint32_t));
    if (!freqs)
        return E_MEMORY;
    m.freqs = freqs;
    pm.freqs = freqs + T * 256;
    Raw raw = {{0}, nbytes, nbytes, mbits, 0, 0, R};
    int64_t e;
    uint64_t nwords, pn;
    const uint8_t *at, *pat;
#define FAIL(x)                                                                                                    \
    do {                                                                                                           \
        if ((e = (x)) < 0) {                                                                                       \
            result = e;                                                                                            \
            goto done;                                                                                             \
        }                                                                                                          \
    } while (0)
    FAIL(read_model(&r, S, T, &m));
    FAIL(rd_varint(&r, (uint64_t)n + STATE_WORDS, &nwords));
    FAIL(stream_at(&r, nwords, &at));
    for (int64_t j = 0; j < nparts; j++) {
        int64_t nbits = j < nbytes ? 8 : mbits;
        uint32_t mode;
        FAIL(rd_u8(&r, &mode));
        if (mode == 0) {
            if (j < nbytes) {
                if (r.end - r.pos < n)
                    FAIL(E_TRUNCATED);
                raw.plane[j] = r.b + r.pos;
                r.pos += n;
            } else { /* bit-packed: copied with slack for the block reads */
                int64_t nb = (n * mbits + 7) / 8;
                if (r.end - r.pos < nb)
                    FAIL(E_TRUNCATED);
                packed = (uint8_t *)scratch_get(x, D_PACKED, (size_t)nb + 24);
                if (!packed)
                    FAIL(E_MEMORY);
                memcpy(packed, r.b + r.pos, (size_t)nb);
                memset(packed + nb, 0, 24);
                raw.packed = packed;
                raw.packed_len = nb + 24;
                r.pos += nb;
            }
        } else if (mode == 1) {
            FAIL(read_model(&r, nbits, 1, &pm));
            FAIL(rd_varint(&r, (uint64_t)n + STATE_WORDS, &pn));
            FAIL(stream_at(&r, pn, &pat));
            if (!planes && !(planes = (uint8_t *)scratch_get(x, D_PLANES, (size_t)(nparts * n) + 1)))
                FAIL(E_MEMORY);
            Raw none = {{0}, 0, 0, 0, 0, 0, 0};
            int64_t ok = decode_model_stream(pat, pn, &pm, 1, 0, &none, planes + j * n, n, 1, 0, x);
            if (ok <= 0) {
                result = ok;
                goto done;
            }
            raw.plane[j] = planes + j * n;
            if (j == nbytes) /* a coded top part is a byte plane too */
                raw.nparts = nparts;
        } else {
            FAIL(E_PARTMODE);
        }
    }
    if (r.pos != r.end)
        FAIL(E_TRAILING);
    result = decode_model_stream(at, nwords, &m, T, R, &raw, out, n, width, hash, x);
done:
#undef FAIL
    return result;
}

int64_t ssmzip_split_decode_payload(const uint8_t *payload, int64_t len, int64_t W, int64_t E, void *out, int64_t n,
                                    uint64_t *hash)
{
    Scratch x = {{0}, {0}};
    int64_t r = decode_payload(payload, len, W, E, out, n, hash, &x);
    scratch_free(&x);
    return r;
}

/* ---------------------------------------------------------------- many chunks, C threads */

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define HAVE_PTHREADS 1
#endif

int64_t ssmzip_split_next_job(int64_t *next)
{
#if defined(HAVE_PTHREADS)
    return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
#else
    return (*next)++;
#endif
}

void ssmzip_split_parallel(void *(*worker)(void *), void *arg, int64_t threads)
{
#if defined(HAVE_PTHREADS)
    pthread_t tid[64];
    int64_t started = 0;
    for (int64_t t = 1; t < threads && t < 64; t++)
        if (pthread_create(&tid[started], 0, worker, arg) == 0)
            started++;
    worker(arg);
    for (int64_t t = 0; t < started; t++)
        pthread_join(tid[t], 0);
#else
    (void)threads;
    worker(arg);
#endif
}

/* ---------------------------------------------------------------- gathering pieces, C threads */

typedef struct {
    int64_t count, total, threads;
    const uint8_t *const *src;
    const int64_t *len;
    uint8_t *dst;
    int64_t next;
} Gather;

static void *gather_worker(void *arg)
{
    Gather *g = (Gather *)arg;
    for (int64_t k; (k = ssmzip_split_next_job(&g->next)) < g->threads;) {
        /* byte range [lo, hi) of the output: equal shares whatever the pieces' sizes */
        int64_t lo = g->total * k / g->threads, hi = g->total * (k + 1) / g->threads, at = 0;
        for (int64_t i = 0; i < g->count && at < hi; at += g->len[i], i++) {
            int64_t a = at > lo ? at : lo, b = at + g->len[i] < hi ? at + g->len[i] : hi;
            if (a < b)
                memcpy(g->dst + a, g->src[i] + (a - at), (size_t)(b - a));
        }
    }
    return 0;
}

/* dst = the `count` pieces src[i] (len[i] bytes each) back to back, copied by
 * `threads` threads (the output's page faults and copying shared among them) */
void ssmzip_gather(int64_t count, const uint8_t *const *src, const int64_t *len, uint8_t *dst, int64_t threads)
{
    int64_t total = 0;
    for (int64_t i = 0; i < count; i++)
        total += len[i];
    if (threads < 1)
        threads = 1;
    Gather g = {count, total, threads, src, len, dst, 0};
    ssmzip_split_parallel(gather_worker, &g, threads);
}

typedef struct {
    int64_t count;
    const uint8_t *const *payloads;
    const int64_t *lens, *W, *E, *ns;
    void *const *outs;
    uint64_t *hashes;
    int64_t *codes;
    int64_t next; /* the next job (ssmzip_split_next_job) */
} Batch;

static void *batch_worker(void *arg)
{
    Batch *b = (Batch *)arg;
    Scratch x = {{0}, {0}};
    for (int64_t i; (i = ssmzip_split_next_job(&b->next)) < b->count;)
        b->codes[i] = decode_payload(b->payloads[i], b->lens[i], b->W[i], b->E[i], b->outs[i], b->ns[i],
                                     &b->hashes[i], &x);
    scratch_free(&x);
    return 0;
}

/* ssmzip_split_decode_payload for `count` chunks on `threads` threads (the
 * caller's thread among them; at most 64), jobs taken in the given order;
 * codes[i] and hashes[i] as that function gives them. Python threads would
 * hand the interpreter lock back and forth at every chunk: here nobody waits. */
void ssmzip_split_decode_many(int64_t count, const uint8_t *const *payloads, const int64_t *lens, const int64_t *W,
                              const int64_t *E, void *const *outs, const int64_t *ns, uint64_t *hashes, int64_t *codes,
                              int64_t threads)
{
    Batch b = {count, payloads, lens, W, E, ns, outs, hashes, codes, 0};
    ssmzip_split_parallel(batch_worker, &b, threads < count ? threads : count);
}
