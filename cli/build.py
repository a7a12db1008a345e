"""``spann build``: build an index from a vector file."""

from __future__ import annotations

import click

from spann.cli.common import common_options, echo_err, emit_json, is_quiet
from spann.datasets.formats import FORMATS
from spann.metrics import METRICS
from spann.params import BuildParams

_DEFAULTS = BuildParams()


def build_summary(attrs: dict) -> str:
    """A few readable lines about a built index."""
    st = attrs["stats"]
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in st["seconds"].items())
    return "\n".join([
        f"vectors {attrs['n']:,} x {attrs['dim']} {attrs['source_dtype']}, metric {attrs['metric']}",
        f"heads {st['heads']:,} ({st['head_ratio']:.1%}), head graph degree {st['graph_degree_mean']:.1f}",
        f"posting lists: mean {st['posting_mean']:.1f}, max {st['posting_max']}, empty {st['posting_empty']}, "
        f"replicas/vector {st['replicas_per_vector']:.2f}",
        f"index {st['index_bytes'] / 2**20:.1f} MiB on disk ({st['index_bytes'] / st['raw_bytes']:.2f}x raw), "
        f"{st['shards']} posting shard(s)",
        f"time {st['build_seconds']:.1f}s ({secs}), peak RSS {st['peak_rss_bytes'] / 2**20:.0f} MiB",
    ])


@click.command("build")
@click.argument("input", type=click.Path(dir_okay=False))
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.option("--metric", type=click.Choice(list(METRICS)), required=True)
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), help="Override the input format.")
@click.option("--head-ratio", type=click.FloatRange(0, 0.5, min_open=True), default=_DEFAULTS.head_ratio,
              show_default=True, help="Heads / N.")
@click.option("--posting-size", type=click.IntRange(0), default=0, help="Target vectors per head (overrides --head-ratio).")
@click.option("--replica-count", type=click.IntRange(1, 64), default=_DEFAULTS.replica_count, show_default=True)
@click.option("--closure-eps", type=click.FloatRange(0), default=_DEFAULTS.closure_eps, show_default=True)
@click.option("--rng-factor", type=click.FloatRange(0, min_open=True), default=_DEFAULTS.rng_factor, show_default=True)
@click.option("--graph-degree", type=click.IntRange(4, 256), default=_DEFAULTS.graph_degree, show_default=True)
@click.option("--threads", type=click.IntRange(0), default=0, help="Build threads (0 = all cores).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing index at INDEX_DIR.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, allow_dash=True), help="Write the build summary as JSON.")
@common_options
def build_cmd(input: str, index_dir: str, metric: str, fmt: str | None, json_out: str | None, overwrite: bool,
              **params) -> None:
    """Build a SPANN index of INPUT (a vector file) in INDEX_DIR."""
    from spann.builder import build_index
    p = _DEFAULTS.replace(**params)
    attrs = build_index(input, index_dir, metric=metric, params=p, fmt=fmt, overwrite=overwrite,
                        progress=not is_quiet())
    echo_err(build_summary(attrs))
    if json_out:
        emit_json(attrs, json_out)
