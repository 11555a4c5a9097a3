"""The tensor archive: named tensors, coded in independent chunks, with an index.

Layout (all little-endian; FORMAT.md has it byte by byte)::

    header   16 bytes   magic b"\\xfdSSKV\\x00\\r\\n", u16 version, u16 flags, u32 reserved (0)
    chunks   ...        chunk payloads back to back, in index order
    index    ...        tensors (name, dtype, shape, chunks: method, count, size, XXH64)
    trailer  24 bytes   u64 index offset, u32 index length, u32 CRC32 of the index, b"SSKVEND\\x00"

Pickle-free; every field is validated before use; chunks decode independently
(in parallel threads) and each carries the XXH64 of its original bytes. The
writer streams: only the chunks in flight are in memory, the index goes last.
"""
import io
import os
import struct
import threading
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ssmzip.errors import SSMZipError
from ssmzip.kv import _rans
from ssmzip.kv._arrays import DTYPES, is_float, itemsize, word_dtype
from ssmzip.kv._io import Reader, varint
from ssmzip.kv._join import join
from ssmzip.kv import floatsplit
from ssmzip.kv.floatsplit import FLOAT_SPECS, decode_split, encode_split

MAGIC = b"\xfdSSKV\x00\r\n"
END_MAGIC = b"SSKVEND\x00"
# versions 1 and 2 (files written before 32-lane rANS): split chunks have 8-lane streams
VERSION = 3                 # files with lossless chunks only (methods 0-2)
VERSION_LOSSY = 4           # files that may also hold lossy chunks (methods 3-4)
OLD_VERSION, OLD_VERSION_LOSSY = 1, 2
READ_VERSIONS = (OLD_VERSION, OLD_VERSION_LOSSY, VERSION, VERSION_LOSSY)
LOSSY_VERSIONS = (OLD_VERSION_LOSSY, VERSION_LOSSY)
_HEAD = struct.Struct("<8sHHI")
_TRAIL = struct.Struct("<QII8s")
HEADER_SIZE = _HEAD.size    # 16
TRAILER_SIZE = _TRAIL.size  # 24

FLAG_FILE_IMAGE = 1         # the entries' bytes, concatenated in index order, are the original file
KNOWN_FLAGS = FLAG_FILE_IMAGE

METHOD_RAW = 0
METHOD_SPLIT = 1
METHOD_ZLIB = 2
METHOD_ECSQ = 3             # lossy: quantised rows, entropy coded (ecsq.py)
METHOD_SPARSE = 4           # pruned rows: bitmap + kept values (sparse.py)
METHOD_NAMES = {METHOD_RAW: "raw", METHOD_SPLIT: "split", METHOD_ZLIB: "zlib",
                METHOD_ECSQ: "ecsq", METHOD_SPARSE: "sparse"}
LOSSY_METHODS = (METHOD_ECSQ, METHOD_SPARSE)
LOSSY_CODES = (1, 2, 3)     # float32, float16, bfloat16

DEFAULT_CHUNK_BYTES = 1 << 20   # 1 MiB of original data per chunk
BATCH_BYTES = 1 << 28           # payload bytes read at once for one C decoding call
ENCODE_BATCH_CHUNKS = 8         # float chunks per thread coded in one C call (their size at most)
MAX_CHUNK_BYTES = 1 << 22       # the most original bytes one chunk may hold
SPLIT_MAX_RATIO = 1 << 16       # original bytes per coded byte, at most, in a split chunk
MAX_NDIM = 32
MAX_NAME = 1 << 16
ZLIB_MAX_RATIO = 1100           # deflate cannot expand more than ~1032:1
# smaller float tensors are stored raw: their model and rANS states (150-250 bytes) eat most of
# the gain, and modelling a chunk costs ~0.2 ms, as much as coding 60 KB (MiniLM's 64 bias and
# norm tensors: 0.035 % of the file's size, 8 % of its encoding time)
SPLIT_MIN_ELEMENTS = 2048


def stream_lanes(version):
    """rANS lanes of the split chunks in an archive of this version."""
    return 8 if version < VERSION else 32


def is_archive(head):
    """True if the bytes (at least the first 8 of a file) start an archive."""
    return bytes(head[:len(MAGIC)]) == MAGIC


