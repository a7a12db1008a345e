"""Index build as stages: sample -> heads -> head graph -> assignment -> encoding -> posting
plan -> write (postings, then the vector store for coded encodings).

Each stage is a function with typed inputs and outputs, so a build that runs elsewhere
(out of core, on a cluster) can reuse them one by one. :func:`build_index` runs them in order.

Memory: the clustering sample (at most ``cluster_sample`` rows, float32), the heads and their
graph, and 16 bytes per (vector, replica) assignment. The base is streamed in blocks through
memory maps, never loaded whole.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numba
import numpy as np
from tqdm.auto import tqdm

from spann.assign import assign_block
from spann.clustering import select_heads
from spann.datasets.formats import check_finite
from spann.head_groups import COVERAGE_MARGIN, default_group_count, group_labels, head_groups, no_head_groups
from spann.head_index import EntrySeeds, build_graph, head_search_recall, walk_codes
from spann.layout import EntryLayout, full_entries, pack_lists
from spann.threads import BuildThreads
from spann.labels import check_labels, label_directory
from spann.idmap import check_ids, idmap_bytes
from spann.spill import AssignmentRuns, buckets_for
from spann.posting_writer import entry_positions as _positions, fill_entries, pack_entries
from spann.metrics import Metric, get_metric
from spann.params import BuildParams
from spann.encodings import encode_rows, train_codebook
from spann.stores import is_url
from spann.storage import IDMAP, LABEL_LISTS, POSTINGS, VECTORS, IndexWriter, check_target, directory_bytes
from spann.vector_store import StoreLayout, store_rows_bytes
from spann.vectors import as_vector_source

__all__ = ["Sample", "Heads", "HeadGraph", "AssignmentRuns", "Encoder", "PostingPlan", "sample_stage", "heads_stage",
           "graph_stage", "assign_stage", "encoding_stage", "plan_stage", "write_stage", "store_stage",
           "build_index"]


@dataclass(frozen=True)
class Sample:
    """Head-space rows the heads are clustered from: float32 (s, Dh), their base ids int64 (s,);
    ``max_norm`` is the largest base norm (inner product's transform; 0 otherwise)."""

    rows: np.ndarray
    ids: np.ndarray
    max_norm: float


@dataclass(frozen=True)
class Heads:
    """Head-space centroids, float32 (H, Dh), in depth-first cluster order."""

    vectors: np.ndarray


@dataclass(frozen=True)
class HeadGraph:
    """neighbors int32 (H, R), -1 padded; entries int32 (E,)."""

    neighbors: np.ndarray
    entries: np.ndarray


@dataclass(frozen=True)
class PostingPlan:
    """Where every list goes: offsets int64 (H,), counts int32 (H,), list bytes int64 (H,), the
    posting array's length and shard geometry."""

    layout: EntryLayout
    offsets: np.ndarray
    counts: np.ndarray
    nbytes: np.ndarray
    total_bytes: int
    shard_bytes: int
    chunk_bytes: int

    @property
    def n_shards(self) -> int:
        return self.total_bytes // self.shard_bytes


def _blocks(src, rows: int, desc: str, progress: bool):
    total = -(-src.n // rows)
    return tqdm(src.iter_blocks(rows), total=total, desc=desc, disable=not progress, leave=False,
                unit="blk")


def sample_stage(src, metric: Metric, params: BuildParams, progress: bool = False) -> Sample:
    """A seeded random sample of at most ``cluster_sample`` rows in the head space (for inner
    product after one pass over the base for its largest norm)."""
    max_norm = 0.0
    if metric.mips:
        for s, blk in _blocks(src, params.block_rows, "norms", progress):
            check_finite(blk, f"{src.path}", s)
            x = blk.astype(np.float32)
            max_norm = max(max_norm, float(np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64).max())))
    rng = np.random.default_rng(params.seed)
    n = src.n
    k = min(n, params.cluster_sample)
    ids = np.arange(n) if k == n else np.sort(rng.choice(n, k, replace=False))
    raw = src.read() if k == n else src.take(ids)
    check_finite(raw, f"{src.path}")
    return Sample(rows=metric.head_space(raw, max_norm), ids=ids.astype(np.int64), max_norm=max_norm)


#: a head must average at least this many sample rows: heads that are single sample points sit as
#: close to each other as points do, the replica rules then accept nearly every candidate
#: (measured at 2M x 128 uint8, 100k heads: 6.7 replicas per vector from a 500k sample, 1.00
#: from a 1M sample)
MIN_SAMPLE_PER_HEAD = 8


def wanted_heads(n: int, params: BuildParams) -> int:
    """``n * head_ratio`` (or ``n / posting_size``) heads, at least one."""
    return max(1, round(n / params.posting_size)) if params.posting_size else max(1, round(n * params.head_ratio))


