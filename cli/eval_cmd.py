"""``spann eval``: recall / latency / QPS / I/O of an index over a parameter sweep."""

from __future__ import annotations

import time
from typing import Any

import click
import numpy as np

from spann.cli.common import (check_outputs, common_options, echo_err, emit_json, is_quiet, json_option,
                              open_index_arg,
                              pack_options, store_options)
from spann.datasets import load, read_vectors
from spann.datasets.groundtruth import distances_path_for
from spann.errors import ParameterError
from spann.tools.eval import check_point, evaluate, parse_sweep, plot_recall_qps, write_csv


def legend(k: int, cold: bool, threads: int, breakdown: bool = True) -> str:
    """What each column of :func:`format_table` means and how it was measured (``breakdown``:
    with the recall-breakdown columns)."""
    cache = ("cold: the index's pages evicted before every timed query" if cold
             else "warm: the index's pages cached by a first pass over the queries")
    text = (f"recall: recall@{k} against the exact neighbours. mean/p50/p99 ms: single-query latency, one "
            f"thread, each query timed alone ({cache}). QPS: batch throughput on {threads} thread(s), best of "
            f"the runs, so it is not 1000 / latency. lists: posting lists read per query. KiB: the 4 KiB pages "
            f"those lists and the re-ranked rows span, per query. dists: distance evaluations per query.")
    if breakdown:
        text += (f" in lists / in pool: the share of the true top-{k} that the lists read hold / that reaches "
                 f"the exact re-rank (recall is what the result keeps). runs: device requests per query (runs "
                 f"of adjacent pages of the lists and re-ranked rows). rows: rows re-ranked per query.")
    return text


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(records) -> str:
    """A readable table of evaluation records (the recall-breakdown columns when a record has them)."""
    keys = list(dict.fromkeys(k for r in records for k in r.params))
    breakdown = any(r.recall_lists is not None for r in records)
    columns = ["target" if k == "recall" else k for k in keys]  # a recall target beside the measured recall
    head = ["system"] + columns + ["recall", "mean ms", "p50 ms", "p99 ms", "QPS", "lists", "KiB", "dists"]
    if breakdown:
        head += ["in lists", "in pool", "runs", "rows"]
    rows = []
    for r in records:
        row = [r.system] + [str(r.params.get(k, "")) for k in keys] + [
            f"{r.recall:.4f}", f"{r.latency_mean_ms:.3f}", f"{r.latency_p50_ms:.3f}", f"{r.latency_p99_ms:.3f}",
            f"{r.qps:,.0f}", _fmt(r.lists_read, ".1f"), _fmt(r.kib_read, ".1f"), _fmt(r.distance_evals, ".0f")]
        if breakdown:
            row += [_fmt(r.recall_lists, ".4f"), _fmt(r.recall_pool, ".4f"), _fmt(r.runs_read, ".1f"),
                    _fmt(r.rows_read, ".1f")]
        rows.append(row)
    w = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w[i]) for i, h in enumerate(head))]
    lines += ["  ".join(c.rjust(w[i]) for i, c in enumerate(row)) for row in rows]
    return "\n".join(lines)


@click.command("eval")
@click.argument("index", metavar="INDEX")
@store_options
@click.argument("queries", required=False, type=click.Path(dir_okay=False))
@click.argument("gt", required=False, type=click.Path(dir_okay=False))
@click.option("--dataset", help="Prepared dataset directory or registered name (gives QUERIES and GT).")
@click.option("-k", type=click.IntRange(1), default=10, show_default=True)
@click.option("--sweep", "sweep", multiple=True, default=("max_postings=8,16,32,64,128",), show_default=True,
              help="name=v1,v2,... (repeatable; the cartesian product is run); recall=0.9,0.95 sweeps the "
              "index's operating points for those recall@10 targets.")
@click.option("--prune-eps", help="Comma-separated prune_eps values to add to the sweep (e.g. 0.5,1,inf).")
@click.option("--threads", type=click.IntRange(0), default=0,
              help="Threads for batch QPS (0 = all cores).")
