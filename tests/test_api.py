"""The Python API: round trips, streaming, parallel determinism, damaged input."""
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ssmzip
from ssmzip import container as C

from conftest import BS, FAST, NonSeekable, random_bytes, text_sample


def round_trip(data: bytes, **kw) -> bytes:
    blob = ssmzip.compress(data, **{"level": FAST, **kw})
    assert ssmzip.decompress(blob) == data
    with ssmzip.SSMZipFile(NonSeekable(blob), "rb") as f:   # the pipe path
        assert f.read() == data
    return blob


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("data", [
    b"", b"\0", b"\xff", b"a" * 5000, bytes(range(256)) * 8,
    random_bytes(3000), text_sample(4000),
], ids=["empty", "zero", "ff", "all-equal", "all-bytes", "random", "text"])
def test_fixed_round_trips(data):
    round_trip(data, block_size=BS)


@pytest.mark.parametrize("n", [BS - 1, BS, BS + 1, 2 * BS - 1, 2 * BS, 2 * BS + 1, 3 * BS])
def test_sizes_around_block_boundaries(n, text):
    data = (text * 2)[:n]
    blob = round_trip(data, block_size=BS)
    i = ssmzip.info(io.BytesIO(blob))
    assert len(i.blocks) == -(-n // BS) and i.uncompressed_size == n
    assert all(b.size == BS for b in i.blocks[:-1])


@pytest.mark.parametrize("level", range(1, 10))
def test_every_level(level):
    data = text_sample(1500, seed=level)
    blob = round_trip(data, level=level)
    assert ssmzip.info(io.BytesIO(blob)).level == level
    assert len(blob) < len(data)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=2500),
                      st.lists(st.sampled_from([b"ab", b"the ", b"\0", b"\xff\xfe", b"x" * 40]),
                               max_size=120).map(b"".join)),
       block_size=st.sampled_from([BS, 1500, 4096]))
def test_round_trip_property(data, block_size):
    round_trip(data, block_size=block_size)


def test_accepts_bytes_like(text):
    data = text[:1000]
    assert ssmzip.compress(bytearray(data), level=FAST) == ssmzip.compress(data, level=FAST)
    blob = ssmzip.compress(memoryview(data), level=FAST)
    assert ssmzip.decompress(bytearray(blob)) == data
    assert ssmzip.decompress(memoryview(blob)) == data


def test_default_level_and_block_size(text):
    i = ssmzip.info(io.BytesIO(ssmzip.compress(text[:100])))
    assert i.level == 6 and i.block_size == ssmzip.engine.preset_for_level(6).block_size


def test_bad_arguments():
    with pytest.raises(ValueError):
        ssmzip.compress(b"x", level=10)
    with pytest.raises(ValueError):
        ssmzip.compress(b"x", level=FAST, block_size=100)
    with pytest.raises(ValueError):
        ssmzip.compress(b"x", level=FAST, threads=-1)
    with pytest.raises(TypeError):
        ssmzip.compress("text", level=FAST)
    with pytest.raises(TypeError):
        ssmzip.decompress("text")
    with pytest.raises(ValueError):
        ssmzip.open(io.BytesIO(), "ab")


# ---------------------------------------------------------------- parallel


def test_threads_give_identical_bytes(text):
    data = (text * 3)[:6 * BS + 100]                 # 7 blocks
    one = ssmzip.compress(data, level=FAST, block_size=BS, threads=1)
    two = ssmzip.compress(data, level=FAST, block_size=BS, threads=2)
    assert one == two
    assert ssmzip.decompress(one, threads=2) == data
    all_cores = ssmzip.compress(data[:BS], level=FAST, block_size=BS, threads=0)
    assert all_cores == ssmzip.compress(data[:BS], level=FAST, block_size=BS)  # one block: inline


