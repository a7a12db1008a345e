"""The command line's view of the library's log: records of the ``spann`` loggers go to stderr.

The library itself only emits records (``logging.getLogger(__name__)`` under ``spann``) and
prints nothing. The ``spann`` group installs one handler for the duration of a command: INFO
and above by default (a build's stage lines, ...), errors only with ``-q/--quiet``, everything
with ``--debug``. Lines are written above any progress bar on stderr, so bars stay whole and
stdout stays machine-readable.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from tqdm import tqdm

__all__ = ["install_log_handler"]

LOGGER = logging.getLogger("spann")


class _Format(logging.Formatter):
    """INFO lines as they are; other levels prefixed (``warning: ...``); ``--debug`` adds the logger."""

    def __init__(self, meta: dict[str, Any]):
        super().__init__()
        self._meta = meta

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        if self._meta.get("spann.debug"):
            return f"{record.levelname.lower()} {record.name}: {msg}"
        return msg if record.levelno == logging.INFO else f"{record.levelname.lower()}: {msg}"


class _StderrHandler(logging.Handler):
    """Writes to the current ``sys.stderr`` (looked up per record) through ``tqdm.write``, which
    clears and redraws progress bars around the line. The threshold follows the command's
    ``-q`` / ``--debug`` flags, read from the click context's ``meta`` (shared by the group and
    its subcommands; parsed after the group installed the handler), from any thread."""

    def __init__(self, meta: dict[str, Any]):
        super().__init__(logging.DEBUG)
        self._meta = meta
        self.setFormatter(_Format(meta))

    def threshold(self) -> int:
        if self._meta.get("spann.quiet"):
            return logging.ERROR
        if self._meta.get("spann.debug"):
            return logging.DEBUG
        return logging.INFO

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < self.threshold():
            return
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's contract: report, never raise
            self.handleError(record)


def install_log_handler(ctx: click.Context) -> None:
    """Route ``spann.*`` records to stderr while ``ctx`` (the group's context) is open; the
    logger's previous level and handlers come back when it closes."""
    for h in [h for h in LOGGER.handlers if isinstance(h, _StderrHandler)]:
        LOGGER.removeHandler(h)  # a previous command in this process (tests) that did not close
    handler = _StderrHandler(ctx.meta)
    old_level = LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG)  # the handler applies the command's threshold

    def restore() -> None:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(old_level)

    ctx.call_on_close(restore)
