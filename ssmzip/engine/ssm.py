"""The online SSM: a small Mamba-style network over bytes, trained while coding.

Shape (per byte t, input = the previous byte and the hashed n-grams before it):

    x = E[byte] + sum_k N_k[hash of an n-gram or the word]    DM
    for each of NL blocks:
        u = rmsnorm(x) * g                              DM
        xb, z = u @ W_in                                DI each
        xc = causal depthwise conv (width 4) of xb      DI
        xs = silu(xc)
        lo, B, C = xs @ W_x                             R, DS, DS  (input-dependent)
        dt = exp(dtb + lo @ W_dt)                       DI, step sizes (pre-activation clamped)
        a  = exp(-dt * exp(A_log))                      DI, one decay per channel (as Mamba-2)
        h[s, i] = a[i] * h[s, i] + dt[i] * B[s] * xs[i] DS x DI states
        y  = C @ h + D * xs                             DI
        x  = x + (y * silu(z)) @ W_out                  residual, DM
    f = rmsnorm(x) * gf

Departures from DESIGN.md's sketch, each measured or forced:
- RMSNorm instead of LayerNorm (no mean, one reduction less).
- Output: instead of a 256-way softmax head (256 x DM products per byte and a
  normaliser), a binary tree: node c0 (the partial byte, 1..255) has its own
  logit  hb[c0] + f . Wh[c0].  The 8 node probabilities along a byte's path
  multiply out to a proper byte distribution, the cross-entropy is the same
  quantity the coder pays, and each bit costs one DM-long dot product -- 32x
  less than the softmax head at the same DM. The logit is the stretch of the
  bit probability, so it enters the integer mixer as round(logit * 256).
- Hashed n-gram input embeddings N_k (orders 2..NG and the current word,
  2^NGB rows each, start at zero, updated sparsely: only the rows a chunk used). On enwik8 they took
  the SSM alone from 2.84 to 2.15 bpb on the first 300 KB (small model); the
  recurrence then models what follows those contexts, and what came earlier.
- Adam without momentum (beta1 = 0): 2.84 against 2.97 bpb with 0.9.

Training: after every chunk of T bytes, back-propagation through the chunk
(the activations of the coding pass are kept, nothing is recomputed), the
state at the chunk start taken as constant, then one optimizer step. The
decoder runs the same forward passes and the same updates at the same bytes.
With a lag (Preset.ssm_lag, level 9) a step is put in force one chunk later
(see "the lagged SSM" below): the C kernel then learns from a chunk on a second
thread while it codes the next, with the same result as in series.

Arithmetic strategy (DESIGN.md, determinism): float32 in one fixed order.
- only +, -, *, /, sqrt on float32; every constant is a float32 (a Python
  float literal would turn an expression into float64; a test reads the
  compiled code for float64 arithmetic and FMAs);
- every sum runs in a written-down order; vectorised loops are element-wise
  (y[i] += w * x[i] over i), never reductions, so SIMD and scalar code
  (host CPU or NUMBA_CPU_NAME=generic) round identically; numba without
  fastmath does not contract a*b+c into an FMA;
- exp is our own (range reduction by ln 2, a degree-6 polynomial, exact
  powers of two), never libm's; sigmoid and silu are built on it; sqrt is
  the IEEE operation (LLVM's intrinsic), correctly rounded everywhere;
- parameters are initialised from an integer generator (splitmix64), not
  from numpy's random streams, which may change between numpy versions.
The SSM's output enters the mixer as an integer, so all that follows is
integer again.

With the C backend the forward pass of a byte (native/ssm.c) and the backward
pass of a chunk (native/ssm_backward.c, with ssm.c's matrix loops and the
recurrence's backward) run in C, which computes every element as the same
float32 sum in the same order, only several elements at once: the same bits
(tests/test_native.py). Adam and the n-gram step stay here.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.extending import intrinsic

f32 = np.float32
ZERO, ONE, HALF = f32(0.0), f32(1.0), f32(0.5)
RMS_EPS = f32(1e-5)
DT_MIN_A, DT_MAX_A = f32(-12.0), f32(2.0)   # clamp of the step-size pre-activation
LOGIT_LIMIT = f32(7.99)                  # |logit| * 256 stays inside the stretch domain
ADAM_B2, ADAM_EPS = f32(0.999), f32(1e-6)      # Adam without momentum (beta1 = 0), see adam_step
UPDATE_CLIP = f32(5.0)       # |g / sqrt(v)| cap: stops the rare blow-up without slowing learning

# error_model="numpy" on every kernel: numba's default checks each float division
# for a zero divisor (to raise ZeroDivisionError), and that branch stops LLVM
# from vectorising the loop; the division itself is the same IEEE operation.


@intrinsic
def sqrt32(typingctx, x):
    """IEEE float32 square root as the LLVM intrinsic (correctly rounded on every
    CPU, like +-*/). numba's np.sqrt calls libm's sqrtf instead, which LLVM does
    not vectorise."""
    if x not in (types.float32, types.float64):      # float64: the gradient test only
        return None

    def codegen(context, builder, signature, args):
        ty = llvm_ir.FloatType() if x == types.float32 else llvm_ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.sqrt", [ty])
        return builder.call(fn, args)
    return x(x), codegen


@intrinsic
def call_c(typingctx, addr, args):
    """Call the C function at address `addr` (int64) with `args`, a tuple of 64-bit
    integers (array addresses and sizes: the C side reads them as pointers and
    int64_t, the same registers in every 64-bit calling convention). The address
    is an argument, not a constant, so the compiled code can be cached."""
    if not isinstance(addr, types.Integer) or not isinstance(args, types.BaseTuple):
        return None
    if any(not isinstance(a, types.Integer) or a.bitwidth != 64 for a in args):
        return None

    def codegen(context, builder, signature, llargs):
        i64 = llvm_ir.IntType(64)
        fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [i64] * len(args))
        fn = builder.inttoptr(llargs[0], fnty.as_pointer())
        builder.call(fn, [builder.extract_value(llargs[1], k) for k in range(len(args))])
        return context.get_dummy_value()
    return types.none(addr, args), codegen


# --- deterministic exp --------------------------------------------------------
_LOG2E = f32(1.4426950408889634)
_LN2_HI = f32(0.693145751953125)         # exact in 16 bits: n * _LN2_HI is exact
_LN2_LO = f32(1.4286067653302226e-06)
_P2, _P3, _P4 = f32(1 / 2), f32(1 / 6), f32(1 / 24)
_P5, _P6 = f32(1 / 120), f32(1 / 720)
_EXP_MIN, _EXP_MAX = f32(-87.0), f32(88.0)
_POW2 = np.array([math.ldexp(1.0, k) for k in range(-127, 128)], dtype=np.float32)   # exact; 2^-127 subnormal


@njit(cache=True, inline="always", error_model="numpy")
def fexp(x):
    """e^x for float32 x, within ~2 ulp, from basic operations only."""
    if x < _EXP_MIN:
        return ZERO
    if x > _EXP_MAX:
        x = _EXP_MAX
    n = np.floor(x * _LOG2E + HALF)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = ONE + r * (ONE + r * (_P2 + r * (_P3 + r * (_P4 + r * (_P5 + r * _P6)))))
    return p * _POW2[np.int64(n) + 127]


@njit(cache=True, inline="always", error_model="numpy")
def sigmoid(x):
    return ONE / (ONE + fexp(-x))


@njit(cache=True, inline="always", error_model="numpy")
def vexp(x, out, ib):
    """out[i] = e^x[i], the same arithmetic as fexp (inputs clamped to [-87, 88]) in
    two element-wise passes that LLVM vectorises; 2^n is built in the int32 buffer
    ib and read back as float32. out may be x."""
    n = x.shape[0]
    for i in range(n):
        v = min(max(x[i], _EXP_MIN), _EXP_MAX)
        k = np.floor(v * _LOG2E + HALF)
        r = (v - k * _LN2_HI) - k * _LN2_LO
        out[i] = ONE + r * (ONE + r * (_P2 + r * (_P3 + r * (_P4 + r * (_P5 + r * _P6)))))
        ib[i] = (np.int32(k) + np.int32(127)) << np.int32(23)
    scale = ib[:n].view(np.float32)
    for i in range(n):
        out[i] *= scale[i]


@njit(cache=True, inline="always", error_model="numpy")
def vsigmoid(x, out, ib):
    """out = 1 / (1 + e^-x), element-wise; out may be x."""
    n = x.shape[0]
    for i in range(n):
        out[i] = -x[i]
    vexp(out[:n], out, ib)
    for i in range(n):
        out[i] = ONE / (ONE + out[i])


from .ssm_layout import (CONV, D_DM, D_DI, D_DS, D_R, D_NL, D_T, D_NG, D_NGB, N_DIMS, L_G, L_WIN, L_CW, L_CB, L_WX, L_WDT,
                         L_DTB, L_ALOG, L_D, L_WOUT, N_LP, A_XIN, A_R, A_U, A_XB, A_Z, A_XC, A_XS, A_PJ, A_DT,
                         A_DEC, A_H, A_Y, A_O, N_LA, G_EMB, G_GF, G_WH, G_HB, G_XF, G_RF, G_F, G_LG, Shape,
                         init_params, S_DX, S_DO, S_DY, S_DZ, S_DXS, S_DPJ, S_DA, S_DXB, S_DXZ, S_DU, S_TA,
                         S_TB, N_SBUF, N_SVEC, F_LAG, F_PARITY, F_PENDING, F_STAGED, F_ROWS)  # noqa: F401


# --- forward ------------------------------------------------------------------
# Hot loops index array views from 0 (x = A[o:o + n]; x[i]): numba then knows
# the index is not negative, drops its wrap-around check, and LLVM vectorises
# the loop -- 10x or more against A[o + i].

@njit(cache=True, inline="always", error_model="numpy")
def _rmsnorm_fwd(x, g, y):
    """y = x * r * g with r = 1/sqrt(mean(x^2) + eps); returns r."""
    n = x.shape[0]
    acc = ZERO
    for j in range(n):
        acc += x[j] * x[j]
    r = ONE / sqrt32(acc / f32(n) + RMS_EPS)
    for j in range(n):
        y[j] = x[j] * r * g[j]
    return r


@njit(cache=True, inline="always", error_model="numpy")
def _matvec(x, W, ldw, y, kern):
    """y += x @ W, W row-major with rows ldw apart (len(x) rows, len(y) columns used):
    element-wise over outputs, inputs in order. kern: see K_OUTER."""
    n = y.shape[0]
    if kern[K_MATVEC] != 0:
        call_c(kern[K_MATVEC], (_addr(x), np.int64(x.shape[0]), _addr(W), np.int64(ldw), np.int64(n), _addr(y)))
        return
    for j in range(x.shape[0]):
        xv = x[j]
        w = W[j * ldw:j * ldw + n]
        for i in range(n):
            y[i] += xv * w[i]


@njit(cache=True, inline="always", error_model="numpy")
def _silu_into(src, dst, ib):
    vsigmoid(src, dst, ib)
    for i in range(src.shape[0]):
        dst[i] *= src[i]


@njit(cache=True, error_model="numpy")
def ssm_forward(P, lay, A, alay, dims, t, byte, S, ib, NE, rows, kern):
    """Run byte `byte` (the previous byte) through the network at chunk row t.
    Leaves the head input in A[G_F] row t and the layer states in A_H row t+1.
    S, ib: scratch (float32, int32) as sized by Shape; NE, rows: the n-gram
    embeddings and row t's hashed rows (ngram_rows); kern: see K_OUTER."""
    dm, di, ds, rk, nl = dims[D_DM], dims[D_DI], dims[D_DS], dims[D_R], dims[D_NL]
    o = N_SBUF * _sbuf_len(dims) + ds * di + 3 * di
    t1 = S[o:o + di]
    t2 = S[o + di:o + 2 * di]
    if kern[K_FORWARD] != 0:             # native/ssm.c: all of it, the same bits
        call_c(kern[K_FORWARD], (_addr(P), _addr(lay), _addr(A), _addr(alay), _addr(dims), np.int64(t),
                                 np.int64(byte), _addr(t1), _addr(t2), _addr(ib), _addr(NE), _addr(rows)))
        return
    K = rk + 2 * ds
    gl = nl * N_LP
    ga = nl * N_LA
    emb = lay[gl + G_EMB] + byte * dm
    # the residual stream lives in the next layer's A_XIN row (or G_XF after the last)
    x0 = alay[A_XIN] + t * dm if nl > 0 else alay[ga + G_XF] + t * dm
    A[x0:x0 + dm] = P[emb:emb + dm]
    ng = dims[D_NG]
    for k in range(ng):
        e = ((k << dims[D_NGB]) + rows[t * ng + k]) * dm
        x = A[x0:x0 + dm]
        ne = NE[e:e + dm]
        for j in range(dm):
            x[j] += ne[j]
    for l in range(nl):
        pb = l * N_LP
        ab = l * N_LA
        o = alay[ab + A_XIN] + t * dm
        xin = A[o:o + dm]
        o = alay[(l + 1) * N_LA + A_XIN] + t * dm if l + 1 < nl else alay[ga + G_XF] + t * dm
        xout = A[o:o + dm]
        o = alay[ab + A_U] + t * dm
        u = A[o:o + dm]
        A[alay[ab + A_R] + t] = _rmsnorm_fwd(xin, P[lay[pb + L_G]:lay[pb + L_G] + dm], u)
        # in-projection into the conv history row and z
        o = alay[ab + A_XB] + (t + CONV - 1) * di
        xb = A[o:o + di]
        o = alay[ab + A_Z] + t * di
        z = A[o:o + di]
        xb[:] = ZERO
        z[:] = ZERO
        win = lay[pb + L_WIN]
        _matvec(u, P[win:win + dm * 2 * di], 2 * di, xb, kern)          # W_in's first di columns
        _matvec(u, P[win + di:win + dm * 2 * di], 2 * di, z, kern)      # and its last di
        # causal depthwise conv + silu
        o = alay[ab + A_XC] + t * di
        xc = A[o:o + di]
        o = alay[ab + A_XS] + t * di
        xs = A[o:o + di]
        cw = lay[pb + L_CW]
        xc[:] = P[lay[pb + L_CB]:lay[pb + L_CB] + di]
        for k in range(CONV):                 # tap k reads the input k steps back
            o = alay[ab + A_XB] + (t + CONV - 1 - k) * di
            src = A[o:o + di]
            w = P[cw + k * di:cw + (k + 1) * di]
            for i in range(di):
                xc[i] += w[i] * src[i]
        _silu_into(xc, xs, ib)
        # input-dependent low-rank step, B, C
        o = alay[ab + A_PJ] + t * K
        pj = A[o:o + K]
        pj[:] = ZERO
        _matvec(xs, P[lay[pb + L_WX]:lay[pb + L_WX] + di * K], K, pj, kern)
        o = alay[ab + A_DT] + t * di
        dt = A[o:o + di]
        o = alay[ab + A_DEC] + t * di
        dec = A[o:o + di]
        dt[:] = P[lay[pb + L_DTB]:lay[pb + L_DTB] + di]
        _matvec(pj[:rk], P[lay[pb + L_WDT]:lay[pb + L_WDT] + rk * di], di, dt, kern)
        for i in range(di):
            dt[i] = min(max(dt[i], DT_MIN_A), DT_MAX_A)
        vexp(dt, dt, ib)
        vexp(P[lay[pb + L_ALOG]:lay[pb + L_ALOG] + di], t2, ib)     # decay rates exp(A_log)
        for i in range(di):
            t1[i] = -dt[i] * t2[i]
        vexp(t1, dec, ib)
        # recurrence: h[s, :] = dec * h_prev[s, :] + dt * xs * B[s];  y = C . h + D * xs
        o = alay[ab + A_H] + t * ds * di
        hp = A[o:o + ds * di]
        hn = A[o + ds * di:o + 2 * ds * di]
        o = alay[ab + A_Y] + t * di
        y = A[o:o + di]
        dd = P[lay[pb + L_D]:lay[pb + L_D] + di]
        for i in range(di):
            y[i] = dd[i] * xs[i]
        for s in range(ds):
            bs = pj[rk + s]
            cs = pj[rk + ds + s]
            h1 = hp[s * di:(s + 1) * di]
            h2 = hn[s * di:(s + 1) * di]
            for i in range(di):
                hv = dec[i] * h1[i] + dt[i] * xs[i] * bs
                h2[i] = hv
                y[i] += cs * hv
        # gate, out-projection, residual
        o = alay[ab + A_O] + t * di
        og = A[o:o + di]
        _silu_into(z, t1, ib)
        for i in range(di):
            og[i] = y[i] * t1[i]
        xout[:] = xin
        _matvec(og, P[lay[pb + L_WOUT]:lay[pb + L_WOUT] + di * dm], dm, xout, kern)
    o = alay[ga + G_XF] + t * dm
    o2 = alay[ga + G_F] + t * dm
    A[alay[ga + G_RF] + t] = _rmsnorm_fwd(A[o:o + dm], P[lay[gl + G_GF]:lay[gl + G_GF] + dm],
                                          A[o2:o2 + dm])


