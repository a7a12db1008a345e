"""Where an index's files are read from: a local directory, a zip file, or an object store.

An index is an ordinary zarr v3 group, so it can live in any zarr store. spann reads three:

- **a local directory** (the fast path: posting shards are memory-mapped, see
  :mod:`spann.io.mapped`; :class:`DirectoryStore` only serves the small files);
- **a zip file** (``index.zip``, members stored uncompressed; one file to ship an index).
  :func:`spann.io.publish.export_index` writes them with every member's data 4 KiB-aligned;
- **an object store** (``s3://bucket/prefix``, also ``gs://``, ``az://``, ``http(s)://``)
  through obstore (optional extra ``spann-ann[s3]``). Credentials and endpoint come from the
  standard environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_DEFAULT_REGION``...) or ``storage_options``.

A store answers four questions: the bytes of a small object (:meth:`Store.read`), the size of
every object under a prefix (:meth:`Store.sizes`), byte ranges of several objects fetched
concurrently (:meth:`Store.read_ranges`: one ranged GET each), and where it is (for messages).
Posting lists of non-local stores are fetched into RAM on demand (:mod:`spann.io.fetched`).
"""

from __future__ import annotations

import asyncio
import mmap
import os
import stat
import struct
import threading
import zipfile
from pathlib import Path
from typing import Any, Sequence

from spann.errors import IndexCorruptError, IndexNotFoundError, ParameterError, StoreError
from spann.format.zarr_v3 import read_file

__all__ = ["store_error", "Store", "DirectoryStore", "ZipStore", "ObjectStore", "open_store", "is_url",
           "parse_storage_options"]

MAX_IN_FLIGHT = 64  #: ranged GETs in flight at once (a batch of queries may need hundreds)

URL_SCHEMES = ("s3://", "s3a://", "gs://", "gcs://", "az://", "abfs://", "azure://", "http://", "https://",
               "memory://")


def is_url(location: str | os.PathLike[str]) -> bool:
    """True for an object-store URL (``s3://...``), False for a local path."""
    return isinstance(location, str) and location.lower().startswith(URL_SCHEMES)


