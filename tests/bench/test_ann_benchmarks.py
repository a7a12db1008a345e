"""The ann-benchmarks and big-ann-benchmarks wrappers under ``benchmarks/``, driven through the
calls those harnesses' runners make, in their order (ann-benchmarks ``ann_benchmarks/runner.py``
``run`` / ``run_individual_query``; big-ann-benchmarks ``benchmark/runner.py`` ``run`` and
``benchmark/algorithms/base_runner.py`` ``run_task``), with their definitions expanded from the
shipped config files as the harnesses expand them (``definitions.py`` of each). Neither harness
is installed here: the wrappers fall back to their stand-in base classes."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml

import spann
from spann.datasets import synthetic_array, write_vectors

ROOT = Path(__file__).resolve().parents[2]
ANNB_DIR = ROOT / "benchmarks" / "ann_benchmarks" / "spann"
BIGANN_DIR = ROOT / "benchmarks" / "big_ann_benchmarks" / "spann"
N, DIM, NQ, K = 3000, 16, 50, 10


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def annb() -> ModuleType:
    return _load(ANNB_DIR / "module.py", "spann_annb_module")


@pytest.fixture(scope="module")
def bigann() -> ModuleType:
    return _load(BIGANN_DIR / "spann_bigann.py", "spann_bigann_module")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x = synthetic_array(N, DIM, seed=7)
    q = synthetic_array(NQ, DIM, seed=7, stream=1, n_hint=N)
    return x, q


# -- definitions, expanded as the harnesses expand them ----------------------------------------
def _combinations(args: Any) -> list:
    """A list: the product of its items (an item that is not a list is one choice); a dict: the
    product of its list values; a string (big-ann-benchmarks): the JSON list it holds."""
    if isinstance(args, str):
        return json.loads(args.strip())
    if isinstance(args, list):
        return [list(c) for c in itertools.product(*[a if isinstance(a, list) else [a] for a in args])]
    if isinstance(args, dict):
        choices = [v if isinstance(v, list) else [v] for v in args.values()]
        return [dict(zip(args, c)) for c in itertools.product(*choices)]
    raise TypeError(f"no combinations of {type(args).__name__}")


def _run_group_args(group: dict, sep: str) -> tuple[list, list]:
    """(constructor argument sets, query argument groups) of one run group; ``sep`` is the
    harness's word separator in keys (``_`` ann-benchmarks, ``-`` big-ann-benchmarks)."""
    def expand(key: str) -> list | None:
        if f"{key}{sep}groups" in group:
            return _combinations([_combinations(g) if isinstance(g, dict) else g for g in group[f"{key}{sep}groups"]])
        if key in group:
            return _combinations(group[key])
        return None

    args = expand("arg")
    if args is None:
        args = expand("args")
    assert args is not None, f"run group without args: {group}"
    queries = expand(f"query{sep}arg")
    if queries is None:
        queries = expand(f"query{sep}args") or []
    return args, queries


def _substitute(arg: Any, vs: dict[str, Any]) -> Any:
    if isinstance(arg, dict):
        return {k: _substitute(v, vs) for k, v in arg.items()}
    if isinstance(arg, list):
        return [_substitute(a, vs) for a in arg]
    return vs.get(arg, arg) if isinstance(arg, str) else arg


def annb_definitions(metric: str, dimension: int = DIM, count: int = K) -> list[tuple[str, dict, list, list]]:
    """(run group, algorithm entry, constructor arguments, query argument groups) for float data
    of ``metric``."""
    config = yaml.safe_load((ANNB_DIR / "config.yml").read_text())
    out = []
    for algo in [*config["float"].get("any", []), *config["float"].get(metric, [])]:
        for key in ("docker_tag", "module", "constructor"):
            assert key in algo, f"{algo.get('name')}: no {key}"
        for group_name, group in algo["run_groups"].items():
            args, queries = _run_group_args(group, "_")
            for a in args:
                full = [*algo.get("base_args", []), *(a if isinstance(a, list) else [a])]
                vs = {"@count": count, "@metric": metric, "@dimension": dimension}
                out.append((group_name, algo, [_substitute(x, vs) for x in full], queries))
    return out