def test_parallel_decode_reports_bad_block(text):
    # Block 2's payload is intact but decodes to bytes that miss its checksum,
    # so the error is raised in a worker process and must come back as is.
    data = (text * 2)[:4 * BS]
    preset = ssmzip.engine.preset_for_level(FAST)
    blocks = [C.compress_block(data[i:i + BS], preset) for i in range(0, len(data), BS)]
    r = blocks[2][0]
    blocks[2] = (C.BlockRecord(r.kind, r.size, r.payload_size, r.crc ^ 1, r.payload_crc),
                 blocks[2][1])
    blob = (C.pack_header(preset, BS) + b"".join(r.pack_header() + p for r, p in blocks)
            + C.pack_trailer([r for r, _ in blocks], len(data)))
    with pytest.raises(ssmzip.SSMZipError,
                       match=r"^block 2: checksum mismatch in decoded data \("):
        ssmzip.decompress(blob, threads=2)


# ---------------------------------------------------------------- streaming file object


def test_streaming_write_matches_compress(text, tmp_path):
    data = (text * 3)[:5 * BS + 7]
    path = tmp_path / "x.ssz"
    with ssmzip.open(path, "wb", level=FAST, block_size=BS) as f:
        for i in range(0, len(data), 333):           # pieces that straddle blocks
            assert f.write(data[i:i + 333]) == len(data[i:i + 333])
        assert f.tell() == len(data)
    assert path.read_bytes() == ssmzip.compress(data, level=FAST, block_size=BS)


def test_streaming_read(text, tmp_path):
    data = (text * 3)[:5 * BS + 7]
    path = tmp_path / "x.ssz"
    path.write_bytes(ssmzip.compress(data, level=FAST, block_size=BS))
    with ssmzip.open(path) as f:
        assert f.total_size == len(data)
        parts = []
        while True:
            b = f.read(777)
            if not b:
                break
            parts.append(b)
        assert f.tell() == len(data)
    assert b"".join(parts) == data
    with ssmzip.open(path) as f:
        assert f.readlines() == data.splitlines(keepends=True)
    with ssmzip.open(path) as f:
        buf = bytearray(2000)
        assert f.readinto(buf) == 2000 and bytes(buf) == data[:2000]
        assert f.read1(10) and f.peek(1)


def test_text_mode(tmp_path):
    path = tmp_path / "t.ssz"
    with ssmzip.open(path, "wt", level=FAST, encoding="utf-8") as f:
        for i in range(300):
            print(f"línea {i}", file=f)
    with ssmzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[-1] == "línea 299" and len(lines) == 300


def test_exclusive_mode(tmp_path):
    path = tmp_path / "x.ssz"
    path.write_bytes(b"")
    with pytest.raises(FileExistsError):
        ssmzip.open(path, "xb")


def test_file_object_misuse(tmp_path):
    buf = io.BytesIO()
    f = ssmzip.open(buf, "wb", level=FAST)
    assert f.writable() and not f.readable() and not f.seekable()
    with pytest.raises(io.UnsupportedOperation):
        f.read()
    f.close()
    f.close()                                        # idempotent
    with pytest.raises(ValueError):
        f.write(b"x")
    r = ssmzip.open(io.BytesIO(buf.getvalue()))
    with pytest.raises(io.UnsupportedOperation):
        r.write(b"x")
    r.close()


def test_exception_in_with_leaves_stream_unfinished(text):
    buf = io.BytesIO()
    with pytest.raises(KeyError):
        with ssmzip.open(buf, "wb", level=FAST, block_size=BS) as f:
            f.write(text[:1500])
            raise KeyError
    with pytest.raises(ssmzip.SSMZipError):
        ssmzip.decompress(buf.getvalue())


def test_progress_reports_every_byte(text):
    data = (text * 2)[:3 * BS + 5]
    seen = []
    buf = io.BytesIO()
    with ssmzip.open(buf, "wb", level=FAST, block_size=BS, progress=seen.append) as f:
        f.write(data)
    assert sum(seen) == len(data)
    seen.clear()
    with ssmzip.open(io.BytesIO(buf.getvalue()), progress=seen.append) as f:
        f.read()
    assert sum(seen) == len(data)


def test_info(text, tmp_path):
    data = (text * 2)[:2 * BS + 1]
    blob = ssmzip.compress(data, level=FAST, block_size=BS)
    path = tmp_path / "i.ssz"
    path.write_bytes(blob)
    i = ssmzip.info(path)
    assert (i.compressed_size, i.uncompressed_size, i.block_size, i.level) == \
        (len(blob), len(data), BS, FAST)
    assert [b.size for b in i.blocks] == [BS, BS, 1]
    assert i.ratio == len(blob) / len(data)
    assert ssmzip.info(io.BytesIO(ssmzip.compress(b""))).ratio is None
    with pytest.raises(ValueError):
        ssmzip.info(NonSeekable(blob))