def heads_stage(sample: Sample, n: int, params: BuildParams, progress: bool = False) -> Heads:
    """Centroids of a hierarchical balanced k-means of the sample; about ``n * head_ratio``
    (or ``n / posting_size``) of them, but no more than the sample holds MIN_SAMPLE_PER_HEAD
    rows for when it is a true subsample (see :func:`fit_to_memory`)."""
    rows = sample.rows.shape[0]
    n_heads = min(wanted_heads(n, params), rows)
    if rows < n:
        n_heads = min(n_heads, max(1, rows // MIN_SAMPLE_PER_HEAD))
    with tqdm(total=n_heads, desc="heads (balanced k-means)", disable=not progress, leave=False) as bar:
        v = select_heads(sample.rows, n_heads, branching=params.branching, slack=params.balance_slack,
                         iters=params.kmeans_iters, seed=params.seed, progress=bar.update)
    return Heads(vectors=v)


def graph_stage(heads: Heads, params: BuildParams, progress: bool = False) -> HeadGraph:
    """Navigable neighbour graph over the heads (kNN + RNG pruning, one Vamana pass), with entry
    points (see :func:`spann.head_index.build_graph`)."""
    with tqdm(total=2 * heads.vectors.shape[0], desc="head graph", disable=not progress, leave=False) as bar:
        nb, en = build_graph(heads.vectors, degree=params.graph_degree, candidates=params.graph_candidates,
                             alpha=params.graph_alpha, seed=params.seed, progress=bar.update)
    return HeadGraph(neighbors=nb, entries=en)


def groups_stage(heads: Heads, params: BuildParams) -> np.ndarray | None:
    """Group of every head (int32 (H,)) for searches to scan (see :mod:`spann.head_groups`), or
    None when searches walk the graph (``params.head_groups`` 0, or -1 with too many heads)."""
    H = heads.vectors.shape[0]
    n = default_group_count(H) if params.head_groups < 0 else min(params.head_groups, H)
    if n < 1:
        return None
    return group_labels(heads.vectors, n, params.seed)


def graph_check(sample: Sample, heads: Heads, graph: HeadGraph, params: BuildParams, n: int = 1000) -> float:
    """Recall@8 of the head graph's walk (the assignment's pool and seeds) against the exact 8
    nearest heads, for up to ``n`` rows of the clustering sample: how well the graph finds heads."""
    rng = np.random.default_rng(params.seed + 3)
    rows = sample.rows[np.sort(rng.choice(sample.rows.shape[0], min(n, sample.rows.shape[0]), replace=False))]
    return round(head_search_recall(heads.vectors, graph.neighbors, graph.entries, np.ascontiguousarray(rows), k=8,
                                    ef=max(params.assign_candidates, 32)), 4)


def assign_stage(src, metric: Metric, max_norm: float, heads: Heads, graph: HeadGraph, params: BuildParams,
                 threads: int, progress: bool = False, runs_dir: Path | None = None,
                 n_buckets: int = 1) -> AssignmentRuns:
    """Nearest head + boundary replicas of every vector (closure and RNG rules), streamed in
    blocks and spilled to ``runs_dir`` in ``n_buckets`` head buckets (see :mod:`spann.spill`)."""
    import tempfile
    R = params.replica_count
    ef = max(params.assign_candidates, 32)
    if runs_dir is None:
        runs_dir = Path(tempfile.mkdtemp(prefix="spann-assign-"))
    runs = AssignmentRuns(runs_dir, src.n, heads.vectors.shape[0], n_buckets, R)
    entry_seeds = EntrySeeds(heads.vectors, graph.entries)
    with tqdm(total=src.n, desc="assign replicas", unit="vec", unit_scale=True, disable=not progress,
              leave=False) as bar:
        for s, blk in src.iter_blocks(params.block_rows):
            check_finite(blk, f"{src.path}", s)
            x = metric.head_space(blk, max_norm)
            seeds = entry_seeds.for_rows(x)
            rep_i, rep_d, cnt = assign_block(x, heads.vectors, graph.neighbors, seeds, ef,
                                             params.assign_candidates, R, np.float32(params.closure_eps),
                                             np.float32(params.rng_factor), threads * 8)
            if cnt.min() < 1:  # the graph search always finds a head; anything else is a bug
                raise RuntimeError("a vector found no head during assignment")
            runs.add_block(s, rep_i, rep_d, cnt)
            bar.update(blk.shape[0])
    runs.finish()
    return runs


@dataclass(frozen=True)
class HeadSearch:
    """How searches find their heads, decided on sample queries: ``groups`` int32 (H,) (scan
    the head groups) or None (walk the graph); the pruner ``model`` for that search (None: too
    few heads); ``covered_walk`` / ``covered_groups``: the share of sample queries' 10
    neighbours that the first max_postings / 2 and max_postings lists hold (mean of the two),
    heads found as a default search finds them (0: not measured)."""

    groups: np.ndarray | None
    model: np.ndarray | None
    covered_walk: float = 0.0
    covered_groups: float = 0.0


def pruner_stage(metric: Metric, sample: Sample, dim: int, heads: Heads, graph: HeadGraph, groups: np.ndarray | None,
                 asg: AssignmentRuns, params: BuildParams, enc: "Encoder | None" = None,
                 n_queries: int = 600) -> HeadSearch:
    """On sample rows used as queries, against their exact 10 nearest neighbours within the
    sample: with ``head_groups`` -1 (auto), keep the head ``groups`` unless the lists the graph
    walk selects hold more of the neighbours, by more than
    :data:`~spann.head_groups.COVERAGE_MARGIN`, at the default max_postings and its half (lists
    read being what a disk-bound query pays for); then fit
    the learned pruner (see :mod:`spann.pruner`) on the heads the kept search finds. No model if
    there are too few heads."""
    from spann.exact import exact_knn
    from spann.params import SearchParams
    from spann.pruner import MIN_HEADS, covered, fit_pruner, training_targets
    from spann.search import select_batch
    H = heads.vectors.shape[0]
    s = sample.rows.shape[0]
    if H < 2 * MIN_HEADS or s < 20 * n_queries // 10:  # too few to measure: groups only if asked for
        return HeadSearch(groups=groups if params.head_groups > 0 else None, model=None)
    rng = np.random.default_rng(params.seed + 7)
    qi = np.sort(rng.choice(s, min(n_queries, s // 10), replace=False))
    universe = np.ascontiguousarray(sample.rows[:, :dim])
    gi, _ = exact_knn(universe, universe[qi], 11, "l2" if metric.name == "cosine" else metric.name,
                      base_block=8192)  # ~20 MB of distances at a time (memory_limit)
    nbr = np.empty((len(qi), 10), np.int64)
    for i in range(len(qi)):  # drop the query itself
        row = gi[i][gi[i] != qi[i]][:10]
        nbr[i, :len(row)] = row
        nbr[i, len(row):] = row[-1]
    nbr_ids = sample.ids[nbr].ravel()
    # the lists each neighbour is stored in (CSR over the query-major neighbour sequence)
    need_ids = np.unique(nbr_ids)
    e_id, e_h = asg.lists_of_ids(need_ids)
    lo = np.searchsorted(e_id, nbr_ids, "left")
    hi = np.searchsorted(e_id, nbr_ids, "right")
    ptr = np.concatenate([[0], np.cumsum(hi - lo)]).astype(np.int64)
    lists = np.concatenate([e_h[a:b] for a, b in zip(lo, hi)]).astype(np.int32)
    M = min(128, H)
    hv = stored_heads(heads, enc) if enc is not None else heads.vectors
    qrows = np.ascontiguousarray(sample.rows[qi])
    if enc is not None:  # rabitq: rotated as the index's heads and queries are
        qrows = to_head_space(qrows, enc)
    seeds = EntrySeeds(hv, graph.entries).for_rows(qrows)
    dh = hv.shape[1]
    budget = min(SearchParams().max_postings, H)
    m = min(2 * budget, H)
    no_model = np.zeros(0, np.float64)

    def select(hg, ef, width):  # heads found as searches find them
        return select_batch(qrows, hv, walk_codes(hv), graph.neighbors, hg, seeds, ef, width, width, no_model,
                            np.float32(1e18), 16)[:2]

    def coverage(hg):
        sel = select(hg, SearchParams().effective_ef(m), m)[0]
        return 0.5 * (covered(sel, ptr, lists, 10, max(1, budget // 2)) + covered(sel, ptr, lists, 10, budget))

    hg = no_head_groups(dh)
    cov_walk, cov_groups = coverage(hg), 0.0
    if groups is not None:
        g = head_groups(hv, groups)
        cov_groups = coverage(g)
        if params.head_groups > 0 or cov_groups >= cov_walk - COVERAGE_MARGIN:
            hg = g
        else:
            groups = None
    sel, sel_d = select(hg, 160, M)
    need = training_targets(sel, ptr, lists, 10, 9)
    return HeadSearch(groups=groups, model=fit_pruner(sel_d[:, :MIN_HEADS], need), covered_walk=cov_walk,
                      covered_groups=cov_groups)


def plan_stage(counts: np.ndarray, layout: EntryLayout, params: BuildParams) -> PostingPlan:
    """Byte offsets of every list (page-aware packing, see :mod:`spann.layout`)."""
    nbytes = layout.list_bytes_array(counts)
    longest = int(nbytes.max()) if nbytes.size else 0
    shard = max(params.shard_bytes, -(-longest // params.chunk_bytes) * params.chunk_bytes)
    offsets, total = pack_lists(nbytes, shard)
    return PostingPlan(layout=layout, offsets=offsets, counts=counts.astype(np.int32), nbytes=nbytes,
                       total_bytes=total, shard_bytes=shard, chunk_bytes=params.chunk_bytes)


@dataclass(frozen=True)
class Encoder:
    """How entries are encoded: the layout, the trained code parameters, the vector store
    layout (coded encodings) and each vector's row in it (None for ``full``)."""

    layout: EntryLayout
    arrays: dict
    store: StoreLayout | None
    row_of: np.ndarray | None
    order: np.ndarray | None


#: ``auto`` encodes float data of at least this many dimensions with rabitq
RABITQ_MIN_DIM = 384


def choose_encoding(encoding: str, stored_dtype: np.dtype, dim: int = 0) -> str:
    """``auto``: full vectors for 8-bit data (a code would not be smaller); rabitq for float
    embeddings of RABITQ_MIN_DIM or more dimensions (one bit per dimension: 1/32 of float32,
    and its estimator's error shrinks as 1/sqrt(dim)); sq8 for the rest."""
    if encoding != "auto":
        return encoding
    if np.dtype(stored_dtype).itemsize == 1:
        return "full"
    return "rabitq" if dim >= RABITQ_MIN_DIM else "sq8"


def encoding_stage(src, metric: Metric, sample: Sample, asg: AssignmentRuns, params: BuildParams,
                   label_width: int = 0) -> Encoder:
    """Choose and train the posting encoding; for coded encodings, the vector-store row order
    (vectors sorted by nearest head, so a query's candidates share pages)."""
    dtype = metric.stored_dtype(src.dtype).name
    enc = choose_encoding(params.encoding, np.dtype(dtype), src.dim)
    layout = EntryLayout(dim=src.dim, dtype=dtype, encoding=enc, label_width=label_width,
                         id_bytes=4 if enc != "full" and src.n < 2**31 else 8)
    if enc == "full":
        return Encoder(layout, {}, None, None, None)
    arrays = train_codebook(enc, np.ascontiguousarray(sample.rows[:, :src.dim]), params.seed)
    # rows by nearest head, ids ascending within a head (a counting sort over memory maps)
    row_of = np.lib.format.open_memmap(asg.dir / "row_of.npy", "w+", np.int64, (src.n,))
    order = np.lib.format.open_memmap(asg.dir / "order.npy", "w+", np.int64, (src.n,))
    cursor = np.concatenate([[0], np.cumsum(np.bincount(np.asarray(asg.primary), minlength=asg.H))]).astype(np.int64)
    step = 1 << 22
    for a in range(0, src.n, step):
        _rank_rows(np.asarray(asg.primary[a:a + step]), np.int64(a), cursor, row_of, order)
    return Encoder(layout, arrays, StoreLayout(n=src.n, dim=src.dim, dtype=dtype), row_of, order)


@numba.njit(cache=True, nogil=True)
def _rank_rows(primary, start, cursor, row_of, order):
    for j in range(primary.shape[0]):
        r = cursor[primary[j]]
        cursor[primary[j]] = r + 1
        row_of[start + j] = r
        order[r] = start + j


def _entry_codes(src, metric: Metric, heads: Heads, e_heads: np.ndarray, ids: np.ndarray, enc: Encoder,
                 dt: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stored ids int64, aux float32 (e, A), codes uint8 (e, B)) of entries (list ``e_heads``,
    vector ``ids``)."""
    lay = enc.layout
    uniq, inv = np.unique(ids, return_inverse=True)
    rows = metric.stored_rows(src.take(uniq)).astype(dt, copy=False)
    if lay.encoding == "full":
        codes = np.ascontiguousarray(rows).view(np.uint8).reshape(len(uniq), -1)[inv]
        return ids, np.zeros((len(ids), 0), np.float32), codes
    if lay.encoding == "sq8":
        cu, _ = encode_rows("sq8", enc.arrays, rows.astype(np.float32, copy=False))
        return enc.row_of[ids], np.zeros((len(ids), 0), np.float32), cu[inv]
    centers = heads.vectors[e_heads, :lay.dim]
    codes, aux = encode_rows(lay.encoding, enc.arrays, rows.astype(np.float32, copy=False)[inv], centers)
    return enc.row_of[ids], aux, codes


def shard_postings(s: int, hs: np.ndarray, src, metric: Metric, heads: Heads, asg: AssignmentRuns, plan: PostingPlan,
                   enc: Encoder, user_ids: np.ndarray | None = None, labels: np.ndarray | None = None,
                   with_primary: bool = False, chunk_entries: int = 1 << 16, progress=None
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The used bytes (uint8) of posting shard ``s`` holding lists ``hs`` (non-empty, int64),
    its entries encoded in chunks of ``chunk_entries``. With ``with_primary``: also (ids,
    byte offsets) int64 of each vector's entry in its nearest head's list (the id map's
    locations, full encoding)."""
    lay = plan.layout
    dt = np.dtype(lay.dtype)
    S = plan.shard_bytes
    used = int((plan.offsets[hs] + plan.nbytes[hs]).max() - s * S)
    buf = np.zeros(-(-used // 8) * 8, np.uint8)
    # entry e = position t of list h: id at off + id_bytes t, aux at aux_off + 4 A t, code at
    # codes_off + B t (see spann.layout)
    c = asg.counts[hs]
    h_all, id_all = asg.lists(hs)
    t_all = np.concatenate([np.arange(n) for n in c])
    off_all = np.repeat(plan.offsets[hs] - s * S, c)
    cnt_all = np.repeat(c, c)
    L = lay.label_width
    p_ids = p_loc = None
    if with_primary:  # each vector's entry in its nearest head's list
        pe = np.flatnonzero(h_all == np.asarray(asg.primary[id_all]))
        p_ids = id_all[pe]
        p_loc = _positions(lay, off_all[pe] + s * S, cnt_all[pe], t_all[pe])[3]
    for a in range(0, len(id_all), chunk_entries):
        sl = slice(a, a + chunk_entries)
        rows = id_all[sl]
        ids, aux, codes = _entry_codes(src, metric, heads, h_all[sl], rows, enc, dt)
        if user_ids is not None and not lay.coded:
            ids = user_ids[ids]
        lab = (np.ascontiguousarray(labels[rows]) if L else np.zeros((len(rows), 0), np.int32))
        ip, lp, ap, cp = _positions(lay, off_all[sl], cnt_all[sl], t_all[sl])
        fill_entries(buf, ip, np.ascontiguousarray(ids, dtype=np.int64), lay.id_bytes, lp, lab, ap,
                     np.ascontiguousarray(aux, dtype=np.float32), cp, np.ascontiguousarray(codes))
        if progress is not None:
            progress(len(ids))
    return buf[:used], p_ids, p_loc


def shard_lists(plan: PostingPlan) -> list[np.ndarray]:
    """The non-empty lists of each posting shard (int64 arrays, one per shard)."""
    shard_of = plan.offsets // plan.shard_bytes
    order = np.argsort(shard_of, kind="stable")
    bounds = np.searchsorted(shard_of[order], np.arange(plan.n_shards + 1))
    nonempty = plan.counts > 0
    out = []
    for s in range(plan.n_shards):
        hs = order[bounds[s]:bounds[s + 1]]
        out.append(hs[nonempty[hs]].astype(np.int64))
    return out


def write_stage(src, metric: Metric, heads: Heads, asg: AssignmentRuns, plan: PostingPlan, enc: Encoder,
                writer: IndexWriter, progress: bool = False, chunk_entries: int = 1 << 16,
                user_ids: np.ndarray | None = None, labels: np.ndarray | None = None,
                prim_loc: np.ndarray | None = None) -> int:
    """Write the posting array shard by shard (each shard file written once, see
    :func:`shard_postings`); returns bytes written. ``user_ids`` int64 (n,): the id of each
    base row (None: the row number); ``labels`` int32 (n, L): each row's labels; ``prim_loc``
    int64 (n,): filled (full encoding) with the byte offset of each vector in its nearest
    head's list (the id map's locations)."""
    writer.begin_array(POSTINGS, plan.total_bytes, plan.shard_bytes, plan.chunk_bytes)
    written = 0
    with tqdm(total=asg.total, desc="write postings", unit="entry", unit_scale=True, disable=not progress,
              leave=False) as bar:
        for s, hs in enumerate(shard_lists(plan)):
            if hs.size == 0:
                continue
            done = writer.shard_done(POSTINGS, s)
            if done:  # a resumed build wrote it before the interruption
                written += done
                bar.update(int(asg.counts[hs].sum()))
                continue
            data, p_ids, p_loc = shard_postings(s, hs, src, metric, heads, asg, plan, enc, user_ids, labels,
                                                prim_loc is not None, chunk_entries, bar.update)
            if prim_loc is not None:
                prim_loc[p_ids] = p_loc
            written += writer.write_shard(POSTINGS, s, data)
            _fault(f"shard:{POSTINGS}:{s}")
    return written


def store_shard(s: int, src, metric: Metric, enc: Encoder, rows_per_shard: int,
                user_ids: np.ndarray | None = None) -> np.ndarray:
    """The bytes of vector-store shard ``s`` (rows in ``enc.order``)."""
    lay = enc.store
    ids = np.asarray(enc.order[s * rows_per_shard:(s + 1) * rows_per_shard])
    vec = metric.stored_rows(src.take(ids)).astype(np.dtype(lay.dtype), copy=False)
    return store_rows_bytes(lay, vec, ids if user_ids is None else user_ids[ids])


def store_stage(src, metric: Metric, enc: Encoder, params: BuildParams, writer: IndexWriter,
                progress: bool = False, user_ids: np.ndarray | None = None) -> int:
    """Write the vector store (coded encodings): rows in ``enc.order``, shard by shard."""
    lay = enc.store
    S = lay.shard_bytes(params.shard_bytes, params.chunk_bytes)
    writer.begin_array(VECTORS, -(-lay.total_bytes // S) * S, S, params.chunk_bytes)
    rows_per_shard = S // lay.page_bytes * lay.rows_per_page
    written = 0
    with tqdm(total=lay.n, desc="write vectors", unit="vec", unit_scale=True, disable=not progress,
              leave=False) as bar:
        for s, r0 in enumerate(range(0, lay.n, rows_per_shard)):
            done = writer.shard_done(VECTORS, s)
            if not done:
                done = writer.write_shard(VECTORS, s, store_shard(s, src, metric, enc, rows_per_shard, user_ids))
                _fault(f"shard:{VECTORS}:{s}")
            written += done
            bar.update(min(rows_per_shard, lay.n - r0))
    return written


def stored_heads(heads: Heads, enc: Encoder) -> np.ndarray:
    """Head vectors as the index keeps them: rabitq indexes keep them rotated (first D columns
    times the rotation, the inner-product column after), so a query is rotated once."""
    return to_head_space(heads.vectors, enc)


def to_head_space(rows: np.ndarray, enc: Encoder) -> np.ndarray:
    """Head-space rows (float32 (n, Dh)) as the index keeps heads and queries: rabitq rotates the
    first D columns (the inner-product column stays); other encodings return ``rows`` itself."""
    if enc.layout.encoding != "rabitq":
        return rows
    d = enc.layout.dim
    return np.ascontiguousarray(np.hstack([rows[:, :d] @ enc.arrays["rotation"], rows[:, d:]]), dtype=np.float32)


def write_byte_array(writer: IndexWriter, name: str, data: np.ndarray, total: int, shard: int, chunk: int) -> int:
    """A sharded byte array from its used bytes ``data`` (uint8) in one go."""
    writer.begin_array(name, total, shard, chunk)
    n = 0
    for s in range(-(-data.shape[0] // shard)):
        n += writer.write_shard(name, s, data[s * shard:(s + 1) * shard])
    return n


def idmap_stage(enc: Encoder, prim_loc: np.ndarray | None, user_ids: np.ndarray | None, n: int,
                params: BuildParams, writer: IndexWriter) -> int:
    """Write the id map (see :mod:`spann.idmap`): each id's store row (coded) or the byte
    offset of its vector in its nearest head's list (full, ``prim_loc``). Row-number ids are
    written in streamed shards; users' ids are sorted in RAM (8 bytes per vector)."""
    loc = enc.row_of if enc.layout.coded else prim_loc
    shard = params.shard_bytes
    total = -(-16 * n // shard) * shard
    if user_ids is not None:
        return write_byte_array(writer, IDMAP, idmap_bytes(user_ids, np.asarray(loc)), total, shard,
                                params.chunk_bytes)
    writer.begin_array(IDMAP, total, shard, params.chunk_bytes)
    per = shard // 16
    written = 0
    for s, a in enumerate(range(0, n, per)):
        b = min(n, a + per)
        rec = np.empty((b - a, 2), "<i8")
        rec[:, 0] = np.arange(a, b)
        rec[:, 1] = loc[a:b]
        written += writer.write_shard(IDMAP, s, rec.reshape(-1).view(np.uint8))
    return written


def label_lists_stage(src, metric: Metric, labels: np.ndarray, user_ids: np.ndarray | None, params: BuildParams,
                      writer: IndexWriter, dtype: str) -> int:
    """The label directory (values, vectors per value, which have a label list) and the label
    lists: every vector of each label carried by at most ``label_list_fraction`` of them, full
    precision, with its id."""
    vals, cnt = label_directory(labels)
    listed = cnt <= params.label_list_fraction * src.n
    rows, cols = np.nonzero(labels >= 0)
    v = np.searchsorted(vals, labels[rows, cols])
    keep = listed[v]
    rows, v = rows[keep].astype(np.int64), v[keep]
    lay = full_entries(src.dim, dtype)
    uniq, inv = np.unique(rows, return_inverse=True)
    vec = np.ascontiguousarray(metric.stored_rows(src.take(uniq)).astype(dtype, copy=False))
    codes = vec.view(np.uint8).reshape(len(uniq), -1)[inv] if len(uniq) else np.zeros((0, lay.code_bytes), np.uint8)
    packed = pack_entries(lay, v, len(vals), rows if user_ids is None else user_ids[rows], None, None, codes,
                          params.shard_bytes, params.chunk_bytes)
    writer.write_array("label_values", vals)
    writer.write_array("label_counts", cnt)
    writer.write_array("label_listed", listed.astype(np.uint8))
    writer.write_array("label_offsets", packed.offsets)
    writer.write_array("label_list_counts", packed.counts)
    return write_byte_array(writer, LABEL_LISTS, packed.data, packed.total, packed.shard_bytes, params.chunk_bytes)


def _write_all(src, m: Metric, heads: Heads, graph: HeadGraph, asg: AssignmentRuns, plan: PostingPlan,
               enc: Encoder, params: BuildParams, writer: IndexWriter, progress: bool,
               user_ids: np.ndarray | None = None, labels: np.ndarray | None = None, runner=None) -> int:
    writer.write_array("heads", stored_heads(heads, enc))
    writer.write_array("neighbors", graph.neighbors.astype(np.int32))
    writer.write_array("entries", graph.entries.astype(np.int32))
    writer.write_array("offsets", plan.offsets.astype(np.int64))
    writer.write_array("counts", plan.counts.astype(np.int32))
    for name, arr in enc.arrays.items():
        writer.write_array(f"code_{name}", arr)
    prim_loc = None
    if not enc.layout.coded:  # kept across a resumed build: skipped shards filled theirs before
        f = asg.dir / "prim_loc.npy"
        prim_loc = np.lib.format.open_memmap(f, "r+" if f.exists() else "w+", np.int64, (src.n,))
    if runner is not None:  # on the cluster's workers (see spann.distributed)
        n = runner.write_postings(m.name, heads, asg, plan, enc, writer, prim_loc, user_ids, labels, progress)
        if enc.store is not None:
            n += runner.write_store(m.name, enc, params, writer, user_ids, progress)
    else:
        n = write_stage(src, m, heads, asg, plan, enc, writer, progress, user_ids=user_ids, labels=labels,
                        prim_loc=prim_loc)
        if enc.store is not None:
            n += store_stage(src, m, enc, params, writer, progress, user_ids=user_ids)
    n += idmap_stage(enc, prim_loc, user_ids, src.n, params, writer)
    if labels is not None:
        n += label_lists_stage(src, m, labels, user_ids, params, writer, plan.layout.dtype)
    return n


def _fault(point: str) -> None:
    """Testing hook: ``SPANN_BUILD_FAULT=<point>`` kills the build (SIGKILL) at that point (a
    stage name after its checkpoint, or ``shard:<array>:<n>`` after a shard) to test --resume."""
    if os.environ.get("SPANN_BUILD_FAULT") == point:
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


def _digest(a: np.ndarray | None) -> str:
    from spann.zarr_io import crc32c
    if a is None:
        return "-"
    a = np.ascontiguousarray(a)
    crc = 0
    flat = a.reshape(-1).view(np.uint8) if a.size else np.zeros(0, np.uint8)
    for i in range(0, flat.shape[0], 1 << 26):
        crc = crc32c(flat[i:i + (1 << 26)].tobytes()) ^ (crc * 31 % (1 << 32))
    return f"{a.dtype.str}{a.shape}:{crc}"


def build_fingerprint(src, data, metric: Metric, params: BuildParams, user_ids, labels, mode: str = "local") -> str:
    """What a resumed build must share with the interrupted one: the data (a file's path, size
    and modification time; an object's URL, size and ETag; an array's checksum), ids, labels,
    metric, parameters, and where it ran (``mode``: a local and a distributed build leave
    different intermediate files, so one never resumes the other)."""
    import hashlib
    import json
    from spann.storage import FORMAT_VERSION
    if is_url(data):
        rows = src.rows
        try:
            meta = rows.store.obstore.head(rows.store.client, rows.key)
            what = f"{data}:{meta['size']}:{meta.get('e_tag')}:{meta.get('last_modified')}"
        except Exception:  # noqa: BLE001  (a server that answers no HEAD: the URL alone)
            what = str(data)
    elif isinstance(data, (str, os.PathLike)):
        try:  # the file behind the spec (an HDF5 "file.hdf5:dataset" names its file in src.path)
            st = os.stat(src.path)
            what = f"{os.path.abspath(data)}:{st.st_size}:{st.st_mtime_ns}"
        except (OSError, TypeError):
            what = f"{os.path.abspath(data)}"
    else:
        what = _digest(np.asarray(data)) if isinstance(data, np.ndarray) else f"{src.path}:{src.n}"
    doc = json.dumps({"data": what, "n": src.n, "dim": src.dim, "dtype": src.dtype.name, "metric": metric.name,
                      "params": params.to_dict(), "ids": _digest(user_ids), "labels": _digest(labels),
                      "format": FORMAT_VERSION, "mode": mode}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


#: how each checkpointed stage's output is saved (arrays, meta) and restored
_CHECKPOINT = {
    "sample": (lambda o: ({"rows": o.rows, "ids": o.ids}, {"max_norm": o.max_norm}),
               lambda a, m: Sample(rows=a["rows"], ids=a["ids"], max_norm=float(m["max_norm"]))),
    "heads": (lambda o: ({"vectors": o.vectors}, {}), lambda a, m: Heads(vectors=a["vectors"])),
    "graph": (lambda o: ({"neighbors": o.neighbors, "entries": o.entries}, {}),
              lambda a, m: HeadGraph(neighbors=a["neighbors"], entries=a["entries"])),
    "pruner": (lambda o: ({k: v for k, v in (("model", o.model), ("groups", o.groups)) if v is not None},
                          {"covered_walk": o.covered_walk, "covered_groups": o.covered_groups}),
               lambda a, m: HeadSearch(groups=a.get("groups"), model=a.get("model"), covered_walk=float(m["covered_walk"]),
                                       covered_groups=float(m["covered_groups"]))),
    "groups": (lambda o: ({} if o is None else {"labels": o}, {}), lambda a, m: a.get("labels")),
}


BASELINE_RSS = 320 << 20  #: the interpreter, numpy, numba and its compiled kernels (measured ~250-300 MiB)


def fit_to_memory(params: BuildParams, n: int, dim: int, head_dim: int) -> tuple[BuildParams, int]:
    """Parameters and assignment buckets that keep the build under ``params.memory_limit``
    (see :class:`BuildParams`); raises ParameterError when the heads alone would not fit."""
    from spann.errors import ParameterError
    R = int(params.replica_count)
    lim = params.memory_limit
    n_heads = wanted_heads(n, params)
    # the sample: at least MIN_SAMPLE_PER_HEAD rows per head (heads_stage lowers the head count
    # where memory holds fewer)
    want_sample = min(n, max(params.cluster_sample, MIN_SAMPLE_PER_HEAD * n_heads))
    if not lim:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        fit = max(1000, ram // 4 // (head_dim * 4 * 3))  # a quarter of the machine's memory at most
        return params.replace(cluster_sample=int(max(1000, min(want_sample, fit)))), buckets_for(n, R, 2 << 30)
    work = lim - BASELINE_RSS
    heads_need = n_heads * (head_dim * 4 * 4 + (params.graph_degree + params.graph_candidates) * 10)
    if work < 64 << 20 or heads_need > work * 0.75:
        raise ParameterError(f"memory_limit {lim / 2**20:.0f} MiB is too small: the {n_heads:,} heads and their graph "
                             f"need ~{(heads_need / 0.75 + BASELINE_RSS) / 2**20:.0f} MiB (raise the limit or lower "
                             f"head_ratio)")
    sample = int(min(want_sample, max(1000, work // 4 // (head_dim * 4 * 3))))
    block = int(min(params.block_rows, max(256, work // 8 // (dim * 8 + head_dim * 8 + R * 48))))
    per_vector_ids = 0  # users' ids and labels are the caller's arrays (memory-mapped from the CLI)
    nb = buckets_for(n, R, max(16 << 20, (work - heads_need) // 3 - per_vector_ids))
    return params.replace(cluster_sample=max(1000, sample), block_rows=block), nb


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_index(data, index_dir: str | os.PathLike[str], *, metric: str, params: BuildParams | None = None,
                fmt: str | None = None, overwrite: bool = False, progress: bool = True,
                log: Callable[[str], None] | None = None, ids=None, labels=None,
                resume: bool = False, storage_options: dict[str, Any] | None = None, client=None) -> dict[str, Any]:
    """Build an index from ``data`` (array (n, d) or vector file path) into ``index_dir``.

    ``ids``: int64 (n,) distinct ids >= 0 that searches return (default: row numbers);
    ``labels``: int (n,) or (n, L) labels for filtered search (-1 = none; see :mod:`spann.labels`).
    ``resume``: continue an interrupted build of the same data and parameters into the same
    path from its last completed stage (and shard); the result equals an uninterrupted build.

    ``index_dir`` may also be a ``.zip`` file or an object-store URL (``s3://bucket/prefix``,
    with ``storage_options``): the index is built in a local work directory, then exported.
    ``data`` may be a URL too; ``storage_options`` then apply to it as well.
    ``client``: a Dask client; the heavy stages then run on its workers (see
    :mod:`spann.distributed`; ``data`` must be a vector file they can all read).

    Returns the attributes stored in the index (metric, dims, parameters, statistics). The
    index appears at ``index_dir`` only when complete; a failure leaves nothing behind.
    """
    if is_url(index_dir) or str(index_dir).lower().endswith(".zip"):
        return _build_and_export(data, str(index_dir), metric=metric, params=params, fmt=fmt, overwrite=overwrite,
                                 progress=progress, log=log, ids=ids, labels=labels, resume=resume,
                                 storage_options=storage_options, client=client)
    if storage_options and not is_url(data):
        from spann.errors import ParameterError
        raise ParameterError("storage options apply to object-store URLs only (the base's or the index's)")
    m = get_metric(metric)
    params = params or BuildParams()
    index_dir = Path(index_dir)
    check_target(index_dir, overwrite)
    if client is not None and not isinstance(data, (str, os.PathLike)):
        from spann.errors import ParameterError
        raise ParameterError("a distributed build reads the base from a vector file every worker can open: pass its "
                             "path, not an array")
    src = as_vector_source(data, fmt, storage_options if is_url(data) else None)
    try:
        user_ids = check_ids(ids, src.n) if ids is not None else None
        labels = check_labels(labels, src.n) if labels is not None else None
    except BaseException:
        if isinstance(data, (str, os.PathLike)):
            src.close()
        raise
    params = params.resolved(choose_encoding(params.encoding, m.stored_dtype(src.dtype), src.dim))
    say = log if (log and progress) else (lambda _msg: None)
    times: dict[str, float] = {}
    params, n_buckets = fit_to_memory(params, src.n, src.dim, m.head_dim(src.dim))
    fp = build_fingerprint(src, data, m, params, user_ids, labels, "local" if client is None else "dask")
    restored: list[str] = []
    checkpoints = dict(_CHECKPOINT)
    checkpoints["assign"] = (lambda o: ({}, {"n_buckets": o.n_buckets}),
                             lambda a, meta: AssignmentRuns.open(writer.ckpt / "assign", src.n, heads.vectors.shape[0],
                                                                 int(meta["n_buckets"]), int(params.replica_count)))
    writer = IndexWriter(index_dir, overwrite=overwrite, log=say, resume=resume, fingerprint=fp)
    sizes = [directory_bytes(writer.tmp)]
    grown: dict[str, int] = {}
    try:
        with BuildThreads(params.threads) as threads:
            def stage(name, fn, *a, **kw):
                ck = checkpoints.get(name)
                if ck is not None and writer.stage_done(name):
                    arrays, meta = writer.load_stage(name)
                    times[name] = 0.0
                    grown[name] = 0
                    restored.append(name)
                    say(f"{name}: restored from the interrupted build")
                    return ck[1](arrays, meta)
                t0 = time.perf_counter()
                out = fn(*a, **kw)
                times[name] = time.perf_counter() - t0
                if ck is not None:
                    writer.save_stage(name, *ck[0](out))
                size = directory_bytes(writer.tmp)
                grown[name] = size - sizes[-1]
                sizes.append(size)
                say(f"{name}: {times[name]:.1f} s, peak RSS {_peak_rss() / 2**20:.0f} MiB, build directory "
                    f"{size / 2**20:,.0f} MiB ({grown[name] / 2**20:+,.0f})")
                _fault(name)
                return out

            runner = None
            if client is not None:
                from spann.distributed import DaskRunner, describe
                runner = DaskRunner(client, (os.fspath(data), fmt, storage_options if is_url(data) else None),
                                    writer.ckpt / "dask")
                say(f"building on a Dask cluster: {describe(client)}")
                sample = stage("sample", runner.on_source, sample_stage, m, params)
                heads = stage("heads", runner.heads, sample, src.n, params)
                graph = stage("graph", runner.graph, heads, params)
            else:
                sample = stage("sample", sample_stage, src, m, params, progress)
                heads = stage("heads", heads_stage, sample, src.n, params, progress)
                graph = stage("graph", graph_stage, heads, params, progress)
            max_norm = sample.max_norm
            sample_rows = int(sample.rows.shape[0])
            if heads.vectors.shape[0] < wanted_heads(src.n, params):
                say(f"heads: {heads.vectors.shape[0]:,} of the {wanted_heads(src.n, params):,} asked for: the clustering "
                    f"sample holds {sample_rows:,} rows and a head averages at least {MIN_SAMPLE_PER_HEAD} (a larger "
                    f"--memory-limit allows more)")
            graph_recall = graph_check(sample, heads, graph, params)
            groups = stage("groups", groups_stage, heads, params)
            if runner is not None:
                asg = stage("assign", runner.assign, src.n, m.name, max_norm, heads, graph, params,
                            writer.ckpt / "assign", n_buckets, progress)
            else:
                asg = stage("assign", assign_stage, src, m, max_norm, heads, graph, params, threads, progress,
                            writer.ckpt / "assign", n_buckets)
            enc = stage("encoding", encoding_stage, src, m, sample, asg, params,
                        labels.shape[1] if labels is not None else 0)
            chosen = stage("pruner", pruner_stage, m, sample, src.dim, heads, graph, groups, asg, params, enc)
            model, groups = chosen.model, chosen.groups
            del sample
            layout = enc.layout
            plan = stage("plan", plan_stage, asg.counts, layout, params)
            if model is not None:
                writer.write_array("pruner", model)
            if groups is not None:
                writer.write_array("head_groups", groups)
            stage("write", _write_all, src, m, heads, graph, asg, plan, enc, params, writer, progress, user_ids,
                  labels, runner)
        H = heads.vectors.shape[0]
        counts = asg.counts
        stats = {
            "heads": H,
            "heads_wanted": wanted_heads(src.n, params),
            "sample_rows": sample_rows,
            "head_ratio": H / src.n,
            "posting_mean": float(counts.mean()),
            "posting_max": int(counts.max()),
            "posting_empty": int((counts == 0).sum()),
            "replicas_per_vector": float(counts.sum() / src.n),
            "replica_histogram": asg.replica_histogram.tolist(),
            "posting_bytes": int(plan.nbytes.sum()),
            "posting_array_bytes": int(plan.total_bytes),
            "shards": plan.n_shards,
            "graph_degree_mean": float((graph.neighbors >= 0).sum(1).mean()),
            "graph_entries": int(graph.entries.size),
            "head_search_recall": graph_recall,
            "head_groups": int(groups.max()) + 1 if groups is not None else 0,
            "head_search_covered_walk": round(chosen.covered_walk, 4),
            "head_search_covered_groups": round(chosen.covered_groups, 4),
            "seconds": {k: round(v, 3) for k, v in times.items()},
            "directory_growth_bytes": grown,
            "build_seconds": round(sum(times.values()), 3),
            "peak_rss_bytes": _peak_rss(),
            "resumed": {"stages": restored, "shards": writer.shards_reused} if writer.resumed else None,
            "raw_bytes": int(src.n * src.dim * src.dtype.itemsize),
            "index_bytes": directory_bytes(writer.tmp) - directory_bytes(writer.ckpt),  # checkpoints go at commit
        }
        attrs = {"metric": m.name, "dim": src.dim, "n": src.n, "dtype": layout.dtype, "source_dtype": src.dtype.name,
                 "layout": layout.to_dict(), "store": enc.store.to_dict() if enc.store else None,
                 "pruner": model is not None, "head_groups": int(groups.max()) + 1 if groups is not None else 0,
                 "head_group_labels": int(groups.shape[0]) if groups is not None else 0,
                 "idmap_path": IDMAP, "user_ids": user_ids is not None,
                 "label_lists_path": LABEL_LISTS if labels is not None else None,
                 "live": src.n, "next_id": int(user_ids.max()) + 1 if user_ids is not None else src.n,
                 "max_norm": max_norm, "params": params.to_dict(), "stats": stats}
        writer.commit(attrs, overwrite=overwrite)
        return attrs
    except BaseException:
        writer.abort()
        raise
    finally:
        if isinstance(data, (str, os.PathLike)):  # we opened it, we close it
            src.close()


def export_work_dir(target: str) -> Path:
    """Where a build for a zip file or an object-store URL runs before its export: beside the
    zip, or under ``SPANN_WORK_DIR`` (default: the system's temporary directory) for a URL. The
    same target gets the same directory, so ``--resume`` finds an interrupted build."""
    import hashlib
    import tempfile
    if not is_url(target):
        t = Path(target)
        return t.with_name(f".{t.name}.work")
    root = Path(os.environ.get("SPANN_WORK_DIR") or tempfile.gettempdir())
    return root / f"spann-export-{hashlib.sha256(target.encode()).hexdigest()[:16]}"


def _build_and_export(data, target: str, *, storage_options=None, overwrite: bool = False, progress: bool = True,
                      log=None, **kw) -> dict[str, Any]:
    """Build into a local work directory, then export it to the zip file or URL ``target``."""
    import fcntl
    import shutil
    from spann.errors import IndexExistsError
    from spann.publish import check_export_target, export_index
    target_opts = storage_options if is_url(target) else None
    check_export_target(target, overwrite, target_opts)  # fail now, not after the build
    work = export_work_dir(target)
    work.mkdir(parents=True, exist_ok=True)
    fd = os.open(work / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexExistsError(f"{target}: another build of it is running (work directory {work})") from None
        attrs = build_index(data, work / "index", overwrite=True, progress=progress, log=log,
                            storage_options=storage_options if is_url(data) else None, **kw)
        # (a failed or interrupted build leaves its work directory: --resume continues it; a failed
        # export leaves the built index there, and the next build of the target starts over)
        if log and progress:
            log(f"exporting to {target}")
        export_index(work / "index", target, overwrite=overwrite, storage_options=target_opts, progress=progress)
        shutil.rmtree(work, ignore_errors=True)
        return attrs
    finally:
        os.close(fd)
