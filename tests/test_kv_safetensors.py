"""ssmzip.kv.safetensors: byte-identical .safetensors round trips, detection, listing, CLI."""
import json
import os
import struct
import tracemalloc

import numpy as np
import pytest

from ssmzip.errors import SSMZipError
from ssmzip.kv import archive as A
from ssmzip.kv import safetensors as st
from ssmzip.kv.__main__ import main as kv_main

RNG = np.random.default_rng(11)


def make_st(tensors, metadata=None, gap=0, trailing=b"", pad_header=True, order=None):
    """Write safetensors bytes by hand: tensors = {name: (dtype str, shape, raw bytes)}."""
    hdr = {}
    if metadata is not None:
        hdr["__metadata__"] = metadata
    off = 0
    blobs = []
    for name in (order or list(tensors)):
        dt, shape, raw = tensors[name]
        hdr[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw + b"\x00" * gap)
        off += len(raw) + gap
    h = json.dumps(hdr).encode()
    if pad_header:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs) + trailing


def bf16(x):
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def sample_tensors():
    w = (RNG.standard_normal((256, 96)) * 0.03).astype(np.float32)
    return {
        "model.embed.weight": ("BF16", (256, 96), bf16(w).tobytes()),
        "model.layer.0.w": ("F32", (96, 64), w[:96, :64].tobytes()),
        "model.layer.0.h": ("F16", (64, 32), w[:64, :32].astype(np.float16).tobytes()),
        "ids": ("I64", (50,), np.arange(50, dtype=np.int64).tobytes()),
        "mask": ("BOOL", (33,), (RNG.random(33) > 0.5).tobytes()),
        "scalar": ("F32", (), np.float32(2.5).tobytes()),
        "empty": ("F16", (0, 4), b""),
        "odd": ("F8_E8M0", (7,), bytes(range(7))),        # a dtype this ssmzip does not know
        "f64": ("F64", (5,), RNG.standard_normal(5).tobytes()),
        "fp8": ("F8_E4M3", (16, 8), RNG.integers(0, 256, 128, dtype=np.uint8).tobytes()),
    }


def roundtrip(tmp_path, data, **kw):
    src = tmp_path / "m.safetensors"
    src.write_bytes(data)
    dst = tmp_path / "m.safetensors.ssz"
    stats = st.compress_safetensors(str(src), str(dst), **kw)
    assert stats["input"] == len(data) and stats["output"] == dst.stat().st_size
    out = tmp_path / "back.safetensors"
    n = st.decompress_safetensors(str(dst), str(out), threads=kw.get("threads", 1))
    assert n == len(data)
    assert out.read_bytes() == data
    return dst


@pytest.mark.parametrize("kw", [{}, {"threads": 3, "chunk_bytes": 5000}])
def test_roundtrip_byte_identical(tmp_path, kw):
    data = make_st(sample_tensors(), metadata={"format": "pt"})
    dst = roundtrip(tmp_path, data, **kw)
    assert st.is_compressed_safetensors(str(dst))
    assert dst.stat().st_size < len(data)


def test_gaps_trailing_bytes_unsorted_offsets_unpadded_header(tmp_path):
    t = sample_tensors()
    order = list(reversed(list(t)))
    data = make_st(t, gap=3, trailing=b"tail bytes", pad_header=False, order=order)
    assert st.is_safetensors(data)
    roundtrip(tmp_path, data)


def test_names_that_collide_with_internal_entries(tmp_path):
    raw = np.ones(4, np.float32).tobytes()
    data = make_st({st.HEADER_ENTRY: ("F32", (4,), raw), "\x00gap@0": ("F32", (4,), raw)}, gap=2)
    roundtrip(tmp_path, data)


def test_empty_file_of_tensors(tmp_path):
    roundtrip(tmp_path, make_st({}))
    roundtrip(tmp_path, make_st({"e": ("F32", (0,), b"")}))


def test_inconsistent_sizes_are_kept_as_bytes(tmp_path):
    # shape says 10 floats but the offsets hold 12 bytes: stored verbatim, still byte-identical
    data = make_st({"x": ("F32", (10,), b"\x01" * 12)})
    roundtrip(tmp_path, data)


def test_file_objects_and_bytes(tmp_path):
    import io

    data = make_st(sample_tensors())
    buf = io.BytesIO()
    st.compress_safetensors(io.BytesIO(data), buf)
    out = io.BytesIO()
    st.decompress_safetensors(buf.getvalue(), out)
    assert out.getvalue() == data
    assert st.is_compressed_safetensors(buf.getvalue()[:16])


def test_is_safetensors(tmp_path):
    good = make_st(sample_tensors())
    assert st.is_safetensors(good) and st.is_safetensors(good[:20])
    p = tmp_path / "x.bin"
    for bad in (b"", b"\x00" * 7, b"hello world, not a safetensors file at all",
                struct.pack("<Q", 5) + b"[1,2]", struct.pack("<Q", 1 << 40) + b"{",
                good[:40],                                                  # truncated header
                make_st({"a": ("F32", (2,), b"\x00" * 8)})[:-4]):          # data past the end
        p.write_bytes(bad)
        assert not st.is_safetensors(str(p))
    over = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                       "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    p.write_bytes(struct.pack("<Q", len(over)) + over + b"\x00" * 12)
    assert not st.is_safetensors(str(p))
    with pytest.raises(SSMZipError, match="overlaps"):
        st.compress_safetensors(str(p), str(tmp_path / "o.ssz"))
    assert not (tmp_path / "o.ssz").exists()
    p.write_bytes(good)
    assert st.is_safetensors(str(p))
    assert not st.is_compressed_safetensors(str(p))


