/* The SSM's backward pass over a chunk in C: ssmzip/engine/ssm.py's
 * ssm_backward, operation for operation, so the gradient has the same bits.
 *
 * Its matrix loops and the recurrence's backward were already C (ssm.c); the
 * element-wise rest (the head, the norms, the gate, the conv, the embedding)
 * ran in numba and took about 40 % of the learning thread's time at -9. Here
 * every loop is element-wise or a float sum in numba's order (-O2 without
 * -ffast-math never reorders a reduction), with numba's float32 constants and
 * the same e^x (ssm.c's, which clamps its input, for the element-wise
 * sigmoids; fexp_c, which returns 0 below -87, for the head's scalar ones).
 *
 * Written once and compiled twice, like ssm.c's forward: backward_avx2 lets
 * the element-wise loops use 8 lanes, backward_portable runs on any x86-64
 * (and is what tests force to check it too). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ssm.h"

/* ssm.py fexp: e^x within ~2 ulp; 0 below EXP_MIN, EXP_MAX's value above it */
static inline float fexp_c(float x)
{
    if (x < EXP_MIN)
        return 0.0f;
    if (x > EXP_MAX)
        x = EXP_MAX;
    const float n = floorf(x * LOG2E + 0.5f);
    const float r = (x - n * LN2_HI) - n * LN2_LO;
    const float p = 1.0f + r * (1.0f + r * (P2 + r * (P3 + r * (P4 + r * (P5 + r * P6)))));
    const int32_t bits = ((int32_t)n + 127) << 23;       /* n in [-125, 127]: a normal 2^n */
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* ssm._rmsnorm_back: y = x * r * g; accumulate dg, and dx += d(loss)/dx, for one row */
INLINE void rmsnorm_back(const float *x, float r, const float *g, const float *dy, float *dg, float *dx,
                         int64_t n)
{
    float m = 0.0f;
    for (int64_t j = 0; j < n; j++)
        m += dy[j] * g[j] * x[j] * r;
    m = m / (float)n;
    for (int64_t j = 0; j < n; j++) {
        const float xn = x[j] * r;
        dg[j] += dy[j] * xn;
        dx[j] += r * (dy[j] * g[j] - xn * m);
    }
}

#define BACKWARD_ARGS const float *P, float *G, const int64_t *lay, const float *A, const int64_t *alay, \
                      const int64_t *dims, float *S, int32_t *ib, const int64_t *tokens, int64_t T
#define BACKWARD_CALL P, G, lay, A, alay, dims, S, ib, tokens, T

INLINE void backward(BACKWARD_ARGS)
{
    const int64_t dm = dims[D_DM], di = dims[D_DI], ds = dims[D_DS], rk = dims[D_R], nl = dims[D_NL];
    const int64_t K = rk + 2 * ds, gl = nl * N_LP, ga = nl * N_LA;
    int64_t w = 2 * di > dm ? 2 * di : dm;
    if (K > w)
        w = K;
    const int64_t sl = (dims[D_T] + CONV) * w;
    float *dX = S + S_DX * sl, *dO = S + S_DO * sl, *dY = S + S_DY * sl, *dZ = S + S_DZ * sl;
    float *dXS = S + S_DXS * sl, *dPJ = S + S_DPJ * sl, *dA = S + S_DA * sl, *dXB = S + S_DXB * sl;
    float *dXZ = S + S_DXZ * sl, *dU = S + S_DU * sl, *ta = S + S_TA * sl;
    float *dH = S + N_SBUF * sl;
    float *vq = dH + ds * di, *vdd = vq + di, *vae = vdd + di;
    const float lim[2] = {fexp_c(DT_MIN_A), fexp_c(DT_MAX_A)};

    /* head: d(cost)/d(logit) = p - bit at the 8 nodes of each target byte */
    const float *F = A + alay[ga + G_F], *LG = A + alay[ga + G_LG];
    const int64_t wh = lay[gl + G_WH], hb = lay[gl + G_HB];
    memset(dU, 0, (size_t)(T * dm) * 4);
    for (int64_t t = 0; t < T; t++) {
        const int64_t c = tokens[t + 1];
        int64_t node = 1;
        const float *f = F + t * dm;
        float *df = dU + t * dm;
        for (int b = 0; b < 8; b++) {
            const int64_t bit = (c >> (7 - b)) & 1;
            const float g = 1.0f / (1.0f + fexp_c(-LG[t * 8 + b])) - (float)bit;
            G[hb + node] += g;
            float *gw = G + wh + node * dm;
            const float *wr = P + wh + node * dm;
            for (int64_t j = 0; j < dm; j++) {
                gw[j] += g * f[j];
                df[j] += g * wr[j];
            }
            node = node * 2 + bit;
        }
    }
    /* final norm */
    memset(dX, 0, (size_t)(T * dm) * 4);
    const int64_t xf = alay[ga + G_XF], gf = lay[gl + G_GF];
    for (int64_t t = 0; t < T; t++)
        rmsnorm_back(A + xf + t * dm, A[alay[ga + G_RF] + t], P + gf, dU + t * dm, G + gf, dX + t * dm, dm);

    for (int64_t l = nl - 1; l >= 0; l--) {
        const int64_t *pl = lay + l * N_LP, *al = alay + l * N_LA;
        /* out-projection (dX is the gradient of this block's output = residual) */
        const int64_t wout = pl[L_WOUT];
        ssmzip_acc_outer(A + al[A_O], di, di, dX, dm, dm, T, G + wout);
        memset(dO, 0, (size_t)(T * di) * 4);
        ssmzip_back_mat(P + wout, di, dm, dX, dm, T, ta, dO, di);
        /* gate and the skip term of y */
        const float *Z = A + al[A_Z], *Y = A + al[A_Y], *XS = A + al[A_XS];
        const float *pD = P + pl[L_D];
        float *gD = G + pl[L_D];
        for (int64_t t = 0; t < T; t++) {
            const float *z = Z + t * di, *y = Y + t * di, *xs = XS + t * di, *dor = dO + t * di;
            float *dy = dY + t * di, *dz = dZ + t * di, *dxs = dXS + t * di;
            ssmzip_vsigmoid(z, vq, ib, di);
            for (int64_t i = 0; i < di; i++) {
                const float zv = z[i], sg = vq[i];
                dy[i] = dor[i] * (zv * sg);
                dz[i] = dor[i] * y[i] * (sg * (1.0f + zv * (1.0f - sg)));
                gD[i] += xs[i] * dy[i];
                dxs[i] = pD[i] * dy[i];
            }
        }
        /* recurrence, backwards in time */
        const float *PJ = A + al[A_PJ], *DT = A + al[A_DT], *DEC = A + al[A_DEC], *H = A + al[A_H];
        float *gal = G + pl[L_ALOG];
        ssmzip_vexp(P + pl[L_ALOG], vae, ib, di);
        memset(dH, 0, (size_t)(ds * di) * 4);
        memset(dPJ, 0, (size_t)(T * K) * 4);
        ssmzip_scan_back(T, di, ds, rk, H, PJ, DT, DEC, XS, dY, dPJ, dXS, dA, dH, vq, vdd, vae, gal, lim);
        /* step sizes: a = dtb + lo @ W_dt */
        float *gdtb = G + pl[L_DTB];
        for (int64_t t = 0; t < T; t++) {
            const float *da = dA + t * di;
            for (int64_t i = 0; i < di; i++)
                gdtb[i] += da[i];
        }
        const int64_t wdt = pl[L_WDT];
        ssmzip_acc_outer(PJ, K, rk, dA, di, di, T, G + wdt);
        ssmzip_back_mat(P + wdt, rk, di, dA, di, T, ta, dPJ, K);
        /* x-projection: [lo, B, C] = xs @ W_x */
        const int64_t wx = pl[L_WX];
        ssmzip_acc_outer(XS, di, di, dPJ, K, K, T, G + wx);
        ssmzip_back_mat(P + wx, di, K, dPJ, K, T, ta, dXS, di);
        /* silu and conv; dXB rows are the conv history (CONV - 1 rows from before the chunk) */
        const float *XC = A + al[A_XC], *XB = A + al[A_XB];
        const int64_t cw = pl[L_CW];
        float *gcb = G + pl[L_CB];
        memset(dXB, 0, (size_t)((T + CONV - 1) * di) * 4);
        for (int64_t t = 0; t < T; t++) {
            const float *xc = XC + t * di;
            float *dxs = dXS + t * di;
            ssmzip_vsigmoid(xc, vq, ib, di);
            for (int64_t i = 0; i < di; i++) {
                const float sg = vq[i];
                dxs[i] = dxs[i] * (sg * (1.0f + xc[i] * (1.0f - sg)));      /* now d(cost)/d(xc) */
                gcb[i] += dxs[i];
            }
            for (int64_t c = 0; c < CONV; c++) {
                const int64_t r = (t + CONV - 1 - c) * di;
                const float *xb = XB + r, *wc = P + cw + c * di;
                float *dxb = dXB + r, *gw = G + cw + c * di;
                for (int64_t i = 0; i < di; i++) {
                    gw[i] += dxs[i] * xb[i];
                    dxb[i] += wc[i] * dxs[i];
                }
            }
        }
        /* in-projection: [xb, z] = u @ W_in */
        for (int64_t t = 0; t < T; t++) {
            memcpy(dXZ + t * 2 * di, dXB + (t + CONV - 1) * di, (size_t)di * 4);
            memcpy(dXZ + t * 2 * di + di, dZ + t * di, (size_t)di * 4);
        }
        const int64_t win = pl[L_WIN];
        ssmzip_acc_outer(A + al[A_U], dm, dm, dXZ, 2 * di, 2 * di, T, G + win);
        memset(dU, 0, (size_t)(T * dm) * 4);
        ssmzip_back_mat(P + win, dm, 2 * di, dXZ, 2 * di, T, ta, dU, dm);
        /* norm; the residual gradient passes through unchanged */
        const int64_t xin = al[A_XIN], gg = pl[L_G];
        for (int64_t t = 0; t < T; t++)
            rmsnorm_back(A + xin + t * dm, A[al[A_R] + t], P + gg, dU + t * dm, G + gg, dX + t * dm, dm);
    }
    /* embedding */
    const int64_t emb = lay[gl + G_EMB];
    for (int64_t t = 0; t < T; t++) {
        float *ge = G + emb + tokens[t] * dm;
        const float *dx = dX + t * dm;
        for (int64_t j = 0; j < dm; j++)
            ge[j] += dx[j];
    }
}

static void backward_portable(BACKWARD_ARGS)
{
    backward(BACKWARD_CALL);
}

#ifdef SSM_AVX
__attribute__((target("avx2")))
static void backward_avx2(BACKWARD_ARGS)
{
    backward(BACKWARD_CALL);
}
#endif

/* ssm.ssm_backward (see it for the arguments): accumulate into G the gradient of
 * the chunk's coding cost over rows 0 .. T-1 */
void ssmzip_ssm_backward(BACKWARD_ARGS)
{
#ifdef SSM_AVX
    if (ssmzip_ssm_isa(-1)) {
        backward_avx2(BACKWARD_CALL);
        return;
    }
#endif
    backward_portable(BACKWARD_CALL);
}