def bigann_definitions(config_file: Path, dataset: str, metric: str, dimension: int = DIM,
                       count: int = K) -> list[tuple[str, dict, list, list]]:
    """(name, algorithm entry, constructor arguments, query argument groups) of ``dataset``;
    each query group is wrapped in a list as ``benchmark/main.py`` does before the runner
    unpacks it into ``set_query_arguments``."""
    config = yaml.safe_load(config_file.read_text())
    algos = {**config.get("any", {}), **config.get(dataset, {})}
    out = []
    for name, algo in algos.items():
        for key in ("docker-tag", "module", "constructor"):
            assert key in algo, f"{name}: no {key}"
        for group in algo["run-groups"].values():
            args, queries = _run_group_args(group, "-")
            queries = [q if isinstance(q, list) else [q] for q in queries]
            for a in args:
                full = [*algo.get("base-args", []), *(a if isinstance(a, list) else [a])]
                vs = {"@count": count, "@metric": metric, "@dimension": dimension}
                out.append((name, algo, [_substitute(x, vs) for x in full], queries))
    return out


# -- exact answers -----------------------------------------------------------------------------
def exact_top(x: np.ndarray, q: np.ndarray, k: int, metric: str) -> np.ndarray:
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    if metric == "euclidean":
        d = (q64 * q64).sum(1)[:, None] - 2 * q64 @ x64.T + (x64 * x64).sum(1)[None, :]
    elif metric == "angular":
        d = -(q64 / np.linalg.norm(q64, axis=1, keepdims=True)) @ (x64 / np.linalg.norm(x64, axis=1, keepdims=True)).T
    else:  # ip
        d = -q64 @ x64.T
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def recall(results: list | np.ndarray, gt: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(np.asarray(r)[:k].tolist()) & set(g[:k].tolist())) / k for r, g in zip(results, gt)]))


def assert_unique(results: list | np.ndarray, k: int) -> None:
    for r in results:  # the runners reject duplicated candidates
        r = np.asarray(r)
        r = r[r >= 0]
        assert len(r) <= k and len(r) == len(set(r.tolist())), "duplicated candidates"


# -- ann-benchmarks ----------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["euclidean", "angular"])
def test_ann_benchmarks_config_constructs_and_accepts_query_args(annb, metric):
    defs = annb_definitions(metric)
    assert defs
    for _, algo, args, queries in defs:
        assert algo["module"] == "ann_benchmarks.algorithms.spann"  # the directory it is copied to
        assert algo["docker_tag"] == "ann-benchmarks-spann"  # install.py tags ann-benchmarks-<directory>
        obj = getattr(annb, algo["constructor"])(*args)
        assert queries and hasattr(obj, "set_query_arguments")
        for qa in queries:
            obj.set_query_arguments(*qa)
            assert f"max_postings={qa[0]}" in str(obj)
        obj.done()


def test_ann_benchmarks_wrapper_rejects_bad_arguments(annb):
    with pytest.raises(ValueError, match="hamming"):
        annb.Spann("hamming", {})
    with pytest.raises(spann.ParameterError):
        annb.Spann("euclidean", {"no_such_parameter": 1})
    algo = annb.Spann("euclidean", {})
    with pytest.raises(spann.ParameterError):
        algo.set_query_arguments(0)


