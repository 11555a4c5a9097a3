"""_join.join: the same bytes as b"".join, on any number of threads."""
import numpy as np
import pytest

from ssmzip.kv import _join, floatsplit


def pieces(seed):
    rng = np.random.default_rng(seed)
    out = []
    total = 0
    while total < _join.THREADED_MIN + 12345:
        kind = rng.integers(0, 4)
        n = int(rng.integers(0, 300_000))
        if kind == 0:
            p = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        elif kind == 1:
            p = rng.integers(0, 256, n, dtype=np.uint8)
        elif kind == 2:
            p = rng.integers(0, 1 << 16, n // 2, dtype=np.uint16)  # a coded stream's words
        else:
            p = b"" if n % 2 else bytes([n % 251])
        out.append(p)
        total += len(memoryview(p).cast("B"))
    return out


@pytest.mark.parametrize("threads", [1, 2, 3, 7, 64])
def test_join_same_as_bytes_join(threads):
    if floatsplit.native() is not None:
        assert _join._api()  # the threaded path is the one tested
    ps = pieces(threads)
    got = _join.join(ps, threads)
    assert type(got) is bytes and got == b"".join(ps)
    hash(got)  # an ordinary bytes object


def test_join_small_and_empty():
    assert _join.join([], 2) == b""
    assert _join.join([b"ab", np.frombuffer(b"cd", np.uint8), b""], 2) == b"abcd"
