"""Tensor-aware lossless compression of ``.safetensors`` files.

A safetensors file is ``u64 N | N bytes of JSON header | data``; the header
maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the data) plus an optional ``"__metadata__"``.
``compress_safetensors`` writes a tensor archive (archive.py) flagged
FILE_IMAGE whose entries, concatenated in index order, are the original file
byte for byte: the header (8-byte length + JSON) as a byte entry, then every
tensor in file order (float tensors with the split codec, others with
deflate), with any bytes between or after tensors as byte entries. Both
directions stream: memory is bounded by the chunk size times the threads,
not by the file size.

Entry points for the command line (see the report / FORMAT.md):

    is_safetensors(path_or_head) -> bool
    compress_safetensors(src, dst, progress=None, threads=1) -> stats dict
    is_compressed_safetensors(path_or_head) -> bool     (archive magic + FILE_IMAGE flag)
    decompress_safetensors(src, dst, progress=None, threads=1) -> bytes written
    original_size(src) -> bytes the decompression will write (progress total)
    list_safetensors(path) -> list of row dicts
"""
import contextlib
import json
import os
import struct
import tempfile

from ssmzip.errors import SSMZipError
from ssmzip.kv import archive as A
from ssmzip.kv._arrays import CODE_OF, DTYPES, ST_TO_NAME

MAX_HEADER = 100 * 1000 * 1000   # the limit the safetensors library enforces
HEADER_ENTRY = "\x00header"
EXTRA = b'{"file": "safetensors"}'
SUFFIX = ".ssz"


class _Layout:
    """A parsed safetensors header: segments of the file in order."""

    def __init__(self, header_len, tensors, metadata, size):
        self.header_len = header_len      # 8 + N
        self.tensors = tensors            # [(name, st_dtype, shape, begin, end)] sorted by begin (absolute)
        self.metadata = metadata
        self.size = size


def _parse_header(head8, read_json, size):
    """Validate and parse; raises SSMZipError with the reason if not a safetensors file."""
    if len(head8) < 8:
        raise SSMZipError("not a safetensors file (shorter than 8 bytes)")
    n = struct.unpack("<Q", bytes(head8[:8]))[0]
    if n < 2 or n > MAX_HEADER:
        raise SSMZipError("not a safetensors file (bad header length)")
    if size is not None and 8 + n > size:
        raise SSMZipError("not a safetensors file (header longer than the file)")
    raw = read_json(n)
    if len(raw) != n:
        raise SSMZipError("not a safetensors file (truncated header)")
    if raw[:1] != b"{":
        raise SSMZipError("not a safetensors file (header is not a JSON object)")
    try:
        hdr = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SSMZipError("not a safetensors file (header is not valid JSON)") from None
    if not isinstance(hdr, dict):
        raise SSMZipError("not a safetensors file (header is not a JSON object)")
    meta = hdr.get("__metadata__")
    tensors = []
    data0 = 8 + n
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        if not isinstance(t, dict) or not isinstance(t.get("dtype"), str):
            raise SSMZipError(f"not a safetensors file (bad entry for {name!r})")
        shape = t.get("shape")
        offs = t.get("data_offsets")
        if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
                or not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
                or not 0 <= offs[0] <= offs[1]):
            raise SSMZipError(f"not a safetensors file (bad shape or offsets for {name!r})")
        if len(shape) > A.MAX_NDIM:
            raise SSMZipError(f"tensor {name!r} has more than {A.MAX_NDIM} dimensions")
        tensors.append((name, t["dtype"], tuple(shape), data0 + offs[0], data0 + offs[1]))
    tensors.sort(key=lambda t: (t[3], t[4]))
    end = data0
    for name, _, _, b, e in tensors:
        if b < end:
            raise SSMZipError(f"not a safetensors file (tensor {name!r} overlaps another)")
        end = e
    if size is not None and end > size:
        raise SSMZipError("not a safetensors file (tensor data past the end of the file)")
    return _Layout(data0, tensors, meta, size)


