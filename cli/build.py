"""``spann build``: build an index from a vector file."""

from __future__ import annotations

import math
from typing import Any

import click

from spann.builder.dask import connect, local_cluster
from spann.builder.pipeline import build_index
from spann.codecs import CODECS
from spann.cli.common import (check_index_output, check_outputs, common_options, echo_err, emit_json, is_quiet,
                              json_option,
                              pack_options,
                              metric_option, read_ids_file, read_labels_file, store_options)
from spann.datasets.formats import FORMATS, metric_from_hdf5, open_vectors
from spann.errors import ParameterError
from spann.io.sources import parse_storage_options
from spann.params import BuildParams

_DEFAULTS = BuildParams()


def build_summary(attrs: dict) -> str:
    """A few readable lines about a built index."""
    st = attrs["stats"]
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in st["seconds"].items())
    return "\n".join([
        f"vectors {attrs['n']:,} x {attrs['dim']} {attrs['source_dtype']}, metric {attrs['metric']}",
        f"heads {st['heads']:,} ({st['head_ratio']:.1%}"
        f"{', clustered in %d buckets' % st['head_buckets'] if st.get('head_buckets') else ''}), "
        f"head graph degree {st['graph_degree_mean']:.1f}, "
        f"head groups {st.get('head_groups') or 'none (graph walk)'}",
        f"posting lists: mean {st['posting_mean']:.1f}, max {st['posting_max']}, empty {st['posting_empty']}, "
        f"replicas/vector {st['replicas_per_vector']:.2f}",
        f"index {st['index_bytes'] / 2**20:.1f} MiB on disk ({st['index_bytes'] / st['raw_bytes']:.2f}x raw), "
        f"{st['shards']} posting shard(s)",
        f"time {st['build_seconds']:.1f}s ({secs}), peak RSS {st['peak_rss_bytes'] / 2**20:.0f} MiB",
    ])