class Chunk:
    __slots__ = ("method", "n", "clen", "checksum", "offset", "lanes")

    def __init__(self, method, n, clen, checksum, offset, lanes):
        self.method = method
        self.n = n
        self.clen = clen
        self.checksum = checksum
        self.offset = offset
        self.lanes = lanes      # of its rANS streams, from the archive's version


class Entry:
    """One tensor (or byte blob) of an archive."""

    __slots__ = ("name", "code", "shape", "chunks")

    def __init__(self, name, code, shape, chunks):
        self.name = name
        self.code = code
        self.shape = shape
        self.chunks = chunks

    @property
    def row(self):
        """Words per row (one index of the first axis): lossy chunks hold whole rows."""
        r = 1
        for d in self.shape[1:]:
            r *= d
        return r

    @property
    def dtype(self):
        return DTYPES[self.code][0]

    @property
    def nwords(self):
        return sum(c.n for c in self.chunks)

    @property
    def nbytes(self):
        return self.nwords * (itemsize(self.code) if is_float(self.code) else 1)

    @property
    def compressed(self):
        return sum(c.clen for c in self.chunks)

    def info(self):
        nb = self.nbytes
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": self.shape,
            "nbytes": nb,
            "compressed": self.compressed,
            "ratio": (self.compressed / nb) if nb else 1.0,
            "chunks": len(self.chunks),
            "methods": sorted({METHOD_NAMES[c.method] for c in self.chunks}),
        }


# ---------------------------------------------------------------- chunk coding

def encode_chunk(words, code, C=1, zlevel=6, lanes=32, split=True):
    """(method, payload pieces, checksum) for one chunk of words (1-D contiguous);
    lanes: of the rANS streams (stream_lanes of the archive's version); split:
    False stores float words raw (tensors below SPLIT_MIN_ELEMENTS)."""
    csum = _rans.checksum(words)
    if is_float(code):
        if split:
            W, E, _ = FLOAT_SPECS[DTYPES[code][0]]
            p = encode_split(words, W, E, C, lanes)
            if p is not None:
                return METHOD_SPLIT, p, csum
    else:
        z = zlib.compress(words, zlevel)
        if len(z) < words.nbytes:
            return METHOD_ZLIB, [z], csum
    return METHOD_RAW, [words.tobytes()], csum


def encode_float_chunks(chunks, lanes, threads):
    """encode_chunk for float chunks [(code, C, split, words)], the split ones
    in one C call per dtype on `threads` C threads (needs floatsplit.native()):
    [(method, payload pieces, checksum, elements, bytes)] in the given order."""
    out = [None] * len(chunks)
    by_code = {}
    for i, (code, C, split, words) in enumerate(chunks):
        if split:
            by_code.setdefault(code, []).append(i)
        else:
            out[i] = encode_chunk(words, code, split=False) + (words.shape[0], words.nbytes)
    for code, idx in by_code.items():
        W, E, _ = FLOAT_SPECS[DTYPES[code][0]]
        idx.sort(key=lambda i: -chunks[i][3].shape[0])  # largest first: the threads finish together
        coded = floatsplit.encode_many([(chunks[i][3], chunks[i][1]) for i in idx], W, E, lanes, threads)
        for i, (payload, csum) in zip(idx, coded):
            words = chunks[i][3]
            pieces = (METHOD_SPLIT, [payload]) if payload is not None else (METHOD_RAW, [words.tobytes()])
            out[i] = pieces + (csum, words.shape[0], words.nbytes)
    return out


def _where(entry, j):
    return f"chunk {j} of tensor {entry.name!r}"


def _c_decodable(chunk):
    """Split chunks with 32-lane streams: the C decoder takes them whole (floatsplit.decode_many)."""
    return chunk.method == METHOD_SPLIT and chunk.lanes == 32


