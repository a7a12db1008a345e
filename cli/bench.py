"""``spann bench``: spann and its peers on the same dataset, in one invocation."""

from __future__ import annotations

import json
from pathlib import Path

import click

from spann.bench.runner import run_bench, summary_table
from spann.cli.common import check_outputs, common_options, echo_err, is_quiet
from spann.datasets import load
from spann.tools.eval import EvalRecord, plot_recall_qps, write_csv


@click.command("bench")
@click.argument("dataset")
@click.option("--algorithms", default="spann,faiss-ivf,faiss-ivfpqfs,faiss-ivf-rabitq,hnswlib,diskann,bruteforce",
              show_default=True, help="Comma-separated: spann, faiss-ivf, faiss-ivf-ondisk, faiss-ivfpqfs (IVF + 4-bit "
              "PQ fast-scan + refine), faiss-ivf-rabitq (IVF + RaBitQ + refine), hnswlib, diskann, bruteforce.")
@click.option("-k", type=click.IntRange(1), default=10, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="Threads for every system.")
@click.option("--runs", type=click.IntRange(1), default=3, show_default=True, help="Batch runs per point (best kept).")
@click.option("--latency-queries", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--cold-queries", type=click.IntRange(0), default=0,
              help="Also measure spann with a cold page cache on this many queries (evict before each).")
@click.option("--diskann-python", type=click.Path(exists=True, dir_okay=False),
              help="Interpreter of a venv with numpy==1.25.* and diskannpy==0.7.0: DiskANN runs there (its "
                   "queries read with O_DIRECT: cold).")
@click.option("--out", type=click.Path(file_okay=False), default="bench-out", show_default=True,
              help="Directory for results.jsonl, results.csv, summary.txt, recall_qps.png.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Where indexes are built (default OUT/work).")
@common_options
def bench_cmd(dataset: str, algorithms: str, k: int, threads: int, runs: int, latency_queries: int, cold_queries: int,
              diskann_python: str | None, out: str, workdir: str | None) -> None:
    """Measure spann and peers on DATASET (a prepared directory or registered name)."""
    load(dataset)  # fail fast on a bad dataset name
    check_outputs([out, workdir], directories=True)
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    results = run_bench([a.strip() for a in algorithms.split(",") if a.strip()], str(Path(dataset).resolve())
                        if Path(dataset).exists() else dataset, k=k, threads=threads, runs=runs,
                        latency_queries=latency_queries, workdir=workdir or str(o / "work"), cold_queries=cold_queries,
                        diskann_python=diskann_python, quiet=is_quiet())
    names = set(EvalRecord.__dataclass_fields__)
    recs = [EvalRecord(**{k_: v for k_, v in r.items() if k_ in names}) for res in results for r in res.get("records",
                                                                                                            [])]
    with open(o / "results.jsonl", "w") as fh:
        for res in results:
            fh.write(json.dumps({k_: v for k_, v in res.items() if k_ != "records"}) + "\n")
            for r in res.get("records", []):
                fh.write(json.dumps(r) + "\n")
    table = summary_table(results)
    (o / "summary.txt").write_text(table + "\n")
    click.echo(table)
    if recs:
        write_csv(recs, o / "results.csv")
        try:
            plot_recall_qps([r for r in recs if not r.cold], o / "recall_qps.png",
                            title=f"{Path(dataset).name}, k={k}, {threads} thread(s)")
        except Exception as e:  # matplotlib missing: the table is still the result
            echo_err(f"no plot: {e}")
    echo_err(f"results in {o}")