class ByteSize(click.ParamType):
    """A size like 512M, 2G, 1.5GiB or a byte count."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        v = str(value).strip().upper().removesuffix("IB").removesuffix("B")
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(v[-1:], 1)
        try:
            num = float(v[:-1] if v[-1:] in "KMGT" and v else v)
        except ValueError:
            self.fail(f"{value!r} is not a size (e.g. 512M, 2G)", param, ctx)
        if not math.isfinite(num):
            self.fail(f"{value!r} is not a finite size (e.g. 512M, 2G)", param, ctx)
        if num < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        if num * mult >= 2**63:
            self.fail(f"{value!r} is too large (at most 2**63 - 1 bytes)", param, ctx)
        return int(num * mult)


@click.command("build")
@click.argument("input", type=click.Path(dir_okay=False))
@click.argument("index_dir", metavar="INDEX")
@store_options
@metric_option(unless_hdf5=True)
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), help="Override the input format.")
@click.option("--head-ratio", type=click.FloatRange(0, 0.5, min_open=True), default=_DEFAULTS.head_ratio,
              show_default=True, help="Heads / N.")
@click.option("--posting-size", type=click.IntRange(0), default=0,
              help="Target vectors per head (overrides --head-ratio).")
@click.option("--encoding", type=click.Choice(["auto", *CODECS]), default=_DEFAULTS.encoding,
              show_default=True, help="Posting entries: full vectors, or sq8 / rabitq codes re-ranked from a vector "
              "store. auto: full for 8-bit data, rabitq for float data of >= 384 dims, else sq8.")
@click.option("--replica-count", type=click.IntRange(1, 64),
              help="Max lists per vector [by encoding: 6 coded, 8 full].")
@click.option("--closure-eps", type=click.FloatRange(0),
              help="Replica closure rule [by encoding: 2.0 coded, 0.5 full].")
@click.option("--rng-factor", type=click.FloatRange(0, min_open=True),
              help="Replica RNG rule [by encoding: 2.0 coded, 1.3 full].")
@click.option("--soar-lambda", type=click.FloatRange(0),
              help="Replica choice: 0 = the RNG rule, > 0 = the SOAR rule with this weight [by encoding: 1.0 coded, "
              "0 full].")
@click.option("--graph-degree", type=click.IntRange(4, 256), default=_DEFAULTS.graph_degree, show_default=True)
@click.option("--head-groups", type=click.IntRange(-1, 1 << 20), default=_DEFAULTS.head_groups, show_default=True,
              help="Groups of heads searches scan instead of walking the head graph: -1 = ~4 sqrt(heads) up to "
              "32,768 heads, 0 = none.")
@click.option("--threads", type=click.IntRange(0), default=0, help="Build threads (0 = all cores).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--param", "extra", multiple=True, metavar="NAME=VALUE",
              help="Any other build parameter (see spann.BuildParams), e.g. --param kmeans_iters=20; repeatable.")
@click.option("--ids", "ids_file", type=click.Path(exists=True, dir_okay=False),
              help="Ids that searches return instead of row numbers: .npy (integers (n,)), .ibin (int32) or "
              ".i8bin (int64); n distinct values >= 0.")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="Labels for filtered search (search --filter): .npy integers (n,) or (n, L), -1 = none.")
@click.option("--overwrite", is_flag=True, help="Replace an existing index at INDEX.")
@click.option("--memory-limit", "memory_limit", type=ByteSize(), default="0",
              help="Peak memory of the build, e.g. 2G (interpreter and numba included; 0 = no limit).")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted build of the same data and parameters from its last completed stage.")
@click.option("--workers", type=click.IntRange(1), help="Build on a local Dask cluster of this many worker processes "
              "(needs spann-ann[dask]).")
@click.option("--scheduler", metavar="ADDRESS", help="Build on the Dask cluster of this scheduler (tcp://host:port); "
              "INPUT and INDEX must be paths every worker can reach.")
@json_option("the build summary")
@common_options
@pack_options("cluster", "workers", "scheduler")
@pack_options("per_vector", "ids_file", "labels_file")
def build_cmd(input: str, index_dir: str, metric: str, fmt: str | None, json_out: str | None, overwrite: bool,
              resume: bool, extra: tuple[str, ...], storage_option: tuple[str, ...], per_vector: dict[str, Any],
              cluster: dict[str, Any], **params) -> None:
    """Build a SPANN index of INPUT (a vector file) in INDEX: a directory, a .zip file, or an
    object-store URL (s3://bucket/prefix; built in a local work directory, then uploaded)."""
    ids_file, labels_file = per_vector["ids_file"], per_vector["labels_file"]
    workers, scheduler = cluster["workers"], cluster["scheduler"]
    metric = metric_from_hdf5([input], metric)  # an ann-benchmarks file's `distance` must agree
    if metric is None:
        raise ParameterError("--metric is required (l2, ip or cosine)")
    p = _DEFAULTS.replace(**{**params, **BuildParams.parse_assignments(extra)})
    check_index_output(index_dir, [input, ids_file, labels_file])
    check_outputs([json_out], [input, ids_file, labels_file], index_dirs=[index_dir], index_role="output")
    ids = labels = None
    if ids_file or labels_file:
        with open_vectors(input, fmt) as vf:  # the header only: n
            n = vf.n
        ids = read_ids_file(ids_file, n) if ids_file else None
        labels = read_labels_file(labels_file, n) if labels_file else None
    if workers and scheduler:
        raise ParameterError("give --workers (a local cluster) or --scheduler (an existing one), not both")
    client = cluster = None
    if workers or scheduler:
        client, cluster = local_cluster(workers) if workers else (connect(scheduler), None)
    try:
        attrs = build_index(input, index_dir, metric=metric, params=p, fmt=fmt, overwrite=overwrite,
                            progress=not is_quiet(), ids=ids, labels=labels, resume=resume,
                            storage_options=parse_storage_options(storage_option) or None, client=client)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    echo_err(build_summary(attrs))
    if json_out:
        emit_json(attrs, json_out)
