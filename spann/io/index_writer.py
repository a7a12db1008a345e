"""Writing an index: the one writer of the on-disk format (see :mod:`spann.io.index_files`).

Both kinds of generation go through :class:`GenerationArrays`, which writes a generation's
in-RAM arrays and the sharded byte arrays (each stamped with the index's build id, every
shard's crc32c recorded for the root metadata):

- :class:`IndexWriter`: a build. Everything goes into a hidden temporary sibling of the
  target (resumable: completed stages and shards are checkpointed), then the directory is
  swapped into place.
- :class:`GenerationWriter`: an update batch. Generation g + 1 is written beside generation g
  (unchanged arrays hard-linked), then the root ``zarr.json`` is replaced.

Either way the root metadata is written last, by :func:`spann.io.index_files.write_root`.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import shutil
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from spann.errors import IndexCorruptError, IndexExistsError
from spann.format.zarr_v3 import (crc32c, group_meta, read_json, write_json, write_postings_meta, write_shard,
                                  write_small_array)
from spann.io.index_files import (BUILD_MARK, CHECKPOINTS, FORMAT_VERSION, LOCK, POSTINGS, VECTORS, _is_index_entry,
                                  generation_path, write_root)

__all__ = ["GenerationArrays", "IndexWriter", "GenerationWriter", "check_target", "stale_builds",
           "swap_directories", "put_shard", "writer_lock", "link_tree"]

logger = logging.getLogger(__name__)


def _read_mark(p: Path) -> dict:
    try:
        m = read_json(str(p / BUILD_MARK))
        return m if isinstance(m, dict) else {}
    except (IndexCorruptError, OSError):
        return {}



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


def _put_file(array_dir: Path, shard: int, data: np.ndarray, shard_bytes: int,
              chunk_bytes: int) -> tuple[list[int], int]:
    """Write shard file ``shard`` of the byte array in ``array_dir`` whole (a temporary file
    renamed into place); returns its record (used bytes, crc32c) and its file size."""
    data = np.ascontiguousarray(data)
    crc = [int(data.nbytes), crc32c(data.tobytes())]
    final = Path(array_dir) / "c" / str(shard)
    tmp = final.with_name(f".{shard}.tmp-{uuid.uuid4().hex[:12]}")  # a task run twice at once: whole files only
    try:
        size = write_shard(str(tmp), data, shard_bytes, chunk_bytes)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return crc, size


def put_shard(build_dir: Path, name: str, shard: int, data: np.ndarray, shard_bytes: int,
              chunk_bytes: int) -> tuple[list[int], int]:
    """Write shard ``shard`` of byte array ``name`` into a build directory, then its checkpoint
    record (crc, file size); returns both. Any process that sees the directory may call it."""
    crc, size = _put_file(Path(build_dir) / name, shard, data, shard_bytes, chunk_bytes)
    write_json(str(Path(build_dir) / CHECKPOINTS / f"shard.{name}.{shard}.json"), {"crc": crc, "file_bytes": size},
               fsync=False)
    return crc, size


class GenerationArrays:
    """The arrays of one generation being written: in-RAM arrays into ``gen_dir``, sharded
    byte arrays into :meth:`bytes_dir`, each stamped with ``build_id``; ``crcs`` maps each byte
    array to its shards' records (used bytes, crc32c) for the root metadata."""

    build_id: str
    gen_dir: Path

    def _start(self) -> None:
        self._arrays: dict[str, tuple[int, int, int]] = {}
        self.crcs: dict[str, dict[str, list[int]] | None] = {}

    def bytes_dir(self, name: str) -> Path:
        """Where byte array ``name`` lives."""
        raise NotImplementedError

    def write_array(self, name: str, data: np.ndarray) -> None:
        """A small (in-RAM) array of this generation."""
        write_small_array(str(self.gen_dir / name), np.ascontiguousarray(data), {"build_id": self.build_id})

    def link_array(self, src: Path, name: str | None = None) -> None:
        """Share an array (or any file tree) written earlier: hard links to ``src``'s files
        under ``gen_dir / name`` (default: ``src``'s name)."""
        link_tree(Path(src), self.gen_dir / (name or Path(src).name))

    def begin_array(self, name: str, total_bytes: int, shard_bytes: int, chunk_bytes: int) -> None:
        """Start the sharded byte array ``name`` (postings, vectors, a delta)."""
        self._arrays[name] = (total_bytes, shard_bytes, chunk_bytes)
        self.crcs[name] = {}
        write_postings_meta(str(self.bytes_dir(name)), total_bytes, shard_bytes, chunk_bytes,
                            {"build_id": self.build_id})

    def write_shard(self, name: str, shard: int, data: np.ndarray) -> int:
        """Shard ``shard`` of byte array ``name`` (uint8, its used bytes from the shard start);
        returns its file size."""
        _, shard_bytes, chunk_bytes = self._arrays[name]
        crc, size = _put_file(self.bytes_dir(name), shard, data, shard_bytes, chunk_bytes)
        self.crcs[name][str(shard)] = crc
        return size

    def write_bytes(self, name: str, data: np.ndarray, total_bytes: int, shard_bytes: int, chunk_bytes: int) -> int:
        """A whole byte array of ``total_bytes`` from RAM: uint8 ``data`` (its used bytes), cut
        into shards; returns the file bytes written."""
        self.begin_array(name, total_bytes, shard_bytes, chunk_bytes)
        return sum(self.write_shard(name, s, data[s * shard_bytes:(s + 1) * shard_bytes])
                   for s in range(-(-data.shape[0] // shard_bytes)))

    def shard_geometry(self, name: str) -> tuple[int, int]:
        """(shard bytes, inner chunk bytes) of a begun byte array."""
        return self._arrays[name][1], self._arrays[name][2]

    def _seal(self, root: Path) -> None:
        """This generation's group metadata, then every file under ``root`` made durable."""
        write_json(str(self.gen_dir / "zarr.json"), group_meta({"build_id": self.build_id}), fsync=False)
        _fsync_tree(root)


class IndexWriter(GenerationArrays):
    """Writes a new index into a hidden temporary sibling of ``final``; :meth:`commit` swaps it
    into place; :meth:`abort` removes it (a failed build leaves nothing behind)."""

    def __init__(self, final: Path, overwrite: bool = False, *, resume: bool = False, fingerprint: str = ""):
        self.final = Path(final)
        check_target(self.final, overwrite)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.resumed = False
        self.shards_reused = 0
        self._start()
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

    def bytes_dir(self, name: str) -> Path:
        return self.tmp / name  # the base arrays sit at the index's top level, shared by all generations

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
        self.crcs.setdefault(name, {})[str(shard)] = rec["crc"]
        self.shards_reused += 1
        return int(rec["file_bytes"])

    def write_shard(self, name: str, shard: int, data: np.ndarray) -> int:
        """Shard ``shard`` of byte array ``name`` (uint8, its used bytes from the shard start),
        checkpointed for a resumed build; returns its file size."""
        _, shard_bytes, chunk_bytes = self._arrays[name]
        crc, size = put_shard(self.tmp, name, shard, data, shard_bytes, chunk_bytes)
        self.crcs[name][str(shard)] = crc
        return size

    def adopt_shard(self, name: str, shard: int) -> int:
        """Record a shard that another process wrote with :func:`put_shard` (a distributed
        build); returns its file bytes."""
        rec = read_json(str(self.ckpt / f"shard.{name}.{shard}.json"))
        self.crcs.setdefault(name, {})[str(shard)] = rec["crc"]
        return int(rec["file_bytes"])

    def _root_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = {**attrs, "format_version": FORMAT_VERSION, "build_id": self.build_id,
                 "generation": self.generation, "generation_path": generation_path(self.generation),
                 "postings_path": POSTINGS, "data_crc32c": self.crcs}
        if VECTORS in self._arrays:
            attrs["vectors_path"] = VECTORS
        return attrs

    def preview(self, attrs: dict[str, Any]) -> Path:
        """Write the root metadata into the temporary directory (not yet durably) so the
        finished index can be opened and measured there before :meth:`commit`; returns it."""
        write_json(str(self.gen_dir / "zarr.json"), group_meta({"build_id": self.build_id}), fsync=False)
        write_root(self.tmp / "zarr.json", self._root_attrs(attrs))
        return self.tmp

    def commit(self, attrs: dict[str, Any], overwrite: bool = False) -> Path:
        """Write the group metadata (last: its presence marks a complete index), make it durable,
        and swap the directory into place."""
        attrs = self._root_attrs(attrs)
        shutil.rmtree(self.ckpt, ignore_errors=True)
        self._seal(self.tmp)
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


class GenerationWriter(GenerationArrays):
    """Writes generation g + 1 of the index at ``root`` (an update batch) beside generation g,
    whose root attributes are ``attrs``: :meth:`link_previous` shares what did not change,
    :meth:`commit` replaces the root ``zarr.json`` (the commit point) and removes generation g.
    Call it under :func:`writer_lock`. Orphans of interrupted batches are removed first."""

    def __init__(self, root: Path, attrs: dict[str, Any]):
        self.root = Path(root)
        self.attrs = attrs
        self.build_id = str(attrs["build_id"])
        self.generation = int(attrs.get("generation", 1)) + 1
        self.previous = self.root / attrs["generation_path"]
        self.gen_name = generation_path(self.generation)
        self.gen_dir = self.root / self.gen_name
        for e in os.listdir(self.root):
            if e.startswith("gen-") and e != self.previous.name:
                shutil.rmtree(self.root / e, ignore_errors=True)
            elif e.startswith("zarr.json.tmp-"):
                try:
                    os.unlink(self.root / e)
                except OSError:
                    pass
        self.gen_dir.mkdir()
        self._start()

    def bytes_dir(self, name: str) -> Path:
        return self.gen_dir / name  # the delta arrays belong to their generation

    def has_previous(self, name: str) -> bool:
        return (self.previous / name).exists()

    def link_previous(self, name: str) -> None:
        """Share array ``name`` of generation g unchanged."""
        self.link_array(self.previous / name, name)

    def reuse_bytes(self, path: str, crc: dict[str, list[int]] | None) -> str:
        """Share byte array ``path`` (relative to the index, e.g. ``gen-000002/delta``) of
        generation g unchanged, with its shard records ``crc``; returns its new path."""
        name = Path(path).name
        self.link_array(self.root / path, name)
        self.crcs[name] = crc
        return f"{self.gen_name}/{name}"

    def commit(self, attrs: dict[str, Any]) -> None:
        """Make generation g + 1 durable, then switch the index to it: root attributes ``attrs``
        with this generation's name and byte arrays' records."""
        try:
            self._seal(self.gen_dir)
        except BaseException:
            self.abort()
            raise
        write_root(self.root / "zarr.json", {**attrs, "generation": self.generation, "generation_path": self.gen_name,
                                             "updates_crc32c": self.crcs})
        _fsync_dir(self.root)
        shutil.rmtree(self.previous, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.gen_dir, ignore_errors=True)


@contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """The exclusive lock of an index's writers (updates): a lock file inside the index."""
    fd = os.open(Path(path) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link the files under ``src`` into ``dst`` (copy where a link fails). A file is never
    modified once written, so generations can share them."""
    for dirpath, _dirs, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            try:
                os.link(Path(dirpath) / f, dst / rel / f)
            except OSError:
                shutil.copy2(Path(dirpath) / f, dst / rel / f)


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


