"""The SSM as C-callable numba functions: the reference for native/ssm_step.c,
which the C kernel (native/cm.c) calls in their place; tests run the kernel
with these to check that the two give the same bits.

Each callback does, in the same order, exactly what predictor._code_segment
does with the SSM at that point of the byte, so both backends give the same
bytes:

    ssm_byte(ctx, row, c4, c8, word)   byte boundary: n-gram rows, forward pass
    ssm_bit(ctx, row, c0, bitpos)      the logit of the next bit (float32), kept for training
    ssm_end(ctx, row, byte) -> row     byte known; after a full chunk: learn from it, carry

A lagged SSM (ssm.py) can learn from a chunk on a second thread while the C
kernel codes the next one in a second set of buffers (activations, inputs,
scratch: `ssm_layout.make_context(state, second=True)`). The kernel then calls instead

    ssm_record(ctx, row, byte) -> row  byte known (no learning: the kernel sees the chunk end)
    ssm_turn(ctx, ctx_next)            the pending step in force, the state carried over
    ssm_learn_cb(ctx)                  on the other thread: learn from ctx's chunk

`ctx` points to an int64 array of the addresses of the SSM's arrays (the order
is ssm_layout.CTX_ARRAYS), built by ssm_layout.make_context; the arrays must
outlive the calls.
"""
from numba import carray, cfunc, float32, int32, int64, njit, types, void
from numba.extending import intrinsic

from .ssm import (D_DM, D_NL, D_T, G_LG, N_LA, ngram_rows, params_in_force, ssm_apply, ssm_carry, ssm_forward,
                  ssm_learn, ssm_logit)
from .ssm_layout import CTX_ARRAYS


@intrinsic
def _pointer(typingctx, addr, kind):
    """An int64 address as a typed pointer (kind: the element type, e.g. float32)."""
    ptrty = types.CPointer(kind.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptrty))
    return ptrty(addr, kind), codegen


_ctx_t = types.CPointer(int64)
# offsets of each array's [address, length] in ctx (numba folds them as constants)
(O_P, O_G, O_V, O_OPT, O_LAY, O_A, O_ALAY, O_DIMS, O_S, O_IB, O_TOK, O_NE, O_NV, O_ROWS,
 O_LR, O_KERN, O_PN, O_FLAG, O_STAGE) = range(0, 2 * len(CTX_ARRAYS), 2)


@njit(inline="always")
def _f32(ctx, o):
    return carray(_pointer(ctx[o], float32), ctx[o + 1])


@njit(inline="always")
def _i64(ctx, o):
    return carray(_pointer(ctx[o], int64), ctx[o + 1])


@njit(inline="always")
def _params(ctx):
    """The parameter array in force (a lagged SSM has two: ssm.py)."""
    return params_in_force(_f32(ctx, O_P), _f32(ctx, O_PN), _i64(ctx, O_FLAG))


@cfunc(void(_ctx_t, int64, int64, int64, int64), cache=True, error_model="numpy")
def ssm_byte(ctx, row, c4, c8, word):
    dims, rows = _i64(ctx, O_DIMS), _i64(ctx, O_ROWS)
    _i64(ctx, O_TOK)[row] = c4 & 0xFF
    ngram_rows(c4, c8, word, dims, rows, row)
    ssm_forward(_params(ctx), _i64(ctx, O_LAY), _f32(ctx, O_A), _i64(ctx, O_ALAY), dims, row, c4 & 0xFF,
                _f32(ctx, O_S), carray(_pointer(ctx[O_IB], int32), ctx[O_IB + 1]), _f32(ctx, O_NE), rows,
                _i64(ctx, O_KERN))


@cfunc(float32(_ctx_t, int64, int64, int64), cache=True, error_model="numpy")
def ssm_bit(ctx, row, c0, bitpos):
    A, alay, dims = _f32(ctx, O_A), _i64(ctx, O_ALAY), _i64(ctx, O_DIMS)
    lg = ssm_logit(_params(ctx), _i64(ctx, O_LAY), A, alay, dims, row, c0)
    A[alay[dims[D_NL] * N_LA + G_LG] + row * 8 + bitpos] = lg
    return lg


@cfunc(int64(_ctx_t, int64, int64), cache=True, error_model="numpy")
def ssm_record(ctx, row, byte):
    _i64(ctx, O_TOK)[row + 1] = byte
    return row + 1


@cfunc(void(_ctx_t, _ctx_t), cache=True, error_model="numpy")
def ssm_turn(ctx, nxt):
    dims = _i64(ctx, O_DIMS)
    ssm_apply(_f32(ctx, O_NE), _i64(ctx, O_FLAG), _f32(ctx, O_STAGE), dims[D_DM])
    ssm_carry(_f32(ctx, O_A), _i64(ctx, O_ALAY), dims, dims[D_T], _f32(nxt, O_A))


@njit(inline="always")
def _learn(ctx):
    ssm_learn(_f32(ctx, O_P), _f32(ctx, O_PN), _f32(ctx, O_G), _f32(ctx, O_V), _f32(ctx, O_OPT),
              _f32(ctx, O_LR)[0], _i64(ctx, O_LAY), _f32(ctx, O_A), _i64(ctx, O_ALAY), _i64(ctx, O_DIMS),
              _f32(ctx, O_S), carray(_pointer(ctx[O_IB], int32), ctx[O_IB + 1]), _i64(ctx, O_TOK), _f32(ctx, O_NE),
              _f32(ctx, O_NV), _i64(ctx, O_ROWS), _i64(ctx, O_FLAG), _f32(ctx, O_STAGE), _i64(ctx, O_KERN))


@cfunc(void(_ctx_t), cache=True, error_model="numpy")
def ssm_learn_cb(ctx):
    _learn(ctx)


@cfunc(int64(_ctx_t, int64, int64), cache=True, error_model="numpy")
def ssm_end(ctx, row, byte):
    """In series, as ssm.ssm_chunk_end: the pending step in force, learn, carry."""
    dims = _i64(ctx, O_DIMS)
    _i64(ctx, O_TOK)[row + 1] = byte
    row += 1
    if row == dims[D_T]:
        ssm_apply(_f32(ctx, O_NE), _i64(ctx, O_FLAG), _f32(ctx, O_STAGE), dims[D_DM])
        _learn(ctx)
        A = _f32(ctx, O_A)
        ssm_carry(A, _i64(ctx, O_ALAY), dims, dims[D_T], A)
        row = 0
    return row
