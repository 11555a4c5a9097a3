"""The Python API: compress / decompress bytes, open .ssz files as streams, inspect them.

    import ssmzip
    blob = ssmzip.compress(data, level=6, threads=2)
    assert ssmzip.decompress(blob) == data
    with ssmzip.open("log.ssz", "wb") as f:   # streams block by block
        f.write(chunk)
    ssmzip.info("log.ssz").uncompressed_size

Memory is bounded by the block size times the number of blocks in flight
(``2 * threads``), never by the file size. Bad data raises SSMZipError.
"""
from __future__ import annotations

import builtins
import io
import operator
import os
import warnings
from collections import deque
from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional, Union

from . import container
from .engine import DEFAULT_LEVEL, Preset, block_threads, codes_without_gil, preset_for_level
from .parallel import OrderedPool

Progress = Optional[Callable[[int], None]]
FileArg = Union[str, bytes, "os.PathLike", BinaryIO]

_READ_MODES = {"r": "rb", "rb": "rb"}
_WRITE_MODES = {"w": "wb", "wb": "wb", "x": "xb", "xb": "xb"}


def _block_pool(threads: int, backend: Optional[str], device, batch: Optional[int]):
    """Where blocks are coded: an OrderedPool (threads, or worker processes; the
    default), or batches on torch (backend="torch": ssmzip.batching). The output
    bytes are the same."""
    if backend in (None, "cpu"):
        if batch is not None or device is not None:
            raise ValueError("batch and device are for backend='torch'")
        return OrderedPool(threads)
    if backend != "torch":
        raise ValueError(f"backend must be 'cpu' or 'torch', got {backend!r}")
    from . import batching
    return batching.batch_pool(batching.DEFAULT_BATCH if batch is None else batch, device)


def _how(preset: Preset) -> dict:
    """How the pool should run blocks of this preset (OrderedPool.submit's keywords)."""
    return {"gil_free": codes_without_gil(preset), "threads": block_threads(preset)}


def _block_size(preset: Preset, block_size: Optional[int]) -> int:
    bs = preset.block_size if block_size is None else operator.index(block_size)
    if not container.MIN_BLOCK_SIZE <= bs <= container.MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be {container.MIN_BLOCK_SIZE}.."
                         f"{container.MAX_BLOCK_SIZE}, got {bs}")
    return bs


def _preset(level: int, preset: Optional[Preset]) -> Preset:
    if preset is not None:
        if not isinstance(preset, Preset):
            raise TypeError("preset must be an ssmzip.engine.Preset")
        return preset
    if isinstance(level, bool):
        raise TypeError("level must be an int, got bool")
    return preset_for_level(operator.index(level))


class _BlockProgress:
    """Turns the engine's per-block "bytes done" into deltas for the caller."""

    __slots__ = ("cb", "done")

    def __init__(self, cb):
        self.cb, self.done = cb, 0

    def __call__(self, n: int) -> None:
        if n > self.done:
            self.cb(n - self.done)
            self.done = n

    def finish(self, size: int) -> None:
        self(size)


def _progress_for(cb: Progress):
    return _BlockProgress(cb) if cb is not None else None


# --------------------------------------------------------------------------
# Reading


class _Reader(io.RawIOBase):
    """Decoded bytes of a stream, one block at a time (wrapped in a BufferedReader)."""

    def __init__(self, fp: BinaryIO, pool, progress: Progress):
        self._fp = fp
        self._progress = progress
        self._pool = pool
        self._jobs: deque = deque()       # (size, progress) of each job in the pool
        self._blocks = iter(())
        self._all_read = False
        self._buf = memoryview(b"")
        self._pos = 0                     # decoded bytes returned so far
        self._header = container.read_header(fp)
        expected = self._read_index_if_seekable()
        self._blocks = container.iter_blocks(fp, self._header, expected)
        #: uncompressed size, known before decoding when the input is seekable
        self.total_size = expected.total_size if expected is not None else None

    def _read_index_if_seekable(self) -> Optional[container.Index]:
        # Checking the index first gives the total size up front and rejects a
        # truncated or inconsistent file before any slow decoding.
        try:
            if not self._fp.seekable():
                return None
            after_header = self._fp.tell()
        except (AttributeError, ValueError, OSError):
            return None
        start = after_header - self._header.size
        index = container.read_index(self._fp, self._header, start)
        container.check_block_headers(self._fp, self._header, index, start)
        self._fp.seek(after_header)
        return index

    def readable(self) -> bool:
        return True

    def _next_block(self) -> bool:
        """Make the next decoded block current; False at the end of the stream."""
        pool = self._pool
        while not self._all_read and not pool.full():
            try:
                number, rec, payload = next(self._blocks)
            except StopIteration:
                self._all_read = True
                break
            prog = _progress_for(self._progress)
            pool.submit(container.decompress_block, number, rec, payload,
                        self._header.preset, progress=prog, **_how(self._header.preset))
            self._jobs.append((rec.size, prog))
        if not self._jobs:
            return False
        size, prog = self._jobs.popleft()
        self._buf = memoryview(pool.pop())
        if prog is not None:
            prog.finish(size)
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            if not self._next_block():
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self._pos += n
        return n

    def readall(self) -> bytes:
        parts = []
        while self._buf or self._next_block():
            parts.append(bytes(self._buf))
            self._pos += len(self._buf)
            self._buf = memoryview(b"")
        return b"".join(parts)

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._pool.close(abort=len(self._pool) > 0)
            close = getattr(self._blocks, "close", None)
            if close is not None:
                close()
            self._buf = memoryview(b"")
        super().close()


