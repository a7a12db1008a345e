"""Build and search parameters: frozen dataclasses with validation and dict round trips.

Every build parameter is stored in the index attributes (``BuildParams.to_dict``), so an index
says exactly how it was made.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import numpy as np

from spann.errors import ParameterError

__all__ = ["BuildParams", "SearchParams"]

#: names ``BuildParams.encoding`` accepts besides ``auto``: the codecs of :mod:`spann.codecs` (a
#: lower layer cannot import them; a test keeps the two in step)
ENCODINGS = ("full", "sq8", "rabitq")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ParameterError(msg)


def _int(v: Any) -> bool:
    """An integer (numpy integers included), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _real(v: Any) -> bool:
    """A finite or infinite real number (not NaN, not a bool)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(v)


def _parse_value(text: str) -> Any:
    """``"12"`` -> 12, ``"0.5"``/``"inf"`` -> float, ``"true"``/``"false"`` -> bool, ``"none"`` ->
    None, anything else the string itself."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        v = float(t)
    except ValueError:
        return t
    return v


class _Params:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def parse_assignments(cls, items: Sequence[str]) -> dict[str, Any]:
        """``["name=value", ...]`` (the CLI's ``--param``) -> {name: value}, names checked
        against this class's fields; values typed as numbers, true/false or none."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        out: dict[str, Any] = {}
        for item in items:
            name, sep, value = item.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or not name:
                raise ParameterError(f"parameters look like name=value; got {item!r}")
            if name not in names:
                raise ParameterError(f"unknown {cls.__name__} parameter {name!r}; known: {', '.join(sorted(names))}")
            out[name] = _parse_value(value)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ParameterError(f"unknown {cls.__name__} parameter(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def replace(self, **changes: Any):
        d = self.to_dict()
        d.update(changes)
        return type(self).from_dict(d)


#: the k an index's re-rank depth is measured at (see spann.search.operating_points)
CALIBRATION_K = 10


def learned_rerank(factor: float, k: int) -> int:
    """Candidates re-ranked for top ``k`` at a depth of ``factor`` x k measured at
    :data:`CALIBRATION_K`: a smaller k keeps the measured pool."""
    return max(k, math.ceil(factor * max(k, CALIBRATION_K)))


@dataclass(frozen=True)
class BuildParams(_Params):
    """How an index is built.

    head_ratio: heads / N. Ignored when ``posting_size`` is set.
    posting_size: target vectors per head (N / heads); overrides ``head_ratio``.
    branching: max children per node of the balanced k-means tree.
    balance_slack: a cluster holds at most ``ceil(n/k * (1 + slack))`` points.
    cluster_sample: rows sampled into RAM (float32; fewer where memory does not allow:
        a quarter of the machine's RAM, or ``memory_limit``) for the top of the clustering tree,
        the codes and the pruner. When it holds at least 8 rows per head, the heads are
        clustered from it; otherwise every row is routed to a bucket of the tree's top level
        and the buckets are clustered one by one (see :mod:`spann.builder.partition`): the head
        count does not depend on it.
    kmeans_iters: Lloyd iterations per tree node.
    closure_eps: replica j needs ``d(x, c_j) <= (1 + eps) * d(x, c_1)`` (true L2 distances).
        None = by encoding: 2.0 for coded postings (entries are small: more replicas, fewer
        lists per query), 0.5 for full vectors (keeps the index near 3x the raw data).
    rng_factor: skip replica c_j if an accepted c_i has ``rng_factor * d(c_i, c_j) < d(x, c_j)``
        (squared distances); above 1 keeps more boundary replicas. None = by encoding: 2.0
        coded, 1.3 full.
    replica_count: max posting lists per vector. None = by encoding: 6 coded, 8 full.
    soar_lambda: how replicas are chosen among the heads the closure rule admits: 0 = the RNG
        rule (``rng_factor``); above 0 = the SOAR rule with this weight on the orthogonality
        penalty (see :mod:`spann.heads.assign`). None = by encoding: 1.0 coded (a replica costs
        a few bytes; SOAR's replicas reach a recall with fewer lists), 0 full (each replica is a
        whole vector: the RNG rule keeps few).
    assign_candidates: nearest heads examined per vector when choosing replicas.
    graph_degree: out-degree of the head graph.
    graph_candidates: kNN candidates per head before RNG pruning.
    graph_alpha: RNG pruning slack of the head graph (1.0 = strict RNG; larger keeps more
        long edges).
    head_groups: groups of heads that searches scan instead of walking the head graph (see
        :mod:`spann.heads.groups`): -1 = about 4 sqrt(heads) up to 32,768 heads, none above;
        0 = none (searches walk the graph); n > 0 = n groups (at most the heads).
    encoding: what posting entries hold: ``full`` vectors, ``sq8`` (one byte per dimension) or
        ``rabitq`` (one bit per dimension) codes re-ranked from a full-precision vector store;
        ``auto``: ``full`` for 8-bit data, ``rabitq`` for float data of 384 or more dimensions,
        else ``sq8``.
    shard_bytes: bytes per posting shard file (raised to hold the longest list).
    chunk_bytes: zarr inner chunk of the posting array (what a generic zarr client reads at
        once; spann itself reads exact list ranges).
    block_rows: vectors per streamed block during assignment.
    seed: random seed.
    threads: build threads (0 = all cores).
    label_list_fraction: labels carried by at most this fraction of the vectors also get a
        label list (the label's vectors, full precision, contiguous): a filtered search whose
        labels are all that rare scans those lists exactly instead of the posting lists.
    split_factor: an update splits a posting list grown past ``split_factor`` times the mean
        list length of the build (a new head; SPFresh's split).
    memory_limit: bytes the build may use (peak RSS of the process, interpreter and numba
        included, its kernels loaded from numba's cache: the first build on a machine compiles
        them, a transient peak near 1 GiB); 0 = no limit. Sizes the clustering sample, the rows
        one clustering bucket holds, the assignment blocks and the spilled assignment buckets;
        a limit too small for the heads fails before any work.
    calibration_queries: base rows searched as queries, against their exact neighbours, to
        measure the finished index's recall at each list budget (its operating points, see
        :mod:`spann.search.operating_points`; fewer above 2 x 10^7 vectors, none under 2,000);
        0 = none (searches then read ``SearchParams.max_postings`` lists and ``recall=`` is
        refused).
    """

    head_ratio: float = 0.05
    posting_size: int = 0
    branching: int = 32
    balance_slack: float = 0.2
    cluster_sample: int = 500_000
    kmeans_iters: int = 12
    replica_count: int | None = None
    closure_eps: float | None = None
    rng_factor: float | None = None
    soar_lambda: float | None = None
    assign_candidates: int = 64
    graph_degree: int = 32
    graph_candidates: int = 64
    graph_alpha: float = 1.2
    head_groups: int = -1
    encoding: str = "auto"
    shard_bytes: int = 64 << 20
    chunk_bytes: int = 256 << 10
    block_rows: int = 65536
    seed: int = 0
    threads: int = 0
    label_list_fraction: float = 0.02
    split_factor: float = 2.0
    memory_limit: int = 0
    calibration_queries: int = 1000

    def __post_init__(self) -> None:
        _check(_real(self.label_list_fraction) and 0.0 <= self.label_list_fraction <= 1.0,
               f"label_list_fraction must be in [0, 1], got {self.label_list_fraction!r}")
        _check(_int(self.memory_limit) and (self.memory_limit == 0 or self.memory_limit >= 256 << 20),
               f"memory_limit must be 0 (none) or at least 256 MiB, got {self.memory_limit!r}")
        _check(_int(self.calibration_queries) and 0 <= self.calibration_queries <= 100_000,
               f"calibration_queries must be in 0..100000, got {self.calibration_queries!r}")
        _check(_real(self.split_factor) and 1.2 <= self.split_factor <= 100,
               f"split_factor must be in [1.2, 100], got {self.split_factor!r}")
        _check(_real(self.head_ratio) and 0.0 < self.head_ratio <= 0.5,
               f"head_ratio must be in (0, 0.5], got {self.head_ratio!r}")
        _check(_int(self.posting_size) and 0 <= self.posting_size <= 10**7,
               f"posting_size must be in 0..10000000, got {self.posting_size!r}")
        _check(_int(self.branching) and 2 <= self.branching <= 1024,
               f"branching must be in 2..1024, got {self.branching!r}")
        _check(_real(self.balance_slack) and 0.0 <= self.balance_slack <= 10,
               f"balance_slack must be in [0, 10], got {self.balance_slack!r}")
        _check(_int(self.cluster_sample) and 1000 <= self.cluster_sample <= 10**9,
               f"cluster_sample must be in 1000..1000000000, got {self.cluster_sample!r}")
        _check(_int(self.kmeans_iters) and 1 <= self.kmeans_iters <= 1000,
               f"kmeans_iters must be in 1..1000, got {self.kmeans_iters!r}")
        _check(self.replica_count is None or _int(self.replica_count) and 1 <= self.replica_count <= 64,
               f"replica_count must be in 1..64 (or None: by encoding), got {self.replica_count!r}")
        _check(self.closure_eps is None or _real(self.closure_eps) and 0 <= self.closure_eps <= 1e6,
               f"closure_eps must be in [0, 1e6] (or None: by encoding), got {self.closure_eps!r}")
        _check(self.rng_factor is None or _real(self.rng_factor) and 0 < self.rng_factor <= 1e6,
               f"rng_factor must be in (0, 1e6] (or None: by encoding), got {self.rng_factor!r}")
        _check(self.soar_lambda is None or _real(self.soar_lambda) and 0 <= self.soar_lambda <= 1e6,
               f"soar_lambda must be in [0, 1e6] (or None: by encoding), got {self.soar_lambda!r}")
        _check(_int(self.assign_candidates) and (self.replica_count or 8) <= self.assign_candidates <= 1024,
               f"assign_candidates must be in replica_count..1024, got {self.assign_candidates!r}")
        _check(_int(self.graph_degree) and 4 <= self.graph_degree <= 256,
               f"graph_degree must be in 4..256, got {self.graph_degree!r}")
        _check(_int(self.graph_candidates) and self.graph_degree <= self.graph_candidates <= 1024,
               f"graph_candidates must be in graph_degree..1024, got {self.graph_candidates!r}")
        _check(_real(self.graph_alpha) and 1.0 <= self.graph_alpha <= 100,
               f"graph_alpha must be in [1, 100], got {self.graph_alpha!r}")
        _check(_int(self.head_groups) and -1 <= self.head_groups <= 1 << 20,
               f"head_groups must be -1 (auto), 0 (none) or a group count up to 1048576, got {self.head_groups!r}")
        _check(self.encoding == "auto" or self.encoding in ENCODINGS,
               f"encoding must be one of auto, {', '.join(ENCODINGS)}, got {self.encoding!r}")
        _check(_int(self.chunk_bytes) and self.chunk_bytes >= 4096 and self.chunk_bytes % 4096 == 0
               and self.chunk_bytes <= 1 << 30,
               f"chunk_bytes must be a multiple of 4096 up to 1 GiB, got {self.chunk_bytes!r}")
        _check(_int(self.shard_bytes) and self.shard_bytes % self.chunk_bytes == 0
               and self.chunk_bytes <= self.shard_bytes <= 1 << 36,
               f"shard_bytes must be a multiple of chunk_bytes ({self.chunk_bytes}) up to 64 GiB, "
               f"got {self.shard_bytes!r}")
        _check(_int(self.block_rows) and 256 <= self.block_rows <= 1 << 24,
               f"block_rows must be in 256..16777216, got {self.block_rows!r}")
        _check(_int(self.seed) and 0 <= self.seed < 2**63, f"seed must be in 0..2**63-1, got {self.seed!r}")
        _check(_int(self.threads) and 0 <= self.threads <= 4096, f"threads must be in 0..4096, got {self.threads!r}")

    def resolved(self, codec) -> "BuildParams":
        """These parameters with the encoding chosen: ``codec`` (a :class:`spann.codecs.Codec`)
        gives its name and the replica rules (replica_count, closure_eps, rng_factor, soar_lambda)
        left None."""
        return self.replace(
            encoding=codec.name,
            replica_count=self.replica_count if self.replica_count is not None else codec.replica_count,
            closure_eps=self.closure_eps if self.closure_eps is not None else codec.closure_eps,
            rng_factor=self.rng_factor if self.rng_factor is not None else codec.rng_factor,
            soar_lambda=self.soar_lambda if self.soar_lambda is not None else codec.soar_lambda)

    @classmethod
    def stored(cls, d: dict[str, Any]) -> "BuildParams":
        """The parameters an index's metadata records; an index written before the SOAR rule
        existed chose its replicas by the RNG rule (``soar_lambda`` 0)."""
        return cls.from_dict({"soar_lambda": 0.0, **d})


@dataclass(frozen=True)
class SearchParams(_Params):
    """How a query is answered.

    max_postings: posting lists read per query. With the learned pruner (``pruner``, on when
        the index has one) this is what the median query reads: easier queries read down to a
        quarter of it, harder ones up to twice (see :mod:`spann.heads.pruner`); without, every query
        reads this many.
    pruner: use the index's learned pruner.
    prune_eps: query-aware pruning: read the list of head j only if
        ``d(q, c_j) <= (1 + prune_eps) * d(q, c_1)`` (true L2 in the head space; for inner
        product the L2 of the MIPS-to-L2 transform). ``inf`` = off.
    ef: beam width of the head-graph search (0 = automatic: 1.25 x the heads retrieved, at
        least 40).
    rerank: candidates re-ranked exactly from the vector store (coded encodings; at least k):
        0 = automatic: the depth the index measured at build (its operating points); for an
        index without one, ``k + k // 2`` (at least 12) for sq8, whose code distances are close to
        the true ones; ``3 k`` (at least 30) for rabitq's coarser one-bit codes, enough for its
        estimator's error at a few hundred dimensions and fewer re-rank rows for a cold query
        to read than a wider margin.
    rerank_bound: rabitq: of those candidates, re-rank only the ones whose estimate's error
        bound lets them reach the top-k (RaBitQ's confidence interval; see
        :func:`spann.codecs.rabitq.bound_cut`); False re-ranks all of them.
    prefetch: before scanning, ask the kernel to read every selected list at once
        (madvise WILLNEED, one call per run of adjacent pages): all of a query's reads are
        in flight together when the index is not in the page cache; about 1 us per list when
        it is.
    direct: read each query's lists and re-rank rows with O_DIRECT (Linux native AIO,
        :mod:`spann.io.direct`) into buffers of the searching thread, bypassing the page cache:
        every query reads from the device, the way DiskANN does (a batch runs its queries one by
        one on its threads). Off by default: where buffered and direct reads cost the device the
        same, the page cache also serves repeated lists from RAM. Pick it for an index much
        larger than RAM, or a device that serves direct reads faster than buffered ones
        (docs/benchmarks.md). Local directory or aligned zip indexes on Linux (x86-64, arm64);
        delta and label lists are still read through the map.
    """

    max_postings: int = 32
    pruner: bool = True
    prune_eps: float = float("inf")
    ef: int = 0
    rerank: int = 0
    rerank_bound: bool = True
    prefetch: bool = True
    direct: bool = False

    def __post_init__(self) -> None:
        _check(_int(self.max_postings) and 1 <= self.max_postings <= 65536,
               f"max_postings must be an integer in 1..65536, got {self.max_postings!r}")
        _check(_real(self.prune_eps) and self.prune_eps >= 0, f"prune_eps must be >= 0, got {self.prune_eps!r}")
        _check(_int(self.ef) and (self.ef == 0 or self.max_postings <= self.ef <= 1 << 20),
               f"ef must be 0 (auto) or in max_postings ({self.max_postings})..1048576, got {self.ef!r}")
        _check(_int(self.rerank) and 0 <= self.rerank <= 1 << 16, f"rerank must be in 0..65536, got {self.rerank!r}")
        _check(isinstance(self.prefetch, (bool, np.bool_)), f"prefetch must be True or False, got {self.prefetch!r}")
        _check(isinstance(self.direct, (bool, np.bool_)), f"direct must be True or False, got {self.direct!r}")
        _check(isinstance(self.rerank_bound, (bool, np.bool_)),
               f"rerank_bound must be True or False, got {self.rerank_bound!r}")
        _check(isinstance(self.pruner, (bool, np.bool_)), f"pruner must be True or False, got {self.pruner!r}")

    def effective_ef(self, retrieved: int | None = None) -> int:
        """Beam width for retrieving ``retrieved`` heads (default max_postings)."""
        m = retrieved or self.max_postings
        return max(self.ef or int(max(m, 32) * 1.25), m)

    def effective_rerank(self, k: int, codec, factor: float = 0.0) -> int:
        """Candidates re-ranked for top ``k``: ``rerank`` (at least k), or when 0 ``factor`` x
        max(k, 10) (the depth an index measured for its data at k = 10, see
        :mod:`spann.search.operating_points`), or without one the depth the index's encoding (a
        :class:`spann.codecs.Codec`) implies."""
        if self.rerank:
            return max(self.rerank, k)
        if factor:
            return learned_rerank(factor, k)
        return codec.default_rerank(k)
