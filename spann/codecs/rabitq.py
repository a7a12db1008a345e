"""RaBitQ one-bit codes (Gao & Long, SIGMOD 2024) for the posting lists.

Each entry x of list h (centre c) is stored as the signs of its rotated unit residual:
``u = (x - c) / |x - c|``, ``v = P^T u`` (P a random orthogonal rotation, D x Dp, Dp = D
rounded up to 64), bits ``b_i = v_i > 0`` packed in Dp / 64 uint64 words, plus two floats:
``|x - c|`` and ``<o_bar, u> = |v|_1 / sqrt(Dp)`` (o_bar = the quantised unit vector).

A query q scanning list h uses its rotated residual ``q' = P^T (q - c) / |q - c|`` quantised to
4 bits per dimension (``q'_i ~ lo + w * qu_i``, four bit planes), so that
``<o_bar, q'> = (2 (lo * popcount(b) + w * sum_j 2^j popcount(b & plane_j)) - Dp lo - w sum qu) / sqrt(Dp)``
costs 4 * Dp / 64 AND + POPCNT. The estimator of ``<u, q'>`` is ``<o_bar, q'> / <o_bar, u>``,
unbiased with error ``O(1 / sqrt(Dp))``; the distance estimate is
``|x - c|^2 + |q - c|^2 - 2 |x - c| |q - c| <u, q'>``. Candidates are then re-ranked exactly.

Rotations are applied once per query: an index with rabitq postings keeps its heads in the
rotated space (distances are unchanged by an orthogonal map), so the centres' rotated images
cost no extra memory.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from spann.kernels.distances import FASTMATH

__all__ = ["EPS0", "random_rotation", "encode", "popcount64", "prepare_list_query", "estimate", "error_bound",
           "bound_cut"]

#: width of the estimator's confidence interval (RaBitQ's epsilon_0; the paper's 1.9 "gives
#: nearly perfect recall" of the candidates that matter)
EPS0 = 1.9


def random_rotation(dim: int, seed: int) -> np.ndarray:
    """D x Dp rows of a random orthogonal Dp x Dp matrix (Dp = dim rounded up to 64), float32."""
    dp = -(-dim // 64) * 64
    rng = np.random.default_rng([seed, 0xB17])
    qm, r = np.linalg.qr(rng.standard_normal((dp, dp)))
    qm *= np.sign(np.diag(r))  # a uniformly random orthogonal matrix
    return np.ascontiguousarray(qm[:dim], dtype=np.float32)


@numba.njit(cache=True, nogil=True, parallel=True)
def _pack(v, words, aux, inv_sqrt_dp):
    """Sign bits of rotated unit residuals ``v`` (n, Dp) into ``words``; <o_bar, u> into aux[:, 1]."""
    for i in numba.prange(v.shape[0]):
        if aux[i, 0] == 0.0:
            aux[i, 1] = 1.0
            continue
        l1 = 0.0
        for b in range(v.shape[1]):
            if v[i, b] > 0:
                words[i, b >> 6] |= np.uint64(1) << np.uint64(b & 63)
            l1 += abs(v[i, b])
        aux[i, 1] = l1 * inv_sqrt_dp


def encode(x: np.ndarray, centers: np.ndarray, rot: np.ndarray, block: int = 32768) -> tuple[np.ndarray, np.ndarray]:
    """Codes uint8 (n, Dp / 8) and factors float32 (n, 2) of rows ``x`` around ``centers``
    (both float32 (n, D), the stored space). The rotation is one BLAS product per block."""
    n = x.shape[0]
    dp = rot.shape[1]
    words = np.zeros((n, dp // 64), np.uint64)
    aux = np.zeros((n, 2), np.float32)
    for s in range(0, n, block):
        r = np.asarray(x[s:s + block], np.float32) - np.asarray(centers[s:s + block], np.float32)
        nr = np.sqrt(np.einsum("ij,ij->i", r, r, dtype=np.float64))
        aux[s:s + block, 0] = nr
        u = r / np.where(nr > 0, nr, 1.0)[:, None].astype(np.float32)
        _pack(np.ascontiguousarray(u @ rot), words[s:s + block], aux[s:s + block], 1.0 / np.sqrt(dp))
    return words.view(np.uint8).reshape(n, dp // 8), aux


@intrinsic
def popcount64(typingctx, x):
    """popcount64(uint64) -> int64 (LLVM ctpop)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.int64(x)

    def codegen(context, builder, signature, args):
        v = context.cast(builder, args[0], signature.args[0], types.uint64)
        fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.ctpop.i64")
        return builder.call(fn, [v])

    return sig, codegen


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def prepare_list_query(qr, c_rot, planes, subtract):
    """Quantise the query for one list. ``qr``: rotated query (Dp,); ``c_rot``: rotated centre
    (Dp,) (ignored unless ``subtract``); fills ``planes`` with the bit planes
    of the 4-bit codes (int64 (4, Dp/64)); returns (|q - c|, lo, w, sum of codes)."""
    dp = qr.shape[0]
    nq2 = 0.0
    lo = np.inf
    hi = -np.inf
    t = np.empty(dp, np.float32)
    for i in range(dp):
        v = qr[i] - c_rot[i] if subtract else qr[i]
        t[i] = v
        nq2 += v * v
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    nq = np.sqrt(nq2)
    if nq == 0.0:
        nq = 1e-30
    lo /= nq
    hi /= nq
    w = (hi - lo) / 15.0
    if w <= 0.0:
        w = 1e-30
    inv = 1.0 / (nq * w)
    off = lo * nq
    s = 0
    for b in range(planes.shape[1]):  # branch-free: one word of each plane per 64 coordinates
        p0 = np.int64(0)
        p1 = np.int64(0)
        p2 = np.int64(0)
        p3 = np.int64(0)
        for i in range(64):
            c = np.int64((t[b * 64 + i] - off) * inv + 0.5)
            c = min(max(c, 0), 15)
            s += c
            sh = np.int64(i)
            p0 |= (c & 1) << sh
            p1 |= ((c >> 1) & 1) << sh
            p2 |= ((c >> 2) & 1) << sh
            p3 |= ((c >> 3) & 1) << sh
        planes[0, b] = p0
        planes[1, b] = p1
        planes[2, b] = p2
        planes[3, b] = p3
    return nq, lo, w, s


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, inline="always")
def estimate(words, planes, lo, w, s_all, dp):
    """<o_bar, q'> for one entry's code ``words`` (int64 (Dp/64,), the bits of the uint64 words)."""
    pc = 0
    sb = 0
    for b in range(words.shape[0]):
        x = words[b]
        pc += popcount64(x)
        sb += popcount64(x & planes[0, b]) + 2 * popcount64(x & planes[1, b]) \
            + 4 * popcount64(x & planes[2, b]) + 8 * popcount64(x & planes[3, b])
    return (2.0 * (lo * pc + w * sb) - dp * lo - w * s_all) / np.sqrt(dp)


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, inline="always")
def error_bound(a, dp, w):
    """Bound on |estimate / a - <u, q'>| for an entry with ``a = <o_bar, u>`` and a query
    quantised with step ``w``: RaBitQ's (Theorem 3.2) ``sqrt(1 - a^2) / a * EPS0 / sqrt(Dp - 1)``
    plus the query's rounding, ``<o_bar, delta> / a`` with delta uniform in +-w/2 per coordinate
    (standard deviation w / sqrt(12) / a), also at EPS0 deviations."""
    if a <= 0.0:
        return np.float32(2.0)  # no information: a cosine is within [-1, 1]
    code = np.sqrt(max(np.float32(1.0) - a * a, np.float32(0.0))) / np.sqrt(np.float32(dp - 1))
    return np.float32(EPS0) / a * (code + w * np.float32(0.28867513))


@numba.njit(cache=True, nogil=True)
def bound_cut(cand_d, cand_e, cand_r, k):
    """Keep the candidates (ascending estimates ``cand_d``, error bounds ``cand_e``, rows
    ``cand_r``, -1 padded) that may be among the true k nearest: those whose lower bound
    ``d - e`` is below the k-th smallest upper bound ``d + e``. Survivors move to the front in
    their order, the rest become -1 / inf. Returns how many survive."""
    n = 0
    while n < cand_r.shape[0] and cand_r[n] >= 0:
        n += 1
    if n <= k:
        return n
    hi = np.empty(n, np.float32)
    for j in range(n):
        hi[j] = cand_d[j] + cand_e[j]
    hi.sort()
    u = hi[k - 1]
    kept = 0
    for j in range(n):
        if cand_d[j] - cand_e[j] <= u:
            cand_d[kept] = cand_d[j]
            cand_e[kept] = cand_e[j]
            cand_r[kept] = cand_r[j]
            kept += 1
    for j in range(kept, cand_r.shape[0]):
        cand_d[j] = np.inf
        cand_e[j] = 0.0
        cand_r[j] = -1
    return kept
