"""Little-endian field writing and bounds-checked reading for the kv formats."""
import struct

from ssmzip.errors import SSMZipError

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def varint(v):
    """Unsigned LEB128."""
    if v < 0:
        raise ValueError("negative varint")
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class Reader:
    """Reads fields from a bytes-like object; every read is bounds checked.

    ``what`` names the structure in error messages ("chunk 3", "index").
    """

    __slots__ = ("buf", "pos", "end", "what")

    def __init__(self, buf, what, pos=0, end=None):
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end
        self.what = what

    def remaining(self):
        return self.end - self.pos

    def need(self, n):
        if n < 0 or self.pos + n > self.end:
            raise SSMZipError(f"corrupt data: {self.what} is truncated")

    def u8(self):
        self.need(1)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def u16(self):
        self.need(2)
        v = _U16.unpack_from(self.buf, self.pos)[0]
        self.pos += 2
        return v

    def u32(self):
        self.need(4)
        v = _U32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return v

    def u64(self):
        self.need(8)
        v = _U64.unpack_from(self.buf, self.pos)[0]
        self.pos += 8
        return v

    def varint(self, limit=(1 << 64) - 1):
        v = 0
        shift = 0
        while True:
            b = self.u8()
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                if b == 0 and shift:  # over-long: every value has one encoding, so no bit flip goes unseen
                    raise SSMZipError(f"corrupt data: bad varint in {self.what}")
                break
            shift += 7
            if shift > 63:
                raise SSMZipError(f"corrupt data: bad varint in {self.what}")
        if v > limit:
            raise SSMZipError(f"corrupt data: value {v} out of range in {self.what}")
        return v

    def take(self, n):
        self.need(n)
        v = self.buf[self.pos:self.pos + n]
        self.pos += n
        return v

    def done(self):
        if self.pos != self.end:
            raise SSMZipError(f"corrupt data: {self.end - self.pos} unexpected trailing bytes in {self.what}")