@njit(cache=True, inline="always", error_model="numpy")
def ssm_logit(P, lay, A, alay, dims, t, node):
    """Logit of bit 1 at tree node `node` (the partial byte, 1..255) for chunk row t."""
    dm, nl = dims[D_DM], dims[D_NL]
    o = alay[nl * N_LA + G_F] + t * dm
    f = A[o:o + dm]
    o = lay[nl * N_LP + G_WH] + node * dm
    w = P[o:o + dm]
    acc = P[lay[nl * N_LP + G_HB] + node]
    for j in range(dm):
        acc += f[j] * w[j]
    # written so that a NaN (never seen; a garbage stream decoded for a long time
    # could in principle drift there) maps to a limit: converting NaN to an integer
    # has no defined result, and the caller turns this into a table index
    if not acc <= LOGIT_LIMIT:
        acc = LOGIT_LIMIT
    elif not acc >= -LOGIT_LIMIT:
        acc = -LOGIT_LIMIT
    return acc


# --- backward -----------------------------------------------------------------
# Scratch buffers of the backward pass: S_* and N_SBUF / N_SVEC in ssm_layout.py.


@njit(cache=True, inline="always", error_model="numpy")
def _sbuf_len(dims):
    w = max(2 * dims[D_DI], dims[D_DM], dims[D_R] + 2 * dims[D_DS])
    return (dims[D_T] + CONV) * w


