/* The SSM's matrix loops in C: the forward pass's matrix-vector products and
 * the backward pass's two matrix loops (ssmzip/engine/ssm.py), which took most
 * of the SSM's time in numba; called from numba through their addresses
 * (ssm.call_c; native.ssm_kernels lists them).
 *
 * Same bytes as numba: every output element is the same float32 sum, term by
 * term in the same order (t ascending for an outer product, i ascending for a
 * transposed product), each product rounded before it is added (built with
 * -ffp-contract=off: no FMA). What changes is only which elements are worked
 * on together: numba streams the whole gradient matrix through memory once per
 * chunk row; here a 4 x 16 tile of it stays in eight AVX registers for all T
 * rows, so each element is loaded and stored once per chunk (likewise 64
 * outputs of a matrix-vector product for all its rows). The tiles' loops are
 * unrolled by pragma: kept in an array that GCC -O2 does not unroll, the
 * accumulators went through memory and the kernels were 2x slower.
 *
 * The AVX2 path is chosen at run time; the portable path is plain loops in the
 * same order (the compiler may vectorise them: element-wise, so the same sums).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ssm.h"

/* y[i] += sum_j x[j] * W[j, i]   (j ascending; W rows ldw apart) */
static void matvec_portable(const float *x, int64_t J, const float *W, int64_t ldw, int64_t n, float *y,
                            int64_t i0)
{
    for (int64_t i = i0; i < n; i++) {
        float acc = y[i];
        for (int64_t j = 0; j < J; j++)
            acc += x[j] * W[j * ldw + i];
        y[i] = acc;
    }
}

/* G[j, i] += sum_t X[t, j] * Y[t, i]   (row strides xs, ys; G row-major J x I) */
static void acc_outer_portable(const float *X, int64_t xs, int64_t J, const float *Y, int64_t ys,
                               int64_t I, int64_t T, float *G, int64_t j0, int64_t i0)
{
    /* elements with j >= j0 or i >= i0 (all of them when j0 = i0 = 0) */
    for (int64_t j = 0; j < J; j++)
        for (int64_t i = (j < j0 ? i0 : 0); i < I; i++) {
            float g = G[j * I + i];
            for (int64_t t = 0; t < T; t++)
                g += X[t * xs + j] * Y[t * ys + i];
            G[j * I + i] = g;
        }
}

/* X[t, j] += sum_i W[j, i] * Y[t, i]   (the sum from 0, i ascending, then added) */
static void back_mat_portable(const float *W, int64_t J, int64_t I, const float *Y, int64_t ys, int64_t T,
                              float *X, int64_t xs, int64_t j0, int64_t t0)
{
    for (int64_t j = 0; j < J; j++)
        for (int64_t t = (j < j0 ? t0 : 0); t < T; t++) {
            float acc = 0.0f;
            for (int64_t i = 0; i < I; i++)
                acc += W[j * I + i] * Y[t * ys + i];
            X[t * xs + j] += acc;
        }
}