# --------------------------------------------------------------------------
# Writing


class _Writer:
    """Cuts written bytes into blocks, codes them (maybe in parallel) and writes them in order."""

    def __init__(self, fp: BinaryIO, preset: Preset, block_size: int, pool, progress: Progress):
        self._fp = fp
        self._preset = preset
        self._block_size = block_size
        self._progress = progress
        self._pool = pool
        self._jobs: deque = deque()       # (size, progress) of each job in the pool
        self._records: list = []
        self._total = 0                   # bytes written by the caller
        self._buf = bytearray()
        fp.write(container.pack_header(preset, block_size))

    def write(self, data) -> int:
        mv = memoryview(data).cast("B")
        n = len(mv)
        self._total += n
        bs = self._block_size
        if self._buf:
            take = min(n, bs - len(self._buf))
            self._buf += mv[:take]
            mv = mv[take:]
            if len(self._buf) == bs:
                self._submit(bytes(self._buf))
                self._buf.clear()
        while len(mv) >= bs:                # whole blocks straight from the caller's buffer
            self._submit(bytes(mv[:bs]))
            mv = mv[bs:]
        self._buf += mv
        return n

    def _submit(self, block: bytes) -> None:
        while self._pool.full():
            self._write_next()
        prog = _progress_for(self._progress)
        self._pool.submit(container.compress_block, block, self._preset, progress=prog, **_how(self._preset))
        self._jobs.append((len(block), prog))

    def _write_next(self) -> None:
        size, prog = self._jobs.popleft()
        rec, payload = self._pool.pop()
        self._fp.write(rec.pack_header())
        self._fp.write(payload)
        self._records.append(rec)
        if prog is not None:
            prog.finish(size)

    def finish(self) -> None:
        """Code what is left and write the index and footer."""
        if self._buf:
            self._submit(bytes(self._buf))
            self._buf.clear()
        while self._jobs:
            self._write_next()
        self._pool.close()
        self._fp.write(container.pack_trailer(self._records, self._total))

    def abort(self) -> None:
        self._pool.close(abort=True)
        self._buf.clear()

    @property
    def total(self) -> int:
        return self._total


# --------------------------------------------------------------------------
# The file object


