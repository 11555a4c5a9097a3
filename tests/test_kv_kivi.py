"""ssmzip.kv.kivi: KIVI-style fixed-rate packed KV cache."""
import struct

import numpy as np
import pytest

from ssmzip.errors import SSMZipError
from ssmzip.kv import kivi


def kv(shape, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    K = rng.standard_normal(shape) * rng.uniform(0.1, 4.0, shape[-1])  # per-channel outliers
    V = rng.standard_normal(shape)
    return K.astype(dtype), V.astype(dtype)


def check(K, V, bits, group, residual=0, sinks=0):
    p = kivi.pack(K, V, bits=bits, group=group, residual=residual, sinks=sinks)
    Kh, Vh = p.dequantize()
    assert Kh.shape == K.shape and Vh.shape == V.shape
    assert Kh.dtype == np.float32 and Vh.dtype == np.float32
    T, D = K.shape[-2:]
    ns, nq = kivi._split(T, group, residual, sinks)
    assert nq % group == 0 and T - ns - nq >= min(residual, T - ns)
    B = K.size // (T * D) if T * D else 0
    L = 2**bits - 1
    vg = min(group, D)
    for x, xh, is_key in ((K, Kh, True), (V, Vh, False)):
        x = x.reshape(B, T, D).astype(np.float32)
        xh = xh.reshape(B, T, D)
        exact = np.r_[0:ns, ns + nq:T]
        np.testing.assert_array_equal(xh[:, exact], x[:, exact].astype(np.float16).astype(np.float32))
        q = x[:, ns:ns + nq].astype(np.float64)
        if is_key:
            g = q.reshape(B, nq // group, group, D)
            ax, s = 2, p.arrays[2].reshape(B, nq // group, 1, D)
        else:
            g = q.reshape(B, nq, D // vg, vg)
            ax, s = 3, p.arrays[4].reshape(B, nq, D // vg, 1)
        s = s.astype(np.float64)
        # the stored scale is the range / L, widened only by fp16 rounding of min and scale
        lo, hi = g.min(axis=ax, keepdims=True), g.max(axis=ax, keepdims=True)
        assert (s <= (hi - lo + 2**-10 * np.abs(lo) + 2**-24) / L * (1 + 2**-10) + 2**-24).all()
        bound = np.broadcast_to(s / 2 + 1e-6 * (1 + np.abs(g)), g.shape)
        err = np.abs(xh[:, ns:ns + nq].astype(np.float64) - q).reshape(g.shape)
        assert (err <= bound).all(), (is_key, float((err - bound).max()))
    return p


@pytest.mark.parametrize("shape", [(4, 96, 32), (2, 3, 80, 16), (2, 1, 2, 50, 8)])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_error_bound_and_exact_tokens(shape, bits):
    K, V = kv(shape, seed=bits)
    check(K, V, bits, group=16)
    check(K, V, bits, group=8, residual=5, sinks=3)
    check(K.astype(np.float16), V.astype(np.float16), bits, group=16, residual=16)


def test_fp16_input_and_group_equals_head_dim():
    K, V = kv((2, 64, 32), seed=3, dtype=np.float16)
    p = check(K, V, 4, group=32, sinks=4, residual=7)
    assert p.dtype == "float16"
    T = 64
    ns, nq = kivi._split(T, 32, 7, 4)
    assert (ns, nq) == (4, 32)  # 28 tail tokens >= residual 7, quantised part is whole groups


def test_bits_per_element_long_cache():
    K, V = kv((2, 1024, 64), seed=5)
    for bits in (2, 4):
        p = kivi.pack(K, V, bits=bits, group=32)
        assert abs(p.bits_per_element - (bits + 32 / 32)) < 0.1
        assert p.nbytes == 2 * K.size * (bits + 1) // 8  # +1 bit: fp16 scale and min per 32
    p = kivi.pack(K, V, bits=2, group=32, residual=32, sinks=4)
    # 4 sinks + 60 recent tokens in fp16, 960 quantised tokens
    assert p.bits_per_element == (960 * 3 + 64 * 16) / 1024


def test_roundtrip_bytes():
    K, V = kv((2, 2, 70, 16), seed=7)
    for bits in (2, 4, 8):
        p = kivi.pack(K, V, bits=bits, group=16, residual=3, sinks=2)
        b = p.to_bytes()
        assert b[:8] == b"SSKIVI\x00\x01"
        assert len(b) == p.nbytes + 25 + 8 * K.ndim + 4
        q = kivi.PackedKV.from_bytes(b)
        assert (q.shape, q.bits, q.group, q.residual, q.sinks, q.dtype) == (K.shape, bits, 16, 3, 2, "float32")
        for a, c in zip(p.dequantize(), q.dequantize()):
            np.testing.assert_array_equal(a, c)
        q2 = kivi.PackedKV.from_bytes(bytearray(b))
        np.testing.assert_array_equal(q2.dequantize()[1], p.dequantize()[1])


def test_constant_input():
    K = np.full((2, 64, 16), 0.3, np.float32)
    V = np.full((2, 64, 16), -7.0, np.float32)
    p = check(K, V, 2, group=16)
    Kh, Vh = p.dequantize()
    np.testing.assert_allclose(Kh, 0.3, atol=2e-4)
    np.testing.assert_array_equal(Vh, -7.0)
    Kh, Vh = kivi.pack(np.zeros_like(K), np.zeros_like(V), bits=4, group=16).dequantize()
    assert not Kh.any() and not Vh.any()


def test_short_and_empty():
    K, V = kv((3, 10, 16), seed=9)
    p = kivi.pack(K, V, bits=2, group=32)
    Kh, Vh = p.dequantize()
    np.testing.assert_array_equal(Kh, K.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(Vh, V.astype(np.float16).astype(np.float32))
    assert p.nbytes == 2 * K.size * 2
    for shape in [(3, 0, 16), (0, 4, 0, 8), (2, 5, 0)]:
        K = np.zeros(shape, np.float32)
        p = kivi.pack(K, K, bits=4, group=4)
        q = kivi.PackedKV.from_bytes(p.to_bytes())
        for x in p.dequantize() + q.dequantize():
            assert x.shape == shape
    assert kivi.pack(np.zeros((3, 0, 16)), np.zeros((3, 0, 16)), group=16).bits_per_element == 0.0


def test_sinks_larger_than_cache():
    K, V = kv((2, 20, 8), seed=11)
    Kh, _ = kivi.pack(K, V, bits=2, group=4, sinks=50).dequantize()
    np.testing.assert_array_equal(Kh, K.astype(np.float16).astype(np.float32))


def test_bad_arguments():
    K, V = kv((2, 64, 48), seed=13)
    with pytest.raises(ValueError, match="divide"):
        kivi.pack(K, V, bits=4, group=32)
    kivi.pack(K, V, bits=4, group=64)  # group >= D: one value group per token
    with pytest.raises(ValueError):
        kivi.pack(K, V, bits=3, group=16)
    with pytest.raises(ValueError):
        kivi.pack(K, V[:, :10], bits=4, group=16)
    with pytest.raises(ValueError):
        kivi.pack(K, V, bits=4, group=0)
    with pytest.raises(ValueError):
        kivi.pack(K, V, bits=4, group=16, residual=-1)
    with pytest.raises(ValueError):
        kivi.pack(K.astype(np.int32), V, bits=4, group=16)


def good_bytes():
    K, V = kv((2, 40, 8), seed=17)
    return kivi.pack(K, V, bits=4, group=8, residual=4, sinks=1).to_bytes()


def header(b, **kw):
    f = dict(zip(["magic", "version", "bits", "dtype", "ndim", "group", "residual", "sinks"],
                 kivi._HEAD.unpack_from(b)))
    f.update(kw)
    return kivi._HEAD.pack(*f.values())


def test_bad_bytes():
    b = good_bytes()
    n = kivi._HEAD.size
    bad = [
        b"", b"SSKIVI", b[:n + 3], b[:-1], b[:-100], b + b"\0",
        b"XXKIVI\x00\x01" + b[8:],
        header(b, version=2) + b[n:],
        header(b, bits=3) + b[n:],
        header(b, dtype=99) + b[n:],
        header(b, group=0) + b[n:],
        header(b, group=3) + b[n:],  # 3 does not divide D=8
        header(b, group=16) + b[n:],  # sizes no longer match
        header(b, ndim=1) + b[n:],
        header(b, ndim=200) + b[n:],
        header(b, sinks=0) + b[n:],
        b[:n] + struct.pack("<3Q", 2**20, 2**20, 2**20) + b[n + 24:],  # hostile shape
        b[:n] + struct.pack("<3Q", 2**63, 2**63, 8) + b[n + 24:],
        b[:n] + struct.pack("<3Q", 0, 2**62, 8) + b[n + 24:],
        b[:n] + struct.pack("<3Q", 2, 41, 8) + b[n + 24:],
    ]
    for i in (0, 9, n + 5, len(b) // 2, len(b) - 3):
        c = bytearray(b)
        c[i] ^= 0x40
        bad.append(bytes(c))
    for data in bad:
        with pytest.raises(SSMZipError) as e:
            kivi.PackedKV.from_bytes(data)
        assert "\n" not in str(e.value)


def test_torch_input():
    torch = pytest.importorskip("torch")
    K, V = kv((2, 3, 48, 16), seed=19)
    Kt = torch.from_numpy(K).to(torch.bfloat16)
    Vt = torch.from_numpy(V).to(torch.bfloat16)
    p = kivi.pack(Kt, Vt, bits=4, group=16, residual=8)
    assert p.dtype == "bfloat16"
    ref = kivi.pack(Kt.float().numpy(), Vt.float().numpy(), bits=4, group=16, residual=8)
    for a, c in zip(p.dequantize(), ref.dequantize()):
        np.testing.assert_array_equal(a, c)


class FakeTensor:
    """Just the torch.Tensor methods kivi uses, to cover that path without torch."""

    def __init__(self, a, dtype):
        self.a, self.dtype = a, dtype

    def detach(self):
        return self

    def cpu(self):
        return self

    def float(self):
        return FakeTensor(self.a.astype(np.float32), "torch.float32")

    def numpy(self):
        return self.a


def test_tensor_like_input():
    K, V = kv((3, 40, 8), seed=23, dtype=np.float16)
    p = kivi.pack(FakeTensor(K, "torch.float16"), FakeTensor(V, "torch.float16"), bits=2, group=8)
    assert p.dtype == "float16"
    for a, c in zip(p.dequantize(), kivi.pack(K, V, bits=2, group=8).dequantize()):
        np.testing.assert_array_equal(a, c)
