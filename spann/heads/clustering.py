"""Hierarchical balanced k-means: choose the heads (posting-list centres) of a SPANN index.

Each tree node is split by a *capacity-constrained* k-means: no cluster may take more than
``ceil(n / k * (1 + slack))`` points, enforced by a greedy regret-ordered assignment, so the
leaves (and hence the posting lists) have similar sizes. Nodes are split until a node's target
number of heads is reached; each leaf's centroid is a head. (SPTAG uses the member nearest to
the centroid instead; on high-dimensional data such real points are "hubs" whose lists grow
without bound, and measured on GloVe-50 centroids read fewer pages for the same recall.)
"""

from __future__ import annotations

import math
from typing import Callable

import numba
import numpy as np

__all__ = ["MIN_SAMPLE_PER_HEAD", "capacity_assign", "kmeans_plusplus", "balanced_kmeans", "select_heads",
           "split_targets", "sq_dists"]

#: a head must average at least this many clustered rows: heads that are single sample points sit as
#: close to each other as points do, the replica rules then accept nearly every candidate
#: (measured at 2M x 128 uint8, 100k heads: 6.7 replicas per vector from a 500k sample, 1.00
#: from a 1M sample)
MIN_SAMPLE_PER_HEAD = 8


def sq_dists(x: np.ndarray, c: np.ndarray, cn: np.ndarray | None = None) -> np.ndarray:
    """Squared L2 distances (n, k) between rows of float32 x (n, d) and c (k, d) via BLAS."""
    if cn is None:
        cn = np.einsum("ij,ij->i", c, c)
    xn = np.einsum("ij,ij->i", x, x)
    d = xn[:, None] - 2.0 * (x @ c.T) + cn[None, :]
    np.maximum(d, 0.0, out=d)
    return d


@numba.njit(cache=True, nogil=True)
def capacity_assign(dist, cap):
    """Assign each row of ``dist`` (n, k) to a column, at most ``cap`` rows per column.

    Points with the largest regret (second-best minus best distance) choose first, each taking
    its nearest column that still has room. Requires ``cap * k >= n``. Returns int32 (n,).
    O(n k) plus O(k) extra for each point whose first choice is already full.
    """
    n, k = dist.shape
    best = np.empty(n, np.int32)
    regret = np.empty(n, np.float32)
    for i in range(n):
        b1 = 0
        d1 = dist[i, 0]
        d2 = np.inf
        for j in range(1, k):
            d = dist[i, j]
            if d < d1:
                d2 = d1
                d1 = d
                b1 = j
            elif d < d2:
                d2 = d
        best[i] = b1
        regret[i] = d2 - d1 if k > 1 else 0.0
    counts = np.zeros(k, np.int64)
    labels = np.empty(n, np.int32)
    for p in np.argsort(-regret):
        c = best[p]
        if counts[c] >= cap:
            c = -1
            dc = np.inf
            for j in range(k):
                if counts[j] < cap and dist[p, j] < dc:
                    dc = dist[p, j]
                    c = j
        labels[p] = c
        counts[c] += 1
    return labels


@numba.njit(cache=True, nogil=True)
def kmeans_plusplus(x, k, seed):
    """k-means++ seeding: k rows of float32 x (n, d) chosen with probability ~ D(x)^2."""
    np.random.seed(seed)
    n, d = x.shape
    centers = np.empty((k, d), np.float32)
    first = np.random.randint(n)
    centers[0] = x[first]
    closest = np.empty(n, np.float64)
    total = 0.0
    for i in range(n):
        s = 0.0
        for j in range(d):
            t = x[i, j] - centers[0, j]
            s += t * t
        closest[i] = s
        total += s
    for c in range(1, k):
        if total <= 0.0:
            pick = np.random.randint(n)
        else:
            r = np.random.random() * total
            acc = 0.0
            pick = n - 1
            for i in range(n):
                acc += closest[i]
                if acc >= r:
                    pick = i
                    break
        centers[c] = x[pick]
        total = 0.0
        for i in range(n):
            s = 0.0
            for j in range(d):
                t = x[i, j] - centers[c, j]
                s += t * t
            if s < closest[i]:
                closest[i] = s
            total += closest[i]
    return centers


@numba.njit(cache=True, nogil=True)
def _centroids(x, labels, k):
    """Mean of the rows of x per label (k, d) float32 and counts (k,) int64."""
    n, d = x.shape
    acc = np.zeros((k, d), np.float64)
    cnt = np.zeros(k, np.int64)
    for i in range(n):
        c = labels[i]
        cnt[c] += 1
        for j in range(d):
            acc[c, j] += x[i, j]
    out = np.empty((k, d), np.float32)
    for c in range(k):
        for j in range(d):
            out[c, j] = acc[c, j] / cnt[c] if cnt[c] > 0 else 0.0
    return out, cnt


@numba.njit(cache=True, nogil=True)
def _nearest_member(x, labels, centers):
    """For each cluster, the row index of its member nearest to its centre (-1 if empty)."""
    k = centers.shape[0]
    best = np.full(k, np.inf)
    arg = np.full(k, -1, np.int64)
    for i in range(x.shape[0]):
        c = labels[i]
        s = 0.0
        for j in range(x.shape[1]):
            t = x[i, j] - centers[c, j]
            s += t * t
        if s < best[c]:
            best[c] = s
            arg[c] = i
    return arg