#ifdef SSM_AVX
__attribute__((target("avx2")))
static void acc_outer_avx2(const float *X, int64_t xs, int64_t J, const float *Y, int64_t ys,
                           int64_t I, int64_t T, float *G)
{
    const int64_t J4 = J & ~(int64_t)3, I16 = I & ~(int64_t)15;
    for (int64_t i = 0; i < I16; i += 16)       /* Y's 16 columns stay in L1 for every row tile */
        for (int64_t j = 0; j < J4; j += 4) {
            __m256 a[4][2];
            _Pragma("GCC unroll 8") for (int r = 0; r < 4; r++) {
                a[r][0] = _mm256_loadu_ps(G + (j + r) * I + i);
                a[r][1] = _mm256_loadu_ps(G + (j + r) * I + i + 8);
            }
            for (int64_t t = 0; t < T; t++) {
                const __m256 y0 = _mm256_loadu_ps(Y + t * ys + i), y1 = _mm256_loadu_ps(Y + t * ys + i + 8);
                const float *xr = X + t * xs + j;
                _Pragma("GCC unroll 8") for (int r = 0; r < 4; r++) {
                    const __m256 xv = _mm256_broadcast_ss(xr + r);
                    a[r][0] = _mm256_add_ps(a[r][0], _mm256_mul_ps(xv, y0));
                    a[r][1] = _mm256_add_ps(a[r][1], _mm256_mul_ps(xv, y1));
                }
            }
            _Pragma("GCC unroll 8") for (int r = 0; r < 4; r++) {
                _mm256_storeu_ps(G + (j + r) * I + i, a[r][0]);
                _mm256_storeu_ps(G + (j + r) * I + i + 8, a[r][1]);
            }
        }
    const int64_t I8 = I & ~(int64_t)7;
    if (I8 > I16)                      /* one more column of 8 (e.g. I = 24) */
        for (int64_t j = 0; j < J4; j += 4) {
            __m256 a[4];
            _Pragma("GCC unroll 8") for (int r = 0; r < 4; r++)
                a[r] = _mm256_loadu_ps(G + (j + r) * I + I16);
            for (int64_t t = 0; t < T; t++) {
                const __m256 y0 = _mm256_loadu_ps(Y + t * ys + I16);
                _Pragma("GCC unroll 8") for (int r = 0; r < 4; r++)
                    a[r] = _mm256_add_ps(a[r], _mm256_mul_ps(_mm256_broadcast_ss(X + t * xs + j + r), y0));
            }
            _Pragma("GCC unroll 8") for (int r = 0; r < 4; r++)
                _mm256_storeu_ps(G + (j + r) * I + I16, a[r]);
        }
    acc_outer_portable(X, xs, J, Y, ys, I, T, G, J4, I8);
}

/* ta: scratch of I * T floats (Y transposed, so that t runs along a register) */
__attribute__((target("avx2")))
static void back_mat_avx2(const float *W, int64_t J, int64_t I, const float *Y, int64_t ys, int64_t T,
                          float *ta, float *X, int64_t xs)
{
    const int64_t J4 = J & ~(int64_t)3, T16 = T & ~(int64_t)15;
    if (T16 == 0) {
        back_mat_portable(W, J, I, Y, ys, T, X, xs, 0, 0);
        return;
    }
    for (int64_t t = 0; t < T16; t++)
        for (int64_t i = 0; i < I; i++)
            ta[i * T16 + t] = Y[t * ys + i];
    for (int64_t t = 0; t < T16; t += 16)       /* ta's 16 rows stay in L1 for every row tile */
        for (int64_t j = 0; j < J4; j += 4) {
            __m256 a[4][2];
            _Pragma("GCC unroll 8") for (int r = 0; r < 4; r++)
                a[r][0] = a[r][1] = _mm256_setzero_ps();
            for (int64_t i = 0; i < I; i++) {
                const __m256 y0 = _mm256_loadu_ps(ta + i * T16 + t), y1 = _mm256_loadu_ps(ta + i * T16 + t + 8);
                _Pragma("GCC unroll 8") for (int r = 0; r < 4; r++) {
                    const __m256 wv = _mm256_broadcast_ss(W + (j + r) * I + i);
                    a[r][0] = _mm256_add_ps(a[r][0], _mm256_mul_ps(wv, y0));
                    a[r][1] = _mm256_add_ps(a[r][1], _mm256_mul_ps(wv, y1));
                }
            }
            _Pragma("GCC unroll 8") for (int r = 0; r < 4; r++) {
                float s[16];
                _mm256_storeu_ps(s, a[r][0]);
                _mm256_storeu_ps(s + 8, a[r][1]);
                for (int k = 0; k < 16; k++)
                    X[(t + k) * xs + j + r] += s[k];
            }
        }
    back_mat_portable(W, J, I, Y, ys, T, X, xs, J4, T16);
}

/* y[0 .. 8R) += sum_j x[j] * W[j, 0 .. 8R): R registers of outputs kept for all J
 * rows, so that R independent sums advance side by side (R is a constant at
 * each call, so the loops over it unroll) */
