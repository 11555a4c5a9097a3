"""The lossless float codec's C code (native/split.c, native/split_encode.c)
against the reference (floatsplit's Python steps on the numba kernels of
ssmzip/kv/_rans.py): the same bytes, the same decoded words, the same verdict
on bad data; with the SIMD loops and with the portable ones."""
import os

import numpy as np
import pytest

from ssmzip.errors import SSMZipError
from ssmzip.kv import floatsplit

if floatsplit.native() is None:
    if os.environ.get("SSMZIP_EXPECT_NATIVE") == "1":
        raise RuntimeError("SSMZIP_EXPECT_NATIVE=1 but the C library is not there")
    pytest.skip("the C library was not built (numba only)", allow_module_level=True)

SPECS = floatsplit.FLOAT_SPECS


@pytest.fixture(params=["simd", "portable"])
def backends(request, monkeypatch):
    """run(fn) -> (numba result, C result); the C decoder with or without SIMD."""
    nat = floatsplit.native()

    def run(fn):
        monkeypatch.setattr(floatsplit, "_NATIVE", False)
        a = fn()
        monkeypatch.setattr(floatsplit, "_NATIVE", nat)
        old = nat.ssmzip_split_simd(request.param == "simd")
        try:
            b = fn()
        finally:
            nat.ssmzip_split_simd(old)
        return a, b
    return run


