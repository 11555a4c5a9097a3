"""The SSM as three C-callable functions, so that the C kernel (native/cm.c) can
run the context models of levels 7-9 while the SSM itself stays numba.

Each callback does, in the same order, exactly what predictor._code_segment
does with the SSM at that point of the byte, so both backends give the same
bytes:

    ssm_byte(ctx, row, c4, c8, word)   byte boundary: n-gram rows, forward pass
    ssm_bit(ctx, row, c0, bitpos)      the logit of the next bit (float32), kept for training
    ssm_end(ctx, row, byte) -> row     byte known; after a full chunk: backward, Adam, carry

`ctx` points to an int64 array of the addresses of the SSM's arrays (the order
is CTX_ARRAYS), built by `make_context`; the arrays must outlive the calls.
"""
import numpy as np
from numba import carray, cfunc, float32, int32, int64, types, void
from numba.extending import intrinsic

from .ssm import (D_NL, D_T, G_LG, N_LA, adam_step, ngram_rows, ngram_step, ssm_backward, ssm_carry,
                  ssm_forward, ssm_logit)

# name, dtype: the arrays a BlockState holds for its SSM (state.py), in ctx order
CTX_ARRAYS = (("sP", np.float32), ("sG", np.float32), ("sV", np.float32), ("sopt", np.float32),
              ("slay", np.int64), ("sA", np.float32), ("salay", np.int64), ("sdims", np.int64),
              ("sS", np.float32), ("sib", np.int32), ("stok", np.int64), ("sNE", np.float32),
              ("sNV", np.float32), ("srows", np.int64), ("slr_arr", np.float32))


@intrinsic
def _pointer(typingctx, addr, kind):
    """An int64 address as a typed pointer (kind: the element type, e.g. float32)."""
    ptrty = types.CPointer(kind.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptrty))
    return ptrty(addr, kind), codegen


def make_context(state) -> np.ndarray:
    """[address, length] of each array of CTX_ARRAYS, from a BlockState."""
    ctx = np.zeros(2 * len(CTX_ARRAYS), dtype=np.int64)
    for i, (name, dtype) in enumerate(CTX_ARRAYS):
        a = getattr(state, name)
        assert a.dtype == dtype and a.flags.c_contiguous, name
        ctx[2 * i], ctx[2 * i + 1] = a.ctypes.data, a.shape[0]
    return ctx


_ctx_t = types.CPointer(int64)


@cfunc(void(_ctx_t, int64, int64, int64, int64), cache=True, error_model="numpy")
def ssm_byte(ctx, row, c4, c8, word):
    A = carray(_pointer(ctx[10], float32), ctx[11])
    stok = carray(_pointer(ctx[20], int64), ctx[21])
    dims = carray(_pointer(ctx[14], int64), ctx[15])
    rows = carray(_pointer(ctx[26], int64), ctx[27])
    stok[row] = c4 & 0xFF
    ngram_rows(c4, c8, word, dims, rows, row)
    ssm_forward(carray(_pointer(ctx[0], float32), ctx[1]), carray(_pointer(ctx[8], int64), ctx[9]), A,
                carray(_pointer(ctx[12], int64), ctx[13]), dims, row, c4 & 0xFF,
                carray(_pointer(ctx[16], float32), ctx[17]), carray(_pointer(ctx[18], int32), ctx[19]),
                carray(_pointer(ctx[22], float32), ctx[23]), rows)


@cfunc(float32(_ctx_t, int64, int64, int64), cache=True, error_model="numpy")
def ssm_bit(ctx, row, c0, bitpos):
    A = carray(_pointer(ctx[10], float32), ctx[11])
    alay = carray(_pointer(ctx[12], int64), ctx[13])
    dims = carray(_pointer(ctx[14], int64), ctx[15])
    lg = ssm_logit(carray(_pointer(ctx[0], float32), ctx[1]), carray(_pointer(ctx[8], int64), ctx[9]), A,
                   alay, dims, row, c0)
    A[alay[dims[D_NL] * N_LA + G_LG] + row * 8 + bitpos] = lg
    return lg


@cfunc(int64(_ctx_t, int64, int64), cache=True, error_model="numpy")
def ssm_end(ctx, row, byte):
    stok = carray(_pointer(ctx[20], int64), ctx[21])
    dims = carray(_pointer(ctx[14], int64), ctx[15])
    stok[row + 1] = byte
    row += 1
    chunk = dims[D_T]
    if row == chunk:
        P = carray(_pointer(ctx[0], float32), ctx[1])
        G = carray(_pointer(ctx[2], float32), ctx[3])
        opt = carray(_pointer(ctx[6], float32), ctx[7])
        lay = carray(_pointer(ctx[8], int64), ctx[9])
        A = carray(_pointer(ctx[10], float32), ctx[11])
        alay = carray(_pointer(ctx[12], int64), ctx[13])
        S = carray(_pointer(ctx[16], float32), ctx[17])
        lr = carray(_pointer(ctx[28], float32), ctx[29])[0]
        ssm_backward(P, G, lay, A, alay, dims, S, carray(_pointer(ctx[18], int32), ctx[19]), stok, chunk)
        adam_step(P, G, carray(_pointer(ctx[4], float32), ctx[5]), opt, lr)
        ngram_step(carray(_pointer(ctx[22], float32), ctx[23]), carray(_pointer(ctx[24], float32), ctx[25]),
                   carray(_pointer(ctx[26], int64), ctx[27]), S, dims, chunk, lr, opt)
        ssm_carry(A, alay, dims, chunk)
        row = 0
    return row
