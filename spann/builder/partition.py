"""Heads out of core: the top of the balanced k-means tree is clustered on the sample, every
vector is routed down to its nearest top-level centre and spilled to that bucket's files, and
each bucket is clustered on its own rows (by :func:`spann.heads.clustering.select_heads`).

The head count is the whole collection's (``head_ratio`` or ``posting_size``), split over the
buckets by their row counts, whatever the memory limit: the limit bounds how many rows one
bucket clusters at a time (a larger bucket is clustered on a seeded subsample of ``cap`` rows,
still at least :data:`~spann.heads.clustering.MIN_SAMPLE_PER_HEAD` per head), and how many
buckets are clustered at once, not how many heads there are.

Every random choice is seeded by ``(seed, bucket)`` and routing runs in blocks aligned to
:data:`ROUTE_BLOCK` rows, so a build on any thread count, or on a cluster's workers (one part
of the rows per task), spills the same rows in the same order and makes the same heads.

Files under the partition directory: ``bucket-<b>.part-<t>.rows`` (bucket b's rows routed by
part t, in the base's dtype, in row order). Memory: the top-level centres, one block of routed
rows, and per bucket being clustered its rows in the head space (float32) about three times.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from spann.datasets.formats import check_finite
from spann.heads.clustering import MIN_SAMPLE_PER_HEAD, balanced_kmeans, select_heads, split_targets, sq_dists
from spann.kernels.metrics import Metric
from spann.params import BuildParams

__all__ = ["BUCKET_ROWS", "ROUTE_BLOCK", "Buckets", "bucket_count", "partitioned", "top_level", "route_part",
           "bucket_targets", "bucket_rows", "bucket_heads", "route_parts", "route_stage",
           "bucket_heads_stage", "cluster_cap", "fresh_dir", "CLUSTER_BYTES_PER_DIM"]

#: rows per top-level bucket aimed at (a bucket of 2^18 rows x 128 dims clusters in ~2-3 s)
BUCKET_ROWS = 1 << 18
#: at most this many buckets: routing costs n x buckets distances (at 10^9 rows, buckets of ~1M)
MAX_BUCKETS = 1024
#: rows routed per BLAS product; parts of a distributed routing start at multiples of it
ROUTE_BLOCK = 1 << 14
#: bytes per head-space dimension a clustered row costs (the float32 row, its copy in a tree
#: node, the distances and labels of its node: about three float32 copies)
CLUSTER_BYTES_PER_DIM = 12


@dataclass(frozen=True)
class Buckets:
    """The top level: centres float32 (B, Dh), rows routed to each int64 (B,), and the
    directory holding the spilled rows."""

    centers: np.ndarray
    counts: np.ndarray
    dir: Path


def partitioned(n_rows: int, sample_rows: int, wanted: int) -> bool:
    """Whether the heads are clustered out of core: the sample is a true subsample of the
    ``n_rows`` the clustering may use, and holds fewer than MIN_SAMPLE_PER_HEAD rows for each of
    the ``wanted`` heads."""
    return sample_rows < n_rows and wanted * MIN_SAMPLE_PER_HEAD > sample_rows


def bucket_count(n: int, cap: int) -> int:
    """Top-level buckets for ``n`` rows: about :data:`BUCKET_ROWS` each, and no more than half
    of ``cap`` (the rows one bucket may cluster) so that uneven buckets still fit; at least 2,
    at most :data:`MAX_BUCKETS`."""
    return int(min(MAX_BUCKETS, max(2, math.ceil(n / BUCKET_ROWS), math.ceil(2 * n / max(cap, 1)))))


def top_level(sample_rows: np.ndarray, n: int, cap: int, params: BuildParams) -> np.ndarray:
    """Centres (float32 (B, Dh)) of a balanced k-means of the sample's head-space rows into
    :func:`bucket_count` buckets."""
    k = min(bucket_count(n, cap), sample_rows.shape[0])
    rng = np.random.default_rng([params.seed, 17])
    _, centers = balanced_kmeans(sample_rows, k, iters=params.kmeans_iters, slack=params.balance_slack, rng=rng)
    return np.ascontiguousarray(centers, dtype=np.float32)


def _part_path(directory: Path, b: int, t: int) -> Path:
    return directory / f"bucket-{b:05d}.part-{t:06d}.rows"


def route_part(src, metric: Metric, max_norm: float, centers: np.ndarray, held: np.ndarray,
               part: tuple[int, int, int], directory: Path, progress=None) -> np.ndarray:
    """Route rows ``part[1] .. part[2]`` (``part[1]`` a multiple of :data:`ROUTE_BLOCK`) to
    their nearest centre and append them, in the base's dtype, to that bucket's file of part
    ``part[0]``; ``held`` (int64, ascending) rows are left out. The files are written under
    temporary names and renamed at the end, so a part routed again replaces them whole.
    Returns the rows routed to each bucket, int64 (B,). ``progress(rows)``: called per block."""
    t, a, b = part
    B = centers.shape[0]
    cn = np.einsum("ij,ij->i", centers, centers)
    run = uuid.uuid4().hex[:12]
    tmp = [directory / f"bucket-{k:05d}.part-{t:06d}.{run}.tmp" for k in range(B)]
    for f in tmp:
        open(f, "wb").close()
    counts = np.zeros(B, np.int64)
    for s in range(a, b, ROUTE_BLOCK):
        blk = src.read(s, min(b, s + ROUTE_BLOCK))
        check_finite(blk, f"{src.path}", s)
        if progress is not None:
            progress(blk.shape[0])
        lo, hi = np.searchsorted(held, [s, s + blk.shape[0]])
        if hi > lo:
            keep = np.ones(blk.shape[0], bool)
            keep[held[lo:hi] - s] = False
            blk = blk[keep]
        if blk.shape[0] == 0:
            continue
        near = np.argmin(sq_dists(metric.head_space(blk, max_norm), centers, cn), axis=1)
        order = np.argsort(near, kind="stable")
        edges = np.searchsorted(near[order], np.arange(B + 1))
        blk = blk[order]
        for k in np.flatnonzero(edges[1:] > edges[:-1]):
            with open(tmp[k], "ab") as fh:
                blk[edges[k]:edges[k + 1]].tofile(fh)
        counts += np.diff(edges)
    for k in range(B):
        os.replace(tmp[k], _part_path(directory, k, t))
    return counts


def route_parts(n: int, rows: int) -> list[tuple[int, int, int]]:
    """Parts (t, start, stop) of ``range(n)`` of about ``rows`` rows, starting at multiples of
    :data:`ROUTE_BLOCK`."""
    step = max(ROUTE_BLOCK, -(-rows // ROUTE_BLOCK) * ROUTE_BLOCK)
    return [(t, a, min(n, a + step)) for t, a in enumerate(range(0, n, step))]


def bucket_rows(directory: Path, b: int, dtype: np.dtype, dim: int) -> np.ndarray:
    """Bucket ``b``'s rows (dtype (m, dim)), its parts' files in part order."""
    fs = sorted(Path(directory).glob(f"bucket-{b:05d}.part-*.rows"))
    parts = [np.fromfile(f, dtype=dtype) for f in fs]
    return np.concatenate(parts).reshape(-1, dim) if parts else np.zeros((0, dim), dtype)


def bucket_targets(wanted: int, counts: np.ndarray) -> np.ndarray:
    """The ``wanted`` heads split over the buckets by their row counts (int64 (B,))."""
    return split_targets(int(min(wanted, counts.sum())), np.asarray(counts, np.int64))


def bucket_heads(rows: np.ndarray, metric: Metric, max_norm: float, target: int, cap: int, params: BuildParams,
                 b: int) -> np.ndarray:
    """Heads of one bucket (float32 (~target, Dh)) from its raw ``rows``: a hierarchical
    balanced k-means of at most ``cap`` of them (a seeded subsample beyond), at most one head
    per MIN_SAMPLE_PER_HEAD rows clustered when subsampled."""
    m = rows.shape[0]
    if target < 1 or m == 0:
        return np.zeros((0, metric.head_dim(rows.shape[1])), np.float32)
    if m > cap:
        pick = np.sort(np.random.default_rng([params.seed, 19, b]).choice(m, cap, replace=False))
        rows = rows[pick]
        target = min(target, max(1, cap // MIN_SAMPLE_PER_HEAD))
    x = metric.head_space(rows, max_norm)
    seed = int(np.random.SeedSequence([params.seed, 23, b]).generate_state(1)[0] >> 1)
    return select_heads(x, target, branching=params.branching, slack=params.balance_slack, iters=params.kmeans_iters,
                        seed=seed)


def fresh_dir(directory: Path) -> Path:
    """``directory`` emptied (an interrupted routing's parts removed) or created."""
    directory = Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def route_stage(src, metric: Metric, sample, n_rows_cap: int, held: np.ndarray, params: BuildParams,
                directory: Path, progress: bool = False) -> Buckets:
    """The top level of the tree on the sample, then every row but ``held`` routed to its
    bucket in one streamed pass (locally: one part). ``n_rows_cap``: the rows one bucket may
    cluster (see :func:`bucket_count`)."""
    directory = fresh_dir(directory)
    centers = top_level(sample.rows, src.n, n_rows_cap, params)
    with tqdm(total=src.n, desc="route to buckets", unit="vec", unit_scale=True, disable=not progress,
              leave=False) as bar:
        counts = route_part(src, metric, sample.max_norm, centers, held, (0, 0, src.n), directory, bar.update)
    return Buckets(centers=centers, counts=counts, dir=directory)


def bucket_heads_stage(buckets: Buckets, metric: Metric, max_norm: float, dtype: np.dtype, dim: int, wanted: int,
                       cap: int, params: BuildParams, threads: int = 1, progress=None) -> np.ndarray:
    """Heads of every bucket, in bucket order (float32 (H, Dh)); up to ``threads`` buckets at
    once while that many of the largest bucket fit ``cap`` rows together (the build holds BLAS
    to one thread, so each bucket's k-means runs on one core). ``progress(k)``: called with each bucket's head count."""
    targets = bucket_targets(wanted, buckets.counts)
    fit = int(max(1, min(threads, cap // max(1, int(min(buckets.counts.max(), cap))))))

    def one(b: int) -> np.ndarray:
        h = bucket_heads(bucket_rows(buckets.dir, b, dtype, dim), metric, max_norm, int(targets[b]), cap, params, b)
        if progress is not None:
            progress(h.shape[0])
        return h

    order = range(buckets.centers.shape[0])
    if fit <= 1:
        out = [one(b) for b in order]
    else:
        with ThreadPoolExecutor(fit) as pool:
            out = list(pool.map(one, order))
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def cluster_cap(memory_limit: int, work_bytes: int, head_dim: int) -> int:
    """Rows one bucket may cluster: a third of ``work_bytes`` (the build's memory left beside
    the heads and its baseline) under a memory limit, a quarter of the machine's memory
    without one; at CLUSTER_BYTES_PER_DIM bytes per head-space dimension, at least 10,000."""
    if memory_limit:
        budget = work_bytes // 3
    else:
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    return int(max(10_000, budget // (head_dim * CLUSTER_BYTES_PER_DIM)))
