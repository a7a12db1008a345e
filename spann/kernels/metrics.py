"""Metrics: one record per metric says everything the index does differently for it.

Smaller is always better, so results sort ascending:

=======  ============================  ==========================================
metric   distance reported             how the index handles it
=======  ============================  ==========================================
l2       squared Euclidean ||q - x||^2  as is
ip       negative inner product -q.x   heads, graph and pruning in the MIPS-to-L2
                                       space (x, sqrt(M^2 - ||x||^2)); postings
                                       scanned with -q.x
cosine   1 - cos(q, x)                 rows unit-normalised once (float32), then l2;
                                       reported as squared L2 / 2
=======  ============================  ==========================================

A new metric is one :class:`Metric` entry in :data:`METRICS` (plus a scan kernel code in
:mod:`spann.kernels.distances` if it needs a new one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spann.errors import ParameterError
from spann.kernels.distances import L2, NEG_DOT

__all__ = ["Metric", "METRICS", "get_metric", "check_metric", "normalize_rows"]


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm, as float32, shape unchanged. Zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    n = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    n[n == 0] = 1.0
    return x / n[:, None]


@dataclass(frozen=True)
class Metric:
    """How one metric is stored, searched and reported.

    name: the user-facing name.
    scan_code: distance kernel of the posting scan (:data:`spann.kernels.distances.L2` or ``NEG_DOT``).
    normalize: rows (and queries) are unit-normalised before anything else (cosine).
    mips: the head space carries one extra coordinate ``sqrt(M^2 - ||x||^2)`` (inner product),
        so heads, graph, assignment and pruning work on L2 distances.
    report_scale: reported distance = scan distance * report_scale (cosine: 1 - cos = d2 / 2).
    """

    name: str
    scan_code: int
    normalize: bool = False
    mips: bool = False
    report_scale: float = 1.0

    @property
    def inner_product(self) -> bool:
        """Distances are negative inner products (engines with an inner-product mode use it)."""
        return self.scan_code == NEG_DOT

    @property
    def squared_l2(self) -> bool:
        """The reported distance is the squared Euclidean distance of the rows as given (l2; a
        file may hold its square root)."""
        return self.scan_code == L2 and not self.normalize and self.report_scale == 1.0

    @property
    def stored_metric(self) -> str:
        """The metric that ranks stored rows as this one ranks the originals (normalised rows: l2)."""
        return "l2" if self.normalize else self.name

    def stored_dtype(self, source_dtype: np.dtype) -> np.dtype:
        """dtype of the vectors in the posting lists (normalised rows are float32)."""
        return np.dtype("float32") if self.normalize else np.dtype(source_dtype)

    def stored_rows(self, block: np.ndarray) -> np.ndarray:
        """Rows as the postings store them, shape unchanged."""
        return normalize_rows(block) if self.normalize else block

    def head_dim(self, dim: int) -> int:
        """Columns of a head-space row."""
        return dim + 1 if self.mips else dim

    def head_space(self, block: np.ndarray, max_norm: float) -> np.ndarray:
        """float32 head-space rows (b, head_dim) of raw rows ``block`` (b, dim)."""
        if self.normalize:
            return normalize_rows(block)
        x = np.ascontiguousarray(block, dtype=np.float32)
        if not self.mips:
            return x
        sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        ext = np.sqrt(np.maximum(max_norm * max_norm - sq, 0.0)).astype(np.float32)
        return np.ascontiguousarray(np.hstack([x, ext[:, None]]))

    def query_space(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scan-space queries float32 (nq, dim), head-space queries float32 (nq, head_dim)).

        For inner product the query's extra coordinate is 0: ``||q' - x'||^2 = ||q||^2 + M^2 -
        2 q.x``, so head-space order is inner-product order."""
        qs = normalize_rows(q) if self.normalize else np.ascontiguousarray(q, dtype=np.float32)
        if not self.mips:
            return qs, qs
        return qs, np.ascontiguousarray(np.hstack([qs, np.zeros((qs.shape[0], 1), np.float32)]))

    def report(self, d: np.ndarray) -> np.ndarray:
        return d * np.float32(self.report_scale) if self.report_scale != 1.0 else d


METRICS: dict[str, Metric] = {
    "l2": Metric("l2", L2),
    "ip": Metric("ip", NEG_DOT, mips=True),
    "cosine": Metric("cosine", L2, normalize=True, report_scale=0.5),
}


#: other names of the metrics (ann-benchmarks: euclidean, angular; faiss/usearch: dot, inner_product)
ALIASES = {"euclidean": "l2", "sqeuclidean": "l2", "angular": "cosine", "cos": "cosine", "dot": "ip",
           "inner_product": "ip", "mips": "ip"}


def get_metric(metric: str | Metric) -> Metric:
    """The :class:`Metric` record for a name or alias (case-insensitive)."""
    if isinstance(metric, Metric):
        return metric
    m = str(metric).lower().strip()
    m = ALIASES.get(m, m)
    if m not in METRICS:
        raise ParameterError(f"metric must be one of {', '.join(METRICS)} (or {', '.join(ALIASES)}), got {metric!r}")
    return METRICS[m]


def check_metric(metric: str) -> str:
    """Validate and return ``metric`` (lower-cased)."""
    return get_metric(metric).name
