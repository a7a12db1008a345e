"""Posting encodings: what an entry's code is, how it is trained and written, and the numba
distance it is scanned with.

- ``full``: the vector itself (stored dtype); scanned distances are exact.
- ``sq8``: per-dimension scalar quantisation to one byte, ``x_i ~ lo_i + scale_i * code_i``
  (lo/scale from the sample's min/max); 4x smaller than float32; scanned distances are
  approximate (error at most ``scale_i / 2`` per dimension), candidates are re-ranked exactly.
- ``rabitq``: see :mod:`spann.codecs.rabitq`.

The trained parameters are small arrays stored with the index (``code_<name>``) and handed to
the kernels as one :class:`CodebookView`.
"""

from __future__ import annotations

from collections import namedtuple

import numba
import numpy as np

from spann.codecs.rabitq import encode, random_rotation
from spann.kernels.distances import FASTMATH, L2

__all__ = ["FULL", "SQ8", "RABITQ", "ENCODING_CODES", "CodebookView", "train_codebook", "encode_rows",
           "codebook_view", "CODEBOOK_ARRAYS"]

FULL, SQ8, RABITQ = 0, 1, 2
ENCODING_CODES = {"full": FULL, "sq8": SQ8, "rabitq": RABITQ}

#: arrays each encoding stores (name -> (dtype, shape as a function of dim))
CODEBOOK_ARRAYS = {
    "full": {},
    "sq8": {"lo": (np.float32, lambda d: (d,)), "scale": (np.float32, lambda d: (d,))},
    "rabitq": {"rotation": (np.float32, lambda d: (d, -(-d // 64) * 64))},
}

CodebookView = namedtuple("CodebookView", ["kind", "lo", "scale", "rotation"])
CodebookView.__doc__ = """Trained code parameters as numba sees them: kind (FULL/SQ8/RABITQ);
sq8: lo, scale float32 (D,); rabitq: rotation float32 (D, Dp). Unused fields are empty."""

_EMPTY1 = np.zeros(0, np.float32)
_EMPTY2 = np.zeros((0, 0), np.float32)


def codebook_view(encoding: str, arrays: dict[str, np.ndarray]) -> CodebookView:
    return CodebookView(kind=np.int64(ENCODING_CODES[encoding]),
                        lo=arrays.get("lo", _EMPTY1), scale=arrays.get("scale", _EMPTY1),
                        rotation=arrays.get("rotation", _EMPTY2))


def train_codebook(encoding: str, sample: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Parameters of ``encoding`` from ``sample`` (float32 (s, D) rows as the postings store
    them, e.g. unit-normalised for cosine)."""
    if encoding == "full":
        return {}
    if encoding == "sq8":
        lo = sample.min(axis=0).astype(np.float32)
        hi = sample.max(axis=0).astype(np.float32)
        scale = np.maximum((hi - lo) / 255.0, np.float32(1e-12)).astype(np.float32)
        return {"lo": lo, "scale": scale}
    return {"rotation": random_rotation(sample.shape[1], seed)}


@numba.njit(cache=True, nogil=True)
def _sq8_encode(x, lo, scale, out):
    n, d = x.shape
    for i in range(n):
        for j in range(d):
            v = (x[i, j] - lo[j]) / scale[j] + 0.5
            if v < 0.0:
                v = 0.0
            elif v > 255.0:
                v = 255.0
            out[i, j] = np.uint8(v)


def encode_rows(encoding: str, arrays: dict[str, np.ndarray], rows: np.ndarray,
                centers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 (n, code_bytes), aux float32 (n, A)) of ``rows`` (float32 (n, D), stored
    space); rabitq codes are residuals to ``centers`` (float32 (n, D), each row's list centre)."""
    x = np.ascontiguousarray(rows, dtype=np.float32)
    if encoding == "sq8":
        out = np.empty(x.shape, np.uint8)
        _sq8_encode(x, arrays["lo"], arrays["scale"], out)
        return out, np.zeros((x.shape[0], 0), np.float32)
    if encoding == "rabitq":
        return encode(x, centers, arrays["rotation"])
    raise ValueError(f"encoding {encoding!r} has no codes")


# -- sq8 scan ---------------------------------------------------------------------------------

@numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
def sq8_prepare(q, metric, lo, scale, qa):
    """Per-query constants of the sq8 distance: qa (D,) and a scalar.
    l2: d = sum_i (qa_i - scale_i c_i)^2 with qa = q - lo;
    ip: d = const - sum_i qa_i c_i with qa = q * scale, const = -q.lo."""
    c = np.float32(0.0)
    if metric == L2:
        for i in range(q.shape[0]):
            qa[i] = q[i] - lo[i]
    else:
        for i in range(q.shape[0]):
            qa[i] = q[i] * scale[i]
            c -= q[i] * lo[i]
    return c


@numba.njit(cache=True, fastmath=FASTMATH, nogil=True, inline="always")
def sq8_distance(qa, const, scale, code, metric):
    if metric == L2:
        s = np.float32(0.0)
        for i in range(qa.shape[0]):
            t = qa[i] - scale[i] * np.float32(code[i])
            s += t * t
        return s
    s = np.float32(0.0)
    for i in range(qa.shape[0]):
        s += qa[i] * np.float32(code[i])
    return const - s
