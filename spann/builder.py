"""Index build orchestration: heads -> head graph -> replica assignment -> postings on disk.

Memory: the clustering sample (at most ``cluster_sample`` rows as float32), the heads and their
graph, and 16 bytes per (vector, replica) assignment. The base itself is streamed in blocks
through memory maps twice (assignment, then posting writes), never loaded whole.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numba
import numpy as np
from tqdm.auto import tqdm

from spann.assign import assign_block, nearest_with_room, rescue
from spann.clustering import select_heads
from spann.datasets.formats import check_finite
from spann.head_index import build_graph
from spann.metrics import check_metric
from spann.params import BuildParams
from spann.storage import FORMAT_VERSION, IndexWriter, check_target, directory_bytes
from spann.vectors import as_vector_source, head_space, stored_rows

__all__ = ["build_index"]



class _Threads:
    """Set numba's thread count for a block and restore it after."""

    def __init__(self, n: int):
        self.n = n or numba.config.NUMBA_NUM_THREADS
        self.n = max(1, min(self.n, numba.config.NUMBA_NUM_THREADS))

    def __enter__(self) -> int:
        self.old = numba.get_num_threads()
        numba.set_num_threads(self.n)
        return self.n

    def __exit__(self, *exc) -> None:
        numba.set_num_threads(self.old)


def _max_norm(src, block_rows: int, progress: bool) -> float:
    m = 0.0
    for s, blk in tqdm(src.iter_blocks(block_rows), total=-(-src.n // block_rows), desc="norms",
                       disable=not progress, leave=False):
        check_finite(blk, f"{src.path}", s)
        x = blk.astype(np.float32)
        m = max(m, float(np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64).max())))
    return m


def _auto_cap(lengths: np.ndarray, slack: float) -> int:
    """Mean list length * (1 + slack). Slots are fixed-size on disk, so the cap bounds padding to
    ``slack``; a longer list keeps its primaries, then its nearest replicas, and a vector cut
    from every list it had is re-placed in the nearest list with room (see ``rescue``)."""
    return max(1, int(math.ceil(lengths.mean() * (1.0 + slack))))


