"""Shared CLI plumbing: one-line errors, quiet/debug options, JSON output, id and label files."""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import click
import numpy as np

import spann
from spann.datasets.formats import check_distinct_paths, check_input_file, split_hdf5
from spann.errors import DataError, FormatNotSupportedError, ParameterError, SpannError, VectorFileError
from spann.format.labels import check_labels
from spann.io.idmap import check_ids
from spann.io.sources import parse_storage_options
from spann.kernels.metrics import ALIASES, METRICS, get_metric

__all__ = ["SpannGroup", "common_options", "emit_json", "echo_err", "is_quiet", "metric_option", "check_writable",
           "check_outputs", "check_index_output", "heartbeat", "json_option", "pack_options", "enclosing_index",
           "LabelFilter", "read_ids_file", "read_labels_file", "INT32_MAX"]

INT32_MAX = 2**31 - 1


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


def store_options(f: Callable) -> Callable:
    """``--storage-option KEY=VALUE`` (repeatable) for an object-store index URL."""
    return click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
                        help="Object-store setting for an s3:// (gs://, az://) INDEX, e.g. endpoint=http://host:9000, "
                        "region=eu-west-1 (default: the AWS_* environment).")(f)


def open_index_arg(index: str, storage_option: tuple[str, ...] = ()):
    """Open INDEX (a directory, a .zip file or an object-store URL)."""
    return spann.open(index, storage_options=parse_storage_options(storage_option) or None)


