"""The C backend (native/cm.c) against the numba kernel: the same bytes out, at
every level, on inputs that exercise every model (text with words, markup and
lines; repeats for the match model; random and constant bytes; block and
segment boundaries). Golden files are also checked on both (test_golden.py)."""
import os

import numpy as np
import pytest

from conftest import text_sample
from ssmzip.engine import LEVELS, decode_block, encode_block, native
from ssmzip.engine import state

pytestmark = pytest.mark.skipif(
    native.cm_kernel() is None and os.environ.get("SSMZIP_EXPECT_NATIVE") != "1",
    reason=f"no C library here: {native.describe()}")


def _inputs():
    rng = np.random.default_rng(7)
    text = text_sample(30_000)
    markup = b"".join(b"<page id=\"%d\">[[Link %d]] {{cite|%d}}\n" % (i, i * 7 % 13, i) for i in range(400))
    return {
        "empty": b"",
        "one": b"A",
        "equal": b"\x00" * 5000,
        "random": rng.integers(0, 256, 8000, dtype=np.uint8).tobytes(),
        "text": text,
        "markup": markup,
        "repeats": text[:3000] * 4,
        "segments": text_sample(state.SEGMENT + 1234, seed=3),   # crosses a segment boundary
    }


INPUTS = _inputs()


def _numba(monkeypatch):
    monkeypatch.setattr(native, "cm_kernel", lambda: None)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_same_bytes_as_numba(level, monkeypatch):
    preset = LEVELS[level]
    assert native.cm_kernel() is not None, native.describe()
    ours = {k: encode_block(v, preset) for k, v in INPUTS.items()}
    for k, blob in ours.items():
        assert decode_block(blob, len(INPUTS[k]), preset) == INPUTS[k], k
    _numba(monkeypatch)
    for k, v in INPUTS.items():
        theirs = encode_block(v, preset)
        assert theirs == ours[k], f"level {level}, {k}: native and numba differ"
        assert decode_block(theirs, len(v), preset) == v


def test_cross_decoding(monkeypatch):
    """Made by one backend, decoded by the other, both ways."""
    preset = LEVELS[6]
    data = INPUTS["markup"] + INPUTS["text"][:5000]
    by_native = encode_block(data, preset)
    _numba(monkeypatch)
    assert decode_block(by_native, len(data), preset) == data
    by_numba = encode_block(data, preset)
    monkeypatch.undo()
    assert decode_block(by_numba, len(data), preset) == data


def test_garbage_in_gives_the_right_size_out():
    """As with numba: any payload decodes to `size` bytes (the checksum catches it)."""
    rng = np.random.default_rng(3)
    for n in (0, 1, 7, 300):
        junk = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert len(decode_block(junk, 5000, LEVELS[6])) == 5000


def test_backend_env(monkeypatch):
    monkeypatch.setenv(native.ENV, "numba")
    assert native._load()[0] is None
    monkeypatch.setenv(native.ENV, "nonsense")
    with pytest.raises(native.BackendError):
        native._load()
    monkeypatch.setenv(native.ENV, "native")
    assert native._load()[0] is not None


def test_library_matches_this_version():
    """A library whose Segment layout differs from native.py's is refused, not called."""
    import ctypes
    lib = ctypes.CDLL(str(native._library_path()))
    lib.ssmzip_native_abi.restype = ctypes.c_int64
    assert lib.ssmzip_native_abi() == native.ABI
    assert ctypes.sizeof(native.Segment) == 8 * (len(native._SCALARS) + len(native._POINTERS) + 5)
