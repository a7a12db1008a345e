"""A numba intrinsic for software prefetch (LLVM ``llvm.prefetch``).

Graph search is bound by memory latency: each head visited is a random row of a multi-MB array.
Prefetching every unvisited neighbour's row before computing any of their distances lets the
cache misses overlap (hnswlib and faiss do the same in C++).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["prefetch_element"]


@intrinsic
def prefetch_element(typingctx, arr, i, j):
    """prefetch_element(arr, i, j): hint the CPU to load ``arr[i, j]`` (2-D) or ``arr[i + j]``
    (1-D) into cache. No effect on results; out-of-range indices are never dereferenced."""
    if not isinstance(arr, types.Array) or arr.ndim not in (1, 2):
        return None
    sig = types.void(arr, i, j)

    def codegen(context, builder, signature, args):
        arrty, ity, jty = signature.args
        ary = context.make_array(arrty)(context, builder, args[0])
        ii = context.cast(builder, args[1], ity, types.intp)
        jj = context.cast(builder, args[2], jty, types.intp)
        if arrty.ndim == 1:
            inds = [builder.add(ii, jj)]
        else:
            inds = [ii, jj]
        ptr = cgutils.get_item_pointer(context, builder, arrty, ary, inds, wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, ir.IntType(32), ir.IntType(32), ir.IntType(32)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        i32 = ir.IntType(32)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen
