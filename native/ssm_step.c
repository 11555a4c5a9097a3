/* The SSM's per-byte steps in C: ssmzip/engine/ssm_callbacks.py, function for
 * function, so that the C kernel (cm.c) runs levels 7-9 without numba (whose
 * import and cached callbacks cost most of a second at every start).
 *
 *   ssmzip_ssm_byte    byte boundary: n-gram rows, forward pass (ssm.c)
 *   ssmzip_ssm_bit     the logit of the next bit, kept for training
 *   ssmzip_ssm_end     byte known; after a full chunk: learn from it, carry
 *   ssmzip_ssm_record  byte known, for a kernel that learns on a second thread
 *   ssmzip_ssm_turn    the pending step in force, the state carried to the other set
 *   ssmzip_ssm_learn   backward (ssm_backward.c), Adam, the n-gram step
 *
 * They take the same `ctx` as the numba callbacks (ssm_layout.CTX_ARRAYS: the
 * [address, length] of each of the SSM's arrays), so cm.c calls either. Every
 * float operation is numba's float32 operation in numba's order (ssm.py says
 * why each is written as it is); tests/test_native.py compares the two after
 * chunks of real text, lag included. */
#include <stdint.h>
#include <string.h>

#include "ssm.h"

/* ssm_layout.CTX_ARRAYS, in order (tests/test_ssm.py compares the names) */
enum {
    X_P, X_G, X_V, X_OPT, X_LAY, X_A, X_ALAY, X_DIMS, X_S, X_IB, X_TOK, X_NE, X_NV, X_ROWS, X_LR, X_KERN, X_PN,
    X_FLAG, X_STAGE, N_CTX_ARRAYS
};
/* ssm_layout F_*: the lagged SSM's flags */
enum { F_LAG, F_PARITY, F_PENDING, F_STAGED, F_ROWS };

static const float ADAM_B2 = (float)0.999, ADAM_EPS = (float)1e-6, UPDATE_CLIP = 5.0f, LOGIT_LIMIT = (float)7.99;

#define ARR(ctx, k, type) ((type *)(intptr_t)(ctx)[2 * (k)])

static inline int64_t sbuf_len(const int64_t *dims)
{
    int64_t w = 2 * dims[D_DI];
    if (dims[D_DM] > w)
        w = dims[D_DM];
    if (dims[D_R] + 2 * dims[D_DS] > w)
        w = dims[D_R] + 2 * dims[D_DS];
    return (dims[D_T] + CONV) * w;
}

/* ssm.params_in_force */
static inline float *params(const int64_t *ctx)
{
    return ARR(ctx, X_FLAG, int64_t)[F_PARITY] == 0 ? ARR(ctx, X_P, float) : ARR(ctx, X_PN, float);
}

/* ssm.ngram_rows: low 32 bits of numba's wrapping int64 arithmetic */
static void ngram_rows(uint64_t c4, uint64_t c8, uint64_t word, const int64_t *dims, int64_t *rows, int64_t t)
{
    const int64_t ng = dims[D_NG], bits = dims[D_NGB];
    for (int64_t k = 0; k < ng; k++) {
        const int64_t o = k + 2;
        uint64_t v, hi;
        if (k == ng - 1) {
            v = word;
            hi = c4 & 0xFF;
        } else if (o <= 4) {
            v = c4 & ((1ull << (8 * o)) - 1);
            hi = 0;
        } else {
            v = c4;
            hi = c8 & ((1ull << (8 * (o - 4))) - 1);
        }
        uint64_t h = (v * 0x9E3779B1ull + hi * 0x85EBCA77ull + (uint64_t)(k + 1) * 0x27D4EB2Full) & 0xFFFFFFFFull;
        h = ((h ^ (h >> 15)) * 0x2C1B3C6Dull) & 0xFFFFFFFFull;
        rows[t * ng + k] = (int64_t)((h ^ (h >> 13)) >> (32 - bits));
    }
}

void ssmzip_ssm_byte(int64_t *ctx, int64_t row, int64_t c4, int64_t c8, int64_t word)
{
    const int64_t *dims = ARR(ctx, X_DIMS, int64_t);
    int64_t *rows = ARR(ctx, X_ROWS, int64_t);
    ARR(ctx, X_TOK, int64_t)[row] = c4 & 0xFF;
    ngram_rows((uint64_t)c4, (uint64_t)c8, (uint64_t)word, dims, rows, row);
    /* the forward pass's two scratch rows, where ssm.ssm_forward puts them */
    float *S = ARR(ctx, X_S, float);
    const int64_t di = dims[D_DI], o = N_SBUF * sbuf_len(dims) + dims[D_DS] * di + 3 * di;
    ssmzip_ssm_forward(params(ctx), ARR(ctx, X_LAY, int64_t), ARR(ctx, X_A, float), ARR(ctx, X_ALAY, int64_t), dims,
                       row, c4 & 0xFF, S + o, S + o + di, ARR(ctx, X_IB, int32_t), ARR(ctx, X_NE, float), rows);
}

