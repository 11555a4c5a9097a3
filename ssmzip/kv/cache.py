"""Whole KV caches: layers x {K, V} in one tensor archive, lossless, lossy or sparse.

    data = encode_cache(kv, mode="lossy", bits=3.0)       # or rel_error=0.05, max_abs=0.1, step=0.25
    kv = decode_cache(data)                                # [layers, 2, heads, tokens, head_dim]
    k3 = decode_cache(data, layers=[3], tokens=(100, 200)) # random access: only those chunks
    data = append_cache(data, new_tokens)                  # decode phase: stored chunks untouched
    inspect(data)["cache"]                                 # the header below, plus bits per element

Input: a numpy/torch array [layers, 2, heads, tokens, head_dim], a list of
per-layer (K, V) pairs of [batch=1, heads, tokens, head_dim] (the legacy
transformers format) or a transformers DynamicCache.

Layout: one archive entry per layer and K/V, named "<layer>.k" / "<layer>.v",
shaped [tokens, heads, head_dim] (token-major, so a token range is a run of
whole chunks), chunks of `block_tokens` tokens. The first `sinks` tokens (and
the last `recent`) are coded losslessly in chunks of their own. Each append
adds one entry per layer and K/V ("<layer>.k@<first token>"), written where
the old index was; the archive's extra field holds the cache header as JSON.

Steps: one per layer x {K, V}: step = s x RMS of that tensor (bits=,
rel_error=, step=s), or 2 x max_abs for every tensor. Rate control searches s
by coding the cache (size) or by quantising it (error); the achieved error is
recorded in the header.
"""
import io
import json
import math
import os
import threading

import numpy as np

from ssmzip.errors import SSMZipError
from ssmzip.kv import ecsq, sparse
from ssmzip.kv._arrays import DTYPES, from_words, to_words
from ssmzip.kv._rans import checksum
from ssmzip.kv._arrays import word_dtype
from ssmzip.kv.archive import (
    METHOD_ECSQ, METHOD_SPARSE, VERSION_LOSSY, ArchiveReader, ArchiveWriter, _Pieces, decode_chunk, decode_ecsq,
    encode_chunk, ordered_map, stream_lanes,
)

KIND = "kv-cache"
MODES = ("lossless", "lossy", "sparse")
DEFAULT_BLOCK_TOKENS = 2048     # tokens a chunk: the unit of random access; per-chunk costs (models, calls) halve from 1024
RATE_TOLERANCE = 0.01       # aim inside 1 % so that the promise of 2 % holds
MAX_HEADER = 1 << 24
TOO_MANY_BITS = 1000.0      # what rate control sees for a trial step too small to code


# ---------------------------------------------------------------- adapters in

def _layer_pairs(cache, dtype=None):
    """[(K, V)] per layer, each [heads, tokens, head_dim], from any accepted form."""
    if hasattr(cache, "layers") and not hasattr(cache, "shape"):          # transformers >= 4.5x DynamicCache
        pairs = [(lay.keys, lay.values) for lay in cache.layers]
    elif hasattr(cache, "key_cache") and hasattr(cache, "value_cache"):   # older DynamicCache
        pairs = list(zip(cache.key_cache, cache.value_cache))
    elif isinstance(cache, (list, tuple)):
        pairs = [tuple(p) for p in cache]
    else:
        code, shape, words = to_words(cache, dtype)
        if len(shape) != 5 or shape[1] != 2:
            raise SSMZipError(f"a cache array must be [layers, 2, heads, tokens, head_dim], got shape {shape}")
        arr = words.reshape(shape)
        return code, [(arr[l, 0], arr[l, 1]) for l in range(shape[0])]
    out = []
    code = None
    for l, p in enumerate(pairs):
        if len(p) != 2:
            raise SSMZipError(f"layer {l}: expected a (key, value) pair")
        kv = []
        for t in p:
            c, shape, words = to_words(t, dtype)
            if len(shape) == 4:
                if shape[0] != 1:
                    raise SSMZipError(f"layer {l}: batch size {shape[0]}; encode each sequence separately")
                shape = shape[1:]
            if len(shape) != 3:
                raise SSMZipError(f"layer {l}: expected [batch, heads, tokens, head_dim], got {shape}")
            if code is not None and c != code:
                raise SSMZipError(f"layer {l}: dtype differs from layer 0")
            code = c
            kv.append(words.reshape(shape))
        out.append(tuple(kv))
    if not out:
        raise SSMZipError("the cache has no layers")
    return code, out


