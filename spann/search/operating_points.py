"""Operating points: the recall an index reaches at each list budget, measured on its own data.

A build ends by measuring its index the way a user would (faiss' OperatingPoints are the model):
a sample of the base's rows is searched as queries, each against its exact nearest neighbours
in the whole base (the row itself left out of both), at a ladder of ``max_postings`` values.
The curve is stored with the index; ``index.search(q, k, recall=0.95)`` then reads the fewest
lists whose measured recall@10 reaches the target (interpolated between measured points), and
the index's default search is the point for :data:`DEFAULT_RECALL`. So the number of lists a
query reads follows the data (its dimension, its clusters, the encoding's error) rather than a
constant fitted to a few sets.

For coded entries (sq8, rabitq) the same queries also choose the re-rank depth: the smallest of
:data:`RERANK_LADDER` (times k) whose candidate pool keeps all but :data:`POOL_LOSS` of the true
neighbours the selected lists hold (see :mod:`spann.search.breakdown`).

The measurement is recall@10 of queries drawn from the base; queries from another distribution
(a different model, text against images) can need more lists: measure them with
:meth:`spann.Index.calibrate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from spann.errors import ParameterError
from spann.params import CALIBRATION_K, learned_rerank

__all__ = ["OperatingPoints", "DEFAULT_RECALL", "measure_operating_points", "calibration_queries",
           "budget_ladder", "recall_excluding"]

#: the recall@10 an index's default search is set to reach on its calibration queries
DEFAULT_RECALL = 0.95
#: the neighbours measured per query
K = CALIBRATION_K
#: multiply-adds the calibration queries' exact neighbours may cost (see calibration_queries)
TRUTH_BUDGET = 1000 * 2 * 10**7 * 128
#: re-rank depths tried for coded entries, as multiples of k
RERANK_LADDER = (1.2, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
#: the share of the true top-k that the pool may lose against the selected lists
POOL_LOSS = 0.002
#: calibration queries the re-rank depth is chosen with
RERANK_QUERIES = 300
#: the ladder stops once recall reaches this (no target above it is served more cheaply), or when
#: its last PLATEAU steps gained less than 0.002 while the lists read grew by half
TOP_RECALL = 0.995
PLATEAU = 3


@dataclass(frozen=True)
class OperatingPoints:
    """Measured recall@``k`` per list budget: ``max_postings`` (ascending ints), ``recall``,
    ``lists`` (mean lists read) and ``kib`` (mean KiB of lists read) per point, over
    ``queries`` calibration queries; ``rerank_factor``: the learned re-rank depth as a multiple
    of k (0: the encoding's default)."""

    k: int
    queries: int
    max_postings: tuple[int, ...]
    recall: tuple[float, ...]
    lists: tuple[float, ...]
    kib: tuple[float, ...]
    rerank_factor: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.max_postings)
        if not (n and len(self.recall) == n and len(self.lists) == n and len(self.kib) == n):
            raise ParameterError("operating points need one recall, lists and kib value per max_postings")
        if any(b <= a for a, b in zip(self.max_postings, self.max_postings[1:])) or self.max_postings[0] < 1:
            raise ParameterError("operating points' max_postings must ascend from 1")
        if not all(0.0 <= r <= 1.0 for r in self.recall):
            raise ParameterError("operating points' recall values must lie in [0, 1]")
        if not (self.rerank_factor == 0 or 1.0 <= self.rerank_factor <= 64):
            raise ParameterError(f"rerank_factor must be 0 or in [1, 64], got {self.rerank_factor!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "queries": self.queries, "max_postings": list(self.max_postings),
                "recall": [round(r, 5) for r in self.recall], "lists": [round(x, 2) for x in self.lists],
                "kib": [round(x, 1) for x in self.kib], "rerank_factor": self.rerank_factor}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OperatingPoints":
        try:
            return cls(k=int(d["k"]), queries=int(d["queries"]),
                       max_postings=tuple(int(x) for x in d["max_postings"]),
                       recall=tuple(float(x) for x in d["recall"]), lists=tuple(float(x) for x in d["lists"]),
                       kib=tuple(float(x) for x in d["kib"]), rerank_factor=float(d.get("rerank_factor", 0.0)))
        except (KeyError, TypeError, ValueError) as e:
            raise ParameterError(f"operating points are malformed: {e}") from None

    def max_postings_for(self, recall: float) -> int:
        """The fewest lists whose measured recall reaches ``recall`` (in (0, 1]): between two
        measured points, interpolated linearly in log(max_postings) and rounded up; past the
        curve, the first point within 0.002 of its best (:meth:`best_point`).
        A measured curve can dip by noise: it counts as reaching a target from the first point
        after which it stays above."""
        check_recall(recall)
        r = np.minimum.accumulate(np.asarray(self.recall)[::-1])[::-1]  # the curve from below
        ok = np.flatnonzero(r >= recall)
        if ok.size == 0:  # beyond the curve: where it flattens near its best
            return self.max_postings[self.best_point()]
        i = int(ok[0])
        if i == 0:
            return self.max_postings[0]
        lo, hi = self.max_postings[i - 1], self.max_postings[i]
        frac = (recall - r[i - 1]) / max(r[i] - r[i - 1], 1e-12)
        # recall grows about linearly in log(lists) between points
        return int(min(hi, max(lo + 1, math.ceil(lo * (hi / lo) ** frac - 1e-9))))

    def best_point(self) -> int:
        """Index of the first point within 0.002 of the curve's best recall (with coarse codes a
        curve flattens, or falls, as more lists bring more candidates)."""
        r = np.asarray(self.recall)
        return int(np.flatnonzero(r >= r.max() - 0.002)[0])

    def reaches(self, recall: float) -> bool:
        """Whether any measured point reaches ``recall``."""
        check_recall(recall)
        return max(self.recall) >= recall

    def rerank_for(self, k: int) -> int:
        """The learned re-rank depth for top ``k`` (0: the encoding's default; see
        :func:`spann.params.learned_rerank`)."""
        return learned_rerank(self.rerank_factor, k) if self.rerank_factor else 0

    def table(self) -> str:
        """The curve as a text table (one line per point)."""
        lines = [f"{'max_postings':>12} {'recall@' + str(self.k):>9} {'lists':>7} {'KiB':>8}"]
        for m, r, ls, kb in zip(self.max_postings, self.recall, self.lists, self.kib):
            lines.append(f"{m:>12} {r:>9.4f} {ls:>7.1f} {kb:>8.1f}")
        return "\n".join(lines)


