"""Metric names and the distance convention every spann result follows.

Smaller is always better, so results sort ascending:

=======  ============================  ==========================================
metric   distance reported             how the index handles it
=======  ============================  ==========================================
l2       squared Euclidean ||q - x||^2  as is
ip       negative inner product -q.x   heads/pruning in an L2-transformed space
cosine   1 - cos(q, x)                 vectors unit-normalised once (float32), then l2
=======  ============================  ==========================================
"""

from __future__ import annotations

import numpy as np

from spann.errors import ParameterError

__all__ = ["METRICS", "check_metric", "normalize_rows", "result_distances_from_l2"]

METRICS: tuple[str, ...] = ("l2", "ip", "cosine")


def check_metric(metric: str) -> str:
    """Validate and return ``metric`` (lower-cased)."""
    m = str(metric).lower()
    if m not in METRICS:
        raise ParameterError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return m


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm, as float32, shape unchanged. Zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    n = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    n[n == 0] = 1.0
    return x / n[:, None]


def result_distances_from_l2(d2: np.ndarray, metric: str) -> np.ndarray:
    """Map squared L2 between unit vectors to the reported distance (cosine: d2 / 2)."""
    return d2 * 0.5 if metric == "cosine" else d2