def _token_major(words, code):
    """float32 [tokens, heads * head_dim] of one [heads, tokens, head_dim] word array."""
    H, T, D = words.shape
    return ecsq.from_words(np.ascontiguousarray(words.transpose(1, 0, 2)).reshape(-1), code).reshape(T, H * D)


class _Tensors:
    """The cache as 2L token-major float32 tensors plus their stored words."""

    def __init__(self, cache, dtype=None):
        self.code, pairs = _layer_pairs(cache, dtype)
        if DTYPES[self.code][0] not in ("float32", "float16", "bfloat16"):
            raise SSMZipError(f"KV caches must be float32, float16 or bfloat16, not {DTYPES[self.code][0]}")
        H, T, D = pairs[0][0].shape
        for l, (k, v) in enumerate(pairs):
            if k.shape != (H, T, D) or v.shape != (H, T, D):
                raise SSMZipError(f"layer {l}: K {k.shape} and V {v.shape} differ from layer 0's {(H, T, D)}")
        self.L, self.H, self.T, self.D = len(pairs), H, T, D
        self.src = [t for pair in pairs for t in pair]     # [H, T, D] words per (layer, kv), as given
        self._tm = [None] * len(self.src)
        self._f32 = [None] * len(self.src)
        self._stats = {}
        self.exact = {}         # (tensor, t0, t1) -> the result of a losslessly coded chunk
        self.version = VERSION_LOSSY  # of the archive written (an append keeps the file's)

    @property
    def lanes(self):
        """rANS lanes of the lossless and sparse chunks written (those of the archive's version)."""
        return stream_lanes(self.version)

    def body_stats(self, i, sinks):
        """(sum of x^2 of tokens [0, sinks), of tokens [sinks, T), all finite?) of tensor i."""
        key = (i, sinks)
        if key not in self._stats:
            a, fa = ecsq.sumsq_words(self.src[i][:, :sinks], self.code)
            b, fb = ecsq.sumsq_words(self.src[i][:, sinks:], self.code)
            self._stats[key] = (a, b, fa and fb)
        return self._stats[key]

    def norm2(self, i):
        a, b, _ = self.body_stats(i, 0)
        return a + b

    def rows(self, i, t0, t1):
        """Token-major words [t1 - t0, H*D] of tokens [t0, t1) of tensor i."""
        if self._tm[i] is not None:
            return self._tm[i][t0:t1]
        return np.ascontiguousarray(self.src[i][:, t0:t1].transpose(1, 0, 2)).reshape(t1 - t0, self.H * self.D)

    def words(self, i):
        """Token-major words [T, H*D] of tensor i (what lossless and sparse chunks hold)."""
        if self._tm[i] is None:
            self._tm[i] = np.ascontiguousarray(self.src[i].transpose(1, 0, 2)).reshape(self.T, self.H * self.D)
        return self._tm[i]

    def f32(self, i):
        if self._f32[i] is None:
            w = self.words(i)
            self._f32[i] = ecsq.from_words(w.reshape(-1), self.code).reshape(w.shape)
        return self._f32[i]

    @property
    def n(self):
        return len(self.src)


# ---------------------------------------------------------------- chunk plans

