/* What native/ssm.c (the SSM's forward pass and matrix loops),
 * native/ssm_backward.c (its backward pass) and native/ssm_step.c (the per-byte
 * steps that call both) share: the layout indices of
 * ssmzip/engine/ssm_layout.py (tests/test_ssm.py compares them), numba's
 * float32 constants, and the kernels one calls from the other. */
#ifndef SSMZIP_SSM_H
#define SSMZIP_SSM_H

#include <stdint.h>

#define INLINE static inline __attribute__((always_inline))

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(SSMZIP_NO_CLONES)
#define SSM_AVX 1
#include <immintrin.h>
#endif

enum { D_DM, D_DI, D_DS, D_R, D_NL, D_T, D_NG, D_NGB };
enum { L_G, L_WIN, L_CW, L_CB, L_WX, L_WDT, L_DTB, L_ALOG, L_D, L_WOUT, N_LP };
enum { A_XIN, A_R, A_U, A_XB, A_Z, A_XC, A_XS, A_PJ, A_DT, A_DEC, A_H, A_Y, A_O, N_LA };
enum { G_EMB, G_GF, G_WH, G_HB };      /* parameters after the layers */
enum { G_XF, G_RF, G_F, G_LG };        /* activations after the layers */
/* the backward pass's scratch buffers, each (T + CONV) x max(2 DI, DM, R + 2 DS) floats */
enum { S_DX, S_DO, S_DY, S_DZ, S_DXS, S_DPJ, S_DA, S_DXB, S_DXZ, S_DU, S_TA, S_TB, N_SBUF };
#define CONV 4

/* as numba's f32(...) of a Python float: decimal -> double -> float */
static const float EXP_MIN = -87.0f, EXP_MAX = 88.0f, LOG2E = (float)1.4426950408889634;
static const float LN2_HI = (float)0.693145751953125, LN2_LO = (float)1.4286067653302226e-06;
static const float P2 = (float)(1.0 / 2), P3 = (float)(1.0 / 6), P4 = (float)(1.0 / 24), P5 = (float)(1.0 / 120),
                   P6 = (float)(1.0 / 720);
static const float DT_MIN_A = -12.0f, DT_MAX_A = 2.0f, RMS_EPS = (float)1e-5;

/* numba's max(a, b) and min(a, b) on floats: b if b > a (b < a) else a */
static inline float nb_max(float a, float b) { return b > a ? b : a; }
static inline float nb_min(float a, float b) { return b < a ? b : a; }

/* native/ssm.c */
int64_t ssmzip_ssm_isa(int64_t want);
void ssmzip_vexp(const float *x, float *out, int32_t *ib, int64_t n);
void ssmzip_vsigmoid(const float *x, float *out, int32_t *ib, int64_t n);
void ssmzip_acc_outer(const float *X, int64_t xs, int64_t J, const float *Y, int64_t ys, int64_t I,
                      int64_t T, float *G);
void ssmzip_back_mat(const float *W, int64_t J, int64_t I, const float *Y, int64_t ys, int64_t T,
                     float *ta, float *X, int64_t xs);
void ssmzip_scan_back(int64_t T, int64_t di, int64_t ds, int64_t rk, const float *H, const float *PJ,
                      const float *DT, const float *DEC, const float *XS, const float *dY, float *dPJ,
                      float *dXS, float *dA, float *dH, float *vq, float *vdd, const float *vae, float *gal,
                      const float *lim);
void ssmzip_ssm_forward(const float *P, const int64_t *lay, float *A, const int64_t *alay, const int64_t *dims,
                        int64_t t, int64_t byte, float *t1, float *t2, int32_t *ib, const float *NE,
                        const int64_t *rows);
/* native/ssm_backward.c */
void ssmzip_ssm_backward(const float *P, float *G, const int64_t *lay, const float *A, const int64_t *alay,
                         const int64_t *dims, float *S, int32_t *ib, const int64_t *tokens, int64_t T);

#endif
