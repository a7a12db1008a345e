"""Build and search parameters: frozen dataclasses with validation and dict round trips.

Every build parameter is stored in the index attributes (``BuildParams.to_dict``), so an index
says exactly how it was made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from spann.errors import ParameterError

__all__ = ["BuildParams", "SearchParams"]


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ParameterError(msg)


class _Params:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

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


@dataclass(frozen=True)
class BuildParams(_Params):
    """How an index is built.

    head_ratio: heads / N (SPANN uses 0.1-0.2). Ignored when ``posting_size`` is set.
    posting_size: target primary vectors per head (N / heads); overrides ``head_ratio``.
    branching: max children per node of the balanced k-means tree.
    balance_slack: a cluster holds at most ``ceil(n/k * (1 + slack))`` points.
    cluster_sample: max points the head selection clusters (in RAM as float32).
    kmeans_iters: Lloyd iterations per tree node.
    replica_count: max posting lists per vector (its nearest head plus boundary replicas).
    closure_eps: replica j needs ``d(x, c_j) <= (1 + eps) * d(x, c_1)`` (true L2 distances).
    rng_factor: skip replica c_j if an accepted c_i has ``rng_factor * d(c_i, c_j) < d(x, c_j)``
        (squared distances, as SPTAG).
    assign_candidates: nearest heads examined per vector when choosing replicas.
    posting_cap: max vectors per posting list; 0 = automatic (see ``cap_slack``).
    cap_slack: automatic cap = mean list length * (1 + cap_slack). Lists are fixed-size slots
        on disk, so this bounds padding; a longer list keeps its primaries and nearest replicas,
        and a vector left with no list is re-placed in the nearest list with room.
    graph_degree: out-degree of the head graph.
    graph_candidates: kNN candidates per head before RNG pruning.
    graph_alpha: RNG pruning slack of the head graph (1.0 = strict RNG; larger keeps more
        long edges).
    shard_lists: posting lists per zarr shard file.
    block_rows: vectors per streamed block during assignment.
    seed: random seed.
    threads: build threads (0 = all cores).
    """

    head_ratio: float = 0.05
    posting_size: int = 0
    branching: int = 32
    balance_slack: float = 0.2
    cluster_sample: int = 500_000
    kmeans_iters: int = 12
    replica_count: int = 8
    closure_eps: float = 0.1
    rng_factor: float = 1.0
    assign_candidates: int = 64
    posting_cap: int = 0
    cap_slack: float = 0.15
    graph_degree: int = 32
    graph_candidates: int = 64
    graph_alpha: float = 1.2
    shard_lists: int = 1024
    block_rows: int = 65536
    seed: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        _check(0.0 < self.head_ratio <= 0.5, f"head_ratio must be in (0, 0.5], got {self.head_ratio}")
        _check(self.posting_size >= 0, f"posting_size must be >= 0, got {self.posting_size}")
        _check(2 <= self.branching <= 1024, f"branching must be in 2..1024, got {self.branching}")
        _check(0.0 <= self.balance_slack <= 10, f"balance_slack must be in [0, 10], got {self.balance_slack}")
        _check(self.cluster_sample >= 1000, f"cluster_sample must be >= 1000, got {self.cluster_sample}")
        _check(1 <= self.kmeans_iters <= 1000, f"kmeans_iters must be in 1..1000, got {self.kmeans_iters}")
        _check(1 <= self.replica_count <= 64, f"replica_count must be in 1..64, got {self.replica_count}")
        _check(self.closure_eps >= 0, f"closure_eps must be >= 0, got {self.closure_eps}")
        _check(self.rng_factor > 0, f"rng_factor must be > 0, got {self.rng_factor}")
        _check(self.replica_count <= self.assign_candidates <= 1024,
               f"assign_candidates must be in replica_count..1024, got {self.assign_candidates}")
        _check(self.posting_cap >= 0, f"posting_cap must be >= 0 (0 = auto), got {self.posting_cap}")
        _check(self.cap_slack >= 0, f"cap_slack must be >= 0, got {self.cap_slack}")
        _check(4 <= self.graph_degree <= 256, f"graph_degree must be in 4..256, got {self.graph_degree}")
        _check(self.graph_degree <= self.graph_candidates <= 1024,
               f"graph_candidates must be in graph_degree..1024, got {self.graph_candidates}")
        _check(self.graph_alpha >= 1.0, f"graph_alpha must be >= 1.0, got {self.graph_alpha}")
        _check(1 <= self.shard_lists <= 1 << 20, f"shard_lists must be in 1..1048576, got {self.shard_lists}")
        _check(self.block_rows >= 256, f"block_rows must be >= 256, got {self.block_rows}")
        _check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")


@dataclass(frozen=True)
class SearchParams(_Params):
    """How a query is answered.

    max_postings: nearest heads retrieved from the head index (SPANN's InternalResultNum);
        at most this many posting lists are read per query.
    prune_eps: query-aware pruning: read the list of head j only if
        ``d(q, c_j) <= (1 + prune_eps) * d(q, c_1)`` (true L2 in the head space; for inner
        product the L2 of the MIPS-to-L2 transform, which is non-negative). ``inf`` = off.
    ef: beam width of the head-graph search (0 = automatic: max(max_postings, 32) * 1.5).
    prefetch: before scanning, ask the kernel to read all selected posting ranges at once
        (madvise WILLNEED); pays off when the index is not in the page cache.
    """

    max_postings: int = 64
    prune_eps: float = float("inf")
    ef: int = 0
    prefetch: bool = False

    def __post_init__(self) -> None:
        _check(1 <= self.max_postings <= 65536, f"max_postings must be in 1..65536, got {self.max_postings}")
        _check(self.prune_eps >= 0, f"prune_eps must be >= 0, got {self.prune_eps}")
        _check(self.ef == 0 or self.ef >= self.max_postings,
               f"ef must be 0 (auto) or >= max_postings ({self.max_postings}), got {self.ef}")

    def effective_ef(self) -> int:
        return self.ef or int(max(self.max_postings, 32) * 1.5)
