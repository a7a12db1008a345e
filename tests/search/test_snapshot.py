"""What an open generation holds in RAM, and what it reports."""

import numpy as np

import spann
from spann.datasets import synthetic_array


def test_ram_bytes_counts_what_searches_hold_and_grows_with_an_update(tmp_path):
    x = synthetic_array(4000, 16, seed=4)
    idx = spann.build(x, tmp_path / "r.spann", metric="l2", progress=False, head_groups=0)
    s = idx._snap
    H = s.heads.shape[0]
    fresh = idx.ram_bytes()
    # heads, the unpadded graph and the list directory are in; per head nothing like a vector's worth more
    held = s.heads.nbytes + s.graph.ptr.nbytes + s.graph.ids.nbytes + s.offsets.nbytes + s.counts.nbytes
    assert held <= fresh <= held + 24 * H + s.seeds.groups.rows.nbytes + 4096, (held, fresh, H)
    assert s.graph.ids.nbytes < s.neighbors.nbytes  # unpadded: fewer bytes than the stored rows
    idx.add(x[:50] + 0.5)  # a delta and split sizes now exist and are read
    after = idx.ram_bytes()
    s2 = idx._snap
    assert s2.has_delta and after >= fresh + s2.dv.offsets.nbytes + s2.dv.counts.nbytes + s2.split_floor.nbytes
    assert np.all(idx.search(x[:5] + 0.5, 1).ids[:, 0] >= 4000)  # the added rows are found
    idx.close()