def decode_chunk(chunk, payload, code, out, where, row=1):
    """Decode one chunk's payload into out (a word array of chunk.n) and verify it.
    row: words per row of the tensor (lossy chunks hold whole rows)."""
    m = chunk.method
    csum = None   # the decoder's XXH64 of out, when it computes one
    if m == METHOD_RAW:
        if len(payload) != out.nbytes:
            raise SSMZipError(f"corrupt data: raw chunk size mismatch in {where}")
        out.view(np.uint8)[:] = np.frombuffer(payload, np.uint8)
    elif m == METHOD_SPLIT:
        W, E, _ = FLOAT_SPECS[DTYPES[code][0]]
        csum = decode_split(payload, W, E, out, chunk.lanes)
    elif m == METHOD_ZLIB:
        d = zlib.decompressobj()
        try:
            data = d.decompress(payload, out.nbytes)
        except zlib.error:
            raise SSMZipError(f"corrupt data: bad deflate stream in {where}") from None
        if len(data) != out.nbytes or not d.eof or d.unused_data or d.unconsumed_tail:
            raise SSMZipError(f"corrupt data: deflate size mismatch in {where}")
        out.view(np.uint8)[:] = np.frombuffer(data, np.uint8)
    elif m == METHOD_ECSQ:
        out.reshape(-1, row)[:] = decode_ecsq(chunk, payload, code, row, where).T
        return
    elif m == METHOD_SPARSE:
        from ssmzip.kv import sparse
        sparse.decode(payload, code, out, where, chunk.lanes)
    else:  # validated when the index was read
        raise SSMZipError(f"corrupt data: unknown chunk method {m} in {where}")
    if (_rans.checksum(out) if csum is None else csum) != chunk.checksum:
        raise SSMZipError(f"corrupt data: checksum mismatch in {where}")


