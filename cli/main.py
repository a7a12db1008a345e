"""The ``spann`` click group."""

from __future__ import annotations

import click

from spann import __version__
from spann.cli.bench import bench_cmd
from spann.cli.build import build_cmd
from spann.cli.common import SpannGroup
from spann.cli.compile_notice import start_compile_notice
from spann.cli.datasets_cmd import datasets_group
from spann.cli.demo import demo_cmd
from spann.cli.eval_cmd import eval_cmd
from spann.cli.export_cmd import export_cmd
from spann.cli.gt import gt_cmd
from spann.cli.info import info_cmd
from spann.cli.logs import install_log_handler
from spann.cli.search import search_cmd
from spann.cli.updates_cmd import add_cmd, delete_cmd
from spann.cli.verify import verify_cmd
from spann.cli.warmup import warmup_cmd


@click.group(cls=SpannGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spann")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """spann: SPANN memory-disk approximate nearest-neighbour search."""
    install_log_handler(ctx)  # the library's log lines on stderr (-q: errors only, --debug: all)
    start_compile_notice(ctx)  # a first run's kernel compiles shown as they happen (on a terminal)


cli.add_command(datasets_group)
cli.add_command(gt_cmd)
for _cmd in (build_cmd, search_cmd, add_cmd, delete_cmd, info_cmd, eval_cmd, demo_cmd, bench_cmd, verify_cmd,
             export_cmd, warmup_cmd):
    cli.add_command(_cmd)


def main() -> None:
    cli(prog_name="spann")


if __name__ == "__main__":
    main()
