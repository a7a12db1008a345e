"""``spann info``: what an index holds and how it was built."""

from __future__ import annotations

import click

from spann.cli.build import build_summary
from spann.cli.common import check_outputs, common_options, emit_json, json_option, open_index_arg, store_options
from spann.search.operating_points import DEFAULT_RECALL


@click.command("info")
@click.argument("index", metavar="INDEX")
@store_options
@json_option("all attributes")
@common_options
def info_cmd(index: str, json_out: str | None, storage_option: tuple[str, ...]) -> None:
    """Print INDEX's attributes, build parameters and statistics."""
    check_outputs([json_out], index_dirs=[index])
    with open_index_arg(index, storage_option) as idx:
        info = idx.info()
        points = idx.operating_points
        default_mp = idx.default_params.max_postings
    if json_out:
        emit_json(info, json_out)
        if json_out == "-":
            return
    click.echo(f"index {info['path']} (format {info['format_version']})")
    try:
        click.echo(build_summary(info))
    except (KeyError, TypeError, ValueError, AttributeError):
        click.echo("build statistics: missing or malformed in the metadata")
    if "live" in info:
        click.echo(f"live vectors {info['live']:,} ({info['n']:,} built; generation {info.get('generation', 1)})")
    click.echo(f"in RAM after open: {info['ram_bytes'] / 2**20:.1f} MiB; on disk {info['disk_bytes'] / 2**20:.1f} MiB")
    click.echo("build parameters: " + ", ".join(f"{k}={v}" for k, v in dict(info["params"]).items()))
    if points is not None:
        click.echo(f"operating points (recall@{points.k} of {points.queries:,} base rows as queries; the default "
                   f"search reads max_postings={default_mp}, the point for recall {DEFAULT_RECALL}"
                   + (f"; re-rank depth {points.rerank_factor:g} x k" if points.rerank_factor else "") + "):")
        click.echo(points.table())
        if info.get("generation", 1) > 1:
            click.echo("(measured at build: updates since then can need more lists; Index.calibrate measures again)")
    else:
        click.echo(f"operating points: none (calibration_queries=0, fewer than 2,000 vectors, or an older spann): "
                   f"searches read max_postings={default_mp} lists and recall= is refused")