@contextlib.contextmanager
def _output(dst):
    """A binary file to write dst through. For a path: a temporary file beside it,
    renamed into place when the block succeeds and removed when it fails, so a
    failure never leaves a partial file. A file object is used as it is."""
    if not isinstance(dst, (str, os.PathLike)):
        yield dst
        return
    fd, tmp = tempfile.mkstemp(prefix=".ssz-", dir=os.path.dirname(os.path.abspath(dst)))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _open(src, mode="rb"):
    if isinstance(src, (str, os.PathLike)):
        return open(src, mode), True
    return src, False


def read_layout(path):
    """Parse the header of a safetensors file (path or binary file object)."""
    f, own = _open(path)
    try:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(0)
        return _parse_header(f.read(8), f.read, size)
    finally:
        if own:
            f.close()


def is_safetensors(path_or_head):
    """True if a file (path or binary file object) is a valid safetensors file,
    or if bytes look like the start of one (length + '{', and the whole JSON
    header is checked when the bytes contain it)."""
    try:
        if isinstance(path_or_head, (bytes, bytearray, memoryview)):
            b = bytes(path_or_head)
            if len(b) < 9:
                return False
            n = struct.unpack("<Q", b[:8])[0]
            if not 2 <= n <= MAX_HEADER or b[8:9] != b"{":
                return False
            if len(b) >= 8 + n:
                _parse_header(b[:8], lambda k: b[8:8 + k], None)
            return True
        if hasattr(path_or_head, "read"):
            pos = path_or_head.tell()
            try:
                read_layout(path_or_head)
            finally:
                path_or_head.seek(pos)
            return True
        read_layout(path_or_head)
        return True
    except (SSMZipError, OSError):
        return False


def _entry_code(st_dtype, shape, nbytes):
    """(archive dtype code, shape) for a tensor; unknown dtypes or inconsistent sizes -> bytes."""
    name = ST_TO_NAME.get(st_dtype)
    if name is not None:
        count = 1
        for d in shape:
            count *= d
        if count * DTYPES[CODE_OF[name]][1] == nbytes:
            return CODE_OF[name], shape
    return 0, (nbytes,)


def compress_safetensors(src, dst, progress=None, threads=1, chunk_bytes=A.DEFAULT_CHUNK_BYTES):
    """Compress a safetensors file (path or binary file) into a tensor archive (path or binary file).

    progress(nbytes) is called as input bytes are consumed (e.g. tqdm's update).
    Returns {"input": bytes in, "output": bytes out, "tensors": count}.
    Raises SSMZipError if src is not a valid safetensors file.
    """
    fin, own_in = _open(src)
    try:
        fin.seek(0, os.SEEK_END)
        size = fin.tell()
        fin.seek(0)
        lay = _parse_header(fin.read(8), fin.read, size)
        fin.seek(0)
        with _output(dst) as fout:
            w = None
            try:
                w = A.ArchiveWriter(fout, flags=A.FLAG_FILE_IMAGE, threads=threads,
                                    chunk_bytes=chunk_bytes, progress=progress)
                names = {t[0] for t in lay.tensors}

                def blob_name(base):
                    name = base
                    k = 0
                    while name in names:
                        k += 1
                        name = f"{base}#{k}"
                    names.add(name)
                    return name

                def read(k):
                    return fin.read(k)

                w.add_stream(blob_name(HEADER_ENTRY), 0, (lay.header_len,), lay.header_len, read)
                pos = lay.header_len
                for name, st_dtype, shape, b, e in lay.tensors:
                    if b > pos:
                        w.add_stream(blob_name(f"\x00gap@{pos}"), 0, (b - pos,), b - pos, read)
                    code, eshape = _entry_code(st_dtype, shape, e - b)
                    w.add_stream(name, code, eshape, e - b, read)
                    pos = e
                if size > pos:
                    w.add_stream(blob_name(f"\x00gap@{pos}"), 0, (size - pos,), size - pos, read)
                w.close(extra=EXTRA)
                out_size = w.pos
                w = None
            finally:
                if w is not None:
                    w.abort()
        return {"input": size, "output": out_size, "tensors": len(lay.tensors)}
    finally:
        if own_in:
            fin.close()


