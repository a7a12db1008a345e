"""The zarr v3 files of an index: written by zarr-python, read by spann's own direct reader.

Every array is created and written by zarr-python (so an index is valid zarr by construction),
in one of two exact shapes; reading goes straight to the files (mapped or ranged reads, no
zarr-python on the query path) and accepts only those shapes (so a damaged or hostile
``zarr.json`` cannot make spann decompress, allocate or index beyond what the files really
hold). The metadata accepted is exactly what zarr-python writes for them, or exactly its
hand-written equivalent (the same arrays over the same data files, whose ``zarr.json`` has
``dimension_names: null``, no ``storage_transformers`` and ``endian`` on every ``bytes`` codec):

- **small arrays** (kept in RAM after open): regular chunks along axis 0, codecs
  ``[bytes(little), crc32c]``: each chunk file is the raw little-endian bytes of the chunk
  followed by their crc32c (4 bytes, little-endian), verified on every read.
- **the posting bytes**: a 1-D ``uint8`` array, chunk grid = shards of ``shard_bytes``, codec
  ``sharding_indexed`` with raw inner chunks of ``chunk_bytes`` (``[bytes]``) and the shard
  index at the end (``[bytes, crc32c]``). spann writes inner chunks in order, so byte ``i`` of
  shard ``s`` sits at file offset ``i``: a posting list is one contiguous range of one file.

Paths are resolved against a directory file descriptor where one is given, so an index opened
once keeps reading the same files even if its directory is replaced meanwhile.
"""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any

import google_crc32c
import numpy as np

from spann.errors import IndexCorruptError

__all__ = ["ABSENT", "write_small_array", "read_small_array", "small_array_meta", "postings_meta",
           "check_postings_meta", "write_shard", "read_shard_index", "check_shard_index", "shard_index_bytes",
           "write_json", "read_json", "crc32c", "canonical_json", "check_exact", "check_group_meta",
           "group_meta", "MAX_JSON_BYTES", "write_postings_meta"]

ABSENT = 2**64 - 1
MAX_JSON_BYTES = 1 << 22        #: metadata files larger than this are refused
SMALL_CHUNK_BYTES = 1 << 28     #: small arrays are split into chunks of at most this many bytes


def crc32c(data) -> int:
    return google_crc32c.value(bytes(data) if not isinstance(data, (bytes, bytearray, memoryview)) else data)


# -- plain files -------------------------------------------------------------------------------