def words(dtype, n, seed=0, few_mantissas=False, C=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_t(5, n) * rng.choice([0.01, 1.0, 50.0], n, p=[0.2, 0.7, 0.1])
    if C > 1:                              # channels of very different scales: several tables pay
        span = 4 if dtype == "float16" else 12
        x = (x.reshape(-1, C) * 2.0 ** rng.integers(-span, span, C)).reshape(-1)
    if few_mantissas:                      # compressible raw bits: the part streams get coded
        x = np.round(x * 4) / 4
    if n > 10:
        x[3], x[7], x[9] = 0.0, -0.0, 1e-30
    if dtype == "bfloat16":
        return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    if dtype == "float8_e4m3fn":
        return rng.integers(0, 120, n).astype(np.uint8) | (rng.integers(0, 2, n).astype(np.uint8) << 7)
    return x.astype(dtype).view({"float32": np.uint32, "float16": np.uint16}[dtype])


def roundtrip(w, dtype, C, lanes):
    W, E, _ = SPECS[dtype]
    p = floatsplit.encode_split(w, W, E, C, lanes)
    if p is None:
        return None, None
    data = b"".join(bytes(memoryview(x)) for x in p)
    out = np.empty_like(w)
    floatsplit.decode_split(data, W, E, out, lanes)
    return data, out


CASES = [
    ("bfloat16", 5000, 1, False), ("bfloat16", 64 * 200, 64, False), ("bfloat16", 31, 1, False),
    ("bfloat16", 33, 1, False), ("bfloat16", 96 * 40 + 0, 96, True), ("bfloat16", 6000, 1, True),
    ("float16", 4099, 1, False), ("float16", 24 * 70, 24, False), ("float16", 3000, 1, True),
    ("float32", 2048 + 5, 1, False), ("float32", 40 * 64, 40, False), ("float32", 5000, 1, True),
    ("float8_e4m3fn", 999, 1, False), ("float8_e4m3fn", 16 * 64, 16, False),
    # more than PART_SAMPLE elements: the top bits are packed straight from the words
    ("bfloat16", 70001, 1, False), ("bfloat16", 64 * 1100, 64, False), ("float32", 66000, 1, False),
]


@pytest.mark.parametrize("dtype,n,C,few", CASES)
@pytest.mark.parametrize("lanes", [8, 32])
def test_same_bytes_and_words(dtype, n, C, few, lanes, backends):
    w = words(dtype, n, seed=n, few_mantissas=few, C=C)
    (da, oa), (db, ob) = backends(lambda: roundtrip(w, dtype, C, lanes))
    assert da == db
    if da is not None:
        assert np.array_equal(oa, w) and np.array_equal(ob, w)


def edge_words():
    rng = np.random.default_rng(11)
    yield "constant", "bfloat16", np.full(5000, 0x3F80, np.uint16), 1
    yield "random bits", "bfloat16", rng.integers(0, 1 << 16, 5000).astype(np.uint16), 1
    yield "one element", "float32", words("float32", 1), 1
    yield "fewer elements than channels", "bfloat16", words("bfloat16", 3000), 4096
    yield "ragged rows", "bfloat16", words("bfloat16", 64 * 100 + 3, C=1), 64
    yield "few channels", "bfloat16", words("bfloat16", 4 * 800, C=4), 4
    yield "e5m2", "float8_e5m2", (words("float16", 3000) >> 8).astype(np.uint8), 1  # fp16 truncated
    # identical channels: equal means, so the channel order decides the first grouping
    w = words("bfloat16", 64 * 300, C=64).reshape(300, 64)
    w[:, 32:] = w[:, :32]
    yield "tied channels", "bfloat16", w.reshape(-1), 64
    yield "wide rows", "float32", words("float32", 1024 * 40, C=1024), 1024


@pytest.mark.parametrize("case", list(edge_words()), ids=lambda c: c[0])
@pytest.mark.parametrize("lanes", [8, 32])
def test_chunk_encoder_edge_cases(case, lanes, backends):
    _, dtype, w, C = case
    (da, oa), (db, ob) = backends(lambda: roundtrip(w, dtype, C, lanes))
    assert da == db
    if da is not None:
        assert np.array_equal(oa, w) and np.array_equal(ob, w)
    elif case[0] not in ("random bits", "one element"):
        pytest.fail("only random bits and a lone element should be stored raw")


def test_encode_many_same_as_one_at_a_time():
    from ssmzip.kv import _rans
    jobs = [(words("bfloat16", n, seed=i, C=C), C)
            for i, (n, C) in enumerate([(5000, 1), (64 * 200, 64), (70001, 1), (3000, 1), (3100, 1), (64 * 1100, 64)])]
    jobs.append((np.random.default_rng(0).integers(0, 1 << 16, 4000).astype(np.uint16), 1))  # stays raw
    def as_bytes(res):
        return [(None if p is None else bytes(p), h) for p, h in res]
    one = as_bytes([floatsplit.encode_many([j], 16, 8, 32, 1)[0] for j in jobs])
    assert one[-1][0] is None and all(p is not None for p, _ in one[:-1])
    assert [h for _, h in one] == [_rans.checksum(w) for w, _ in jobs]
    for threads in (1, 2, 3, 16):
        assert as_bytes(floatsplit.encode_many(jobs, 16, 8, 32, threads)) == one


def test_modes_are_exercised():
    """The cases above reach the fast paths: one byte plane (S = 8 bf16), bit-packed
    high bits (S > 8), several tables, coded part streams."""
    seen = set()
    for dtype, n, C, few in CASES:
        W, E, _ = SPECS[dtype]
        w = words(dtype, n, seed=n, few_mantissas=few, C=C)
        S, used, freqs, ctxmap = floatsplit.choose_model(w, W, E, C)
        seen.add((dtype, S == E, S > E, freqs.shape[0] > 1))
    assert ("bfloat16", True, False, False) in seen or ("bfloat16", True, False, True) in seen
    assert any(d == "bfloat16" and wide for d, _, wide, _ in seen)
    assert any(multi for *_, multi in seen)


@pytest.mark.parametrize("dtype,n,C", [("bfloat16", 4000, 1), ("bfloat16", 64 * 100, 64), ("float32", 3000, 1),
                                       ("float16", 24 * 70, 24)])
def test_garbage_same_verdict(dtype, n, C, backends):
    """Flipped bits and truncated streams: numba and C both raise, or both decode the same words."""
    W, E, _ = SPECS[dtype]
    w = words(dtype, n, seed=3, C=C)
    data = b"".join(bytes(memoryview(x)) for x in floatsplit.encode_split(w, W, E, C, 32))
    rng = np.random.default_rng(9)
    for trial in range(60):
        bad = bytearray(data)
        if trial % 3 == 0:
            bad = bad[:int(rng.integers(1, len(bad)))]
        for _ in range(int(rng.integers(1, 4))):
            if bad:
                bad[int(rng.integers(len(bad)))] ^= 1 << int(rng.integers(8))

        def attempt():
            out = np.zeros_like(w)
            try:
                floatsplit.decode_split(bytes(bad), W, E, out, 32)
            except SSMZipError:
                return None
            return out.tobytes()
        a, b = backends(attempt)
        assert a == b


@pytest.mark.parametrize("dtype,n,C", [("bfloat16", 3000, 1), ("bfloat16", 64 * 40, 64), ("float16", 24 * 70, 24)])
def test_header_bit_flips_same_verdict(dtype, n, C, backends):
    """Every bit of the chunk's head (symbol width, tables, model, stream length):
    the C parser refuses exactly what the Python one refuses."""
    W, E, _ = SPECS[dtype]
    w = words(dtype, n, seed=5, C=C)
    data = b"".join(bytes(memoryview(x)) for x in floatsplit.encode_split(w, W, E, C, 32))
    for pos in range(min(len(data), 80)):
        for bit in range(8):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit

            def attempt():
                out = np.zeros_like(w)
                try:
                    floatsplit.decode_split(bytes(bad), W, E, out, 32)
                except SSMZipError as e:
                    assert "\n" not in str(e)
                    return "refused"
                return out.tobytes()
            a, b = backends(attempt)
            assert a == b, (pos, bit)


def test_stream_decoder_alone(backends):
    """The stream-level entry (the bench's coder microbenchmark): C and numba agree."""
    w = words("bfloat16", 5000, seed=2)
    S, used, freqs, _ = floatsplit.choose_model(w, 16, 8, 1)
    R = 15 - S

    def run():
        stream = floatsplit._code_stream(w, R, S, used, freqs, 1, None, 32)
        out = np.empty_like(w)
        floatsplit._decode_stream(stream, stream.shape[0], used, freqs, 1, np.zeros(1, np.uint8), R,
                                  np.zeros((0, w.shape[0]), np.uint8), 0, 0, np.zeros(0, np.uint8),
                                  np.zeros(0, np.uint64), out, 32)
        return stream.tobytes(), out.tobytes()
    a, b = backends(run)
    assert a == b
    assert np.array_equal(np.frombuffer(a[1], np.uint16), w & np.uint16(((1 << S) - 1) << R))


def test_checksum_same_as_numba():
    """The C XXH64 (computed while decoding) against the numba one, on every length class."""
    from ssmzip.engine.native import address
    from ssmzip.kv import _rans
    nat = floatsplit.native()
    rng = np.random.default_rng(4)
    for n in list(range(0, 80)) + [1000, 4096 + 3, 65537]:
        b = rng.integers(0, 256, n).astype(np.uint8)
        assert nat.ssmzip_xxh64(address(b), n) == _rans.checksum(b), n


def test_archive_batch_decoding_reports_the_first_bad_chunk():
    """decode_dict decodes 32-lane split chunks many per C call: the result is the same
    with 1 and 2 threads, and a corrupted chunk is reported with its tensor's name."""
    import ssmzip.kv as kv
    from ssmzip.kv.archive import ArchiveReader
    d = {f"t{i}": words("bfloat16", 3000 + 97 * i, seed=i).reshape(-1) for i in range(6)}
    data = kv.encode_dict(d, dtypes={k: "bfloat16" for k in d}, chunk_bytes=2048)
    for threads in (1, 2):
        out = kv.decode_dict(data, threads=threads)
        assert all(np.array_equal(np.asarray(out[k]).view(np.uint16), d[k]) for k in d)
    with ArchiveReader(data) as r:
        c = r.entry("t3").chunks[1]
    bad = bytearray(data)
    bad[c.offset + c.clen - 3] ^= 0x10          # inside the raw top bits: decodes, checksum fails
    for threads in (1, 2):
        with pytest.raises(SSMZipError, match="checksum mismatch in chunk 1 of tensor 't3'"):
            kv.decode_dict(bytes(bad), threads=threads)
    with ArchiveReader(data) as r:
        c = r.entry("t1").chunks[0]
    bad[c.offset + c.clen - 3] ^= 0x10          # an earlier chunk too: it is the one reported
    for threads in (1, 2):
        with pytest.raises(SSMZipError, match="chunk 0 of tensor 't1'"):
            kv.decode_dict(bytes(bad), threads=threads)
