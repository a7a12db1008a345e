"""The records a search kernel takes: what it searches, how, with which scratch, into what.

Each is a namedtuple of arrays and scalars, so numba passes it as one argument with fixed field
types (a changed field type is a new compiled specialization, so the Python side builds each
record the same way every time: ints as Python ints, ``prune_eps`` as float32, arrays of one
dtype and layout).
"""

from __future__ import annotations

from collections import namedtuple

__all__ = ["HeadIndex", "head_index", "Plan", "Lists", "Direct", "Scratch", "Out", "Candidates", "Early"]

HeadIndex = namedtuple("HeadIndex", ["heads", "walk", "neighbors", "groups", "entries", "seeding"])
HeadIndex.__doc__ = """The heads as a query searches them: ``heads`` float32 or 8-bit (H, Dh) in head space;
``walk`` the heads' :class:`~spann.heads.graph.WalkCodes` (empty: exact walk); ``neighbors`` the
head graph, an :class:`~spann.heads.graph.Adjacency` (or padded int32 (H, R)); ``groups`` the
:class:`~spann.heads.groups.HeadGroups` scanned
instead of walking the graph, None when there are none (build it with :func:`head_index`);
``entries`` int32 (E,) where a walk starts;
``seeding`` the :class:`~spann.heads.graph.EntryGroups` a single query finds the
:data:`~spann.heads.graph.SEEDS` entries nearest it in (no rows: start from every entry)."""



def head_index(heads, walk, neighbors, groups, entries, seeding) -> HeadIndex:
    """A :class:`HeadIndex`; ``groups`` without any group becomes None, so that a kernel
    compiled for it walks the graph and compiles no group search."""
    if groups is not None and groups.centroids.shape[0] == 0:
        groups = None
    return HeadIndex(heads, walk, neighbors, groups, entries, seeding)


Plan = namedtuple("Plan", ["metric", "ef", "m", "budget", "model", "prune_eps", "rerank", "bound_k"])
Plan.__doc__ = """What a query does, fixed by the search parameters and k: ``metric`` the scan
code (:mod:`spann.kernels.distances`); ``ef`` the head search's beam width; ``m`` heads
retrieved (>= the most lists the pruner may choose); ``budget`` lists for the median query;
``model`` float32 the pruner's weights (empty: read ``budget`` lists); ``prune_eps`` float32
the distance-ratio cut; ``rerank`` the re-rank depth of coded lists; ``bound_k`` > 0: re-rank
only the rabitq candidates whose error bound lets them reach the top ``bound_k``."""

Lists = namedtuple("Lists", ["postings", "codebook", "vectors", "delta", "dead", "delta_dead"])
Lists.__doc__ = """What a query reads: ``postings`` the base lists' :class:`~spann.io.postings.PostingsView`;
``codebook`` the encoding's codebook view (None for full vectors); ``vectors`` the vector store's
:class:`~spann.io.vector_store.VectorsView` (re-rank rows of coded lists); ``delta`` the
delta lists of an updated index (full vectors; all empty when there is none); ``dead`` int64
sorted, deleted ids (full) or store rows (coded) of the base lists; ``delta_dead`` int64
sorted, deleted ids still in the delta lists."""

Direct = namedtuple("Direct", ["lists", "rows", "lists_view", "rows_view"])
Direct.__doc__ = """Direct (O_DIRECT) reading, :mod:`spann.io.direct`: ``lists`` and ``rows`` the
:class:`~spann.io.direct.DirectReads` of the posting array and the vector store (``rows``
reads nothing, ``ctx`` 0, for full lists, which have no vector store); ``lists_view`` /
``rows_view`` the postings' and rows' views over those readers' buffers. Kernels take None
instead of a Direct to read through the page cache."""

Scratch = namedtuple("Scratch", ["visited", "tag", "epoch"])
Scratch.__doc__ = """One call's state: ``visited`` uint32 (H,) marks of the graph walk and this
call's ``tag`` (uint32, new per call); ``epoch`` >= 0 the page-request epoch
(:mod:`spann.io.recent`), -1: request nothing, let the reads fault."""

Out = namedtuple("Out", ["top_d", "top_i", "stats"])
Out.__doc__ = """Where a query's answer goes: ``top_d`` float32 (k,) and ``top_i`` int64 (k,)
ascending, ``stats`` int64 (N_STATS,) (see :mod:`spann.search.kernels`)."""

Candidates = namedtuple("Candidates", ["d", "r", "e", "qa"])
Candidates.__doc__ = """Re-rank candidates of coded lists: ``d`` float32 estimates (ascending),
``r`` int64 vector-store rows (-1: none), ``e`` float32 the rabitq estimates' error bounds,
``qa`` float32 (dim,) the sq8 scan's query scratch."""

Early = namedtuple("Early", ["rows", "pos"])
Early.__doc__ = """Rows requested early (int64) and, read directly, where each lands in the
reader's buffer (int64)."""