def decode_ecsq(chunk, payload, code, row, where, scratch=None):
    """An ecsq chunk's words in its own order, channel-major ([row, rows]),
    verified: the chunk checksum covers them in that order."""
    from ssmzip.kv import ecsq
    recT = ecsq.decode_words(payload, chunk.n // row, row, code, word_dtype(code), where, scratch)
    if _rans.checksum(recT) != chunk.checksum:
        raise SSMZipError(f"corrupt data: checksum mismatch in {where}")
    return recT


def chunk_plan(code, shape, nwords, chunk_bytes=DEFAULT_CHUNK_BYTES):
    """(words per chunk, channel period C) for a tensor."""
    size = itemsize(code) if is_float(code) else 1
    per = max(1, chunk_bytes // size)
    C = 1
    if is_float(code) and len(shape) >= 2 and 1 < shape[-1] <= per:
        C = shape[-1]
        per = (per // C) * C
    return per, C


class _Pieces:
    """A write-only file object that keeps the pieces and joins them once
    (on `threads` threads: _join.join)."""

    def __init__(self, threads=1):
        self.pieces = []
        self.threads = threads

    def write(self, b):
        self.pieces.append(b)
        return len(b)

    def getvalue(self):
        return join(self.pieces, self.threads)


def ordered_map(fn, items, threads):
    """Yield fn(item) in order, with at most 2 * threads calls in flight."""
    if threads <= 1:
        for it in items:
            yield fn(it)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending = deque()
        for it in items:
            pending.append(pool.submit(fn, it))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ---------------------------------------------------------------- writing

class ArchiveWriter:
    """Writes an archive to a binary file object, tensor after tensor.

    Float chunks, with the C library, are gathered into batches of at most
    ENCODE_BATCH_CHUNKS full chunks per thread and each batch is coded in one C call on
    `threads` C threads, in the background while the next batch is gathered,
    two batches at most at a time (Python threads would hand the interpreter
    lock back and forth at every chunk). Other chunks (integer tensors, or no C library) are coded in a
    pool of `threads` Python threads, at most 2 * threads at a time. Either
    way chunks are written in order.
    """

    def __init__(self, f, *, flags=0, threads=1, chunk_bytes=DEFAULT_CHUNK_BYTES, progress=None,
                 version=VERSION, resume=None):
        """resume=(entries, pos): continue an archive whose chunks end at pos
        (the old index offset) with f positioned there; nothing is rewritten
        before pos and no header is written."""
        if flags & ~KNOWN_FLAGS:
            raise ValueError("unknown flags")
        if not 1 <= chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be in 1..{MAX_CHUNK_BYTES}")
        self.f = f
        self.flags = flags
        self.threads = max(1, int(threads))
        self.chunk_bytes = int(chunk_bytes)
        self.progress = progress
        if version not in READ_VERSIONS:
            raise ValueError(f"unknown archive version {version}")
        self.version = version
        self.lanes = stream_lanes(version)
        self.entries = []
        self._names = set()
        self._pending = deque()  # futures of [(entry, result)], oldest first
        self._batch = []         # float chunks gathered for the C encoder: (entry, (code, C, split, words))
        self._batch_bytes = 0
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        if resume is None:
            self.pos = HEADER_SIZE
            f.write(_HEAD.pack(MAGIC, version, flags, 0))
        else:
            self.entries, self.pos = list(resume[0]), int(resume[1])
            self._names = {e.name for e in self.entries}

    def _check_name(self, name):
        if not isinstance(name, str):
            raise SSMZipError(f"tensor names must be strings, got {type(name).__name__}")
        if name in self._names:
            raise SSMZipError(f"duplicate tensor name {name!r}")
        if len(name.encode("utf-8")) >= MAX_NAME:
            raise SSMZipError("tensor name too long")
        self._names.add(name)

    def add_words(self, name, code, shape, words):
        """Add a tensor given as its full 1-D word array (see _arrays.to_words)."""
        n = words.shape[0]
        per, C = chunk_plan(code, shape, n, self.chunk_bytes)
        self._add(name, code, shape, C, n, (words[s:s + per] for s in range(0, n, per)))

    def add_stream(self, name, code, shape, nbytes, read):
        """Add a tensor whose nbytes original bytes come from read(k) -> bytes, chunk by chunk."""
        wdt = word_dtype(code)
        size = np.dtype(wdt).itemsize
        if nbytes % size:
            raise SSMZipError(f"tensor {name!r}: {nbytes} bytes is not a whole number of elements")
        per, C = chunk_plan(code, shape, nbytes // size, self.chunk_bytes)

        def chunks():
            left = nbytes
            while left:
                k = min(left, per * size)
                b = read(k)
                if len(b) != k:
                    raise SSMZipError(f"input truncated inside tensor {name!r}")
                left -= k
                yield np.frombuffer(b, wdt)
        self._add(name, code, shape, C, nbytes // size, chunks())

    def add_entry(self, name, code, shape):
        """A new, empty entry; its chunks come from add_chunk (in order)."""
        self._check_name(name)
        if len(shape) > MAX_NDIM:
            raise SSMZipError(f"tensor {name!r} has more than {MAX_NDIM} dimensions")
        entry = Entry(name, code, tuple(int(d) for d in shape), [])
        self.entries.append(entry)
        return entry

    def add_chunk(self, entry, method, pieces, checksum, n, nbytes):
        """Write one chunk coded by the caller (e.g. a lossy one) to entry."""
        if method in LOSSY_METHODS and self.version not in LOSSY_VERSIONS:
            raise ValueError(f"lossy chunks need an archive of version {VERSION_LOSSY}")
        self._drain()
        self._store(entry, (method, pieces, checksum, n, nbytes))

    def _add(self, name, code, shape, C, nwords, chunk_iter):
        entry = self.add_entry(name, code, shape)
        split = nwords >= SPLIT_MIN_ELEMENTS
        batched = is_float(code) and floatsplit.native() is not None

        def work(words):
            return [(entry, encode_chunk(words, code, C, lanes=self.lanes, split=split)
                     + (words.shape[0], words.nbytes))]

        for words in chunk_iter:
            words = np.ascontiguousarray(words)
            if batched:
                self._batch.append((entry, (code, C, split, words)))
                self._batch_bytes += words.nbytes
                if self._batch_bytes >= ENCODE_BATCH_CHUNKS * self.chunk_bytes * self.threads:
                    self._send_batch()
            else:
                self._send_batch()
                self._queue(work, words)

    def _send_batch(self):
        """Queue the gathered float chunks as one C job; then write what is done
        before the previous job (two jobs in flight: while one finishes its last
        chunks on fewer threads than it has, the next keeps the cores busy)."""
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        entries = [e for e, _ in batch]
        chunks = [c for _, c in batch]
        self._queue(lambda: list(zip(entries, encode_float_chunks(chunks, self.lanes, self.threads))))
        while len(self._pending) > 2:
            self._store_oldest()

    def _queue(self, fn, *args):
        """Run fn(*args) -> [(entry, result)] in the pool (here with one thread); results written in order."""
        if self._pool is None:
            for e, r in fn(*args):
                self._store(e, r)
            return
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) >= 2 * self.threads:
            self._store_oldest()

    def _store_oldest(self):
        for e, r in self._pending.popleft().result():
            self._store(e, r)

    def _store(self, entry, result):
        method, pieces, csum, n, nb = result
        clen = 0
        for p in pieces:
            self.f.write(p)
            clen += p.nbytes if isinstance(p, np.ndarray) else len(p)
        entry.chunks.append(Chunk(method, n, clen, csum, self.pos, self.lanes))
        self.pos += clen
        if self.progress is not None:
            self.progress(nb)

    def _drain(self):
        self._send_batch()
        while self._pending:
            self._store_oldest()

    def abort(self):
        """Stop the worker threads without writing the index."""
        self._batch, self._batch_bytes = [], 0
        if self._pool is not None:
            for fut in self._pending:
                fut.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True)
            self._pool = None

    def close(self, extra=b""):
        """Write the remaining chunks, the index and the trailer (the file object stays open)."""
        try:
            self._drain()
        finally:
            self.abort()
        idx = bytearray()
        idx += varint(len(self.entries))
        for e in self.entries:
            nb = e.name.encode("utf-8")
            idx += varint(len(nb)) + nb
            idx += bytes((e.code, len(e.shape)))
            for d in e.shape:
                idx += varint(d)
            idx += varint(len(e.chunks))
            for c in e.chunks:
                idx += bytes((c.method,)) + varint(c.n) + varint(c.clen) + struct.pack("<Q", c.checksum)
        idx += varint(len(extra)) + bytes(extra)
        self.f.write(idx)
        self.f.write(_TRAIL.pack(self.pos, len(idx), zlib.crc32(idx), END_MAGIC))
        self.pos += len(idx) + TRAILER_SIZE


# ---------------------------------------------------------------- reading

def _output_arrays(entries):
    """{name: empty word array} for decoding the entries, all in one
    allocation. Fresh arrays are faulted in page by page as the decoder first
    writes them: 4 KiB pages for small arrays (MiniLM: 25 ms for 45 MB, about
    as long as decoding it), whereas numpy asks the kernel for huge pages for
    one large array (5 ms); and separate large arrays come from wherever the
    allocator has room, which made decoding times vary by a third from call to
    call. The shared buffer is freed when the last of its tensors is."""
    outs = {}
    if len(entries) == 1:
        e = entries[0]
        return {e.name: np.empty(e.nwords, word_dtype(e.code))}
    arena = np.empty(sum(-(-e.nbytes // 64) * 64 for e in entries) + 64, np.uint8)
    at = -arena.ctypes.data % 64
    for e in entries:  # 64-byte aligned: no cache line shared by two tensors
        outs[e.name] = arena[at:at + e.nbytes].view(word_dtype(e.code))
        at += -(-e.nbytes // 64) * 64
    return outs


class ArchiveReader:
    """Random access to an archive in memory (bytes-like) or in a file (path or binary file object)."""

    def __init__(self, src):
        self._own = False
        self._lock = threading.Lock()
        if isinstance(src, (bytes, bytearray, memoryview)):
            self._buf = memoryview(src).cast("B") if isinstance(src, memoryview) else memoryview(src)
            self._f = None
            self.size = len(self._buf)
        else:
            self._buf = None
            if isinstance(src, (str, os.PathLike)):
                self._f = open(src, "rb")
                self._own = True
            else:
                self._f = src
            self._f.seek(0, io.SEEK_END)
            self.size = self._f.tell()
        try:
            self._read_meta()
        except BaseException:
            self.close()
            raise

    def close(self):
        if self._own and self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read(self, offset, n):
        if offset < 0 or n < 0 or offset + n > self.size:
            raise SSMZipError("corrupt data: read past the end of the archive")
        if self._buf is not None:
            return self._buf[offset:offset + n]
        fd = getattr(self._f, "fileno", None)
        if fd is not None and hasattr(os, "pread"):
            try:
                b = os.pread(fd(), n, offset)
            except (OSError, io.UnsupportedOperation):
                b = None
            if b is not None:
                if len(b) != n:
                    raise SSMZipError("archive file truncated while reading")
                return b
        with self._lock:
            self._f.seek(offset)
            b = self._f.read(n)
        if len(b) != n:
            raise SSMZipError("archive file truncated while reading")
        return b

    def _read_meta(self):
        if self.size < HEADER_SIZE:
            head = bytes(self._read(0, self.size))
            if head and MAGIC.startswith(head[:len(MAGIC)]):
                raise SSMZipError("corrupt data: archive truncated (shorter than its header)")
            raise SSMZipError("not an ssmzip tensor archive (bad magic)" if head else "empty input (not an ssmzip tensor archive)")
        magic, version, flags, reserved = _HEAD.unpack(bytes(self._read(0, HEADER_SIZE)))
        if magic != MAGIC:
            raise SSMZipError("not an ssmzip tensor archive (bad magic)")
        if version not in READ_VERSIONS:
            raise SSMZipError(f"unsupported tensor archive version {version} "
                              f"(this ssmzip reads {', '.join(map(str, READ_VERSIONS))})")
        self.version = version
        if flags & ~KNOWN_FLAGS or reserved:
            raise SSMZipError(f"unsupported tensor archive flags {flags:#x}")
        self.flags = flags
        if self.size < HEADER_SIZE + TRAILER_SIZE:
            raise SSMZipError("corrupt data: archive truncated (no trailer)")
        ioff, ilen, icrc, end = _TRAIL.unpack(bytes(self._read(self.size - TRAILER_SIZE, TRAILER_SIZE)))
        if end != END_MAGIC:
            raise SSMZipError("corrupt data: archive truncated or damaged (bad trailer)")
        if ioff < HEADER_SIZE or ioff + ilen + TRAILER_SIZE != self.size:
            raise SSMZipError("corrupt data: bad index position")
        idx = bytes(self._read(ioff, ilen))
        if zlib.crc32(idx) != icrc:
            raise SSMZipError("corrupt data: index checksum mismatch")
        self.index_offset = ioff
        self.entries = self._parse_index(idx, ioff)
        self._by_name = {e.name: e for e in self.entries}

    def _parse_index(self, idx, data_end):
        r = Reader(idx, "index")
        nt = r.varint(len(idx))
        entries = []
        names = set()
        pos = HEADER_SIZE
        for _ in range(nt):
            ln = r.varint(MAX_NAME - 1)
            try:
                name = bytes(r.take(ln)).decode("utf-8")
            except UnicodeDecodeError:
                raise SSMZipError("corrupt data: tensor name is not UTF-8") from None
            if name in names:
                raise SSMZipError(f"corrupt data: duplicate tensor name {name!r}")
            names.add(name)
            code = r.u8()
            if code not in DTYPES:
                raise SSMZipError(f"corrupt data: unknown dtype code {code} for tensor {name!r}")
            ndim = r.u8()
            if ndim > MAX_NDIM:
                raise SSMZipError(f"corrupt data: tensor {name!r} has {ndim} dimensions")
            shape = tuple(r.varint(1 << 62) for _ in range(ndim))
            count = 1
            for d in shape:
                count *= d
            unit = itemsize(code) if is_float(code) else 1
            row = 1
            for d in shape[1:]:
                row *= d
            want = count * (1 if is_float(code) else itemsize(code))  # words: elements, or bytes
            nch = r.varint(r.remaining())
            chunks = []
            total = 0
            for j in range(nch):
                where = f"chunk {j} of tensor {name!r}"
                method = r.u8()
                n = r.varint(MAX_CHUNK_BYTES // unit)
                clen = r.varint(data_end)
                csum = r.u64()
                if n < 1:
                    raise SSMZipError(f"corrupt data: empty {where}")
                if method == METHOD_RAW:
                    ok = clen == n * unit
                elif method == METHOD_SPLIT:
                    ok = is_float(code) and n * unit <= SPLIT_MAX_RATIO * clen
                elif method == METHOD_ZLIB:
                    ok = not is_float(code) and n <= ZLIB_MAX_RATIO * clen + 64
                elif method in LOSSY_METHODS and self.version in LOSSY_VERSIONS:
                    ok = code in LOSSY_CODES and row > 0 and n % row == 0 and n * unit <= SPLIT_MAX_RATIO * clen
                else:
                    raise SSMZipError(f"corrupt data: unknown method {method} in {where}")
                if not ok:
                    raise SSMZipError(f"corrupt data: sizes inconsistent in {where}")
                chunks.append(Chunk(method, n, clen, csum, pos, stream_lanes(self.version)))
                pos += clen
                total += n
                if pos > data_end:
                    raise SSMZipError(f"corrupt data: {where} runs past the data")
            if total != want:
                raise SSMZipError(f"corrupt data: tensor {name!r} has {total} coded elements for shape {shape}")
            entries.append(Entry(name, code, shape, chunks))
        el = r.varint(r.remaining())
        self.extra = bytes(r.take(el))
        r.done()
        if pos != data_end:
            raise SSMZipError("corrupt data: chunk sizes do not add up to the data size")
        return entries

    # -- access

    def names(self):
        return [e.name for e in self.entries]

    def entry(self, name):
        try:
            return self._by_name[name]
        except KeyError:
            raise SSMZipError(f"no tensor named {name!r} in the archive") from None

    def _decode_one(self, entry, j, out):
        c = entry.chunks[j]
        decode_chunk(c, self._read(c.offset, c.clen), entry.code, out, _where(entry, j), entry.row)

    def read_many(self, entries, threads=1):
        """{name: 1-D word array} for the entries; all their chunks decoded in parallel threads."""
        outs = _output_arrays(entries)
        jobs = []
        for e in entries:
            out = outs[e.name]
            s = 0
            for j, c in enumerate(e.chunks):
                jobs.append((e, j, out[s:s + c.n]))
                s += c.n
        # split chunks with 32-lane streams: decoded in C threads, many per call (no GIL, no
        # Python per chunk), in groups of at most BATCH_BYTES of payload
        if floatsplit.native() is not None:
            in_c = [_c_decodable(e.chunks[j]) for e, j, _ in jobs]
            batch = [job for job, c in zip(jobs, in_c) if c]
            jobs = [job for job, c in zip(jobs, in_c) if not c]
            a = 0
            while a < len(batch):
                b, size = a, 0
                while b < len(batch) and size < BATCH_BYTES:
                    size += batch[b][0].chunks[batch[b][1]].clen
                    b += 1
                self._decode_batch(batch[a:b], threads)
                a = b
        if threads > 1:  # raw chunks are a copy: cheaper here than handing them to a thread
            for job in [job for job in jobs if job[0].chunks[job[1]].method == METHOD_RAW]:
                self._decode_one(*job)
            jobs = [job for job in jobs if job[0].chunks[job[1]].method != METHOD_RAW]
        if threads <= 1 or len(jobs) <= 1:
            for job in jobs:
                self._decode_one(*job)
        else:  # the outputs exist already: hand every chunk to the pool at once, largest first
            jobs.sort(key=lambda job: -job[2].shape[0])
            with ThreadPoolExecutor(threads) as pool:
                for f in [pool.submit(self._decode_one, *job) for job in jobs]:
                    f.result()
        return outs

    def _decode_batch(self, group, threads):
        """Split chunks (entry, j, out), in archive order, in one floatsplit.decode_many
        call (largest first, so that the threads finish together), then checked in
        archive order: the first bad chunk raises, as _decode_one would."""
        order = sorted(range(len(group)), key=lambda k: -group[k][2].shape[0])
        items = []
        for k in order:
            e, j, out = group[k]
            c = e.chunks[j]
            W, E, _ = FLOAT_SPECS[DTYPES[e.code][0]]
            items.append((self._read(c.offset, c.clen), W, E, out))
        results = dict(zip(order, floatsplit.decode_many(items, threads)))
        for k, (e, j, _) in enumerate(group):
            code, h = results[k]
            if code != 1:
                floatsplit.raise_for(code)
            if h != e.chunks[j].checksum:
                raise SSMZipError(f"corrupt data: checksum mismatch in {_where(e, j)}")

    def chunk_payload(self, entry, j):
        c = entry.chunks[j]
        return self._read(c.offset, c.clen)

    def read_words(self, name_or_entry, threads=1):
        """The tensor's words (1-D numpy array), chunks decoded in parallel threads."""
        e = name_or_entry if isinstance(name_or_entry, Entry) else self.entry(name_or_entry)
        return self.read_many([e], threads)[e.name]

    def iter_bytes(self, entries, threads=1):
        """Yield the original bytes of the entries (one or a list), chunk by chunk, in order
        (numpy uint8 arrays); at most 2 * threads chunks are decoded ahead."""
        if isinstance(entries, Entry):
            entries = [entries]
        jobs = [(e, j) for e in entries for j in range(len(e.chunks))]

        def one(job):
            e, j = job
            out = np.empty(e.chunks[j].n, word_dtype(e.code))
            self._decode_one(e, j, out)
            return out.view(np.uint8)
        yield from ordered_map(one, jobs, threads)

    def info(self):
        return {
            "format": "ssmzip tensor archive",
            "version": self.version,
            "file_image": bool(self.flags & FLAG_FILE_IMAGE),
            "size": self.size,
            "tensors": [e.info() for e in self.entries],
        }
