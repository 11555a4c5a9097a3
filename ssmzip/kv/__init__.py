"""Tensor codecs: tensors (numpy arrays, torch tensors) to compact bytes and back.

Lossless float codec (bf16, fp16, fp32, fp8): each value is split into its
exponent (with a few leading mantissa bits) and the rest; the exponents are
rANS coded with per-tensor or per-channel-group models, the rest is stored.
Bit-exact, including NaN payloads, infinities, -0.0 and subnormals.

    data = ssmzip.kv.encode(x)                  # one tensor -> bytes
    y = ssmzip.kv.decode(data)                  # -> numpy (or out="torch")
    data = ssmzip.kv.encode_dict({"k": K, "v": V})
    d = ssmzip.kv.decode_dict(data, names=["k"])
    ssmzip.kv.inspect(data)                     # header: names, dtypes, shapes, ratios

Whole KV caches (cache.py; lossless, lossy ECSQ with rate control, sparse),
with random access by layer and token range and streaming append:

    data = ssmzip.kv.encode_cache(kv, mode="lossy", bits=3.0)   # or rel_error=, max_abs=, step=
    kv = ssmzip.kv.decode_cache(data, layers=[0, 1], tokens=(0, 512))
    data = ssmzip.kv.append_cache(data, new_tokens)

A fixed-rate KIVI-style packed form for in-memory use is ssmzip.kv.kivi.pack.

bfloat16 / float8 in numpy: pass ml_dtypes arrays or uint16/uint8 arrays with
``dtype="bfloat16"`` etc.; numpy output holds them as uint16/uint8 words
(``inspect`` tells the real dtype). Other dtypes (ints, bool, float64) are
stored losslessly with deflate. Bad data raises SSMZipError.
"""
from ssmzip.errors import SSMZipError
from ssmzip.kv._arrays import from_words, to_words
from ssmzip.kv.archive import (
    _Pieces,
    DEFAULT_CHUNK_BYTES,
    MAGIC,
    ArchiveReader,
    ArchiveWriter,
    is_archive,
)
from ssmzip.kv.cache import append_cache, cache_info, decode_cache, encode_cache, to_dynamic_cache

__all__ = [
    "encode", "decode", "encode_dict", "decode_dict", "inspect", "open_archive",
    "is_archive", "MAGIC", "SSMZipError",
    "encode_cache", "decode_cache", "append_cache", "to_dynamic_cache",
]

_SINGLE = ""  # the name of the tensor written by encode()


def _check_mode(mode):
    if mode != "lossless":
        raise ValueError(f"mode {mode!r} is for whole KV caches (encode_cache); tensors are coded losslessly")


def encode_dict(tensors, *, mode="lossless", dtypes=None, threads=1, chunk_bytes=DEFAULT_CHUNK_BYTES):
    """Encode a mapping name -> tensor into one archive (bytes).

    dtypes: optional mapping name -> dtype name for arrays whose numpy dtype
    does not say it (e.g. {"w": "bfloat16"} for a uint16 array of bf16 bits).
    """
    _check_mode(mode)
    buf = _Pieces(threads)
    w = ArchiveWriter(buf, threads=threads, chunk_bytes=chunk_bytes)
    try:
        for name, t in tensors.items():
            code, shape, words = to_words(t, (dtypes or {}).get(name))
            w.add_words(name, code, shape, words)
    except BaseException:
        w.abort()
        raise
    w.close()
    return buf.getvalue()


def encode(tensor, *, mode="lossless", dtype=None, threads=1, chunk_bytes=DEFAULT_CHUNK_BYTES):
    """Encode one tensor (numpy array or torch tensor) to bytes; the input is never modified."""
    return encode_dict({_SINGLE: tensor}, mode=mode, dtypes={_SINGLE: dtype} if dtype else None,
                       threads=threads, chunk_bytes=chunk_bytes)


def open_archive(src):
    """An ArchiveReader over bytes or a file (path or binary file object):
    .names(), .entry(name).info(), .read_words(name, threads), .info()."""
    return ArchiveReader(src)


def decode(data, *, out="numpy", threads=1):
    """Decode bytes made by encode() (or an archive holding exactly one tensor)."""
    with ArchiveReader(data) as r:
        if len(r.entries) != 1:
            raise SSMZipError(f"the data holds {len(r.entries)} tensors; use decode_dict")
        e = r.entries[0]
        return from_words(e.code, e.shape, r.read_words(e, threads), out)


def decode_dict(data, *, names=None, out="numpy", threads=1):
    """Decode an archive into a dict name -> tensor (only `names` if given)."""
    with ArchiveReader(data) as r:
        ents = r.entries if names is None else [r.entry(n) for n in names]
        words = r.read_many(ents, threads)
        return {e.name: from_words(e.code, e.shape, words[e.name], out) for e in ents}


def inspect(data):
    """Archive information without decoding: version, and per tensor its
    name, dtype, shape, original and compressed size, ratio, chunk methods."""
    with ArchiveReader(data) as r:
        info = r.info()
        cache = cache_info(r)
        if cache is not None:
            info["cache"] = cache
        return info
