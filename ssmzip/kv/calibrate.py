"""Per-model step weights for lossy KV caches: how much each layer's K and V matter.

Quantising one tensor of the cache (layer l, K or V) at the same relative step
hurts the model's next-token distributions by amounts that differ ~1000x from
tensor to tensor, and nothing in the cache itself predicts which (on
SmolLM2-135M the KL correlates with no statistic of the tensor: |r| < 0.35).
So the weights are measured once per model, by 2L forward passes over any
sample text, and then reused for every cache of that model:

    S = ssmzip.kv.calibrate.sensitivity(model, input_ids)   # torch + transformers; [layers, 2]
    W = ssmzip.kv.calibrate.weights(S)                       # numpy only
    data = ssmzip.kv.encode_cache(kv, bits=3.0, step_weights=W)

weights() sets step(l, kv) proportional to S^(-g/2) (g = 0.75, geometric mean
1): more sensitive tensors get finer steps. On SmolLM2-135M, weights measured
on one text cut the bits needed for a given KL by 15-22 % on other texts
(bench/kv_lossy.py, --calibrate).
"""
import numpy as np

DEFAULT_STEP = 0.45         # relative step of the probe (about twice a 3-4 bit operating point)
DEFAULT_G = 0.75


def weights(sens, g=DEFAULT_G):
    """step_weights [layers, 2] from sensitivities [layers, 2]: S^(-g/2), geometric mean 1."""
    s = np.asarray(sens, np.float64)
    if s.ndim != 2 or s.shape[1] != 2 or not np.all(np.isfinite(s)):
        raise ValueError("sensitivities must be finite numbers, [layers, 2]")
    s = np.maximum(s, max(float(s.max()), 1e-30) * 1e-6)     # a tensor that never matters: capped
    w = s ** (-g / 2)
    return w / np.exp(np.log(w).mean())


def context_kv(model, ctx_ids):
    """The exact cache after reading ctx_ids: float32 torch tensors K, V [layers, heads, tokens, head_dim]."""
    import torch

    with torch.no_grad():
        cache = model(ctx_ids, use_cache=True).past_key_values
    pairs = [(lay.keys, lay.values) for lay in cache.layers] if hasattr(cache, "layers") else list(cache)
    K = torch.stack([k[0] for k, _ in pairs]).float().contiguous()
    V = torch.stack([v[0] for _, v in pairs]).float().contiguous()
    return K, V


def build_cache(model, K, V):
    """A transformers DynamicCache holding K, V [layers, heads, tokens, head_dim] (float32)."""
    import torch
    from transformers import DynamicCache

    K = torch.as_tensor(np.asarray(K, np.float32) if isinstance(K, np.ndarray) else K).float()
    V = torch.as_tensor(np.asarray(V, np.float32) if isinstance(V, np.ndarray) else V).float()
    try:
        cache = DynamicCache(config=model.config)
    except TypeError:   # older transformers
        cache = DynamicCache()
    for li in range(K.shape[0]):
        cache.update(K[li:li + 1].clone(), V[li:li + 1].clone(), li)
    return cache


def continuation_logp(model, K, V, cont_ids):
    """log-softmax of the model's predictions along cont_ids read after the cache (K, V)."""
    import torch

    with torch.no_grad():
        logits = model(cont_ids, past_key_values=build_cache(model, K, V), use_cache=True).logits[0, :-1]
    return torch.log_softmax(logits.float(), -1)


def kl(ref_logp, logp):
    """KL(ref || q) in nats per token, averaged over the positions."""
    return float((ref_logp.exp() * (ref_logp - logp)).sum(-1).mean())


def sensitivity(model, input_ids, *, context=None, step=DEFAULT_STEP, sinks=4, progress=None):
    """[layers, 2]: the KL (nats/token) that quantising that tensor alone, with
    step = step x its RMS (the first `sinks` tokens exact), adds to the
    predictions along the continuation. input_ids: [1, n] token ids; the
    first `context` (default 3/4 of them) are read into the cache."""
    n = input_ids.shape[1]
    context = int(context or (3 * n) // 4)
    if not 0 < context < n - 1:
        raise ValueError("need a context and a continuation of at least 2 tokens")
    ctx, cont = input_ids[:, :context], input_ids[:, context:]
    K, V = context_kv(model, ctx)
    X = np.stack([K.numpy(), V.numpy()], 1).astype(np.float16).astype(np.float32)   # what a codec gets
    ref = continuation_logp(model, X[:, 0], X[:, 1], cont)
    L = X.shape[0]
    out = np.zeros((L, 2))
    for li in range(L):
        for j in range(2):
            x = X[li, j]
            body = x[:, sinks:]
            st = step * float(np.sqrt(np.mean(body.astype(np.float64) ** 2)) or 1.0)
            xh = X.copy()
            xh[li, j, :, sinks:] = (np.round(body / st) * st).astype(np.float16).astype(np.float32)
            out[li, j] = max(kl(ref, continuation_logp(model, xh[:, 0], xh[:, 1], cont)), 0.0)
            if progress is not None:
                progress(li, j, out[li, j])
    return out