class SSMZipFile(io.BufferedIOBase):
    """A binary file object over an .ssz stream, read or written block by block.

    ``file`` is a path or a binary file object. Modes: ``"rb"`` (or ``"r"``),
    ``"wb"`` (``"w"``) and ``"xb"`` (``"x"``). When writing, ``level`` (1..9)
    or an explicit engine ``preset`` choose the model, ``block_size`` the
    block size (default: the preset's), ``threads`` how many blocks are coded
    at once, on threads or worker processes (0 = all cores; the output is the
    same for any value). ``progress``, if
    given, is called with the number of uncompressed bytes just processed.
    ``backend="torch"`` codes the SSM of levels 7-9 on torch (GPU mode,
    ``pip install 'ssmzip[gpu]'``), ``batch`` blocks at a time (default 16),
    on ``device`` (default: CUDA if there is one, else the CPU); the bytes
    are the same as the CPU backend's.

    Closing a writer codes the last block and writes the index. Leaving a
    ``with`` block by an exception does not: the stream is left without its
    end, so it cannot later pass for complete. ``flush()`` flushes the
    underlying file but does not end a block.
    """

    def __init__(self, file: FileArg, mode: str = "rb", *, level: int = DEFAULT_LEVEL,
                 threads: int = 1, block_size: Optional[int] = None,
                 preset: Optional[Preset] = None, progress: Progress = None,
                 backend: Optional[str] = None, device=None, batch: Optional[int] = None):
        self._reader: Optional[io.BufferedReader] = None
        self._writer: Optional[_Writer] = None
        self._owns_fp = False
        if mode in _READ_MODES:
            mode = _READ_MODES[mode]
        elif mode in _WRITE_MODES:
            mode = _WRITE_MODES[mode]
        else:
            raise ValueError(f"invalid mode {mode!r} (use 'rb', 'wb' or 'xb')")
        if isinstance(file, (str, bytes, os.PathLike)):
            self._fp = builtins.open(file, mode)
            self._owns_fp = True
            self.name = os.fsdecode(file)
        elif hasattr(file, "read" if mode == "rb" else "write"):
            self._fp = file
            self.name = getattr(file, "name", "")
        else:
            raise TypeError("file must be a path or a binary file object")
        self.mode = mode
        try:
            if mode == "rb":
                raw = _Reader(self._fp, _block_pool(threads, backend, device, batch), progress)
                self._reader = io.BufferedReader(raw, io.DEFAULT_BUFFER_SIZE)
            else:
                p = _preset(level, preset)
                bs = _block_size(p, block_size)
                self._writer = _Writer(self._fp, p, bs, _block_pool(threads, backend, device, batch),
                                       progress)
        except BaseException:
            self._close(abort=True)
            raise

    # -- state

    def readable(self) -> bool:
        self._check_open()
        return self._reader is not None

    def writable(self) -> bool:
        self._check_open()
        return self._writer is not None

    def seekable(self) -> bool:
        return False

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _need_reader(self) -> io.BufferedReader:
        self._check_open()
        if self._reader is None:
            raise io.UnsupportedOperation("not open for reading")
        return self._reader

    @property
    def total_size(self) -> Optional[int]:
        """Uncompressed size of the stream being read, when known before decoding (seekable input)."""
        return self._reader.raw.total_size if self._reader is not None else None

    # -- reading

    def read(self, size: Optional[int] = -1) -> bytes:
        return self._need_reader().read(size)

    def read1(self, size: int = -1) -> bytes:
        return self._need_reader().read1(size)

    def readinto(self, b) -> int:
        return self._need_reader().readinto(b)

    def peek(self, size: int = 0) -> bytes:
        return self._need_reader().peek(size)

    def readline(self, size: Optional[int] = -1) -> bytes:
        return self._need_reader().readline(size)

    # -- writing

    def write(self, data) -> int:
        self._check_open()
        if self._writer is None:
            raise io.UnsupportedOperation("not open for writing")
        return self._writer.write(data)

    def flush(self) -> None:
        self._check_open()
        if self._writer is not None:
            self._fp.flush()

    def tell(self) -> int:
        self._check_open()
        if self._writer is not None:
            return self._writer.total
        return self._reader.tell()

    # -- closing

    def close(self) -> None:
        self._close(abort=False)

    def _close(self, abort: bool) -> None:
        if self.closed:
            return
        try:
            if self._writer is not None:
                if abort:
                    self._writer.abort()
                else:
                    try:
                        self._writer.finish()
                    except BaseException:
                        self._writer.abort()
                        raise
            elif self._reader is not None:
                self._reader.close()
        finally:
            try:
                super().close()     # marks us closed (after flushing the file)
            finally:
                if self._owns_fp:
                    self._fp.close()

    def __exit__(self, exc_type, exc, tb):
        self._close(abort=exc_type is not None)

    def __del__(self):
        # Never finish a stream from the garbage collector: coding the last
        # block may take minutes and need worker processes, which is no job
        # for a finaliser, and it would give a valid-looking end to a stream
        # abandoned after an error. Release workers and files, and say so.
        if not getattr(self, "closed", True):
            if self._writer is not None:
                warnings.warn(f"unclosed SSMZipFile {self.name!r} in write mode: the stream "
                              "was left unfinished", ResourceWarning, stacklevel=2)
            self._close(abort=True)


# --------------------------------------------------------------------------
# Module-level helpers


def open(file: FileArg, mode: str = "rb", *, level: int = DEFAULT_LEVEL, threads: int = 1,
         block_size: Optional[int] = None, preset: Optional[Preset] = None,
         encoding: Optional[str] = None, errors: Optional[str] = None,
         newline: Optional[str] = None, progress: Progress = None,
         backend: Optional[str] = None, device=None, batch: Optional[int] = None):
    """Open an .ssz file: an SSMZipFile in binary modes, a TextIOWrapper in "rt"/"wt"/"xt"."""
    text = "t" in mode
    if text and "b" in mode:
        raise ValueError(f"invalid mode {mode!r}")
    if not text and (encoding is not None or errors is not None or newline is not None):
        raise ValueError("encoding, errors and newline are only for text modes")
    f = SSMZipFile(file, mode.replace("t", ""), level=level, threads=threads,
                   block_size=block_size, preset=preset, progress=progress,
                   backend=backend, device=device, batch=batch)
    return io.TextIOWrapper(f, encoding, errors, newline) if text else f


