"""``spann export``: a local index as one zip file, or into an object store."""

from __future__ import annotations

import click

from spann.cli.common import check_index_output, common_options, echo_err, is_quiet, store_options
from spann.io.publish import export_index
from spann.io.sources import parse_storage_options


@click.command("export")
@click.argument("index", type=click.Path(exists=True, file_okay=False))
@click.argument("dest", metavar="DEST")
@click.option("--overwrite", is_flag=True, help="Replace an index already at DEST.")
@store_options
@common_options
def export_cmd(index: str, dest: str, overwrite: bool, storage_option: tuple[str, ...]) -> None:
    """Copy the local INDEX to DEST: a .zip file (members stored, 4 KiB-aligned: searched in
    place) or an object-store URL (s3://bucket/prefix; the root zarr.json is uploaded last)."""
    check_index_output(dest, [index])
    export_index(index, dest, overwrite=overwrite, storage_options=parse_storage_options(storage_option) or None,
                 progress=not is_quiet())
    echo_err(f"exported {index} to {dest}")
