"""Clustered synthetic vectors: a Gaussian mixture with uneven cluster sizes and spreads.

Deterministic for a given (n, dim, dtype, seed) whatever the block size, generated block by
block so 10^8 rows never sit in RAM. ``dtype="uint8"`` with ``dim=128`` gives SIFT-like data
(non-negative, skewed small values, clipped to 0..255).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from spann.errors import ParameterError

__all__ = ["SyntheticSpec", "synthetic_blocks", "synthetic_array"]

_GEN_BLOCK = 16384  # rows per RNG stream: the output never depends on the caller's block size


class SyntheticSpec:
    """Parameters of the mixture; ``centers`` etc. derive from ``seed`` alone."""

    def __init__(self, dim: int, dtype: str = "float32", seed: int = 0, n_clusters: int | None = None,
                 n_hint: int = 100_000):
        if dim <= 0:
            raise ParameterError(f"dim must be >= 1, got {dim}")
        if dtype not in ("float32", "uint8"):
            raise ParameterError(f"dtype must be float32 or uint8, got {dtype!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
            raise ParameterError(f"seed must be an integer in 0..{2**32 - 1}, got {seed!r}")
        self.dim, self.dtype, self.seed = int(dim), dtype, int(seed)
        k = n_clusters or int(np.clip(np.sqrt(n_hint) / 2, 16, 4096))
        rng = np.random.default_rng([self.seed, 1])
        # uneven sizes: log-normal weights span roughly two orders of magnitude
        w = rng.lognormal(0.0, 1.0, size=k)
        self.weights = w / w.sum()
        if dtype == "uint8":
            self.centers = rng.exponential(28.0, size=(k, dim)).astype(np.float32)
            self.spread = rng.uniform(6.0, 16.0, size=k).astype(np.float32)
        else:
            self.centers = rng.standard_normal((k, dim)).astype(np.float32)
            # spreads comparable to centre spacing: clusters overlap, neighbours cross them
            self.spread = rng.uniform(0.25, 0.6, size=k).astype(np.float32)
        self.n_clusters = k

    def rows(self, start: int, stop: int, stream: int = 0) -> np.ndarray:
        """Rows [start, stop) of stream ``stream`` (0 = base, 1 = queries), shape (m, dim)."""
        out = np.empty((stop - start, self.dim), dtype=self.dtype)
        g0 = start // _GEN_BLOCK
        for g in range(g0, (stop - 1) // _GEN_BLOCK + 1 if stop > start else g0):
            rng = np.random.default_rng([self.seed, 2 + stream, g])
            m = _GEN_BLOCK
            c = rng.choice(self.n_clusters, size=m, p=self.weights)
            x = self.centers[c] + self.spread[c, None] * rng.standard_normal((m, self.dim), dtype=np.float32)
            if self.dtype == "uint8":
                x = np.clip(np.rint(np.abs(x)), 0, 255)
            a, b = max(start, g * _GEN_BLOCK), min(stop, (g + 1) * _GEN_BLOCK)
            out[a - start:b - start] = x[a - g * _GEN_BLOCK:b - g * _GEN_BLOCK]
        return out


def synthetic_blocks(n: int, dim: int, dtype: str = "float32", seed: int = 0, *, stream: int = 0,
                     block_rows: int = 65536, spec: SyntheticSpec | None = None) -> Iterator[np.ndarray]:
    """Yield blocks of the synthetic base (stream 0) or query set (stream 1), (<=block_rows, dim)."""
    spec = spec or SyntheticSpec(dim, dtype, seed, n_hint=n)
    for s in range(0, n, block_rows):
        yield spec.rows(s, min(n, s + block_rows), stream)


def synthetic_array(n: int, dim: int, dtype: str = "float32", seed: int = 0, *, stream: int = 0,
                    n_hint: int | None = None) -> np.ndarray:
    """The first ``n`` rows of a stream in RAM (tests and small demos), shape (n, dim)."""
    spec = SyntheticSpec(dim, dtype, seed, n_hint=n_hint or n)
    return spec.rows(0, n, stream)