def balanced_kmeans(x: np.ndarray, k: int, *, iters: int = 12, slack: float = 0.2,
                    rng: np.random.Generator, train_points: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Capacity-constrained k-means of float32 rows ``x`` (n, d) into ``k`` clusters.

    Centres are trained on at most ``train_points * k`` sampled rows, then every row is assigned
    under the capacity ``ceil(n / k * (1 + slack))``. Returns ``(labels int32 (n,), centres
    float32 (k, d))``.
    """
    n = x.shape[0]
    k = min(k, n)
    if k <= 1:
        return np.zeros(n, np.int32), x.mean(axis=0, keepdims=True).astype(np.float32)
    m = min(n, train_points * k)
    sample = x if m == n else x[np.sort(rng.choice(n, size=m, replace=False))]
    # k-means++ seeding on a small subset: better starts than uniform, cheap
    seed_rows = sample if m <= 20 * k else sample[rng.choice(m, size=20 * k, replace=False)]
    centers = kmeans_plusplus(np.ascontiguousarray(seed_rows, dtype=np.float32), k, int(rng.integers(2**31 - 1)))
    cap_train = int(math.ceil(m / k * (1.0 + slack)))
    for _ in range(iters):
        labels = capacity_assign(sq_dists(sample, centers), cap_train)
        new, cnt = _centroids(sample, labels, k)
        empty = np.flatnonzero(cnt == 0)
        if empty.size:
            new[empty] = sample[rng.choice(m, size=empty.size, replace=False)]
        moved = float(np.abs(new - centers).max())
        centers = new
        if moved < 1e-7:
            break
    cap = int(math.ceil(n / k * (1.0 + slack)))
    labels = _assign_blocked(x, centers, cap)
    return labels, centers


def _assign_blocked(x: np.ndarray, centers: np.ndarray, cap: int, block: int = 1 << 16) -> np.ndarray:
    if x.shape[0] <= block:
        return capacity_assign(sq_dists(x, centers), cap)
    # large node: distances by blocks, then one capacity pass over all of them
    cn = np.einsum("ij,ij->i", centers, centers)
    dist = np.empty((x.shape[0], centers.shape[0]), np.float32)
    for s in range(0, x.shape[0], block):
        dist[s:s + block] = sq_dists(x[s:s + block], centers, cn)
    return capacity_assign(dist, cap)


def split_targets(t: int, sizes: np.ndarray) -> np.ndarray:
    """Split ``t`` heads over children proportionally to ``sizes`` (largest remainder, each
    non-empty child >= 1, never more than its size)."""
    n = sizes.sum()
    raw = t * sizes / n
    out = np.floor(raw).astype(np.int64)
    out[(sizes > 0) & (out == 0)] = 1
    rem = t - out.sum()
    if rem > 0:
        for i in np.argsort(-(raw - np.floor(raw))):
            if rem == 0:
                break
            if out[i] < sizes[i]:
                out[i] += 1
                rem -= 1
    return np.minimum(out, sizes)


def select_heads(x: np.ndarray, n_heads: int, *, branching: int = 32, slack: float = 0.2, iters: int = 12,
                 seed: int = 0, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Heads of ``x`` (float32 (n, d)) by hierarchical balanced k-means: the centroids of the
    leaves, float32 (H, d), H about ``n_heads`` (a few fewer if clusters come out empty).

    Each node with target t > branching is split into ``ceil(t ** (1/L))`` children
    (L = levels still needed), so the tree is as shallow as the branching allows. Heads come out
    in depth-first leaf order: heads with near ids are near in space, so their posting lists,
    stored in head order, are near on disk.
    """
    n = x.shape[0]
    n_heads = int(min(max(1, n_heads), n))
    rng = np.random.default_rng(seed)
    heads: list[np.ndarray] = []
    stack: list[tuple[np.ndarray, int]] = [(np.arange(n, dtype=np.int64), n_heads)]
    while stack:
        idx, t = stack.pop()
        m = idx.size
        t = min(t, m)
        if t <= 1:
            heads.append(x[idx].mean(axis=0, keepdims=True).astype(np.float32))
            if progress:
                progress(1)
            continue
        if t <= branching:
            k, final = t, True
        else:
            levels = math.ceil(math.log(t) / math.log(branching) - 1e-9)
            k, final = min(branching, int(math.ceil(t ** (1.0 / levels)))), False
        xs = x[idx]
        labels, centers = balanced_kmeans(xs, k, iters=iters, slack=slack, rng=rng)
        sizes = np.bincount(labels, minlength=k)
        if final:
            heads.append(centers[sizes > 0])
            if progress:
                progress(int((sizes > 0).sum()))
            continue
        targets = split_targets(t, sizes)
        order = np.argsort(labels, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        for c in reversed(range(k)):  # pushed in reverse: popped (depth first) in child order
            if sizes[c] and targets[c]:
                stack.append((idx[order[bounds[c]:bounds[c + 1]]], int(targets[c])))
    return np.ascontiguousarray(np.concatenate(heads), dtype=np.float32)
