"""ANN systems behind one interface (ann-benchmarks style), so they can be measured side by side.

Each wrapper: ``fit(base_path, metric, workdir)``, ``set_query_arguments(**kw)``,
``query(q (d,), k) -> ids``, ``batch_query(Q (nq, d), k, threads) -> ids``, ``get_additional()``
(I/O counters where the system has them), ``sweep()`` (its standard parameter sweep),
``index_bytes()`` and ``done()``. Peers are optional extras: a missing package raises
:class:`PeerUnavailable` with the install hint, and the runner reports the peer as skipped.

Metrics: ``cosine`` runs as L2 on unit vectors for every peer (the same ranking).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

import spann
from spann.datasets import synthetic_array
from spann.datasets.formats import read_vectors
from spann.kernels.exact import exact_knn
from spann.kernels.metrics import get_metric, normalize_rows

__all__ = ["PeerUnavailable", "PEERS", "make_peer", "SpannPeer", "FaissIVF", "FaissIVFOnDisk", "Hnswlib",
           "DiskANN", "BruteForce"]


class PeerUnavailable(RuntimeError):
    """The peer's package is not installed or cannot run here; the message says how to fix it."""


def _load_base(path: str, metric: str) -> np.ndarray:
    x = read_vectors(path).astype(np.float32, copy=False)
    return normalize_rows(x) if get_metric(metric).normalize else np.ascontiguousarray(x)


def _prep_queries(q: np.ndarray, metric: str) -> np.ndarray:
    q = np.ascontiguousarray(q, dtype=np.float32)
    return normalize_rows(q) if get_metric(metric).normalize else q


def _dir_bytes(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


class _Peer:
    name = "peer"
    install = ""

    def __init__(self) -> None:
        self.args: dict[str, Any] = {}
        self.metric = "l2"

    def set_query_arguments(self, **kw: Any) -> None:
        self.args = dict(kw)

    def warm_up(self, workdir: Path) -> None:
        """Load code (JIT kernels, libraries) so memory measured after this is the index's own."""

    def get_additional(self) -> dict[str, Any]:
        return {}

    def index_bytes(self) -> int | None:
        return None

    def done(self) -> None:
        pass

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.args.items())})"


def _build_spann(base_path: str, path: str, metric: str, params: dict[str, Any]) -> None:
    spann.build(base_path, path, metric=metric, progress=False, **params).close()


class SpannPeer(_Peer):
    """spann itself; sweep over max_postings (and prune_eps)."""

    name = "spann"

    def __init__(self, **build_params: Any) -> None:
        super().__init__()
        self.build_params = build_params
        self.index = None
        self._last = None

    def warm_up(self, workdir: Path) -> None:
        path = workdir / "spann.warmup"
        shutil.rmtree(path, ignore_errors=True)
        with spann.build(synthetic_array(3000, 8), path, metric="l2", progress=False) as idx:
            idx.prepare()
        shutil.rmtree(path, ignore_errors=True)

    def fit(self, base_path: str, metric: str, workdir: Path) -> None:
        self.metric = metric
        path = workdir / "spann.index"
        if path.exists():
            shutil.rmtree(path)
        # build in a child process: the measuring process then holds only what a search
        # process holds (the opened index), not the build's freed-but-kept heap
        p = mp.get_context("spawn").Process(target=_build_spann, args=(base_path, str(path), metric, self.build_params))
        p.start()
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"spann build failed (exit code {p.exitcode})")
        self.index = spann.open(path)
        self.index.prepare()
        self.index.preload()  # warm as the in-RAM peers are (the runner's cold mode evicts it)

    def query(self, q: np.ndarray, k: int) -> np.ndarray:
        self._last = self.index.search(q, k, **self.args)
        return self._last.ids[0]

    def batch_query(self, q: np.ndarray, k: int, threads: int) -> np.ndarray:
        self._last = self.index.search(q, k, threads=threads, **self.args)
        return self._last.ids

    def get_additional(self) -> dict[str, Any]:
        if self._last is None:
            return {}
        return {"lists_read": float(self._last.lists_read.mean()),
                "kib_read": float(self._last.bytes_read.mean() / 1024),
                "distance_evals": float(self._last.distance_evals.mean())}

    def sweep(self) -> list[dict[str, Any]]:
        return [{"max_postings": m} for m in (4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)]

    def index_bytes(self) -> int | None:
        return self.index.info()["disk_bytes"] if self.index is not None else None

    def done(self) -> None:
        if self.index is not None:
            self.index.close()


