"""The on-disk index: one zarr v3 group, written atomically, opened with everything validated.

Layout (``FORMAT_VERSION`` 5; see :data:`READABLE_FORMATS` for the older ones read)::

    <index>/zarr.json              group; attributes["spann"]: format version, build id, metric,
                                   dims, entry layout, build parameters and statistics, the
                                   names of the current generation and posting array, the
                                   commit record (generation, live, next_id, ...) and
                                   ``metadata_crc32c``: the crc32c of the canonical JSON of this
                                   whole file without that field (see :func:`root_checksum`)
    <index>/postings/              uint8 (B,): every posting list, contiguous (see spann.format.layout),
                                   sharded by bytes, raw; one file per shard
    <index>/gen-000001/            the in-RAM parts of this generation of the index:
        heads      (H, Dh) float32 head-space centroids (Dh = dim, +1 for inner product)
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
crc32c and every value the kernels index with. A build writes to a hidden sibling directory and
swaps it into place at the end; an update replaces the root ``zarr.json`` (both through
:func:`write_root`, which seals it).
"""

from __future__ import annotations

import ctypes
import copy
import logging
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from spann.codecs.encodings import CODECS
from spann.errors import IndexCorruptError, IndexExistsError, IndexNotFoundError, SpannError
from spann.format.layout import EntryLayout
from spann.format.zarr_v3 import (canonical_json, check_exact, check_group_meta, check_postings_meta, crc32c,
                                  group_meta, read_json, read_small_array, write_json, write_postings_meta,
                                  write_shard, write_small_array)
from spann.heads.pruner import N_WEIGHTS
from spann.io.sources import DirectoryStore
from spann.io.vector_store import StoreLayout
from spann.kernels.metrics import METRICS
from spann.params import BuildParams