@pytest.mark.parametrize("metric", ["euclidean", "angular"])
def test_ann_benchmarks_runner(annb, data, metric):
    x, q = data
    gt = exact_top(x, q, K, metric)
    groups_seen = set()
    for group, algo_def, args, queries in annb_definitions(metric):
        if group in groups_seen:
            continue  # the first build of each run group keeps the test short
        groups_seen.add(group)
        # runner.run: instantiate, check set_query_arguments, build, then each query group
        algo = getattr(annb, algo_def["constructor"])(*args)
        assert not queries or hasattr(algo, "set_query_arguments")
        if hasattr(algo, "supports_prepared_queries"):
            algo.supports_prepared_queries()
        try:
            before = algo.get_memory_usage()
            algo.fit(x)
            index_size = algo.get_memory_usage() - before  # runner.build_index
            assert isinstance(index_size, float)
            single_recalls, batch_recalls = [], []
            for query_arguments in queries or [[]]:
                if query_arguments:
                    algo.set_query_arguments(*query_arguments)
                # run_individual_query, one query at a time
                single = [algo.query(v, K) for v in q]
                assert_unique(single, K)
                single_recalls.append(recall(single, gt, K))
                # run_individual_query, batch mode
                algo.batch_query(q, K)
                batch = algo.get_batch_results()
                assert len(batch) == NQ
                assert_unique(batch, K)
                batch_recalls.append(recall(batch, gt, K))
                extra = algo.get_additional()
                assert extra["dist_comps"] > 0 and extra["mean_lists_read"] > 0
                assert "spann(" in str(algo)
            for recalls in (single_recalls, batch_recalls):
                assert recalls[-1] >= 0.9, (args, recalls)
                assert recalls[-1] >= recalls[0], (args, recalls)
            index_dir = algo._dir
            assert index_dir is not None and Path(index_dir).exists()
        finally:
            algo.done()
        assert not Path(index_dir).exists()
    assert len(groups_seen) == 2


# -- big-ann-benchmarks ------------------------------------------------------------------------
class ToyDataset:
    """Stand-in for a big-ann-benchmarks ``DatasetCompetitionFormat`` data set: base vectors in
    a .fbin-layout file without an extension (as ``RandomDS`` writes them), or none (``file=False``:
    ``get_dataset_fn`` raises as upstream does for a missing file, the iterator still serves)."""

    def __init__(self, basedir: Path, x: np.ndarray, q: np.ndarray, distance: str, file: bool = True):
        self.nb, self.d = x.shape
        self.nq = q.shape[0]
        self.dtype = "float32"
        self.basedir = basedir
        self.ds_fn = f"data_{self.nb}_{self.d}"
        self._x, self._q, self._distance, self._file = x, q, distance, file
        path = basedir / self.ds_fn
        if file and not path.exists():
            write_vectors(path, x, fmt="fbin")

    def get_dataset_fn(self) -> str:
        if not self._file:
            raise RuntimeError(f"file {self.basedir / self.ds_fn} not found")
        return str(self.basedir / self.ds_fn)

    def get_dataset_iterator(self, bs: int = 512, split: tuple[int, int] = (1, 0)):
        nsplit, rank = split
        i0, i1 = self.nb * rank // nsplit, self.nb * (rank + 1) // nsplit
        for j in range(i0, i1, bs):
            yield np.ascontiguousarray(self._x[j:min(j + bs, i1)])

    def get_queries(self) -> np.ndarray:
        return self._q

    def distance(self) -> str:
        return self._distance

    def search_type(self) -> str:
        return "knn"

    def default_count(self) -> int:
        return 10

    def short_name(self) -> str:
        return f"{self.__class__.__name__}-{self.nb}"


@pytest.mark.parametrize("config_file,constructor,entries", [
    ("config.yaml", "Spann", {"random-xs": "euclidean", "text2image-1M": "ip", "text2image-10M": "ip"}),
    ("algos-2021-spann.yaml", "SpannT2", {"random-xs": "euclidean", "bigann-1B": "euclidean",
                                          "deep-1B": "euclidean"}),
])
def test_big_ann_config_constructs_and_accepts_query_args(bigann, tmp_path, monkeypatch, config_file, constructor,
                                                           entries):
    monkeypatch.chdir(tmp_path)
    assert set(yaml.safe_load((BIGANN_DIR / config_file).read_text())) == set(entries)
    for dataset, metric in entries.items():
        defs = bigann_definitions(BIGANN_DIR / config_file, dataset, metric)
        assert defs
        for _, algo, args, queries in defs:
            assert algo["module"] == "neurips23.ood.spann.spann_bigann"  # the directory it is copied to
            assert algo["docker-tag"] == "neurips23-ood-spann"  # neurips23.common.docker_tag("ood", "spann")
            assert algo["constructor"] == constructor
            obj = getattr(bigann, constructor)(*args)
            assert len(queries) <= 10  # the NeurIPS'23 rules: at most 10 search configurations
            for qa in queries:
                obj.set_query_arguments(*qa)
                assert "max_postings" in str(obj)
            obj.done()


