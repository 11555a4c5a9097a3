"""ssmzip.kv lossless codec: bit-exact round trips of tensors."""
import numpy as np
import pytest

import ssmzip.kv as kv
from ssmzip.kv import _rans, floatsplit
from ssmzip.kv.archive import METHOD_RAW, METHOD_SPLIT, ArchiveReader

RNG = np.random.default_rng(1234)


def bf16_of(x):
    """Round-to-nearest-even float32 -> bf16 bits (uint16)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def weights(shape, scale=0.02, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def same_bits(a, b):
    a = np.asarray(a)
    b = np.asarray(b)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def roundtrip(x, **kw):
    data = kv.encode(x, **kw)
    return data, kv.decode(data)


@pytest.mark.parametrize("shape", [(), (0,), (1,), (7,), (8,), (9,), (1000,), (3, 0, 2), (33, 17), (64, 48), (2, 3, 5, 7)])
@pytest.mark.parametrize("dt", ["float32", "float16", "bfloat16"])
def test_roundtrip_shapes(shape, dt):
    x = weights(shape, seed=len(shape))
    if dt == "float16":
        x = x.astype(np.float16)
        data, y = roundtrip(x)
    elif dt == "bfloat16":
        x = bf16_of(x)
        data, y = roundtrip(x, dtype="bfloat16")
    else:
        data, y = roundtrip(x)
    assert same_bits(x, y)
    assert y.shape == x.shape
    assert kv.inspect(data)["tensors"][0]["dtype"] == dt


@pytest.mark.parametrize("dt", [np.float32, np.float16])
def test_special_values(dt):
    info = np.finfo(dt)
    vals = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, info.tiny, -info.tiny, info.max, -info.max,
                     info.smallest_subnormal, -info.smallest_subnormal, 1.0, -1.0], dt)
    x = np.concatenate([vals, weights(5000, 1.0).astype(dt)])
    # NaNs with payloads and signs, subnormals of all sizes
    words = x.view(np.uint32 if dt == np.float32 else np.uint16).copy()
    if dt == np.float32:
        extra = np.array([0x7FC00001, 0xFFC12345, 0x7F800001, 0xFF8FFFFF, 0x00000001, 0x807FFFFF, 0x80000000], np.uint32)
    else:
        extra = np.array([0x7E01, 0xFE3F, 0x7C01, 0xFDFF, 0x0001, 0x83FF, 0x8000], np.uint16)
    words = np.concatenate([words, extra, RNG.integers(0, 1 << (8 * words.itemsize), 999, dtype=words.dtype)])
    x = words.view(dt)
    data, y = roundtrip(x)
    assert same_bits(x, y)


def test_bf16_special_and_random_bits():
    words = np.concatenate([
        bf16_of(weights(20000)),
        np.array([0x7FC1, 0xFFFF, 0x7F80, 0xFF80, 0x0001, 0x8001, 0x8000, 0x0000, 0x007F], np.uint16),
        RNG.integers(0, 1 << 16, 4000, dtype=np.uint16),
    ])
    data, y = roundtrip(words, dtype="bfloat16")
    assert same_bits(words, y)


def test_all_bit_patterns_fp16_and_bf16():
    allw = np.arange(1 << 16, dtype=np.uint16)
    for dt in ("float16", "bfloat16"):
        for w in (allw, RNG.permutation(allw)):
            data, y = roundtrip(w, dtype=dt)
            assert same_bits(w, y)


@pytest.mark.parametrize("dt", ["float8_e4m3fn", "float8_e5m2"])
def test_fp8(dt):
    w = np.concatenate([RNG.integers(0, 256, 3000, dtype=np.uint8), np.arange(256, dtype=np.uint8)])
    data, y = roundtrip(w.reshape(-1, 8), dtype=dt)
    assert same_bits(w.reshape(-1, 8), y)
    # a peaked distribution actually compresses
    g = np.clip(np.round(RNG.standard_normal(50000) * 3), -20, 20).astype(np.int8).view(np.uint8)
    data, y = roundtrip(g, dtype=dt)
    assert same_bits(g, y)


def test_constant_and_tiny_tensors():
    for x in (np.zeros(100000, np.float32), np.full((300, 64), -2.5, np.float16), np.ones(3, np.float32),
              np.float32(7.0), np.array([np.nan], np.float32)):
        data, y = roundtrip(x)
        assert same_bits(x, y)
    data, y = roundtrip(np.zeros(100000, np.float32))
    assert len(data) < 20000


def test_compresses_weights_and_uses_split():
    w = bf16_of(weights((512, 256)))
    data, y = roundtrip(w, dtype="bfloat16")
    assert same_bits(w, y)
    assert len(data) < 0.70 * w.nbytes
    r = ArchiveReader(data)
    assert {c.method for c in r.entries[0].chunks} == {METHOD_SPLIT}


def test_small_tensors_are_stored_raw():
    """Below SPLIT_MIN_ELEMENTS a float tensor is stored raw (its model would cost most of the
    gain), from SPLIT_MIN_ELEMENTS on it is split-coded, whatever the chunk size; both round-trip."""
    from ssmzip.kv.archive import SPLIT_MIN_ELEMENTS
    for n, method in ((SPLIT_MIN_ELEMENTS - 1, METHOD_RAW), (SPLIT_MIN_ELEMENTS, METHOD_SPLIT)):
        w = bf16_of(weights((n,)))
        for chunk_bytes in (1 << 20, 1024):
            data = kv.encode(w, dtype="bfloat16", chunk_bytes=chunk_bytes)
            assert same_bits(w, kv.decode(data))
            assert {c.method for c in ArchiveReader(data).entries[0].chunks} == {method}, (n, chunk_bytes)


def test_incompressible_falls_back_to_raw():
    w = RNG.integers(0, 1 << 32, 50000, dtype=np.uint32).view(np.float32)
    data, y = roundtrip(w)
    assert same_bits(w, y)
    r = ArchiveReader(data)
    assert {c.method for c in r.entries[0].chunks} == {METHOD_RAW}
    assert len(data) < w.nbytes + 200


def test_channel_models_pay_on_channel_structure():
    # channels with very different scales: grouped models must win over one table
    scales = np.exp(RNG.uniform(-8, 3, 96)).astype(np.float32)
    x = (RNG.standard_normal((2048, 96)).astype(np.float32) * scales)
    w = bf16_of(x)
    S, used, freqs, ctxmap = floatsplit.choose_model(w.reshape(-1), 16, 8, 96)
    assert ctxmap is not None and freqs.shape[0] > 1
    grouped = kv.encode(w, dtype="bfloat16")
    flat = kv.encode(w.reshape(-1), dtype="bfloat16")
    assert len(grouped) < 0.97 * len(flat)
    assert same_bits(kv.decode(grouped), w)


@pytest.mark.parametrize("C", [3, 5, 8, 12, 100])
def test_channel_periods(C):
    scales = np.exp(RNG.uniform(-6, 2, C)).astype(np.float32)
    x = RNG.standard_normal((400, C)).astype(np.float32) * scales
    for w, dt in ((bf16_of(x), "bfloat16"), (x, None), (x.astype(np.float16), None)):
        data, y = roundtrip(w, dtype=dt)
        assert same_bits(w, y)


def test_multi_chunk_and_threads():
    x = weights((1000, 130))
    for threads in (1, 3):
        data = kv.encode(x, chunk_bytes=40000, threads=threads)
        r = ArchiveReader(data)
        assert len(r.entries[0].chunks) > 10
        for t in (1, 2):
            assert same_bits(kv.decode(data, threads=t), x)
    # output independent of the thread count
    assert kv.encode(x, chunk_bytes=40000, threads=1) == kv.encode(x, chunk_bytes=40000, threads=3)


def test_batched_writer_same_bytes_for_any_thread_count():
    # float chunks go to the C encoder in batches (ArchiveWriter), integer chunks to a
    # thread pool, small floats raw: interleaved over many batches, the archive is the
    # same for every thread count and decodes to the inputs
    rng = np.random.default_rng(5)
    d = {}
    for i in range(9):
        d[f"w{i}"] = weights((300 + 7 * i, 96), seed=i)
        d[f"ids{i}"] = rng.integers(0, 50, 3000 + i).astype(np.int32)
        d[f"b{i}"] = weights(40 + i, seed=i).astype(np.float16)
    ref = kv.encode_dict(d, chunk_bytes=4096, threads=1)
    assert len(ref) < sum(np.asarray(v).nbytes for v in d.values())
    for threads in (2, 3):
        assert kv.encode_dict(d, chunk_bytes=4096, threads=threads) == ref
    out = kv.decode_dict(ref, threads=2)
    assert all(same_bits(d[k], out[k]) for k in d)


def test_non_contiguous_inputs_and_not_modified():
    base = weights((64, 80))
    views = [base[:, ::3], base.T, base[::-1], base[10:20, 5:60:7], np.asfortranarray(base)]
    for v in views:
        before = v.copy()
        data, y = roundtrip(v)
        assert same_bits(np.ascontiguousarray(v), y)
        assert same_bits(v, before)
    b16 = bf16_of(base)
    keep = b16.copy()
    roundtrip(b16[:, 1::2], dtype="bfloat16")
    assert same_bits(b16, keep)


def test_input_buffer_not_modified_readonly():
    x = weights(10000)
    x.setflags(write=False)
    data, y = roundtrip(x)
    assert same_bits(x, y)


def test_ml_dtypes_like_arrays_by_name():
    # an object whose dtype is named bfloat16 is taken as bf16 (ml_dtypes arrays)
    pytest.importorskip("ml_dtypes")
    import ml_dtypes

    x = weights(1000).astype(ml_dtypes.bfloat16)
    data, y = roundtrip(x)
    assert kv.inspect(data)["tensors"][0]["dtype"] == "bfloat16"
    assert same_bits(x.view(np.uint16), y)


def test_dict_roundtrip_mixed_dtypes_and_random_access():
    d = {
        "w": weights((100, 40)),
        "h": weights((30,)).astype(np.float16),
        "ids": np.arange(1000, dtype=np.int64),
        "mask": RNG.random(77) > 0.5,
        "scalar": np.float32(1.5),
        "empty": np.zeros((0,), np.float32),
        "f64": RNG.standard_normal(10),
        "ünïcode name": np.ones(3, np.int8),
    }
    data = kv.encode_dict(d)
    out = kv.decode_dict(data)
    assert list(out) == list(d)
    for k in d:
        assert same_bits(np.asarray(d[k]), out[k]) and out[k].dtype == np.asarray(d[k]).dtype
    part = kv.decode_dict(data, names=["ids"])
    assert list(part) == ["ids"] and same_bits(part["ids"], d["ids"])
    r = kv.open_archive(data)
    assert r.names() == list(d)
    with pytest.raises(kv.SSMZipError, match="no tensor named"):
        kv.decode_dict(data, names=["nope"])
    with pytest.raises(kv.SSMZipError, match="use decode_dict"):
        kv.decode(data)


@pytest.mark.parametrize("threads", [1, 2])
def test_decoded_tensors_are_separate_and_writable(threads):
    # the tensors are decoded into one shared allocation: each must still be its own
    # aligned, writable array that no other tensor overlaps
    d = {f"t{i}": weights((3 + i, 7 + 5 * i)) for i in range(12)}
    d["big"] = weights((1200, 1024))
    out = kv.decode_dict(kv.encode_dict(d), threads=threads)
    names = list(out)
    for i, a in enumerate(names):
        assert same_bits(d[a], out[a]) and out[a].flags.writeable and out[a].flags.aligned
        for b in names[i + 1:]:
            assert not np.shares_memory(out[a], out[b])
    out["t0"][...] = 0
    assert same_bits(d["t1"], out["t1"])


def test_bad_arguments():
    with pytest.raises(ValueError):
        kv.encode(weights(10), mode="lossy")
    with pytest.raises(kv.SSMZipError):
        kv.encode(np.array(["a", "b"]))
    with pytest.raises(kv.SSMZipError):
        kv.encode(np.zeros(4, np.float32), dtype="bfloat16")
    with pytest.raises(kv.SSMZipError):
        kv.encode(b"bytes")
    with pytest.raises(ValueError):
        kv.decode(kv.encode(weights(3)), out="jax")


def test_big_endian_input_values_kept():
    x = weights(100).astype(">f4")
    data, y = roundtrip(x)
    assert np.array_equal(y, x.astype("<f4")) and same_bits(y, x.astype("<f4"))


def test_xxh64_vectors():
    assert _rans.checksum(np.zeros(0, np.uint8)) == 0xEF46DB3751D8E999
    assert _rans.checksum(np.frombuffer(b"abc", np.uint8)) == 0x44BC2CF5AD770999
    assert _rans.checksum(np.arange(100, dtype=np.uint8)) == 0x6AC1E58032166597


def test_reciprocal_division_exact():
    # the encoder's q = (x * rcp) >> 32 >> shift must equal x // f for every state it can see
    freqs = np.arange(1, 4097, dtype=np.uint32).reshape(1, -1)
    enc0 = np.empty(4096, np.uint64)
    enc1 = np.empty(4096, np.uint64)
    _rans.build_enc_table(freqs, enc0, enc1)
    xs = np.concatenate([np.arange(1 << 15, (1 << 15) + 5000), (1 << 31) - 1 - np.arange(5000),
                         RNG.integers(1 << 15, 1 << 31, 20000)]).astype(np.int64)
    for f in list(range(1, 40)) + [255, 256, 257, 1000, 2047, 2048, 2049, 4095, 4096]:
        e1 = int(enc1[f - 1])
        rcp, shift = e1 & 0xFFFFFFFF, e1 >> 48
        q = ((xs.astype(object) * rcp) >> 32) >> shift
        cmpl = (e1 >> 32) & 0xFFFF
        bias = int(enc0[f - 1]) >> 32
        xnew = xs.astype(object) + bias + q * cmpl
        cum = bias if f > 1 else bias - 4095
        want = (xs // f) * 4096 + xs % f + cum
        assert np.array_equal(xnew.astype(np.int64), want.astype(np.int64)), f


def test_torch_not_imported():
    import subprocess
    import sys

    import os

    code = ("import sys, numpy as np, ssmzip.kv as kv, ssmzip.kv.safetensors, ssmzip.kv.__main__;"
            "kv.decode(kv.encode(np.ones((4, 4), np.float32))); print('torch' in sys.modules)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert out.strip() == "False"


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 48, generator=g) * 0.02
    cases = [base, base.to(torch.bfloat16), base.to(torch.float16), base.T, base.to(torch.bfloat16)[:, ::3],
             torch.tensor(1.5, dtype=torch.bfloat16), torch.zeros(0, 3, dtype=torch.bfloat16),
             torch.arange(10), torch.tensor([True, False])]
    if hasattr(torch, "float8_e4m3fn"):
        cases.append(base.to(torch.float8_e4m3fn))
    nan = torch.tensor([float("nan"), -0.0, float("inf"), 1e-40], dtype=torch.float32)
    cases.append(nan)
    for t in cases:
        keep = t.clone()
        data = kv.encode(t)
        y = kv.decode(data, out="torch")
        assert y.dtype == t.dtype and tuple(y.shape) == tuple(t.shape)
        iv = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        assert torch.equal(y.contiguous().view(iv), t.contiguous().view(iv))
        assert torch.equal(t.contiguous().view(iv), keep.contiguous().view(iv))   # input not modified
        n = kv.decode(data)
        assert n.shape == tuple(t.shape)
    d = kv.decode_dict(kv.encode_dict({"a": base.to(torch.bfloat16), "b": base}), out="torch")
    assert d["a"].dtype == torch.bfloat16 and torch.equal(d["b"], base)
