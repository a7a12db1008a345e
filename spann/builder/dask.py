"""The build on a Dask cluster (optional extra ``spann-ann[dask]``).

The same stages as the local build (:mod:`spann.builder.pipeline`), placed on a cluster:

- **sample, heads, head graph**: one task each, on one worker (they need the sample in RAM);
  where the heads are clustered out of core (:mod:`spann.builder.partition`), the routing is
  one task per row range and the clustering one task per bucket;
- **assignment**: the base cut into row ranges, one task per range. The heads and the graph
  are broadcast to every worker once; each task reads its rows from the base itself, assigns
  them and spills its records into its own files of the build directory, grouped by head
  bucket (:meth:`spann.builder.spill.AssignmentRuns.finish_part`; written under temporary names and
  renamed, so a task that runs again after its worker died replaces its part whole);
- **encoding, pruner, posting plan**: on the client (small);
- **write**: the posting shards (and the vector-store shards of coded encodings) cut into
  groups, one task per group; each task reads the bucket runs of its shards and the base rows
  they hold and writes whole shard files (:func:`spann.io.index_writer.put_shard`);
- **id map, label lists, metadata**: on the client, which then commits the index.

So the base must be a vector file every worker can read at the same path, and the index's
directory must be one they can all write (a shared file system; on one machine, any
directory). Every computation is per row or per shard and seeded as in the local build: the
same seed gives the same index as :func:`spann.build` without a client.
"""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from spann.builder.inputs import as_vector_source
from spann.builder.partition import (Buckets, bucket_heads, bucket_rows, bucket_targets, fresh_dir, route_part,
                                     route_parts, top_level)
from spann.builder.spill import AssignmentRuns
from spann.builder.stages import Heads, Sample, graph_stage, heads_stage, shard_lists, shard_postings, store_shard
from spann.datasets.formats import check_finite
from spann.errors import ParameterError
from spann.heads.assign import assign_block
from spann.heads.graph import entry_seeds
from spann.io.index_files import CHECKPOINTS, POSTINGS, VECTORS
from spann.io.index_writer import put_shard
from spann.io.sources import is_url
from spann.kernels.metrics import get_metric
from spann.kernels.threads import BuildThreads

__all__ = ["DaskRunner", "local_cluster"]


def _dask():
    try:
        import distributed  # optional extra: spann-ann[dask]
    except ImportError:
        raise ParameterError("a distributed build needs dask: pip install 'spann-ann[dask]'") from None
    return distributed


def local_cluster(workers: int, threads_per_worker: int = 1):
    """A Dask LocalCluster of ``workers`` processes and its client (close both when done)."""
    distributed = _dask()
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                                       dashboard_address=None)
    try:
        client = distributed.Client(cluster)
        client.wait_for_workers(workers)
    except BaseException:
        cluster.close()
        raise
    return client, cluster