__attribute__((target("avx2"), always_inline))
static inline void matvec_regs(const float *x, int64_t J, const float *W, int64_t ldw, float *y, const int R)
{
    __m256 a[8];
    _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)
        a[r] = _mm256_loadu_ps(y + 8 * r);
    for (int64_t j = 0; j < J; j++) {
        const __m256 xv = _mm256_broadcast_ss(x + j);
        const float *w = W + j * ldw;
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)
            a[r] = _mm256_add_ps(a[r], _mm256_mul_ps(xv, _mm256_loadu_ps(w + 8 * r)));
    }
    _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)
        _mm256_storeu_ps(y + 8 * r, a[r]);
}

__attribute__((target("avx2")))
static void matvec_avx2(const float *x, int64_t J, const float *W, int64_t ldw, int64_t n, float *y)
{
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)            /* 64 outputs in 8 registers for all J rows */
        matvec_regs(x, J, W + i, ldw, y + i, 8);
    /* the rest of the groups of 8 in one pass too: one at a time, each would be a
     * single chain of J dependent additions (the SSM's x-projection has 24 outputs) */
    switch ((n - i) / 8) {
    case 7: matvec_regs(x, J, W + i, ldw, y + i, 7); break;
    case 6: matvec_regs(x, J, W + i, ldw, y + i, 6); break;
    case 5: matvec_regs(x, J, W + i, ldw, y + i, 5); break;
    case 4: matvec_regs(x, J, W + i, ldw, y + i, 4); break;
    case 3: matvec_regs(x, J, W + i, ldw, y + i, 3); break;
    case 2: matvec_regs(x, J, W + i, ldw, y + i, 2); break;
    case 1: matvec_regs(x, J, W + i, ldw, y + i, 1); break;
    default: break;
    }
    i += (n - i) / 8 * 8;
    matvec_portable(x, J, W, ldw, n, y, i);
}

static int avx2_state = -1;         /* -1: not probed yet; 0: portable path; 1: AVX2 */

static int have_avx2(void)
{
    if (avx2_state < 0) {
        __builtin_cpu_init();
        avx2_state = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return avx2_state;
}
#endif

/* Which path the loops take: 1 AVX2, 0 portable. want = 0 forces the portable
 * path (tests compare it with numba too), want = 1 restores the CPU's choice,
 * want = -1 only asks. */
int64_t ssmzip_ssm_isa(int64_t want)
{
#ifdef SSM_AVX
    if (want == 0)
        avx2_state = 0;
    else if (want == 1)
        avx2_state = -1;
    return have_avx2();
#else
    (void)want;
    return 0;
#endif
}

/* sums[r] = sum_i a[r * lda + i] * b[i] (times c[i] when has_c), i ascending from
 * 0.0, for `rows` rows, eight at a time: eight independent chains, where numba
 * runs one row's chain after another and waits out the adder's latency at every
 * term. has_c is a constant at each (inlined) call, so the branches fold away. */
INLINE void dots(const float *a, int64_t lda, const float *b, const float *c, int has_c, int64_t n,
            int64_t rows, float *sums)
{
    int64_t r = 0;
    for (; r + 8 <= rows; r += 8) {
        const float *ar = a + r * lda;
        float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t i = 0; i < n; i++) {
            _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++)
                s[k] += has_c ? (ar[k * lda + i] * b[i]) * c[i] : ar[k * lda + i] * b[i];
        }
        _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++)
            sums[r + k] = s[k];
    }
    for (; r < rows; r++) {
        float s = 0.0f;
        for (int64_t i = 0; i < n; i++)
            s += has_c ? (a[r * lda + i] * b[i]) * c[i] : a[r * lda + i] * b[i];
        sums[r] = s;
    }
}

/* ssm.py _scan_back: the recurrence's backward pass over a chunk, t descending.
 * Arrays as there; lim = [lo_dt, hi_dt] (the clamp of the step sizes).
 * Written once and compiled twice (scan_back_avx2, scan_back_portable), like
 * the forward. numba's first two loops over the states (dh += C dy, then
 * vdd and vq from dh) run here as one pass per state: each dh row is final
 * before it is used, and vdd, vq add the states in the same order. */
