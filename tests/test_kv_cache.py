"""Whole KV caches (ssmzip.kv.encode_cache): lossless, lossy (ECSQ) and sparse modes,
rate control, random access, streaming append, bad data."""
import numpy as np
import pytest

import ssmzip.kv as kv
from ssmzip.errors import SSMZipError
from ssmzip.kv import ecsq


def make_cache(L=3, H=2, T=300, D=32, seed=0, dtype=np.float16):
    """A KV-like cache [L, 2, H, T, D]: per-channel offsets and scales, heavy-ish tails."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.2, 3.0, (L, 2, H, 1, D))
    offset = rng.normal(0, 2.0, (L, 2, H, 1, D)) * (rng.random((L, 2, H, 1, D)) < 0.2)
    x = rng.standard_t(5, (L, 2, H, T, D)) * scale + offset
    return x.astype(dtype)


def f32(x):
    return np.asarray(x, np.float32)


def rel_err(a, b):
    a, b = f32(a), f32(b)
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def bits_per_elem(data, x):
    return 8 * len(data) / x.size


# ---------------------------------------------------------------- lossless

@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("T", [0, 1, 5, 300])
def test_lossless_roundtrip(dtype, T):
    x = make_cache(T=T, dtype=dtype)
    data = kv.encode_cache(x, mode="lossless", block_tokens=64)
    y = kv.decode_cache(data)
    assert y.dtype == x.dtype and y.shape == x.shape and y.tobytes() == x.tobytes()


@pytest.mark.parametrize("mode", ["lossless", "lossy"])
def test_same_bytes_for_any_thread_count(mode, monkeypatch):
    from ssmzip.kv import _join

    monkeypatch.setattr(_join, "THREADED_MIN", 1)  # the threaded join, on a small cache too
    x = make_cache(T=300)
    kw = {"bits": 3.0} if mode == "lossy" else {}
    ref = kv.encode_cache(x, mode=mode, block_tokens=64, threads=1, **kw)
    for threads in (2, 3):
        assert kv.encode_cache(x, mode=mode, block_tokens=64, threads=threads, **kw) == ref
    y = kv.decode_cache(ref)
    assert y.shape == x.shape and (mode == "lossy" or y.tobytes() == x.tobytes())


def test_bfloat16_words_roundtrip():
    x = make_cache(dtype=np.float32).view(np.uint32)
    words = (x >> 16).astype(np.uint16)          # truncated to bf16 bits
    data = kv.encode_cache(words, mode="lossy", step=0.3, dtype="bfloat16")
    y = kv.decode_cache(data)
    assert y.dtype == np.uint16 and y.shape == words.shape
    assert kv.inspect(data)["cache"]["dtype"] == "bfloat16"
    ref = (words.astype(np.uint32) << 16).view(np.float32)
    back = (y.astype(np.uint32) << 16).view(np.float32)
    assert 0 < rel_err(back, ref) < 0.15


def test_legacy_pairs_and_dynamic_cache_like_inputs():
    x = make_cache(L=2)
    pairs = [(x[l, 0][None], x[l, 1][None]) for l in range(2)]
    a = kv.encode_cache(x, step=0.5)
    assert kv.encode_cache(pairs, step=0.5) == a

    class Layer:
        def __init__(self, k, v):
            self.keys, self.values = k, v

    class FakeDynamicCache:     # the shape of transformers' DynamicCache (>= 4.5x)
        layers = [Layer(x[l, 0][None], x[l, 1][None]) for l in range(2)]
    assert kv.encode_cache(FakeDynamicCache(), step=0.5) == a
    with pytest.raises(SSMZipError, match="batch size 2"):
        kv.encode_cache([(np.concatenate([x[0, 0][None]] * 2), np.concatenate([x[0, 1][None]] * 2))], step=0.5)
    with pytest.raises(SSMZipError, match="layers, 2, heads"):
        kv.encode_cache(x[0], step=0.5)


# ---------------------------------------------------------------- lossy

def test_lossy_fixed_step_error_and_sinks():
    x = make_cache(T=400)
    data = kv.encode_cache(x, step=0.25, sinks=4, recent=16, block_tokens=128)
    y = kv.decode_cache(data)
    assert y.dtype == np.float16 and y.shape == x.shape
    assert y[:, :, :, :4].tobytes() == x[:, :, :, :4].tobytes()          # sinks exact
    assert y[:, :, :, -16:].tobytes() == x[:, :, :, -16:].tobytes()      # recent window exact
    # uniform quantiser: error <= step / 2 (+ fp16 output rounding)
    h = kv.inspect(data)["cache"]
    for l in range(x.shape[0]):
        for j in range(2):
            step = h["steps"][l][j]
            e = np.abs(f32(y[l, j]) - f32(x[l, j])).max()
            assert e <= step / 2 + 2 ** -10 * np.abs(f32(x[l, j])).max()
    assert 0.05 < h["achieved"]["rel_error"] < 0.1          # ~0.25 / sqrt(12) of the non-exact part
    assert h["achieved"]["rel_error"] == pytest.approx(rel_err(y, x), rel=1e-3)


def test_decoder_matches_encoder_reconstruction():
    x = f32(make_cache(L=1, H=3, T=200, D=16)[0, 0]).transpose(1, 0, 2).reshape(200, 48)
    x[:, 5] = 7.0                               # a constant channel
    x[:, 6] *= 300.0                            # a very wide one (shifted, low bits raw)
    x[17, 7] = 1e4                              # an outlier (escape)
    pieces, rec = ecsq.encode(x, 0.1)
    payload = b"".join(bytes(p) for p in pieces)
    out = ecsq.decode(payload, 200, 48, "test")
    assert out.tobytes() == rec.tobytes()
    assert np.all(np.abs(out - x) <= 0.05 + 2 ** -22 * np.abs(x))    # step / 2, up to float32 rounding


@pytest.mark.parametrize("bits", [1.5, 3.0, 5.0])
def test_rate_control_bits(bits):
    x = make_cache(L=2, T=512, D=64, seed=int(bits * 10))
    data = kv.encode_cache(x, bits=bits)
    got = bits_per_elem(data, x)
    assert abs(got - bits) <= 0.02 * bits
    assert kv.inspect(data)["cache"]["bits_per_element"] == pytest.approx(got)


@pytest.mark.parametrize("target", [0.02, 0.05, 0.2])
def test_rate_control_rel_error(target):
    x = make_cache(L=2, T=300, seed=3)
    data = kv.encode_cache(x, rel_error=target)
    got = rel_err(kv.decode_cache(data), x)
    assert abs(got - target) <= 0.02 * target
    assert kv.inspect(data)["cache"]["achieved"]["rel_error"] == pytest.approx(got, rel=1e-3)


@pytest.mark.parametrize("target", [0.01, 0.05, 0.3])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_rate_control_max_abs(target, dtype):
    x = make_cache(L=2, T=300, seed=4, dtype=dtype)
    data = kv.encode_cache(x, max_abs=target)
    got = float(np.abs(f32(kv.decode_cache(data)) - f32(x)).max())
    assert got <= target
    # within 2 % where the stored dtype is fine enough; float16's spacing near
    # the largest values (2^-5 here) can keep the reachable maximum further below
    assert got >= (0.98 if dtype == np.float32 else 0.8) * target
    assert kv.inspect(data)["cache"]["achieved"]["max_abs"] == pytest.approx(got)


def test_lossy_all_equal_random_and_tiny():
    for x in (np.full((2, 2, 1, 50, 8), 3.5, np.float16),
              np.random.default_rng(5).random((1, 2, 2, 1, 8)).astype(np.float16),
              (np.random.default_rng(6).random((1, 2, 1, 70, 4)) * 1e4).astype(np.float32)):
        data = kv.encode_cache(x, step=0.1, sinks=0)
        y = kv.decode_cache(data)
        assert y.shape == x.shape
        assert rel_err(y, x) < 0.1


def test_lossy_refuses_non_finite_and_bad_arguments():
    x = make_cache(L=1, T=20)
    x[0, 0, 0, 10, 0] = np.inf
    with pytest.raises(SSMZipError, match="finite"):
        kv.encode_cache(x, step=0.3)
    x = make_cache(L=1, T=20)
    with pytest.raises(ValueError, match="exactly one"):
        kv.encode_cache(x, bits=3, rel_error=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        kv.encode_cache(x)
    with pytest.raises(ValueError, match="positive"):
        kv.encode_cache(x, bits=-1)
    with pytest.raises(ValueError, match="mode"):
        kv.encode_cache(x, mode="lossier")


# ---------------------------------------------------------------- random access, append

def test_random_access_matches_full_decode():
    x = make_cache(L=4, T=333)
    data = kv.encode_cache(x, step=0.3, block_tokens=50)
    full = kv.decode_cache(data)
    assert np.array_equal(kv.decode_cache(data, layers=[2]), full[[2]])
    assert np.array_equal(kv.decode_cache(data, layers=[3, 0], tokens=(49, 151)), full[[3, 0]][:, :, :, 49:151])
    assert np.array_equal(kv.decode_cache(data, tokens=(0, 0)), full[:, :, :, :0])
    with pytest.raises(SSMZipError, match="out of range"):
        kv.decode_cache(data, layers=[4])
    with pytest.raises(SSMZipError, match="out of range"):
        kv.decode_cache(data, tokens=(10, 334))


@pytest.mark.parametrize("mode,kw", [("lossy", {"step": 0.3}), ("lossless", {}), ("sparse", {"sparsity": 0.5})])
def test_append_keeps_stored_bytes(mode, kw, tmp_path):
    x = make_cache(L=2, T=120)
    more = make_cache(L=2, T=30, seed=9)
    data = kv.encode_cache(x, mode=mode, block_tokens=64, **kw)
    before = kv.decode_cache(data)
    ioff = kv.open_archive(data).index_offset
    data2 = kv.append_cache(data, more)
    assert data2[:ioff] == data[:ioff]                          # nothing stored is rewritten
    y = kv.decode_cache(data2)
    assert y.shape == (2, 2, 2, 150, 32)
    assert np.array_equal(y[:, :, :, :120], before)
    if mode == "lossy":     # the new tokens use the stored steps
        steps = np.array(kv.inspect(data)["cache"]["steps"], np.float32)[:, :, None, None, None]
        assert np.all(np.abs(f32(y[:, :, :, 120:]) - f32(more)) <= steps / 2 + 2 ** -10 * np.abs(f32(more)))
    else:
        assert np.array_equal(y[:, :, :, 120:], kv.decode_cache(kv.encode_cache(more, mode=mode, sinks=0, **kw)))
    assert np.array_equal(kv.decode_cache(data2, tokens=(100, 140)), y[:, :, :, 100:140])
    # the same in place on a file, twice
    p = tmp_path / "c.sskv"
    p.write_bytes(data)
    assert kv.append_cache(p, more) is None
    kv.append_cache(str(p), more[:, :, :, :1])
    z = kv.decode_cache(p.read_bytes())
    assert z.shape[3] == 151 and np.array_equal(z[:, :, :, :150], y)
    assert kv.inspect(p.read_bytes())["cache"]["segments"] == [[0, 120], [120, 150], [150, 151]]


def test_append_refuses_mismatch_and_keeps_the_file(tmp_path):
    x = make_cache(L=2, T=40)
    p = tmp_path / "c.sskv"
    p.write_bytes(kv.encode_cache(x, step=0.3))
    before = p.read_bytes()
    with pytest.raises(SSMZipError, match="layers"):
        kv.append_cache(p, make_cache(L=3, T=5))
    with pytest.raises(SSMZipError, match="float32"):
        kv.append_cache(p, make_cache(L=2, T=5, dtype=np.float32))
    assert p.read_bytes() == before


# ---------------------------------------------------------------- sparse

@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.7, 1.0])
def test_sparse_exact_values(sparsity):
    x = make_cache(L=2, T=100, D=32)
    data = kv.encode_cache(x, mode="sparse", sparsity=sparsity, sinks=2)
    y = kv.decode_cache(data)
    assert y[:, :, :, :2].tobytes() == x[:, :, :, :2].tobytes()
    body, ref = y[:, :, :, 2:], x[:, :, :, 2:]
    kept = body != 0
    assert np.all(kept.sum(-1) <= 32 - round(sparsity * 32))
    assert np.array_equal(body[kept], ref[kept])                     # kept values exact
    # the kept ones are the largest in each vector
    smallest_kept = np.where(kept, np.abs(f32(ref)), np.inf).min(-1)
    largest_dropped = np.where(kept, -np.inf, np.abs(f32(ref))).max(-1)
    assert np.all(smallest_kept >= largest_dropped)


def test_sparse_quantised_values():
    x = make_cache(L=2, T=100)
    exact = kv.encode_cache(x, mode="sparse", sparsity=0.5)
    quant = kv.encode_cache(x, mode="sparse", sparsity=0.5, values=0.25)
    assert len(quant) < 0.6 * len(exact)
    y = kv.decode_cache(quant)
    assert rel_err(y, x) < 1.1 * rel_err(kv.decode_cache(exact), x) + 0.08
    with pytest.raises(ValueError, match="sparsity"):
        kv.encode_cache(x, mode="sparse")


# ---------------------------------------------------------------- bad data

def test_bad_data_is_one_clear_error():
    x = make_cache(L=2, T=100)
    data = kv.encode_cache(x, step=0.3, block_tokens=64)
    with pytest.raises(SSMZipError):
        kv.decode_cache(data[:-1])
    with pytest.raises(SSMZipError, match="magic"):
        kv.decode_cache(b"\0" * 64)
    with pytest.raises(SSMZipError, match="not a KV cache"):
        kv.decode_cache(kv.encode(np.zeros(10, np.float32)))
    rng = np.random.default_rng(0)
    for _ in range(40):                     # flipped bytes in the chunk data: always caught
        b = bytearray(data)
        i = int(rng.integers(16, kv.open_archive(data).index_offset))
        b[i] ^= 1 << int(rng.integers(8))
        with pytest.raises(SSMZipError):
            kv.decode_cache(bytes(b))


def test_lossy_payload_garbage_never_crashes():
    x = f32(make_cache(L=1, T=64, D=8)[0, 0]).transpose(1, 0, 2).reshape(64, 16)
    pieces, _ = ecsq.encode(x, 0.2)
    payload = b"".join(bytes(p) for p in pieces)
    rng = np.random.default_rng(1)
    for n in range(0, len(payload), 7):
        for bad in (payload[:n], payload[:n] + bytes(rng.integers(0, 256, 20, dtype=np.uint8))):
            try:
                ecsq.decode(bad, 64, 16, "t")
            except SSMZipError:
                pass


def test_transformers_dynamic_cache_both_ways():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    x = make_cache(L=2, T=10)
    data = kv.encode_cache(x, step=0.3)
    cache = kv.to_dynamic_cache(data)
    y = kv.decode_cache(data)
    assert np.array_equal(cache.layers[1].values[0].numpy(), y[1, 1])
    assert np.array_equal(kv.decode_cache(kv.encode_cache(cache, mode="lossless")), y)


def test_calibration_weights():
    from ssmzip.kv import calibrate
    sens = np.array([[1e-3, 1e-5], [1e-4, 0.0], [1e-4, 1e-4]])
    w = calibrate.weights(sens)
    assert w.shape == (3, 2) and np.all(np.isfinite(w)) and np.all(w > 0)
    assert np.exp(np.log(w).mean()) == pytest.approx(1.0)
    assert w[0, 0] < w[1, 0] < w[0, 1]                       # more sensitive: finer steps
    assert w[1, 0] == pytest.approx(w[2, 1])
    with pytest.raises(ValueError):
        calibrate.weights(np.ones(3))
    x = make_cache(L=3, T=100)
    plain = kv.encode_cache(x, step=0.3)
    weighted = kv.encode_cache(x, step=0.3, step_weights=w)
    steps = np.array(kv.inspect(weighted)["cache"]["steps"]) / np.array(kv.inspect(plain)["cache"]["steps"])
    assert np.allclose(steps, w, rtol=1e-3)
    with pytest.raises(ValueError, match="step_weights"):
        kv.encode_cache(x, step=0.3, step_weights=np.ones((2, 2)))


def test_calibration_sensitivity_on_a_tiny_model():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from ssmzip.kv import calibrate
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (1, 48))
    sens = calibrate.sensitivity(model, ids, context=32, step=0.5, sinks=2)
    assert sens.shape == (2, 2) and np.all(sens >= 0) and np.any(sens > 0)


@pytest.mark.parametrize("mode,kw", [("lossy", {"step": 0.3}), ("lossless", {}), ("sparse", {"sparsity": 0.5})])
def test_append_to_an_empty_cache(mode, kw):
    empty = make_cache(L=2, T=0)
    more = make_cache(L=2, T=9, seed=3)
    data = kv.append_cache(kv.encode_cache(empty, mode=mode, **kw), more)
    y = kv.decode_cache(data)
    assert y.shape == more.shape
    assert kv.inspect(data)["cache"]["segments"] == [[0, 0], [0, 9]]
    if mode == "lossless":
        assert y.tobytes() == more.tobytes()


def test_append_refuses_a_non_cache_archive():
    with pytest.raises(SSMZipError, match="not a KV cache"):
        kv.append_cache(kv.encode(np.zeros(10, np.float32)), make_cache(L=1, T=2))
