"""The on-disk index: one zarr v3 group. The only module that imports zarr.

Layout (``FORMAT_VERSION`` 1)::

    <index>/zarr.json            group; attributes["spann"] = format, metric, dims, params, stats
    heads/vectors   (H, D)       head vectors (data dtype; float32 for cosine)
    heads/ids       (H,)         int64 base ids of the heads (heads are real vectors)
    heads/ext       (H,)         float32 extra head-space coordinate (inner product; else zeros)
    graph/neighbors (H, R)       int32 head graph, -1 padded
    graph/entries   (E,)         int32 entry heads
    postings/counts (H,)         int32 vectors in each posting list
    postings/vectors (H, CAP, D) one inner chunk (1, CAP, D) per list, sharded, raw little-endian
    postings/ids    (H, CAP)     int32/int64 ids, same chunking, fill -1

Reading: heads, graph and counts are loaded through zarr-python once. Posting lists are read
directly: every shard file is memory mapped, its index (``16 * n`` bytes + crc32c, at the end)
is checked, and the kernels get numpy views of the chunk bytes (zero copy; see STORAGE.md).
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from spann.errors import IndexCorruptError, IndexExistsError, IndexNotFoundError

__all__ = ["FORMAT_VERSION", "IndexWriter", "check_target", "IndexFiles", "PostingStore", "evict_from_page_cache",
           "directory_bytes"]

FORMAT_VERSION = 1
_ABSENT = np.uint64(2**64 - 1)


def _raw_array(group, name: str, data: np.ndarray, chunk_rows: int | None = None) -> None:
    rows = data.shape[0]
    chunk_rows = chunk_rows or max(1, min(rows, (1 << 24) // max(1, data[:1].nbytes)))
    group.create_array(name, data=data, chunks=(chunk_rows,) + data.shape[1:], compressors=None,
                       filters=None, config={"write_empty_chunks": True})


#: the only entries a spann index directory holds (any format version)
INDEX_ENTRIES = frozenset({"zarr.json", "heads", "graph", "postings", "lists", "vectors", "idmap", "labels"})


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
    meta = path / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {}).get("spann") if meta.is_file() else None
    except (OSError, ValueError, AttributeError):
        attrs = None
    if not isinstance(attrs, dict) or "format_version" not in attrs:
        raise IndexExistsError(f"{path}: is not a spann index (no spann metadata in zarr.json); refusing to replace it")
    foreign = sorted(e for e in os.listdir(path) if e not in INDEX_ENTRIES)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise IndexExistsError(f"{path}: holds files that are not part of a spann index ({shown}); refusing to "
                               f"replace it")


class IndexWriter:
    """Writes an index into ``tmp`` (a fresh directory); :meth:`commit` renames it to ``final``.
    :meth:`abort` removes the temporary directory, so a failed build leaves nothing behind."""

    def __init__(self, final: Path, overwrite: bool = False):
        import zarr
        self.final = Path(final)
        check_target(self.final, overwrite)
        self.tmp = self.final.with_name(f".{self.final.name}.building-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self.group = zarr.open_group(str(self.tmp), mode="w-", zarr_format=3)
        self._vec = self._ids = None

    def write_heads(self, vectors: np.ndarray, ids: np.ndarray, ext: np.ndarray) -> None:
        _raw_array(self.group, "heads/vectors", np.ascontiguousarray(vectors))
        _raw_array(self.group, "heads/ids", ids.astype(np.int64))
        _raw_array(self.group, "heads/ext", ext.astype(np.float32))

    def write_graph(self, neighbors: np.ndarray, entries: np.ndarray) -> None:
        _raw_array(self.group, "graph/neighbors", neighbors.astype(np.int32))
        _raw_array(self.group, "graph/entries", entries.astype(np.int32))

    def create_postings(self, n_lists: int, cap: int, dim: int, dtype: np.dtype, id_dtype: np.dtype,
                        shard_lists: int) -> None:
        s = int(min(shard_lists, n_lists))
        self.shard_lists = s
        cfg = {"write_empty_chunks": True}
        self._vec = self.group.create_array(
            "postings/vectors", shape=(n_lists, cap, dim), dtype=dtype, chunks=(1, cap, dim),
            shards=(s, cap, dim), compressors=None, filters=None, fill_value=0, config=cfg)
        self._ids = self.group.create_array(
            "postings/ids", shape=(n_lists, cap), dtype=id_dtype, chunks=(1, cap), shards=(s, cap),
            compressors=None, filters=None, fill_value=-1, config=cfg)

    def write_shard(self, start: int, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Lists ``[start, start + len(vectors))``, one whole shard (``start`` a multiple of the
        shard size), written at once as the shard file zarr would write: the raw inner chunks in
        order, then the index of (offset, nbytes) little-endian uint64 pairs and its crc32c.
        (zarr-python's own path costs ~1 ms per inner chunk; this is a plain file write.)"""
        for arr, block in ((self._vec, vectors), (self._ids, ids)):
            _write_raw_shard(self.tmp / arr.path, start // self.shard_lists, self.shard_lists,
                             np.ascontiguousarray(block, dtype=arr.dtype))

    def write_counts(self, counts: np.ndarray) -> None:
        _raw_array(self.group, "postings/counts", counts.astype(np.int32))

    def commit(self, attrs: dict[str, Any], overwrite: bool = False) -> Path:
        """Store the attributes (written last: their presence marks a complete index) and move the
        directory into place."""
        self.group.attrs["spann"] = attrs
        if os.path.lexists(self.final):
            check_target(self.final, overwrite)  # again: it may have changed during the build
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
            os.replace(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _write_raw_shard(array_dir: Path, shard: int, shard_lists: int, block: np.ndarray) -> None:
    import google_crc32c
    m = block.shape[0]
    chunk_bytes = block[:1].nbytes
    index = np.full((shard_lists, 2), _ABSENT, dtype="<u8")
    index[:m, 0] = np.arange(m, dtype=np.uint64) * np.uint64(chunk_bytes)
    index[:m, 1] = chunk_bytes
    idx = index.tobytes()
    f = array_dir.joinpath("c", str(shard), *(["0"] * (block.ndim - 1)))
    f.parent.mkdir(parents=True, exist_ok=True)
    with open(f, "wb") as fh:
        fh.write(memoryview(block.astype(block.dtype.newbyteorder("<"), copy=False)).cast("B"))
        fh.write(idx)
        fh.write(google_crc32c.value(idx).to_bytes(4, "little"))


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise IndexCorruptError(f"{p}: missing (incomplete index)") from None
    except json.JSONDecodeError as e:
        raise IndexCorruptError(f"{p}: unreadable metadata ({e})") from None


class IndexFiles:
    """The in-RAM parts of an index, read through zarr-python, plus its attributes."""

    def __init__(self, path: str | os.PathLike[str]):
        import zarr
        self.path = Path(path)
        if not self.path.exists():
            raise IndexNotFoundError(f"{self.path}: no such index directory")
        meta = self.path / "zarr.json"
        if not meta.exists():
            raise IndexNotFoundError(f"{self.path}: not a spann index (no zarr.json)")
        attrs = _read_json(meta).get("attributes", {}).get("spann")
        if not attrs:
            raise IndexNotFoundError(f"{self.path}: not a complete spann index (no 'spann' attributes)")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise IndexCorruptError(f"{self.path}: index format {attrs.get('format_version')} is not "
                                    f"supported (this spann reads {FORMAT_VERSION})")
        self.attrs = attrs
        try:
            g = zarr.open_group(str(self.path), mode="r")
            self.head_vectors = self._load(g, "heads/vectors")
            self.head_ids = self._load(g, "heads/ids")
            self.head_ext = self._load(g, "heads/ext")
            self.neighbors = self._load(g, "graph/neighbors")
            self.entries = self._load(g, "graph/entries")
            self.counts = self._load(g, "postings/counts")
        except IndexCorruptError:
            raise
        except Exception as e:  # zarr raises various errors on damaged metadata/chunks
            raise IndexCorruptError(f"{self.path}: cannot read index arrays ({type(e).__name__}: {e})") from None

    def _load(self, g, name: str) -> np.ndarray:
        if name not in g:
            raise IndexCorruptError(f"{self.path}: missing index part {name}")
        a = g[name]
        chunks = a.nchunks
        stored = sum(1 for _ in (self.path / name / "c").rglob("*") if _.is_file()) if (self.path / name / "c").exists() else 0
        if stored < chunks:
            raise IndexCorruptError(f"{self.path}: index part {name} is incomplete ({stored} of {chunks} chunks)")
        return np.ascontiguousarray(a[...])


def _check_sharding(meta: dict, where: Path) -> tuple[list[int], list[int]]:
    """Shard and inner chunk shapes, if the codecs are the raw layout the fast path reads."""
    try:
        shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
        (codec,) = meta["codecs"]
        cfg = codec["configuration"]
        ok = (codec["name"] == "sharding_indexed" and cfg.get("index_location", "end") == "end"
              and [c["name"] for c in cfg["codecs"]] == ["bytes"]
              and cfg["codecs"][0].get("configuration", {}).get("endian", "little") == "little"
              and [c["name"] for c in cfg["index_codecs"]] == ["bytes", "crc32c"]
              and meta["chunk_key_encoding"]["name"] == "default"
              and meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/") == "/")
        inner = cfg["chunk_shape"]
    except (KeyError, ValueError, TypeError):
        ok = False
    if not ok:
        raise IndexCorruptError(f"{where}: postings are not in spann's raw sharded layout")
    return shard, inner


class _ShardedArray:
    """Direct reader of one sharded posting array: mmaps + per-list element offsets."""

    def __init__(self, root: Path, name: str, n_lists: int, counts: np.ndarray):
        self.dir = root / name
        meta = _read_json(self.dir / "zarr.json")
        shard, inner = _check_sharding(meta, self.dir)
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        if inner[0] != 1 or shard[1:] != inner[1:]:
            raise IndexCorruptError(f"{self.dir}: unexpected chunking {inner} in shards {shard}")
        self.shard_lists = int(shard[0])
        self.row_elems = int(np.prod(inner[1:]))  # elements per list slot (CAP * D or CAP)
        self.chunk_bytes = self.row_elems * self.dtype.itemsize
        n_shards = -(-n_lists // self.shard_lists)
        self.maps: list[mmap.mmap] = []
        self.paths: list[Path] = []
        self.views: list[np.ndarray] = []
        self.offsets = np.zeros(n_lists, np.int64)  # in elements of self.dtype
        self.list_shard = (np.arange(n_lists) // self.shard_lists).astype(np.int32)
        import google_crc32c
        for s in range(n_shards):
            f = self.dir.joinpath("c", str(s), *(["0"] * (len(inner) - 1)))
            try:
                fd = os.open(f, os.O_RDONLY)
            except FileNotFoundError:
                raise IndexCorruptError(f"{f}: posting shard {s} is missing") from None
            try:
                size = os.fstat(fd).st_size
                n_idx = self.shard_lists * 16 + 4
                if size < n_idx:
                    raise IndexCorruptError(f"{f}: shard file is truncated ({size} bytes)")
                mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
            idx_bytes = mm[size - n_idx:size - 4]
            crc = int.from_bytes(mm[size - 4:size], "little")
            if google_crc32c.value(idx_bytes) != crc:
                mm.close()
                raise IndexCorruptError(f"{f}: shard index checksum mismatch (corrupt posting shard {s})")
            pairs = np.frombuffer(idx_bytes, dtype="<u8").reshape(-1, 2)
            lo = s * self.shard_lists
            hi = min(n_lists, lo + self.shard_lists)
            pr = pairs[: hi - lo]
            absent = (pr[:, 0] == _ABSENT) & (pr[:, 1] == _ABSENT)
            if np.any(absent & (counts[lo:hi] > 0)):
                mm.close()
                raise IndexCorruptError(f"{f}: non-empty posting list missing from shard {s}")
            present = ~absent
            if np.any(pr[present, 1] != self.chunk_bytes) or np.any(pr[present, 0] + pr[present, 1] > size - n_idx):
                mm.close()
                raise IndexCorruptError(f"{f}: shard index points outside the file or has wrong chunk sizes")
            if np.any(pr[present, 0] % self.dtype.itemsize):
                mm.close()
                raise IndexCorruptError(f"{f}: chunk offsets are not aligned to {self.dtype.itemsize} bytes")
            offs = np.where(present, pr[:, 0], 0).astype(np.int64) // self.dtype.itemsize
            self.offsets[lo:hi] = offs
            try:
                mm.madvise(mmap.MADV_RANDOM)
            except (AttributeError, OSError):
                pass
            self.maps.append(mm)
            self.paths.append(f)
            self.views.append(np.frombuffer(mm, dtype=self.dtype, count=(size - n_idx) // self.dtype.itemsize))

    def addresses(self) -> np.ndarray:
        return np.array([v.ctypes.data for v in self.views], dtype=np.int64)

    def files(self) -> list[Path]:
        return list(self.paths)

    def drop_cache(self) -> None:
        """Unmap our pages (MADV_DONTNEED) and drop the files from the page cache, so the next
        read of any list comes from the device."""
        for mm in self.maps:
            mm.madvise(mmap.MADV_DONTNEED)
        evict_from_page_cache(self.paths)

    def close(self) -> None:
        self.views = []
        for mm in self.maps:
            try:
                mm.close()
            except BufferError:  # a caller still holds a view; the map closes with it
                pass
        self.maps = []


class PostingStore:
    """Memory-mapped posting lists: vectors and ids as numba-ready views plus offsets."""

    def __init__(self, path: Path, counts: np.ndarray, dim: int, ids_in_ram: bool = True):
        from numba.typed import List
        n = counts.shape[0]
        self.vectors = _ShardedArray(path, "postings/vectors", n, counts)
        self.ids = _ShardedArray(path, "postings/ids", n, counts)
        self.cap = self.vectors.row_elems // dim
        if self.vectors.row_elems != self.cap * dim or self.ids.row_elems != self.cap:
            raise IndexCorruptError(f"{path}: posting arrays disagree on the list capacity")
        if np.any(counts > self.cap) or np.any(counts < 0):
            raise IndexCorruptError(f"{path}: posting counts exceed the list capacity {self.cap}")
        self.vec_views = List(self.vectors.views)
        # ids are 4-8 bytes per entry (a few % of the vectors): copied to RAM they cost no
        # second random read per posting list on a cold query
        self.ids_in_ram = ids_in_ram
        self.id_views = List([np.array(v) for v in self.ids.views] if ids_in_ram else self.ids.views)
        self.list_shard = self.vectors.list_shard
        self.vec_off = self.vectors.offsets
        self.id_off = self.ids.offsets
        self.vec_addr = self.vectors.addresses()
        self.id_addr = self.ids.addresses()

    def files(self) -> list[Path]:
        return self.vectors.files() + self.ids.files()

    def drop_cache(self) -> None:
        self.vectors.drop_cache()
        if not self.ids_in_ram:
            self.ids.drop_cache()

    def ram_bytes(self) -> int:
        """Bytes this store holds in anonymous memory (ids copied to RAM, offsets)."""
        ids = sum(v.nbytes for v in self.id_views) if self.ids_in_ram else 0
        return ids + sum(a.nbytes for a in (self.list_shard, self.vec_off, self.id_off))

    def close(self) -> None:
        self.vec_views = self.id_views = None
        self.vectors.close()
        self.ids.close()


def evict_from_page_cache(files: list[Path]) -> None:
    """Drop these files' pages from the page cache (``POSIX_FADV_DONTNEED``; no root needed).
    Pages still mapped by a process stay resident: unmap (or MADV_DONTNEED) them first."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def directory_bytes(path: Path) -> int:
    """Total size of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


_libc = ctypes.CDLL(None, use_errno=True)
madvise_fn = _libc.madvise
madvise_fn.argtypes = [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
madvise_fn.restype = ctypes.c_int
MADV_WILLNEED = 3
PAGE = mmap.PAGESIZE
