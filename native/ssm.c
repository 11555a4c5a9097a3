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
#include <stdint.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(SSMZIP_NO_CLONES)
#define SSM_AVX 1
#include <immintrin.h>
#endif

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

__attribute__((target("avx2")))
static void matvec_avx2(const float *x, int64_t J, const float *W, int64_t ldw, int64_t n, float *y)
{
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {          /* 64 outputs in 8 registers for all J rows */
        __m256 a[8];
        _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++)
            a[r] = _mm256_loadu_ps(y + i + 8 * r);
        for (int64_t j = 0; j < J; j++) {
            const __m256 xv = _mm256_broadcast_ss(x + j);
            const float *w = W + j * ldw + i;
            _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++)
                a[r] = _mm256_add_ps(a[r], _mm256_mul_ps(xv, _mm256_loadu_ps(w + 8 * r)));
        }
        _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++)
            _mm256_storeu_ps(y + i + 8 * r, a[r]);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_loadu_ps(y + i);
        for (int64_t j = 0; j < J; j++)
            a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_broadcast_ss(x + j), _mm256_loadu_ps(W + j * ldw + i)));
        _mm256_storeu_ps(y + i, a);
    }
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
static inline void dots(const float *a, int64_t lda, const float *b, const float *c, int has_c, int64_t n,
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
 * Arrays as there; lim = [lo_dt, hi_dt] (the clamp of the step sizes). */
void ssmzip_scan_back(int64_t T, int64_t di, int64_t ds, int64_t rk, const float *H, const float *PJ,
                      const float *DT, const float *DEC, const float *XS, const float *dY, float *dPJ,
                      float *dXS, float *dA, float *dH, float *vq, float *vdd, const float *vae, float *gal,
                      const float *lim)
{
    const int64_t K = rk + 2 * ds;
    const float lo_dt = lim[0], hi_dt = lim[1];
    for (int64_t t = T - 1; t >= 0; t--) {
        const float *hn = H + (t + 1) * ds * di, *hp = H + t * ds * di, *dy = dY + t * di, *pj = PJ + t * K;
        const float *dtv = DT + t * di, *dec = DEC + t * di, *xs = XS + t * di;
        float *dpj = dPJ + t * K, *dxs = dXS + t * di, *da = dA + t * di;
        /* dC from y = C . h_t+1; dh gets C * dy */
        dots(hn, di, dy, 0, 0, di, ds, dpj + rk + ds);
        for (int64_t s = 0; s < ds; s++) {
            const float cs = pj[rk + ds + s];
            float *dh = dH + s * di;
            for (int64_t i = 0; i < di; i++)
                dh[i] += cs * dy[i];
        }
        for (int64_t i = 0; i < di; i++)
            vq[i] = vdd[i] = 0.0f;
        for (int64_t s = 0; s < ds; s++) {
            const float *h1 = hp + s * di, *dh = dH + s * di;
            const float bs = pj[rk + s];
            for (int64_t i = 0; i < di; i++) {
                vdd[i] += dh[i] * h1[i];
                vq[i] += dh[i] * bs;
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
