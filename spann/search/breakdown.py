"""Where a search loses recall: the true neighbours its lists hold, its candidate pool keeps, its
result returns; and what it read to get there.

A batch search runs in three steps (see :mod:`spann.search.planner`): the nearest heads
select the posting lists to read, a scan of those lists keeps a candidate pool (coded lists:
the best rows by their codes, re-ranked exactly from the vector store; full lists: the exact
top-k), and the result is the pool's best k. For every query and its true top-k,
:func:`recall_breakdown` counts how many the selected lists contain (``in_lists``), how many of
those reach the exact stage (``in_pool``: the re-rank pool, or any selected delta list, which
is scored exactly) and how many end in the result (``in_result``); so ``in_result <= in_pool
<= in_lists`` and a loss shows where it happens: lists (heads, replicas, the pruner), codes
(the code's estimation error, the pool's depth) or the final cut. With it, per query, the
device requests a cold search makes (``runs``: runs of adjacent pages of the lists and the
re-ranked rows, as the search requests them) and the rows re-ranked (``rows``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from spann.format.layout import BRIDGE_PAGES
from spann.io.postings import entry_id, list_pages
from spann.io.vector_store import row_id, row_page_ranges

__all__ = ["RecallBreakdown", "mark_in_lists", "mark_in_rows", "page_runs"]


@dataclass
class RecallBreakdown:
    """Per query (int64 (nq,)): of the true top-``k``, how many the selected lists hold
    (``in_lists``), reach the exact stage (``in_pool``) and are returned (``in_result``); and
    ``lists`` read, ``runs`` of pages requested (device requests of a cold query) and ``rows``
    re-ranked."""

    k: int
    in_lists: np.ndarray
    in_pool: np.ndarray
    in_result: np.ndarray
    lists: np.ndarray
    runs: np.ndarray
    rows: np.ndarray

    def shares(self) -> dict[str, float]:
        """Mean shares of the true top-k: ``lists``, ``pool``, ``result`` (the last is recall@k)."""
        k = float(self.k)
        return {"lists": float(self.in_lists.mean() / k), "pool": float(self.in_pool.mean() / k),
                "result": float(self.in_result.mean() / k)}


@numba.njit(cache=True, nogil=True)
def _mark(gs, order, x, found_i):
    """Mark ``found_i[order[p]]`` where ``gs[p] == x`` (``gs`` sorted, ``order`` its argsort)."""
    p = np.searchsorted(gs, x)
    if p < gs.shape[0] and gs[p] == x:
        found_i[order[p]] = True


@numba.njit(cache=True, nogil=True)
def mark_in_lists(pv, vv, coded, sel, kept, gt, found):
    """Set ``found[i, t]`` (bool (nq, k)) where the true neighbour ``gt[i, t]`` (int64 (nq, k))
    is an entry of one of the lists ``sel[i, :kept[i]]`` of ``pv`` (``coded``: entries are
    vector-store rows of ``vv``, mapped to their ids). One binary search per entry."""
    for i in range(sel.shape[0]):
        order = np.argsort(gt[i])
        gs = gt[i][order]
        for j in range(kept[i]):
            h = sel[i, j]
            if h < 0:
                continue
            o = pv.offsets[h]
            for e in range(pv.counts[h]):
                x = entry_id(pv, o, e)
                if coded:
                    if x < 0 or x >= vv.n:
                        continue
                    x = row_id(vv, x)
                _mark(gs, order, x, found[i])


@numba.njit(cache=True, nogil=True)
def mark_in_rows(vv, rows, gt, found):
    """Set ``found[i, t]`` where ``gt[i, t]`` is the id of one of the vector-store rows
    ``rows[i]`` (int64 (nq, R), -1 padded)."""
    for i in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            r = rows[i, j]
            if r < 0 or r >= vv.n:
                continue
            x = row_id(vv, r)
            for t in range(gt.shape[1]):
                if gt[i, t] == x:
                    found[i, t] = True


@numba.njit(cache=True, nogil=True)
def _count_runs(first, last, m):
    """Runs of the page ranges [first[j], last[j]] (j < m) after merging overlaps and gaps of up
    to BRIDGE_PAGES pages, as the search's page requests merge them."""
    if m == 0:
        return 0
    o = np.argsort(first[:m])
    runs = 1
    end = last[o[0]]
    for t in range(1, m):
        if first[o[t]] <= end + 1 + BRIDGE_PAGES:
            end = max(end, last[o[t]])
        else:
            runs += 1
            end = last[o[t]]
    return runs


@numba.njit(cache=True, nogil=True)
def page_runs(pv, vv, sel, kept, rows, runs):
    """Add to ``runs[i]`` (int64 (nq,)) the runs of pages query i's lists ``sel[i, :kept[i]]``
    span in ``pv`` and the runs its re-ranked rows ``rows[i]`` (-1 padded; (nq, 0) for none)
    span in ``vv``."""
    for i in range(sel.shape[0]):
        n = kept[i]
        first = np.empty(max(n, rows.shape[1], 1), np.int64)
        last = np.empty(max(n, rows.shape[1], 1), np.int64)
        m = 0
        for j in range(n):
            a, b = list_pages(pv, sel[i, j])
            if b >= a:
                first[m] = a
                last[m] = b
                m += 1
        runs[i] += _count_runs(first, last, m)
        m = row_page_ranges(vv, rows[i], rows.shape[1], first, last)
        runs[i] += _count_runs(first, last, m)
