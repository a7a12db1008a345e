"""``spann search``: k-NN of a query file against an index."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from spann.cli.common import (INT32_MAX, LabelFilter, check_outputs, common_options, echo_err, emit_json,
                              json_option, open_index_arg, pack_options, store_options)
from spann.cli.datasets_cmd import VectorPath
from spann.datasets.formats import FORMATS, metric_from_hdf5, read_vectors, write_vectors
from spann.datasets.groundtruth import check_ids_output, distances_path_for
from spann.errors import DataError
from spann.params import SearchParams
from spann.search.operating_points import DEFAULT_RECALL

_DEFAULTS = SearchParams()


def search_options(f):
    """Options shared by search and eval."""
    f = click.option("--ef", type=click.IntRange(0), default=0, help="Head-graph beam width (0 = auto).")(f)
    f = click.option("--prefetch/--no-prefetch", default=_DEFAULTS.prefetch, show_default=True,
                     help="Issue all of a query's posting reads at once (helps a cold page cache).")(f)
    f = click.option("--rerank", type=click.IntRange(0, 1 << 16), default=_DEFAULTS.rerank, show_default=True,
                     help="Candidates re-ranked exactly (coded postings; 0 = the depth measured at build, "
                     "else by encoding).")(f)
    f = click.option("--pruner/--no-pruner", default=_DEFAULTS.pruner, show_default=True,
                     help="Let the index's learned pruner choose each query's list count (median = --max-postings).")(f)
    f = click.option("--threads", type=click.IntRange(0), default=0,
                     help="Search threads for a batch (0 = the cores no other process is running on).")(f)
    f = click.option("--direct/--no-direct", default=_DEFAULTS.direct, show_default=True,
                     help="Read lists and re-rank rows with O_DIRECT (Linux AIO), bypassing the page cache: every "
                     "query reads from the device, as DiskANN does.")(f)
    return f


@click.command("search")
@click.argument("index", metavar="INDEX")
@store_options
@click.argument("queries", type=VectorPath())
@click.option("-k", type=click.IntRange(1), default=10, show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Ids file (.ibin/.ivecs/.npy); distances go beside it (out.dist.fbin).")
@click.option("--max-postings", type=click.IntRange(1), default=None,
              help="Posting lists read per query (the median query, with the pruner). Default: the index's "
              f"operating point for recall@10 {DEFAULT_RECALL} (see `spann info`), else {_DEFAULTS.max_postings}.")
@click.option("--recall", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Read the fewest lists whose recall@10, measured on the index's own data at build, reaches "
              "this target (instead of --max-postings).")
@click.option("--prune-eps", type=click.FloatRange(0), default=_DEFAULTS.prune_eps, show_default=True,
              help="Read list j only if d(q, c_j) <= (1 + eps) d(q, c_1).")
@click.option("--queries-format", type=click.Choice(list(FORMATS)), help="Override the queries file's format.")
@click.option("--filter", "filt", type=LabelFilter(), metavar="LABEL[,LABEL...]",
              help="Return only vectors carrying one of these labels (index built with --labels), e.g. 7,9; "
              "fewer matches than k leave ids -1.")
@search_options
@json_option("the search summary")
@common_options
@pack_options("how", "max_postings", "recall", "prune_eps", "ef", "prefetch", "rerank", "pruner", "direct")
def search_cmd(index: str, queries: str, k: int, output: str, threads: int, queries_format: str | None,
               json_out: str | None, filt: list[int] | None, storage_option: tuple[str, ...],
               how: dict[str, Any]) -> None:
    """Search INDEX for the k nearest neighbours of every vector in QUERIES."""
    # every refusal before any work: unwritable outputs, outputs that would replace an input
    fmt = check_ids_output(output)
    dpath = distances_path_for(output)
    check_outputs([output, dpath, json_out], [queries], index_dirs=[index])
    q = read_vectors(queries, queries_format)
    with open_index_arg(index, storage_option) as idx:
        metric_from_hdf5([queries], idx.metric, given_as=f"but index {index} uses metric {idx.metric}")
        top = int(idx.attrs.get("next_id", 0)) - 1  # no id is above it
        if fmt != "npy" and top > INT32_MAX:
            raise DataError(f"{output}: index ids go up to {top}, beyond the int32 .{fmt} format; write .npy")
        t0 = time.perf_counter()
        # the path this search takes (single query or batch, direct or not, filtered or not), on its
        # first queries: its kernels load (or, on a first run, compile) before the timed search
        idx.search(q[:2], k, threads=1, filter=filt, **how)
        t1 = time.perf_counter()
        r = idx.search(q, k, threads=threads or None, filter=filt, **how)
        secs = time.perf_counter() - t1
    if fmt != "npy" and r.ids.size and int(r.ids.max()) > INT32_MAX:
        raise DataError(f"{output}: id {int(r.ids.max())} does not fit the int32 .{fmt} format; write .npy")
    ids = r.ids if fmt == "npy" else r.ids.astype(np.int32)
    write_vectors(output, ids)
    dpath = distances_path_for(output)
    write_vectors(dpath, r.distances)
    summary = {"queries": len(q), "k": k, "seconds": secs, "qps": len(q) / secs if secs > 0 else None,
               "prepare_seconds": t1 - t0, "mean_lists_read": float(r.lists_read.mean()),
               "mean_kib_read": float(r.bytes_read.mean() / 1024),
               "mean_distance_evals": float(r.distance_evals.mean()),
               "filter": filt, "ids": str(Path(output)), "distances": str(dpath)}
    echo_err(f"{len(q)} queries in {secs:.3f}s ({summary['qps']:.0f} QPS), {summary['mean_lists_read']:.1f} lists "
             f"and {summary['mean_kib_read']:.1f} KiB read per query -> {output}")
    if json_out:
        emit_json(summary, json_out)