/* ssm.ssm_logit, stored where training reads it */
float ssmzip_ssm_bit(int64_t *ctx, int64_t row, int64_t c0, int64_t bitpos)
{
    const int64_t *dims = ARR(ctx, X_DIMS, int64_t), *lay = ARR(ctx, X_LAY, int64_t);
    const int64_t *alay = ARR(ctx, X_ALAY, int64_t);
    const int64_t dm = dims[D_DM], nl = dims[D_NL];
    const float *P = params(ctx);
    float *A = ARR(ctx, X_A, float);
    const float *f = A + alay[nl * N_LA + G_F] + row * dm, *w = P + lay[nl * N_LP + G_WH] + c0 * dm;
    float acc = P[lay[nl * N_LP + G_HB] + c0];
    for (int64_t j = 0; j < dm; j++)
        acc += f[j] * w[j];
    if (!(acc <= LOGIT_LIMIT))            /* NaN maps to a limit too (ssm.py) */
        acc = LOGIT_LIMIT;
    else if (!(acc >= -LOGIT_LIMIT))
        acc = -LOGIT_LIMIT;
    A[alay[nl * N_LA + G_LG] + row * 8 + bitpos] = acc;
    return acc;
}

int64_t ssmzip_ssm_record(int64_t *ctx, int64_t row, int64_t byte)
{
    ARR(ctx, X_TOK, int64_t)[row + 1] = byte;
    return row + 1;
}

/* ssm.ssm_apply */
static void apply_pending(int64_t *ctx)
{
    int64_t *flag = ARR(ctx, X_FLAG, int64_t);
    if (flag[F_PENDING] == 0)
        return;
    const int64_t dm = ARR(ctx, X_DIMS, int64_t)[D_DM];
    float *NE = ARR(ctx, X_NE, float);
    const float *stage = ARR(ctx, X_STAGE, float);
    for (int64_t u = 0; u < flag[F_STAGED]; u++)
        memcpy(NE + flag[F_ROWS + u], stage + u * dm, (size_t)dm * 4);
    flag[F_STAGED] = 0;
    flag[F_PARITY] ^= 1;
    flag[F_PENDING] = 0;
}

/* ssm.ssm_carry: the last state and conv history become row 0's of `out` */
static void carry(const int64_t *ctx, float *out)
{
    const int64_t *dims = ARR(ctx, X_DIMS, int64_t), *alay = ARR(ctx, X_ALAY, int64_t);
    const int64_t di = dims[D_DI], ds = dims[D_DS], T = dims[D_T];
    const float *A = ARR(ctx, X_A, float);
    for (int64_t l = 0; l < dims[D_NL]; l++) {
        const int64_t h0 = alay[l * N_LA + A_H], xb0 = alay[l * N_LA + A_XB];
        memmove(out + h0, A + h0 + T * ds * di, (size_t)(ds * di) * 4);
        memmove(out + xb0, A + xb0 + T * di, (size_t)((CONV - 1) * di) * 4);
    }
}

/* The Adam update of n values (ssm.adam_step's loop, and ngram_step's per row):
 * element-wise, so 8 lanes give the same bits as one; compiled twice like the
 * forward pass (numba's own loop runs 8 lanes wide on AVX2). */
#define ADAM_ARGS const float *P, const float *G, float *V, float *out, int64_t n, float step
INLINE void adam_loop(ADAM_ARGS)
{
    const float c2 = 1.0f - ADAM_B2;
    for (int64_t k = 0; k < n; k++) {
        const float g = G[k];
        const float v = ADAM_B2 * V[k] + c2 * g * g;
        V[k] = v;
        out[k] = P[k] - step * nb_min(nb_max(g / (__builtin_sqrtf(v) + ADAM_EPS), -UPDATE_CLIP), UPDATE_CLIP);
    }
}

static void adam_portable(ADAM_ARGS) { adam_loop(P, G, V, out, n, step); }
#ifdef SSM_AVX
__attribute__((target("avx2"))) static void adam_avx2(ADAM_ARGS) { adam_loop(P, G, V, out, n, step); }
#endif

static void adam(ADAM_ARGS)
{
#ifdef SSM_AVX
    if (ssmzip_ssm_isa(-1)) {
        adam_avx2(P, G, V, out, n, step);
        return;
    }
#endif
    adam_portable(P, G, V, out, n, step);
}

