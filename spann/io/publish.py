"""Ship a local index as one zip file or into an object store.

- **zip**: every file of the index directory becomes a member *stored* (not compressed), its
  data starting at a 4 KiB-aligned offset (a padding extra field, as Android's zipalign does),
  so :class:`spann.index.Index` maps the posting shards in place: a zipped index searches as
  fast as the directory. zarr-python's ``ZipStore`` opens it as any zarr group. Written to a
  temporary sibling and renamed: a failed export leaves nothing.
- **object store** (``s3://bucket/prefix``...): every file uploaded (large ones in parts,
  several at a time), the root ``zarr.json`` last, so the prefix opens as an index only once
  it is complete. Replacing an index (``overwrite``) first removes the old root ``zarr.json``
  (the prefix stops being an index), then uploads, then deletes the old index's leftover
  objects. Readers that opened the old index must open it again.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from spann.errors import IndexExistsError, IndexNotFoundError, ParameterError
from spann.io.index_files import LOCK, _is_index_entry
from spann.io.sources import ZipStore, _Loop, _obstore, is_url, object_store_client, store_error

__all__ = ["export_index", "ZIP_ALIGN"]

ZIP_ALIGN = 4096
_PAD_ID = 0xD935  #: extra-field id of the alignment padding (the one zipalign uses)


def _check_index_dir(src: Path) -> None:
    """Refuse ``src`` unless it holds a spann index's root metadata (nothing is written)."""
    if not (src / "zarr.json").is_file():
        raise IndexNotFoundError(f"{src}: not a spann index directory (no zarr.json)")
    try:
        attrs = json.loads((src / "zarr.json").read_text()).get("attributes", {}).get("spann")
    except (ValueError, OSError, AttributeError):
        attrs = None
    if not isinstance(attrs, dict):
        raise IndexNotFoundError(f"{src}: not a complete spann index (no spann attributes)")


def _index_files(src: Path) -> list[str]:
    _check_index_dir(src)
    keys = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    return [k for k in keys if k != LOCK and ".tmp-" not in k]


def _write_zip(src: Path, dest: Path, keys: list[str], progress: bool) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    total = sum((src / k).stat().st_size for k in keys)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z, \
                tqdm(total=total, desc="zip", unit="B", unit_scale=True, disable=not progress, leave=False) as bar:
            keys = [k for k in keys if k != "zarr.json"] + ["zarr.json"]  # the root last, as everywhere
            for k in keys:
                zi = zipfile.ZipInfo(k, date_time=(2020, 1, 1, 0, 0, 0))
                zi.compress_type = zipfile.ZIP_STORED
                zi.external_attr = 0o644 << 16
                # local header: 30 bytes + name + extra (ours, then zip64's 20 bytes, forced below)
                at = z.fp.tell() + 30 + len(k.encode()) + 20
                pad = (-(at + 4)) % ZIP_ALIGN
                zi.extra = struct.pack("<HH", _PAD_ID, pad) + bytes(pad)
                with open(src / k, "rb") as fin, z.open(zi, "w", force_zip64=True) as fout:
                    while True:
                        b = fin.read(8 << 20)
                        if not b:
                            break
                        fout.write(b)
                        bar.update(len(b))
        with open(tmp, "rb+") as fh:  # durable before it takes the name
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _client(url: str, storage_options):
    obstore, _ = _obstore()
    return obstore, object_store_client(url, storage_options)


def _survey(obstore, client, url: str) -> tuple[str, set[str]]:
    """What the prefix holds: ("empty" | "index" | "partial" | "foreign", its keys). "partial"
    is a spann index without its root zarr.json (an interrupted export)."""
    try:
        keys = {m["path"] for page in obstore.list(client) for m in page}
    except Exception as e:  # noqa: BLE001  (obstore's own exception types)
        raise store_error(url, e) from None
    if not keys:
        return "empty", keys
    if not all(_is_index_entry(k.split("/", 1)[0]) for k in keys):
        return "foreign", keys
    if "zarr.json" not in keys:
        return "partial", keys
    try:
        attrs = json.loads(bytes(obstore.get(client, "zarr.json").bytes())).get("attributes", {}).get("spann")
    except (ValueError, AttributeError):
        attrs = None
    except Exception as e:  # noqa: BLE001
        raise store_error(f"{url}/zarr.json", e) from None
    return ("index" if isinstance(attrs, dict) else "foreign"), keys