def _blocks(T, sinks, recent, block):
    """[(t0, t1, exact)] covering [0, T)."""
    sinks = min(sinks, T)
    recent = min(recent, T - sinks)
    out = []
    if sinks:
        out.append((0, sinks, True))
    for t0 in range(sinks, T - recent, block):
        out.append((t0, min(t0 + block, T - recent), False))
    if recent:
        out.append((T - recent, T, True))
    return out


def _code_block(tens, i, t0, t1, exact, mode, step, sparsity):
    """(method, pieces, checksum, n, nbytes, squared error, max abs error) of one chunk.
    step: the quantisation step (lossy), or of the kept values (sparse; None: exact)."""
    n = (t1 - t0) * tens.H * tens.D
    nbytes = n * tens.src[i].itemsize
    if exact or mode == "lossless":     # the same whatever the step: coded once (rate control asks again)
        key = (i, t0, t1)
        if key not in tens.exact:
            words = tens.rows(i, t0, t1)
            method, pieces, csum = encode_chunk(words.reshape(-1), tens.code, words.shape[1], lanes=tens.lanes)
            tens.exact[key] = (method, pieces, csum, n, nbytes, 0.0, 0.0)
        return tens.exact[key]
    if mode == "lossy":                 # read in place: [heads, tokens, head_dim]
        pieces, rw, (se, mx) = ecsq.encode_words(tens.src[i][:, t0:t1], tens.code, step)
        return METHOD_ECSQ, pieces, checksum(rw), n, nbytes, se, mx
    flat = tens.words(i)[t0:t1].reshape(-1)
    x = tens.f32(i)[t0:t1]
    mask = sparse.prune_mask(x.reshape(t1 - t0, tens.H, tens.D), sparsity).reshape(-1)
    pieces, rw = sparse.encode(flat, tens.code, mask, step, tens.lanes)
    se, mx, _ = ecsq.err_stats(x, ecsq.from_words(rw, tens.code))
    return METHOD_SPARSE, pieces, checksum(rw), flat.shape[0], flat.nbytes, se, mx


def _nbytes(pieces):
    return sum(p.nbytes if isinstance(p, np.ndarray) else len(p) for p in pieces)




class _Plan:
    """Everything that decides the chunks of one encode (or append)."""

    def __init__(self, tens, mode, sinks, recent, block, sparsity):
        self.tens, self.mode, self.sparsity = tens, mode, sparsity
        self.blocks = _blocks(tens.T, sinks, recent, block)

    def code(self, steps, threads):
        """Chunk results, tensor after tensor; steps: one per tensor, or None."""
        jobs = [(i, b) for i in range(self.tens.n) for b in self.blocks]

        def one(job):
            i, (t0, t1, exact) = job
            return _code_block(self.tens, i, t0, t1, exact, self.mode, steps[i] if steps else None,
                               self.sparsity)
        return list(ordered_map(one, jobs, threads))


