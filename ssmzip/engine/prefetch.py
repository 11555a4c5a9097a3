"""A cache prefetch hint callable from numba code.

The context models' hash tables, the run table and the larger APMs are far
bigger than the CPU caches, and most lookups miss. Asking for every line a
byte (or a bit) will need before the first of them is used lets those misses
overlap instead of queueing one after another. A hint changes no result, only
when the memory arrives.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, arr, idx):
    """prefetch(arr, i): bring the cache line holding arr[i] in (read, keep in all levels).
    No bounds check is needed: a prefetch of a bad address is ignored by the CPU."""
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        aryty, idxty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        i = context.cast(builder, args[1], idxty, types.intp)
        ptr = builder.bitcast(builder.gep(ary.data, [i]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen
