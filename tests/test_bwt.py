"""Level 1's Burrows-Wheeler path: the suffix sorter against a naive sort, the
transform and its inverse, the coded block round trip on the awkward inputs,
the transform preset (layout 5), corrupt payloads, and the C library
(native/bwt.c) giving the numba modules' bytes."""
import os
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import text_sample
from ssmzip.engine import LEVELS, Preset, decode_block, encode_block, native
from ssmzip.engine.bwt import bwt_forward, bwt_inverse, suffix_array
from ssmzip.engine.presets import TRANSFORM_BWT, TRANSFORM_NONE, transform_preset

BWT = LEVELS[1]


def _naive_bwt(data: bytes):
    rows = sorted(range(len(data) + 1), key=lambda i: data[i:])
    return bytes(data[i - 1] for i in rows if i > 0), rows.index(0), rows


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.lists(st.sampled_from(b"ab"), max_size=200).map(bytes))
def test_suffix_array_and_transform_match_a_naive_sort(data):
    last, primary, rows = _naive_bwt(data)
    assert suffix_array(data).tolist() == rows
    ours, p = bwt_forward(data)
    if data:
        assert (ours.tobytes(), p) == (last, primary)
    assert bwt_inverse(ours, p) == data


def _awkward_inputs():
    rng = np.random.default_rng(11)
    text = text_sample(40_000)
    return {
        "empty": b"",
        "one": b"\x00",
        "one-high": b"\xff",
        "equal": b"\x07" * 20_000,
        "two-symbols": rng.integers(0, 2, 9000, dtype=np.uint8).tobytes(),
        "period": b"abc" * 3000,
        "random": rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes(),
        "text": text,
        "repeats": text[:5000] * 5,
    }


INPUTS = _awkward_inputs()


@pytest.mark.parametrize("name", list(INPUTS))
def test_block_round_trip(name, backend):
    data = INPUTS[name]
    payload = encode_block(data, BWT)
    assert decode_block(payload, len(data), BWT) == data
    if name in ("equal", "period", "text", "repeats"):
        assert len(payload) < len(data) // 2
    if name == "random":              # incompressible: the model must not blow it up
        assert len(payload) < len(data) * 1.01 + 16


def test_inputs_around_block_boundaries(backend):
    import ssmzip
    data = text_sample(5000)
    for n in (1023, 1024, 1025, 2047, 2048, 2049, 5000):
        blob = ssmzip.compress(data[:n], level=1, block_size=1024)
        assert ssmzip.decompress(blob) == data[:n]


def test_corrupt_payload_gives_the_right_size_without_crash(backend):
    data = INPUTS["text"][:6000]
    payload = bytearray(encode_block(data, BWT))
    rng = random.Random(5)
    cases = [b"", b"\x00", bytes(payload[:3]), bytes(payload[:4]), bytes(payload[:40]),
             b"\xff\xff\xff\xff" + bytes(payload[4:]),            # primary far out of range
             b"\x00\x00\x00\x00" + bytes(payload[4:]),            # primary 0 (never valid)
             rng.randbytes(300)]
    for _ in range(20):
        bad = bytearray(payload)
        bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        cases.append(bytes(bad))
    for junk in cases:
        assert len(decode_block(junk, len(data), BWT)) == len(data)


def test_transform_preset_bytes():
    raw = BWT.to_bytes()
    assert raw[0] == 5 and len(raw) == 7                  # layout, level, no contexts, 2 x u16
    assert Preset.from_bytes(raw) == BWT and BWT.transform == TRANSFORM_BWT
    assert Preset.serialized_size(raw + b"junk") == len(raw)
    with pytest.raises(ValueError):
        Preset.from_bytes(raw[:2] + b"\x01\x00" + raw[3:])   # a context in a transform preset
    with pytest.raises(ValueError):
        Preset.from_bytes(raw[:3] + b"\x07\x00" + raw[5:])   # unknown transform
    with pytest.raises(ValueError):
        Preset.from_bytes(raw[:5] + b"\x2a\x00")             # block size 2^42
    with pytest.raises(ValueError):                          # a field it does not use, set
        Preset(1, (), 12, 0, 0, 10, 1, 1, 1, 2, 5, 22, transform=TRANSFORM_BWT)
    assert transform_preset(1, TRANSFORM_BWT, 20).block_size == 1 << 20
    assert all(p.transform == TRANSFORM_NONE for lv, p in LEVELS.items() if lv > 1)


def test_level_1_compresses_text():
    """The BWT path is there for speed, but it still compresses text well."""
    data = text_sample(60_000)
    assert len(encode_block(data, BWT)) < len(data) * 0.4


@pytest.mark.skipif(native.cm_kernel() is None and os.environ.get("SSMZIP_EXPECT_NATIVE") != "1",
                    reason="no C library here")
@pytest.mark.parametrize("name", list(INPUTS))
def test_native_gives_the_numba_bytes(name, monkeypatch):
    data = INPUTS[name]
    by_c = encode_block(data, BWT)
    monkeypatch.setattr(native, "cm_kernel", lambda: None)
    by_numba = encode_block(data, BWT)
    assert by_c == by_numba
    assert decode_block(by_c, len(data), BWT) == data
    monkeypatch.undo()
    assert decode_block(by_numba, len(data), BWT) == data


def test_a_block_that_needs_more_room_is_coded_again(backend, monkeypatch):
    """The coder gives up when its output room runs short (-1) and the block is coded
    again with the worst case's room: the payload is the same as with room to spare."""
    from ssmzip.engine import bwt_block
    data = INPUTS["random"][:3000] + INPUTS["text"][:3000]
    roomy = encode_block(data, BWT)
    monkeypatch.setattr(bwt_block, "_room", lambda n: (40, 12 * n + 64))
    assert encode_block(data, BWT) == roomy
    monkeypatch.setattr(bwt_block, "_room", lambda n: (40,))
    with pytest.raises(AssertionError, match="unreachable"):      # proves the first try did run short
        encode_block(data, BWT)
