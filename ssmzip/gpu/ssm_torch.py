"""The online SSM of engine/ssm.py on torch tensors, for a batch of blocks at once.

B independent blocks (each with its own parameters, states and optimiser)
advance together: one tensor operation does one step of every block. The
arithmetic is the numba kernels', operation for operation, so a block gives
the same float32 values here as there, on the CPU or a GPU:

- only +, -, *, / (and torch.reciprocal, which is 1/x), floor, clamp,
  float <-> int conversions and the exponent-bit trick of ssm.vexp: each is
  correctly rounded IEEE float32 on every device; the square root is
  sqrt_rn, as torch.sqrt is not always correctly rounded;
- never addcmul, lerp, alpha= or anything else that could fuse a*b+c into
  one rounding, and never matmul, sum or cumsum, whose summation order is
  the library's: every sum is written out as a loop of elementwise adds in
  the numba kernel's order ("seq_sum"). The loop runs over the summed index;
  each step is one add over every block, row and output at once, so the
  elementwise work vectorises while the order of each sum stays fixed;
- the same float32 constants (read from ssm.py), passed as Python floats
  (exact: each is a float32 value).

Parameters, gradients and Adam's second moments keep ssm_layout's flat layout,
one row per block, so the tests can compare them with the numba kernels'
arrays after every chunk.
"""
from __future__ import annotations

import numpy as np
import torch

from ..engine import ssm as K
from ..engine.ssm_layout import (CONV, G_EMB, G_GF, G_HB, G_WH, L_ALOG, L_CB, L_CW, L_D, L_DTB, L_G, L_WDT,
                                 L_WIN, L_WOUT, L_WX, N_LP, init_params)

F32 = torch.float32
_EPS = float(K.RMS_EPS)
_DT_MIN, _DT_MAX = float(K.DT_MIN_A), float(K.DT_MAX_A)
_LIMIT = float(K.LOGIT_LIMIT)
_B2, _ADAM_EPS, _CLIP = float(K.ADAM_B2), float(K.ADAM_EPS), float(K.UPDATE_CLIP)
_EXP_MIN, _EXP_MAX = float(K._EXP_MIN), float(K._EXP_MAX)
_LOG2E, _LN2_HI, _LN2_LO = float(K._LOG2E), float(K._LN2_HI), float(K._LN2_LO)
_P2, _P3, _P4, _P5, _P6 = (float(c) for c in (K._P2, K._P3, K._P4, K._P5, K._P6))


# --- elementwise functions, as ssm.vexp / vsigmoid -------------------------------

def vexp(x: torch.Tensor) -> torch.Tensor:
    """e^x as ssm.vexp: clamp to [-87, 88], range reduction by ln 2, degree-6
    polynomial, times 2^k built from its exponent bits."""
    v = torch.clamp(x, _EXP_MIN, _EXP_MAX)
    k = torch.floor(v * _LOG2E + 0.5)
    r = (v - k * _LN2_HI) - k * _LN2_LO
    p = 1.0 + r * (1.0 + r * (_P2 + r * (_P3 + r * (_P4 + r * (_P5 + r * _P6)))))
    scale = ((k.to(torch.int32) + 127) << 23).view(F32)
    return p * scale