def test_big_ann_wrapper_rejects_bad_arguments(bigann, tmp_path, data):
    with pytest.raises(ValueError, match="angular"):
        bigann.Spann("angular", {})
    with pytest.raises(spann.ParameterError):
        bigann.Spann("euclidean", {"no_such_parameter": 1})
    algo = bigann.Spann("euclidean", {})
    with pytest.raises(spann.ParameterError):
        algo.set_query_arguments({"max_postings": 8, "nprobe": 3})
    with pytest.raises(ValueError, match="threads"):
        algo.set_query_arguments({"max_postings": 8, "threads": -1})
    with pytest.raises(NotImplementedError, match="range search"):
        algo.range_query(data[1], 1.0)
    assert algo.track() == "ood" and bigann.SpannT2("euclidean", {}).track() == "T2"


@pytest.mark.parametrize("dataset,metric,file", [("random-xs", "euclidean", True), ("text2image-1M", "ip", False)])
def test_big_ann_runner(bigann, data, tmp_path, monkeypatch, dataset, metric, file):
    """``dataset`` names the config entry whose definitions run; the data is the small
    synthetic set, registered under that name in the wrapper's stand-in ``DATASETS``."""
    x, q = data
    monkeypatch.chdir(tmp_path)  # the harness's working directory: indices go under data/indices
    (tmp_path / "data" / "toy").mkdir(parents=True)
    monkeypatch.setitem(bigann.DATASETS, dataset, lambda: ToyDataset(tmp_path / "data" / "toy", x, q, metric, file))
    gt = exact_top(x, q, K, metric)
    [(name, algo_def, args, queries)] = bigann_definitions(BIGANN_DIR / "config.yaml", dataset, metric)

    def run(expect_loaded: bool) -> list[np.ndarray]:
        # benchmark/runner.py run
        algo = getattr(bigann, algo_def["constructor"])(*args)
        assert not queries or hasattr(algo, "set_query_arguments")
        ds = bigann.DATASETS[dataset]()
        distance, search_type = ds.distance(), ds.search_type()
        out = []
        try:
            before = algo.get_memory_usage()
            loaded = algo.load_index(dataset)
            assert loaded == expect_loaded
            if not loaded:
                algo.fit(dataset)  # BaseRunner.build
            index_size = algo.get_memory_usage() - before
            assert isinstance(index_size, float)
            local_dir, prefix, components = algo.index_files_to_store(dataset)
            assert components == [".zip"] and Path(local_dir, prefix + components[0]).is_file()
            assert Path(local_dir).is_relative_to(tmp_path / "data" / "indices" / "ood")
            for query_arguments in queries or [[]]:
                if query_arguments:
                    algo.set_query_arguments(*query_arguments)
                # BaseRunner.run_task, knn, two runs
                X = ds.get_queries()
                for _ in range(2):
                    assert search_type == "knn"
                    algo.query(X, K)
                    results = algo.get_results()
                    assert results.shape[0] == X.shape[0]
                assert_unique(results, K)
                out.append(results)
                attrs = {"name": str(algo), "distance": distance, **algo.get_additional()}
                assert attrs["dist_comps"] > 0 and attrs["mean_ssd_ios"] > 0
        finally:
            algo.done()
        return out

    first = run(expect_loaded=False)
    recalls = [recall(r, gt, K) for r in first]
    assert recalls[-1] >= 0.9 and recalls[-1] >= recalls[0], recalls
    again = run(expect_loaded=True)  # a second run finds the stored index
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not list((tmp_path / "data" / "indices").rglob("*.work"))  # the export's work directory is gone
    assert not list((tmp_path / "data" / "indices").rglob(".*.fbin"))  # so is the spooled base, if any
