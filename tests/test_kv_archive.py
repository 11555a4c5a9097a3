"""ssmzip.kv archive: bad input gives a one-line SSMZipError, never a crash or a huge allocation."""
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

import ssmzip.kv as kv
from ssmzip.errors import SSMZipError
from ssmzip.kv import archive as A
from ssmzip.kv._io import varint


def sample():
    rng = np.random.default_rng(7)
    d = {
        "w": (rng.standard_normal((96, 64)) * 0.05).astype(np.float32),
        "b": (rng.standard_normal((64, 40)) * 0.05).astype(np.float16),
        "i": np.arange(300, dtype=np.int32),
    }
    return d, kv.encode_dict(d, chunk_bytes=4096)


def one_line_error(fn):
    with pytest.raises(SSMZipError) as ei:
        fn()
    msg = str(ei.value)
    assert msg and "\n" not in msg
    return msg


def decode_all(data):
    return kv.decode_dict(data)


def test_roundtrip_sample():
    d, data = sample()
    out = decode_all(data)
    for k in d:
        assert out[k].tobytes() == d[k].tobytes()


def test_magic_and_version():
    _, data = sample()
    assert kv.is_archive(data) and not kv.is_archive(b"\xfdSSMZ\x00abc")
    assert "bad magic" in one_line_error(lambda: decode_all(b"PK\x03\x04" + data[4:]))
    assert "empty" in one_line_error(lambda: decode_all(b""))
    bad = bytearray(data)
    bad[8] = 9
    assert "version" in one_line_error(lambda: decode_all(bytes(bad)))
    bad = bytearray(data)
    bad[10] = 0x80
    assert "flags" in one_line_error(lambda: decode_all(bytes(bad)))


def test_every_truncation():
    _, data = sample()
    for n in list(range(0, 64)) + list(range(64, len(data), 97)) + [len(data) - 1]:
        one_line_error(lambda: decode_all(data[:n]))


def test_trailing_garbage():
    _, data = sample()
    one_line_error(lambda: decode_all(data + b"\x00"))


