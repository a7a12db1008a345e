"""Evaluation: recall variants, latency/QPS measurement, sweeps, Pareto fronts, output files.

Conventions follow ann-benchmarks / big-ann-benchmarks:
- recall@k by ids; tie-aware recall (any id whose true distance is <= the k-th true distance
  counts, big-ann style); distance recall (a result counts if its distance is within
  ``+1e-3`` of the k-th true distance, ann-benchmarks' rule, on spann's reported distances);
- single-query latencies (mean, p50/p95/p99) after a warm-up query; batch QPS as the best of
  ``runs`` runs; results with duplicate ids are rejected.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numba
import numpy as np
from tqdm.auto import tqdm

from spann.errors import DataError, ParameterError
from spann.params import SearchParams, _parse_value
from spann.search.operating_points import check_recall

__all__ = ["check_point", "recall_at_k", "tie_aware_recall", "distance_recall", "check_no_duplicates", "EvalRecord",
           "evaluate", "pareto_front", "operating_point", "write_jsonl", "write_csv", "read_jsonl",
           "plot_recall_qps", "parse_sweep", "rss_bytes"]


def check_no_duplicates(ids: np.ndarray) -> None:
    """Raise :class:`DataError` if a row of ``ids`` (nq, k) repeats an id (padding -1 ignored)."""
    s = np.sort(ids, axis=1)
    dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
    if dup.any():
        r = int(np.flatnonzero(dup.any(1))[0])
        raise DataError(f"result row {r} contains duplicate ids: an index must de-duplicate")


def _shapes(ids: np.ndarray, gt: np.ndarray, k: int) -> None:
    if ids.ndim != 2 or gt.ndim != 2 or ids.shape[0] != gt.shape[0]:
        raise DataError(f"results {ids.shape} and ground truth {gt.shape} must be (nq, .) with equal nq")
    if k <= 0 or k > ids.shape[1] or k > gt.shape[1]:
        raise ParameterError(f"k = {k} must be in 1..min(results {ids.shape[1]}, ground truth {gt.shape[1]})")


def recall_at_k(ids: np.ndarray, gt_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |top-k results ∩ true top-k| / k. -1 padding never matches."""
    ids, gt_ids = np.asarray(ids), np.asarray(gt_ids)
    _shapes(ids, gt_ids, k)
    check_no_duplicates(ids[:, :k])
    a = ids[:, :k]
    hit = (a[:, :, None] == gt_ids[:, None, :k]) & (a[:, :, None] >= 0)
    return float(hit.any(2).sum(1).mean() / k)


def tie_aware_recall(ids: np.ndarray, gt_ids: np.ndarray, gt_dists: np.ndarray, k: int,
                     rtol: float = 1e-6) -> float:
    """Recall where every id at distance <= the k-th true distance is a true neighbour (ties at
    the boundary all count). Needs ground truth deeper than k to see the ties; capped at 1."""
    ids, gt_ids, gt_dists = np.asarray(ids), np.asarray(gt_ids), np.asarray(gt_dists)
    _shapes(ids, gt_ids, k)
    check_no_duplicates(ids[:, :k])
    thr = gt_dists[:, k - 1:k]
    ok = gt_dists <= thr + rtol * np.abs(thr) + 1e-12
    a = ids[:, :k]
    hit = ((a[:, :, None] == gt_ids[:, None, :]) & ok[:, None, :] & (a[:, :, None] >= 0)).any(2)
    return float(np.minimum(hit.sum(1), k).mean() / k)


def distance_recall(dists: np.ndarray, gt_dists: np.ndarray, k: int, epsilon: float = 1e-3) -> float:
    """ann-benchmarks' rule: a returned distance counts if <= the k-th true distance + epsilon."""
    dists, gt_dists = np.asarray(dists), np.asarray(gt_dists)
    _shapes(dists, gt_dists, k)
    thr = gt_dists[:, k - 1:k] + epsilon
    return float((dists[:, :k] <= thr).sum(1).mean() / k)


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class EvalRecord:
    """One operating point of one system."""

    system: str
    params: dict[str, Any]
    k: int
    recall: float
    tie_recall: float | None = None
    distance_recall: float | None = None
    latency_mean_ms: float = float("nan")
    latency_p50_ms: float = float("nan")
    latency_p95_ms: float = float("nan")
    latency_p99_ms: float = float("nan")
    qps: float = float("nan")
    threads: int = 1
    lists_read: float | None = None
    kib_read: float | None = None
    distance_evals: float | None = None
    #: shares of the true top-k the selected lists hold and the re-rank pool keeps (``recall`` is
    #: what the result returns), device requests (page runs) and rows re-ranked per query; see
    #: :mod:`spann.search.breakdown`
    recall_lists: float | None = None
    recall_pool: float | None = None
    runs_read: float | None = None
    rows_read: float | None = None
    index_bytes: int | None = None
    ram_bytes: int | None = None
    cold: bool = False
    open_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update({f"param_{k}": v for k, v in self.params.items()})
        return d