#define SCAN_ARGS int64_t T, int64_t di, int64_t ds, int64_t rk, const float *H, const float *PJ, \
                  const float *DT, const float *DEC, const float *XS, const float *dY, float *dPJ, \
                  float *dXS, float *dA, float *dH, float *vq, float *vdd, const float *vae, float *gal, \
                  const float *lim
#define SCAN_CALL T, di, ds, rk, H, PJ, DT, DEC, XS, dY, dPJ, dXS, dA, dH, vq, vdd, vae, gal, lim

INLINE void scan_back(SCAN_ARGS)
{
    const int64_t K = rk + 2 * ds;
    const float lo_dt = lim[0], hi_dt = lim[1];
    for (int64_t t = T - 1; t >= 0; t--) {
        const float *hn = H + (t + 1) * ds * di, *hp = H + t * ds * di, *dy = dY + t * di, *pj = PJ + t * K;
        const float *dtv = DT + t * di, *dec = DEC + t * di, *xs = XS + t * di;
        float *dpj = dPJ + t * K, *dxs = dXS + t * di, *da = dA + t * di;
        /* dC from y = C . h_t+1 */
        dots(hn, di, dy, 0, 0, di, ds, dpj + rk + ds);
        for (int64_t i = 0; i < di; i++)
            vq[i] = vdd[i] = 0.0f;
        for (int64_t s = 0; s < ds; s++) {
            const float cs = pj[rk + ds + s], bs = pj[rk + s];
            const float *h1 = hp + s * di;
            float *dh = dH + s * di;
            for (int64_t i = 0; i < di; i++) {
                const float d = dh[i] + cs * dy[i];           /* dh gets C * dy */
                dh[i] = d;
                vdd[i] += d * h1[i];
                vq[i] += d * bs;
            }
        }
        dots(dH, di, dtv, xs, 1, di, ds, dpj + rk);       /* dB */
        for (int64_t i = 0; i < di; i++) {
            /* dec = exp(-dt * ea), ea = exp(A_log); dt = exp(a) unless clamped */
            dxs[i] += dtv[i] * vq[i];
            const float ddt = xs[i] * vq[i] - vdd[i] * vae[i] * dec[i];
            gal[i] -= vdd[i] * dtv[i] * dec[i] * vae[i];
            da[i] = (dtv[i] <= lo_dt || dtv[i] >= hi_dt) ? 0.0f : ddt * dtv[i];
        }
        for (int64_t s = 0; s < ds; s++) {
            float *dh = dH + s * di;
            for (int64_t i = 0; i < di; i++)
                dh[i] *= dec[i];
        }
    }
}

static void scan_back_portable(SCAN_ARGS)
{
    scan_back(SCAN_CALL);
}

#ifdef SSM_AVX
__attribute__((target("avx2")))
static void scan_back_avx2(SCAN_ARGS)
{
    scan_back(SCAN_CALL);
}
#endif

void ssmzip_scan_back(SCAN_ARGS)
{
#ifdef SSM_AVX
    if (have_avx2()) {
        scan_back_avx2(SCAN_CALL);
        return;
    }
#endif
    scan_back_portable(SCAN_CALL);
}

void ssmzip_matvec(const float *x, int64_t J, const float *W, int64_t ldw, int64_t n, float *y)
{
#ifdef SSM_AVX
    if (have_avx2()) {
        matvec_avx2(x, J, W, ldw, n, y);
        return;
    }
#endif
    matvec_portable(x, J, W, ldw, n, y, 0);
}

void ssmzip_acc_outer(const float *X, int64_t xs, int64_t J, const float *Y, int64_t ys, int64_t I,
                      int64_t T, float *G)
{
#ifdef SSM_AVX
    if (have_avx2()) {
        acc_outer_avx2(X, xs, J, Y, ys, I, T, G);
        return;
    }
#endif
    acc_outer_portable(X, xs, J, Y, ys, I, T, G, 0, 0);
}

void ssmzip_back_mat(const float *W, int64_t J, int64_t I, const float *Y, int64_t ys, int64_t T,
                     float *ta, float *X, int64_t xs)
{
#ifdef SSM_AVX
    if (have_avx2()) {
        back_mat_avx2(W, J, I, Y, ys, T, ta, X, xs);
        return;
    }
#endif
    (void)ta;
    back_mat_portable(W, J, I, Y, ys, T, X, xs, 0, 0);
}

