"""Heads held in the data's own dtype: one byte per coordinate for 8-bit data under l2.

A head is a centroid, so its coordinates are fractions; for uint8 / int8 vectors searched by
squared L2 the index rounds every head to the nearest point of the data's grid (clipped to the
dtype's range) right after clustering, and everything after (graph, assignment, postings,
searches) uses the rounded heads. The open index then keeps them as uint8 / int8: a quarter of
float32's bytes, and the graph walk reads them directly, with exact distances and no separate
byte codes (a float32 head costs ``4 Dh`` bytes plus ``Dh`` of walk codes; an 8-bit head ``Dh``).

Rounding moves a head by at most 0.5 per coordinate, about ``Dh / 12`` in squared distance on
average (~11 at 128 dimensions, against squared neighbour distances of 10^4 and more on 8-bit
embeddings such as SIFT): the lists and the search are unchanged in any way a query sees.

Head groups (searches scan them instead of walking the graph, up to 32,768 heads) keep their
own copy of the heads in group order, byte codes from 32 dimensions on (float32 rows below),
as for float heads.

Float heads stay float32: cosine rows are unit-normalised floats, inner product's head space
has an extra real coordinate, and rabitq keeps rotated heads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from spann.kernels.metrics import Metric

__all__ = ["head_dtype", "to_grid", "as_head_dtype"]


def head_dtype(metric: "Metric", stored_dtype, rotated: bool) -> np.dtype:
    """The dtype an index keeps its heads in: the ``stored_dtype`` of its vectors when that is 8-bit
    and the head space is the data's own (``metric`` neither normalises nor adds the inner-product
    coordinate, the encoding does not keep ``rotated`` heads), else float32."""
    dt = np.dtype(stored_dtype)
    if dt.kind in "iu" and dt.itemsize == 1 and not (metric.normalize or metric.mips or rotated):
        return dt
    return np.dtype(np.float32)


def to_grid(vectors: np.ndarray, dtype) -> np.ndarray:
    """``vectors`` (float32 (H, Dh)) rounded to the nearest values of ``dtype`` (clipped to its
    range), still float32; returned unchanged for float32."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return vectors
    info = np.iinfo(dt)
    out = np.empty(vectors.shape, np.float32)
    for s in range(0, vectors.shape[0], 65536):  # blocks: no float64 temporaries of every head
        np.clip(np.rint(vectors[s:s + 65536]), info.min, info.max, out=out[s:s + 65536])
    return out


def as_head_dtype(vectors: np.ndarray, dtype) -> np.ndarray:
    """``vectors`` (float32 (H, Dh)) as ``dtype`` (rounded to its grid first; C-contiguous)."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return np.ascontiguousarray(vectors, dtype=np.float32)
    return np.ascontiguousarray(to_grid(vectors, dt).astype(dt))
