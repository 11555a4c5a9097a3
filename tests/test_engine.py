"""The engine alone: coder, tables, presets, and encode_block/decode_block round trips."""
import dataclasses
import random

import numpy as np
import pytest
from numba import njit

from ssmzip.engine import LEVELS, Preset, decode_block, encode_block, preset_for_level
from ssmzip.engine import counters as C
from ssmzip.engine.coder import decode_bit, decode_start, encode_bit, encode_flush


def _text(n, seed=1):
    rnd = random.Random(seed)
    words = ["the", "of", "compression", "state", "space", "model", "<page>", "[[link]]", "1987",
             "and", "Mamba", "arithmetic", "coder", "\n", "context", "mixing", "&amp;"]
    out = []
    size = 0
    while size < n:
        w = rnd.choice(words)
        out.append(w)
        size += len(w) + 1
    return " ".join(out).encode()[:n]


CASES = {
    "empty": b"",
    "one": b"x",
    "zero": b"\0",
    "all-equal": b"a" * 5000,
    "random": random.Random(7).randbytes(3000),
    "text": _text(6000),
    "all-bytes": bytes(range(256)) * 8,
}


@pytest.mark.parametrize("level", sorted(LEVELS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_every_level(level, name):
    data = CASES[name]
    preset = preset_for_level(level)
    payload = encode_block(data, preset)
    assert decode_block(payload, len(data), preset) == data


def test_deterministic_and_compresses():
    data = _text(20000)
    preset = preset_for_level(6)
    a = encode_block(data, preset)
    b = encode_block(data, preset)
    assert a == b
    assert len(a) < len(data) // 3


def _records(n, seed=3):
    """Structured text with long repeats, which the high orders and the match model catch."""
    rnd = random.Random(seed)
    out = []
    while sum(map(len, out)) < n:
        k = rnd.randrange(300)
        out.append(f"<page><title>Entry {k}</title><id>{k * 7}</id><text>{_text(60, k).decode()}</text></page>\n")
    return "".join(out).encode()[:n]


def test_richer_levels_beat_level_1_on_text():
    data = _records(40000)
    sizes = {lv: len(encode_block(data, preset_for_level(lv))) for lv in (1, 6, 9)}
    assert sizes[6] < sizes[1] and sizes[9] < sizes[1]


def test_progress_is_reported_monotonically():
    data = _text(150000)
    seen = []
    payload = encode_block(data, preset_for_level(1), progress=seen.append)
    assert seen and seen[-1] == len(data) and seen == sorted(seen)
    seen.clear()
    assert decode_block(payload, len(data), preset_for_level(1), progress=seen.append) == data
    assert seen[-1] == len(data)


def test_garbage_payload_gives_right_size_without_crash():
    preset = preset_for_level(6)
    for payload in (b"", b"\xff" * 10, random.Random(1).randbytes(200)):
        out = decode_block(payload, 1000, preset)
        assert len(out) == 1000


def test_preset_bytes_round_trip_and_validation():
    for preset in LEVELS.values():
        raw = preset.to_bytes()
        assert Preset.from_bytes(raw) == preset
        assert Preset.serialized_size(raw + b"junk") == len(raw)
    raw = bytearray(LEVELS[6].to_bytes())
    with pytest.raises(ValueError):
        Preset.from_bytes(bytes(raw[:-1]))
    bad = bytearray(raw)
    bad[0] = 99                                        # unknown layout
    with pytest.raises(ValueError):
        Preset.from_bytes(bytes(bad))
    with pytest.raises(ValueError):
        dataclasses.replace(LEVELS[6], table_bits=40)   # would ask for 1 TB
    # the widest ranges a preset may use (level 9's), and one past each
    from ssmzip.engine import presets
    dataclasses.replace(LEVELS[6], mixers=5, apms=5, contexts=tuple(range(presets.N_CTX_KINDS)),
                        mixer_skip=1024, apm_first=4, apm3_bits=12, mixer_design=presets.MIXERS_WIDE)
    dataclasses.replace(LEVELS[6], mixer_skip=0, apm_first=0, apm3_bits=8, mixer_design=presets.MIXERS_CLASSIC)
    for bad_fields in ({"mixers": 6}, {"mixers": 0}, {"apms": 6}, {"apms": 1},
                       {"contexts": (presets.N_CTX_KINDS,)}, {"mixer_skip": 1025}, {"mixer_skip": -1},
                       {"apm_first": 5}, {"apm3_bits": 7}, {"apm3_bits": 13}, {"mixer_design": 2},
                       {"mixer_design": -1}):
        with pytest.raises(ValueError):
            dataclasses.replace(LEVELS[6], **bad_fields)
    with pytest.raises(ValueError):
        dataclasses.replace(LEVELS[6], contexts=(0, 0))
    with pytest.raises(ValueError):
        preset_for_level(10)


def test_squash_stretch_tables():
    assert C.SQUASH[2047] == 2048                       # squash(0) = 1/2
    assert np.all(np.diff(C.SQUASH) >= 0)
    assert C.SQUASH.min() >= 1 and C.SQUASH.max() <= 4095
    assert np.all(np.diff(C.STRETCH) >= 0)
    for d in range(-1000, 1001, 37):                    # stretch inverts squash where it is steep
        assert abs(C.STRETCH[C.SQUASH[d + 2047]] - d) <= 8


def test_state_machine_is_closed_and_counts_move_the_right_way():
    nxt, counts = C.STATE_NEXT, C.STATE_COUNTS
    assert nxt.max() < C.N_STATES <= 256
    for s in range(C.N_STATES):
        n0, n1 = counts[s]
        a0, _ = counts[nxt[s, 0]]
        _, b1 = counts[nxt[s, 1]]
        assert a0 >= min(n0 + 1, a0) and a0 >= 1
        assert b1 >= 1


@njit(cache=True)
def _code_bits(bits, probs, out):
    x1, x2, op = 0, 0xFFFFFFFF, 0
    for i in range(bits.shape[0]):
        x1, x2, op = encode_bit(x1, x2, bits[i], probs[i], out, op)
    return encode_flush(x1, out, op)


@njit(cache=True)
def _decode_bits(src, probs, out):
    x1, x2 = 0, 0xFFFFFFFF
    x, ip = decode_start(src)
    for i in range(out.shape[0]):
        out[i], x1, x2, x, ip = decode_bit(x1, x2, x, probs[i], src, ip)


def test_coder_round_trip_with_extreme_probabilities():
    rng = np.random.default_rng(5)
    n = 20000
    probs = rng.integers(1, 4096, n)
    probs[::7] = 1
    probs[::11] = 4095
    bits = (rng.integers(0, 4096, n) < probs).astype(np.int64)
    bits[::13] ^= 1                                     # some badly predicted bits too
    out = np.zeros(n * 2 + 16, dtype=np.uint8)
    size = _code_bits(bits, probs, out)
    back = np.zeros(n, dtype=np.int64)
    _decode_bits(out[:size].copy(), probs, back)
    assert np.array_equal(back, bits)


def test_block_flush_and_start_match_the_coder():
    """block.py opens and closes the coder in plain Python (no numba import on the
    C backend); it must agree with coder.py's numba versions."""
    from ssmzip.engine import block
    out_a, out_b = np.zeros(4, np.uint8), np.zeros(4, np.uint8)
    for x1 in (0, 1, 0x12345678, 0xFFFFFFFF):
        assert block._encode_flush(x1, out_a, 1) == encode_flush(x1, out_b, 1) and (out_a == out_b).all()
    for src in (b"", b"\x01", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"):
        a = np.frombuffer(src, np.uint8)
        assert block._decode_start(a) == decode_start(a)
