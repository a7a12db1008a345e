"""Posting encodings: one :class:`Codec` per encoding says everything the index does
differently for it: what an entry's code is, how it is trained and written, how it is searched
and verified. The codec is looked up once, where an index is built or opened
(``EntryLayout.codec``), and asked instead of comparing encoding names.

=======  ====  =====  ===========  ===  ===========  ==========================================
codec    kind  coded  code bytes   aux  re-rank      head space
=======  ====  =====  ===========  ===  ===========  ==========================================
full     0     no     dim x dtype  0    (exact)      as is
sq8      1     yes    dim          0    1.5 k, 12+   as is
rabitq   2     yes    Dp / 8       2    3 k, 30+     rotated (Dp = dim rounded up to 64)
=======  ====  =====  ===========  ===  ===========  ==========================================

- ``full``: the vector itself (stored dtype); scanned distances are exact.
- ``sq8``: per-dimension scalar quantisation to one byte, ``x_i ~ lo_i + scale_i * code_i``
  (lo/scale from the sample's min/max); 4x smaller than float32; scanned distances are
  approximate (error at most ``scale_i / 2`` per dimension), candidates are re-ranked exactly.
- ``rabitq``: see :mod:`spann.codecs.rabitq`.

Coded entries hold codes; the full vectors live in a vector store and candidates are re-ranked
from it. The trained parameters are small arrays stored with the index (``code_<name>``) and
handed to the kernels as one :class:`CodebookView`, whose ``kind`` (FULL, SQ8, RABITQ) is what
the numba kernels branch on.

A new encoding is one :class:`Codec` subclass in :data:`CODECS` (plus its scan in the kernels).
"""

from __future__ import annotations

from collections import namedtuple
from typing import Mapping

import numba
import numpy as np

from spann.codecs.rabitq import encode as rabitq_encode
from spann.codecs.rabitq import random_rotation
from spann.errors import ParameterError
from spann.kernels.distances import FASTMATH, L2

__all__ = ["FULL", "SQ8", "RABITQ", "CodebookView", "Codec", "FullCodec", "Sq8Codec", "RabitqCodec", "CODECS",
           "FULL_CODEC", "get_codec", "choose_codec", "codebook_view", "RABITQ_MIN_DIM"]

FULL, SQ8, RABITQ = 0, 1, 2

CodebookView = namedtuple("CodebookView", ["kind", "lo", "scale", "rotation"])
CodebookView.__doc__ = """Trained code parameters as numba sees them: kind (FULL/SQ8/RABITQ);
sq8: lo, scale float32 (D,); rabitq: rotation float32 (D, Dp). Unused fields are None, so
that each codec is its own numba type and a kernel compiles only the scan of its codec."""

#: ``auto`` encodes float data of at least this many dimensions with rabitq
RABITQ_MIN_DIM = 384