def connect(scheduler: str):
    """A client of the Dask scheduler at ``scheduler`` (``tcp://host:port``)."""
    distributed = _dask()
    try:
        return distributed.Client(scheduler, timeout="30s")
    except (OSError, ValueError, TypeError) as e:
        raise ParameterError(f"cannot reach the Dask scheduler {scheduler!r} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _task_fault(point: str) -> None:
    """Testing hook: with ``SPANN_TASK_FAULT=<point>`` and ``SPANN_TASK_FAULT_ONCE=<file>``,
    the first task to reach ``point`` kills its worker process (SIGKILL), once."""
    if os.environ.get("SPANN_TASK_FAULT") != point:
        return
    mark = os.environ.get("SPANN_TASK_FAULT_ONCE")
    if not mark:
        return
    try:
        fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def arm_task_fault(point: str | None, once: str | None = None) -> None:
    """Testing hook: set :func:`_task_fault`'s ``SPANN_TASK_FAULT`` / ``SPANN_TASK_FAULT_ONCE``
    in this process, or clear them (``point`` None; without ``once`` the hook never fires); run
    it on running workers with ``client.run`` (a worker restarted by its nanny starts without
    them)."""
    for name, value in (("SPANN_TASK_FAULT", point), ("SPANN_TASK_FAULT_ONCE", once if point is not None else None)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)


def _open_source(spec: tuple):
    """The base as a task opens it: spec (path or URL, format[, storage options])."""
    return as_vector_source(spec[0], spec[1], spec[2] if len(spec) > 2 else None)


def _on_source(fn, spec, threads: int, *args):
    """``fn(src, *args)`` on a worker, with the base opened there (numba on ``threads``)."""
    src = _open_source(spec)
    try:
        with BuildThreads(threads):
            return fn(src, *args)
    finally:
        src.close()


def _heads_task(shared, max_norm, n, params, threads):
    a = _load_shared(shared)
    with BuildThreads(threads):
        return heads_stage(Sample(rows=np.ascontiguousarray(a["rows"]), ids=np.asarray(a["ids"]), max_norm=max_norm),
                           n, params)


def _route_task(spec, part, metric_name, max_norm, shared, directory):
    """Route rows part[1]..part[2] of the base to their top-level buckets (see
    :func:`spann.builder.partition.route_part`)."""
    arr = _load_shared(shared)
    src = _open_source(spec)
    try:
        with BuildThreads(1):
            return route_part(src, get_metric(metric_name), max_norm, np.ascontiguousarray(arr["centers"]),
                              np.asarray(arr["held"]), part, Path(directory))
    finally:
        src.close()


def _bucket_task(directory, b, target, metric_name, max_norm, dtype, dim, cap, params):
    """The heads of bucket ``b`` (see :func:`spann.builder.partition.bucket_heads`)."""
    with BuildThreads(1):
        return bucket_heads(bucket_rows(Path(directory), b, np.dtype(dtype), dim), get_metric(metric_name), max_norm,
                            target, cap, params, b)


def _graph_task(shared, params, threads):
    with BuildThreads(threads):
        return graph_stage(Heads(vectors=np.ascontiguousarray(_load_shared(shared)["heads"])), params)


def _save_shared(directory: Path, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Arrays the tasks need, saved once in the build directory (.npy, no pickle); a task maps
    them from there, so nothing a task needs lives only in a worker's memory (a task that runs
    again after its worker died finds them)."""
    out = {}
    for name, a in arrays.items():
        f = Path(directory) / f"shared.{name}.npy"
        tmp = f.with_name(f"shared.{name}.tmp.npy")
        np.save(tmp, np.ascontiguousarray(a), allow_pickle=False)
        os.replace(tmp, f)
        out[name] = str(f)
    return out


def _load_shared(paths: dict[str, str]) -> dict[str, np.ndarray]:
    """The shared arrays, mapped copy-on-write: writable to numba, so the kernels run the
    specializations a local build compiled and cached (numba compiles read-only arrays
    separately: every worker compiled the assignment and graph kernels again, ~60 s on 2 cores);
    nothing writes them, so their pages stay shared with the file."""
    return {k: np.load(v, mmap_mode="c", allow_pickle=False) for k, v in paths.items()}


def _assign_task(spec, part, metric_name, max_norm, shared, params, runs_dir, n_buckets, threads):
    """Assign rows part[1]..part[2] of the base; their records become this task's part."""
    m = get_metric(metric_name)
    t, a, b = part
    arr = _load_shared(shared)
    heads_vectors, neighbors, entries = (np.ascontiguousarray(arr[k]) for k in ("heads", "neighbors", "entries"))
    src = _open_source(spec)
    try:
        runs = AssignmentRuns(Path(runs_dir), src.n, heads_vectors.shape[0], n_buckets, params.replica_count,
                              part=part)
        seeds_of = entry_seeds(heads_vectors, entries)
        ef = max(params.assign_candidates, 32)
        with BuildThreads(threads):
            for s in range(a, b, params.block_rows):
                blk = src.read(s, min(b, s + params.block_rows))
                check_finite(blk, f"{src.path}", s)
                x = m.head_space(blk, max_norm)
                rep_i, rep_d, cnt = assign_block(x, heads_vectors, neighbors, seeds_of.for_rows(x), ef,
                                                 params.assign_candidates, params.replica_count,
                                                 np.float32(params.closure_eps), np.float32(params.rng_factor),
                                                 np.float32(params.soar_lambda), threads * 8)
                if cnt.min() < 1:
                    raise RuntimeError("a vector found no head during assignment")
                runs.add_block(s, rep_i, rep_d, cnt)
                _task_fault(f"assign:{t}")
        return runs.finish_part()
    finally:
        src.close()


def _write_task(spec, shards, build_dir, metric_name, shared, plan, enc, asg_args, ids_path, labels_path, threads):
    """Write posting shards ``shards`` [(s, lists int64)] into the build directory; for the
    full encoding, also this task's (ids, locations) of the id map."""
    m = get_metric(metric_name)
    arr = _load_shared(shared)
    heads = Heads(vectors=np.ascontiguousarray(arr["heads"]))
    plan = replace(plan, offsets=arr["offsets"], counts=arr["counts"], nbytes=arr["nbytes"])
    src = _open_source(spec)
    try:
        asg = AssignmentRuns.open(*asg_args)
        enc = _reopen_encoder(enc, asg.dir)
        user_ids = np.load(ids_path, mmap_mode="r") if ids_path else None
        labels = np.load(labels_path, mmap_mode="r") if labels_path else None
        with BuildThreads(threads):
            for s, hs in shards:
                ck = Path(build_dir) / CHECKPOINTS / f"shard.{POSTINGS}.{s}.json"
                want_prim = not plan.layout.coded
                part = Path(build_dir) / CHECKPOINTS / f"prim.{s}.npy"
                if ck.exists() and (not want_prim or part.exists()):
                    continue  # written before (a task run again, or a resumed build)
                data, p_ids, p_loc = shard_postings(s, hs, src, m, heads, asg, plan, enc, user_ids, labels, want_prim)
                if want_prim:
                    tmp = part.with_name(f"prim.{s}.tmp.npy")
                    np.save(tmp, np.stack([p_ids, p_loc]), allow_pickle=False)
                    os.replace(tmp, part)
                put_shard(Path(build_dir), POSTINGS, s, data, plan.shard_bytes, plan.chunk_bytes)
                _task_fault(f"write:{s}")
        return [s for s, _ in shards]
    finally:
        src.close()


def _store_task(spec, shards, build_dir, metric_name, enc, asg_dir, rows_per_shard, geometry, ids_path, threads):
    """Write vector-store shards ``shards`` (coded encodings) into the build directory."""
    m = get_metric(metric_name)
    src = _open_source(spec)
    try:
        enc = _reopen_encoder(enc, Path(asg_dir))
        user_ids = np.load(ids_path, mmap_mode="r") if ids_path else None
        with BuildThreads(threads):
            for s in shards:
                if (Path(build_dir) / CHECKPOINTS / f"shard.{VECTORS}.{s}.json").exists():
                    continue
                put_shard(Path(build_dir), VECTORS, s, store_shard(s, src, m, enc, rows_per_shard, user_ids),
                          *geometry)
        return list(shards)
    finally:
        src.close()


def _reopen_encoder(enc, asg_dir: Path):
    """The encoder a task received (row maps left behind) with its row maps memory-mapped."""
    if enc.store is None:
        return enc
    return replace(enc, row_of=np.load(asg_dir / "row_of.npy", mmap_mode="c"),  # writable to numba: see _load_shared
                   order=np.load(asg_dir / "order.npy", mmap_mode="c"))


class DaskRunner:
    """Runs a build's heavy stages on the workers of ``client``; ``spec`` (path, format) is
    the base as every worker opens it."""

    def __init__(self, client, spec: tuple, work_dir: Path, threads: int = 1):
        _dask()
        self.client = client
        self.work = Path(work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.spec = (spec[0] if is_url(spec[0]) else os.path.abspath(spec[0]), *spec[1:])
        self.threads = max(1, int(threads))
        self.workers = max(1, len(client.scheduler_info().get("workers", {})) or 1)

    def _gather(self, futures, total: int, desc: str, unit: str, progress: bool, sizes=None) -> list:
        from distributed import as_completed  # optional extra: spann-ann[dask]
        results = {}
        index = {f.key: i for i, f in enumerate(futures)}
        with tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not progress, leave=False) as bar:
            for f in as_completed(futures):
                i = index[f.key]
                results[i] = f.result()  # a task that failed for good raises here
                bar.update(sizes[i] if sizes is not None else 1)
        return [results[i] for i in range(len(futures))]

    def on_source(self, fn, *args):
        """``fn(src, *args)`` on one worker (the sample)."""
        return self.client.submit(_on_source, fn, self.spec, 0, *args, pure=False).result()

    def heads(self, sample, n: int, params):
        """:func:`spann.builder.stages.heads_stage` on one worker (numba on all its cores)."""
        shared = _save_shared(self.work, {"rows": sample.rows, "ids": sample.ids})
        return self.client.submit(_heads_task, shared, sample.max_norm, n, params, 0, pure=False).result()

    def route(self, metric_name: str, sample, n: int, cap: int, held: np.ndarray, params, directory: Path,
              progress: bool = False):
        """:func:`spann.builder.partition.route_stage` with the rows routed by the workers, one
        part per task (the top level is clustered here, as a local build clusters it)."""
        directory = fresh_dir(directory)
        centers = top_level(sample.rows, n, cap, params)
        shared = _save_shared(directory, {"centers": centers, "held": held})
        parts = route_parts(n, max(params.block_rows, -(-n // (4 * self.workers))))
        futures = [self.client.submit(_route_task, self.spec, p, metric_name, sample.max_norm, shared, str(directory),
                                      pure=False) for p in parts]
        counts = self._gather(futures, n, "route to buckets", "vec", progress, [b - a for _, a, b in parts])
        return Buckets(centers=centers, counts=np.sum(counts, axis=0).astype(np.int64), dir=directory)

    def bucket_heads(self, buckets, metric, max_norm: float, dtype, dim: int, wanted: int, cap: int, params,
                     threads: int = 1, progress=None) -> np.ndarray:
        """:func:`spann.builder.partition.bucket_heads_stage` with one task per bucket."""
        targets = bucket_targets(wanted, buckets.counts)
        futures = [self.client.submit(_bucket_task, str(buckets.dir), b, int(targets[b]), metric.name, max_norm,
                                      np.dtype(dtype).name, dim, cap, params, pure=False)
                   for b in range(buckets.centers.shape[0])]
        out = self._gather(futures, len(futures), "cluster buckets", "bucket", False)
        if progress is not None:
            progress(sum(h.shape[0] for h in out))
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def graph(self, heads, params):
        """:func:`spann.builder.stages.graph_stage` on one worker."""
        shared = _save_shared(self.work, {"heads": heads.vectors})
        return self.client.submit(_graph_task, shared, params, 0, pure=False).result()

    def assign(self, n: int, metric_name: str, max_norm: float, heads, graph, params, runs_dir: Path, n_buckets: int,
               progress: bool = False):
        runs_dir = Path(runs_dir)
        runs_dir.mkdir(parents=True, exist_ok=True)
        for f in runs_dir.glob("*.part-*"):  # parts of an interrupted attempt
            f.unlink()
        rows = int(min(1 << 20, max(params.block_rows, -(-n // (4 * self.workers)))))
        parts = [(t, a, min(n, a + rows)) for t, a in enumerate(range(0, n, rows))]
        shared = _save_shared(runs_dir, {"heads": heads.vectors, "neighbors": graph.neighbors,
                                         "entries": graph.entries})
        futures = [self.client.submit(_assign_task, self.spec, p, metric_name, max_norm, shared, params,
                                      str(runs_dir), n_buckets, self.threads, pure=False) for p in parts]
        results = self._gather(futures, n, "assign replicas", "vec", progress, [b - a for _, a, b in parts])
        return AssignmentRuns.from_parts(runs_dir, n, heads.vectors.shape[0], n_buckets, params.replica_count, parts,
                                         results)

    def write_postings(self, metric_name: str, heads, asg, plan, enc, writer, prim_loc, user_ids, labels,
                       progress: bool = False) -> int:
        writer.begin_array(POSTINGS, plan.total_bytes, plan.shard_bytes, plan.chunk_bytes)
        ids_path, labels_path = self._side_arrays(writer, user_ids, labels)
        work = [(s, hs) for s, hs in enumerate(shard_lists(plan)) if hs.size]
        groups = _groups(work, [int(asg.counts[hs].sum()) for _, hs in work], 4 * self.workers)
        shared = _save_shared(asg.dir, {"heads": heads.vectors, "offsets": plan.offsets, "counts": plan.counts,
                                        "nbytes": plan.nbytes})
        small_plan = replace(plan, offsets=None, counts=None, nbytes=None)  # the tasks map the arrays
        enc_t = replace(enc, row_of=None, order=None)
        asg_args = (str(asg.dir), asg.n, asg.H, asg.n_buckets, int(asg.replica_histogram.shape[0] - 1))
        futures = [self.client.submit(_write_task, self.spec, g, str(writer.tmp), metric_name, shared, small_plan,
                                      enc_t, asg_args, ids_path, labels_path, self.threads, pure=False)
                   for g in groups]
        self._gather(futures, asg.total, "write postings", "entry", progress,
                     [int(sum(asg.counts[hs].sum() for _, hs in g)) for g in groups])
        written = 0
        for s, _ in work:
            written += writer.adopt_shard(POSTINGS, s)
            if prim_loc is not None:
                f = writer.tmp / CHECKPOINTS / f"prim.{s}.npy"
                p_ids, p_loc = np.load(f, allow_pickle=False)
                prim_loc[p_ids] = p_loc
        return written

    def write_store(self, metric_name: str, enc, params, writer, user_ids, progress: bool = False) -> int:
        lay = enc.store
        S = lay.shard_bytes(params.shard_bytes, params.chunk_bytes)
        writer.begin_array(VECTORS, -(-lay.total_bytes // S) * S, S, params.chunk_bytes)
        rows_per_shard = S // lay.page_bytes * lay.rows_per_page
        n_sh = -(-lay.n // rows_per_shard)
        ids_path, _ = self._side_arrays(writer, user_ids, None)
        groups = [list(g) for g in np.array_split(np.arange(n_sh), min(n_sh, 4 * self.workers)) if len(g)]
        enc_t = replace(enc, row_of=None, order=None)
        asg_dir = str(Path(enc.row_of.filename).parent)
        futures = [self.client.submit(_store_task, self.spec, [int(s) for s in g], str(writer.tmp), metric_name,
                                      enc_t, asg_dir, rows_per_shard, writer.shard_geometry(VECTORS), ids_path,
                                      self.threads, pure=False) for g in groups]
        self._gather(futures, n_sh, "write vectors", "shard", progress, [len(g) for g in groups])
        return sum(writer.adopt_shard(VECTORS, s) for s in range(n_sh))

    @staticmethod
    def _side_arrays(writer, user_ids, labels) -> tuple[str | None, str | None]:
        """Users' ids and labels saved once in the build directory, for the tasks to map."""
        out = []
        for name, a in (("user_ids", user_ids), ("labels", labels)):
            if a is None:
                out.append(None)
                continue
            f = writer.tmp / CHECKPOINTS / f"{name}.npy"
            if not f.exists():
                tmp = f.with_name(f"{name}.tmp.npy")
                np.save(tmp, np.asarray(a), allow_pickle=False)
                os.replace(tmp, f)
            out.append(str(f))
        return out[0], out[1]


def _groups(items: list, weights: list[int], n: int) -> list[list]:
    """``items`` in order, cut into about ``n`` consecutive groups of similar total weight."""
    if not items:
        return []
    total = max(1, sum(weights))
    target = total / max(1, n)
    out, cur, acc = [], [], 0
    for it, w in zip(items, weights):
        cur.append(it)
        acc += w
        if acc >= target:
            out.append(cur)
            cur, acc = [], 0
    if cur:
        out.append(cur)
    return out


def describe(client) -> dict[str, Any]:
    """Workers and threads of a client's cluster (for the build's log)."""
    info = client.scheduler_info().get("workers", {})
    return {"workers": len(info), "threads": int(sum(w.get("nthreads", 1) for w in info.values()))}