/* ---- the forward pass of one byte: ssm.py's ssm_forward, operation for operation ----
 * Every loop below is element-wise or a sum in the order numba runs it, with the
 * same float32 constants, so the bits are the same (tests/test_native.py). The
 * layout indices and constants are in ssm.h. */

#ifdef SSM_AVX
/* vexp_c's arithmetic on 8 lanes, operation for operation: max/min with numba's
 * operand order (MAXPS returns its second operand unless the first is greater),
 * floor by ROUNDPS, k integral so truncation converts it exactly. Returns how
 * many elements it did (a multiple of 8). */
__attribute__((target("avx2")))
static int64_t vexp_avx2(const float *x, float *out, int64_t n)
{
    const __m256 lo = _mm256_set1_ps(EXP_MIN), hi = _mm256_set1_ps(EXP_MAX), l2e = _mm256_set1_ps(LOG2E);
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256 c_hi = _mm256_set1_ps(LN2_HI), c_lo = _mm256_set1_ps(LN2_LO);
    const __m256 p2 = _mm256_set1_ps(P2), p3 = _mm256_set1_ps(P3), p4 = _mm256_set1_ps(P4),
                 p5 = _mm256_set1_ps(P5), p6 = _mm256_set1_ps(P6);
    const __m256i bias = _mm256_set1_epi32(127);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_max_ps(lo, _mm256_loadu_ps(x + i));      /* nb_max(x, lo) */
        v = _mm256_min_ps(hi, v);                                  /* nb_min(v, hi) */
        const __m256 k = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(v, l2e), half));
        const __m256 r = _mm256_sub_ps(_mm256_sub_ps(v, _mm256_mul_ps(k, c_hi)), _mm256_mul_ps(k, c_lo));
        __m256 q = _mm256_add_ps(p5, _mm256_mul_ps(r, p6));
        q = _mm256_add_ps(p4, _mm256_mul_ps(r, q));
        q = _mm256_add_ps(p3, _mm256_mul_ps(r, q));
        q = _mm256_add_ps(p2, _mm256_mul_ps(r, q));
        q = _mm256_add_ps(one, _mm256_mul_ps(r, q));
        q = _mm256_add_ps(one, _mm256_mul_ps(r, q));
        const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(k), bias), 23);
        _mm256_storeu_ps(out + i, _mm256_mul_ps(q, _mm256_castsi256_ps(e)));
    }
    return i;
}
#endif

/* ssm.vexp: out[i] = e^x[i]; out may be x */
INLINE void vexp_c(const float *x, float *out, int32_t *ib, int64_t n)
{
#ifdef SSM_AVX
    if (have_avx2()) {
        const int64_t done = vexp_avx2(x, out, n);
        x += done;
        out += done;
        ib += done;
        n -= done;
    }
#endif
    for (int64_t i = 0; i < n; i++) {
        const float v = nb_min(nb_max(x[i], EXP_MIN), EXP_MAX);
        const float k = floorf(v * LOG2E + 0.5f);
        const float r = (v - k * LN2_HI) - k * LN2_LO;
        out[i] = 1.0f + r * (1.0f + r * (P2 + r * (P3 + r * (P4 + r * (P5 + r * P6)))));
        ib[i] = ((int32_t)k + 127) << 23;
    }
    for (int64_t i = 0; i < n; i++) {
        float s;
        memcpy(&s, ib + i, 4);
        out[i] *= s;
    }
}

/* vexp_c for tests (tests/test_native.py compares it with ssm.vexp on edge values) */
void ssmzip_vexp(const float *x, float *out, int32_t *ib, int64_t n)
{
    vexp_c(x, out, ib, n);
}

/* ssm.vsigmoid: out = 1 / (1 + e^-x), through the clamped e^x; out may be x */
INLINE void vsigmoid_c(const float *x, float *out, int32_t *ib, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = -x[i];
    vexp_c(out, out, ib, n);
    for (int64_t i = 0; i < n; i++)
        out[i] = 1.0f / (1.0f + out[i]);
}