# kern: the addresses of the C versions of the matrix loops, of the recurrence's
# backward, of the whole forward pass of a byte (native/ssm.c) and of the whole
# backward pass of a chunk (native/ssm_backward.c): the same sums in the same
# order, faster; or zeros: numba's own.
K_OUTER, K_BACK, K_MATVEC, K_SCAN, K_FORWARD, K_BACKWARD = 0, 1, 2, 3, 4, 5
N_KERNELS = 6


@njit(cache=True, inline="always")
def _addr(a):
    return np.int64(a.ctypes.data)


@njit(cache=True, inline="always", error_model="numpy")
def _acc_outer(X, xs, J, Y, ys, I, T, G, kern):
    """G[j, i] += sum_t X[t, j] * Y[t, i] (row strides xs, ys); t outer, element-wise over i."""
    if kern[K_OUTER] != 0:
        call_c(kern[K_OUTER], (_addr(X), np.int64(xs), np.int64(J), _addr(Y), np.int64(ys), np.int64(I),
                               np.int64(T), _addr(G)))
        return
    for t in range(T):
        yr = Y[t * ys:t * ys + I]
        for j in range(J):
            xv = X[t * xs + j]
            g = G[j * I:(j + 1) * I]
            for i in range(I):
                g[i] += xv * yr[i]