def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded float32 square root of x >= 0, as IEEE's sqrt.

    torch.sqrt on the CPU is not always that (a vector math library, 1 ulp off
    now and then). So: a float64 root rounded to float32 (within an ulp), then
    moved to whichever neighbour is right, judged exactly: the midpoints between
    neighbouring float32 values have 25 significant bits, so their squares
    (50 bits) are exact in float64, and none equals a float32 value."""
    y = torch.sqrt(x.double()).to(F32)
    xd = x.double()
    yd = y.double()
    up = torch.nextafter(y, torch.full_like(y, float("inf")))
    dn = torch.nextafter(y, torch.zeros_like(y))
    mid_up = (yd + up.double()) * 0.5
    mid_dn = (yd + dn.double()) * 0.5
    y = torch.where(mid_up * mid_up < xd, up, y)
    return torch.where(mid_dn * mid_dn > xd, dn, y)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.reciprocal(1.0 + vexp(-x))


def silu(x: torch.Tensor) -> torch.Tensor:
    return sigmoid(x) * x


def seq_sum(init: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
    """init + terms[0] + terms[1] + ..., one after the other (ssm.py's order). The
    callers lay the products out with the summed index first, so that each term
    is one contiguous block."""
    acc = init.clone()
    for term in terms:
        acc += term
    return acc


def seq_matvec(init: torch.Tensor, x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """init[b, t, i] + sum_j x[b, t, j] * W[b, j, i], j in order (ssm._matvec)."""
    return seq_sum(init, x.permute(2, 0, 1).unsqueeze(-1) * W.permute(1, 0, 2).unsqueeze(2))


def back_mat(W: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """sum_i W[b, j, i] * Y[b, t, i] from zero, i in order (ssm._back_mat's tb)."""
    prod = W.permute(2, 0, 1).unsqueeze(2) * Y.permute(2, 0, 1).unsqueeze(3)      # I, B, T, J
    return seq_sum(torch.zeros(prod.shape[1:], dtype=F32, device=W.device), prod)


def acc_outer(G: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> None:
    """G[b, j, i] += X[b, t, j] * Y[b, t, i], t in order (ssm._acc_outer)."""
    for t in range(X.shape[1]):
        G += X[:, t, :, None] * Y[:, t, None, :]


def rmsnorm(x: torch.Tensor, g: torch.Tensor):
    """(x * r) * g with r = 1 / sqrt(mean(x^2) + eps); returns it and r."""
    xm = x.movedim(-1, 0)
    acc = seq_sum(torch.zeros(x.shape[:-1], dtype=F32, device=x.device), xm * xm)
    r = torch.reciprocal(sqrt_rn(acc / float(x.shape[-1]) + _EPS))
    return x * r.unsqueeze(-1) * g.unsqueeze(1), r


def rmsnorm_back(x, r, g, dy, dg, dx):
    """ssm._rmsnorm_back over all rows: dg += (row by row, in order), returns dx + ..."""
    rr = r.unsqueeze(-1)
    gg = g.unsqueeze(1)
    terms = dy.movedim(2, 0) * g.t().unsqueeze(2) * x.movedim(2, 0) * r.unsqueeze(0)
    m = seq_sum(torch.zeros(x.shape[:-1], dtype=F32, device=x.device), terms)
    m = (m / float(x.shape[-1])).unsqueeze(-1)
    xn = x * rr
    dyxn = dy * xn
    for t in range(x.shape[1]):
        dg += dyxn[:, t]
    return dx + rr * (dy * gg - xn * m)


def clamp_logit(acc: torch.Tensor) -> torch.Tensor:
    """ssm_logit's limits, NaN to the upper one, as there."""
    acc = torch.where(acc <= _LIMIT, acc, torch.full_like(acc, _LIMIT))
    return torch.where(acc >= -_LIMIT, acc, torch.full_like(acc, -_LIMIT))


def _f32_scalar(v) -> float:
    return float(np.float32(v))


class BatchSSM:
    """The SSMs of B blocks coded together: forward rows, logits, learning.

    Rows are positions inside the current training chunk of T bytes; all
    blocks are at the same row. The caller feeds each row's input byte and
    hashed n-gram rows (ssmzip.gpu.inputs) and, after a chunk, its bytes.
    """

    def __init__(self, preset, batch: int, device="cpu"):
        sh = preset.ssm_shape()
        self.shape, self.B, self.device = sh, batch, torch.device(device)
        self.dm, self.di, self.ds, self.rk, self.nl, self.T = sh.dm, sh.di, sh.ds, sh.rank, sh.layers, sh.chunk
        self.ng, self.ngb = sh.ngram, sh.ngram_bits
        self.K = self.rk + 2 * self.ds
        B, dev = batch, self.device
        p0 = torch.from_numpy(init_params(sh, preset.ssm_seed))
        self.P = p0.to(dev).unsqueeze(0).repeat(B, 1).contiguous()
        self.G = torch.zeros_like(self.P)
        self.V = torch.zeros_like(self.P)
        # n-gram embeddings (and their Adam moments); one extra row takes the padding of ngram_step
        n_rows = (self.ng << self.ngb) if self.ng else 0
        self.NE = torch.zeros((B, n_rows + 1, self.dm), dtype=F32, device=dev)
        self.NV = torch.zeros_like(self.NE)
        self.lr = np.float32(preset.ssm_lr) / np.float32(100000.0)
        self.opt1 = np.float32(1.0)                    # beta2^k, as adam_step's opt[1]
        # a lagged SSM (ssm.py): a chunk's step waits here until the next chunk's end
        self.lag = bool(preset.ssm_lag)
        self.Pn = torch.zeros_like(self.P) if self.lag else None
        self._pending = False
        self._staged = None                            # (targets, new rows) of the pending n-gram step
        self._lay = sh.lay
        self._views()
        e = vexp(torch.tensor([_DT_MIN, _DT_MAX], dtype=F32)).tolist()
        self._dt_lo, self._dt_hi = e
        self._alloc_acts()

    # -- parameters as views into the flat rows ----------------------------------
    def _view(self, T, k, *shape):
        o = int(self._lay[k])
        n = int(np.prod(shape))
        return T[:, o:o + n].view(self.B, *shape)

    def _views(self):
        dm, di, K, rk = self.dm, self.di, self.K, self.rk
        self.p = []
        self.g = []
        for T, out in ((self.P, self.p), (self.G, self.g)):
            for l in range(self.nl):
                b = l * N_LP
                out.append(dict(g=self._view(T, b + L_G, dm), win=self._view(T, b + L_WIN, dm, 2 * di),
                                cw=self._view(T, b + L_CW, CONV, di), cb=self._view(T, b + L_CB, di),
                                wx=self._view(T, b + L_WX, di, K), wdt=self._view(T, b + L_WDT, rk, di),
                                dtb=self._view(T, b + L_DTB, di), alog=self._view(T, b + L_ALOG, di),
                                d=self._view(T, b + L_D, di), wout=self._view(T, b + L_WOUT, di, dm)))
            gl = self.nl * N_LP
            out.append(dict(emb=self._view(T, gl + G_EMB, 256, dm), gf=self._view(T, gl + G_GF, dm),
                            wh=self._view(T, gl + G_WH, 256, dm), hb=self._view(T, gl + G_HB, 256)))

    def _alloc_acts(self):
        B, T, dm, di, ds, K, dev = self.B, self.T, self.dm, self.di, self.ds, self.K, self.device

        def z(*shape):
            return torch.zeros((B,) + shape, dtype=F32, device=dev)
        self.a = [dict(xin=z(T, dm), r=z(T), u=z(T, dm), xb=z(T + CONV - 1, di), z=z(T, di), xc=z(T, di),
                       xs=z(T, di), pj=z(T, K), dt=z(T, di), dec=z(T, di), h=z(T + 1, ds, di), y=z(T, di),
                       o=z(T, di)) for _ in range(self.nl)]
        self.xf, self.rf, self.f, self.lg = z(T, dm), z(T), z(T, dm), z(T, 8)
        self.tokens = torch.zeros((B, T + 1), dtype=torch.int64, device=dev)
        self.rows = torch.zeros((B, T, max(self.ng, 1)), dtype=torch.int64, device=dev)
        self._bidx = torch.arange(B, device=dev)

    # -- forward -----------------------------------------------------------------
    def forward(self, t0: int, tokens: torch.Tensor, rows: torch.Tensor) -> None:
        """Rows t0 .. t0+n-1 of the chunk: tokens (B, n) the input bytes, rows
        (B, n, NG) their n-gram rows. ssm_forward for each row, the recurrence
        row by row, everything else for all n rows at once."""
        n = tokens.shape[1]
        t1 = t0 + n
        di, ds, rk = self.di, self.ds, self.rk
        self.tokens[:, t0:t1] = tokens
        bi = self._bidx[:, None]
        x = self.p[-1]["emb"][bi, tokens]                               # B, n, dm
        if self.ng:
            self.rows[:, t0:t1] = rows
            offs = torch.arange(self.ng, device=self.device) << self.ngb
            ne = self.NE[bi[:, :, None], rows + offs]                   # B, n, NG, dm
            for k in range(self.ng):
                x = x + ne[:, :, k]
        for l in range(self.nl):
            p, a = self.p[l], self.a[l]
            a["xin"][:, t0:t1] = x
            u, r = rmsnorm(x, p["g"])
            a["u"][:, t0:t1], a["r"][:, t0:t1] = u, r
            xz = seq_matvec(torch.zeros((self.B, n, 2 * di), dtype=F32, device=self.device), u, p["win"])
            a["xb"][:, t0 + CONV - 1:t1 + CONV - 1] = xz[:, :, :di]
            zz = xz[:, :, di:]
            a["z"][:, t0:t1] = zz
            xc = p["cb"].unsqueeze(1).expand(self.B, n, di)
            for k in range(CONV):                   # tap k reads the input k rows back
                xc = xc + p["cw"][:, k].unsqueeze(1) * a["xb"][:, t0 + CONV - 1 - k:t1 + CONV - 1 - k]
            xs = silu(xc)
            a["xc"][:, t0:t1], a["xs"][:, t0:t1] = xc, xs
            pj = seq_matvec(torch.zeros((self.B, n, self.K), dtype=F32, device=self.device), xs, p["wx"])
            a["pj"][:, t0:t1] = pj
            dt = seq_matvec(p["dtb"].unsqueeze(1).expand(self.B, n, di), pj[:, :, :rk], p["wdt"])
            dt = vexp(torch.clamp(dt, _DT_MIN, _DT_MAX))
            dec = vexp(-dt * vexp(p["alog"]).unsqueeze(1))
            a["dt"][:, t0:t1], a["dec"][:, t0:t1] = dt, dec
            bv, cv = pj[:, :, rk:rk + ds], pj[:, :, rk + ds:]
            dtxs = dt * xs
            H = a["h"]
            for t in range(n):                       # the recurrence, row by row
                H[:, t0 + t + 1] = (dec[:, t, None, :] * H[:, t0 + t]
                                    + dtxs[:, t, None, :] * bv[:, t, :, None])
            y = p["d"].unsqueeze(1) * xs
            hn = H[:, t0 + 1:t1 + 1]
            for s in range(ds):
                y = y + cv[:, :, s, None] * hn[:, :, s]
            og = y * silu(zz)
            a["y"][:, t0:t1], a["o"][:, t0:t1] = y, og
            x = seq_matvec(x, og, p["wout"])
        self.xf[:, t0:t1] = x
        f, r = rmsnorm(x, self.p[-1]["gf"])
        self.f[:, t0:t1], self.rf[:, t0:t1] = f, r

    def path_logits(self, t0: int, targets: torch.Tensor) -> torch.Tensor:
        """The 8 node logits along each target byte's path for rows t0.. (B, n):
        what the coder asks at each bit when it codes that byte. Kept for training."""
        n = targets.shape[1]
        nodes = self._nodes(targets)                                         # B, n, 8
        bi = self._bidx[:, None, None]
        w = self.p[-1]["wh"][bi, nodes]                                      # B, n, 8, dm
        f = self.f[:, t0:t0 + n]
        acc = seq_sum(self.p[-1]["hb"][bi, nodes], f.permute(2, 0, 1).unsqueeze(-1) * w.permute(3, 0, 1, 2))
        lg = clamp_logit(acc)
        self.lg[:, t0:t0 + n] = lg
        return lg

    def node_logits(self, t: int) -> torch.Tensor:
        """All 255 node logits of row t (B, 256; entry 0 unused): a decoder does
        not know the byte's path before it has decoded it."""
        f = self.f[:, t]
        acc = seq_sum(self.p[-1]["hb"], f.t().unsqueeze(2) * self.p[-1]["wh"].permute(2, 0, 1))
        return clamp_logit(acc)

    def keep_logits(self, t: int, table: torch.Tensor, byte: torch.Tensor) -> None:
        """After decoding: row t's path logits (for training) from its node table."""
        nodes = self._nodes(byte[:, None])[:, 0]                              # B, 8
        self.lg[:, t] = torch.gather(table, 1, nodes)

    @staticmethod
    def _nodes(c: torch.Tensor) -> torch.Tensor:
        """The tree nodes (partial bytes 1..255) a byte passes through, MSB first."""
        shifts = torch.arange(8, 0, -1, device=c.device)
        return (c.unsqueeze(-1) | 256) >> shifts

    # -- learning ------------------------------------------------------------------
    def learn(self, last_byte: torch.Tensor, groups=None) -> None:
        """After a full chunk: back-propagation, Adam, the n-gram step, carry.
        last_byte (B,): the chunk's last target; groups: ngram_groups of the chunk."""
        self.tokens[:, self.T] = last_byte
        self._apply()
        dX = self._backward()
        step = self._adam()
        if self.ng:
            self._ngram_step(dX, groups, step)
        self._carry()

    def _backward(self) -> torch.Tensor:
        B, T, dm, di, ds, rk, K, dev = self.B, self.T, self.dm, self.di, self.ds, self.rk, self.K, self.device
        gp, gg = self.p[-1], self.g[-1]

        def zeros(*shape):
            return torch.zeros((B,) + shape, dtype=F32, device=dev)
        # head: d(cost)/d(logit) = p - bit at the 8 nodes of each target byte
        targets = self.tokens[:, 1:]
        nodes = self._nodes(targets)                                            # B, T, 8
        bits = (nodes[:, :, 1:] & 1)
        bits = torch.cat([bits, (targets & 1)[:, :, None]], 2).to(F32)
        gl = sigmoid(self.lg) - bits                                            # B, T, 8
        f = self.f
        for t in range(T):
            gg["hb"].scatter_add_(1, nodes[:, t], gl[:, t])
            idx = nodes[:, t, :, None].expand(B, 8, dm)
            gg["wh"].scatter_add_(1, idx, gl[:, t, :, None] * f[:, t, None, :])
        bi = self._bidx[:, None, None]
        w = gp["wh"][bi, nodes]                                                 # B, T, 8, dm
        dU = seq_sum(zeros(T, dm), gl.permute(2, 0, 1).unsqueeze(-1) * w.permute(2, 0, 1, 3))
        dX = rmsnorm_back(self.xf, self.rf, gp["gf"], dU, gg["gf"], zeros(T, dm))

        for l in range(self.nl - 1, -1, -1):
            p, g, a = self.p[l], self.g[l], self.a[l]
            # out-projection; dX is the gradient of this block's output (the residual)
            acc_outer(g["wout"], a["o"], dX)
            dO = zeros(T, di) + back_mat(p["wout"], dX)
            # gate and the skip term of y
            zz, y, xs = a["z"], a["y"], a["xs"]
            sg = sigmoid(zz)
            dy = dO * (zz * sg)
            dZ = dO * y * (sg * (1.0 + zz * (1.0 - sg)))
            xsdy = xs * dy
            for t in range(T):
                g["d"] += xsdy[:, t]
            dxs = p["d"].unsqueeze(1) * dy
            # recurrence, backwards in time: dh after adding C * dy, row by row
            pj, dtv, dec, H = a["pj"], a["dt"], a["dec"], a["h"]
            bv, cv = pj[:, :, rk:rk + ds], pj[:, :, rk + ds:]
            vae = vexp(p["alog"]).unsqueeze(1)
            dH = zeros(ds, di)
            Dh = zeros(T, ds, di)
            for t in range(T - 1, -1, -1):
                dH = dH + cv[:, t, :, None] * dy[:, t, None, :]
                Dh[:, t] = dH
                dH = dH * dec[:, t, None, :]
            hn, hp = H[:, 1:], H[:, :T]
            dpj = zeros(T, K)
            dyi = dy.permute(2, 0, 1).unsqueeze(-1)                          # di, B, T, 1
            dpj[:, :, rk + ds:] = seq_sum(zeros(T, ds), hn.permute(3, 0, 1, 2) * dyi)
            Ds = Dh.permute(2, 0, 1, 3)                                       # ds, B, T, di
            vdd = seq_sum(zeros(T, di), Ds * hp.permute(2, 0, 1, 3))
            vq = seq_sum(zeros(T, di), Ds * bv.permute(2, 0, 1).unsqueeze(-1))
            Di = Dh.permute(3, 0, 1, 2)                                       # di, B, T, ds
            dpj[:, :, rk:rk + ds] = seq_sum(zeros(T, ds), Di * dtv.permute(2, 0, 1).unsqueeze(-1)
                                            * xs.permute(2, 0, 1).unsqueeze(-1))
            dxs = dxs + dtv * vq
            ddt = xs * vq - vdd * vae * dec
            gal = vdd * dtv * dec * vae
            for t in range(T - 1, -1, -1):
                g["alog"] -= gal[:, t]
            clamped = (dtv <= self._dt_lo) | (dtv >= self._dt_hi)
            dA = torch.where(clamped, torch.zeros_like(ddt), ddt * dtv)
            # step sizes: a = dtb + lo @ W_dt
            for t in range(T):
                g["dtb"] += dA[:, t]
            acc_outer(g["wdt"], pj[:, :, :rk], dA)
            dpj[:, :, :rk] = dpj[:, :, :rk] + back_mat(p["wdt"], dA)
            # x-projection: [lo, B, C] = xs @ W_x
            acc_outer(g["wx"], xs, dpj)
            dxs = dxs + back_mat(p["wx"], dpj)
            # silu and conv; dXB rows are the conv history (CONV - 1 rows from before the chunk)
            xc, XB = a["xc"], a["xb"]
            sg = sigmoid(xc)
            dxc = dxs * (sg * (1.0 + xc * (1.0 - sg)))
            for t in range(T):
                g["cb"] += dxc[:, t]
                g["cw"] += dxc[:, t, None, :] * XB[:, t:t + CONV].flip(1)
            dXB = zeros(T + CONV - 1, di)
            for c in range(CONV):
                dXB[:, CONV - 1 - c:T + CONV - 1 - c] += p["cw"][:, c, None, :] * dxc
            # in-projection: [xb, z] = u @ W_in
            dXZ = torch.cat([dXB[:, CONV - 1:], dZ], 2)
            acc_outer(g["win"], a["u"], dXZ)
            dU = zeros(T, dm) + back_mat(p["win"], dXZ)
            # norm; the residual gradient passes through unchanged
            dX = rmsnorm_back(a["xin"], a["r"], p["g"], dU, g["g"], dX)
        # embedding
        for t in range(T):
            idx = self.tokens[:, t, None, None].expand(B, 1, dm)
            gg["emb"].scatter_add_(1, idx, dX[:, t, None, :])
        return dX

    def _step(self):
        """Adam's step size after advancing beta2^k, in float32 as adam_step."""
        self.opt1 = np.float32(self.opt1 * K.ADAM_B2)
        return _f32_scalar(self.lr * np.sqrt(np.float32(1.0) - self.opt1))

    def _adam(self) -> float:
        step = self._step()
        c2 = _f32_scalar(np.float32(1.0) - K.ADAM_B2)
        G = self.G
        v = _B2 * self.V + c2 * G * G
        self.V.copy_(v)
        upd = step * torch.clamp(G / (sqrt_rn(v) + _ADAM_EPS), -_CLIP, _CLIP)
        if self.lag:
            torch.sub(self.P, upd, out=self.Pn)
            self._pending = True
        else:
            self.P -= upd
        G.zero_()
        return step

    def _apply(self) -> None:
        """ssm.ssm_apply: the pending step of a lagged SSM in force."""
        if not self._pending:
            return
        self.P.copy_(self.Pn)                          # a copy: self.p's views stay valid
        if self._staged is not None:
            target, ne = self._staged
            self.NE[self._bidx[:, None], target] = ne
        self._pending, self._staged = False, None

    def _ngram_step(self, dX: torch.Tensor, groups, step: float) -> None:
        """ssm.ngram_step: each n-gram row the chunk used, once, with the sum of
        its gradients in row order; groups = (targets (B, U), uses (B, U, M))."""
        target, uses = groups
        B, dm = self.B, self.dm
        pad = torch.full((B, 1, dm), -0.0, dtype=F32, device=self.device)      # x + (-0.0) == x exactly
        dXp = torch.cat([dX, pad], 1)
        bi = self._bidx[:, None]
        g = dXp[bi, uses[:, :, 0]]
        for m in range(1, uses.shape[2]):
            g = g + dXp[bi, uses[:, :, m]]
        c2 = _f32_scalar(np.float32(1.0) - K.ADAM_B2)
        ne, nv = self.NE[bi, target], self.NV[bi, target]
        v = _B2 * nv + c2 * g * g
        ne = ne - step * torch.clamp(g / (sqrt_rn(v) + _ADAM_EPS), -_CLIP, _CLIP)
        self.NV[bi, target] = v
        if self.lag:
            self._staged = (target, ne)
        else:
            self.NE[bi, target] = ne

    def _carry(self) -> None:
        T = self.T
        for a in self.a:
            a["h"][:, 0] = a["h"][:, T]
            a["xb"][:, :CONV - 1] = a["xb"][:, T:T + CONV - 1].clone()
