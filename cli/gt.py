"""``spann gt``: exact ground truth."""

from __future__ import annotations

import time

import click

from spann.cli.common import (check_outputs, common_options, echo_err, emit_json, is_quiet, json_option,
                              metric_option)
from spann.cli.datasets_cmd import VectorPath
from spann.datasets.formats import FORMATS, metric_from_hdf5, open_vectors
from spann.datasets.groundtruth import check_ids_output, check_k, distances_path_for, ground_truth_files
from spann.errors import ParameterError


@click.command("gt")
@click.argument("base", type=VectorPath())
@click.argument("queries", type=VectorPath())
@click.option("-k", type=click.IntRange(1, 100_000), default=100, show_default=True, help="Neighbours per query.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Ids file (.ibin/.ivecs/.npy); distances go beside it (gt.dist.fbin).")
@metric_option(unless_hdf5=True)
@click.option("--base-format", type=click.Choice(list(FORMATS)), help="Override the base file's format.")
@click.option("--queries-format", type=click.Choice(list(FORMATS)), help="Override the queries file's format.")
@json_option("a summary")
@common_options
def gt_cmd(base: str, queries: str, k: int, output: str, metric: str | None, base_format: str | None,
           queries_format: str | None, json_out: str | None) -> None:
    """Exact k-NN of QUERIES in BASE (blocked BLAS, bounded memory).

    --metric is required unless an ann-benchmarks .hdf5 input names its distance (then they must
    agree): ground truth of the wrong metric would make every recall figure wrong."""
    # every refusal before any work: output paths, metric, k
    check_ids_output(output)
    dist_out = distances_path_for(output)
    check_outputs([output, dist_out, json_out], [base, queries])
    metric = metric_from_hdf5([base, queries], metric)
    if metric is None:
        raise ParameterError("--metric is required (l2, ip or cosine): the index's metric, or recall is wrong")
    with open_vectors(base, base_format) as b:
        check_k(k, b.n, base)
    t0 = time.perf_counter()
    ids_path, dist_path = ground_truth_files(base, queries, output, k, metric, base_fmt=base_format,
                                             queries_fmt=queries_format, progress=not is_quiet())
    secs = time.perf_counter() - t0
    echo_err(f"wrote {ids_path} and {dist_path} in {secs:.1f} s")
    if json_out:
        emit_json({"ids": str(ids_path), "distances": str(dist_path), "k": k, "metric": metric,
                   "seconds": secs}, json_out)