@njit(cache=True, inline="always", error_model="numpy")
def _back_mat(W, J, I, Y, ys, T, ta, tb, X, xs, kern):
    """X[t, j] += sum_i W[j, i] * Y[t, i] (W row-major J x I). Transposed through the
    scratch views ta, tb so that the inner loop runs element-wise over t, i in order."""
    if kern[K_BACK] != 0:
        call_c(kern[K_BACK], (_addr(W), np.int64(J), np.int64(I), _addr(Y), np.int64(ys), np.int64(T),
                              _addr(ta), _addr(X), np.int64(xs)))
        return
    for t in range(T):
        for i in range(I):
            ta[i * T + t] = Y[t * ys + i]
    tb[:J * T] = ZERO
    for j in range(J):
        acc = tb[j * T:(j + 1) * T]
        for i in range(I):
            w = W[j * I + i]
            src = ta[i * T:(i + 1) * T]
            for t in range(T):
                acc[t] += w * src[t]
    for t in range(T):
        for j in range(J):
            X[t * xs + j] += tb[j * T + t]


@njit(cache=True, inline="always", error_model="numpy")
def _rmsnorm_back(x, r, g, dy, dg, dx):
    """y = x * r * g: accumulate dg, and dx += d(loss)/dx, for one row."""
    n = x.shape[0]
    m = ZERO
    for j in range(n):
        m += dy[j] * g[j] * x[j] * r
    m = m / f32(n)
    for j in range(n):
        xn = x[j] * r
        dg[j] += dy[j] * xn
        dx[j] += r * (dy[j] * g[j] - xn * m)


