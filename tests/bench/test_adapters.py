import numpy as np

from spann.bench.adapters import AnnBenchmarksSpann, BigAnnSpann
from spann.datasets import synthetic_array, write_vectors
from spann.kernels.exact import exact_knn
from spann.tools.eval import recall_at_k


def test_ann_benchmarks_adapter():
    x = synthetic_array(5000, 16, seed=1)
    q = synthetic_array(50, 16, seed=1, stream=1, n_hint=5000)
    gi, _ = exact_knn(x, q, 10, "cosine")
    algo = AnnBenchmarksSpann("angular", {"head_ratio": 0.1})
    algo.fit(x)
    algo.set_query_arguments(64, float("inf"))
    single = np.array([algo.query(v, 10) for v in q])
    algo.batch_query(q, 10)
    np.testing.assert_array_equal(algo.get_batch_results(), single)
    assert recall_at_k(single, gi, 10) > 0.9
    assert algo.get_additional()["lists_read"] > 0 and "max_postings" in str(algo)
    d = algo.index_dir
    algo.done()
    assert not d.exists()


def test_big_ann_adapter(tmp_path):
    x = synthetic_array(5000, 8, seed=2)
    write_vectors(tmp_path / "base.fbin", x)

    class DS:
        def get_dataset_fn(self):
            return str(tmp_path / "base.fbin")

        def distance(self):
            return "euclidean"

    algo = BigAnnSpann("euclidean", index_dir=str(tmp_path / "work"))
    assert not algo.load_index(DS())
    algo.fit(DS())
    algo.set_query_arguments({"max_postings": 32})
    algo.query(x[:20], 5)
    assert (algo.get_results()[:, 0] == np.arange(20)).all()
    assert algo.index_files_to_store and algo.get_additional()["kib_read"] > 0
    algo.done()
    again = BigAnnSpann("euclidean", index_dir=str(tmp_path / "work"))
    assert again.load_index(DS())
    again.done()