def _open_read(path: str, dir_fd: int | None) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        raise IndexCorruptError(f"{path}: missing (incomplete or damaged index)") from None
    except (IsADirectoryError, NotADirectoryError) as e:
        raise IndexCorruptError(f"{path}: not a regular file ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise IndexCorruptError(f"{path}: not a regular file (refusing to read a special file)")
    return fd


def read_file(path: str, dir_fd: int | None = None, max_bytes: int | None = None, store=None) -> bytes:
    """The bytes of a regular file (special files and files over ``max_bytes`` are refused);
    with ``store`` (a :class:`spann.io.sources.Store`), of that store's object ``path``."""
    if store is not None:
        return store.read(path, max_bytes)
    fd = _open_read(path, dir_fd)
    try:
        size = os.fstat(fd).st_size
        if max_bytes is not None and size > max_bytes:
            raise IndexCorruptError(f"{path}: {size} bytes, more than the {max_bytes} expected")
        chunks = []
        left = size
        while left > 0:
            b = os.read(fd, min(left, 1 << 26))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        data = b"".join(chunks)
        if len(data) != size:
            raise IndexCorruptError(f"{path}: short read ({len(data)} of {size} bytes)")
        return data
    finally:
        os.close(fd)


def read_json(path: str, dir_fd: int | None = None, store=None) -> dict[str, Any]:
    raw = read_file(path, dir_fd, MAX_JSON_BYTES, store)
    try:
        d = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise IndexCorruptError(f"{path}: unreadable metadata ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise IndexCorruptError(f"{path}: metadata is not a JSON object")
    return d


def write_json(path: str, obj: dict[str, Any], fsync: bool = True) -> None:
    """Write ``obj`` to ``path`` atomically (see :func:`_write_atomic`)."""
    _write_atomic(path, json.dumps(obj, indent=2, allow_nan=False).encode(), fsync)


def canonical_json(obj: Any) -> str:
    """``obj`` as canonical JSON (sorted keys, no spaces; NaN/Inf refused with ValueError):
    two values are the same metadata exactly when their canonical texts are equal (``3`` and
    ``3.0``, ``1`` and ``true`` differ)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)


def _difference(want: Any, got: Any, at: str) -> str | None:
    """The first difference between two JSON values, described for a message (None: equal)."""
    if isinstance(want, dict) and isinstance(got, dict):
        for k in got:
            if k not in want:
                return f"unknown key {at + str(k)!r}"
        for k in want:
            if k not in got:
                return f"missing key {at + str(k)!r}"
        for k in want:
            d = _difference(want[k], got[k], f"{at}{k}.")
            if d:
                return d
        return None
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        for i, (w, g) in enumerate(zip(want, got)):
            d = _difference(w, g, f"{at}{i}.")
            if d:
                return d
        return None
    try:
        same = canonical_json(want) == canonical_json(got)
    except (ValueError, TypeError):
        same = False
    if same:
        return None
    shown = repr(got)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"{at.rstrip('.') or 'value'} is {shown} where {want!r} is expected"[:200]


def check_exact(meta: Any, expected: Any, where: str, what: str = "metadata") -> None:
    """Refuse ``meta`` unless it is exactly ``expected`` (same keys, same values, same JSON
    types): one-line IndexCorruptError naming ``where`` and the first difference."""
    d = _difference(expected, meta, "")
    if d:
        raise IndexCorruptError(f"{where}: {what} is not what spann writes ({d})")


def group_meta(attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"zarr_format": 3, "node_type": "group", "attributes": attributes or {}}


def check_group_meta(meta: Any, where: str, attributes: dict[str, Any]) -> None:
    """Refuse a group's metadata unless it is exactly :func:`group_meta` of ``attributes``."""
    check_exact(meta, group_meta(attributes), where, "group metadata")


# -- small arrays (bytes + crc32c) ---------------------------------------------------------------

def small_chunk_rows(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Rows per chunk of a small array (what :func:`write_small_array` writes)."""
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize)
    rows = shape[0]
    return max(1, min(rows, SMALL_CHUNK_BYTES // row_bytes)) if rows else 1


def _bytes_codec(dtype: np.dtype, legacy: bool) -> dict[str, Any]:
    # zarr-python gives single-byte types no endianness; the hand-written form always has one
    if np.dtype(dtype).itemsize == 1 and not legacy:
        return {"name": "bytes"}
    return {"name": "bytes", "configuration": {"endian": "little"}}


def _array_meta(shape: list[int], dtype: np.dtype, chunk_shape: list[int], codecs: list[dict[str, Any]],
                attributes: dict[str, Any] | None, legacy: bool) -> dict[str, Any]:
    meta = {
        "zarr_format": 3, "node_type": "array", "shape": shape, "data_type": np.dtype(dtype).name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk_shape}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0 if np.dtype(dtype).kind == "f" else 0,
        "codecs": codecs, "attributes": attributes or {},
    }
    if legacy:
        meta["dimension_names"] = None
    else:
        meta["storage_transformers"] = []
    return meta


def small_array_meta(shape: tuple[int, ...], dtype: np.dtype, chunk_rows: int,
                     attributes: dict[str, Any] | None = None, *, legacy: bool = False) -> dict[str, Any]:
    """The ``zarr.json`` of a small array as zarr-python writes it (``legacy``: its
    hand-written equivalent, also accepted)."""
    dtype = np.dtype(dtype)
    return _array_meta(list(shape), dtype, [chunk_rows] + list(shape[1:]),
                       [_bytes_codec(dtype, legacy), {"name": "crc32c"}], attributes, legacy)


def _check_meta(meta: Any, forms: list[Any], where: str, what: str) -> None:
    """Refuse ``meta`` unless it is exactly one of ``forms`` (the message names the first
    difference from the first form, the one written now)."""
    for form in forms[1:]:
        if _difference(form, meta, "") is None:
            return
    check_exact(meta, forms[0], where, what)


def _chunk_key(i: int, ndim: int) -> str:
    return "c/" + "/".join([str(i)] + ["0"] * (ndim - 1))


def write_small_array(directory: str, data: np.ndarray, attributes: dict[str, Any] | None = None) -> None:
    """Write ``data`` (any shape, ndim >= 1) as a bytes+crc32c zarr array in ``directory``
    (replacing any array there), through zarr-python: every chunk is written, all-zero ones
    included, so the reader finds each chunk file."""
    import zarr  # here, not at the top: opening and searching never write, and skip its import (~0.15 s)
    from zarr.codecs import Crc32cCodec

    data = np.ascontiguousarray(data)
    data = data.astype(data.dtype.newbyteorder("="), copy=False)
    chunk_rows = small_chunk_rows(data.shape, data.dtype)
    z = zarr.create_array(store=directory, shape=data.shape, dtype=data.dtype,
                          chunks=(chunk_rows,) + data.shape[1:], filters=None, compressors=[Crc32cCodec()],
                          fill_value=0, attributes=attributes or {}, config={"write_empty_chunks": True},
                          zarr_format=3, overwrite=True)
    if data.size:
        z[...] = data


def _codec_names(codecs: Any) -> list[str]:
    if not isinstance(codecs, list) or not all(isinstance(c, dict) for c in codecs):
        return []
    return [str(c.get("name")) for c in codecs]


def _little(codec: dict) -> bool:
    cfg = codec.get("configuration") or {}
    return isinstance(cfg, dict) and cfg.get("endian", "little") == "little"


def read_small_array(directory: str, *, dtype: np.dtype | str | tuple, shape: tuple[int | None, ...],
                     dir_fd: int | None = None, store=None, attributes: dict[str, Any] | None = None) -> np.ndarray:
    """Read a bytes+crc32c array written by :func:`write_small_array`.

    ``dtype``: the dtype (or tuple of dtypes) the caller accepts; ``shape``: the expected
    shape, ``None`` for a dimension the caller does not know (it is then bounded by the
    files' real sizes); ``attributes``: the array's attributes exactly (``None``: any JSON
    object). The ``zarr.json`` must be exactly what :func:`write_small_array` writes for that
    shape and dtype (no unknown or missing key, the same chunking). Anything else — other
    codecs, other dtype, a chunk that is missing, has the wrong size or fails its checksum —
    raises :class:`IndexCorruptError`.
    """
    meta = read_json(os.path.join(directory, "zarr.json"), dir_fd, store)
    where = directory
    try:
        got_shape = [int(v) for v in meta["shape"]]
        dt = np.dtype(str(meta["data_type"]))
        grid = meta["chunk_grid"]
        chunk = [int(v) for v in grid["configuration"]["chunk_shape"]]
        codecs = meta["codecs"]
        kenc = meta.get("chunk_key_encoding", {"name": "default"})
    except (KeyError, TypeError, ValueError) as e:
        raise IndexCorruptError(f"{where}: unreadable array metadata ({type(e).__name__}: {e})") from None
    ok_dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    if dt not in [np.dtype(d) for d in ok_dtypes]:
        raise IndexCorruptError(f"{where}: data type {dt} where {'/'.join(np.dtype(d).name for d in ok_dtypes)} "
                                f"is expected")
    if len(got_shape) != len(shape) or any(e is not None and e != g for e, g in zip(shape, got_shape)) \
            or any(g < 0 for g in got_shape):
        raise IndexCorruptError(f"{where}: shape {tuple(got_shape)} where {tuple(shape)} is expected")
    if (grid.get("name") != "regular" or len(chunk) != len(got_shape) or chunk[0] < 1
            or chunk[1:] != got_shape[1:] or _codec_names(codecs) != ["bytes", "crc32c"] or not _little(codecs[0])
            or not isinstance(kenc, dict) or kenc.get("name") != "default"
            or (kenc.get("configuration") or {}).get("separator", "/") != "/"):
        raise IndexCorruptError(f"{where}: array is not in spann's raw layout (chunks {chunk}, codecs "
                                f"{_codec_names(codecs)})")
    attrs = meta.get("attributes") if attributes is None else attributes
    attrs = attrs if isinstance(attrs, dict) else {}
    rows_per_chunk = small_chunk_rows(tuple(got_shape), dt)
    _check_meta(meta, [small_array_meta(tuple(got_shape), dt, rows_per_chunk, attrs, legacy=legacy)
                       for legacy in (False, True)], os.path.join(directory, "zarr.json"), "array metadata")
    rows = got_shape[0]
    row_bytes = int(np.prod(got_shape[1:], dtype=np.int64)) * dt.itemsize
    parts = []
    n_chunks = math.ceil(rows / chunk[0]) if rows else 0
    for i in range(n_chunks):
        r = min(chunk[0], rows - i * chunk[0])
        full = chunk[0] * row_bytes  # zarr stores edge chunks full size
        key = os.path.join(directory, _chunk_key(i, len(got_shape)))
        raw = read_file(key, dir_fd, full + 4, store)
        if len(raw) != full + 4:
            raise IndexCorruptError(f"{key}: {len(raw)} bytes where {full + 4} are expected (truncated chunk)")
        body, crc = raw[:-4], int.from_bytes(raw[-4:], "little")
        if crc32c(body) != crc:
            raise IndexCorruptError(f"{key}: checksum mismatch (damaged index part)")
        parts.append(np.frombuffer(body, dtype=dt.newbyteorder("<"), count=r * row_bytes // max(1, dt.itemsize)))
    flat = np.concatenate(parts) if parts else np.zeros(0, dt)
    return np.ascontiguousarray(flat.astype(dt, copy=False).reshape(got_shape))


# -- the posting bytes (sharded) -----------------------------------------------------------------

def postings_meta(total_bytes: int, shard_bytes: int, chunk_bytes: int,
                  attributes: dict[str, Any] | None = None, *, legacy: bool = False) -> dict[str, Any]:
    """The ``zarr.json`` of a byte array as zarr-python writes it (``legacy``: its
    hand-written equivalent, also accepted)."""
    u8 = np.dtype(np.uint8)
    return _array_meta([int(total_bytes)], u8, [int(shard_bytes)], [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": [int(chunk_bytes)],
        "codecs": [_bytes_codec(u8, legacy)],
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
        "index_location": "end"}}], attributes, legacy)


def _byte_array_kwargs(total_bytes: int, shard_bytes: int, chunk_bytes: int) -> dict[str, Any]:
    return dict(shape=(int(total_bytes),), dtype="uint8", shards=(int(shard_bytes),), chunks=(int(chunk_bytes),),
                filters=None, compressors=None, fill_value=0, config={"write_empty_chunks": True}, zarr_format=3)


def write_postings_meta(directory: str, total_bytes: int, shard_bytes: int, chunk_bytes: int,
                        attributes: dict[str, Any] | None = None) -> None:
    """Write (atomically) the ``zarr.json`` zarr-python creates for a byte array, and nothing
    else: shards already in ``directory`` (a resumed build) stay."""
    import zarr  # here, not at the top: opening and searching never write, and skip its import (~0.15 s)
    from zarr.storage import MemoryStore

    files: dict = {}
    zarr.create_array(store=MemoryStore(files), attributes=attributes or {},
                      **_byte_array_kwargs(total_bytes, shard_bytes, chunk_bytes))
    os.makedirs(directory, exist_ok=True)
    _write_atomic(os.path.join(directory, "zarr.json"), files["zarr.json"].to_bytes())


def _write_atomic(path: str, data: bytes, fsync: bool = False) -> None:
    """``data`` into ``path`` atomically: a temporary file renamed over it (removed if writing
    fails); ``fsync`` makes the file durable before the rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def check_postings_meta(meta: dict[str, Any], where: str,
                        attributes: dict[str, Any] | None = None) -> tuple[int, int, int]:
    """(total bytes, shard bytes, inner chunk bytes) if ``meta`` is exactly what
    :func:`postings_meta` writes (with ``attributes``; ``None``: any JSON object)."""
    try:
        total = int(meta["shape"][0])
        ok = (meta["node_type"] == "array" and len(meta["shape"]) == 1 and meta["data_type"] == "uint8"
              and meta["chunk_grid"]["name"] == "regular")
        shard = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        (codec,) = meta["codecs"]
        cfg = codec["configuration"]
        inner = int(cfg["chunk_shape"][0])
        kenc = meta.get("chunk_key_encoding", {"name": "default"})
        ok = ok and (codec["name"] == "sharding_indexed" and cfg.get("index_location", "end") == "end"
                     and _codec_names(cfg["codecs"]) == ["bytes"]
                     and _codec_names(cfg["index_codecs"]) == ["bytes", "crc32c"]
                     and kenc.get("name") == "default"
                     and (kenc.get("configuration") or {}).get("separator", "/") == "/")
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise IndexCorruptError(f"{where}: postings are not in spann's raw sharded layout")
    if not (4096 <= inner <= shard <= 1 << 40) or shard % inner or inner % 4096 or total < 0 or total % shard:
        raise IndexCorruptError(f"{where}: posting shard geometry is inconsistent (total {total}, shard {shard}, "
                                f"chunk {inner})")
    attrs = meta.get("attributes") if attributes is None else attributes
    attrs = attrs if isinstance(attrs, dict) else {}
    _check_meta(meta, [postings_meta(total, shard, inner, attrs, legacy=legacy) for legacy in (False, True)],
                f"{where}/zarr.json", "array metadata")
    return total, shard, inner


def write_shard(path: str, data: np.ndarray, shard_bytes: int, chunk_bytes: int) -> int:
    """Write one shard file: the used bytes ``data`` (uint8, <= shard_bytes) as raw inner chunks in
    order (the last one zero-padded), absent chunks beyond, then the index and its crc32c.
    zarr-python encodes the shard (as the one shard of an in-memory array; every inner chunk
    the data touches is written, all-zero ones included). Returns the file size."""
    import zarr  # here, not at the top: opening and searching never write, and skip its import (~0.15 s)
    from zarr.storage import MemoryStore

    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    used = int(data.shape[0])
    if used > shard_bytes:
        raise ValueError(f"{used} bytes do not fit a shard of {shard_bytes}")
    if used:
        files: dict = {}
        z = zarr.create_array(store=MemoryStore(files), **_byte_array_kwargs(shard_bytes, shard_bytes, chunk_bytes))
        present = -(-used // chunk_bytes) * chunk_bytes
        if present == used:
            z[:used] = data
        else:  # the tail of the last chunk: zeros (the fill value), written explicitly
            buf = np.zeros(present, np.uint8)
            buf[:used] = data
            z[:present] = buf
        blob = files["c/0"].as_numpy_array()
    else:  # no chunk at all (zarr-python stores no shard then): the index alone, every chunk absent
        idx = np.full((shard_bytes // chunk_bytes, 2), ABSENT, dtype="<u8").tobytes()
        blob = np.frombuffer(idx + crc32c(idx).to_bytes(4, "little"), np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(memoryview(blob))
        fh.flush()
    return int(blob.nbytes)


def read_shard_index(fd: int, size: int, shard_bytes: int, chunk_bytes: int, where: str) -> int:
    """Check a shard file's index (crc, and spann's in-order raw layout); returns the number of
    data bytes at the start of the file that hold the shard's leading present chunks."""
    n_idx = shard_index_bytes(shard_bytes, chunk_bytes)
    if size < n_idx:
        raise IndexCorruptError(f"{where}: shard file is truncated ({size} bytes)")
    return check_shard_index(os.pread(fd, n_idx, size - n_idx), size, shard_bytes, chunk_bytes, where)


def shard_index_bytes(shard_bytes: int, chunk_bytes: int) -> int:
    """Bytes of a shard file's index (with its crc32c), at the file's end."""
    return (shard_bytes // chunk_bytes) * 16 + 4


def check_shard_index(raw: bytes, size: int, shard_bytes: int, chunk_bytes: int, where: str) -> int:
    """:func:`read_shard_index` on the index bytes ``raw`` of a shard file of ``size`` bytes."""
    n_inner = shard_bytes // chunk_bytes
    n_idx = shard_index_bytes(shard_bytes, chunk_bytes)
    if size < n_idx:
        raise IndexCorruptError(f"{where}: shard file is truncated ({size} bytes)")
    if len(raw) != n_idx:
        raise IndexCorruptError(f"{where}: short read of the shard index")
    if crc32c(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
        raise IndexCorruptError(f"{where}: shard index checksum mismatch (damaged posting shard)")
    pairs = np.frombuffer(raw[:-4], dtype="<u8").reshape(-1, 2)
    absent = (pairs[:, 0] == ABSENT) & (pairs[:, 1] == ABSENT)
    present = int(np.argmax(absent)) if absent.any() else n_inner
    if absent[present:].size and not absent[present:].all():
        raise IndexCorruptError(f"{where}: shard has gaps between its chunks (not written by spann)")
    expect = np.arange(present, dtype=np.uint64) * np.uint64(chunk_bytes)
    if not (np.array_equal(pairs[:present, 0], expect) and np.all(pairs[:present, 1] == chunk_bytes)):
        raise IndexCorruptError(f"{where}: shard chunks are not stored in order (not written by spann)")
    if present * chunk_bytes + n_idx != size:
        raise IndexCorruptError(f"{where}: shard file size {size} disagrees with its index")
    return present * chunk_bytes
