"""``memory_limit``: the build's peak RSS (the whole process: interpreter, numba, data) stays
under the limit on a set whose assignments alone would not fit it in RAM; a limit too small
for the heads fails before any work."""

import os
import subprocess
import sys

import numpy as np
import pytest

import spann
from spann.datasets.synthetic import synthetic_blocks
from spann.errors import ParameterError

N, D = 2_000_000, 32
LIMIT = 640 << 20

CHILD = r"""
import resource, sys
import spann
from spann.builder.pipeline import build_index
from spann.params import BuildParams
attrs = build_index(sys.argv[1], sys.argv[2], metric="l2", progress=False,
                    params=BuildParams(memory_limit=int(sys.argv[3])))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with spann.open(sys.argv[2]) as idx:
    r = idx.search(idx.get([0, 1, 2]).astype("float32"), 1)
print(peak, attrs["stats"]["replicas_per_vector"], *r.ids[:, 0])
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    p = tmp_path_factory.mktemp("mem") / "base.u8bin"
    with open(p, "wb") as f:
        np.array([N, D], np.int32).tofile(f)
        for blk in synthetic_blocks(N, D, dtype="uint8", seed=0):
            np.ascontiguousarray(blk, dtype=np.uint8).tofile(f)
    return p


@pytest.mark.slow  # ~2 min; and on a machine whose numba cache is cold, compiling alone peaks near 1 GiB
def test_peak_rss_stays_under_the_limit(base, tmp_path):
    """Run with ``pytest -m slow tests/test_memory_limit.py`` (after a build has warmed the cache)."""
    # numba compiles the kernels once per machine (an LLVM peak of its own): the same build on a
    # small file of the same format first, in its own process, fills the cache
    small = tmp_path / "small.u8bin"
    with open(small, "wb") as f:
        np.array([200_000, D], np.int32).tofile(f)
        np.fromfile(base, np.uint8, count=200_000 * D, offset=8).tofile(f)
    subprocess.run([sys.executable, "-c", CHILD, str(small), str(tmp_path / "w"), str(LIMIT)], check=True,
                   capture_output=True)
    out = subprocess.run([sys.executable, "-c", CHILD, str(base), str(tmp_path / "i"), str(LIMIT)],
                         capture_output=True, text=True, check=True).stdout.split()
    peak, replicas = int(out[0]), float(out[1])
    # the assignments alone (16 bytes per (vector, list) pair, sorted: ~3 copies) exceed the
    # limit's room beside the interpreter and numba (~300 MiB)
    assert N * replicas * 16 * 3 > LIMIT - (300 << 20)
    assert peak < LIMIT, f"peak RSS {peak / 2**20:.0f} MiB over the {LIMIT / 2**20:.0f} MiB limit"
    assert [int(v) for v in out[2:]] == [0, 1, 2]  # the index works
    leftovers = [e for e in os.listdir(tmp_path) if ".building" in e]
    assert not leftovers  # spilled runs and checkpoints are gone after success


def test_a_limit_too_small_for_the_heads_fails_up_front(base, tmp_path):
    with pytest.raises(ParameterError, match="too small"):
        spann.build(str(base), tmp_path / "j", metric="l2", progress=False, memory_limit=300 << 20,
                    head_ratio=0.3)
    assert os.listdir(tmp_path) == []
