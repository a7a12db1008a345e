"""The build: its stages (:mod:`spann.builder.stages`) run in order, locally or on a Dask cluster,
with a checkpoint after each so that an interrupted build resumes; memory fitted to a limit;
the result committed atomically (and exported to a zip or an object store when asked)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from spann.builder.calibration import Truth, calibration_rows, operating_points_stage, truth_stage
from spann.builder.dask import DaskRunner, describe
from spann.builder.inputs import as_vector_source
from spann.builder.partition import Buckets, bucket_heads_stage, cluster_cap, partitioned, route_stage
from spann.builder.spill import AssignmentRuns, buckets_for
from spann.builder.stages import (MIN_SAMPLE_PER_HEAD, HeadGraph, Heads, HeadSearch, Sample, _fault, _write_all,
                                  assign_stage, encoding_stage, graph_check, graph_stage, groups_stage,
                                  heads_stage, plan_stage, pruner_stage, sample_stage, wanted_heads)
from spann.codecs import choose_codec, get_codec
from spann.errors import IndexExistsError, ParameterError
from spann.format.labels import check_labels
from spann.format.zarr_v3 import crc32c
from spann.heads.compact import head_dtype, to_grid
from spann.io.idmap import check_ids
from spann.io.index_files import FORMAT_VERSION, IDMAP, LABEL_LISTS, directory_bytes
from spann.io.index_writer import IndexWriter, check_target
from spann.io.publish import check_export_target, export_index
from spann.io.sources import is_url
from spann.kernels.metrics import Metric, get_metric
from spann.kernels.threads import BuildThreads
from spann.params import BuildParams
from spann.search.operating_points import DEFAULT_RECALL

__all__ = ["build_index", "build_fingerprint", "fit_to_memory"]

logger = logging.getLogger(__name__)


def _digest(a: np.ndarray | None) -> str:
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
               lambda a, m: HeadSearch(groups=a.get("groups"), model=a.get("model"),
                                       covered_walk=float(m["covered_walk"]),
                                       covered_groups=float(m["covered_groups"]))),
    "groups": (lambda o: ({} if o is None else {"labels": o}, {}), lambda a, m: a.get("labels")),
    "truth": (lambda o: ({"rows": o.rows, "neighbors": o.neighbors}, {}),
              lambda a, m: Truth(rows=a["rows"], neighbors=a["neighbors"])),
}


BASELINE_RSS = 320 << 20  #: the interpreter, numpy, numba and its compiled kernels (measured ~250-300 MiB)


def fit_to_memory(params: BuildParams, n: int, dim: int, head_dim: int) -> tuple[BuildParams, int, int]:
    """Parameters, assignment buckets and the rows one clustering bucket may hold (see
    :func:`~spann.builder.partition.cluster_cap`) that keep the build under
    ``params.memory_limit`` (see :class:`BuildParams`); raises ParameterError when the heads
    alone would not fit. The head count never depends on the limit: where the sample holds
    fewer than MIN_SAMPLE_PER_HEAD rows per head, the heads are clustered out of core."""
    R = int(params.replica_count)
    lim = params.memory_limit
    n_heads = wanted_heads(n, params)
    want_sample = min(n, params.cluster_sample)
    if not lim:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        fit = max(1000, ram // 4 // (head_dim * 4 * 3))  # a quarter of the machine's memory at most
        return (params.replace(cluster_sample=int(max(1000, min(want_sample, fit)))), buckets_for(n, R, 2 << 30),
                cluster_cap(0, 0, head_dim))
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
    return (params.replace(cluster_sample=max(1000, sample), block_rows=block), nb,
            cluster_cap(lim, work - heads_need - sample * head_dim * 4, head_dim))


def _heads_of_buckets(fn, buckets: Buckets, m: Metric, max_norm: float, dtype: np.dtype, dim: int, wanted: int,
                      cap: int, params: BuildParams, threads: int, progress: bool) -> Heads:
    """The heads stage of an out-of-core build: ``fn`` (local or on a cluster) clusters the
    buckets."""
    with tqdm(total=wanted, desc=f"heads ({buckets.centers.shape[0]} buckets)", disable=not progress,
              leave=False) as bar:
        return Heads(vectors=fn(buckets, m, max_norm, dtype, dim, wanted, cap, params, threads, bar.update))


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_index(data, index_dir: str | os.PathLike[str], *, metric: str, params: BuildParams | None = None,
                fmt: str | None = None, overwrite: bool = False, progress: bool = False, ids=None, labels=None,
                resume: bool = False, storage_options: dict[str, Any] | None = None, client=None) -> dict[str, Any]:
    """Build an index from ``data`` (array (n, d) or vector file path) into ``index_dir``.

    ``ids``: int64 (n,) distinct ids >= 0 that searches return (default: row numbers);
    ``labels``: int (n,) or (n, L) labels for filtered search (-1 = none; see :mod:`spann.format.labels`).
    ``resume``: continue an interrupted build of the same data and parameters into the same
    path from its last completed stage (and shard); the result equals an uninterrupted build.

    ``index_dir`` may also be a ``.zip`` file or an object-store URL (``s3://bucket/prefix``,
    with ``storage_options``): the index is built in a local work directory, then exported.
    ``data`` may be a URL too; ``storage_options`` then apply to it as well.
    ``client``: a Dask client; the heavy stages then run on its workers (see
    :mod:`spann.builder.dask`; ``data`` must be a vector file they can all read).

    ``progress``: show progress bars (tqdm) on stderr. Each completed stage is logged (INFO) to
    the ``spann.builder.pipeline`` logger, with its time and the peak RSS so far.

    Returns the attributes stored in the index (metric, dims, parameters, statistics). The
    index appears at ``index_dir`` only when complete; a failure leaves nothing behind.
    """
    if is_url(index_dir) or str(index_dir).lower().endswith(".zip"):
        return _build_and_export(data, str(index_dir), metric=metric, params=params, fmt=fmt, overwrite=overwrite,
                                 progress=progress, ids=ids, labels=labels, resume=resume,
                                 storage_options=storage_options, client=client)
    if storage_options and not is_url(data):
        raise ParameterError("storage options apply to object-store URLs only (the base's or the index's)")
    m = get_metric(metric)
    params = params or BuildParams()
    index_dir = Path(index_dir)
    check_target(index_dir, overwrite)
    if client is not None and not isinstance(data, (str, os.PathLike)):
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
    params = params.resolved(choose_codec(params.encoding, m.stored_dtype(src.dtype), src.dim))
    times: dict[str, float] = {}
    params, n_buckets, cap = fit_to_memory(params, src.n, src.dim, m.head_dim(src.dim))
    logger.debug("building %s x %s %s (%s) into %s; parameters %s; %d assignment bucket(s)", src.n, src.dim,
              src.dtype.name, m.name, index_dir, params.to_dict(), n_buckets)
    fp = build_fingerprint(src, data, m, params, user_ids, labels, "local" if client is None else "dask")
    restored: list[str] = []
    checkpoints = dict(_CHECKPOINT)
    checkpoints["partition"] = (lambda o: ({"centers": o.centers, "counts": o.counts}, {}),
                                lambda a, meta: Buckets(centers=a["centers"], counts=a["counts"],
                                                        dir=writer.ckpt / "partition"))
    checkpoints["assign"] = (lambda o: ({}, {"n_buckets": o.n_buckets}),
                             lambda a, meta: AssignmentRuns.open(writer.ckpt / "assign", src.n, heads.vectors.shape[0],
                                                                 int(meta["n_buckets"]), int(params.replica_count)))
    writer = IndexWriter(index_dir, overwrite=overwrite, resume=resume, fingerprint=fp)
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
                    logger.info("%s: restored from the interrupted build", name)
                    return ck[1](arrays, meta)
                t0 = time.perf_counter()
                out = fn(*a, **kw)
                times[name] = time.perf_counter() - t0
                if ck is not None:
                    writer.save_stage(name, *ck[0](out))
                size = directory_bytes(writer.tmp)
                grown[name] = size - sizes[-1]
                sizes.append(size)
                logger.info("%s: %.1f s, peak RSS %.0f MiB, build directory %s MiB (%s)", name, times[name],
                         _peak_rss() / 2**20, f"{size / 2**20:,.0f}", f"{grown[name] / 2**20:+,.0f}")
                _fault(name)
                return out

            runner = None
            if client is not None:
                runner = DaskRunner(client, (os.fspath(data), fmt, storage_options if is_url(data) else None),
                                    writer.ckpt / "dask")
                logger.info("building on a Dask cluster: %s", describe(client))
                sample = stage("sample", runner.on_source, sample_stage, m, params)
            else:
                sample = stage("sample", sample_stage, src, m, params, progress)
            held = calibration_rows(src.n, src.dim, params)
            wanted = wanted_heads(src.n, params)
            part_dir = writer.ckpt / "partition"
            out_of_core = partitioned(src.n - held.size, sample.rows.shape[0], wanted)
            if out_of_core:  # the heads from every row, bucket by bucket (see spann.builder.partition)
                if runner is not None:
                    buckets = stage("partition", runner.route, m.name, sample, src.n, cap, held, params, part_dir,
                                    progress)
                else:
                    buckets = stage("partition", route_stage, src, m, sample, cap, held, params, part_dir, progress)
                cluster = runner.bucket_heads if runner is not None else bucket_heads_stage
                heads = stage("heads", _heads_of_buckets, cluster, buckets, m, sample.max_norm, src.dtype, src.dim,
                              wanted, cap, params, threads, progress)
                shutil.rmtree(part_dir, ignore_errors=True)  # the spilled rows: done with
            elif runner is not None:
                heads = stage("heads", runner.heads, sample, src.n, params)
            else:
                heads = stage("heads", heads_stage, sample, src.n, params, progress)
            # 8-bit data under l2: heads on the data's grid, kept in its dtype (spann.heads.compact)
            heads = Heads(vectors=to_grid(heads.vectors, head_dtype(m, m.stored_dtype(src.dtype),
                                                                    get_codec(params.encoding).rotated_heads)))
            if runner is not None:
                graph = stage("graph", runner.graph, heads, params)
            else:
                graph = stage("graph", graph_stage, heads, params, progress)
            max_norm = sample.max_norm
            sample_rows = int(sample.rows.shape[0])
            if heads.vectors.shape[0] < 0.99 * wanted:
                logger.warning("heads: %s of the %s asked for: a head averages at least %d clustered rows, and %s "
                               "(a larger memory limit allows more)", f"{heads.vectors.shape[0]:,}", f"{wanted:,}",
                               MIN_SAMPLE_PER_HEAD, "the largest buckets were clustered on a subsample" if out_of_core
                               else f"the clustering sample holds {sample_rows:,} rows")
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
            truth = stage("truth", truth_stage, src, m, params, progress)
            stage("write", _write_all, src, m, heads, graph, asg, plan, enc, params, writer, progress,
                  (user_ids, labels), runner)
        H = heads.vectors.shape[0]
        counts = asg.counts
        stats = {
            "heads": H,
            "heads_wanted": wanted,
            "sample_rows": sample_rows,
            "head_buckets": int(buckets.centers.shape[0]) if out_of_core else 0,
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
        if truth.rows.size:  # measured on the finished index, before it is published
            t0 = time.perf_counter()
            points = operating_points_stage(writer.preview(attrs), src, truth, user_ids, params.threads, progress)
            times["operating_points"] = time.perf_counter() - t0
            stats["operating_points"] = points.to_dict()
            stats["seconds"]["operating_points"] = round(times["operating_points"], 3)
            stats["build_seconds"] = round(sum(times.values()), 3)
            stats["peak_rss_bytes"] = _peak_rss()
            if not points.reaches(DEFAULT_RECALL):
                logger.warning("operating points: recall@10 reaches %.3f at most (at %d lists), below the default "
                               "search's %.2f: searches read that point's lists", max(points.recall),
                               points.max_postings[points.best_point()], DEFAULT_RECALL)
            logger.info("operating points: %.1f s; recall@10 %s at max_postings %s", times["operating_points"],
                        "/".join(f"{r:.3f}" for r in points.recall[:: max(1, len(points.recall) // 6)]),
                        "/".join(map(str, points.max_postings[:: max(1, len(points.recall) // 6)])))
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
    if not is_url(target):
        t = Path(target)
        return t.with_name(f".{t.name}.work")
    root = Path(os.environ.get("SPANN_WORK_DIR") or tempfile.gettempdir())
    return root / f"spann-export-{hashlib.sha256(target.encode()).hexdigest()[:16]}"


def _build_and_export(data, target: str, *, storage_options=None, overwrite: bool = False, progress: bool = False,
                      **kw) -> dict[str, Any]:
    """Build into a local work directory, then export it to the zip file or URL ``target``."""
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
        attrs = build_index(data, work / "index", overwrite=True, progress=progress,
                            storage_options=storage_options if is_url(data) else None, **kw)
        # (a failed or interrupted build leaves its work directory: --resume continues it; a failed
        # export leaves the built index there, and the next build of the target starts over)
        logger.info("exporting to %s", target)
        export_index(work / "index", target, overwrite=overwrite, storage_options=target_opts, progress=progress)
        shutil.rmtree(work, ignore_errors=True)
        return attrs
    finally:
        os.close(fd)
