"""Replica assignment: each vector goes to its nearest head and to boundary heads.

For vector x with candidate heads c_1..c_m (nearest first, from the head graph):
- closure rule: c_j is eligible only if ``d(x, c_j) <= (1 + eps) * d(x, c_1)`` (true L2 in the
  head space, i.e. squared distances compared with (1 + eps)^2);
- then one of two rules picks among the eligible heads:
  - RNG rule (``soar_lambda`` 0): c_j is skipped if an accepted c_i has
    ``rng_factor * d(c_i, c_j) < d(x, c_j)`` (squared distances): c_i already "covers" the
    direction of c_j. A factor above 1 keeps more boundary replicas;
  - SOAR rule (``soar_lambda`` > 0; Sun et al., NeurIPS 2023, spilled assignments with
    orthogonality-amplified residuals): the next head is the eligible c_j with the least
    ``|r_j|^2 + soar_lambda * sum_i <r_i, r_j>^2 / |r_i|^2`` over the accepted heads c_i, where
    ``r = x - c``. A replica whose residual is parallel to an accepted one's would be found by the
    same queries (those along that residual); an orthogonal one covers queries the others miss.
    The dot products come from distances alone: ``<r_i, r_j> = (d(x, c_i) + d(x, c_j) -
    d(c_i, c_j)) / 2`` (squared), so the rule costs what the RNG rule costs;
- at most ``replica_count`` heads are accepted.
Blocks of vectors are processed in parallel chunks (numba ``prange``), each chunk with its own
visited array for the graph search. Nothing is ever cut afterwards: posting lists are as long as
this assignment makes them.
"""

from __future__ import annotations

import numba
import numpy as np

from spann.heads.graph import WalkCodes, beam_search
from spann.kernels.distances import FASTMATH, sq_l2

__all__ = ["assign_block", "select_replicas"]


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def select_replicas(cand_i, cand_d, heads, replica_count, eps, rng_factor, soar_lambda, out_i, out_d):
    """Apply the closure rule and then the RNG rule (``soar_lambda`` 0) or the SOAR rule to
    candidates sorted nearest first (int32 / float32 (m,), -1 / inf padded); writes the accepted
    heads, nearest first, to ``out_i`` / ``out_d`` and returns their count."""
    if cand_i[0] < 0:
        return 0
    if soar_lambda > 0:
        return _select_soar(cand_i, cand_d, heads, replica_count, eps, soar_lambda, out_i, out_d)
    limit = cand_d[0] * (1.0 + eps) * (1.0 + eps)
    out_i[0] = cand_i[0]
    out_d[0] = cand_d[0]
    n = 1
    for j in range(1, cand_i.shape[0]):
        if n >= replica_count:
            break
        c = cand_i[j]
        if c < 0 or cand_d[j] > limit:
            break
        ok = True
        for s in range(n):
            if rng_factor * sq_l2(heads[out_i[s]], heads[c]) < cand_d[j]:
                ok = False
                break
        if ok:
            out_i[n] = c
            out_d[n] = cand_d[j]
            n += 1
    return n


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def _select_soar(cand_i, cand_d, heads, replica_count, eps, soar_lambda, out_i, out_d):
    """The SOAR rule of :func:`select_replicas` (greedy: each accepted head adds its penalty to
    every eligible candidate, then the cheapest is accepted)."""
    limit = cand_d[0] * (1.0 + eps) * (1.0 + eps)
    m = 1
    while m < cand_i.shape[0] and cand_i[m] >= 0 and cand_d[m] <= limit:
        m += 1
    cost = cand_d[:m].astype(np.float64)
    taken = np.zeros(m, np.bool_)
    taken[0] = True
    last = 0
    n = 1
    while n < replica_count:
        d_last = float(cand_d[last])
        best = -1
        for j in range(1, m):
            if taken[j]:
                continue
            if d_last > 0:
                dot = 0.5 * (d_last + float(cand_d[j]) - float(sq_l2(heads[cand_i[last]], heads[cand_i[j]])))
                cost[j] += soar_lambda * dot * dot / d_last
            if best < 0 or cost[j] < cost[best]:
                best = j
        if best < 0:
            break
        taken[best] = True
        last = best
        n += 1
    # accepted heads, nearest first (the candidates' order)
    n = 0
    for j in range(m):
        if taken[j]:
            out_i[n] = cand_i[j]
            out_d[n] = cand_d[j]
            n += 1
    return n


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)
def assign_block(x, heads, neighbors, seeds, ef, candidates, replica_count, eps, rng_factor, soar_lambda, n_chunks):
    """Replica heads for head-space rows ``x`` (float32 (b, Dh)); row i's walk starts from the
    heads ``seeds[i]`` (int32 (b, m): :class:`spann.heads.graph.EntrySeeds`).

    Returns ``(heads int32 (b, R), squared head-space distances float32 (b, R), counts int32
    (b,))``, nearest first, -1 / inf padded.
    """
    b = x.shape[0]
    rep_i = np.full((b, replica_count), -1, np.int32)
    rep_d = np.full((b, replica_count), np.inf, np.float32)
    cnt = np.zeros(b, np.int32)
    step = (b + n_chunks - 1) // n_chunks
    exact = WalkCodes(np.zeros((0, heads.shape[1]), np.uint8), np.zeros(heads.shape[1], np.float32),
                      np.ones(heads.shape[1], np.float32))  # the assignment walks on exact distances
    for ch in numba.prange(n_chunks):
        visited = np.zeros(heads.shape[0], np.uint32)
        ci = np.empty(candidates, np.int32)
        cd = np.empty(candidates, np.float32)
        tag = np.uint32(0)
        for i in range(ch * step, min(b, (ch + 1) * step)):
            tag += np.uint32(1)
            beam_search(x[i], heads, neighbors, seeds[i], ef, visited, tag, ci, cd, exact)
            cnt[i] = select_replicas(ci, cd, heads, replica_count, eps, rng_factor, soar_lambda, rep_i[i], rep_d[i])
    return rep_i, rep_d, cnt
