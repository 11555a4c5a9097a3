"""encode_block / decode_block: one block through a BlockState, segment by segment
(or, for a transform preset such as level 1's, through bwt_block.py in one go).

Segments bound how much output room is reserved at a time and give progress
callbacks; the model's state carries over from one segment to the next.
"""
import numpy as np

from . import bwt_block, native
from .cm_layout import DECODE, ENCODE, R_IO, R_X, R_X1, SEGMENT
from .presets import TRANSFORM_BWT
from .state import BlockState


def _encode_flush(x1, out, op):
    """The coder's last byte (coder.encode_flush): the top byte of x1 is enough."""
    out[op] = x1 >> 24
    return op + 1


def _decode_start(src):
    """The coder's first four bytes (coder.decode_start), 0xFF past the end."""
    x = 0
    for i in range(4):
        x = (x << 8) | (int(src[i]) if i < src.shape[0] else 0xFF)
    return x, 4


class BlockEncoder:
    """Codes one block segment by segment through `model` (a BlockState)."""

    def __init__(self, data, model: BlockState):
        self.buf = np.frombuffer(data, dtype=np.uint8).copy()   # writable: one compiled variant serves both sides
        self.model = model
        self.out = np.empty(SEGMENT * 12 + 64, dtype=np.uint8)

    def code(self, start: int, end: int) -> None:
        # Worst case the coder emits 12 bits per coded bit; keep that much room.
        need = int(self.model.regs[R_IO]) + (end - start) * 12 + 64
        if need > self.out.shape[0]:
            grown = np.empty(need + self.out.shape[0] // 2, dtype=np.uint8)
            grown[:self.out.shape[0]] = self.out
            self.out = grown
        self.model.run(ENCODE, self.buf, start, end, self.out)

    def finish(self) -> bytes:
        op = int(self.model.regs[R_IO])
        if len(self.buf):
            op = _encode_flush(int(self.model.regs[R_X1]), self.out, op)
        return self.out[:op].tobytes()


class BlockDecoder:
    """Decodes one block segment by segment through `model` (a BlockState)."""

    def __init__(self, payload, size: int, model: BlockState):
        self.src = np.frombuffer(payload, dtype=np.uint8).copy()
        self.buf = np.zeros(size, dtype=np.uint8)
        self.model = model
        if size:
            xc, ip = _decode_start(self.src)
            model.regs[R_X] = xc
            model.regs[R_IO] = ip

    def code(self, start: int, end: int) -> None:
        self.model.run(DECODE, self.buf, start, end, self.src)


def encode_block(data, preset, progress=None, threads: int = 1) -> bytes:
    """Compress one block with `preset`; the result decodes with decode_block.
    threads: how many this block may use (see block_threads); the bytes are the same."""
    if preset.transform == TRANSFORM_BWT:       # one call: the transform needs the whole block
        payload = bwt_block.encode(data)
        if progress is not None:
            progress(len(data))
        return payload
    enc = BlockEncoder(data, BlockState(preset, threads=threads))
    n = len(enc.buf)
    for start in range(0, n, SEGMENT):
        end = min(start + SEGMENT, n)
        enc.code(start, end)
        if progress is not None:
            progress(end)
    return enc.finish()


def decode_block(payload, size, preset, progress=None, threads: int = 1) -> bytes:
    """Decompress `size` bytes from `payload`. Garbage in gives garbage out of the
    right size (never a crash or a hang): the container's checksum catches it."""
    if preset.transform == TRANSFORM_BWT:
        out = bwt_block.decode(payload, size)
        if progress is not None:
            progress(size)
        return out
    dec = BlockDecoder(payload, size, BlockState(preset, threads=threads))
    for start in range(0, size, SEGMENT):
        end = min(start + SEGMENT, size)
        dec.code(start, end)
        if progress is not None:
            progress(end)
    return dec.buf.tobytes()


def codes_without_gil(preset) -> bool:
    """Whether blocks of this preset are coded by the C library alone (no numba,
    no SSM): Python then waits in ctypes calls, which release the GIL, so several
    blocks can be coded on threads of one process."""
    return native.cm_kernel() is not None and not preset.has_ssm


def block_threads(preset) -> int:
    """How many threads one block of this preset can keep busy: two when the C
    library codes it and its SSM learns a chunk late (the learning runs beside the
    coding, native/learner.h), else one."""
    return 2 if preset.has_ssm and preset.ssm_lag and preset.contexts and native.cm_kernel() is not None else 1


def warm_up() -> None:
    """Load (or compile) the coding kernel now rather than on the first block, e.g.
    in a process that forks workers, so that each worker starts with it in memory."""
    from .presets import LEVELS
    encode_block(b"warm-up", LEVELS[2])     # the context-mixing kernel (every level but 1)
    encode_block(b"warm-up", LEVELS[1])     # the BWT's