class FaissIVF(_Peer):
    """faiss IndexIVFFlat (in RAM); sweep over nprobe."""

    name = "faiss-ivf"
    install = "pip install faiss-cpu"

    def __init__(self, nlist: int = 1024) -> None:
        super().__init__()
        try:
            import faiss  # optional extra: spann-ann[bench]
        except ImportError:
            raise PeerUnavailable(f"{self.name}: faiss is not installed ({self.install})") from None
        self.faiss = faiss
        self.nlist = nlist
        self.index = None

    def _build(self, x: np.ndarray):
        f = self.faiss
        quant = f.IndexFlatL2(x.shape[1]) if not get_metric(self.metric).inner_product else f.IndexFlatIP(x.shape[1])
        mt = f.METRIC_INNER_PRODUCT if get_metric(self.metric).inner_product else f.METRIC_L2
        index = f.IndexIVFFlat(quant, x.shape[1], self.nlist, mt)
        index.train(x)
        index.add(x)
        return index

    def fit(self, base_path: str, metric: str, workdir: Path) -> None:
        self.metric = metric
        self.index = self._build(_load_base(base_path, metric))

    def set_query_arguments(self, **kw: Any) -> None:
        super().set_query_arguments(**kw)
        self.index.nprobe = int(kw.get("nprobe", 1))

    def query(self, q: np.ndarray, k: int) -> np.ndarray:
        self.faiss.omp_set_num_threads(1)  # one query, one thread, as for every system
        return self.index.search(_prep_queries(q[None], self.metric), k)[1][0]

    def batch_query(self, q: np.ndarray, k: int, threads: int) -> np.ndarray:
        old = self.faiss.omp_get_max_threads()
        self.faiss.omp_set_num_threads(threads)
        try:
            return self.index.search(_prep_queries(q, self.metric), k)[1]
        finally:
            self.faiss.omp_set_num_threads(old)

    def sweep(self) -> list[dict[str, Any]]:
        return [{"nprobe": p} for p in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)]


class FaissIVFOnDisk(FaissIVF):
    """faiss IVF-Flat with its inverted lists in an on-disk file (OnDiskInvertedLists, mmap)."""

    name = "faiss-ivf-ondisk"

    def fit(self, base_path: str, metric: str, workdir: Path) -> None:
        f = self.faiss
        self.metric = metric
        x = _load_base(base_path, metric)
        index = self._build(x)
        self.ivdata = workdir / "faiss_ondisk.ivfdata"
        self.ivdata.unlink(missing_ok=True)
        ondisk = f.OnDiskInvertedLists(index.nlist, index.code_size, str(self.ivdata))
        lists = f.InvertedListsPtrVector()
        lists.push_back(index.invlists)
        ondisk.merge_from_multiple(lists.data(), lists.size(), False)
        index.replace_invlists(ondisk, False)  # we keep ownership (self._keep) for its lifetime
        self._keep = ondisk
        self.index = index

    def index_bytes(self) -> int | None:
        return _dir_bytes(self.ivdata)


class FaissIVFCompressed(FaissIVF):
    """faiss IVF over compressed codes with an exact refine from full vectors in RAM
    (``IndexRefineFlat``): what a user who can afford the RAM picks for high-dimensional data.
    Sweep over nprobe x k_factor (candidates re-ranked = k_factor * k)."""

    codes = ""

    def __init__(self, nlist: int = 0) -> None:
        super().__init__(nlist)

    def _build(self, x: np.ndarray):
        f = self.faiss
        nlist = self.nlist or int(min(4096, max(64, 4 * np.sqrt(len(x)))))
        mt = f.METRIC_INNER_PRODUCT if get_metric(self.metric).inner_product else f.METRIC_L2
        index = f.index_factory(x.shape[1], f"IVF{nlist},{self.codes_for(x.shape[1])},RFlat", mt)
        index.train(x)
        index.add(x)
        self.ivf = f.extract_index_ivf(index)
        return index

    def codes_for(self, dim: int) -> str:
        return self.codes

    def set_query_arguments(self, **kw: Any) -> None:
        _Peer.set_query_arguments(self, **kw)
        self.ivf.nprobe = int(kw.get("nprobe", 1))
        self.index.k_factor = float(kw.get("k_factor", 4))

    def sweep(self) -> list[dict[str, Any]]:
        return [{"nprobe": p, "k_factor": kf} for p in (4, 8, 16, 32, 64, 128) for kf in (2, 4, 10)]


class FaissIVFPQFastScan(FaissIVFCompressed):
    """faiss IVF + 4-bit PQ fast-scan (dim / 2 sub-quantisers, 2 dims per 4-bit code) + refine."""

    name = "faiss-ivfpqfs"

    def codes_for(self, dim: int) -> str:
        return f"PQ{max(1, dim // 2)}x4fs"


class FaissIVFRaBitQ(FaissIVFCompressed):
    """faiss IVF + RaBitQ one-bit codes + refine."""

    name = "faiss-ivf-rabitq"
    codes = "RaBitQ"


