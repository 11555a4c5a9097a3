"""A block through the Burrows-Wheeler transform and its model (level 1).

Payload of a block of n >= 1 bytes: the transform's primary row (4 bytes,
little-endian; bwt.py) and the coded transform (bwt_coder.py). An empty block
has an empty payload.

Numba-free on purpose, like state.py: with the C library (native/bwt.c: the
suffix sort, the model and the inverse in one call each way) level 1 never
imports numba, a third of a second of its start-up; else the numba modules
bwt.py and bwt_coder.py code the block, to the same bytes.
"""
import ctypes
import struct

import numpy as np

from . import counters as C
from . import native

_PRIMARY = struct.Struct("<I")
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
_SIGNATURES = {
    "ssmzip_bwt_encode": ([_ptr, _i64, _ptr, _i64, ctypes.POINTER(_i64), _ptr, _ptr], _i64),
    "ssmzip_bwt_decode": ([_ptr, _i64, _i64, _ptr, _i64, _ptr, _ptr], _i64),
}
_kernels = None


def _native():
    """native/bwt.c's functions, or None when numba is to be used (the same
    choice as the context models', so SSMZIP_BACKEND and the tests' switch hold)."""
    global _kernels
    if native.cm_kernel() is None:
        return None
    if _kernels is None:
        _kernels = native.bind(_SIGNATURES)
    return _kernels


def _tables():
    return native.address(C.SQUASH), native.address(C.STRETCH)


def _room(n: int) -> tuple:
    """Output room for a block's coded transform, tried in turn: a little more than
    the block, which is plenty unless it expands, then the worst case (12 bytes a
    byte: a coded bit never costs more than 12 bits)."""
    return n + n // 8 + 64, 12 * n + 64


def _numba_coder(data):
    """out -> (bytes written or -1, primary row), on numba: the transform is made
    once, however many tries the room takes."""
    from .bwt import bwt_forward
    from .bwt_coder import encode_transform
    last, primary = bwt_forward(data)
    return lambda out: (encode_transform(last, out), primary)


def _c_coder(k, data):
    """The same on native/bwt.c (one call does the transform and the coding; a
    second try, only for a block that expands, sorts it again)."""
    src = np.ascontiguousarray(np.frombuffer(data, np.uint8))
    primary = _i64(0)

    def code(out):
        op = k.ssmzip_bwt_encode(native.address(src), src.shape[0], native.address(out), out.shape[0],
                                 ctypes.byref(primary), *_tables())
        return op, primary.value
    return code


def encode(data) -> bytes:
    """Payload of one block."""
    n = len(data)
    if n == 0:
        return b""
    k = _native()
    code = _numba_coder(data) if k is None else _c_coder(k, data)
    for cap in _room(n):
        out = np.empty(cap, np.uint8)
        op, primary = code(out)
        if op >= 0:
            return _PRIMARY.pack(primary) + out[:op].tobytes()
        if op != -1:
            raise MemoryError("the BWT coder could not allocate its arrays")
    raise AssertionError("unreachable: 12 bytes a byte always suffice")


def decode(payload, size: int) -> bytes:
    """`size` bytes from a payload made by encode; garbage of that size (never a
    crash) from a corrupt one: the container's checksum refuses it."""
    if size == 0:
        return b""
    head = bytes(payload[:_PRIMARY.size]).ljust(_PRIMARY.size, b"\0")
    primary = min(max(_PRIMARY.unpack(head)[0], 1), size)
    src = np.frombuffer(payload, np.uint8)[_PRIMARY.size:]
    k = _native()
    if k is None:
        from .bwt import bwt_inverse
        from .bwt_coder import decode_transform
        # writable, as the encoder's output array is: one compiled variant serves both
        return bwt_inverse(decode_transform(src.copy(), size), primary)
    src = np.ascontiguousarray(src)
    out = np.empty(size, np.uint8)
    if k.ssmzip_bwt_decode(native.address(src) if src.shape[0] else 0, src.shape[0], primary,
                           native.address(out), size, *_tables()) != 0:
        raise MemoryError("the BWT coder could not allocate its arrays")
    return out.tobytes()
