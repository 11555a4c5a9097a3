"""The file format: layout, validation of every field, hostile headers."""
import dataclasses
import io
import struct
import tracemalloc
import zlib

import pytest

import ssmzip
from ssmzip import container as C
from ssmzip.engine import presets, preset_for_level
from ssmzip.errors import SSMZipError

from conftest import BS, FAST, NonSeekable

P1 = preset_for_level(FAST)


def crc(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def raw_header(version=C.VERSION, flags=0, block_size=BS, preset=None) -> bytes:
    """A header with a valid checksum over whatever fields we are given."""
    pb = preset if preset is not None else P1.to_bytes()
    head = C.MAGIC + struct.pack("<BBIH", version, flags, block_size, len(pb)) + pb
    return head + struct.pack("<I", crc(head))


def stream(blocks, block_size=BS, count=None, total=None, header=None) -> bytes:
    """A stream from (record, payload) pairs; count and total may lie. All checksums valid."""
    records = [r for r, _ in blocks]
    body = b"".join(r.pack_header() + p for r, p in blocks)
    index = struct.pack("<BQQ", 0, len(records) if count is None else count,
                        sum(r.size for r in records) if total is None else total)
    index += b"".join(r.pack() for r in records)
    index += struct.pack("<I", crc(index))
    footer = struct.pack("<Q", len(index))
    footer += struct.pack("<I", crc(footer)) + C.FOOTER_MAGIC
    return (header or raw_header(block_size=block_size)) + body + index + footer


def stored(data: bytes):
    return C.BlockRecord(C.KIND_STORED, len(data), len(data), crc(data), crc(data)), data


def read_both(data: bytes):
    """Decode through the seekable path and the pipe path; both must agree."""
    a = ssmzip.decompress(data)
    with ssmzip.SSMZipFile(NonSeekable(data), "rb") as f:
        b = f.read()
    assert a == b
    return a


def errors_both(data: bytes) -> tuple:
    """The error messages of the seekable and the pipe path (both must fail)."""
    msgs = []
    for src in (io.BytesIO(data), NonSeekable(data)):
        with pytest.raises(SSMZipError) as e:
            with ssmzip.SSMZipFile(src, "rb") as f:
                f.read()
        msg = str(e.value)
        assert msg and "\n" not in msg
        msgs.append(msg)
    return tuple(msgs)


# ---------------------------------------------------------------- layout


def test_crafted_stream_is_what_the_writer_writes():
    data = b"x" * 1500
    blocks = [stored(data[:BS]), stored(data[BS:])]
    s = stream(blocks)
    assert read_both(s) == data
    assert C.pack_header(P1, BS) == raw_header()
    assert s.endswith(C.pack_trailer([r for r, _ in blocks], len(data)))


def test_empty_stream_layout():
    s = ssmzip.compress(b"", level=FAST, block_size=BS)
    assert s.startswith(C.MAGIC) and s.endswith(C.FOOTER_MAGIC)
    assert len(s) == len(raw_header()) + 21 + C.FOOTER_SIZE
    assert read_both(s) == b""


def test_incompressible_block_is_stored_and_compressible_is_coded(text):
    import random

    rnd = random.Random(5).randbytes(BS)
    s = ssmzip.compress(rnd + text[:BS], level=FAST, block_size=BS)
    kinds = [b.kind for b in ssmzip.info(io.BytesIO(s)).blocks]
    assert kinds == [C.KIND_STORED, C.KIND_CODED]
    assert read_both(s) == rnd + text[:BS]


def test_header_round_trip():
    h = C.read_header(io.BytesIO(C.pack_header(P1, 4096) + b"rest"))
    assert h.preset == P1 and h.block_size == 4096 and h.size == len(raw_header())


# ---------------------------------------------------------------- header validation


@pytest.mark.parametrize("data, msg", [
    (b"", "empty input"),
    (b"\xfdSS", "truncated file"),
    (b"PK\x03\x04" + b"\0" * 100, "bad magic"),
    (b"\xfd7zXZ\x00" + b"\0" * 100, "bad magic"),
])
def test_not_ssmzip(data, msg):
    assert all(msg in m for m in errors_both(data))


def test_unknown_version():
    s = bytearray(ssmzip.compress(b"abc", level=FAST))
    s[6] = 7
    assert errors_both(bytes(s)) == ("unsupported format version 7",) * 2


def test_header_checksum():
    s = bytearray(ssmzip.compress(b"abc", level=FAST))
    s[9] ^= 1                       # block size byte, checksum not updated
    assert all("header checksum mismatch" == m for m in errors_both(bytes(s)))


def test_unknown_flags():
    s = stream([stored(b"abc")], header=raw_header(flags=0x80))
    assert all("unsupported header flags" in m for m in errors_both(s))


@pytest.mark.parametrize("bs", [0, 1, 1023, (1 << 30) + 1, 0xFFFFFFFF])
def test_block_size_out_of_range(bs):
    s = stream([stored(b"abc")], header=raw_header(block_size=bs))
    assert all("invalid block size" in m for m in errors_both(s))


def test_bad_preset_bytes():
    s = stream([stored(b"abc")], header=raw_header(preset=b"\x01\x06"))
    assert all("bad preset in header" in m for m in errors_both(s))
    s = stream([stored(b"abc")], header=raw_header(preset=b""))
    assert all("bad preset in header" in m for m in errors_both(s))


def test_preset_asking_for_huge_memory_is_refused():
    # Valid by the engine's ranges, but its tables would take gigabytes.
    p9 = preset_for_level(9)
    big = dataclasses.replace(p9, contexts=tuple(range(presets.N_CTX_KINDS)),
                              table_bits=presets.MAX_TABLE_BITS)
    assert big.memory_estimate() > C.MAX_MODEL_MEMORY
    s = stream([stored(b"abc")], header=raw_header(preset=big.to_bytes()))
    assert all("model memory" in m for m in errors_both(s))


# ---------------------------------------------------------------- blocks and index


def test_block_kinds_and_sizes_are_checked():
    ok = stored(b"a" * 10)
    c = ok[0].crc
    bad = [
        (C.BlockRecord(3, 10, 10, c, c), ok[1], "unknown block type 3"),
        (C.BlockRecord(C.KIND_STORED, 10, 9, c, crc(ok[1][:9])), ok[1][:9], "inconsistent stored"),
        (C.BlockRecord(C.KIND_STORED, 10, 10, c, c ^ 1), ok[1], "inconsistent stored"),
        (C.BlockRecord(C.KIND_CODED, 10, 10, c, c), ok[1], "implausible coded size"),
        (C.BlockRecord(C.KIND_STORED, BS + 1, BS + 1, 0, 0), b"a" * (BS + 1), "invalid size"),
        (C.BlockRecord(C.KIND_STORED, 0, 0, 0, 0), b"", "invalid size"),
    ]
    for rec, payload, msg in bad:
        for m in errors_both(stream([(rec, payload)])):
            assert msg in m and m.startswith("block 0:")


def test_short_block_in_the_middle():
    s = stream([stored(b"a" * 100), stored(b"b" * 100)])
    msgs = errors_both(s)
    assert all("short block" in m for m in msgs)


def test_payload_checksum_is_checked_before_decoding(monkeypatch, text):
    rec, payload = C.compress_block(text[:BS], P1)
    assert rec.kind == C.KIND_CODED
    bad = payload[:5] + bytes([payload[5] ^ 1]) + payload[6:]
    s = stream([(rec, bad)])

    def no_decoding(*a, **k):
        raise AssertionError("decoded")

    monkeypatch.setattr(C, "decode_block", no_decoding)
    assert errors_both(s) == ("block 0: checksum mismatch (compressed data)",) * 2


def test_decoded_checksum(text):
    # An intact payload whose decoded bytes do not match: what an engine that
    # fails to reproduce the encoder's model would give.
    rec, payload = C.compress_block(text[:BS], P1)
    lie = C.BlockRecord(rec.kind, rec.size, rec.payload_size, rec.crc ^ 1, rec.payload_crc)
    msgs = errors_both(stream([(lie, payload)]))
    assert all(m.startswith("block 0: checksum mismatch in decoded data") for m in msgs)


def test_index_disagreeing_with_blocks():
    s = stream([stored(b"abc")], total=4)
    assert all("corrupt index" in m for m in errors_both(s))
    s = stream([stored(b"abc")], count=2)
    assert all("corrupt index" in m or "index checksum" in m for m in errors_both(s))


def test_trailing_data_and_concatenation_are_rejected():
    s = ssmzip.compress(b"abc", level=FAST)
    for extra in (b"\0", b"junk"):
        seek, pipe = errors_both(s + extra)
        assert "trailing data" in seek and "trailing data" in pipe
    seek, pipe = errors_both(s + s)
    assert "concatenated streams are not supported" in seek and "trailing data" in pipe


# ---------------------------------------------------------------- hostile sizes


def _bounded(fn, limit=16 << 20):
    """fn must raise SSMZipError without tracing more than ``limit`` bytes of allocations."""
    tracemalloc.start()
    try:
        with pytest.raises(SSMZipError) as e:
            fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"peak {peak} bytes"
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("make", [
    # a coded block claiming a whole 1 GiB block from 10 payload bytes
    lambda: stream([(C.BlockRecord(C.KIND_CODED, 1 << 30, 10, 0, 0), b"\0" * 10)],
                   block_size=1 << 30),
    # a stored block claiming 1 GiB, with 10 bytes present
    lambda: stream([(C.BlockRecord(C.KIND_STORED, 1 << 30, 1 << 30, 0, 0), b"\0" * 10)],
                   block_size=1 << 30),
    # an index claiming 2^60 bytes and 2^60 blocks
    lambda: stream([stored(b"abc")], total=1 << 60),
    lambda: stream([stored(b"abc")], count=1 << 60),
    lambda: stream([stored(b"abc")], count=(1 << 64) - 1, total=(1 << 64) - 1),
])
def test_hostile_sizes(make):
    data = make()
    _bounded(lambda: ssmzip.decompress(data))
    _bounded(lambda: ssmzip.SSMZipFile(NonSeekable(data), "rb").read())
    _bounded(lambda: ssmzip.info(io.BytesIO(data)))


def test_hostile_footer_index_size():
    s = bytearray(ssmzip.compress(b"abc", level=FAST))
    for size in (0, 1 << 62, len(s), 25 + 13 * 1000):
        footer = struct.pack("<Q", size)
        s[-16:] = footer + struct.pack("<I", crc(footer)) + C.FOOTER_MAGIC
        msg = _bounded(lambda: ssmzip.decompress(bytes(s)))
        assert "index" in msg


def test_expansion_bound_covers_the_writer():
    # All-equal data is the best case for the coder; the bound must allow it.
    data = b"\0" * (64 << 10)
    s = ssmzip.compress(data, level=FAST, block_size=64 << 10)
    rec = ssmzip.info(io.BytesIO(s)).blocks[0]
    assert rec.kind == C.KIND_CODED and rec.size <= C.max_original_size(rec.payload_size)
    assert ssmzip.decompress(s) == data
