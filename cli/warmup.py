"""``spann warmup``: compile and cache the kernels this machine's builds and searches will need."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import click
import numpy as np

import spann
from spann.cli.common import common_options, echo_err, heartbeat
from spann.codecs.encodings import CODECS
from spann.datasets import synthetic_array
from spann.errors import SpannError
from spann.kernels.metrics import METRICS

_DTYPES = ("float32", "uint8", "int8")


def _names(value: str, allowed, what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise click.BadParameter(f"{bad[0] if bad else value!r}: expected {what} from {', '.join(allowed)}")
    return names


@click.command("warmup")
@click.option("--dtype", "dtypes", default="float32,uint8", show_default=True,
              help="Element types of the vectors to come (comma-separated: float32, uint8, int8).")
@click.option("--encoding", "encodings", default="full,sq8,rabitq", show_default=True,
              help="Posting encodings to prepare (comma-separated).")
@click.option("--metric", "metrics", default="l2,cosine,ip", show_default=True,
              help="Metrics to prepare (comma-separated).")
@common_options
def warmup_cmd(dtypes: str, encodings: str, metrics: str) -> None:
    """Compile the build and search kernels for these kinds of index once, into numba's cache
    beside the package, so that a first build or search starts at once. Builds and searches a
    tiny index of each kind in a temporary directory (a first run takes a few minutes; a second
    one seconds)."""
    kinds = [(d, e, m) for d in _names(dtypes, _DTYPES, "dtypes") for e in _names(encodings, CODECS, "encodings")
             for m in _names(metrics, METRICS, "metrics")]
    builder_log = logging.getLogger("spann.builder")
    level = builder_log.level
    builder_log.setLevel(logging.WARNING)  # the tiny builds' stage lines are noise here
    try:
        _warm(kinds)
    finally:
        builder_log.setLevel(level)


def _warm(kinds: list[tuple[str, str, str]]) -> None:
    x = synthetic_array(3000, 16, seed=0)
    q = synthetic_array(8, 16, seed=0, stream=1, n_hint=3000)
    with tempfile.TemporaryDirectory(prefix="spann-warmup-") as tmp:
        for d, e, m in kinds:
            data, queries = x, q
            if d != "float32":  # byte vectors: the data scaled into the type's range
                lo, hi = (0, 255) if d == "uint8" else (-128, 127)
                span = float(x.max() - x.min()) or 1.0
                data = np.clip((x - x.min()) / span * (hi - lo) + lo, lo, hi).astype(d)
                queries = np.clip((q - x.min()) / span * (hi - lo) + lo, lo, hi).astype(d)
            t0 = time.perf_counter()
            try:
                with heartbeat(f"compiling kernels for {d} {m} {e}"):
                    with spann.build(data, Path(tmp) / f"{d}-{e}-{m}.spann", metric=m, encoding=e) as idx:
                        idx.prepare()
                        idx.search(queries, 5, threads=1)
                        idx.search(queries[0], 5)
            except SpannError as err:  # a kind this spann does not build
                echo_err(f"{d} {m} {e}: skipped ({err})")
                continue
            echo_err(f"{d} {m} {e}: ready ({time.perf_counter() - t0:.1f} s)")