__all__ = ["FORMAT_VERSION", "IndexWriter", "IndexFiles", "check_target", "directory_bytes", "stale_builds",
           "swap_directories", "root_checksum", "seal_root", "write_root", "read_root"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 5
#: formats this spann opens. 5: the root metadata is checksummed (``metadata_crc32c``) and its
#: keys are exactly known. 4 and 3 (3 is 4 without the ``head_group_labels`` attribute) are
#: opened and updated as they are, without a root checksum (they never had one) and without
#: the root key check; ``spann verify`` says so. Every other file's metadata is checked
#: strictly in all three (spann has always written them the same way). An older spann refuses
#: 5 by its version.
READABLE_FORMATS = (3, 4, 5)
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


def _read_mark(p: Path) -> dict:
    try:
        m = read_json(str(p / BUILD_MARK))
        return m if isinstance(m, dict) else {}
    except (IndexCorruptError, OSError):
        return {}


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
    format, and (format 5) the checksum and the exact set of keys. ``where`` names the index in
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


def check_target(path: Path, overwrite: bool) -> None:
    """Refuse to build into ``path`` unless it is absent, or ``overwrite`` is set and it is a
    spann index (metadata present, nothing else inside). Nothing is touched either way."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise IndexExistsError(f"{path}: already exists (use overwrite=True / --overwrite to replace a spann index)")
    if path.is_symlink() or not path.is_dir():
        raise IndexExistsError(f"{path}: is not a spann index directory; refusing to replace it")
    try:
        attrs = read_json(str(path / "zarr.json")).get("attributes", {}).get("spann")
    except (IndexCorruptError, AttributeError, OSError):
        attrs = None
    if not isinstance(attrs, dict) or "format_version" not in attrs:
        raise IndexExistsError(f"{path}: is not a spann index (no spann metadata in zarr.json); refusing to replace it")
    foreign = sorted(e for e in os.listdir(path) if not _is_index_entry(e))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise IndexExistsError(f"{path}: holds files that are not part of a spann index ({shown}); refusing to "
                               f"replace it")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_builds(final: Path) -> list[tuple[Path, bool]]:
    """Temporary directories of earlier builds of ``final``: (path, is_ours_and_dead). A
    directory is ours if it holds our build mark; dead if its process is gone (same host)."""
    final = Path(final)
    out = []
    parent = final.parent if final.parent.exists() else None
    if parent is None:
        return out
    prefix = f".{final.name}.building-"
    for e in os.listdir(parent):
        if not e.startswith(prefix):
            continue
        p = parent / e
        try:
            mark = read_json(str(p / BUILD_MARK))
            ours = mark.get("target") == str(final.resolve()) and mark.get("host") == socket.gethostname()
            dead = ours and not _pid_alive(int(mark.get("pid", -1)))
        except (IndexCorruptError, OSError, ValueError, TypeError):
            ours = dead = False
        out.append((p, bool(ours and dead)))
    return out


_RENAME_EXCHANGE = 2


def swap_directories(a: Path, b: Path) -> bool:
    """Atomically exchange two directory entries (Linux renameat2 RENAME_EXCHANGE). Returns
    False where the system cannot (the caller then falls back to two renames)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        f = libc.renameat2
    except (OSError, AttributeError):
        return False
    f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    f.restype = ctypes.c_int
    AT_FDCWD = -100
    r = f(AT_FDCWD, os.fsencode(str(a)), AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    return r == 0


def put_shard(build_dir: Path, name: str, shard: int, data: np.ndarray, shard_bytes: int,
              chunk_bytes: int) -> tuple[list[int], int]:
    """Write shard ``shard`` of byte array ``name`` into a build directory, then its checkpoint
    record (crc, file size); returns both. Any process that sees the directory may call it."""
    crc = [int(data.nbytes), crc32c(np.ascontiguousarray(data).tobytes())]
    final = Path(build_dir) / name / "c" / str(shard)
    tmp = final.with_name(f".{shard}.tmp-{uuid.uuid4().hex[:12]}")  # a task run twice at once: whole files only
    try:
        size = write_shard(str(tmp), data, shard_bytes, chunk_bytes)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_json(str(Path(build_dir) / CHECKPOINTS / f"shard.{name}.{shard}.json"), {"crc": crc, "file_bytes": size},
               fsync=False)
    return crc, size


class IndexWriter:
    """Writes an index into a hidden temporary sibling of ``final``; :meth:`commit` swaps it into
    place; :meth:`abort` removes it (a failed build leaves nothing behind)."""

    def __init__(self, final: Path, overwrite: bool = False, *, resume: bool = False, fingerprint: str = ""):
        self.final = Path(final)
        check_target(self.final, overwrite)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.resumed = False
        self.shards_reused = 0
        self._crcs: dict[str, dict[str, list[int]]] = {}
        for p, dead in stale_builds(self.final):
            mark = _read_mark(p)
            if resume and dead and mark.get("fingerprint") == fingerprint and not self.resumed:
                self.tmp, self.build_id, self.resumed = p, str(mark["build_id"]), True
                logger.info("resuming the interrupted build in %s", p)
                continue
            if dead:
                shutil.rmtree(p, ignore_errors=True)
                why = " (different data or parameters)" if resume and mark.get("fingerprint") else ""
                logger.warning("removed %s: temporary directory of an interrupted build%s", p, why)
            else:
                logger.warning("%s looks like the temporary directory of another build; left alone", p)
        if resume and not self.resumed:
            logger.info("nothing to resume: building from the start")
        if not self.resumed:
            self.build_id = uuid.uuid4().hex
            self.tmp = self.final.with_name(f".{self.final.name}.building-{self.build_id[:12]}")
            self.tmp.mkdir()
        write_json(str(self.tmp / BUILD_MARK), {"pid": os.getpid(), "host": socket.gethostname(),
                                                "target": str(self.final.resolve()), "build_id": self.build_id,
                                                "fingerprint": fingerprint})
        self.generation = 1
        self.gen_dir = self.tmp / generation_path(self.generation)
        self.gen_dir.mkdir(exist_ok=True)
        self.ckpt = self.tmp / CHECKPOINTS
        self.ckpt.mkdir(exist_ok=True)
        self._arrays: dict[str, tuple[int, int, int]] = {}

    # -- checkpoints (resume) -------------------------------------------------------------------
    def stage_done(self, stage: str) -> bool:
        return (self.ckpt / f"{stage}.done").exists()

    def save_stage(self, stage: str, arrays: dict[str, np.ndarray], meta: dict | None = None) -> None:
        """Checkpoint a completed stage: its arrays (.npy, no pickle), then its marker."""
        for k, a in arrays.items():
            np.save(self.ckpt / f"{stage}.{k}.npy", np.ascontiguousarray(a), allow_pickle=False)
        write_json(str(self.ckpt / f"{stage}.done"), {"meta": meta or {}, "arrays": sorted(arrays)}, fsync=False)

    def load_stage(self, stage: str) -> tuple[dict[str, np.ndarray], dict]:
        rec = read_json(str(self.ckpt / f"{stage}.done"))
        arrays = {k: np.load(self.ckpt / f"{stage}.{k}.npy", allow_pickle=False) for k in rec["arrays"]}
        return arrays, rec["meta"]

    def shard_done(self, name: str, shard: int) -> int:
        """Bytes of shard ``shard`` of ``name`` if a resumed build already wrote it (0 if not)."""
        f = self.ckpt / f"shard.{name}.{shard}.json"
        if not f.exists():
            return 0
        rec = read_json(str(f))
        self._crcs.setdefault(name, {})[str(shard)] = rec["crc"]
        self.shards_reused += 1
        return int(rec["file_bytes"])

    def write_array(self, name: str, data: np.ndarray) -> None:
        """A small (in-RAM) array of the current generation."""
        write_small_array(str(self.gen_dir / name), data, {"build_id": self.build_id})

    def begin_array(self, name: str, total_bytes: int, shard_bytes: int, chunk_bytes: int) -> None:
        """Start the sharded byte array ``name`` (postings or vectors)."""
        self._arrays[name] = (total_bytes, shard_bytes, chunk_bytes)
        write_postings_meta(str(self.tmp / name), total_bytes, shard_bytes, chunk_bytes, {"build_id": self.build_id})

    def write_shard(self, name: str, shard: int, data: np.ndarray) -> int:
        """Shard ``shard`` of byte array ``name``: its used bytes (uint8, from the shard start)."""
        _, shard_bytes, chunk_bytes = self._arrays[name]
        crc, size = put_shard(self.tmp, name, shard, data, shard_bytes, chunk_bytes)
        self._crcs.setdefault(name, {})[str(shard)] = crc
        return size

    def shard_geometry(self, name: str) -> tuple[int, int]:
        """(shard bytes, inner chunk bytes) of a begun byte array."""
        return self._arrays[name][1], self._arrays[name][2]

    def adopt_shard(self, name: str, shard: int) -> int:
        """Record a shard that another process wrote with :func:`put_shard` (a distributed
        build); returns its file bytes."""
        rec = read_json(str(self.ckpt / f"shard.{name}.{shard}.json"))
        self._crcs.setdefault(name, {})[str(shard)] = rec["crc"]
        return int(rec["file_bytes"])

    def commit(self, attrs: dict[str, Any], overwrite: bool = False) -> Path:
        """Write the group metadata (last: its presence marks a complete index), make it durable,
        and swap the directory into place."""
        attrs = {**attrs, "format_version": FORMAT_VERSION, "build_id": self.build_id,
                 "generation": self.generation, "generation_path": generation_path(self.generation),
                 "postings_path": POSTINGS, "data_crc32c": self._crcs}
        if VECTORS in self._arrays:
            attrs["vectors_path"] = VECTORS
        write_json(str(self.gen_dir / "zarr.json"), group_meta({"build_id": self.build_id}), fsync=False)
        shutil.rmtree(self.ckpt, ignore_errors=True)
        _fsync_tree(self.tmp)
        os.remove(self.tmp / BUILD_MARK)
        write_root(self.tmp / "zarr.json", attrs)
        if os.path.lexists(self.final):
            check_target(self.final, overwrite)  # again: it may have changed during the build
            if swap_directories(self.tmp, self.final):
                shutil.rmtree(self.tmp, ignore_errors=True)  # now holds the old index
            else:
                old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
                os.replace(self.final, old)
                os.replace(self.tmp, self.final)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.final)
        _fsync_dir(self.final.parent)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _fsync_dir(p: Path) -> None:
    try:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


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
                full_params = BuildParams.from_dict(params).to_dict()
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

        self.heads = load("heads", np.float32, (None, dh))
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
        self.split_floor = np.zeros(H, np.int64)
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
