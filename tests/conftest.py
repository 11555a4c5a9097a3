"""Shared helpers: deterministic sample data and stream wrappers.

The engine codes ~100 KB/s and allocates its model tables per block, so tests
use level 1 (small tables), inputs of a few KB and block sizes of 1 KiB.
"""
import io
import random

import pytest

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his "
         "from at which but have an they you were her she there been one all we their "
         "compression model context mixing stream block entropy coder arithmetic state "
         "space neural network learning predict probability byte file").split()

FAST = 1             # the level most tests use
BS = 1024            # the smallest block size, to get many blocks from little data


def text_sample(n: int, seed: int = 1) -> bytes:
    """English-like text (words, punctuation, line breaks), n bytes, deterministic."""
    rng = random.Random(seed)
    out, size = [], 0
    while size < n:
        w = WORDS[int(rng.random() ** 2 * len(WORDS))]
        r = rng.random()
        w += ". " if r < 0.08 else ",\n" if r < 0.1 else " "
        out.append(w)
        size += len(w)
    return "".join(out).encode()[:n]


def random_bytes(n: int, seed: int = 2) -> bytes:
    return random.Random(seed).randbytes(n)


class NonSeekable(io.RawIOBase):
    """A pipe-like reader over bytes: no seek, no tell, short reads."""

    def __init__(self, data: bytes, chunk: int = 997):
        self._data, self._pos, self._chunk = data, 0, chunk

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self._chunk, len(self._data) - self._pos)
        b[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


@pytest.fixture(scope="session")
def text():
    return text_sample(3000)


@pytest.fixture(scope="session")
def small_stream(text):
    """A 3-block level-1 stream (about 1.5 KB) for the corruption tests."""
    import ssmzip

    return ssmzip.compress(text[:2600], level=FAST, block_size=BS)


@pytest.fixture(params=["native", "numba"])
def backend(request, monkeypatch):
    """Runs a test on each coding backend of levels 1-6: the C library (native/)
    and the numba kernel. Where the library is not built the native run is
    skipped, unless SSMZIP_EXPECT_NATIVE=1 (CI) makes that a failure."""
    import os

    from ssmzip.engine import native
    if request.param == "numba":
        monkeypatch.setattr(native, "cm_kernel", lambda: None)
    elif native.cm_kernel() is None:
        if os.environ.get("SSMZIP_EXPECT_NATIVE") == "1":
            pytest.fail(f"the C library is expected but not in use: {native.describe()}")
        pytest.skip(f"no C library here: {native.describe()}")
    return request.param
