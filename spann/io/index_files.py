"""The on-disk index: one zarr v3 group, written atomically, opened with everything validated.

Layout (``FORMAT_VERSION`` 6; see :data:`READABLE_FORMATS` for the older ones read)::

    <index>/zarr.json              group; attributes["spann"]: format version, build id, metric,
                                   dims, entry layout, build parameters and statistics, the
                                   names of the current generation and posting array, the
                                   commit record (generation, live, next_id, ...) and
                                   ``metadata_crc32c``: the crc32c of the canonical JSON of this
                                   whole file without that field (see :func:`root_checksum`)
    <index>/postings/              uint8 (B,): every posting list, contiguous (see spann.format.layout),
                                   sharded by bytes, raw; one file per shard
    <index>/gen-000001/            the in-RAM parts of this generation of the index:
        heads      (H, Dh) float32 head-space centroids (Dh = dim, +1 for inner product); from
                           format 6 uint8 / int8 for 8-bit data under l2 (spann.heads.compact)
        neighbors  (H, R)  int32   head graph, -1 padded
        entries    (E,)    int32   graph entry heads
        head_groups (H1,)  int32   group of each head (when attributes["head_groups"] > 0; H1 =
                                   attributes["head_group_labels"]: the heads at the build or the
                                   last update that split a list; see spann.heads.groups)
        offsets    (H,)    int64   byte offset of list h in postings
        counts     (H,)    int32   entries in list h

Reading list h with plain zarr-python (also in docs/format.md, and tested)::

    g = zarr.open_group(path, mode="r")
    a = g.attrs["spann"]; lay = a["layout"]; gen = g[a["generation_path"]]
    off, c = int(gen["offsets"][h]), int(gen["counts"][h])
    dt, D, L = np.dtype(lay["dtype"]), lay["dim"], lay["label_width"]
    pay = -(-(8 * c + 4 * L * c) // 8) * 8           # sections start 8-byte aligned
    raw = g[a["postings_path"]][off:off + pay + c * D * dt.itemsize]
    ids, vectors = raw[:8 * c].view("<i8"), raw[pay:].view(dt).reshape(c, D)

Every array and generation group carries ``attributes["build_id"]``; opening checks them all
(in-RAM arrays, the posting array, vector store, id map, label lists and delta arrays) against
the root's, checks the root's checksum, accepts every ``zarr.json`` only in exactly the form
spann writes it (no unknown or missing key), reads everything relative to one directory handle
(a concurrent rebuild that swaps the directory cannot mix two builds), verifies every chunk's
crc32c and every value the kernels index with.

Writing is :mod:`spann.io.index_writer`'s: a build writes to a hidden sibling directory and
swaps it into place at the end; an update adds a generation and replaces the root
``zarr.json`` (both through :func:`write_root`, which seals it).
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from spann.codecs.encodings import CODECS
from spann.errors import IndexCorruptError, IndexNotFoundError, SpannError
from spann.format.layout import EntryLayout
from spann.format.zarr_v3 import (canonical_json, check_exact, check_group_meta, check_postings_meta, crc32c,
                                  group_meta, read_json, read_small_array, write_json)
from spann.heads.compact import head_dtype
from spann.heads.pruner import N_WEIGHTS
from spann.io.sources import DirectoryStore
from spann.io.vector_store import StoreLayout
from spann.kernels.metrics import METRICS
from spann.params import BuildParams

__all__ = ["FORMAT_VERSION", "IndexFiles", "directory_bytes", "generation_path", "root_checksum", "seal_root",
           "write_root", "read_root"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 6
#: formats this spann opens. 6: the heads of 8-bit data under l2 are kept in its dtype
#: (:mod:`spann.heads.compact`; float32 before). 5: the root metadata is checksummed (``metadata_crc32c``) and its
#: keys are exactly known. 4 and 3 (3 is 4 without the ``head_group_labels`` attribute) are
#: opened and updated as they are, without a root checksum (they never had one) and without
#: the root key check; ``spann verify`` says so. Every other file's metadata is checked
#: strictly in all of them (spann has always written them the same way). An older spann refuses
#: a newer format by its version.
READABLE_FORMATS = (3, 4, 5, 6)
ROOT_CHECKSUM = "metadata_crc32c"
#: keys of a format-5 root's spann attributes: always; after updates (generation > 1); coded
_ROOT_KEYS = frozenset({
    "format_version", "build_id", "metric", "dim", "n", "dtype", "source_dtype", "layout", "store", "pruner",
    "head_groups", "head_group_labels", "idmap_path", "user_ids", "label_lists_path", "live", "next_id", "max_norm",
    "params", "stats", "generation", "generation_path", "postings_path", "data_crc32c", ROOT_CHECKSUM})
_UPDATE_KEYS = frozenset({"delta_path", "delta_labels_path", "updates_crc32c", "heads_now", "splits"})
_CODED_KEYS = frozenset({"vectors_path"})
POSTINGS = "postings"
VECTORS = "vectors"
IDMAP = "idmap"
LABEL_LISTS = "label_lists"
LOCK = ".spann-lock"  #: lock file of an index's writers (updates)
BUILD_MARK = ".spann-build"  #: file inside a build's temporary directory: pid, host, target
CHECKPOINTS = ".checkpoints"  #: completed stages and shards of a build (``--resume``)


def generation_path(g: int) -> str:
    return f"gen-{g:06d}"


def root_checksum(meta: dict) -> int:
    """crc32c of the root metadata ``meta`` (the whole ``zarr.json`` object) without its
    ``metadata_crc32c`` field, over its canonical JSON (sorted keys, no spaces): any change
    of a key or value (the commit record: generation, live, next_id; metric, layout, paths,
    parameters, ...) changes it. ValueError for values JSON cannot hold (NaN, Inf)."""
    body = copy.deepcopy(meta)
    spann_attrs = body.get("attributes", {}).get("spann")
    if isinstance(spann_attrs, dict):
        spann_attrs.pop(ROOT_CHECKSUM, None)
    return crc32c(canonical_json(body).encode())


def seal_root(meta: dict) -> dict:
    """``meta`` (a root ``zarr.json`` object) with its ``metadata_crc32c`` set."""
    meta["attributes"]["spann"][ROOT_CHECKSUM] = root_checksum(meta)
    return meta


def write_root(path: str | os.PathLike[str], attrs: dict[str, Any]) -> None:
    """Write (atomically, durably) an index's root ``zarr.json`` with spann attributes ``attrs``,
    sealed with its checksum: the one way both writers (builds and updates) commit. (An
    update of a format 3 or 4 index keeps its format: no checksum.)"""
    attrs = {k: v for k, v in attrs.items() if k != ROOT_CHECKSUM}
    meta = group_meta({"spann": attrs})
    if attrs.get("format_version") not in (3, 4):
        seal_root(meta)
    write_json(os.fspath(path), meta)


def read_root(where: str, store=None, path: str | None = None) -> tuple[dict, int]:
    """The spann attributes of an index's root ``zarr.json`` (read from ``store``, or the file
    ``path``) and its format version, checked: a group exactly as spann writes it, a readable
    format, and (format 5 on) the checksum and the exact set of keys. ``where`` names the index in
    messages. IndexNotFoundError when there is no root metadata or no spann attributes."""
    file = f"{where}/zarr.json"
    try:
        root = read_json(path, store=None) if path is not None else read_json("zarr.json", store=store)
    except IndexCorruptError as e:
        if "missing" in str(e):
            raise IndexNotFoundError(f"{where}: not a spann index (no zarr.json)") from None
        raise
    attrs = root.get("attributes")
    attrs = attrs.get("spann") if isinstance(attrs, dict) else None
    if not attrs:
        raise IndexNotFoundError(f"{where}: not a complete spann index (no 'spann' attributes)")
    if not isinstance(attrs, dict):
        raise IndexCorruptError(f"{where}: spann attributes are not a JSON object")
    version = attrs.get("format_version")
    if type(version) is not int or version not in READABLE_FORMATS:
        raise IndexCorruptError(f"{where}: index format {version!r} is not supported by this spann (it reads "
                                f"formats {', '.join(map(str, READABLE_FORMATS))}); rebuild the index with "
                                "`spann build` or use the spann that built it")
    check_group_meta(root, file, {"spann": attrs})
    if version >= 5:
        want = attrs.get(ROOT_CHECKSUM)
        try:
            got = root_checksum(root)
        except (ValueError, TypeError):
            got = None
        if type(want) is not int or want != got:
            raise IndexCorruptError(f"{file}: root metadata checksum mismatch (the metadata was damaged or edited; "
                                    f"restore or rebuild the index)")
        generation = attrs.get("generation")
        layout = attrs.get("layout")
        enc = layout.get("encoding") if isinstance(layout, dict) else None
        codec = CODECS.get(enc) if isinstance(enc, str) else None
        coded = codec is None or codec.coded  # an unknown encoding is refused when the layout is read
        expected = (_ROOT_KEYS | (_UPDATE_KEYS if type(generation) is int and generation > 1 else frozenset())
                    | (_CODED_KEYS if coded else frozenset()))
        unknown, missing = sorted(set(attrs) - expected), sorted(expected - set(attrs))
        if unknown or missing:
            what = f"unknown key {unknown[0]!r}" if unknown else f"missing key {missing[0]!r}"
            raise IndexCorruptError(f"{file}: root metadata is not what spann writes ({what})")
    elif ROOT_CHECKSUM in attrs:
        raise IndexCorruptError(f"{file}: format {version} metadata holds a {ROOT_CHECKSUM} field (damaged format "
                                f"version?)")
    return attrs, version


def _is_index_entry(name: str) -> bool:
    return name in ("zarr.json", POSTINGS, VECTORS, IDMAP, LABEL_LISTS, LOCK, "heads", "graph") \
        or name.startswith("gen-") or name.startswith("zarr.json.tmp-") \
        or name.startswith("postings-") or name.startswith("vectors-")


def _check_disjoint(offsets: np.ndarray, nbytes: np.ndarray, where: str) -> None:
    """Posting lists are 16-byte aligned and no two overlap (a list read as another's bytes
    would hand the kernels ids and rows of the wrong kind)."""
    ne = nbytes > 0
    o, b = offsets[ne], nbytes[ne]
    if np.any(o % 16):
        raise IndexCorruptError(f"{where}: misaligned posting list offsets")
    order = np.argsort(o, kind="stable")
    o, b = o[order], b[order]
    if np.any(o[1:] < o[:-1] + b[:-1]):
        raise IndexCorruptError(f"{where}: posting lists overlap (offsets or layout damaged)")


def _need(attrs: dict, key: str, kind: type | tuple[type, ...], where: str):
    v = attrs.get(key)
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise IndexCorruptError(f"{where}: metadata field {key!r} is missing or has the wrong type")
    return v


class IndexFiles:
    """The in-RAM parts of an index and its attributes, validated. ``store`` (a
    :class:`spann.io.sources.Store`) serves its files; a local directory's store (and descriptor,
    relative to which the posting reader maps shard files) stays open until :meth:`close`.
    Pass ``store`` to read an index elsewhere (zip file, object store); the caller then owns
    and closes it."""

    def __init__(self, path: str | os.PathLike[str], store=None):
        self.path = Path(path) if store is None else path
        self._own_store = store is None
        if store is None:
            if not os.path.lexists(self.path):
                raise IndexNotFoundError(f"{self.path}: no such index directory")
            if not self.path.is_dir():
                raise IndexNotFoundError(f"{self.path}: not a spann index (not a directory)")
            store = DirectoryStore(self.path)
        self.store = store
        self.dir_fd = store.dir_fd
        try:
            self._load(METRICS)
        except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as e:
            self.close()
            if isinstance(e, IndexCorruptError):
                raise
            raise IndexCorruptError(f"{self.path}: malformed metadata ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''})") from None
        except BaseException:
            self.close()
            raise

    def _load(self, METRICS) -> None:
        where = str(self.path)
        attrs, version = read_root(where, store=self.store)
        metric = _need(attrs, "metric", str, where)
        if metric not in METRICS:
            raise IndexCorruptError(f"{where}: unknown metric {metric!r} in the metadata")
        dim = _need(attrs, "dim", int, where)
        n = _need(attrs, "n", int, where)
        if not (1 <= dim <= 1 << 16) or n < 1:
            raise IndexCorruptError(f"{where}: metadata gives dim {dim}, n {n}")
        build_id = _need(attrs, "build_id", str, where)
        layout = EntryLayout.from_dict(_need(attrs, "layout", dict, where))
        if layout.dim != dim:
            raise IndexCorruptError(f"{where}: posting layout dimension {layout.dim} differs from dim {dim}")
        gen = _need(attrs, "generation_path", str, where)
        post = _need(attrs, "postings_path", str, where)
        for p in (gen, post):
            if "/" in p or p.startswith("."):
                raise IndexCorruptError(f"{where}: bad path {p!r} in the metadata")
        generation = attrs.get("generation", 1)
        if type(generation) is not int or generation < 1 or gen != generation_path(generation):
            raise IndexCorruptError(f"{where}: generation {generation!r} does not match the generation path {gen!r}")
        params = _need(attrs, "params", dict, where)
        if version >= 5:  # nested records exactly as written (the checksum already covers their values)
            check_exact(attrs["layout"], layout.to_dict(), f"{where}/zarr.json", "the posting layout")
            try:
                full_params = BuildParams.stored(params).to_dict()
                if "soar_lambda" not in params:  # written before the rule existed
                    del full_params["soar_lambda"]
            except (TypeError, ValueError, SpannError) as e:
                raise IndexCorruptError(f"{where}/zarr.json: unreadable build parameters ({str(e).splitlines()[0]})") \
                    from None
            check_exact(params, full_params, f"{where}/zarr.json", "the build parameters")
        gen_meta = read_json(f"{gen}/zarr.json", store=self.store)
        check_group_meta(gen_meta, f"{where}/{gen}/zarr.json", {"build_id": build_id})
        m = METRICS[metric]
        dh = m.head_dim(layout.codec.head_columns(dim))  # rabitq: rotated heads, padded to whole 64-bit words

        def load(name, dtype, shape):
            rel = f"{gen}/{name}"
            try:
                meta = read_json(f"{rel}/zarr.json", store=self.store)
            except IndexCorruptError as e:
                raise IndexCorruptError(f"{where}: index part {rel} is missing or unreadable ({e})") from None
            a = meta.get("attributes")
            if not isinstance(a, dict) or a.get("build_id") != build_id:
                raise IndexCorruptError(f"{where}: index part {rel} belongs to another build (build ids differ)")
            return read_small_array(rel, dtype=dtype, shape=shape, store=self.store,
                                    attributes={"build_id": build_id})

        hdt = head_dtype(m, layout.dtype, layout.codec.rotated_heads) if version >= 6 else np.dtype(np.float32)
        self.heads = load("heads", hdt, (None, dh))
        H = self.heads.shape[0]
        if H < 1:
            raise IndexCorruptError(f"{where}: index has no heads")
        self.neighbors = load("neighbors", np.int32, (H, None))
        self.entries = load("entries", np.int32, (None,))
        self.offsets = load("offsets", np.int64, (H,))
        self.counts = load("counts", np.int32, (H,))
        if not np.isfinite(self.heads).all():
            raise IndexCorruptError(f"{where}: head vectors contain NaN or Inf")
        if self.neighbors.shape[1] < 1 or self.neighbors.shape[1] > 1024:
            raise IndexCorruptError(f"{where}: head graph degree {self.neighbors.shape[1]} out of range")
        if self.neighbors.size and (self.neighbors.min() < -1 or self.neighbors.max() >= H):
            raise IndexCorruptError(f"{where}: head graph points outside the {H} heads")
        if self.entries.size == 0 or self.entries.size > H or self.entries.min() < 0 or self.entries.max() >= H:
            raise IndexCorruptError(f"{where}: graph entry heads are empty or out of range")
        if self.counts.min() < 0:
            raise IndexCorruptError(f"{where}: negative posting list counts")
        if int(self.counts.sum(dtype=np.int64)) < n:
            raise IndexCorruptError(f"{where}: posting lists hold {int(self.counts.sum())} entries for {n} vectors")
        _check_disjoint(self.offsets, layout.list_bytes_array(self.counts), where)
        self.codebook = {}
        for name, (dt, shape) in layout.codec.codebook_arrays(dim).items():
            a = load(f"code_{name}", dt, shape)
            if not np.isfinite(a).all():
                raise IndexCorruptError(f"{where}: code parameters {name} contain NaN or Inf")
            self.codebook[name] = a
        self.pruner = None
        if attrs.get("pruner"):
            self.pruner = load("pruner", np.float64, (None,))
            if self.pruner.shape != (N_WEIGHTS + 1,) or not np.isfinite(self.pruner).all():
                raise IndexCorruptError(f"{where}: pruner model has shape {self.pruner.shape} or non-finite weights")
        self.head_groups = None
        n_groups = attrs.get("head_groups") or 0
        if n_groups:
            if type(n_groups) is not int or n_groups < 1 or n_groups > H:
                raise IndexCorruptError(f"{where}: bad head group count {n_groups!r} in the metadata")
            self.head_groups = load("head_groups", np.int32, (None,))
            g = self.head_groups
            n_labels = attrs.get("head_group_labels", g.shape[0] if version == 3 else None)  # format 3: not stored
            if type(n_labels) is not int or g.shape[0] != n_labels:
                raise IndexCorruptError(f"{where}: head groups hold {g.shape[0]} labels, the metadata says "
                                        f"{n_labels!r}")
            if g.shape[0] < 1 or g.shape[0] > H or g.min() < 0 or g.max() >= n_groups:
                raise IndexCorruptError(f"{where}: head groups ({g.shape[0]} labels) out of range for {H} heads and "
                                        f"{n_groups} groups")
        self.store_layout = None
        self.vectors_path = None
        if layout.coded:
            self.store_layout = StoreLayout.from_dict(_need(attrs, "store", dict, where))
            if version >= 5:
                check_exact(attrs["store"], self.store_layout.to_dict(), f"{where}/zarr.json",
                            "the vector store layout")
            if self.store_layout.n != n or self.store_layout.dim != dim or self.store_layout.dtype != layout.dtype:
                raise IndexCorruptError(f"{where}: vector store layout disagrees with the index")
            self.vectors_path = _need(attrs, "vectors_path", str, where)
            if "/" in self.vectors_path or self.vectors_path.startswith("."):
                raise IndexCorruptError(f"{where}: bad path {self.vectors_path!r} in the metadata")
        self._load_format3(attrs, where, H, n, layout, load)
        #: (total, shard, inner chunk bytes) of each byte array, as checked here: its reader opens the
        #: shards without reading the metadata again
        self.geometry: dict[str, tuple[int, int, int]] = {}
        for rel in (post, self.vectors_path, self.idmap_path, self.label_lists_path, self.delta_path,
                    self.delta_labels_path):
            if rel is not None:  # the byte arrays: exact metadata of this build (their shards are opened later)
                meta = read_json(f"{rel}/zarr.json", store=self.store)
                a = meta.get("attributes")
                if not isinstance(a, dict) or a.get("build_id") != build_id:
                    raise IndexCorruptError(f"{where}: index part {rel} belongs to another build (build ids differ)")
                self.geometry[rel] = check_postings_meta(meta, f"{where}/{rel}", {"build_id": build_id})
        self.version = version
        self.attrs = attrs
        self.layout = layout
        self.metric = m
        self.postings_path = post
        self.build_id = build_id

    def _load_format3(self, attrs: dict, where: str, H: int, n: int, layout: EntryLayout, load) -> None:
        """Ids, labels and the update state of the current generation (see spann.update.apply)."""
        def path(key, optional=False):
            v = attrs.get(key)
            if v is None and optional:
                return None
            if not isinstance(v, str) or v.startswith(".") or ".." in v.split("/") or v.startswith("/"):
                raise IndexCorruptError(f"{where}: metadata field {key!r} is missing or not a relative path")
            return v

        self.idmap_path = path("idmap_path")
        self.live = _need(attrs, "live", int, where)
        self.next_id = _need(attrs, "next_id", int, where)
        if self.live < 0 or self.next_id < 0:
            raise IndexCorruptError(f"{where}: negative live count or next id in the metadata")
        self.label_lists_path = path("label_lists_path", optional=True)
        self.delta_path = path("delta_path", optional=True)
        self.delta_labels_path = path("delta_labels_path", optional=True)
        self.base_live = np.ones(H, np.uint8)
        self.dead_keys = np.zeros(0, np.int64)
        self.dead_ids = np.zeros(0, np.int64)
        self.delta_dead = np.zeros(0, np.int64)
        self.split_floor = np.zeros(H, np.int32)  # no split has failed (loaded below after updates)
        if int(attrs.get("generation", 1)) > 1:
            self.split_floor = load("split_floor", np.int64, (H,))
            self.base_live = load("base_live", np.uint8, (H,))
            self.dead_keys = load("dead_keys", np.int64, (None,))
            self.dead_ids = load("dead_ids", np.int64, (None,))
            self.delta_dead = load("delta_dead", np.int64, (None,))
            for name, a in (("dead_keys", self.dead_keys), ("dead_ids", self.dead_ids),
                            ("delta_dead", self.delta_dead)):
                if a.size > 1 and np.any(a[1:] <= a[:-1]):
                    raise IndexCorruptError(f"{where}: {name} are not sorted")
        self.labels = None
        if self.label_lists_path is not None or layout.label_width:
            vals = load("label_values", np.int32, (None,))
            V = vals.shape[0]
            if V > 1 and np.any(vals[1:] <= vals[:-1]) or V and vals[0] < 0:
                raise IndexCorruptError(f"{where}: label values are not sorted non-negative")
            self.labels = {"values": vals, "counts": load("label_counts", np.int64, (V,)),
                           "listed": load("label_listed", np.uint8, (V,)),
                           "offsets": load("label_offsets", np.int64, (V,)),
                           "list_counts": load("label_list_counts", np.int32, (V,))}
            if self.delta_labels_path is not None:
                self.labels["delta_offsets"] = load("delta_label_offsets", np.int64, (V,))
                self.labels["delta_counts"] = load("delta_label_counts", np.int32, (V,))
        self.delta = None
        if self.delta_path is not None:
            ids = load("delta_ids", np.int64, (None,))
            self.delta = {"offsets": load("delta_offsets", np.int64, (H,)),
                          "counts": load("delta_counts", np.int32, (H,)), "ids": ids,
                          "locs": load("delta_locs", np.int64, ids.shape)}
            if ids.size > 1 and np.any(ids[1:] <= ids[:-1]):
                raise IndexCorruptError(f"{where}: delta ids are not sorted")

    def close(self) -> None:
        if self._own_store:
            self.store.close()
        self.dir_fd = -1


def directory_bytes(path: Path) -> int:
    """Total size of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
