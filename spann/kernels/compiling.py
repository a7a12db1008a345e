"""Whether numba is compiling a kernel right now, for front ends that show it.

A first build or search on a machine compiles spann's kernels (then numba's cache serves them,
see :mod:`spann.kernels.cache`); a compile can take tens of seconds during which a progress bar
does not move. :func:`compiling` tells a front end (the CLI shows a status line) what is being
compiled and for how long. The library itself prints nothing.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

from numba.core import event

__all__ = ["Compiling", "compiling", "watch_compiles"]


class Compiling(NamedTuple):
    """A compile under way: the kernel being compiled (its qualified name; kernels it calls
    compile inside it) and the seconds since it started."""

    kernel: str
    seconds: float


class _Watch(event.Listener):
    """Follows numba's compile events (nested: a kernel compiles the kernels it calls)."""

    def __init__(self) -> None:
        self.depth = 0
        self.kernel = ""
        self.since: float | None = None

    def on_start(self, ev: event.Event) -> None:
        if self.depth == 0:
            disp = ev.data.get("dispatcher") if isinstance(ev.data, dict) else None
            fn = getattr(disp, "py_func", None)
            self.kernel = getattr(fn, "__qualname__", "kernel")
            self.since = time.monotonic()
        self.depth += 1

    def on_end(self, ev: event.Event) -> None:
        self.depth = max(0, self.depth - 1)
        if self.depth == 0:
            self.since = None


_watch: _Watch | None = None
_lock = threading.Lock()


def watch_compiles() -> None:
    """Start following numba's compiles (once per process; cheap: one call per compile)."""
    global _watch
    with _lock:
        if _watch is None:
            _watch = _Watch()
            event.register("numba:compile", _watch)


def compiling() -> Compiling | None:
    """The compile under way in this process, or None (also before :func:`watch_compiles`)."""
    w = _watch
    if w is None:
        return None
    since = w.since
    if since is None:
        return None
    return Compiling(w.kernel, time.monotonic() - since)