@njit(cache=True, inline="always", error_model="numpy")
def _scan_back(T, di, ds, rk, H, PJ, DT, DEC, XS, dY, dPJ, dXS, dA, dH, vq, vdd, vae, gal, lo_dt, hi_dt, kern):
    """The recurrence's backward pass over a chunk, t descending: dB, dC (into dPJ),
    d(xs) (into dXS), d(step-size pre-activation) (dA), A_log's gradient (gal); dH
    carries d(state) back in time; vq, vdd: scratch rows."""
    K = rk + 2 * ds
    if kern[K_SCAN] != 0:
        lim = np.empty(2, dtype=np.float32)
        lim[0] = lo_dt
        lim[1] = hi_dt
        call_c(kern[K_SCAN], (np.int64(T), np.int64(di), np.int64(ds), np.int64(rk), _addr(H), _addr(PJ), _addr(DT),
                              _addr(DEC), _addr(XS), _addr(dY), _addr(dPJ), _addr(dXS), _addr(dA), _addr(dH),
                              _addr(vq), _addr(vdd), _addr(vae), _addr(gal), _addr(lim)))
        return
    for t in range(T - 1, -1, -1):
        hn = H[(t + 1) * ds * di:(t + 2) * ds * di]
        hp = H[t * ds * di:(t + 1) * ds * di]
        dy = dY[t * di:(t + 1) * di]
        pj = PJ[t * K:(t + 1) * K]
        dpj = dPJ[t * K:(t + 1) * K]
        dtv = DT[t * di:(t + 1) * di]
        dec = DEC[t * di:(t + 1) * di]
        xs = XS[t * di:(t + 1) * di]
        dxs = dXS[t * di:(t + 1) * di]
        da = dA[t * di:(t + 1) * di]
        # dC from y = C . h_t+1; dh gets C * dy
        for s in range(ds):
            h2 = hn[s * di:(s + 1) * di]
            dh = dH[s * di:(s + 1) * di]
            cs = pj[rk + ds + s]
            acc = ZERO
            for i in range(di):
                acc += h2[i] * dy[i]
            dpj[rk + ds + s] = acc
            for i in range(di):
                dh[i] += cs * dy[i]
        vq[:] = ZERO
        vdd[:] = ZERO
        for s in range(ds):
            h1 = hp[s * di:(s + 1) * di]
            dh = dH[s * di:(s + 1) * di]
            bs = pj[rk + s]
            for i in range(di):
                vdd[i] += dh[i] * h1[i]
                vq[i] += dh[i] * bs
            acc = ZERO
            for i in range(di):
                acc += dh[i] * dtv[i] * xs[i]
            dpj[rk + s] = acc
        for i in range(di):
            # dec = exp(-dt * ea), ea = exp(A_log); dt = exp(a) unless clamped
            dxs[i] += dtv[i] * vq[i]
            ddt = xs[i] * vq[i] - vdd[i] * vae[i] * dec[i]
            gal[i] -= vdd[i] * dtv[i] * dec[i] * vae[i]
            if dtv[i] <= lo_dt or dtv[i] >= hi_dt:
                da[i] = ZERO
            else:
                da[i] = ddt * dtv[i]
        for s in range(ds):
            dh = dH[s * di:(s + 1) * di]
            for i in range(di):
                dh[i] *= dec[i]