def build_index(data, index_dir: str | os.PathLike[str], *, metric: str, params: BuildParams | None = None,
                fmt: str | None = None, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Build an index from ``data`` (array (n, d) or vector file path) into ``index_dir``.

    Returns the build summary (also stored in the index attributes). The index appears at
    ``index_dir`` only when complete.
    """
    metric = check_metric(metric)
    params = params or BuildParams()
    index_dir = Path(index_dir)
    check_target(index_dir, overwrite)
    src = as_vector_source(data, fmt)
    n, dim = src.n, src.dim
    store_dtype = np.dtype("float32") if metric == "cosine" else src.dtype
    times: dict[str, float] = {}
    rng = np.random.default_rng(params.seed)
    writer = IndexWriter(index_dir, overwrite=overwrite)
    try:
        with _Threads(params.threads) as threads:
            # 1. heads by hierarchical balanced k-means over a sample
            t0 = time.perf_counter()
            max_norm = _max_norm(src, params.block_rows, progress) if metric == "ip" else 0.0
            n_sample = min(n, params.cluster_sample)
            sample_ids = np.arange(n) if n_sample == n else np.sort(rng.choice(n, n_sample, replace=False))
            raw = src.read() if n_sample == n else src.take(sample_ids)
            check_finite(raw, f"{src.path}")
            hx, hext = head_space(raw, metric, max_norm)
            del raw
            if params.posting_size:
                n_heads = max(1, round(n / params.posting_size))
            else:
                n_heads = max(1, round(n * params.head_ratio))
            n_heads = min(n_heads, n_sample)
            clust_x = np.hstack([hx, hext[:, None]]) if metric == "ip" else hx
            with tqdm(total=n_heads, desc="heads (balanced k-means)", disable=not progress, leave=False) as bar:
                pos = select_heads(clust_x, n_heads, branching=params.branching, slack=params.balance_slack,
                                   iters=params.kmeans_iters, seed=params.seed, progress=bar.update)
            del clust_x
            head_ids = sample_ids[pos]
            heads_hs = np.ascontiguousarray(hx[pos])
            heads_ext = np.ascontiguousarray(hext[pos])
            del hx, hext
            heads_store = stored_rows(src.take(head_ids), metric).astype(store_dtype, copy=False)
            times["heads"] = time.perf_counter() - t0

            # 2. head graph
            t0 = time.perf_counter()
            gx = np.hstack([heads_hs, heads_ext[:, None]]) if metric == "ip" else heads_hs
            with tqdm(total=len(head_ids), desc="head graph", disable=not progress, leave=False) as bar:
                neighbors, entries = build_graph(gx, degree=params.graph_degree, candidates=params.graph_candidates,
                                                 alpha=params.graph_alpha, seed=params.seed, progress=bar.update)
            del gx
            times["graph"] = time.perf_counter() - t0

            # 3. replicas, streamed in blocks
            t0 = time.perf_counter()
            R = params.replica_count
            ef = max(params.assign_candidates, 32)
            parts_h, parts_id, parts_d, parts_r = [], [], [], []
            sorted_heads = np.sort(head_ids)
            n_rep_hist = np.zeros(R + 1, np.int64)
            with tqdm(total=n, desc="assign replicas", unit="vec", unit_scale=True, disable=not progress,
                      leave=False) as bar:
                for s, blk in src.iter_blocks(params.block_rows):
                    check_finite(blk, f"{src.path}", s)
                    x, xe = head_space(blk, metric, max_norm)
                    ids = np.arange(s, s + blk.shape[0], dtype=np.int64)
                    pos_h = np.searchsorted(sorted_heads, ids)
                    skip = (pos_h < sorted_heads.size) & (sorted_heads[np.minimum(pos_h, sorted_heads.size - 1)] == ids)
                    rep_i, rep_d, cnt = assign_block(x, xe, skip, heads_hs, heads_ext, neighbors, entries, ef,
                                                     params.assign_candidates, R, np.float32(params.closure_eps),
                                                     np.float32(params.rng_factor), threads * 8)
                    n_rep_hist += np.bincount(cnt[~skip], minlength=R + 1)
                    valid = rep_i >= 0
                    parts_h.append(rep_i[valid])
                    parts_id.append(np.broadcast_to(ids[:, None], rep_i.shape)[valid])
                    parts_d.append(rep_d[valid])
                    parts_r.append(np.broadcast_to(np.arange(R, dtype=np.int8), rep_i.shape)[valid])
                    bar.update(blk.shape[0])
            e_head = np.concatenate(parts_h)
            e_id = np.concatenate(parts_id)
            e_dist = np.concatenate(parts_d)
            e_rank = np.concatenate(parts_r)
            del parts_h, parts_id, parts_d, parts_r
            times["assign"] = time.perf_counter() - t0

            # 4. group by list: primaries first, then by distance to the head; cap
            t0 = time.perf_counter()
            H = len(head_ids)
            order = np.lexsort((e_dist, e_rank > 0, e_head))
            e_head, e_id, e_dist, e_rank = e_head[order], e_id[order], e_dist[order], e_rank[order]
            del order
            lengths = np.bincount(e_head, minlength=H)
            cap = params.posting_cap or _auto_cap(lengths, params.cap_slack)
            starts = np.concatenate([[0], np.cumsum(lengths)])
            within = np.arange(e_head.size) - starts[e_head]
            keep = within < cap
            dropped = int((~keep).sum())
            dropped_primary = int((~keep & (e_rank == 0)).sum())
            e_head, e_id, e_dist = e_head[keep], e_id[keep], e_dist[keep]
            del e_rank, within, keep
            kept_per_vec = np.bincount(e_id, minlength=n)
            kept_per_vec[head_ids] = 1
            lost_ids = np.flatnonzero(kept_per_vec == 0)
            del kept_per_vec
            rescued = rescued_far = 0
            if lost_ids.size:  # re-place them in the nearest list with room
                room = (cap - np.minimum(lengths, cap)).astype(np.int64)
                x, xe = head_space(src.take(lost_ids), metric, max_norm)
                wide = max(4 * ef, 256)
                r_head, r_dist = rescue(x, xe, heads_hs, heads_ext, neighbors, entries, wide, wide, room)
                left = np.flatnonzero(r_head < 0)
                if left.size:  # nothing near had room: exact search over every list that has
                    cols = np.flatnonzero(room > 0).astype(np.int32)
                    if cols.size:
                        from spann.clustering import sq_dists
                        hx_c = np.ascontiguousarray(np.hstack([heads_hs, heads_ext[:, None]])[cols])
                        xx = np.hstack([x[left], xe[left, None]])
                        rows = max(16, (1 << 24) // cols.size)  # <= 64 MB of distances at a time
                        for s in range(0, left.size, rows):
                            blk = left[s:s + rows]
                            got, got_d = nearest_with_room(sq_dists(xx[s:s + rows], hx_c), cols, room)
                            rescued_far += int((got >= 0).sum())
                            r_head[blk], r_dist[blk] = got, got_d
                ok = r_head >= 0
                rescued = int(ok.sum())
                e_head = np.concatenate([e_head, r_head[ok]])
                e_id = np.concatenate([e_id, lost_ids[ok]])
                e_dist = np.concatenate([e_dist, r_dist[ok]])
                order = np.lexsort((e_dist, e_head))
                e_head, e_id, e_dist = e_head[order], e_id[order], e_dist[order]
                del order
            lost = int(lost_ids.size - rescued)
            if lost:
                import warnings
                warnings.warn(f"{lost} vectors ({lost / n:.2%}) are in no posting list (posting cap {cap} left no "
                              f"room near them) and cannot be returned; raise cap_slack or posting_cap",
                              RuntimeWarning, stacklevel=2)
            counts = np.bincount(e_head, minlength=H).astype(np.int32)
            starts = np.concatenate([[0], np.cumsum(counts)])
            times["group"] = time.perf_counter() - t0

            # 5. write: heads, graph, postings shard by shard
            t0 = time.perf_counter()
            id_dtype = np.dtype("int32") if n < 2**31 else np.dtype("int64")
            writer.write_heads(heads_store, head_ids, heads_ext)
            writer.write_graph(neighbors, entries)
            writer.create_postings(H, cap, dim, store_dtype, id_dtype, params.shard_lists)
            S = writer.shard_lists
            with tqdm(total=H, desc="write postings", unit="list", unit_scale=True, disable=not progress,
                      leave=False) as bar:
                for lo in range(0, H, S):
                    hi = min(H, lo + S)
                    a, b = starts[lo], starts[hi]
                    ids_here = e_id[a:b]
                    uniq, inv = np.unique(ids_here, return_inverse=True)
                    rows = stored_rows(src.take(uniq), metric).astype(store_dtype, copy=False)
                    vec = np.zeros((hi - lo, cap, dim), store_dtype)
                    idb = np.full((hi - lo, cap), -1, id_dtype)
                    lst = e_head[a:b] - lo
                    slot = np.arange(b - a) - (starts[e_head[a:b]] - a)
                    vec[lst, slot] = rows[inv]
                    idb[lst, slot] = ids_here
                    writer.write_shard(lo, vec, idb)
                    bar.update(hi - lo)
            writer.write_counts(counts)
            times["write"] = time.perf_counter() - t0

        entries_total = int(counts.sum())
        non_heads = n - H
        stats = {
            "heads": H,
            "head_ratio": H / n,
            "posting_cap": int(cap),
            "posting_mean": float(counts.mean()),
            "posting_max": int(counts.max()) if H else 0,
            "posting_empty": int((counts == 0).sum()),
            "replicas_per_vector": entries_total / max(1, non_heads),
            "replica_histogram": n_rep_hist.tolist(),
            "capped_entries": dropped,
            "capped_primaries": dropped_primary,
            "rescued_vectors": rescued,
            "rescued_beyond_graph": rescued_far,
            "lost_vectors": lost,
            "graph_degree_mean": float((neighbors >= 0).sum(1).mean()),
            "graph_entries": int(entries.size),
            "seconds": {k: round(v, 3) for k, v in times.items()},
            "build_seconds": round(sum(times.values()), 3),
        }
        attrs = {
            "format_version": FORMAT_VERSION,
            "metric": metric,
            "dim": dim,
            "n": n,
            "dtype": store_dtype.name,
            "source_dtype": src.dtype.name,
            "id_dtype": id_dtype.name,
            "max_norm": max_norm,
            "params": params.to_dict(),
            "stats": stats,
        }
        stats["raw_bytes"] = n * dim * src.dtype.itemsize
        stats["index_bytes"] = directory_bytes(writer.tmp)  # + the attributes, a few KB
        writer.commit(attrs, overwrite=overwrite)
        return attrs
    except BaseException:
        writer.abort()
        raise
    finally:
        if isinstance(data, (str, os.PathLike)):  # we opened it, we close it
            src.close()
