"""The .ssz file format: stream header, blocks, index, footer (see FORMAT.md).

Layout, in file order::

    header | block 0 | block 1 | ... | index | footer

Every block carries its own small header (kind, sizes, CRC32 of its original
bytes), so a writer can stream block by block and a reader can decode
sequentially from a pipe. The index at the end repeats the block headers with
the total size, and the fixed-size footer says how long the index is, so a
reader of a seekable file can list it (``-l``) or check its structure before
decoding anything.

Every field is validated before it is trusted. Sizes are checked against each
other and, where the file length is known, against it; reads happen in bounded
chunks so that a hostile size cannot make us allocate more than the input
actually holds. Every failure raises SSMZipError with a one-line message.

This module owns the format only; it calls the engine for one block at a time
and knows nothing of files on disk, processes or progress bars.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Optional

from .engine import LEVELS, Preset, decode_block, encode_block
from .errors import SSMZipError

MAGIC = b"\xfdSSMZ\x00"          # 0xFD first, like xz, so text tools see binary
FOOTER_MAGIC = b"ZMSS"
VERSION = 1

KIND_INDEX = 0                    # the byte that starts the index instead of a block
KIND_CODED = 1                    # payload is the engine's output
KIND_STORED = 2                   # payload is the original bytes

MIN_BLOCK_SIZE = 1 << 10
MAX_BLOCK_SIZE = 1 << 30

# The coder's probabilities are at most 16 bits wide (12 today), so one bit
# costs at least -log2(1 - 2^-16) bits and one payload byte can stand for at
# most ~45,000 original bytes. A coded block claiming more than this is
# corrupt; the bound also caps what a hostile size can make the decoder
# allocate. The writer stores a block raw rather than break it (it never does
# in practice), so every file we write satisfies it.
MAX_EXPANSION = 1 << 16
EXPANSION_SLACK = 8               # coder flush and start-up, in payload bytes

# Decoders refuse presets whose model tables would be far larger than any
# level we ship: a 50-byte hostile header must not make us allocate 4 GiB.
MAX_MODEL_MEMORY = 2 * max(p.memory_estimate() for p in LEVELS.values())

_HEAD = struct.Struct("<6sBBIH")   # magic, version, flags, block size, preset length
_CRC = struct.Struct("<I")
_RECORD = struct.Struct("<BIIII")  # kind, original size, payload size, CRC32 of original, of payload
_INDEX_HEAD = struct.Struct("<BQQ")  # KIND_INDEX, block count, total original size
_FOOTER = struct.Struct("<QI4s")   # index size, CRC32 of index size, FOOTER_MAGIC

BLOCK_HEADER_SIZE = _RECORD.size + _CRC.size
FOOTER_SIZE = _FOOTER.size
_MIN_INDEX_SIZE = _INDEX_HEAD.size + _CRC.size

_READ_CHUNK = 1 << 20             # largest single read when a size is not yet proven


def _crc(data) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def max_original_size(payload_size: int) -> int:
    """The most original bytes a coded payload of this size may claim."""
    return (payload_size + EXPANSION_SLACK) * MAX_EXPANSION


# --------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class BlockRecord:
    """What the block header and its index entry say about one block."""

    kind: int
    size: int           # original bytes
    payload_size: int   # bytes stored in the file after the block header
    crc: int            # CRC32 of the original bytes
    payload_crc: int    # CRC32 of the payload

    @property
    def stored(self) -> bool:
        return self.kind == KIND_STORED

    def pack(self) -> bytes:
        return _RECORD.pack(self.kind, self.size, self.payload_size, self.crc, self.payload_crc)

    def pack_header(self) -> bytes:
        rec = self.pack()
        return rec + _CRC.pack(_crc(rec))


@dataclass(frozen=True)
class Header:
    """The stream header, validated."""

    preset: Preset
    block_size: int
    size: int           # bytes the header occupies in the file


@dataclass(frozen=True)
class Index:
    """The block list at the end of the stream, validated."""

    records: tuple
    total_size: int

    @property
    def compressed_payload(self) -> int:
        return sum(BLOCK_HEADER_SIZE + r.payload_size for r in self.records)


def _check_block_size(block_size: int) -> None:
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise SSMZipError(f"invalid block size {block_size} "
                          f"(must be {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE})")


def _check_record(rec: BlockRecord, number: int, block_size: int) -> None:
    """Reject a block header whose sizes cannot belong to a valid block."""
    where = f"block {number}"
    if rec.kind not in (KIND_CODED, KIND_STORED):
        raise SSMZipError(f"{where}: unknown block type {rec.kind}")
    if not 1 <= rec.size <= block_size:
        raise SSMZipError(f"{where}: invalid size {rec.size} (block size is {block_size})")
    if rec.stored:
        if rec.payload_size != rec.size or rec.payload_crc != rec.crc:
            raise SSMZipError(f"{where}: inconsistent stored block")
    elif not (1 <= rec.payload_size < rec.size and rec.size <= max_original_size(rec.payload_size)):
        raise SSMZipError(f"{where}: implausible coded size {rec.payload_size} "
                          f"for {rec.size} bytes")


def _check_sequence(records, total_size: int, block_size: int) -> None:
    """Every block but the last is full; the sizes add up to the total."""
    for i, rec in enumerate(records[:-1]):
        if rec.size != block_size:
            raise SSMZipError(f"block {i}: short block ({rec.size} bytes) before the last block")
    if sum(r.size for r in records) != total_size:
        raise SSMZipError("corrupt index (block sizes do not add up to the total size)")


# --------------------------------------------------------------------------
# Reading helpers


def read_exact(f: BinaryIO, n: int) -> bytes:
    """Read exactly n bytes or raise "truncated file".

    Reads in chunks of at most 1 MiB, so a corrupt n costs memory only in
    proportion to the bytes the input really has.
    """
    if n <= _READ_CHUNK:
        data = f.read(n) if n else b""
        if len(data) == n:
            return data
        parts, got = [data], len(data)
        if not data:
            raise SSMZipError("truncated file")
    else:
        parts, got = [], 0
    while got < n:
        part = f.read(min(n - got, _READ_CHUNK))
        if not part:
            raise SSMZipError("truncated file")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


# --------------------------------------------------------------------------
# Header


def pack_header(preset: Preset, block_size: int) -> bytes:
    _check_block_size(block_size)
    pb = preset.to_bytes()
    head = _HEAD.pack(MAGIC, VERSION, 0, block_size, len(pb)) + pb
    return head + _CRC.pack(_crc(head))


def read_header(f: BinaryIO) -> Header:
    """Read and validate the stream header at the current position."""
    head = f.read(_HEAD.size)
    if len(head) < len(MAGIC) or head[:len(MAGIC)] != MAGIC:
        if MAGIC.startswith(head) and head:
            raise SSMZipError("truncated file")
        raise SSMZipError("not an ssmzip file (bad magic)" if head else "empty input (not an ssmzip file)")
    if len(head) > len(MAGIC) and head[len(MAGIC)] != VERSION:
        raise SSMZipError(f"unsupported format version {head[len(MAGIC)]}")
    if len(head) < _HEAD.size:
        raise SSMZipError("truncated file")
    _, _, flags, block_size, preset_len = _HEAD.unpack(head)
    rest = read_exact(f, preset_len + _CRC.size)
    (crc,) = _CRC.unpack_from(rest, preset_len)
    if crc != _crc(head + rest[:preset_len]):
        raise SSMZipError("header checksum mismatch")
    if flags != 0:
        raise SSMZipError(f"unsupported header flags 0x{flags:02x}")
    _check_block_size(block_size)
    try:
        preset = Preset.from_bytes(rest[:preset_len])
    except ValueError as e:
        raise SSMZipError(f"bad preset in header: {e}") from None
    need = preset.memory_estimate()
    if need > MAX_MODEL_MEMORY:
        raise SSMZipError(f"preset needs {need >> 20} MiB of model memory, "
                          f"more than the limit of {MAX_MODEL_MEMORY >> 20} MiB")
    return Header(preset, block_size, _HEAD.size + preset_len + _CRC.size)


# --------------------------------------------------------------------------
# Index and footer


def pack_trailer(records, total_size: int) -> bytes:
    """The index and footer that end a stream."""
    index = _INDEX_HEAD.pack(KIND_INDEX, len(records), total_size)
    index += b"".join(r.pack() for r in records)
    index += _CRC.pack(_crc(index))
    size = struct.pack("<Q", len(index))
    return index + _FOOTER.pack(len(index), _crc(size), FOOTER_MAGIC)


def _index_size_for(count: int) -> int:
    return _MIN_INDEX_SIZE + count * _RECORD.size


def _parse_index_body(body: bytes, count: int, block_size: int) -> Index:
    """Validate the index bytes after KIND_INDEX/count/total were read; body is all of it."""
    (crc,) = _CRC.unpack_from(body, len(body) - _CRC.size)
    if crc != _crc(body[:-_CRC.size]):
        raise SSMZipError("index checksum mismatch")
    _, n, total = _INDEX_HEAD.unpack_from(body, 0)
    if n != count:
        raise SSMZipError("corrupt index (block count)")
    records = tuple(BlockRecord(*_RECORD.unpack_from(body, _INDEX_HEAD.size + i * _RECORD.size))
                    for i in range(count))
    for i, rec in enumerate(records):
        _check_record(rec, i, block_size)
    _check_sequence(records, total, block_size)
    return Index(records, total)


def _check_footer(footer: bytes, index_size_expected: Optional[int]) -> int:
    index_size, crc, magic = _FOOTER.unpack(footer)
    if magic != FOOTER_MAGIC:
        raise SSMZipError("corrupt footer (bad end-of-stream marker)")
    if crc != _crc(footer[:8]):
        raise SSMZipError("footer checksum mismatch")
    if index_size_expected is not None and index_size != index_size_expected:
        raise SSMZipError("corrupt footer (index size)")
    return index_size


def read_index(f: BinaryIO, header: Header, start: int) -> Index:
    """Read the index of a seekable stream that begins at offset ``start``.

    The stream must run to the end of the file. Checks that the header, the
    blocks the index describes, the index and the footer exactly fill the
    file, so no block size is trusted beyond the real file length. Leaves
    the file position undefined.
    """
    end = f.seek(0, 2)
    length = end - start
    if length < header.size + _MIN_INDEX_SIZE + FOOTER_SIZE:
        raise SSMZipError("truncated file")
    f.seek(end - FOOTER_SIZE)
    footer = read_exact(f, FOOTER_SIZE)
    if footer[-4:] != FOOTER_MAGIC:
        raise SSMZipError("truncated file or trailing data (end-of-stream marker not found)")
    index_size = _check_footer(footer, None)
    room = length - header.size - FOOTER_SIZE
    if index_size < _MIN_INDEX_SIZE or index_size > room or \
            (index_size - _MIN_INDEX_SIZE) % _RECORD.size:
        raise SSMZipError("corrupt footer (index size)")
    count = (index_size - _MIN_INDEX_SIZE) // _RECORD.size
    f.seek(end - FOOTER_SIZE - index_size)
    body = read_exact(f, index_size)
    if body[0] != KIND_INDEX:
        raise SSMZipError("corrupt index (bad marker)")
    index = _parse_index_body(body, count, header.block_size)
    span = header.size + index.compressed_payload + index_size + FOOTER_SIZE
    if span > length:
        raise SSMZipError("truncated file (the index describes more data than the file holds)")
    if span < length:
        raise SSMZipError("unexpected data in the file (concatenated streams are not supported)")
    return index


def check_block_headers(f: BinaryIO, header: Header, index: Index, start: int) -> None:
    """Compare every block header of a seekable stream with its index entry.

    One small read per block, payloads skipped: a damaged block header is
    reported before any slow decoding. Leaves the file position undefined.
    """
    pos = start + header.size
    for number, rec in enumerate(index.records):
        f.seek(pos)
        if read_exact(f, BLOCK_HEADER_SIZE) != rec.pack_header():
            raise SSMZipError(f"block {number}: header does not match the index")
        pos += BLOCK_HEADER_SIZE + rec.payload_size


# --------------------------------------------------------------------------
# Sequential block reading


def iter_blocks(f: BinaryIO, header: Header,
                expected: Optional[Index] = None) -> Iterator[tuple]:
    """Yield (number, record, payload) for each block, reading sequentially.

    Works on pipes. After the last block it reads and validates the index
    and footer and checks that nothing follows them, so exhausting this
    iterator means the stream's structure is intact. ``expected`` is the
    index read beforehand from a seekable file; each block header must match
    it.
    """
    records = []
    while True:
        number = len(records)
        kind = read_exact(f, 1)
        if kind[0] == KIND_INDEX:
            break
        raw = kind + read_exact(f, BLOCK_HEADER_SIZE - 1)
        (crc,) = _CRC.unpack_from(raw, _RECORD.size)
        if crc != _crc(raw[:_RECORD.size]):
            raise SSMZipError(f"block {number}: header checksum mismatch")
        rec = BlockRecord(*_RECORD.unpack_from(raw))
        _check_record(rec, number, header.block_size)
        if records and records[-1].size != header.block_size:
            raise SSMZipError(f"block {number - 1}: short block "
                              f"({records[-1].size} bytes) before the last block")
        if expected is not None and (number >= len(expected.records)
                                     or expected.records[number] != rec):
            raise SSMZipError(f"block {number}: header does not match the index")
        payload = read_exact(f, rec.payload_size)
        if _crc(payload) != rec.payload_crc:
            # caught here, before any decoding, in the reading process
            raise SSMZipError(f"block {number}: checksum mismatch (compressed data)")
        records.append(rec)
        yield number, rec, payload

    count_total = read_exact(f, _INDEX_HEAD.size - 1)
    count, _total = struct.unpack("<QQ", count_total)
    if count != len(records):
        raise SSMZipError(f"corrupt index (says {count} blocks, the stream has {len(records)})")
    rest = read_exact(f, count * _RECORD.size + _CRC.size)
    index = _parse_index_body(kind + count_total + rest, count, header.block_size)
    if index.records != tuple(records):
        raise SSMZipError("corrupt index (does not match the block headers)")
    if expected is not None and index != expected:
        raise SSMZipError("corrupt index (changed while reading)")
    _check_footer(read_exact(f, FOOTER_SIZE), _index_size_for(count))
    if f.read(1):
        raise SSMZipError("trailing data after the end of the stream")


# --------------------------------------------------------------------------
# One block through the engine. Top-level functions so that worker
# processes can run them.


def compress_block(data: bytes, preset: Preset,
                   progress: Optional[Callable[[int], None]] = None, threads: int = 1) -> tuple:
    """Code one block (on up to `threads` threads: engine.block_threads); return
    (record, payload). Stores it raw if coding does not pay."""
    return block_record(data, encode_block(data, preset, progress, threads))


def block_record(data: bytes, payload: bytes) -> tuple:
    """(record, payload) of a block coded as `payload`, stored raw if coding did not pay."""
    crc = _crc(data)
    if len(payload) >= len(data) or len(data) > max_original_size(len(payload)):
        return BlockRecord(KIND_STORED, len(data), len(data), crc, crc), bytes(data)
    return BlockRecord(KIND_CODED, len(data), len(payload), crc, _crc(payload)), payload


def decompress_block(number: int, rec: BlockRecord, payload: bytes, preset: Preset,
                     progress: Optional[Callable[[int], None]] = None, threads: int = 1) -> bytes:
    """Decode one block and verify the checksum of what came out.

    The payload's own checksum was verified when it was read, so a mismatch
    here means the engine did not reproduce the encoder's model (a bug, or a
    file made by an incompatible engine), not a damaged file.
    """
    if rec.stored:
        data = payload
    else:
        data = decode_block(payload, rec.size, preset, progress, threads)
    return check_decoded(number, rec, data)


def check_decoded(number: int, rec: BlockRecord, data: bytes) -> bytes:
    """`data` if it is what block `number` held, else SSMZipError (see decompress_block)."""
    if len(data) != rec.size or _crc(data) != rec.crc:
        raise SSMZipError(f"block {number}: checksum mismatch in decoded data "
                          "(written by an incompatible engine version?)")
    return data
