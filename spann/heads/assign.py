"""Replica assignment: each vector goes to its nearest head and to boundary heads.

For vector x with candidate heads c_1..c_m (nearest first, from the head graph):
- closure rule: c_j is eligible only if ``d(x, c_j) <= (1 + eps) * d(x, c_1)`` (true L2 in the
  head space, i.e. squared distances compared with (1 + eps)^2);
- RNG rule: c_j is skipped if an accepted c_i has ``rng_factor * d(c_i, c_j) < d(x, c_j)``
  (squared distances): c_i already "covers" the direction of c_j. A factor above 1 keeps more
  boundary replicas;
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
def select_replicas(cand_i, cand_d, heads, replica_count, eps, rng_factor, out_i, out_d):
    """Apply closure + RNG rules to sorted candidates; writes accepted heads, returns their count."""
    if cand_i[0] < 0:
        return 0
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


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)
def assign_block(x, heads, neighbors, seeds, ef, candidates, replica_count, eps, rng_factor, n_chunks):
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
            cnt[i] = select_replicas(ci, cd, heads, replica_count, eps, rng_factor, rep_i[i], rep_d[i])
    return rep_i, rep_d, cnt