def compress(data, level: int = DEFAULT_LEVEL, threads: int = 1,
             block_size: Optional[int] = None, *, preset: Optional[Preset] = None,
             backend: Optional[str] = None, device=None, batch: Optional[int] = None) -> bytes:
    """Compress bytes into a complete .ssz stream (backend, device, batch: see SSMZipFile)."""
    out = io.BytesIO()
    with SSMZipFile(out, "wb", level=level, threads=threads, block_size=block_size,
                    preset=preset, backend=backend, device=device, batch=batch) as f:
        f.write(data)
    return out.getvalue()


def decompress(data, threads: int = 1, *, backend: Optional[str] = None, device=None,
               batch: Optional[int] = None) -> bytes:
    """Decompress one complete .ssz stream; raise SSMZipError if it is not exactly that."""
    with SSMZipFile(io.BytesIO(data), "rb", threads=threads, backend=backend, device=device,
                    batch=batch) as f:
        return f.read()


def compress_many(items, level: int = DEFAULT_LEVEL, threads: int = 1,
                  block_size: Optional[int] = None, *, preset: Optional[Preset] = None,
                  backend: Optional[str] = None, device=None, batch: Optional[int] = None) -> list:
    """Compress several inputs into one .ssz stream each (each equal to compress(item)),
    coding the blocks of all of them together: with backend="torch", blocks of
    different inputs share a batch, so many small files keep a GPU busy."""
    p = _preset(level, preset)
    bs = _block_size(p, block_size)
    pool = _block_pool(threads, backend, device, batch)
    parts = [[container.pack_header(p, bs)] for _ in items]
    records: list = [[] for _ in items]
    sizes = [0] * len(items)
    owner: deque = deque()              # which input each job in the pool belongs to

    def take():
        rec, payload = pool.pop()
        i = owner.popleft()
        parts[i] += [rec.pack_header(), payload]
        records[i].append(rec)
    try:
        for i, data in enumerate(items):
            mv = memoryview(data).cast("B")
            sizes[i] = len(mv)
            for o in range(0, len(mv), bs):
                while pool.full():
                    take()
                pool.submit(container.compress_block, bytes(mv[o:o + bs]), p, **_how(p))
                owner.append(i)
        while owner:
            take()
    finally:
        pool.close(abort=bool(owner))
    return [b"".join(parts[i]) + container.pack_trailer(records[i], sizes[i]) for i in range(len(items))]


def decompress_many(blobs, threads: int = 1, *, backend: Optional[str] = None, device=None,
                    batch: Optional[int] = None) -> list:
    """Decompress several complete .ssz streams, their blocks decoded together (see
    compress_many); raise SSMZipError if one is not exactly a stream."""
    pool = _block_pool(threads, backend, device, batch)
    out: list = [[] for _ in blobs]
    owner: deque = deque()
    try:
        for i, blob in enumerate(blobs):
            fp = io.BytesIO(blob)
            header = container.read_header(fp)
            for number, rec, payload in container.iter_blocks(fp, header, None):
                while pool.full():
                    out[owner.popleft()].append(pool.pop())
                pool.submit(container.decompress_block, number, rec, payload, header.preset, **_how(header.preset))
                owner.append(i)
        while owner:
            out[owner.popleft()].append(pool.pop())
    finally:
        pool.close(abort=bool(owner))
    return [b"".join(parts) for parts in out]


@dataclass(frozen=True)
class StreamInfo:
    """What ``-l`` shows: read from the header and index, nothing decoded."""

    compressed_size: int
    uncompressed_size: int
    block_size: int
    preset: Preset
    blocks: tuple           # container.BlockRecord per block

    @property
    def level(self) -> int:
        return self.preset.level

    @property
    def ratio(self) -> Optional[float]:
        """Compressed size / uncompressed size (as xz -l), None for an empty stream."""
        return self.compressed_size / self.uncompressed_size if self.uncompressed_size else None


def info(file: FileArg) -> StreamInfo:
    """Validate the header, index and footer of a seekable .ssz file and describe it."""
    if isinstance(file, (str, bytes, os.PathLike)):
        with builtins.open(file, "rb") as fp:
            return info(fp)
    if not file.seekable():
        raise ValueError("listing needs a seekable file")
    start = file.tell()
    header = container.read_header(file)
    index = container.read_index(file, header, start)
    end = file.seek(0, 2)
    return StreamInfo(end - start, index.total_size, header.block_size, header.preset,
                      index.records)
