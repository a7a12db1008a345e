"""``spann verify``: read a whole index and check its data (checksums, ids, every vector present)."""

from __future__ import annotations

import click

from spann.cli.common import common_options, echo_err, emit_json
from spann.tools.verify import verify_index


@click.command("verify")
@click.argument("index", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@common_options
def verify_cmd(index: str, as_json: bool) -> None:
    """Check every byte of INDEX that opening does not: shard checksums, posting ids and rows,
    vectors finite, every vector present. Exit 1 with the problems found."""
    summary = verify_index(index)
    if as_json:
        emit_json(summary, "-")
    else:
        echo_err(f"{index}: OK ({summary['vectors']:,} vectors, {summary['lists']:,} lists, "
                 f"{summary['entries']:,} entries, {summary['shards_checksummed']} shards checksummed)")
        if not summary["root_checksummed"]:
            echo_err(f"note: {index} is an index of an older format without a checksum of its root metadata; "
                     f"rebuild it with this spann to get one")