def parse_sweep(spec: Sequence[str]) -> list[dict[str, Any]]:
    """``["max_postings=8,16", "prune_eps=0.5,inf"]`` -> the cartesian product as dicts."""
    axes: list[tuple[str, list[Any]]] = []
    for s in spec:
        if "=" not in s:
            raise ParameterError(f"sweep entries look like name=v1,v2,...; got {s!r}")
        name, vals = s.split("=", 1)
        parsed = []
        for v in vals.split(","):
            value = _parse_value(v)
            if isinstance(value, str):
                raise ParameterError(f"sweep value {v.strip()!r} of {name} is not a number or true/false")
            parsed.append(value)
        axes.append((name.strip(), parsed))
    if not axes:
        return [{}]
    return [dict(zip([a for a, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]


def check_point(point: dict[str, Any]) -> None:
    """A sweep point is :class:`~spann.SearchParams` fields, or those with a ``recall`` target
    instead of ``max_postings``; ParameterError otherwise."""
    known = {*SearchParams.__dataclass_fields__, "recall"}
    unknown = sorted(set(point) - known)
    if unknown:
        raise ParameterError(f"unknown SearchParams parameter {unknown[0]!r}; known: {', '.join(sorted(known))}")
    if "recall" in point:
        check_recall(point["recall"])
        if "max_postings" in point:
            raise ParameterError("a sweep point gives recall or max_postings, not both")
    SearchParams.from_dict({n: v for n, v in point.items() if n != "recall"})


def _latencies(index, queries: np.ndarray, k: int, params: dict[str, Any], cold: bool) -> np.ndarray:
    out = np.empty(queries.shape[0])
    for i in range(queries.shape[0]):
        if cold:
            index.evict()
        t = time.perf_counter()
        index.search(queries[i], k, **params)
        out[i] = time.perf_counter() - t
    return out


def _resolved(index, point: dict[str, Any]) -> dict[str, Any]:
    """The sweep point, with the max_postings a recall target picked from the operating points."""
    out = dict(point)
    if out.get("recall") is not None and index.operating_points is not None:
        out["max_postings"] = index.operating_points.max_postings_for(out["recall"])
    return out


def evaluate(index, queries: np.ndarray, gt_ids: np.ndarray, k: int = 10, *, sweep: Iterable[dict[str, Any]] = ({},),
             gt_dists: np.ndarray | None = None, runs: int = 3, warmup: int = 1, threads: int | None = None,
             latency_queries: int | None = 2000, cold: bool = False, breakdown: bool = True,
             progress: bool = False) -> list[EvalRecord]:
    """Measure ``index`` (a :class:`spann.Index`) at every sweep point.

    For each point: batch QPS on ``threads`` (best of ``runs`` after ``warmup`` runs), recall
    variants from the batch results, single-query latencies on the first ``latency_queries``
    queries (one thread, each query timed alone), I/O per query, and with ``breakdown`` where the
    recall is lost (:meth:`spann.Index.recall_breakdown`, one more untimed batch; local indexes).
    ``cold=True`` evicts the index's posting files from the page cache before every timed single query and before each
    batch run (latencies then include reading from the device). Latency queries are spread
    evenly over the query set (query files are often sorted, e.g. GloVe by word frequency).
    """
    queries = np.asarray(queries)
    gt_ids = np.asarray(gt_ids)
    if gt_ids.shape[0] != queries.shape[0]:
        raise DataError(f"ground truth has {gt_ids.shape[0]} rows, queries {queries.shape[0]}")
    threads = threads or numba.config.NUMBA_NUM_THREADS
    index.prepare()
    info = index.info()
    records = []
    for point in tqdm(list(sweep), desc="sweep", disable=not progress, leave=False):
        for _ in range(warmup):
            index.search(queries[: min(len(queries), 256)], k, threads=threads, **point)
        best, res = float("inf"), None
        for _ in range(max(1, runs)):
            if cold:
                index.evict()
            t = time.perf_counter()
            res = index.search(queries, k, threads=threads, **point)
            best = min(best, time.perf_counter() - t)
        nl = queries.shape[0] if latency_queries is None else min(latency_queries, queries.shape[0])
        sample = np.linspace(0, queries.shape[0] - 1, num=nl).astype(np.int64)  # spread, not the first nl
        index.search(queries[0], k, **point)  # warm the single-query path
        lat = _latencies(index, queries[sample], k, point, cold) * 1e3
        bd = None
        if breakdown and not index.fetching:
            bd = index.recall_breakdown(queries, gt_ids, k, threads=threads, **point)
        rec = EvalRecord(
            system="spann", params=_resolved(index, point), k=k, recall=recall_at_k(res.ids, gt_ids, k),
            tie_recall=tie_aware_recall(res.ids, gt_ids, gt_dists, k) if gt_dists is not None else None,
            distance_recall=distance_recall(res.distances, gt_dists, k) if gt_dists is not None else None,
            latency_mean_ms=float(lat.mean()), latency_p50_ms=float(np.percentile(lat, 50)),
            latency_p95_ms=float(np.percentile(lat, 95)), latency_p99_ms=float(np.percentile(lat, 99)),
            qps=queries.shape[0] / best, threads=threads, lists_read=float(res.lists_read.mean()),
            kib_read=float(res.bytes_read.mean() / 1024), distance_evals=float(res.distance_evals.mean()),
            recall_lists=bd.shares()["lists"] if bd else None, recall_pool=bd.shares()["pool"] if bd else None,
            runs_read=float(bd.runs.mean()) if bd else None, rows_read=float(bd.rows.mean()) if bd else None,
            index_bytes=int(info["disk_bytes"]), ram_bytes=int(info["ram_bytes"]), cold=cold)
        records.append(rec)
    return records


def pareto_front(records: Sequence[EvalRecord], speed: str = "qps") -> list[EvalRecord]:
    """Records not dominated in (recall up, ``speed`` up); ``speed`` = "qps" or a latency field
    (then lower is better). Sorted by recall."""
    sign = 1.0 if speed == "qps" else -1.0
    pts = sorted(records, key=lambda r: (-r.recall, -sign * getattr(r, speed)))
    front, best = [], -float("inf")
    for r in pts:
        v = sign * getattr(r, speed)
        if v > best:
            front.append(r)
            best = v
    return sorted(front, key=lambda r: r.recall)


def operating_point(records: Sequence[EvalRecord], target: float, *, by: str = "latency_mean_ms") -> EvalRecord | None:
    """The fastest record (lowest ``by``, or highest if ``by`` is "qps") with recall >= target."""
    ok = [r for r in records if r.recall >= target]
    if not ok:
        return None
    return max(ok, key=lambda r: r.qps) if by == "qps" else min(ok, key=lambda r: getattr(r, by))


def write_jsonl(records: Iterable[EvalRecord], path: str | os.PathLike[str]) -> None:
    with open(path, "w") as fh:
        for r in records:
            fh.write(json.dumps(r.to_dict()) + "\n")


def read_jsonl(path: str | os.PathLike[str]) -> list[EvalRecord]:
    out = []
    names = set(EvalRecord.__dataclass_fields__)
    with open(path) as fh:
        for line in fh:
            d = json.loads(line)
            out.append(EvalRecord(**{k: v for k, v in d.items() if k in names}))
    return out


def write_csv(records: Sequence[EvalRecord], path: str | os.PathLike[str]) -> None:
    rows = [r.to_dict() for r in records]
    for r in rows:
        r.pop("params", None)
        r.pop("extra", None)
    cols = sorted({c for r in rows for c in r}, key=lambda c: (not c.startswith("system"), c))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def plot_recall_qps(records: Sequence[EvalRecord], path: str | os.PathLike[str], title: str = "") -> Path:
    """Recall (x) vs QPS (y, log) per system, ann-benchmarks style, Pareto fronts as lines."""
    try:
        import matplotlib  # optional extra: spann-ann[plot]
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional extra: spann-ann[plot]
    except ImportError:
        raise ParameterError("plots need matplotlib: pip install 'spann-ann[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 5))
    for system in dict.fromkeys(r.system for r in records):
        rs = [r for r in records if r.system == system]
        front = pareto_front(rs)
        ax.plot([r.recall for r in front], [r.qps for r in front], "-o", label=system, markersize=4)
    ax.set_xlabel(f"recall@{records[0].k if records else 10}")
    ax.set_ylabel("queries per second (batch)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
