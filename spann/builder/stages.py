"""The build's stages: sample -> heads (from the sample, or out of core:
:mod:`spann.builder.partition`) -> head graph -> assignment -> encoding -> posting
plan -> write (postings, then the vector store for coded encodings).

Each stage is a function with typed inputs and outputs, so a build that runs elsewhere (out of
core, on a cluster: :mod:`spann.builder.dask`) can reuse them one by one;
:func:`spann.builder.pipeline.build_index` runs them in order.

Memory: the clustering sample (at most ``cluster_sample`` rows, float32), the heads and their
graph, and 16 bytes per (vector, replica) assignment. The base is streamed in blocks through
memory maps, never loaded whole.
"""

from __future__ import annotations

import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
from tqdm.auto import tqdm

from spann.builder.calibration import calibration_rows, other_rows
from spann.builder.spill import AssignmentRuns
from spann.codecs.encodings import choose_codec
from spann.datasets.formats import check_finite
from spann.format.labels import label_directory
from spann.format.layout import EntryLayout, full_entries, pack_lists
from spann.format.list_writer import entry_positions as _positions
from spann.format.list_writer import fill_entries, pack_entries
from spann.heads.assign import assign_block
from spann.heads.clustering import MIN_SAMPLE_PER_HEAD, select_heads
from spann.heads.compact import as_head_dtype, head_dtype
from spann.heads.graph import (EntrySeeds, adjacency, build_graph, entry_seeds, head_search_recall,
                               no_entry_groups, walk_codes)
from spann.heads.groups import COVERAGE_MARGIN, default_group_count, group_labels, head_groups, no_head_groups
from spann.heads.pruner import MIN_HEADS, covered, fit_pruner, training_targets
from spann.io.idmap import idmap_bytes
from spann.io.index_files import IDMAP, LABEL_LISTS, POSTINGS, VECTORS
from spann.io.index_writer import IndexWriter
from spann.io.vector_store import StoreLayout, store_rows_bytes
from spann.kernels.exact import exact_knn
from spann.kernels.metrics import Metric
from spann.params import BuildParams, SearchParams
from spann.search.kernels import select_batch
from spann.search.views import HeadIndex, Plan

__all__ = ["Sample", "Heads", "HeadGraph", "AssignmentRuns", "Encoder", "PostingPlan", "sample_stage", "heads_stage",
           "graph_stage", "assign_stage", "encoding_stage", "plan_stage", "write_stage", "store_stage"]


@dataclass(frozen=True)
class Sample:
    """Head-space rows the heads are clustered from: float32 (s, Dh), their base ids int64 (s,);
    ``max_norm`` is the largest base norm (inner product's transform; 0 otherwise)."""

    rows: np.ndarray
    ids: np.ndarray
    max_norm: float


@dataclass(frozen=True)
class Heads:
    """Head-space centroids, float32 (H, Dh), in depth-first cluster order (for 8-bit data
    under l2 rounded to the data's grid once clustered, see :mod:`spann.heads.compact`)."""

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
    product after one pass over the base for its largest norm), without the calibration
    queries' rows."""
    max_norm = 0.0
    if metric.mips:
        for s, blk in _blocks(src, params.block_rows, "norms", progress):
            check_finite(blk, f"{src.path}", s)
            x = blk.astype(np.float32)
            max_norm = max(max_norm, float(np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64).max())))
    rng = np.random.default_rng(params.seed)
    n = src.n
    held = calibration_rows(n, src.dim, params)  # the calibration queries: not in the sample
    k = min(n - held.size, params.cluster_sample)
    if held.size:
        ids = other_rows(n, held, k, rng)
    else:
        ids = np.arange(n) if k == n else np.sort(rng.choice(n, k, replace=False))
    raw = src.read() if k == n else src.take(ids)
    check_finite(raw, f"{src.path}")
    return Sample(rows=metric.head_space(raw, max_norm), ids=ids.astype(np.int64), max_norm=max_norm)


ENTRY_CHUNK = 1 << 16  #: entries encoded at a time while a posting shard is filled


def wanted_heads(n: int, params: BuildParams) -> int:
    """``n * head_ratio`` (or ``n / posting_size``) heads, at least one."""
    return max(1, round(n / params.posting_size)) if params.posting_size else max(1, round(n * params.head_ratio))