def metric_option(required: bool = False, unless_hdf5: bool = False, **kw: Any) -> Callable:
    """``--metric``: l2, ip, cosine or an alias (euclidean, angular, dot, ...), normalised.
    ``unless_hdf5``: required unless an ann-benchmarks .hdf5 input names its distance (the
    command checks; the help says so)."""

    def cb(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return get_metric(value).name
        except SpannError as e:
            raise click.BadParameter(str(e)) from None

    need = " [required unless an ann-benchmarks .hdf5 input names its distance]" if unless_hdf5 else ""
    return click.option("--metric", required=required, callback=cb, metavar="|".join(METRICS),
                        help=f"Distance: {', '.join(METRICS)} (aliases: {', '.join(ALIASES)}).{need}", **kw)


def check_writable(path: str) -> None:
    """Fail now, in one line, if an output file cannot be written later (not after an hour of work)."""
    d = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise click.BadParameter(f"{path} is a directory", param_hint="output")
    if not os.path.isdir(d):
        raise click.BadParameter(f"directory {d} does not exist", param_hint="output")
    if not os.access(path if os.path.exists(path) else d, os.W_OK):
        raise click.BadParameter(f"{path} is not writable", param_hint="output")


def enclosing_index(path: str | os.PathLike) -> Path | None:
    """The nearest directory at or above ``path`` that holds a ``zarr.json`` (a spann index or
    any zarr node), or ``None``. ``path`` need not exist."""
    p = Path(os.path.abspath(os.fspath(path)))
    for d in (p, *p.parents):
        if (d / "zarr.json").is_file():
            return d
    return None


def _is_zip_index(path: Path) -> bool:
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return "zarr.json" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def check_outputs(outputs: Iterable[str | os.PathLike | None], inputs: Iterable[str | os.PathLike | None] = (),
                  index_dirs: Iterable[str | os.PathLike | None] = (), directories: bool = False,
                  index_role: str = "input") -> None:
    """Refuse, in one line and before any work, an output path that would destroy data: one that
    lies inside an index (``index_dirs``, whether or not they exist yet, or any existing
    directory holding a ``zarr.json``), is an index packed as a zip, is the same file as an input
    or another output, or cannot be written. ``None``, ``"-"`` (stdout) and object-store URLs are
    skipped. With ``directories`` the outputs are directories to be created or filled."""
    outs = [os.fspath(o) for o in outputs if o is not None and os.fspath(o) != "-" and "://" not in os.fspath(o)]
    own = [Path(os.path.abspath(os.fspath(d))) for d in index_dirs if d is not None and "://" not in os.fspath(d)]
    for o in outs:
        op = Path(os.path.abspath(split_hdf5(o)[0]))
        for d in own:
            if op == d or d in op.parents:
                raise ParameterError(f"output {o} lies inside the {index_role} index {d}; write it elsewhere")
        inside = enclosing_index(op if directories else op.parent)
        if inside is not None:
            raise ParameterError(f"output {o} lies inside the index (zarr group) {inside}; write it elsewhere")
        if _is_zip_index(op):
            raise ParameterError(f"output {o} is an index (a zip holding zarr.json); refusing to overwrite it")
        if not directories:
            check_writable(str(op))
    check_distinct_paths(outs, list(inputs))


def check_index_output(index: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Refuse an index destination (a directory or .zip to be created or replaced) that lies
    inside another index or is one of the inputs. Object-store URLs are skipped."""
    if "://" in os.fspath(index):
        return
    p = Path(os.path.abspath(os.fspath(index)))
    inside = enclosing_index(p.parent)
    if inside is not None:
        raise ParameterError(f"index {index} would lie inside the index (zarr group) {inside}; build it elsewhere")
    check_distinct_paths([index], list(inputs))


def json_option(what: str) -> Callable:
    """``--json [FILE|-]``, the same on every command: ``what`` as JSON into FILE, or on stdout
    with ``-`` or no value (stdout then carries the JSON alone)."""
    return click.option("--json", "json_out", type=click.Path(dir_okay=False, allow_dash=True), is_flag=False,
                        flag_value="-", default=None, metavar="[FILE|-]",
                        help=f"Write {what} as JSON to FILE, or to stdout with '-' or no value.")


def pack_options(target: str, *names: str) -> Callable:
    """Hand the options ``names`` to the command as one dict ``target`` (put this decorator
    right above the function, below its options): a command with many options keeps a short
    signature, and groups that travel together (search parameters, outputs) stay together."""
    def deco(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[target] = {n: kwargs.pop(n) for n in names}
            return f(*args, **kwargs)
        return wrapper
    return deco


class heartbeat:
    """``with heartbeat("compiling search kernels"):`` — on a terminal, after ``delay`` seconds,
    a line on stderr with the message and the seconds elapsed, rewritten every second until the
    block ends (then cleared): long silent work (numba compiling kernels on a first run) shows
    that it is alive. Nothing when stderr is not a terminal or with -q."""

    def __init__(self, message: str, delay: float = 1.0):
        self.message, self.delay = message, delay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = False

    def _run(self) -> None:
        t0 = time.monotonic()
        if self._stop.wait(self.delay):
            return
        while True:
            self._shown = True
            click.echo(f"\r{self.message} ... {time.monotonic() - t0:.0f} s", err=True, nl=False)
            if self._stop.wait(1.0):
                return

    def __enter__(self) -> "heartbeat":
        if not is_quiet() and sys.stderr.isatty():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            if self._shown:
                click.echo("\r\033[K", err=True, nl=False)


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
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


class LabelFilter(click.ParamType):
    """``7,9`` -> ``[7, 9]``: comma-separated labels, integers in 0..2**31-1."""

    name = "labels"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        out = []
        for part in str(value).split(","):
            part = part.strip()
            if not part.isascii() or not part.isdigit():
                self.fail(f"{value!r}: expected comma-separated labels (integers >= 0), e.g. 7,9", param, ctx)
            if int(part) > INT32_MAX:
                self.fail(f"label {part} is out of range 0..{INT32_MAX}", param, ctx)
            out.append(int(part))
        return out


def _load_npy(path: str, what: str = ""):
    """A .npy array, memory mapped (no pickles); one-line VectorFileError if unreadable or not
    a regular file."""
    check_input_file(path, what)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise VectorFileError(f"{path}: not a readable .npy array ({msg})") from None


def _load_id_bin(path: str, dtype: str, what: str | None = None):
    """Ids of a big-ann binary file: int32 n, int32 d = 1, then n ids of ``dtype``."""
    check_input_file(path, "--ids" if what is None else what)
    ext = os.path.splitext(path)[1]
    size = os.path.getsize(path)
    if size < 8:
        raise VectorFileError(f"{path}: truncated {ext} header ({size} bytes, need 8)")
    n, d = (int(v) for v in np.fromfile(path, dtype="<i4", count=2))
    item = np.dtype(dtype).itemsize
    if n < 0 or d != 1:
        raise VectorFileError(f"{path}: header says {n} x {d}; an id file holds n x 1 ids")
    if size != 8 + n * item:
        hint = " (.i8bin id files hold int64 ids)" if ext == ".i8bin" else ""
        raise VectorFileError(f"{path}: header says {n} {np.dtype(dtype).name} ids ({8 + n * item} bytes) "
                              f"but the file has {size} bytes{hint}")
    return np.memmap(path, dtype=dtype, mode="r", offset=8, shape=(n,)) if n else np.zeros(0, dtype)


def read_ids_file(path: str, n: int | None = None, what: str = "--ids"):
    """Ids from ``path``: .npy (integers (m,) or (m, 1)), .ibin (int32) or .i8bin (int64), both
    with the big-ann header (n, 1). With ``n``: exactly n distinct ids >= 0 (int64 (n,));
    without: any ids, as int64 (m,). One-line errors naming the file."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        arr = _load_npy(path, what)
    elif ext in (".ibin", ".i8bin"):
        arr = _load_id_bin(path, "<i4" if ext == ".ibin" else "<i8", what)
    else:
        raise FormatNotSupportedError(f"{what} {path}: id files are .npy, .ibin (int32) or .i8bin (int64), "
                                      f"not {ext or '(no extension)'}")
    if arr.dtype.kind not in "iu":
        raise DataError(f"{what} {path}: ids must be integers, got dtype {arr.dtype}")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{what} {path}: expected ids of shape (n,) or (n, 1), got {arr.shape}")
    if n is not None:
        if arr.shape[0] != n:
            raise DataError(f"{what} {path}: {arr.shape[0]:,} ids for {n:,} vectors")
        return check_ids(arr, n, what=f"{what} {path}")
    if arr.size and arr.dtype.kind == "u" and int(arr.max()) > np.iinfo(np.int64).max:
        raise DataError(f"{what} {path}: ids must be in 0..{np.iinfo(np.int64).max - 1}")
    return np.asarray(arr, dtype=np.int64)


def read_labels_file(path: str, n: int, what: str = "--labels"):
    """Labels from a .npy file: integers (n,) or (n, L), -1 = none; int32 (n, L)."""
    if os.path.splitext(path)[1].lower() != ".npy":
        raise FormatNotSupportedError(f"{what} {path}: labels are read from .npy files (integers (n,) or (n, L))")
    arr = _load_npy(path, what)
    if arr.dtype.kind not in "iu":
        raise DataError(f"{what} {path}: labels must be integers, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2) or arr.shape[0] != n:
        rows = f"{arr.shape[0]:,} rows" if arr.ndim in (1, 2) else f"shape {arr.shape}"
        raise DataError(f"{what} {path}: {rows} for {n:,} vectors (expected ({n},) or ({n}, L))")
    return check_labels(arr, n, what=f"{what} {path}")
