"""The lossy KV codec's C kernels (native/ecsq.c) against the numba reference:
the same bytes, the same decoded words, the same errors on bad data."""
import os

import numpy as np
import pytest

import ssmzip.kv as kv
from ssmzip.errors import SSMZipError
from ssmzip.kv import ecsq

if ecsq.native() is None:
    if os.environ.get("SSMZIP_EXPECT_NATIVE") == "1":
        raise RuntimeError("SSMZIP_EXPECT_NATIVE=1 but the C library is not there")
    pytest.skip("the C library was not built (numba only)", allow_module_level=True)


@pytest.fixture
def numba_only(monkeypatch):
    """Run the body with the numba kernels."""
    def use(flag):
        monkeypatch.setattr(ecsq, "_NATIVE", False if flag else None)
        if not flag:
            ecsq.native()
    return use


def both(fn, numba_only):
    numba_only(True)
    a = fn()
    numba_only(False)
    assert ecsq.native() is not None
    b = fn()
    return a, b


def cache(dtype, T=77, seed=0, wide=False, D=16):
    rng = np.random.default_rng(seed)
    x = rng.standard_t(4, (2, 2, 3, T, D)) * rng.uniform(0.1, 4, (2, 2, 3, 1, D))
    x[0, 0, 0, :, 3] += 9.5                      # an offset channel
    if wide:
        x[1, 1, 2, :, 5] *= 500                  # shifted channel, low bits raw
        x[1, 0, 1, 7, 2] = 3e3                   # an escape
    x[0, 1, 0, 5, 0] = 0.0
    x[0, 1, 0, 6, 1] = 1e-7                      # a float16 subnormal
    return x.astype(dtype) if dtype != "bfloat16" else (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, "bfloat16"])
@pytest.mark.parametrize("T,block", [(77, 32), (64, 64), (200, 1024)])
@pytest.mark.parametrize("wide,D", [(False, 16), (True, 16), (False, 7)])   # D=7: 21 channels, not 8k
def test_same_bytes_and_words(dtype, T, block, wide, D, numba_only):
    x = cache(dtype, T, wide=wide, D=D)
    dt = "bfloat16" if dtype == "bfloat16" else None
    for kw in ({"step": 0.3}, {"bits": 2.5}, {"rel_error": 0.04}, {"max_abs": 0.2}):
        a, b = both(lambda: kv.encode_cache(x, block_tokens=block, dtype=dt, **kw), numba_only)
        assert a == b, kw
        ya, yb = both(lambda: kv.decode_cache(a), numba_only)
        assert ya.tobytes() == yb.tobytes()


def test_garbage_same_verdict(numba_only):
    x = cache(np.float16, 64)[0, 0].transpose(1, 0, 2).reshape(64, -1).astype(np.float32)
    pieces, _ = ecsq.encode(x, 0.2)
    payload = b"".join(bytes(p) for p in pieces)
    rng = np.random.default_rng(2)
    for n in range(4, len(payload), 5):
        b = bytearray(payload)
        b[n] ^= int(rng.integers(1, 256))
        out = []
        for flag in (True, False):
            numba_only(flag)
            try:
                out.append(ecsq.decode(bytes(b), 64, x.shape[1], "t").tobytes())
            except SSMZipError:
                out.append("error")
        assert out[0] == out[1]
