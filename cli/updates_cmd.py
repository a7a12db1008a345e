"""``spann add`` and ``spann delete``: update a built index in place (each run is one atomic,
durable generation; searches in other processes pick it up)."""

from __future__ import annotations

import time

import click
import numpy as np

import spann
from spann.cli.common import (check_outputs, common_options, echo_err, emit_json, json_option, read_ids_file,
                              read_labels_file)
from spann.cli.datasets_cmd import VectorPath
from spann.datasets.formats import FORMATS, metric_from_hdf5, read_vectors
from spann.errors import QueryError


def _id_span(ids) -> str:
    """``ids 10..19``, or ``5 ids in 3..90`` when they are not one contiguous run."""
    if ids.size == 0:
        return "no ids"
    lo, hi = int(ids.min()), int(ids.max())
    if hi - lo + 1 == ids.size:
        return f"id {lo}" if lo == hi else f"ids {lo}..{hi}"
    return f"{ids.size:,} ids in {lo}..{hi}"


@click.command("add")
@click.argument("index", type=click.Path(file_okay=False))
@click.argument("vectors", type=VectorPath())
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), help="Override the vector file's format.")
@click.option("--ids", "ids_file", type=click.Path(exists=True, dir_okay=False),
              help="Their ids: .npy (integers (m,)), .ibin (int32) or .i8bin (int64); new, distinct, >= 0 "
              "[default: the index's next free ids].")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="Their labels: .npy integers (m,) or (m, L), -1 = none.")
@json_option("the summary")
@common_options
def add_cmd(index: str, vectors: str, fmt: str | None, ids_file: str | None, labels_file: str | None,
            json_out: str | None) -> None:
    """Add every vector of VECTORS (any format build reads) to INDEX."""
    check_outputs([json_out], [vectors, ids_file, labels_file], index_dirs=[index])
    x = read_vectors(vectors, fmt)
    ids = read_ids_file(ids_file, len(x)) if ids_file else None
    labels = read_labels_file(labels_file, len(x)) if labels_file else None
    with spann.open(index) as idx:
        metric_from_hdf5([vectors], idx.metric, given_as=f"but index {index} uses metric {idx.metric}")
        t0 = time.perf_counter()
        new = idx.add(x, ids=ids, labels=labels)
        secs = time.perf_counter() - t0
        live = len(idx)
    summary = {"added": int(new.size), "first_id": int(new.min()) if new.size else None,
               "last_id": int(new.max()) if new.size else None, "live": live, "seconds": secs}
    if json_out:
        emit_json(summary, json_out)
    echo_err(f"added {new.size:,} vectors ({_id_span(new)}) to {index}: {live:,} live, {secs:.2f}s")


@click.command("delete")
@click.argument("index", type=click.Path(file_okay=False))
@click.option("--ids", "ids_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Ids to delete: .npy (integers (m,)), .ibin (int32) or .i8bin (int64).")
@click.option("--missing-ok", is_flag=True, help="Skip ids that are not in the index instead of failing.")
@json_option("the summary")
@common_options
def delete_cmd(index: str, ids_file: str, missing_ok: bool, json_out: str | None) -> None:
    """Delete the vectors of the ids in --ids from INDEX (all or nothing)."""
    check_outputs([json_out], [ids_file], index_dirs=[index])
    ids = read_ids_file(ids_file)
    distinct = int(np.unique(ids).size)
    with spann.open(index) as idx:
        t0 = time.perf_counter()
        try:
            gone = idx.delete(ids, missing_ok=missing_ok)
        except QueryError as e:  # name the CLI flag, not the Python keyword
            raise QueryError(str(e).replace("missing_ok=True", "--missing-ok")) from None
        secs = time.perf_counter() - t0
        live = len(idx)
    summary = {"deleted": gone, "not_found": distinct - gone, "live": live, "seconds": secs}
    if json_out:
        emit_json(summary, json_out)
    skipped = f" ({distinct - gone:,} not in the index)" if distinct > gone else ""
    echo_err(f"deleted {gone:,} vectors{skipped} from {index}: {live:,} live, {secs:.2f}s")