def test_list(tmp_path):
    t = sample_tensors()
    dst = roundtrip(tmp_path, make_st(t))
    rows = st.list_safetensors(str(dst))
    tensors = {r["name"]: r for r in rows if r["kind"] == "tensor"}
    assert set(tensors) == set(t)
    assert rows[0]["kind"] == "header"
    e = tensors["model.embed.weight"]
    assert e["dtype"] == "BF16" and e["shape"] == (256, 96) and e["nbytes"] == 256 * 96 * 2
    assert 0.5 < e["ratio"] < 0.75 and e["method"] == "split"
    assert tensors["odd"]["dtype"] == "F8_E8M0"


def test_corrupt_archive_leaves_no_output(tmp_path):
    dst = roundtrip(tmp_path, make_st(sample_tensors()))
    data = bytearray(dst.read_bytes())
    data[len(data) // 2] ^= 0x10
    bad = tmp_path / "bad.ssz"
    bad.write_bytes(bytes(data))
    out = tmp_path / "never.safetensors"
    with pytest.raises(SSMZipError):
        st.decompress_safetensors(str(bad), str(out))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ssz-")] == []


def test_not_a_file_image():
    import ssmzip.kv as kv

    with pytest.raises(SSMZipError, match="does not hold a file"):
        st.decompress_safetensors(kv.encode(np.ones(3, np.float32)), "/nonexistent/x")


def test_streaming_memory_is_bounded(tmp_path):
    n = 4 << 20   # 16 MiB of fp32
    w = (np.random.default_rng(0).standard_normal(n) * 0.02).astype(np.float32)
    src = tmp_path / "big.safetensors"
    src.write_bytes(make_st({"w": ("F32", (n // 1024, 1024), w.tobytes())}))
    del w
    dst = tmp_path / "big.ssz"
    out = tmp_path / "big.back"
    chunk = 1 << 18
    small = tmp_path / "small.safetensors"  # load the kernels outside the count (numba's loading allocates)
    small.write_bytes(make_st({"w": ("F32", (64, 64), np.ones(64 * 64, np.float32).tobytes())}))
    st.compress_safetensors(str(small), str(dst), chunk_bytes=chunk)
    st.decompress_safetensors(str(dst), str(out))
    tracemalloc.start()
    try:
        st.compress_safetensors(str(src), str(dst), chunk_bytes=chunk)
        _, peak_c = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        st.decompress_safetensors(str(dst), str(out))
        _, peak_d = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.read_bytes() == src.read_bytes()
    # the encoder holds two batches of chunks and their payloads (ArchiveWriter), the decoder a few chunks
    batch = A.ENCODE_BATCH_CHUNKS * chunk
    assert peak_c < 4 * batch + (4 << 20) < 4 * n and peak_d < 4 << 20, (peak_c, peak_d)


def test_compatible_with_the_safetensors_library(tmp_path):
    torch = pytest.importorskip("torch")
    sft = pytest.importorskip("safetensors.torch")
    t = {"a": torch.randn(64, 32).to(torch.bfloat16), "b": torch.arange(10), "c": torch.randn(3, 3, dtype=torch.float16)}
    p = tmp_path / "lib.safetensors"
    sft.save_file(t, str(p), metadata={"x": "y"})
    dst = roundtrip(tmp_path, p.read_bytes())
    assert dst.exists()


def test_cli(tmp_path, capsys):
    data = make_st(sample_tensors())
    src = tmp_path / "m.safetensors"
    src.write_bytes(data)
    assert kv_main(["-q", str(src)]) == 0
    comp = tmp_path / "m.safetensors.ssz"
    assert comp.exists()
    assert kv_main([str(src)]) == 1                      # output exists
    assert "already exists" in capsys.readouterr().err
    assert kv_main(["-l", str(comp)]) == 0
    out = capsys.readouterr().out
    assert "model.embed.weight" in out and "total (10 tensors)" in out
    os.remove(src)
    assert kv_main(["-d", "-q", str(comp)]) == 0
    assert src.read_bytes() == data
    assert kv_main(["-d", "-q", "-o", str(tmp_path / "x"), str(comp)]) == 0
    assert (tmp_path / "x").read_bytes() == data
    (tmp_path / "junk.ssz").write_bytes(b"nope")
    assert kv_main(["-d", "-q", str(tmp_path / "junk.ssz")]) == 1
    assert kv_main(["-q", str(tmp_path / "junk.ssz")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "not a" in err
    assert kv_main(["-q", str(tmp_path / "missing.safetensors")]) == 1
    with pytest.raises(SystemExit):
        kv_main(["-o", "a", "b", "c"])


def test_original_size_and_progress(tmp_path):
    data = make_st(sample_tensors())
    src = tmp_path / "m.safetensors"
    src.write_bytes(data)
    dst = tmp_path / "m.ssz"
    seen = []
    st.compress_safetensors(str(src), str(dst), progress=seen.append, chunk_bytes=4096)
    assert sum(seen) == len(data) and len(seen) > 3
    assert st.original_size(str(dst)) == len(data)
    seen.clear()
    st.decompress_safetensors(str(dst), str(tmp_path / "back"), progress=seen.append, threads=2)
    assert sum(seen) == len(data)


def test_failed_compression_leaves_no_output(tmp_path):
    import io

    data = make_st(sample_tensors())

    class FailsMidway(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 200:
                raise OSError("disk went away")
            return super().read(n)

    out = tmp_path / "never.ssz"
    with pytest.raises(OSError):
        st.compress_safetensors(FailsMidway(data), str(out))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ssz-")] == []