def _error_stats(tens, results, nblocks):
    """Achieved errors from the chunk results (relative Frobenius of K, V, both; max abs)."""
    se = [0.0, 0.0]
    mx = 0.0
    for j, r in enumerate(results):
        se[(j // nblocks) % 2] += r[5]
        mx = max(mx, r[6])
    nrm = [0.0, 0.0]
    for i in range(tens.n):
        nrm[i % 2] += tens.norm2(i)
    rel = lambda e, n: math.sqrt(e / n) if n > 0 else 0.0  # noqa: E731
    return {"rel_error": rel(se[0] + se[1], nrm[0] + nrm[1]), "rel_error_k": rel(se[0], nrm[0]),
            "rel_error_v": rel(se[1], nrm[1]), "max_abs": mx}


def _quant_error(tens, steps, blocks):
    """(relative Frobenius error, max abs error) of plain quantisation with steps (no coding)."""
    se = mx = 0.0
    nrm = sum(tens.norm2(i) for i in range(tens.n))
    for i in range(tens.n):
        for t0, t1, exact in blocks:
            if not exact:
                e2, m = ecsq.quantize(tens.src[i][:, t0:t1], tens.code, steps[i])[3]
                se += e2
                mx = max(mx, m)
    return (math.sqrt(se / nrm) if nrm > 0 else 0.0), mx


def _search(f, target, s0, slope, iters=24, tol=RATE_TOLERANCE):
    """(s, f(s)) with f(s) within tol of target; f is monotone in log2(s) with
    about the given slope (d f / d log2 s). Secant steps, kept inside the
    bracket found so far (bisection when a step leaves it)."""
    pts = []
    best = None
    s = s0
    for _ in range(iters):
        v = f(s)
        ls = math.log2(s)
        pts.append((ls, v))
        if best is None or abs(v - target) < abs(best[1] - target):
            best = (s, v)
        if abs(v - target) <= tol * abs(target):
            break
        (a, fa), (b, fb) = pts[-2] if len(pts) > 1 else (None, None), pts[-1]
        if a is not None and fa != fb:
            nls = b + (target - fb) * (b - a) / (fb - fa)
        else:
            nls = ls + (target - v) / slope
        small = [p[0] for p in pts if (p[1] - target) * slope < 0]   # s too small
        big = [p[0] for p in pts if (p[1] - target) * slope > 0]     # s too big
        if small and big:
            lo, hi = max(small), min(big)
            if not lo < nls < hi:
                nls = (lo + hi) / 2
        s = 2.0 ** min(max(nls, -60.0), 60.0)
    return best


class _SizeModel:
    """Bits per element of the whole cache at relative step s, estimated from
    every 8th run of 8 tokens of each lossy chunk (the model's code length of
    their symbols, scaled up) plus the exact size of the lossless chunks. A
    few of these cost less than one coding pass; rate control then codes once
    at the step they give and corrects only if that misses."""

    RUN, EVERY = 8, 64
    # Each channel's model is fitted to the very sample it is charged on: that
    # looks ~3 bits per channel cheaper than on unseen tokens (measured: 1/8
    # samples of the SmolLM2 cache read 0.027 bit/element low, 1/4 ones 0.011).
    OVERFIT_BITS = 3.2

    def __init__(self, tens, plan, rms, overhead, threads):
        self.tens, self.rms, self.threads = tens, rms, threads
        self.samples = []           # (tensor, sampled words, scale, channels)
        fixed = overhead * 8.0
        for i in range(tens.n):
            for t0, t1, exact in plan.blocks:
                if exact:
                    r = _code_block(tens, i, t0, t1, True, "lossless", None, None)
                    fixed += 8.0 * _nbytes(r[1])
                    continue
                rows = np.concatenate([np.arange(a, min(a + self.RUN, t1)) for a in range(t0, t1, self.EVERY)])
                self.samples.append((i, tens.src[i][:, rows], (t1 - t0) / rows.shape[0]))
                fixed += 8.0 * (4 + 3.5 * tens.H * tens.D + 16)    # step, channel parameters, counts
        self.fixed = fixed
        self.nelem = 2 * tens.L * tens.H * tens.T * tens.D

    def __call__(self, s):
        def one(sample):
            i, words, scale = sample
            bits = ecsq.estimate_bits(words, self.tens.code, s * self.rms[i])
            return scale * (bits + self.OVERFIT_BITS * words.shape[0] * words.shape[2])
        try:
            total = self.fixed + sum(ordered_map(one, self.samples, self.threads))
        except SSMZipError:             # a trial step too small for the symbols
            return TOO_MANY_BITS
        return total / max(self.nelem, 1)


def _fit_max_abs(tens, blocks, target):
    """The largest uniform step whose reconstruction (output rounding included)
    stays within target: step = 2 * target, or less where rounding to the
    stored dtype adds to the quantisation error (bisection)."""
    def err(f):
        return _quant_error(tens, [2.0 * target * f] * tens.n, blocks)[1]
    hi = 1.0
    e = err(hi)
    if e <= target:
        return [2.0 * target] * tens.n
    lo = target / e
    while err(lo) > target and lo > 1e-9:
        hi, lo = lo, lo * target / err(lo) * 0.9
    for _ in range(8):
        mid = (lo + hi) / 2
        if err(mid) <= target:
            lo = mid
        else:
            hi = mid
    return [2.0 * target * lo] * tens.n


# ---------------------------------------------------------------- encoding

def _header(tens, mode, sinks, recent, block, steps, rel, target, achieved, sparsity, values_step):
    return {
        "kind": KIND, "layers": tens.L, "heads": tens.H, "head_dim": tens.D, "tokens": tens.T,
        "dtype": DTYPES[tens.code][0], "mode": mode, "sinks": sinks, "recent": recent,
        "block_tokens": block, "segments": [[0, tens.T]],
        "steps": [[steps[2 * l], steps[2 * l + 1]] for l in range(tens.L)] if steps else None,
        "relative_step": rel, "target": target, "achieved": achieved,
        "sparsity": sparsity, "values_step": values_step,
    }


def _entry_name(l, kv, seg_start, first):
    """Segment 0 of layer l's K: "<l>.k"; a later segment (an append): "<l>.k@<its first token>"."""
    return f"{l}.{kv}" + ("" if first else f"@{seg_start}")


def _write(f, tens, plan, results, header, resume=None, seg_start=0):
    """The chunks of a new segment (the whole cache, or an append: resume=) and the index."""
    w = ArchiveWriter(f, version=tens.version, resume=resume)
    per = len(plan.blocks)
    for i in range(tens.n):
        name = _entry_name(i // 2, "kv"[i % 2], seg_start, resume is None)
        e = w.add_entry(name, tens.code, (tens.T, tens.H, tens.D))
        for r in results[i * per:(i + 1) * per]:
            w.add_chunk(e, *r[:5])
    w.close(json.dumps(header, separators=(",", ":")).encode())


def encode_cache(cache, *, mode="lossy", bits=None, rel_error=None, max_abs=None, step=None,
                 sinks=4, recent=0, sparsity=None, values="exact", block_tokens=DEFAULT_BLOCK_TOKENS,
                 threads=1, dtype=None, step_weights=None):
    """Encode a whole KV cache to bytes.

    mode="lossy": give exactly one of bits (per element, everything included),
    rel_error (relative Frobenius error of K and V together), max_abs (largest
    absolute error) or step (relative step: s x RMS per layer and K/V).
    mode="sparse": sparsity (0..1, the share pruned per head vector); values
    "exact" or a relative step (float) to quantise the kept values.
    mode="lossless": bit-exact. sinks / recent: tokens at the start / end kept exact.
    dtype="bfloat16": the numpy input is uint16 words holding bf16 bits.
    step_weights: optional [layers, 2] multipliers of the steps (K, V of each
    layer) for bit allocation; the targets apply to the weighted steps.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    sinks, recent, block = int(sinks), int(recent), int(block_tokens)
    if sinks < 0 or recent < 0 or block < 1:
        raise ValueError("sinks and recent must be >= 0 and block_tokens >= 1")
    tens = _Tensors(cache, dtype)
    threads = max(1, int(threads))
    targets = {k: v for k, v in (("bits", bits), ("rel_error", rel_error), ("max_abs", max_abs),
                                 ("step", step)) if v is not None}
    values_step = None
    if mode == "lossy":
        if len(targets) != 1:
            raise ValueError("mode='lossy' needs exactly one of bits=, rel_error=, max_abs=, step=")
        (tname, tval), = targets.items()
        tval = float(tval)
        if not (math.isfinite(tval) and tval > 0):
            raise ValueError(f"{tname} must be a positive number")
    else:
        if targets:
            raise ValueError(f"{', '.join(targets)} only apply to mode='lossy'")
        if mode == "sparse":
            if sparsity is None or not 0.0 <= float(sparsity) <= 1.0:
                raise ValueError("mode='sparse' needs sparsity= between 0 and 1")
            sparsity = float(sparsity)
            if values != "exact":
                values_step = float(values)
                if not (math.isfinite(values_step) and values_step > 0):
                    raise ValueError("values must be 'exact' or a positive relative step")
        elif sparsity is not None:
            raise ValueError("sparsity= only applies to mode='sparse'")
    rms = None
    if mode != "lossless":
        s0 = min(sinks, tens.T)
        stats = [tens.body_stats(i, s0) for i in range(tens.n)]
        if not all(ok for _, _, ok in stats):
            raise SSMZipError("lossy and sparse coding need finite values (the cache holds inf or NaN)")
        rms = [math.sqrt(b / ((tens.T - s0) * tens.H * tens.D)) if tens.T > s0 else 0.0 for _, b, _ in stats]
        rms = [r or 1.0 for r in rms]
    plan = _Plan(tens, mode, sinks, recent, block, sparsity)
    if step_weights is not None and rms is not None:
        sw = np.asarray(step_weights, np.float64).reshape(-1)
        if sw.shape[0] != tens.n or not np.all(np.isfinite(sw)) or not np.all(sw > 0):
            raise ValueError(f"step_weights must be {tens.L} x 2 positive numbers")
        rms = [r * float(w) for r, w in zip(rms, sw)]
    steps = None
    rel = None
    target = None
    if mode == "lossy":
        target = {tname: tval}
        nelem = 2 * tens.L * tens.H * tens.T * tens.D
        if tname == "max_abs":
            steps = [2.0 * tval] * tens.n
        elif tname == "step":
            rel = tval
        elif tname == "rel_error":
            rel = _search(lambda s: _quant_error(tens, [s * r for r in rms], plan.blocks)[0], tval,
                          tval * math.sqrt(12), tval * math.log(2))[0]
        else:   # bits: search on a sample with the size model, then code (and correct if needed)
            overhead = 512 + 64 * tens.n + 40 * tens.n * len(plan.blocks)
            cache_runs = {}

            def size_bits(s):
                try:
                    res = plan.code([s * r for r in rms], threads)
                except SSMZipError:     # a trial step too small for the symbols: "too many bits"
                    return TOO_MANY_BITS
                cache_runs[s] = res
                return 8.0 * (sum(_nbytes(r[1]) for r in res) + overhead) / max(nelem, 1)
            estimate = _SizeModel(tens, plan, rms, overhead, threads)
            s0 = _search(estimate, tval, 2.0 ** min(1.6 - tval, 60.0), -1.0, tol=RATE_TOLERANCE / 2)[0]  # ~where KV caches land
            rel = _search(size_bits, tval, s0, -1.0)[0]
        if steps is None:
            steps = [rel * r for r in rms]
        if tname == "max_abs":
            steps = _fit_max_abs(tens, plan.blocks, tval)
        steps = [float(np.float32(s)) for s in steps]
        results = cache_runs.get(rel) if tname == "bits" else None
        if results is None:
            results = plan.code(steps, threads)
    elif mode == "sparse":
        if values_step is not None:
            steps = [float(np.float32(values_step * r)) for r in rms]
        results = plan.code(steps, threads)
    else:
        results = plan.code(None, threads)
    achieved = _error_stats(tens, results, len(plan.blocks))
    header = _header(tens, mode, sinks, recent, block, steps, rel, target, achieved, sparsity, values_step)
    buf = _Pieces(threads)
    _write(buf, tens, plan, results, header)
    return buf.getvalue()


# ---------------------------------------------------------------- reading

def _read_header(r):
    try:
        h = json.loads(r.extra.decode("utf-8")) if r.extra and len(r.extra) < MAX_HEADER else None
    except (UnicodeDecodeError, ValueError):
        h = None
    if not isinstance(h, dict) or h.get("kind") != KIND:
        raise SSMZipError("not a KV cache archive (no cache header)")
    try:
        L, H, T, D = (int(h[k]) for k in ("layers", "heads", "tokens", "head_dim"))
        segs = [(int(a), int(b)) for a, b in h["segments"]]
        mode = h["mode"]
    except (KeyError, TypeError, ValueError):
        raise SSMZipError("corrupt data: bad KV cache header") from None
    if mode not in MODES or min(L, H, D) < 1 or T < 0 or not segs or segs[0][0] != 0 or segs[-1][1] != T \
            or any(a >= b for a, b in segs[1:]) or any(segs[j][1] != segs[j + 1][0] for j in range(len(segs) - 1)):
        raise SSMZipError("corrupt data: bad KV cache header")
    for j, (a, b) in enumerate(segs):
        for l in range(L):
            for kv in "kv":
                name = _entry_name(l, kv, a, j == 0)
                e = r._by_name.get(name)
                if e is None or e.shape != (b - a, H, D) or DTYPES[e.code][0] != h.get("dtype"):
                    raise SSMZipError(f"corrupt data: KV cache entry {name!r} missing or of the wrong shape")
    return h, segs


def decode_cache(data, *, layers=None, tokens=None, out="numpy", threads=1):
    """The cache as [layers, 2, heads, tokens, head_dim] in its stored dtype
    (numpy float32/float16; bfloat16 as uint16 words unless out="torch").
    layers: indices to decode (default all); tokens: (start, stop) range.
    Only the chunks holding the asked layers and tokens are decoded."""
    with ArchiveReader(data) as r:
        h, segs = _read_header(r)
        L, H, T, D = h["layers"], h["heads"], h["tokens"], h["head_dim"]
        ls = list(range(L)) if layers is None else [int(l) for l in ([layers] if np.isscalar(layers) else layers)]
        for l in ls:
            if not 0 <= l < L:
                raise SSMZipError(f"layer {l} out of range (the cache has {L})")
        t0, t1 = (0, T) if tokens is None else (int(tokens[0]), int(tokens[1]))
        if not 0 <= t0 <= t1 <= T:
            raise SSMZipError(f"token range {t0}..{t1} out of range (the cache has {T})")
        code = r.entry("0.k").code
        res = np.empty((len(ls), 2, H, t1 - t0, D), DTYPES[code][2])
        words = res.view(word_dtype(code))
        jobs = []           # one per chunk that holds asked tokens
        for si, (a, b) in enumerate(segs):
            for li, l in enumerate(ls):
                for kvi, kv in enumerate("kv"):
                    e = r.entry(_entry_name(l, kv, a, si == 0))
                    c0 = a                          # first token of the chunk
                    for j, c in enumerate(e.chunks):
                        c1 = c0 + c.n // (H * D)
                        lo, hi = max(c0, t0), min(c1, t1)
                        if lo < hi:
                            jobs.append((e, j, c0, c1, lo, hi, words[li, kvi, :, lo - t0:hi - t0]))
                        c0 = c1

        local = threading.local()           # one scratch buffer per thread, reused chunk after chunk

        def one(job):
            e, j, c0, c1, lo, hi, dst = job
            c = e.chunks[j]
            where = f"chunk {j} of tensor {e.name!r}"
            if c.method == METHOD_ECSQ:     # channel-major: [heads, head_dim, tokens]
                buf = getattr(local, "buf", None)
                if buf is None or buf.shape[0] < c.n:
                    buf = local.buf = np.empty(c.n, word_dtype(e.code))
                recT = decode_ecsq(c, r.chunk_payload(e, j), e.code, H * D, where, buf)
                ecsq.scatter(recT, H, D, lo - c0, hi - c0, dst)
            else:                           # entry order: [tokens, heads, head_dim]
                buf = np.empty(c.n, word_dtype(e.code))
                decode_chunk(c, r.chunk_payload(e, j), e.code, buf, where, H * D)
                dst[...] = buf.reshape(c1 - c0, H, D)[lo - c0:hi - c0].transpose(1, 0, 2)
        for _ in ordered_map(one, jobs, threads):
            pass
        return from_words(code, res.shape, res.reshape(-1).view(DTYPES[code][2]), out)


def cache_info(r):
    """The cache header (a dict) of an open archive, with bits per element; None if not a cache."""
    try:
        h, _ = _read_header(r)
    except SSMZipError:
        return None
    nelem = 2 * h["layers"] * h["heads"] * h["tokens"] * h["head_dim"]
    h["bits_per_element"] = 8.0 * r.size / nelem if nelem else 0.0
    return h


# ---------------------------------------------------------------- appending

def append_cache(target, new, *, threads=1, dtype=None):
    """Append tokens (same forms as encode_cache, same layers/heads/head_dim/dtype)
    to an encoded cache, coded as the cache was (same mode and steps; no new
    sinks). target: bytes (a new bytes object is returned) or a path (the file
    is extended in place: stored chunks are not rewritten, only the index)."""
    tens = _Tensors(new, dtype)
    if isinstance(target, (bytes, bytearray, memoryview)):
        with ArchiveReader(target) as r:
            h, segs = _read_header(r)
            ioff, entries = r.index_offset, r.entries
            tens.version = r.version
        f = io.BytesIO()
        f.write(bytes(memoryview(target)[:ioff]))
        _append(f, tens, h, entries, ioff, threads)
        return f.getvalue()
    path = os.fspath(target)
    with ArchiveReader(path) as r:
        h, segs = _read_header(r)
        ioff, entries, size = r.index_offset, r.entries, r.size
        tens.version = r.version
    with open(path, "r+b") as f:
        f.seek(ioff)
        old_tail = f.read()             # index + trailer: restored if anything fails
        f.seek(ioff)
        try:
            _append(f, tens, h, entries, ioff, threads)
            f.truncate()
        except BaseException:
            f.seek(ioff)
            f.write(old_tail)
            f.truncate(size)
            raise
    return None


def _append(f, tens, h, entries, ioff, threads):
    if (tens.L, tens.H, tens.D) != (h["layers"], h["heads"], h["head_dim"]) or DTYPES[tens.code][0] != h["dtype"]:
        raise SSMZipError(f"the new tokens are {tens.L} layers x {tens.H} heads x {tens.D} {DTYPES[tens.code][0]}, "
                          f"the cache {h['layers']} x {h['heads']} x {h['head_dim']} {h['dtype']}")
    if tens.T == 0:
        raise SSMZipError("nothing to append (0 tokens)")
    T0 = h["tokens"]
    mode = h["mode"]
    steps = [s for pair in h["steps"] for s in pair] if h.get("steps") else None
    plan = _Plan(tens, mode, 0, 0, h["block_tokens"], h.get("sparsity"))
    results = plan.code(steps, threads)
    h["segments"].append([T0, T0 + tens.T])
    h["tokens"] = T0 + tens.T
    _write(f, tens, plan, results, h, resume=(entries, ioff), seg_start=T0)


# ---------------------------------------------------------------- adapters out

def to_dynamic_cache(data, *, config=None, layers=None, tokens=None, threads=1):
    """A transformers DynamicCache holding the decoded cache (needs torch and transformers)."""
    from transformers import DynamicCache

    kv = decode_cache(data, layers=layers, tokens=tokens, out="torch", threads=threads)
    cache = DynamicCache(config=config) if config is not None else DynamicCache()
    for l in range(kv.shape[0]):
        cache.update(kv[l, 0][None], kv[l, 1][None], l)
    return cache
