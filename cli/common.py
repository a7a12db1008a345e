"""Shared CLI plumbing: one-line errors, quiet/debug options, JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import click

from spann.errors import SpannError

__all__ = ["SpannGroup", "common_options", "emit_json", "echo_err", "is_quiet", "metric_option", "check_writable"]


class SpannGroup(click.Group):
    """A click group that turns known errors into one-line messages (traceback with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # the reader of our stdout left: click exits 1 without a message
        except (SpannError, OSError, MemoryError) as e:
            if ctx.meta.get("spann.debug") or "--debug" in sys.argv:
                raise
            name = type(e).__name__
            msg = str(e) if isinstance(e, SpannError) else f"{name}: {e}"
            raise click.ClickException(msg.splitlines()[0] if msg else name) from None


def _set_meta(key: str):
    def cb(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.meta[key] = True
        return value
    return cb


def common_options(f: Callable) -> Callable:
    """Add ``-q/--quiet`` and ``--debug`` to a command."""
    f = click.option("-q", "--quiet", is_flag=True, expose_value=False, is_eager=True,
                     callback=_set_meta("spann.quiet"), help="No progress bars or summaries on stderr.")(f)
    f = click.option("--debug", is_flag=True, expose_value=False, is_eager=True,
                     callback=_set_meta("spann.debug"), help="Show full tracebacks on error.")(f)
    return f


def metric_option(required: bool = False, **kw: Any) -> Callable:
    """``--metric``: l2, ip, cosine or an alias (euclidean, angular, dot, ...), normalised."""
    from spann.metrics import ALIASES, METRICS, get_metric

    def cb(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return get_metric(value).name
        except SpannError as e:
            raise click.BadParameter(str(e)) from None

    return click.option("--metric", required=required, callback=cb, metavar="|".join(METRICS),
                        help=f"Distance: {', '.join(METRICS)} (aliases: {', '.join(ALIASES)}).", **kw)


def check_writable(path: str) -> None:
    """Fail now, in one line, if an output file cannot be written later (not after an hour of work)."""
    import os
    d = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise click.BadParameter(f"{path} is a directory", param_hint="output")
    if not os.path.isdir(d):
        raise click.BadParameter(f"directory {d} does not exist", param_hint="output")
    if not os.access(path if os.path.exists(path) else d, os.W_OK):
        raise click.BadParameter(f"{path} is not writable", param_hint="output")


def is_quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.meta.get("spann.quiet"))


def echo_err(msg: str) -> None:
    """Human-readable progress/summary text, to stderr (stdout stays machine-readable)."""
    if not is_quiet():
        click.echo(msg, err=True)


def emit_json(obj: Any, path: str | None) -> None:
    """Write ``obj`` as JSON to ``path`` ('-' = stdout)."""
    text = json.dumps(obj, indent=2, default=_jsonable)
    if path in (None, "-"):
        click.echo(text)
    else:
        with open(path, "w") as fh:
            fh.write(text + "\n")


def _jsonable(o: Any) -> Any:
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
