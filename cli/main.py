"""The ``spann`` click group."""

from __future__ import annotations

import click

from spann import __version__
from spann.cli.common import SpannGroup
from spann.cli.datasets_cmd import datasets_group
from spann.cli.gt import gt_cmd


@click.group(cls=SpannGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spann")
def cli() -> None:
    """spann: SPANN memory-disk approximate nearest-neighbour search."""


cli.add_command(datasets_group)
cli.add_command(gt_cmd)


def main() -> None:
    cli(prog_name="spann")


if __name__ == "__main__":
    main()