def check_recall(recall: Any) -> float:
    """``recall`` as a float in (0, 1]; ParameterError otherwise."""
    if isinstance(recall, bool) or not isinstance(recall, (int, float, np.integer, np.floating)) \
            or not 0.0 < float(recall) <= 1.0:
        raise ParameterError(f"recall must be a number in (0, 1], got {recall!r}")
    return float(recall)


def calibration_queries(n: int, dim: int, limit: int) -> int:
    """Calibration queries for a base of ``n`` rows of ``dim`` dimensions, at most ``limit``
    (0: none) and a tenth of the rows: ``limit`` while their exact neighbours cost at most
    2.56 x 10^12 multiply-adds (1,000 queries over 2 x 10^7 x 128), fewer above, at least 200;
    none for a base under 2,000 rows."""
    if limit <= 0 or n < 2000:
        return 0
    return int(min(limit, n // 10, max(200, TRUTH_BUDGET // (n * max(dim, 1)))))


def budget_ladder(heads: int, cap: int = 4096) -> list[int]:
    """The max_postings values measured: every value to 8, then steps of about 25 % to 64 and
    50 % beyond (the deep points cost the most), up to the head count (or ``cap``)."""
    top = min(heads, cap)
    out = list(range(1, min(8, top) + 1))
    m = 8
    while m < top:
        m = min(top, max(m + 1, int(round(m * (1.25 if m < 64 else 1.5)))))
        out.append(m)
    return out


def _first_k(a: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` ids of each row of ``a`` (int (nq, >= k)) other than the row's ``own``
    id and -1, padded with -1: int64 (nq, k)."""
    a = np.asarray(a, np.int64)
    keep = (a != own[:, None]) & (a >= 0)
    out = np.full((a.shape[0], k), -1, np.int64)
    for i in range(a.shape[0]):  # nq <= a few thousand, once per ladder point
        row = a[i][keep[i]][:k]
        out[i, :row.size] = row
    return out


def recall_excluding(found: np.ndarray, truth: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Per query, the share of its true top-``k`` found: its own id ``own`` (int64 (nq,); -1
    for a query that is not a row of the base) is dropped from ``found`` (int64 (nq, >= k),
    search order) and from ``truth`` (int64 (nq, >= k), exact order) before their first ``k``
    are compared. float64 (nq,)."""
    f, t = _first_k(found, own, k), _first_k(truth, own, k)
    hit = ((f[:, :, None] == t[:, None, :]) & (t[:, None, :] >= 0)).any(1).sum(1)
    return hit / k


def measure_operating_points(search: Callable[..., Any], breakdown: Callable[..., Any] | None,
                             queries: np.ndarray, truth: np.ndarray, own: np.ndarray | None, heads: int,
                             coded: bool, k: int = K, progress: Callable[[int], None] | None = None
                             ) -> OperatingPoints:
    """Measure the recall curve of an index.

    ``search(queries, k, **params)`` -> a :class:`~spann.SearchResult`; ``breakdown(queries,
    gt, k, **params)`` -> a :class:`~spann.RecallBreakdown` (used for coded entries, to choose
    the re-rank depth). ``queries``: float32 (nq, dim); ``truth``: int64 (nq, >= k (+1)) their
    exact neighbours in search order (ids as searches return them); ``own``: int64 (nq,) the
    ids of the queries themselves when they are rows of the base (searched for k + 1, their own
    id dropped from results and truth), or None. ``heads``: the index's head count.
    ``progress(points)`` after each point."""
    nq = queries.shape[0]
    extra = 0 if own is None else 1
    own = np.full(nq, -1, np.int64) if own is None else np.asarray(own, np.int64)
    truth = np.asarray(truth, np.int64)
    factor = 0.0
    if coded and breakdown is not None:  # a pool's losses are paired counts: a few hundred queries tell
        sub = np.linspace(0, nq - 1, min(nq, RERANK_QUERIES)).astype(np.int64)
        factor = _learn_rerank(breakdown, queries[sub], truth[sub], own[sub], heads, k, progress)
    rr = learned_rerank(factor, k + extra) if factor else 0
    mps, rec, lists, kib = [], [], [], []
    for m in budget_ladder(heads):
        res = search(queries, k + extra, max_postings=m, rerank=rr)
        r = float(recall_excluding(res.ids, truth, own, k).mean())
        mps.append(m)
        rec.append(r)
        lists.append(float(res.lists_read.mean()))
        kib.append(float(res.bytes_read.mean()) / 1024)
        if progress is not None:
            progress(1)
        if r >= TOP_RECALL or lists[-1] >= heads or (len(rec) > PLATEAU and r - rec[-1 - PLATEAU] < 0.002
                                                     and lists[-1] >= 1.5 * lists[-1 - PLATEAU]):
            break
    return OperatingPoints(k=k, queries=int(nq), max_postings=tuple(mps), recall=tuple(rec),
                           lists=tuple(lists), kib=tuple(kib), rerank_factor=factor)


def _learn_rerank(breakdown, queries, truth, own, heads, k, progress) -> float:
    """The smallest re-rank depth (a multiple of k from :data:`RERANK_LADDER`) whose pool keeps
    all but :data:`POOL_LOSS` of the true neighbours the selected lists hold, at the fewest
    lists (1, 2, 4, ...) that hold :data:`DEFAULT_RECALL` of them (or all lists); the deepest
    if none does (codes too coarse for the data: few dimensions for rabitq)."""
    gt = _first_k(truth, own, k)
    m = 1
    for m in sorted({min(heads, 2 ** i) for i in range(13)}):  # what the lists hold: any depth will do
        held = breakdown(queries, gt, k, max_postings=m).in_lists.mean()
        if progress is not None:
            progress(1)
        if held >= DEFAULT_RECALL * k:
            break
    # the pool keeps more as it deepens: the first depth that keeps enough, by bisection
    lo, hi = 0, len(RERANK_LADDER) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        b = breakdown(queries, gt, k, max_postings=m, rerank=math.ceil(RERANK_LADDER[mid] * k))
        if progress is not None:
            progress(1)
        if b.in_pool.mean() >= b.in_lists.mean() - POOL_LOSS * k:
            hi = mid
        else:
            lo = mid + 1
    return RERANK_LADDER[lo]
