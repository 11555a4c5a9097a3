"""The SSM's logits, computed elsewhere, handed to the C context-model kernel.

native/cm.c asks an SSM for three things per byte (ssm_callbacks.py): a forward
pass at the byte boundary, the logit of each bit, and a training step after a
full chunk. With the SSM on torch (ssm_torch.py) all of that happens outside
the kernel, so these callbacks only read logits from a buffer:

- path mode (an encoder): the buffer holds the 8 logits along each byte's path
  for a run of positions; bit `bitpos` of the n-th byte reads [n * 8 + bitpos];
- table mode (a decoder, one byte at a time): the buffer holds the logits of all
  255 tree nodes of the current byte; the bit at partial byte c0 reads [c0].
"""
import numpy as np
from numba import carray, cfunc, float32, int64, types, void

from ..engine.ssm_callbacks import _pointer

F_ADDR, F_LEN, F_MODE, F_POS, F_CHUNK = range(5)
PATH, TABLE = 0, 1
_ctx_t = types.CPointer(int64)


@cfunc(void(_ctx_t, int64, int64, int64, int64), cache=True)
def ssm_byte(ctx, row, c4, c8, word):
    pass


@cfunc(float32(_ctx_t, int64, int64, int64), cache=True)
def ssm_bit(ctx, row, c0, bitpos):
    logits = carray(_pointer(ctx[F_ADDR], float32), ctx[F_LEN])
    if ctx[F_MODE] == PATH:
        return logits[ctx[F_POS] * 8 + bitpos]
    return logits[c0]


@cfunc(int64(_ctx_t, int64, int64), cache=True)
def ssm_end(ctx, row, byte):
    ctx[F_POS] += 1
    row += 1
    return 0 if row == ctx[F_CHUNK] else row


class Feed:
    """One block's link: `ctx` for the kernel, `point` to aim it at a buffer."""

    ssm_byte, ssm_bit, ssm_end = ssm_byte, ssm_bit, ssm_end

    def __init__(self, mode: int, chunk: int):
        self.ctx = np.zeros(5, dtype=np.int64)
        self.ctx[F_MODE], self.ctx[F_CHUNK] = mode, chunk
        self._buf = None

    def point(self, logits: np.ndarray) -> None:
        """Read from `logits` (float32, C-contiguous; kept alive here) from its start."""
        assert logits.dtype == np.float32 and logits.flags.c_contiguous
        self._buf = logits
        self.ctx[F_ADDR], self.ctx[F_LEN], self.ctx[F_POS] = logits.ctypes.data, logits.size, 0
