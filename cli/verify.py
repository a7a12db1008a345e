"""``spann verify``: read a whole index and check its data (checksums, ids, every vector present)."""

from __future__ import annotations

import click

from spann.cli.common import check_outputs, common_options, echo_err, emit_json, json_option
from spann.tools.verify import verify_index


@click.command("verify")
@click.argument("index", type=click.Path(exists=True))
@json_option("the summary")
@common_options
def verify_cmd(index: str, json_out: str | None) -> None:
    """Check every byte of INDEX that opening does not: shard checksums, posting ids and rows,
    vectors finite, every vector present. Exit 1 with the problems found."""
    check_outputs([json_out], index_dirs=[index])
    summary = verify_index(index)
    if json_out:
        emit_json(summary, json_out)
    if json_out != "-":
        echo_err(f"{index}: OK ({summary['live']:,} live vectors, {summary['vectors']:,} built; generation "
                 f"{summary['generation']}; {summary['lists']:,} lists, {summary['entries']:,} entries, "
                 f"{summary['shards_checksummed']} shards checksummed)")
        if not summary["root_checksummed"]:
            echo_err(f"note: {index} is an index of an older format without a checksum of its root metadata; "
                     f"rebuild it with this spann to get one")