def is_compressed_safetensors(path_or_head):
    """True if a file (path / binary file) or its first 16 bytes is a tensor
    archive made by compress_safetensors (magic and FILE_IMAGE flag)."""
    try:
        if isinstance(path_or_head, (bytes, bytearray, memoryview)):
            head = bytes(path_or_head[:A.HEADER_SIZE])
        elif hasattr(path_or_head, "read"):
            pos = path_or_head.tell()
            head = path_or_head.read(A.HEADER_SIZE)
            path_or_head.seek(pos)
        else:
            with open(path_or_head, "rb") as f:
                head = f.read(A.HEADER_SIZE)
    except OSError:
        return False
    if len(head) < A.HEADER_SIZE or not A.is_archive(head):
        return False
    flags = struct.unpack("<H", head[10:12])[0]
    return bool(flags & A.FLAG_FILE_IMAGE)


def decompress_safetensors(src, dst, progress=None, threads=1):
    """Rebuild the original file from an archive made by compress_safetensors.

    src: path, bytes or binary file; dst: path (written to a temporary file
    then renamed, so a failure leaves nothing behind) or binary file object.
    progress(nbytes) is called as output bytes are produced. Returns the
    number of bytes written. Raises SSMZipError on any corruption.
    """
    with A.ArchiveReader(src) as r:
        if not r.flags & A.FLAG_FILE_IMAGE:
            raise SSMZipError("this tensor archive does not hold a file (it was made by encode(), not from a .safetensors)")
        total = 0
        with _output(dst) as fout:
            for b in r.iter_bytes(r.entries, threads):
                fout.write(b)
                total += b.nbytes
                if progress is not None:
                    progress(b.nbytes)
        return total


def original_size(src):
    """Bytes that decompress_safetensors(src, ...) will write (a progress bar's total)."""
    with A.ArchiveReader(src) as r:
        return sum(e.nbytes for e in r.entries)


def list_safetensors(path):
    """Rows describing a compressed safetensors archive (path, bytes or binary file):
    one per entry in file order, dicts with name, kind ("tensor", "header",
    "padding"), dtype (the safetensors dtype string), shape, nbytes,
    compressed, ratio, method. Only the small header entry is decoded."""
    with A.ArchiveReader(path) as r:
        st_dtypes = {}
        if r.flags & A.FLAG_FILE_IMAGE and r.entries and r.entries[0].name.startswith(HEADER_ENTRY):
            head = b"".join(bytes(b) for b in r.iter_bytes(r.entries[0]))
            try:
                lay = _parse_header(head[:8], lambda k: head[8:8 + k], None)
                st_dtypes = {t[0]: (t[1], t[2]) for t in lay.tensors}
            except SSMZipError:
                st_dtypes = {}
        rows = []
        for i, e in enumerate(r.entries):
            info = e.info()
            if e.name in st_dtypes:
                kind = "tensor"
                dtype, shape = st_dtypes[e.name]
            elif i == 0 and e.name.startswith(HEADER_ENTRY):
                kind, dtype, shape = "header", "", (e.nbytes,)
            elif e.name.startswith("\x00gap@"):
                kind, dtype, shape = "padding", "", (e.nbytes,)
            else:
                kind, dtype, shape = "tensor", DTYPES[e.code][3] or DTYPES[e.code][0], e.shape
            rows.append({
                "name": e.name if kind == "tensor" else f"({kind})",
                "kind": kind,
                "dtype": dtype,
                "shape": tuple(shape),
                "nbytes": info["nbytes"],
                "compressed": info["compressed"],
                "ratio": info["ratio"],
                "method": "+".join(info["methods"]) if info["methods"] else "-",
            })
        return rows
