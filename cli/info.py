"""``spann info``: what an index holds and how it was built."""

from __future__ import annotations

import click

from spann.cli.build import build_summary
from spann.cli.common import common_options, emit_json, open_index_arg, store_options


@click.command("info")
@click.argument("index", metavar="INDEX")
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print all attributes as JSON.")
@common_options
def info_cmd(index: str, as_json: bool, storage_option: tuple[str, ...]) -> None:
    """Print INDEX's attributes, build parameters and statistics."""
    with open_index_arg(index, storage_option) as idx:
        info = idx.info()
    if as_json:
        emit_json(info, "-")
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