class Hnswlib(_Peer):
    """hnswlib HNSW (in RAM); sweep over ef."""

    name = "hnswlib"
    install = "pip install hnswlib"

    def __init__(self, M: int = 16, ef_construction: int = 200) -> None:
        super().__init__()
        try:
            import hnswlib  # optional extra: spann-ann[bench]
        except ImportError:
            raise PeerUnavailable(f"{self.name}: hnswlib is not installed ({self.install})") from None
        self.hnswlib = hnswlib
        self.M, self.efc = M, ef_construction

    def fit(self, base_path: str, metric: str, workdir: Path) -> None:
        self.metric = metric
        x = _load_base(base_path, metric)
        self.index = self.hnswlib.Index(space="ip" if get_metric(metric).inner_product else "l2", dim=x.shape[1])
        self.index.init_index(max_elements=x.shape[0], M=self.M, ef_construction=self.efc, random_seed=0)
        self.index.add_items(x, np.arange(x.shape[0]), num_threads=os.cpu_count() or 1)

    def set_query_arguments(self, **kw: Any) -> None:
        super().set_query_arguments(**kw)
        self.index.set_ef(int(kw["ef"]))

    def query(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.knn_query(_prep_queries(q[None], self.metric), k=k, num_threads=1)[0][0].astype(np.int64)

    def batch_query(self, q: np.ndarray, k: int, threads: int) -> np.ndarray:
        return self.index.knn_query(_prep_queries(q, self.metric), k=k, num_threads=threads)[0].astype(np.int64)

    def sweep(self) -> list[dict[str, Any]]:
        return [{"ef": e} for e in (10, 16, 24, 32, 48, 64, 96, 128, 256)]


class DiskANN(_Peer):
    """DiskANN's SSD index through ``diskannpy`` (StaticDiskIndex); sweep over complexity."""

    name = "diskann"
    install = "pip install diskannpy (0.7 pins numpy==1.25, which cannot sit beside zarr 3's numpy>=2)"

    def __init__(self, R: int = 32, L: int = 64) -> None:
        super().__init__()
        try:
            import diskannpy  # only in the DiskANN venv
        except Exception as e:
            raise PeerUnavailable(f"{self.name}: diskannpy is not importable here ({type(e).__name__}); "
                                  f"pass --diskann-python (a venv with numpy==1.25.* and diskannpy==0.7.0)") from None
        self.dap = diskannpy
        self.R, self.L = R, L

    def fit(self, base_path: str, metric: str, workdir: Path) -> None:
        self.metric = metric
        x = _load_base(base_path, metric)
        self.dir = workdir / "diskann"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.dap.build_disk_index(data=x, distance_metric="mips" if get_metric(metric).inner_product else "l2",
                                  index_directory=str(self.dir),
                                  complexity=self.L, graph_degree=self.R, search_memory_maximum=1.0,
                                  build_memory_maximum=8.0, num_threads=0, pq_disk_bytes=0)
        self.index = self.dap.StaticDiskIndex(index_directory=str(self.dir), num_threads=os.cpu_count() or 1,
                                              num_nodes_to_cache=10000)

    def query(self, q: np.ndarray, k: int) -> np.ndarray:
        c = int(self.args.get("complexity", 32))
        return self.index.search(_prep_queries(q, self.metric), k_neighbors=k, complexity=max(c, k), beam_width=2)[0]

    def batch_query(self, q: np.ndarray, k: int, threads: int) -> np.ndarray:
        c = int(self.args.get("complexity", 32))
        return self.index.batch_search(_prep_queries(q, self.metric), k_neighbors=k, complexity=max(c, k),
                                       num_threads=threads, beam_width=2)[0]

    def sweep(self) -> list[dict[str, Any]]:
        return [{"complexity": c} for c in (16, 32, 48, 64, 96, 128, 256)]

    def index_bytes(self) -> int | None:
        return _dir_bytes(self.dir)


class BruteForce(_Peer):
    """Exact search (numpy BLAS), the recall = 1 reference."""

    name = "bruteforce"

    def fit(self, base_path: str, metric: str, workdir: Path) -> None:
        self.metric = metric
        self.x = read_vectors(base_path)

    def query(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.batch_query(q[None], k, 1)[0]

    def batch_query(self, q: np.ndarray, k: int, threads: int) -> np.ndarray:
        try:
            from threadpoolctl import threadpool_limits  # the bench extra: BLAS held to `threads`
        except ImportError:  # without it BLAS uses every core: the reference is only faster
            return exact_knn(self.x, q, k, self.metric)[0]
        with threadpool_limits(threads):
            return exact_knn(self.x, q, k, self.metric)[0]

    def sweep(self) -> list[dict[str, Any]]:
        return [{}]


PEERS: dict[str, type[_Peer]] = {c.name: c for c in (SpannPeer, FaissIVF, FaissIVFOnDisk, FaissIVFPQFastScan,
                                                     FaissIVFRaBitQ, Hnswlib, DiskANN, BruteForce)}


def make_peer(name: str, **kw: Any) -> _Peer:
    """Instantiate peer ``name``; raises :class:`PeerUnavailable` if it cannot run here."""
    if name not in PEERS:
        raise PeerUnavailable(f"unknown algorithm {name!r}; known: {', '.join(PEERS)}")
    return PEERS[name](**kw)
