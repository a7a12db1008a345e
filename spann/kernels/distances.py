"""Numba distance kernels (pure functions of two vectors) and the metric registry.

Vectors may be float32, uint8 or int8; numba specialises each kernel per dtype pair and
accumulates in float32. Callers pass 1-D views (slices of the row arrays): indexing a slice
view lets LLVM vectorise the loop.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["FASTMATH", "sq_l2", "neg_dot", "L2", "NEG_DOT", "pair_distance"]

L2 = 0        #: squared Euclidean
NEG_DOT = 1   #: negative inner product

#: LLVM fast-math flags of every kernel: reassociation (vectorised sums) and contraction (FMA),
#: but not nnan/ninf: kernels compare against inf sentinels.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, inline="always")
def sq_l2(a, b) -> float:
    """sum_i (a_i - b_i)^2"""
    s = np.float32(0.0)
    for i in range(a.shape[0]):
        d = np.float32(a[i]) - np.float32(b[i])
        s += d * d
    return s


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, inline="always")
def neg_dot(a, b) -> float:
    """-sum_i a_i b_i"""
    s = np.float32(0.0)
    for i in range(a.shape[0]):
        s += np.float32(a[i]) * np.float32(b[i])
    return -s


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, inline="always")
def pair_distance(a, b, metric: int) -> float:
    """Distance of metric code ``metric`` (L2 or NEG_DOT) between 1-D vectors a and b."""
    if metric == L2:
        return sq_l2(a, b)
    return neg_dot(a, b)