@njit(cache=True, error_model="numpy")
def ssm_backward(P, G, lay, A, alay, dims, S, ib, tokens, T, kern):
    """Accumulate into G the gradient of the chunk's coding cost (in nats) over
    rows 0..T-1. tokens[t] is the input byte of row t, tokens[t + 1] its target.
    kern: addresses of the C kernels, or zeros (see K_OUTER)."""
    if kern[K_BACKWARD] != 0:            # native/ssm_backward.c: all of it, the same bits
        call_c(kern[K_BACKWARD], (_addr(P), _addr(G), _addr(lay), _addr(A), _addr(alay), _addr(dims), _addr(S),
                                  _addr(ib), _addr(tokens), np.int64(T)))
        return
    dm, di, ds, rk, nl = dims[D_DM], dims[D_DI], dims[D_DS], dims[D_R], dims[D_NL]
    K = rk + 2 * ds
    gl = nl * N_LP
    ga = nl * N_LA
    sl = _sbuf_len(dims)
    dX, dO, dY, dZ = S[S_DX * sl:], S[S_DO * sl:], S[S_DY * sl:], S[S_DZ * sl:]
    dXS, dPJ, dA, dXB = S[S_DXS * sl:], S[S_DPJ * sl:], S[S_DA * sl:], S[S_DXB * sl:]
    dXZ, dU, ta, tb = S[S_DXZ * sl:], S[S_DU * sl:], S[S_TA * sl:], S[S_TB * sl:]
    o = N_SBUF * sl
    dH = S[o:o + ds * di]
    o += ds * di
    vq = S[o:o + di]             # per channel: sum_s dh * B
    vdd = S[o + di:o + 2 * di]   # per channel: d(cost)/d(decay)
    vae = S[o + 2 * di:o + 3 * di]   # exp(A_log)

    # ---- head: d(cost)/d(logit) = p - bit at the 8 nodes of each target byte
    F = A[alay[ga + G_F]:]
    LG = A[alay[ga + G_LG]:]
    wh = lay[gl + G_WH]
    hb = lay[gl + G_HB]
    dU[:T * dm] = ZERO
    for t in range(T):
        c = tokens[t + 1]
        node = 1
        f = F[t * dm:(t + 1) * dm]
        df = dU[t * dm:(t + 1) * dm]
        for b in range(8):
            bit = (c >> (7 - b)) & 1
            g = sigmoid(LG[t * 8 + b]) - f32(bit)
            G[hb + node] += g
            gw = G[wh + node * dm:wh + (node + 1) * dm]
            w = P[wh + node * dm:wh + (node + 1) * dm]
            for j in range(dm):
                gw[j] += g * f[j]
                df[j] += g * w[j]
            node = node * 2 + bit
    # ---- final norm
    dX[:T * dm] = ZERO
    xf = alay[ga + G_XF]
    gf = lay[gl + G_GF]
    for t in range(T):
        _rmsnorm_back(A[xf + t * dm:xf + (t + 1) * dm], A[alay[ga + G_RF] + t], P[gf:gf + dm],
                      dU[t * dm:(t + 1) * dm], G[gf:gf + dm], dX[t * dm:(t + 1) * dm])

    for l in range(nl - 1, -1, -1):
        pb = l * N_LP
        ab = l * N_LA
        wout = lay[pb + L_WOUT]
        # ---- out-projection (dX is the gradient of this block's output = residual)
        _acc_outer(A[alay[ab + A_O]:], di, di, dX, dm, dm, T, G[wout:wout + di * dm], kern)
        dO[:T * di] = ZERO
        _back_mat(P[wout:wout + di * dm], di, dm, dX, dm, T, ta, tb, dO, di, kern)
        # ---- gate and the skip term of y
        Z, Y, XS = A[alay[ab + A_Z]:], A[alay[ab + A_Y]:], A[alay[ab + A_XS]:]
        dd = lay[pb + L_D]
        pD = P[dd:dd + di]
        gD = G[dd:dd + di]
        for t in range(T):
            z = Z[t * di:(t + 1) * di]
            y = Y[t * di:(t + 1) * di]
            xs = XS[t * di:(t + 1) * di]
            do = dO[t * di:(t + 1) * di]
            dy = dY[t * di:(t + 1) * di]
            dz = dZ[t * di:(t + 1) * di]
            dxs = dXS[t * di:(t + 1) * di]
            vsigmoid(z, vq, ib)
            for i in range(di):
                zv = z[i]
                sg = vq[i]
                dy[i] = do[i] * (zv * sg)
                dz[i] = do[i] * y[i] * (sg * (ONE + zv * (ONE - sg)))
                gD[i] += xs[i] * dy[i]
                dxs[i] = pD[i] * dy[i]
        # ---- recurrence, backwards in time
        PJ, DT, DEC, H = A[alay[ab + A_PJ]:], A[alay[ab + A_DT]:], A[alay[ab + A_DEC]:], A[alay[ab + A_H]:]
        alog = lay[pb + L_ALOG]
        gal = G[alog:alog + di]
        vexp(P[alog:alog + di], vae, ib)
        dH[:] = ZERO
        dPJ[:T * K] = ZERO
        _scan_back(T, di, ds, rk, H, PJ, DT, DEC, XS, dY, dPJ, dXS, dA, dH, vq, vdd, vae, gal,
                   fexp(DT_MIN_A), fexp(DT_MAX_A), kern)
        # ---- step sizes: a = dtb + lo @ W_dt
        dtb = lay[pb + L_DTB]
        gdtb = G[dtb:dtb + di]
        for t in range(T):
            da = dA[t * di:(t + 1) * di]
            for i in range(di):
                gdtb[i] += da[i]
        wdt = lay[pb + L_WDT]
        _acc_outer(PJ, K, rk, dA, di, di, T, G[wdt:wdt + rk * di], kern)
        _back_mat(P[wdt:wdt + rk * di], rk, di, dA, di, T, ta, tb, dPJ, K, kern)
        # ---- x-projection: [lo, B, C] = xs @ W_x
        wx = lay[pb + L_WX]
        _acc_outer(XS, di, di, dPJ, K, K, T, G[wx:wx + di * K], kern)
        _back_mat(P[wx:wx + di * K], di, K, dPJ, K, T, ta, tb, dXS, di, kern)
        # ---- silu and conv; dXB rows are the conv history (CONV - 1 rows from before the chunk)
        XC, XB = A[alay[ab + A_XC]:], A[alay[ab + A_XB]:]
        cw, cb = lay[pb + L_CW], lay[pb + L_CB]
        gcb = G[cb:cb + di]
        dXB[:(T + CONV - 1) * di] = ZERO
        for t in range(T):
            xc = XC[t * di:(t + 1) * di]
            dxs = dXS[t * di:(t + 1) * di]
            vsigmoid(xc, vq, ib)
            for i in range(di):
                sg = vq[i]
                dxs[i] = dxs[i] * (sg * (ONE + xc[i] * (ONE - sg)))     # now d(cost)/d(xc)
                gcb[i] += dxs[i]
            for c in range(CONV):
                r = (t + CONV - 1 - c) * di
                xb = XB[r:r + di]
                dxb = dXB[r:r + di]
                gw = G[cw + c * di:cw + (c + 1) * di]
                w = P[cw + c * di:cw + (c + 1) * di]
                for i in range(di):
                    gw[i] += dxs[i] * xb[i]
                    dxb[i] += w[i] * dxs[i]
        # ---- in-projection: [xb, z] = u @ W_in
        for t in range(T):
            dXZ[t * 2 * di:t * 2 * di + di] = dXB[(t + CONV - 1) * di:(t + CONV) * di]
            dXZ[t * 2 * di + di:(t + 1) * 2 * di] = dZ[t * di:(t + 1) * di]
        win = lay[pb + L_WIN]
        _acc_outer(A[alay[ab + A_U]:], dm, dm, dXZ, 2 * di, 2 * di, T, G[win:win + dm * 2 * di], kern)
        dU[:T * dm] = ZERO
        _back_mat(P[win:win + dm * 2 * di], dm, 2 * di, dXZ, 2 * di, T, ta, tb, dU, dm, kern)
        # ---- norm; the residual gradient passes through unchanged
        xin = alay[ab + A_XIN]
        gg = lay[pb + L_G]
        for t in range(T):
            _rmsnorm_back(A[xin + t * dm:xin + (t + 1) * dm], A[alay[ab + A_R] + t], P[gg:gg + dm],
                          dU[t * dm:(t + 1) * dm], G[gg:gg + dm], dX[t * dm:(t + 1) * dm])
    # ---- embedding
    emb = lay[gl + G_EMB]
    for t in range(T):
        e = emb + tokens[t] * dm
        ge = G[e:e + dm]
        dx = dX[t * dm:(t + 1) * dm]
        for j in range(dm):
            ge[j] += dx[j]


@njit(cache=True, error_model="numpy")
def adam_step(P, G, V, opt, lr, out):
    """One Adam step without momentum (beta1 = 0: measured better for online
    learning, and no first-moment array) over all parameters; clears G. The new
    parameters go to `out`: P itself, or the pending copy of a lagged SSM.
    opt[1] = beta2^k (float32), the bias correction. Each normalised update
    g / sqrt(v) is capped at UPDATE_CLIP: without the cap, a burst of large
    gradients after a quiet stretch (v small) once threw the model off for the
    rest of a 3 MB file (enwik8, 1.9-2.0 MB: 3.29 instead of 1.92 bpb)."""
    opt[1] *= ADAM_B2
    step = lr * sqrt32(ONE - opt[1])
    c2 = ONE - ADAM_B2
    for k in range(P.shape[0]):
        g = G[k]
        v = ADAM_B2 * V[k] + c2 * g * g
        V[k] = v
        out[k] = P[k] - step * min(max(g / (sqrt32(v) + ADAM_EPS), -UPDATE_CLIP), UPDATE_CLIP)
    G[:] = ZERO


@njit(cache=True, error_model="numpy")
def ssm_carry(A, alay, dims, T, out):
    """After a chunk of T rows: the last state and conv history become row 0's of
    `out` (A itself, or the other activation buffer of an SSM learning on a thread)."""
    di, ds, nl = dims[D_DI], dims[D_DS], dims[D_NL]
    for l in range(nl):
        h0 = alay[l * N_LA + A_H]
        out[h0:h0 + ds * di] = A[h0 + T * ds * di:h0 + (T + 1) * ds * di]
        xb0 = alay[l * N_LA + A_XB]
        out[xb0:xb0 + (CONV - 1) * di] = A[xb0 + T * di:xb0 + (T + CONV - 1) * di]


@njit(cache=True, error_model="numpy")
def ssm_run_chunk(P, lay, A, alay, dims, S, ib, NE, rows, tokens, T, kern):
    """Forward T rows (teacher forcing on `tokens`) and store each target's 8
    node logits in G_LG; the coder does this byte by byte, tests and tuning at once."""
    nl = dims[D_NL]
    lg = alay[nl * N_LA + G_LG]
    for t in range(T):
        ssm_forward(P, lay, A, alay, dims, t, tokens[t], S, ib, NE, rows, kern)
        c = tokens[t + 1]
        node = 1
        for b in range(8):
            A[lg + t * 8 + b] = ssm_logit(P, lay, A, alay, dims, t, node)
            node = node * 2 + ((c >> (7 - b)) & 1)


# --- hashed n-gram inputs -------------------------------------------------------

@njit(cache=True, inline="always", error_model="numpy")
def ngram_rows(c4, c8, word, dims, rows, t):
    """Rows of the n-gram embeddings for chunk row t, hashed into ngram_bits: slots
    0 .. ngram - 2 are the orders 2 .. ngram (c4: the last 4 bytes, newest lowest;
    c8: the 4 before), the last slot the current word (a hash of its letters) with
    the last byte."""
    ng = dims[D_NG]
    bits = dims[D_NGB]
    for k in range(ng):
        o = k + 2
        if k == ng - 1:
            v = word
            hi = c4 & 0xFF
        elif o <= 4:
            v = c4 & ((1 << (8 * o)) - 1)
            hi = 0
        else:
            v = c4
            hi = c8 & ((1 << (8 * (o - 4))) - 1)
        h = (v * 0x9E3779B1 + hi * 0x85EBCA77 + (k + 1) * 0x27D4EB2F) & 0xFFFFFFFF
        h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
        rows[t * ng + k] = (h ^ (h >> 13)) >> (32 - bits)