@click.option("--runs", type=click.IntRange(1), default=3, show_default=True, help="Batch runs (best is kept).")
@click.option("--latency-queries", type=click.IntRange(1), default=2000, show_default=True,
              help="Queries timed one by one for latency percentiles.")
@click.option("--cold", is_flag=True, help="Evict the index from the page cache before every timed query.")
@click.option("--prefetch/--no-prefetch", default=None, help="Force prefetching on or off (default: on with --cold).")
@json_option("the records")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), help="Write records as CSV.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a recall-QPS plot (PNG).")
@common_options
@pack_options("outputs", "json_out", "csv_out", "plot")
@pack_options("timing", "runs", "latency_queries", "cold", "prefetch")
def eval_cmd(index: str, queries: str | None, gt: str | None, dataset: str | None, k: int, sweep: tuple[str, ...],
             prune_eps: str | None, threads: int, storage_option: tuple[str, ...], timing: dict[str, Any],
             outputs: dict[str, Any]) -> None:
    """Evaluate INDEX on QUERIES against ground truth GT (or --dataset)."""
    json_out, csv_out, plot = outputs["json_out"], outputs["csv_out"], outputs["plot"]
    runs, latency_queries = timing["runs"], timing["latency_queries"]
    cold, prefetch = timing["cold"], timing["prefetch"]
    check_outputs([json_out, csv_out, plot], [queries, gt, dataset], index_dirs=[index])
    if plot and not plot.lower().endswith(".png"):
        raise click.BadParameter(f"{plot}: the plot is a PNG; name it *.png", param_hint="--plot")
    specs = list(sweep) + ([f"prune_eps={prune_eps}"] if prune_eps else [])
    points = parse_sweep(specs)
    for p in points:  # every point is valid before any work starts
        check_point(p)
    gt_d = None
    if dataset:
        m = load(dataset)
        q = m.load_queries()
        gt_i, gt_d = m.load_gt()
    elif queries and gt:
        q = read_vectors(queries)
        gt_raw = read_vectors(gt, ids=True)
        if gt_raw.dtype.kind == "f":
            raise ParameterError(f"{gt}: ground truth must hold integer ids (.ibin/.ivecs/.npy of ints), "
                                 f"got {gt_raw.dtype} vectors")
        gt_i = gt_raw.astype(np.int64)
        dp = distances_path_for(gt)
        gt_d = read_vectors(dp) if dp.exists() else None
    else:
        raise ParameterError("give QUERIES and GT, or --dataset")
    pf = cold if prefetch is None else prefetch
    points = [{**p, "prefetch": pf} for p in points]
    t0 = time.perf_counter()
    with open_index_arg(index, storage_option) as idx:
        open_s = time.perf_counter() - t0
        if dataset and m.metric != idx.metric:
            echo_err(f"warning: dataset {m.name}'s ground truth is for metric {m.metric}, the index uses "
                     f"{idx.metric}: recall below measures against the wrong neighbours")
        if dataset and (idx.attrs.get("user_ids") or idx.generation > 1):
            raise ParameterError(f"{index}: holds your own ids or has been updated, but the dataset's ground truth "
                                 f"is over its base rows; give QUERIES and a GT file in the index's ids")
        records = evaluate(idx, q, gt_i, k, sweep=points, gt_dists=gt_d, runs=runs, threads=threads or None,
                           latency_queries=latency_queries, cold=cold, progress=not is_quiet())
    for r in records:
        r.open_seconds = open_s
        r.params.pop("prefetch", None)
        r.extra["prefetch"] = pf
    table = format_table(records)
    if json_out == "-":  # stdout carries the JSON alone
        echo_err(table)
    else:
        click.echo(table)
    echo_err(f"({len(q)} queries, k={k}, {'cold' if cold else 'warm'} cache, index opened in {open_s:.2f}s)")
    echo_err(legend(k, cold, records[0].threads if records else 0,
                    breakdown=any(r.recall_lists is not None for r in records)))
    if json_out:
        emit_json([r.to_dict() for r in records], json_out)
    if csv_out:
        write_csv(records, csv_out)
    if plot:
        plot_recall_qps(records, plot, title=f"{index} (k={k})")
