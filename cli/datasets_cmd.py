"""``spann datasets list|prepare|register``."""

from __future__ import annotations

import os

import click

from spann.cli.common import check_outputs, common_options, echo_err, is_quiet, metric_option
from spann.datasets import list_datasets, prepare, register
from spann.datasets.formats import split_hdf5


class VectorPath(click.ParamType):
    """A vector file path; ``file.hdf5:dataset`` names a dataset of an HDF5 file (only the
    file part has to exist)."""

    name = "path"

    def convert(self, value, param, ctx):
        value = os.fspath(value)
        p, _key = split_hdf5(value)
        if not p.exists():
            self.fail(f"{p}: no such file", param, ctx)
        if p.is_dir():
            self.fail(f"{p}: is a directory, expected a vector file", param, ctx)
        return value


@click.group("datasets")
@common_options
def datasets_group() -> None:
    """List, prepare and register datasets."""


@datasets_group.command("list")
@common_options
def list_cmd() -> None:
    """Built-in and registered datasets."""
    for name, desc in list_datasets():
        click.echo(f"{name:<14} {desc}")


@datasets_group.command("prepare")
@click.argument("name")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--n", type=click.IntRange(1), help="synthetic: base rows.")
@click.option("--dim", type=click.IntRange(1, 65536), help="synthetic: dimension.")
@click.option("--dtype", type=click.Choice(["float32", "uint8"]), help="synthetic: element type.")
@click.option("--n-queries", type=click.IntRange(1), help="Number of queries.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), help="Random seed.")
@metric_option()
@click.option("--limit", type=click.IntRange(2), help="glove-50: use only the first LIMIT source rows.")
@common_options
def prepare_cmd(name: str, directory: str, **opts) -> None:
    """Write dataset NAME (base, queries, ground truth, manifest.json) into DIRECTORY."""
    check_outputs([directory], directories=True)
    options = {k: v for k, v in opts.items() if v is not None}
    m = prepare(name, directory, progress=not is_quiet(), **options)
    echo_err(f"prepared {m.name}: {m.n_base} x {m.dim} {m.dtype} base, {m.n_queries} queries, "
             f"top-{m.gt_k} ground truth, metric {m.metric} -> {directory}")


@datasets_group.command("register")
@click.argument("name")
@click.option("--base", required=True, type=VectorPath(),
              help="Base vectors; an ann-benchmarks file.hdf5 alone also gives queries (test), ground truth "
                   "(neighbors, distances) and the metric (its distance attribute).")
@click.option("--queries", type=VectorPath(), help="Query vectors (file.hdf5:test for HDF5).")
@click.option("--gt", type=VectorPath(), help="Ground-truth ids file (ids in [-1, n_base)).")
@click.option("--gt-distances", type=VectorPath())
@metric_option(unless_hdf5=True)
@common_options
def register_cmd(name: str, base: str, queries: str | None, gt: str | None, gt_distances: str | None,
                 metric: str | None) -> None:
    """Register your own files as dataset NAME (no code needed).

    --metric is required unless an ann-benchmarks .hdf5 input names its distance."""
    m = register(name, base, queries, metric, gt, gt_distances)
    echo_err(f"registered {name}: {m.n_base} x {m.dim} {m.dtype}, {m.n_queries} queries"
             + (f", top-{m.gt_k} ground truth" if m.gt else "") + f", metric {m.metric}")