def heads_stage(sample: Sample, n: int, params: BuildParams, progress: bool = False) -> Heads:
    """Centroids of a hierarchical balanced k-means of the sample; about ``n * head_ratio``
    (or ``n / posting_size``) of them, but no more than the sample holds MIN_SAMPLE_PER_HEAD
    rows for when it is a true subsample (a build clusters such heads out of core instead:
    :mod:`spann.builder.partition`)."""
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
    points (see :func:`spann.heads.graph.build_graph`)."""
    with tqdm(total=2 * heads.vectors.shape[0], desc="head graph", disable=not progress, leave=False) as bar:
        nb, en = build_graph(heads.vectors, degree=params.graph_degree, candidates=params.graph_candidates,
                             alpha=params.graph_alpha, seed=params.seed, progress=bar.update)
    return HeadGraph(neighbors=nb, entries=en)


def groups_stage(heads: Heads, params: BuildParams) -> np.ndarray | None:
    """Group of every head (int32 (H,)) for searches to scan (see :mod:`spann.heads.groups`), or
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
    """Nearest head + boundary replicas of every vector (closure and RNG or SOAR rules), streamed in
    blocks and spilled to ``runs_dir`` in ``n_buckets`` head buckets (see :mod:`spann.builder.spill`)."""
    R = params.replica_count
    ef = max(params.assign_candidates, 32)
    if runs_dir is None:
        runs_dir = Path(tempfile.mkdtemp(prefix="spann-assign-"))
    runs = AssignmentRuns(runs_dir, src.n, heads.vectors.shape[0], n_buckets, R)
    seeder = entry_seeds(heads.vectors, graph.entries)
    with tqdm(total=src.n, desc="assign replicas", unit="vec", unit_scale=True, disable=not progress,
              leave=False) as bar:
        for s, blk in src.iter_blocks(params.block_rows):
            check_finite(blk, f"{src.path}", s)
            x = metric.head_space(blk, max_norm)
            seeds = seeder.for_rows(x)
            rep_i, rep_d, cnt = assign_block(x, heads.vectors, graph.neighbors, seeds, ef,
                                             params.assign_candidates, R, np.float32(params.closure_eps),
                                             np.float32(params.rng_factor), np.float32(params.soar_lambda),
                                             threads * 8)
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
    :data:`~spann.heads.groups.COVERAGE_MARGIN`, at the default max_postings and its half (lists
    read being what a disk-bound query pays for); then fit
    the learned pruner (see :mod:`spann.heads.pruner`) on the heads the kept search finds. No model if
    there are too few heads."""
    H = heads.vectors.shape[0]
    s = sample.rows.shape[0]
    if H < 2 * MIN_HEADS or s < 20 * n_queries // 10:  # too few to measure: groups only if asked for
        return HeadSearch(groups=groups if params.head_groups > 0 else None, model=None)
    rng = np.random.default_rng(params.seed + 7)
    qi = np.sort(rng.choice(s, min(n_queries, s // 10), replace=False))
    universe = np.ascontiguousarray(sample.rows[:, :dim])
    gi, _ = exact_knn(universe, universe[qi], 11, metric.stored_metric,
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
    hv = stored_heads(heads, enc, metric) if enc is not None else heads.vectors
    # searched as queries are searched (inner product: the extra head coordinate is a query's 0,
    # not a base row's sqrt(M^2 - |x|^2), or every feature of the pruner is shifted)
    qrows = np.ascontiguousarray(metric.query_space(np.ascontiguousarray(sample.rows[qi, :dim]))[1]) \
        if metric.mips else np.ascontiguousarray(sample.rows[qi])
    if enc is not None:  # rabitq: rotated as the index's heads and queries are
        qrows = to_head_space(qrows, enc)
    seeds = EntrySeeds(hv, graph.entries).for_rows(qrows)
    dh = hv.shape[1]
    budget = min(SearchParams().max_postings, H)
    m = min(2 * budget, H)
    no_model = np.zeros(0, np.float64)

    adj = adjacency(graph.neighbors)  # as an open index holds it: one compiled selection for both

    def select(hg, ef, width):  # heads found as searches find them
        # one kernel for both kinds of selection (empty groups walk the graph)
        hx = HeadIndex(heads=hv, walk=walk_codes(hv), neighbors=adj, groups=hg, entries=graph.entries,
                       seeding=no_entry_groups(dh))
        plan = Plan(metric=0, ef=ef, m=width, budget=width, model=no_model, prune_eps=np.float32(1e18), rerank=0,
                    bound_k=0)
        return select_batch(qrows, hx, seeds, plan, 16)[:2]

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
    """Byte offsets of every list (page-aware packing, see :mod:`spann.format.layout`)."""
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


def encoding_stage(src, metric: Metric, sample: Sample, asg: AssignmentRuns, params: BuildParams,
                   label_width: int = 0) -> Encoder:
    """Choose and train the posting encoding; for coded encodings, the vector-store row order
    (vectors sorted by nearest head, so a query's candidates share pages)."""
    dtype = metric.stored_dtype(src.dtype).name
    codec = choose_codec(params.encoding, np.dtype(dtype), src.dim)
    layout = EntryLayout(dim=src.dim, dtype=dtype, encoding=codec.name, label_width=label_width,
                         id_bytes=codec.id_bytes(src.n))
    if not codec.coded:
        return Encoder(layout, {}, None, None, None)
    arrays = codec.train(np.ascontiguousarray(sample.rows[:, :src.dim]), params.seed)
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
    codec = lay.codec
    if codec.residual:  # codes of each entry's residual to its list's centre
        codes, aux = codec.encode(enc.arrays, rows[inv], heads.vectors[e_heads, :lay.dim])
    else:  # each vector encoded once
        cu, au = codec.encode(enc.arrays, rows)
        codes, aux = cu[inv], au[inv]
    return (enc.row_of[ids] if codec.coded else ids), aux, codes


def shard_postings(s: int, hs: np.ndarray, src, metric: Metric, heads: Heads, asg: AssignmentRuns, plan: PostingPlan,
                   enc: Encoder, user_ids: np.ndarray | None = None, labels: np.ndarray | None = None,
                   with_primary: bool = False, progress=None
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The used bytes (uint8) of posting shard ``s`` holding lists ``hs`` (non-empty, int64),
    its entries encoded in chunks of :data:`ENTRY_CHUNK`. With ``with_primary``: also (ids,
    byte offsets) int64 of each vector's entry in its nearest head's list (the id map's
    locations, full encoding)."""
    lay = plan.layout
    dt = np.dtype(lay.dtype)
    S = plan.shard_bytes
    used = int((plan.offsets[hs] + plan.nbytes[hs]).max() - s * S)
    buf = np.zeros(-(-used // 8) * 8, np.uint8)
    # entry e = position t of list h: id at off + id_bytes t, aux at aux_off + 4 A t, code at
    # codes_off + B t (see spann.format.layout)
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
    for a in range(0, len(id_all), ENTRY_CHUNK):
        sl = slice(a, a + ENTRY_CHUNK)
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
                writer: IndexWriter, progress: bool = False,
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
                                                prim_loc is not None, bar.update)
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


def stored_heads(heads: Heads, enc: Encoder, metric: Metric) -> np.ndarray:
    """Head vectors as the index keeps them: rabitq indexes keep them rotated (first D columns
    times the rotation, the inner-product column after), so a query is rotated once; 8-bit
    data under l2 in its own dtype (:mod:`spann.heads.compact`; the build rounded them)."""
    dt = head_dtype(metric, enc.layout.dtype, enc.layout.codec.rotated_heads)
    return as_head_dtype(to_head_space(heads.vectors, enc), dt)


def to_head_space(rows: np.ndarray, enc: Encoder) -> np.ndarray:
    """Head-space rows (float32 (n, Dh)) as the index keeps heads and queries: rabitq rotates the
    first D columns (the inner-product column stays); other encodings return ``rows`` itself."""
    return enc.layout.codec.to_head_space(rows, enc.layout.dim, enc.arrays.get("rotation"))


def idmap_stage(enc: Encoder, prim_loc: np.ndarray | None, user_ids: np.ndarray | None, n: int,
                params: BuildParams, writer: IndexWriter) -> int:
    """Write the id map (see :mod:`spann.io.idmap`): each id's store row (coded) or the byte
    offset of its vector in its nearest head's list (full, ``prim_loc``). Row-number ids are
    written in streamed shards; users' ids are sorted in RAM (8 bytes per vector)."""
    loc = enc.row_of if enc.layout.coded else prim_loc
    shard = params.shard_bytes
    total = -(-16 * n // shard) * shard
    if user_ids is not None:
        return writer.write_bytes(IDMAP, idmap_bytes(user_ids, np.asarray(loc)), total, shard, params.chunk_bytes)
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
    return writer.write_bytes(LABEL_LISTS, packed.data, packed.total, packed.shard_bytes, params.chunk_bytes)


def _write_all(src, m: Metric, heads: Heads, graph: HeadGraph, asg: AssignmentRuns, plan: PostingPlan,
               enc: Encoder, params: BuildParams, writer: IndexWriter, progress: bool,
               user: tuple[np.ndarray | None, np.ndarray | None] = (None, None), runner=None) -> int:
    """Every array of the index: heads, graph, directory, codebook, postings (locally or on the
    ``runner``'s workers), vector store, id map, label lists. ``user``: the user's (ids, labels)."""
    user_ids, labels = user
    writer.write_array("heads", stored_heads(heads, enc, m))
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
    if runner is not None:  # on the cluster's workers (see spann.builder.dask)
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
        os.kill(os.getpid(), signal.SIGKILL)