/* ssm.adam_step: Adam without momentum, each normalised update capped; clears G */
static void adam_step(const float *P, float *G, float *V, float *opt, float lr, float *out, int64_t n)
{
    opt[1] *= ADAM_B2;
    adam(P, G, V, out, n, lr * __builtin_sqrtf(1.0f - opt[1]));
    memset(G, 0, (size_t)n * 4);
}

/* ssm.ngram_step: sparse Adam on the n-gram rows the chunk used (a row used
 * several times gets the sum of its gradients, once); staged when lagged */
static void ngram_step(int64_t *ctx, float lr)
{
    const int64_t *dims = ARR(ctx, X_DIMS, int64_t), *rows = ARR(ctx, X_ROWS, int64_t);
    int64_t *flag = ARR(ctx, X_FLAG, int64_t);
    const int64_t ng = dims[D_NG];
    flag[F_STAGED] = 0;
    if (ng == 0)
        return;
    const int lag = flag[F_LAG] != 0;
    const int64_t dm = dims[D_DM], bits = dims[D_NGB], sl = sbuf_len(dims), n = dims[D_T] * ng;
    float *S = ARR(ctx, X_S, float), *NE = ARR(ctx, X_NE, float), *NV = ARR(ctx, X_NV, float);
    float *stage = ARR(ctx, X_STAGE, float);
    const float *dX = S + S_DX * sl;
    float *g = S + S_TA * sl;                  /* transpose scratch, free now */
    const float step = lr * __builtin_sqrtf(1.0f - ARR(ctx, X_OPT, float)[1]);
    for (int64_t a = 0; a < n; a++) {
        const int64_t k = a % ng, r = rows[a];
        int dup = 0;
        for (int64_t b = k; b < a; b += ng)  /* the earlier uses of slot k */
            if (rows[b] == r) {
                dup = 1;
                break;
            }
        if (dup)
            continue;
        memcpy(g, dX + (a / ng) * dm, (size_t)dm * 4);
        for (int64_t b = a + ng; b < n; b += ng)
            if (rows[b] == r) {
                const float *src = dX + (b / ng) * dm;
                for (int64_t j = 0; j < dm; j++)
                    g[j] += src[j];
            }
        const int64_t e = ((k << bits) + r) * dm;
        float *ne = NE + e, *nv = NV + e, *out = ne;
        if (lag) {
            const int64_t u = flag[F_STAGED];
            flag[F_STAGED] = u + 1;
            flag[F_ROWS + u] = e;
            out = stage + u * dm;
        }
        adam(ne, g, nv, out, dm, step);
    }
}

/* ssm.ssm_learn: learn from the chunk in ctx's rows 0 .. T-1 */
void ssmzip_ssm_learn(int64_t *ctx)
{
    const int64_t *dims = ARR(ctx, X_DIMS, int64_t);
    int64_t *flag = ARR(ctx, X_FLAG, int64_t);
    float *Pa = ARR(ctx, X_P, float), *Pb = ARR(ctx, X_PN, float), *G = ARR(ctx, X_G, float);
    float *P = flag[F_PARITY] == 0 ? Pa : Pb;
    const int lag = flag[F_LAG] != 0;
    const float lr = ARR(ctx, X_LR, float)[0];
    ssmzip_ssm_backward(P, G, ARR(ctx, X_LAY, int64_t), ARR(ctx, X_A, float), ARR(ctx, X_ALAY, int64_t), dims,
                        ARR(ctx, X_S, float), ARR(ctx, X_IB, int32_t), ARR(ctx, X_TOK, int64_t), dims[D_T]);
    adam_step(P, G, ARR(ctx, X_V, float), ARR(ctx, X_OPT, float), lr,
              lag ? (flag[F_PARITY] == 0 ? Pb : Pa) : P, ctx[2 * X_P + 1]);
    ngram_step(ctx, lr);
    flag[F_PENDING] = lag;
}

void ssmzip_ssm_turn(int64_t *ctx, int64_t *next)
{
    apply_pending(ctx);
    carry(ctx, ARR(next, X_A, float));
}

/* ssm_callbacks.ssm_end: in series, as ssm.ssm_chunk_end */
int64_t ssmzip_ssm_end(int64_t *ctx, int64_t row, int64_t byte)
{
    ARR(ctx, X_TOK, int64_t)[row + 1] = byte;
    row++;
    if (row == ARR(ctx, X_DIMS, int64_t)[D_T]) {
        apply_pending(ctx);
        ssmzip_ssm_learn(ctx);
        carry(ctx, ARR(ctx, X_A, float));
        row = 0;
    }
    return row;
}