def test_bit_flips_everywhere():
    """A flipped bit anywhere is detected (index CRC, chunk XXH64, stream checks), or
    changes nothing decoded: the unused padding bits of a deflate stream's last byte
    are ignored by zlib. Never silently different data."""
    d, data = sample()
    rng = np.random.default_rng(3)
    positions = list(range(0, len(data), max(1, len(data) // 400))) + list(range(len(data) - 40, len(data)))
    undetected = 0
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(8))
        try:
            out = decode_all(bytes(bad))
        except SSMZipError as e:
            assert "\n" not in str(e)
            continue
        undetected += 1
        assert all(np.array_equal(out[k].view(np.uint8), d[k].view(np.uint8)) for k in d)
    assert undetected <= 2


def test_random_garbage_after_valid_header():
    rng = np.random.default_rng(5)
    for n in (0, 10, 100, 1000):
        junk = A.MAGIC + struct.pack("<HHI", 1, 0, 0) + rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        one_line_error(lambda: decode_all(junk))


def forge(entries, extra=b"", payload=b""):
    """An archive with a hand-made index (valid CRC) over the given payload bytes."""
    idx = bytearray(varint(len(entries)))
    for name, code, shape, chunks in entries:
        nb = name.encode()
        idx += varint(len(nb)) + nb + bytes((code, len(shape)))
        for d in shape:
            idx += varint(d)
        idx += varint(len(chunks))
        for method, n, clen, csum in chunks:
            idx += bytes((method,)) + varint(n) + varint(clen) + struct.pack("<Q", csum)
    idx += varint(len(extra)) + extra
    head = A.MAGIC + struct.pack("<HHI", A.VERSION, 0, 0)
    return head + payload + bytes(idx) + struct.pack("<QII8s", len(head) + len(payload), len(idx), zlib.crc32(idx), A.END_MAGIC)


def test_forged_index_is_valid_when_consistent():
    x = np.arange(4, dtype=np.float32)
    from ssmzip.kv._rans import checksum

    data = forge([("x", 1, (4,), [(A.METHOD_RAW, 4, 16, checksum(x))])], payload=x.tobytes())
    assert kv.decode(data).tobytes() == x.tobytes()


def test_hostile_shapes_no_huge_allocation():
    big = 1 << 40
    cases = [
        [("x", 1, (big, big), [])],                                  # shape without chunks
        [("x", 1, (big,), [(A.METHOD_RAW, 4, 16, 0)])],              # shape larger than the chunks
        [("x", 1, (4,), [(A.METHOD_SPLIT, (1 << 20), 16, 0)])],      # split chunk claiming a huge ratio
        [("x", 1, (1 << 60,), [(A.METHOD_SPLIT, (1 << 20), 16, 0)] * 1000)],
        [("x", 3, (2, 2), [(A.METHOD_ZLIB, 4, 16, 0)])],             # zlib on floats
        [("x", 21, (4,), [(A.METHOD_SPLIT, 16, 16, 0)])],            # split on ints
        [("x", 99, (4,), [(A.METHOD_RAW, 16, 16, 0)])],              # unknown dtype
        [("x", 1, (4,), [(7, 4, 16, 0)])],                           # unknown method
        [("x", 1, (1,) * 40, [(A.METHOD_RAW, 1, 4, 0)])],            # too many dims
        [("x", 1, (4,), [(A.METHOD_RAW, 4, 16, 0)]), ("x", 1, (4,), [(A.METHOD_RAW, 4, 16, 0)])],  # duplicate
        [("x", 1, (0,), [(A.METHOD_RAW, 0, 0, 0)])],                 # empty chunk
        [("x", 1, (4,), [(A.METHOD_RAW, 4, 1 << 40, 0)])],           # chunk past the data
    ]
    tracemalloc.start()
    try:
        for entries in cases:
            one_line_error(lambda: decode_all(forge(entries, payload=b"\x00" * 16)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20


def test_hostile_split_payloads():
    """Split chunks with corrupt internals: bad widths, table sums, channel maps, lengths."""
    from ssmzip.kv._rans import checksum

    x = (np.random.default_rng(1).standard_normal(4096) * 0.1).astype(np.float32)
    good = kv.encode(x)
    r = A.ArchiveReader(good)
    c = r.entries[0].chunks[0]
    assert c.method == A.METHOD_SPLIT
    payload = bytes(good[c.offset:c.offset + c.clen])
    rng = np.random.default_rng(2)
    for trial in range(300):
        p = bytearray(payload)
        k = int(rng.integers(1, 4))
        for _ in range(k):
            pos = int(rng.integers(0, min(len(p), 64) if trial % 2 else len(p)))
            p[pos] = int(rng.integers(256))
        data = forge([("", 1, (4096,), [(A.METHOD_SPLIT, 4096, len(p), checksum(x))])], payload=bytes(p))
        try:
            y = kv.decode(data)
        except SSMZipError as e:
            assert "\n" not in str(e)
        else:  # only an unchanged-meaning payload may decode, and then exactly
            assert y.tobytes() == x.tobytes()


def test_reader_on_files(tmp_path):
    d, data = sample()
    p = tmp_path / "a.sskv"
    p.write_bytes(data)
    with kv.open_archive(str(p)) as r:
        assert r.names() == list(d)
        assert r.read_words("i", threads=2).tobytes() == d["i"].tobytes()
    with open(p, "rb") as f:
        out = kv.decode_dict(f, names=["w"])
        assert out["w"].tobytes() == d["w"].tobytes()
    p.write_bytes(data[:-5])
    one_line_error(lambda: kv.decode_dict(str(p)))


def test_inspect():
    d, data = sample()
    info = kv.inspect(data)
    assert info["version"] == A.VERSION and not info["file_image"]
    t = {e["name"]: e for e in info["tensors"]}
    assert t["w"]["dtype"] == "float32" and t["w"]["shape"] == (96, 64)
    assert t["w"]["nbytes"] == 96 * 64 * 4 and 0 < t["w"]["ratio"] < 1
    assert t["i"]["dtype"] == "int32" and t["i"]["methods"] == ["zlib"]