# ---------------------------------------------------------------- damaged input


def _one_line_error(data: bytes, pipe: bool = False) -> str:
    with pytest.raises(ssmzip.SSMZipError) as e:
        if pipe:
            with ssmzip.SSMZipFile(NonSeekable(data), "rb") as f:
                f.read()
        else:
            ssmzip.decompress(data)
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def test_truncation_at_every_offset(small_stream):
    for n in range(len(small_stream)):
        msg = _one_line_error(small_stream[:n])
        assert "truncated" in msg or "empty input" in msg or "version" in msg, (n, msg)


def test_truncation_through_a_pipe(small_stream):
    # The pipe path decodes complete blocks before it meets the end: sample offsets.
    for n in list(range(0, 80)) + list(range(80, len(small_stream), 37)):
        msg = _one_line_error(small_stream[:n], pipe=True)
        assert "truncated" in msg or "empty input" in msg or "version" in msg, (n, msg)


def test_single_bit_flips(small_stream):
    i = ssmzip.info(io.BytesIO(small_stream))
    assert [b.kind for b in i.blocks] == [C.KIND_CODED] * 3
    header = len(C.pack_header(ssmzip.engine.preset_for_level(FAST), BS))
    payload_starts, pos = [], header
    for b in i.blocks:
        payload_starts.append((pos + C.BLOCK_HEADER_SIZE, b.payload_size))
        pos += C.BLOCK_HEADER_SIZE + b.payload_size
    in_payload = {p + k for p, n in payload_starts for k in range(n)}
    # Every byte outside the payloads (headers, index, footer: no decoding needed
    # to catch these), and a stride of bytes inside them.
    positions = [p for p in range(len(small_stream)) if p not in in_payload]
    positions += sorted(in_payload)[::23]
    for pos in positions:
        for bit in ((0, 7) if pos in in_payload else (0, 3, 7)):
            bad = bytearray(small_stream)
            bad[pos] ^= 1 << bit
            _one_line_error(bytes(bad))
    # and through the pipe path, a sample
    for pos in positions[::9]:
        bad = bytearray(small_stream)
        bad[pos] ^= 0x04
        _one_line_error(bytes(bad), pipe=True)


def test_wrong_magic_and_version(small_stream):
    assert _one_line_error(b"BZh91AY&SY" + small_stream) == "not an ssmzip file (bad magic)"
    for v in (0, 2, 7, 255):
        bad = bytearray(small_stream)
        bad[6] = v
        assert _one_line_error(bytes(bad)) == f"unsupported format version {v}"


def test_random_garbage_is_rejected_quickly():
    for seed in range(50):
        g = random_bytes(200 + seed * 7, seed=seed)
        _one_line_error(g)
        _one_line_error(C.MAGIC + bytes([C.VERSION]) + g)


def test_unclosed_writer_warns_and_leaves_stream_unfinished():
    buf = io.BytesIO()
    f = ssmzip.open(buf, "wb", level=FAST)
    f.write(b"abc")
    with pytest.warns(ResourceWarning, match="unfinished"):
        f.__del__()
    with pytest.raises(ssmzip.SSMZipError, match="truncated"):
        ssmzip.decompress(buf.getvalue())


def test_compress_many_gives_each_stream_alone():
    from conftest import random_bytes
    items = [text_sample(3000, seed=21), b"", b"x", random_bytes(2500), bytes(2048)]
    blobs = ssmzip.compress_many(items, level=FAST, block_size=BS)
    assert blobs == [ssmzip.compress(d, level=FAST, block_size=BS) for d in items]
    assert ssmzip.decompress_many(blobs) == items
    assert ssmzip.decompress_many(blobs, threads=2) == items


def test_decompress_many_rejects_a_bad_stream():
    blobs = ssmzip.compress_many([b"abc" * 100, b"def" * 100], level=FAST, block_size=BS)
    with pytest.raises(ssmzip.SSMZipError):
        ssmzip.decompress_many([blobs[0], blobs[1][:-1]])