@njit(cache=True, error_model="numpy")
def ngram_step(NE, NV, rows, S, dims, T, lr, opt, flag, stage):
    """Sparse Adam (as adam_step) on the n-gram rows the chunk used,
    from the input gradients ssm_backward left in its S_DX buffer. A row used
    several times gets the sum of its gradients, once. Call after adam_step.
    With flag[F_LAG] the new rows are staged (flag, stage: see F_LAG), not
    written: ssm_apply writes them a chunk later."""
    ng = dims[D_NG]
    flag[F_STAGED] = 0
    if ng == 0:
        return
    lag = flag[F_LAG] != 0
    dm = dims[D_DM]
    bits = dims[D_NGB]
    dX = S[S_DX * _sbuf_len(dims):]
    step = lr * sqrt32(ONE - opt[1])
    c2 = ONE - ADAM_B2
    g = S[S_TA * _sbuf_len(dims):S_TA * _sbuf_len(dims) + dm]    # transpose scratch, free now
    n = T * ng
    for a in range(n):
        k = a % ng
        r = rows[a]
        dup = False
        for b in range(k, a, ng):           # the earlier uses of slot k
            if rows[b] == r:
                dup = True
                break
        if dup:
            continue
        g[:] = dX[(a // ng) * dm:(a // ng + 1) * dm]
        for b in range(a + ng, n, ng):
            if rows[b] == r:
                src = dX[(b // ng) * dm:(b // ng + 1) * dm]
                for j in range(dm):
                    g[j] += src[j]
        e = ((k << bits) + r) * dm
        ne = NE[e:e + dm]
        nv = NV[e:e + dm]
        out = ne
        if lag:
            u = flag[F_STAGED]
            flag[F_STAGED] = u + 1
            flag[F_ROWS + u] = e
            out = stage[u * dm:(u + 1) * dm]
        for j in range(dm):
            v = ADAM_B2 * nv[j] + c2 * g[j] * g[j]
            nv[j] = v
            out[j] = ne[j] - step * min(max(g[j] / (sqrt32(v) + ADAM_EPS), -UPDATE_CLIP), UPDATE_CLIP)


# --- the lagged SSM (Preset.ssm_lag) ---------------------------------------------
# With a lag, what a chunk teaches takes effect one chunk later: at the end of
# chunk k the step learned from chunk k-1 is applied (ssm_apply), then chunk k is
# learned from -- back-propagation with the parameters now in force, Adam into
# the second parameter array, the n-gram rows staged -- and the forward passes of
# chunk k+1 still use the parameters of chunk k-1's step. That leaves the
# learning of a chunk free to run beside the coding of the next one (the C
# kernel does it on a second thread) with the same result as in series.
# The flag array (F_* in ssm_layout.py) says which parameter array is in force
# and what is pending.


@njit(cache=True, inline="always")
def params_in_force(Pa, Pb, flag):
    return Pa if flag[F_PARITY] == 0 else Pb


@njit(cache=True, error_model="numpy")
def ssm_apply(NE, flag, stage, dm):
    """Put the pending step in force: the other parameter array, the staged n-gram rows."""
    if flag[F_PENDING] == 0:
        return
    for u in range(flag[F_STAGED]):
        e = flag[F_ROWS + u]
        NE[e:e + dm] = stage[u * dm:(u + 1) * dm]
    flag[F_STAGED] = 0
    flag[F_PARITY] ^= 1
    flag[F_PENDING] = 0


@njit(cache=True, error_model="numpy")
def ssm_learn(Pa, Pb, G, V, opt, lr, lay, A, alay, dims, S, ib, tokens, NE, NV, rows, flag, stage, kern):
    """Learn from the chunk just coded (rows 0..T-1 of A): backward, Adam, the n-gram
    step. Without a lag the parameters change in place; with one, the step is pending."""
    T = dims[D_T]
    P = params_in_force(Pa, Pb, flag)
    ssm_backward(P, G, lay, A, alay, dims, S, ib, tokens, T, kern)
    lag = flag[F_LAG] != 0
    adam_step(P, G, V, opt, lr, (Pb if flag[F_PARITY] == 0 else Pa) if lag else P)
    ngram_step(NE, NV, rows, S, dims, T, lr, opt, flag, stage)
    flag[F_PENDING] = 1 if lag else 0


@njit(cache=True, error_model="numpy")
def ssm_chunk_end(Pa, Pb, G, V, opt, lr, lay, A, alay, dims, S, ib, tokens, NE, NV, rows, flag, stage, kern):
    """After a full chunk, in series: the pending step (if any) in force, learn, carry."""
    ssm_apply(NE, flag, stage, dims[D_DM])
    ssm_learn(Pa, Pb, G, V, opt, lr, lay, A, alay, dims, S, ib, tokens, NE, NV, rows, flag, stage, kern)
    ssm_carry(A, alay, dims, dims[D_T], A)