void ssmzip_vsigmoid(const float *x, float *out, int32_t *ib, int64_t n)
{
    vsigmoid_c(x, out, ib, n);
}

/* ssm._silu_into: dst = src * sigmoid(src) */
INLINE void silu_c(const float *src, float *dst, int32_t *ib, int64_t n)
{
    vsigmoid_c(src, dst, ib, n);
    for (int64_t i = 0; i < n; i++)
        dst[i] *= src[i];
}

/* ssm._rmsnorm_fwd: y = x * r * g, r = 1 / sqrt(mean(x^2) + eps); returns r */
INLINE float rmsnorm_c(const float *x, const float *g, float *y, int64_t n)
{
    float acc = 0.0f;
    for (int64_t j = 0; j < n; j++)
        acc += x[j] * x[j];
    const float r = 1.0f / sqrtf(acc / (float)n + RMS_EPS);
    for (int64_t j = 0; j < n; j++)
        y[j] = x[j] * r * g[j];
    return r;
}

/* eight floats as one value (GCC's vector extension: element-wise IEEE arithmetic,
 * 8 lanes in forward_avx2, two halves of 4 in forward_portable) */
typedef float v8f __attribute__((vector_size(32), aligned(4), may_alias));
#define ld8(p) (*(const v8f *)(p))
#define st8(p, v) (*(v8f *)(p) = (v))

/* The selective scan of one row: for each state s in order,
 *   h_new[s, i] = dec[i] * h_old[s, i] + dt[i] * xs[i] * B[s]
 *   y[i] = D[i] * xs[i] + sum_s C[s] * h_new[s, i]   (s ascending)
 * Eight channels at a time keep y in a register over all the states, instead
 * of reading and writing the whole row once per state (same sums per element). */
INLINE void recurrence(const float *hp, float *hn, const float *dec, const float *dt, const float *xs,
                       const float *dd, const float *B, const float *C, float *y, int64_t di, int64_t ds)
{
    int64_t i = 0;
    for (; i + 8 <= di; i += 8) {
        const v8f d8 = ld8(dec + i), dx = ld8(dt + i) * ld8(xs + i);
        v8f acc = ld8(dd + i) * ld8(xs + i);
        for (int64_t s = 0; s < ds; s++) {
            const v8f hv = d8 * ld8(hp + s * di + i) + dx * B[s];
            st8(hn + s * di + i, hv);
            acc += C[s] * hv;
        }
        st8(y + i, acc);
    }
    for (; i < di; i++) {
        const float dx = dt[i] * xs[i];
        float acc = dd[i] * xs[i];
        for (int64_t s = 0; s < ds; s++) {
            const float hv = dec[i] * hp[s * di + i] + dx * B[s];
            hn[s * di + i] = hv;
            acc += C[s] * hv;
        }
        y[i] = acc;
    }
}

/* ssm.ssm_forward (see it for the arguments); t1, t2: two scratch rows of di.
 * Written once and compiled twice (forward_avx2, forward_portable): the
 * element-wise loops vectorise to 8 lanes in the first, 4 in the second; no
 * loop is a float reduction that the vectoriser could reorder (-O2 without
 * -ffast-math keeps those sequential), so both give numba's bits. */
#define FORWARD_ARGS const float *P, const int64_t *lay, float *A, const int64_t *alay, const int64_t *dims, \
                     int64_t t, int64_t byte, float *t1, float *t2, int32_t *ib, const float *NE, const int64_t *rows
#define FORWARD_CALL P, lay, A, alay, dims, t, byte, t1, t2, ib, NE, rows