def _padded(dim: int) -> int:
    """``dim`` rounded up to whole 64-bit words."""
    return -(-dim // 64) * 64


class Codec:
    """How one encoding stores, trains, encodes, searches and verifies posting entries.

    name: the encoding's name (``EntryLayout.encoding``, ``BuildParams.encoding``).
    kind: its code in the numba kernels (``CodebookView.kind``: FULL, SQ8, RABITQ).
    coded: entries hold codes, not vectors: the full vectors live in a vector store, searches
        re-rank candidates from it, and entry ids may be int32 store rows.
    aux_floats: float32 factors per entry.
    residual: codes are of the entry minus its list's centre (:meth:`encode` needs the centres).
    rotated_heads: heads and queries live in the rotated head space (first ``dim`` columns
        times the codebook's rotation; see :mod:`spann.codecs.rabitq`).
    bounded: code distances come with an error bound, so the re-rank can skip candidates
        that cannot reach the top k (``SearchParams.rerank_bound``).
    verify_factors: ``spann verify`` checks every entry's factors (finite ``|x - c| >= 0``,
        ``0 < <o_bar, u> <= 1``).
    replica_count, closure_eps, rng_factor, soar_lambda: the build's replica rules when
        :class:`~spann.params.BuildParams` leaves them None.
    """

    name: str = ""
    kind: int = -1
    coded: bool = True
    aux_floats: int = 0
    residual: bool = False
    rotated_heads: bool = False
    bounded: bool = False
    verify_factors: bool = False
    # coded entries are small: more replicas, so fewer lists per query
    replica_count: int = 6
    closure_eps: float = 2.0
    rng_factor: float = 2.0
    soar_lambda: float = 1.0

    # -- layout -------------------------------------------------------------------------------
    def code_bytes(self, dim: int, dtype: str) -> int:
        """Bytes of one entry's code."""
        raise NotImplementedError

    def id_bytes(self, n: int) -> int:
        """Bytes of an entry's id for ``n`` vectors: int32 store rows where they fit (coded)."""
        return 4 if self.coded and n < 2**31 else 8

    # -- codebook -----------------------------------------------------------------------------
    def codebook_arrays(self, dim: int) -> dict[str, tuple[type, tuple[int, ...]]]:
        """The trained arrays the index stores (``code_<name>``): name -> (dtype, shape)."""
        return {}

    def train(self, sample: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
        """Codebook arrays from ``sample`` (float32 (s, D) rows as the postings store them, e.g.
        unit-normalised for cosine)."""
        return {}

    def view(self, arrays: Mapping[str, np.ndarray]) -> CodebookView:
        """The codebook as the numba kernels take it (unused fields None)."""
        return CodebookView(kind=np.int64(self.kind), lo=arrays.get("lo"), scale=arrays.get("scale"),
                            rotation=arrays.get("rotation"))

    def encode(self, arrays: Mapping[str, np.ndarray], rows: np.ndarray,
               centers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(codes uint8 (n, code_bytes), aux float32 (n, aux_floats)) of ``rows`` (n, D) in the
        stored space and dtype; ``centers`` float32 (n, D): each row's list centre (residual
        codecs only)."""
        raise NotImplementedError

    # -- search -------------------------------------------------------------------------------
    def default_rerank(self, k: int) -> int:
        """Candidates re-ranked when ``SearchParams.rerank`` is 0 (automatic)."""
        return max(3 * k, 30)

    def head_columns(self, dim: int) -> int:
        """Columns of a stored head row before the metric's own (the inner-product column)."""
        return dim

    def to_head_space(self, rows: np.ndarray, dim: int, rotation: np.ndarray | None) -> np.ndarray:
        """Head-space rows (n, Dh) as the index keeps heads and queries: rotated codecs rotate
        the first ``dim`` columns (float32, contiguous); the others return ``rows`` itself."""
        return rows

    # -- identity -----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"<codec {self.name}>"

    def __reduce__(self):
        return get_codec, (self.name,)  # one object per encoding, across processes too


class FullCodec(Codec):
    """Entries hold the vectors themselves (stored dtype, little-endian); scanned distances
    are exact."""

    name = "full"
    kind = FULL
    coded = False
    # full entries are large: fewer replicas (keeps the index near 3x the raw data)
    replica_count = 8
    closure_eps = 0.5
    rng_factor = 1.3
    soar_lambda = 0.0

    def code_bytes(self, dim: int, dtype: str) -> int:
        return dim * np.dtype(dtype).itemsize

    def encode(self, arrays, rows, centers=None):
        rows = np.ascontiguousarray(rows)
        return rows.view(np.uint8).reshape(rows.shape[0], -1), np.zeros((rows.shape[0], 0), np.float32)


class Sq8Codec(Codec):
    """One byte per dimension, ``x_i ~ lo_i + scale_i * code_i`` (lo/scale from the sample's
    min/max); error at most ``scale_i / 2`` per dimension."""

    name = "sq8"
    kind = SQ8

    def code_bytes(self, dim: int, dtype: str) -> int:
        return dim

    def codebook_arrays(self, dim: int):
        return {"lo": (np.float32, (dim,)), "scale": (np.float32, (dim,))}

    def train(self, sample, seed=0):
        lo = sample.min(axis=0).astype(np.float32)
        hi = sample.max(axis=0).astype(np.float32)
        scale = np.maximum((hi - lo) / 255.0, np.float32(1e-12)).astype(np.float32)
        return {"lo": lo, "scale": scale}

    def encode(self, arrays, rows, centers=None):
        x = np.ascontiguousarray(rows, dtype=np.float32)
        out = np.empty(x.shape, np.uint8)
        _sq8_encode(x, arrays["lo"], arrays["scale"], out)
        return out, np.zeros((x.shape[0], 0), np.float32)

    def default_rerank(self, k: int) -> int:
        return max(k + k // 2, 12)  # code distances close to the true ones


class RabitqCodec(Codec):
    """One bit per (rotated, padded) dimension of the unit residual to the list centre, plus
    ``|x - c|`` and ``<o_bar, u>``; see :mod:`spann.codecs.rabitq`."""

    name = "rabitq"
    kind = RABITQ
    aux_floats = 2
    residual = True
    rotated_heads = True
    bounded = True
    verify_factors = True

    def code_bytes(self, dim: int, dtype: str) -> int:
        return _padded(dim) // 8  # whole 64-bit words

    def codebook_arrays(self, dim: int):
        return {"rotation": (np.float32, (dim, _padded(dim)))}

    def train(self, sample, seed=0):
        return {"rotation": random_rotation(sample.shape[1], seed)}

    def encode(self, arrays, rows, centers=None):
        if centers is None:
            raise ValueError("rabitq codes are residuals: give each row's list centre")
        return rabitq_encode(np.ascontiguousarray(rows, dtype=np.float32), centers, arrays["rotation"])

    def head_columns(self, dim: int) -> int:
        return _padded(dim)

    def to_head_space(self, rows, dim, rotation):
        return np.ascontiguousarray(np.hstack([rows[:, :dim] @ rotation, rows[:, dim:]]), dtype=np.float32)


CODECS: dict[str, Codec] = {c.name: c for c in (FullCodec(), Sq8Codec(), RabitqCodec())}
#: the vectors themselves: label lists and update deltas, and layouts that name no encoding
FULL_CODEC: Codec = CODECS["full"]


def get_codec(name: str | Codec) -> Codec:
    """The codec of encoding ``name``."""
    if isinstance(name, Codec):
        return name
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ParameterError(f"encoding must be one of {', '.join(CODECS)}, got {name!r}") from None


def choose_codec(encoding: str, stored_dtype: np.dtype, dim: int = 0) -> Codec:
    """The codec of ``encoding``, or for ``auto``: full vectors for 8-bit data (a code would not
    be smaller); rabitq for float embeddings of RABITQ_MIN_DIM or more dimensions (one bit per
    dimension: 1/32 of float32, and its estimator's error shrinks as 1/sqrt(dim)); sq8 for the
    rest."""
    if encoding != "auto":
        return get_codec(encoding)
    if np.dtype(stored_dtype).itemsize == 1:
        return CODECS["full"]
    return CODECS["rabitq" if dim >= RABITQ_MIN_DIM else "sq8"]

def codebook_view(encoding: str, arrays: Mapping[str, np.ndarray]) -> CodebookView:
    """The codebook ``arrays`` of ``encoding`` as the numba kernels take it."""
    return get_codec(encoding).view(arrays)


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