def _check_survey(url: str, kind: str, overwrite: bool) -> None:
    if kind == "foreign":
        raise IndexExistsError(f"{url}: holds objects that are not part of a spann index; refusing to write into it")
    if kind == "partial" and not overwrite:
        raise IndexExistsError(f"{url}: holds an incomplete spann index (an interrupted export); use overwrite=True / "
                               f"--overwrite to replace it")
    if kind == "index" and not overwrite:
        raise IndexExistsError(f"{url}: already holds an index (use overwrite=True / --overwrite to replace it)")


def _upload(src: Path, url: str, keys: list[str], storage_options: dict[str, Any] | None, overwrite: bool,
            progress: bool) -> None:
    obstore, client = _client(url, storage_options)
    kind, old = _survey(obstore, client, url)
    _check_survey(url, kind, overwrite)
    body = [k for k in keys if k != "zarr.json"]
    total = sum((src / k).stat().st_size for k in keys)
    try:
        if "zarr.json" in old:  # the prefix stops being an index until the new root is in place
            obstore.delete(client, "zarr.json")
        with tqdm(total=total, desc="upload", unit="B", unit_scale=True, disable=not progress, leave=False) as bar:
            async def put_all():
                sem = asyncio.Semaphore(8)

                async def put(k):
                    async with sem:
                        await obstore.put_async(client, k, src / k)
                        bar.update((src / k).stat().st_size)
                await asyncio.gather(*[put(k) for k in body])

            _Loop.run(put_all())
            stale = sorted(old - set(keys))  # the old index's leftovers (nothing else is there: surveyed)
            if stale:
                obstore.delete(client, stale)
            obstore.put(client, "zarr.json", src / "zarr.json")
            bar.update((src / "zarr.json").stat().st_size)
    except Exception as e:  # noqa: BLE001
        raise store_error(url, e) from None


def check_export_target(dest: str, overwrite: bool, storage_options: dict[str, Any] | None = None) -> None:
    """Raise now if :func:`export_index` would refuse ``dest`` (exists without ``overwrite``,
    is not a spann index, is not a .zip or URL)."""
    if is_url(dest):
        obstore, client = _client(dest, storage_options)
        _check_survey(dest, _survey(obstore, client, dest)[0], overwrite)
        return
    if storage_options:
        raise ParameterError("storage options apply to object-store URLs only")
    p = Path(dest)
    if p.suffix.lower() != ".zip":
        raise ParameterError(f"{dest}: export writes a .zip file or an object-store URL (s3://...)")
    if os.path.lexists(p):
        if not overwrite:
            raise IndexExistsError(f"{dest}: already exists (use overwrite=True / --overwrite to replace it)")
        try:
            z = ZipStore(p)
            ok = "zarr.json" in z.members
            z.close()
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise IndexExistsError(f"{dest}: is not a zipped spann index; refusing to replace it")
    elif not p.parent.is_dir():
        raise ParameterError(f"{dest}: directory {p.parent} does not exist")


def export_index(src: str | os.PathLike[str], dest: str | os.PathLike[str], *, overwrite: bool = False,
                 storage_options: dict[str, Any] | None = None, progress: bool = False) -> str:
    """Copy the local index directory ``src`` to ``dest``: a ``.zip`` file or an object-store
    URL. Returns ``dest``. An existing zip is replaced only with ``overwrite`` (and only if it
    is a spann index); an object-store prefix likewise."""
    src = Path(src)
    if not src.is_dir():
        raise IndexNotFoundError(f"{src}: no such index directory")
    _check_index_dir(src)  # before the lock file is created: nothing is written into another directory
    try:
        fd = os.open(src / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only copy: nothing updates it
        fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # updates (which take it exclusively) wait: one generation is copied
        keys = _index_files(src)
        if is_url(dest):
            _upload(src, str(dest), keys, storage_options, overwrite, progress)
            return str(dest)
        check_export_target(str(dest), overwrite, storage_options)
        _write_zip(src, Path(dest), keys, progress)
        return str(dest)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