INLINE void forward(FORWARD_ARGS)
{
    const int64_t dm = dims[D_DM], di = dims[D_DI], ds = dims[D_DS], rk = dims[D_R], nl = dims[D_NL];
    const int64_t K = rk + 2 * ds, gl = nl * N_LP, ga = nl * N_LA, ng = dims[D_NG];
    float *x0 = A + (nl > 0 ? alay[A_XIN] : alay[ga + G_XF]) + t * dm;
    memcpy(x0, P + lay[gl + G_EMB] + byte * dm, (size_t)dm * 4);
    for (int64_t k = 0; k < ng; k++) {
        const float *ne = NE + ((k << dims[D_NGB]) + rows[t * ng + k]) * dm;
        for (int64_t j = 0; j < dm; j++)
            x0[j] += ne[j];
    }
    for (int64_t l = 0; l < nl; l++) {
        const int64_t *pl = lay + l * N_LP, *al = alay + l * N_LA;
        const float *xin = A + al[A_XIN] + t * dm;
        float *xout = A + (l + 1 < nl ? alay[(l + 1) * N_LA + A_XIN] : alay[ga + G_XF]) + t * dm;
        float *u = A + al[A_U] + t * dm;
        A[al[A_R] + t] = rmsnorm_c(xin, P + pl[L_G], u, dm);
        float *xb = A + al[A_XB] + (t + CONV - 1) * di, *z = A + al[A_Z] + t * di;
        for (int64_t i = 0; i < di; i++)
            xb[i] = z[i] = 0.0f;
        ssmzip_matvec(u, dm, P + pl[L_WIN], 2 * di, di, xb);
        ssmzip_matvec(u, dm, P + pl[L_WIN] + di, 2 * di, di, z);
        float *xc = A + al[A_XC] + t * di, *xs = A + al[A_XS] + t * di;
        memcpy(xc, P + pl[L_CB], (size_t)di * 4);
        for (int64_t k = 0; k < CONV; k++) {
            const float *src = A + al[A_XB] + (t + CONV - 1 - k) * di, *w = P + pl[L_CW] + k * di;
            for (int64_t i = 0; i < di; i++)
                xc[i] += w[i] * src[i];
        }
        silu_c(xc, xs, ib, di);
        float *pj = A + al[A_PJ] + t * K;
        for (int64_t i = 0; i < K; i++)
            pj[i] = 0.0f;
        ssmzip_matvec(xs, di, P + pl[L_WX], K, K, pj);
        float *dt = A + al[A_DT] + t * di, *dec = A + al[A_DEC] + t * di;
        memcpy(dt, P + pl[L_DTB], (size_t)di * 4);
        ssmzip_matvec(pj, rk, P + pl[L_WDT], di, di, dt);
        for (int64_t i = 0; i < di; i++)
            dt[i] = nb_min(nb_max(dt[i], DT_MIN_A), DT_MAX_A);
        vexp_c(dt, dt, ib, di);
        vexp_c(P + pl[L_ALOG], t2, ib, di);
        for (int64_t i = 0; i < di; i++)
            t1[i] = -dt[i] * t2[i];
        vexp_c(t1, dec, ib, di);
        const float *hp = A + al[A_H] + t * ds * di, *dd = P + pl[L_D];
        float *hn = A + al[A_H] + (t + 1) * ds * di, *y = A + al[A_Y] + t * di;
        recurrence(hp, hn, dec, dt, xs, dd, pj + rk, pj + rk + ds, y, di, ds);
        float *og = A + al[A_O] + t * di;
        silu_c(z, t1, ib, di);
        for (int64_t i = 0; i < di; i++)
            og[i] = y[i] * t1[i];
        memcpy(xout, xin, (size_t)dm * 4);
        ssmzip_matvec(og, di, P + pl[L_WOUT], dm, dm, xout);
    }
    A[alay[ga + G_RF] + t] = rmsnorm_c(A + alay[ga + G_XF] + t * dm, P + lay[gl + G_GF],
                                       A + alay[ga + G_F] + t * dm, dm);
}

static void forward_portable(FORWARD_ARGS)
{
    forward(FORWARD_CALL);
}

#ifdef SSM_AVX
__attribute__((target("avx2")))
static void forward_avx2(FORWARD_ARGS)
{
    forward(FORWARD_CALL);
}
#endif

void ssmzip_ssm_forward(FORWARD_ARGS)
{
#ifdef SSM_AVX
    if (have_avx2()) {
        forward_avx2(FORWARD_CALL);
        return;
    }
#endif
    forward_portable(FORWARD_CALL);
}
