"""A status line while numba compiles kernels (a first run on a machine), for every command.

Without it a first build or search sits silent, or with a progress bar that does not move, for
as long as a kernel compiles. A daemon thread polls :func:`spann.kernels.compiling.compiling`
and, once a compile has lasted ``delay`` seconds, shows a tqdm status line (below any progress
bars) with what is compiling and for how long, updated every second, removed when it ends. On
a terminal only, and not with ``-q``.
"""

from __future__ import annotations

import sys
import threading

import click
from tqdm import tqdm

from spann.kernels.compiling import compiling, watch_compiles

__all__ = ["start_compile_notice"]

_MESSAGE = "compiling {kernel} (first run on this machine; cached after) {seconds:.0f} s"


def _run(meta: dict, delay: float, stop: threading.Event) -> None:
    bar = None
    while not stop.wait(0.5 if bar is None else 1.0):
        now = compiling()
        if now is None or meta.get("spann.quiet") or now.seconds < delay:
            if bar is not None and now is None:
                bar.close()
                bar = None
            continue
        text = _MESSAGE.format(kernel=now.kernel, seconds=now.seconds)
        if bar is None:
            bar = tqdm(total=0, bar_format="{desc}", desc=text, leave=False, file=sys.stderr)
        else:
            bar.set_description_str(text, refresh=True)
    if bar is not None:
        bar.close()


def start_compile_notice(ctx: click.Context, delay: float = 2.0) -> None:
    """Show compiles as they happen for the rest of the command run by ``ctx`` (its ``meta``
    says whether ``-q`` was given; it is shared with the subcommand's context)."""
    if not sys.stderr.isatty():
        return
    watch_compiles()
    stop = threading.Event()
    threading.Thread(target=_run, args=(ctx.meta, delay, stop), daemon=True, name="spann-compile-notice").start()
    ctx.call_on_close(stop.set)