def parse_storage_options(items: Sequence[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` (the CLI's ``--storage-option``) as a dict."""
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k.strip():
            raise ParameterError(f"--storage-option {it!r}: expected KEY=VALUE")
        out[k.strip()] = v
    return out


class Store:
    """Read access to an index's files by key (``"gen-000001/heads/zarr.json"``)."""

    where: str = ""
    #: a local directory's file descriptor (the memory-mapped read path), else None
    dir_fd: int | None = None
    #: the :class:`spann.io.fetched.FetchCache` of arrays fetched on demand (set by the index)
    cache = None

    def read(self, key: str, max_bytes: int | None = None) -> bytes:
        raise NotImplementedError

    def sizes(self, prefix: str) -> dict[str, int]:
        """Size of every object whose key starts with ``prefix``."""
        raise NotImplementedError

    def read_ranges(self, keys: Sequence[str], starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
        """Bytes [start, end) of each key, all requests in flight together."""
        raise NotImplementedError

    def sizes_of(self, keys: Sequence[str]) -> dict[str, int]:
        """Sizes of those of ``keys`` that exist."""
        if not keys:
            return {}
        common = os.path.commonprefix(list(keys))
        have = self.sizes(common[:common.rfind("/") + 1])  # a directory: stores list by path segments
        return {k: have[k] for k in keys if k in have}

    def total_bytes(self) -> int:
        return sum(self.sizes("").values())

    def close(self) -> None:
        pass

    def _missing(self, key: str) -> IndexCorruptError:
        return IndexCorruptError(f"{self.where}/{key}: missing (incomplete or damaged index)")

    def _check_size(self, key: str, size: int, max_bytes: int | None) -> None:
        if max_bytes is not None and size > max_bytes:
            raise IndexCorruptError(f"{self.where}/{key}: {size} bytes, more than the {max_bytes} expected")


class DirectoryStore(Store):
    """A local index directory, read relative to one directory descriptor (a concurrent rebuild
    that swaps the directory cannot mix two builds)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.where = str(path)
        self.dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)

    def read(self, key: str, max_bytes: int | None = None) -> bytes:
        return read_file(key, self.dir_fd, max_bytes)

    def close(self) -> None:
        if self.dir_fd is not None and self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


class ZipStore(Store):
    """A zip file holding an index (members stored, not compressed; at the archive's root or
    under one top-level directory). Ranges are read with pread at each member's data offset."""

    def __init__(self, path: str | os.PathLike[str]):
        self.where = str(path)
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise IndexNotFoundError(f"{path}: no such index file") from None
        try:
            if not stat.S_ISREG(os.fstat(self.fd).st_mode):
                raise IndexNotFoundError(f"{path}: not a zip file")
            try:
                with zipfile.ZipFile(path) as z:
                    infos = z.infolist()
            except (zipfile.BadZipFile, OSError, ValueError) as e:
                raise IndexCorruptError(f"{path}: not a readable zip file ({e})") from None
            names = {i.filename for i in infos}
            prefix = ""
            if "zarr.json" not in names:
                tops = {n.split("/", 1)[0] for n in names if "/" in n}
                if len(tops) == 1 and f"{next(iter(tops))}/zarr.json" in names:
                    prefix = next(iter(tops)) + "/"
            self.members: dict[str, tuple[int, int, bool]] = {}
            size = os.fstat(self.fd).st_size
            for i in infos:
                if i.is_dir() or not i.filename.startswith(prefix):
                    continue
                hdr = os.pread(self.fd, 30, i.header_offset)
                if len(hdr) != 30 or hdr[:4] != b"PK\x03\x04":
                    raise IndexCorruptError(f"{path}: damaged zip member {i.filename}")
                n, m = struct.unpack("<HH", hdr[26:30])
                start = i.header_offset + 30 + n + m
                if start + i.compress_size > size:
                    raise IndexCorruptError(f"{path}: zip member {i.filename} is truncated")
                self.members[i.filename[len(prefix):]] = (start, i.file_size,
                                                          i.compress_type == zipfile.ZIP_STORED)
        except BaseException:
            os.close(self.fd)
            raise

    def _member(self, key: str) -> tuple[int, int]:
        m = self.members.get(key)
        if m is None:
            raise self._missing(key)
        if not m[2]:
            raise IndexCorruptError(f"{self.where}: member {key} is compressed; spann reads zips whose members are "
                                    f"stored (write them with `spann export INDEX FILE.zip` or `zip -0`)")
        return m[0], m[1]

    def aligned(self, prefix: str) -> bool:
        """Every stored member under ``prefix`` starts at a page-aligned file offset (they can
        be memory-mapped in place)."""
        ms = [m for k, m in self.members.items() if k.startswith(prefix)]
        return all(m[2] and m[0] % mmap.PAGESIZE == 0 for m in ms)

    def member_offset(self, key: str) -> int:
        """File offset of a stored member's first byte."""
        return self._member(key)[0]

    def read(self, key: str, max_bytes: int | None = None) -> bytes:
        start, size = self._member(key)
        self._check_size(key, size, max_bytes)
        data = os.pread(self.fd, size, start)
        if len(data) != size:
            raise IndexCorruptError(f"{self.where}/{key}: short read")
        return data

    def sizes(self, prefix: str) -> dict[str, int]:
        return {k: v[1] for k, v in self.members.items() if k.startswith(prefix)}

    def read_ranges(self, keys, starts, ends) -> list[bytes]:
        out = []
        for k, a, b in zip(keys, starts, ends):
            start, size = self._member(k)
            if b > size:
                raise IndexCorruptError(f"{self.where}/{k}: range ends at {b}, the member holds {size} bytes")
            out.append(os.pread(self.fd, b - a, start + a))
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Loop:
    """One background asyncio loop per process for the object-store requests."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def run(cls, coro):
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="spann-object-store", daemon=True).start()
                cls._loop = loop
        return asyncio.run_coroutine_threadsafe(coro, cls._loop).result()


def store_error(where: str, e: BaseException) -> StoreError:
    """One line for an object store's failure (obstore's messages run to many lines)."""
    first = str(e).splitlines()[0] if str(e) else ""
    return StoreError(f"{where}: object store request failed ({type(e).__name__}: {first[:300]})")


def _obstore():
    try:
        import obstore  # optional extra: spann-ann[s3]
        from obstore.store import from_url  # optional extra: spann-ann[s3]
    except ImportError:
        raise ParameterError("an object-store index needs obstore: pip install 'spann-ann[s3]'") from None
    return obstore, from_url


def object_store_client(url: str, storage_options: dict[str, Any] | None = None):
    """An obstore store for ``url`` (config from the environment and ``storage_options``)."""
    _, from_url = _obstore()
    opts = dict(storage_options or {})
    client = {}
    endpoint = opts.get("endpoint_url") or opts.get("aws_endpoint_url") or opts.get("endpoint") or \
        os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT")
    if url.startswith("http://") or (endpoint and str(endpoint).startswith("http://")):
        client["allow_http"] = True
    for k in ("endpoint_url", "aws_endpoint_url"):
        if k in opts:
            opts["endpoint"] = opts.pop(k)
    if "allow_http" in opts:
        client["allow_http"] = str(opts.pop("allow_http")).lower() in ("1", "true", "yes")
    try:
        return from_url(url.rstrip("/"), config=opts or None, client_options=client or None)
    except Exception as e:  # obstore raises its own exception types for bad configuration
        raise ParameterError(f"{url}: cannot open the object store ({type(e).__name__}: {e})") from None


class ObjectStore(Store):
    """An index under an object-store URL; each range is one ranged GET, a call's GETs run
    concurrently on a background event loop."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.where = url.rstrip("/")
        self.obstore, _ = _obstore()
        self.client = object_store_client(url, storage_options)
        #: each object's ETag when first seen (at open): later ranged GETs require it (If-Match),
        #: so an index replaced under an open reader fails loudly instead of mixing two builds
        self.etags: dict[str, str] = {}

    def _seen(self, meta) -> None:
        if meta.get("e_tag") and meta["path"] not in self.etags:
            self.etags[meta["path"]] = meta["e_tag"]

    def _err(self, key: str, e: Exception) -> Exception:
        if isinstance(e, FileNotFoundError):
            return self._missing(key)
        if type(e).__name__ == "PreconditionError":
            return IndexCorruptError(f"{self.where}/{key}: changed since the index was opened (replaced by another "
                                     f"build or export); open the index again")
        return store_error(f"{self.where}/{key}", e)

    def read(self, key: str, max_bytes: int | None = None) -> bytes:
        try:
            res = self.obstore.get(self.client, key)
            if max_bytes is not None:  # refused before its body is read
                self._check_size(key, int(res.meta["size"]), max_bytes)
            return bytes(res.bytes())
        except IndexCorruptError:
            raise
        except Exception as e:
            raise self._err(key, e) from None

    def sizes(self, prefix: str) -> dict[str, int]:
        out = {}
        try:
            for page in self.obstore.list(self.client, prefix=prefix or None):
                for meta in page:
                    out[meta["path"]] = int(meta["size"])
                    self._seen(meta)
        except Exception as e:
            raise self._err(prefix, e) from None
        return out

    def sizes_of(self, keys: Sequence[str]) -> dict[str, int]:
        """Listed where the store lists (S3, GCS, Azure: one request per 1,000 keys); a plain
        HTTP server that cannot: one HEAD per key, concurrently."""
        if len(keys) > 1 and not self.where.startswith(("http://", "https://")):
            return super().sizes_of(keys)
        ob, cl = self.obstore, self.client

        async def heads():
            return await asyncio.gather(*[ob.head_async(cl, k) for k in keys], return_exceptions=True)

        out = {}
        for k, r in zip(keys, _Loop.run(heads())):
            if isinstance(r, FileNotFoundError):
                continue
            if isinstance(r, BaseException):
                raise self._err(k, r) from None
            out[k] = int(r["size"])
            self._seen({**r, "path": k})
        return out

    def total_bytes(self) -> int:
        if self.where.startswith(("http://", "https://")):
            return -1  # a plain web server does not list
        return super().total_bytes()

    def read_ranges(self, keys, starts, ends) -> list[bytes]:
        if not keys:
            return []
        ob, cl = self.obstore, self.client

        async def all_():
            sem = asyncio.Semaphore(MAX_IN_FLIGHT)

            async def one(k, a, b):
                async with sem:
                    tag = self.etags.get(k)
                    if tag is None:
                        return await ob.get_range_async(cl, k, start=int(a), end=int(b))
                    r = await ob.get_async(cl, k, options={"range": (int(a), int(b)), "if_match": tag})
                    return await r.bytes_async()
            return await asyncio.gather(*[one(k, a, b) for k, a, b in zip(keys, starts, ends)], return_exceptions=True)

        out = _Loop.run(all_())
        for k, r in zip(keys, out):
            if isinstance(r, BaseException):
                raise self._err(k, r) from None
        return [bytes(r) for r in out]


def open_store(location: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> Store:
    """The store of an index at ``location``: a URL, a ``.zip`` file, or a directory."""
    if is_url(location):
        return ObjectStore(str(location), storage_options)
    p = Path(location)
    if os.path.isfile(p) or (p.suffix.lower() == ".zip" and not p.is_dir()):  # a directory named *.zip is a directory
        return ZipStore(p)
    if storage_options:
        raise ParameterError("storage options apply to object-store URLs only")
    return DirectoryStore(p)
