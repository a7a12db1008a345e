import numpy as np
import pytest

from spann.errors import IndexCorruptError
from spann.format.layout import ALIGN, PAGE, EntryLayout, pack_lists, pages_spanned


def _check_packing(nbytes, off, total, shard):
    ne = nbytes > 0
    assert (off % ALIGN == 0).all()
    end = off + nbytes
    assert (end[ne] <= total).all() and total % shard == 0
    assert ((off[ne] // shard) == ((end[ne] - 1) // shard)).all(), "a list crosses a shard"
    spans = np.array([pages_spanned(o, b) for o, b in zip(off[ne], nbytes[ne])])
    np.testing.assert_array_equal(spans, -(-nbytes[ne] // PAGE)), "a list spans a page too many"
    o = np.argsort(off[ne])
    a, b = off[ne][o], end[ne][o]
    assert (a[1:] >= b[:-1]).all(), "lists overlap"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packing_invariants_and_low_waste(seed):
    rng = np.random.default_rng(seed)
    lay = EntryLayout(dim=50, dtype="float32")
    counts = rng.poisson(55, 5000)
    counts[rng.integers(0, 5000, 50)] = 0
    counts[7] = 55 * 50  # a hub list, 50x the mean
    nbytes = lay.list_bytes_array(counts)
    shard = 16 << 20
    off, total = pack_lists(nbytes, shard)
    _check_packing(nbytes, off, total, shard)
    used = int(nbytes.sum())
    span_end = int((off + nbytes).max())
    assert (span_end - used) / used < 0.06  # page-aware padding costs a few % at most
    # head order is kept but for local moves within the look-ahead window
    assert np.mean(np.abs(np.diff(np.argsort(np.argsort(off)))) <= 20) > 0.9


def test_lists_never_cross_shards_and_longest_list_must_fit():
    lay = EntryLayout(dim=128, dtype="uint8")
    nbytes = lay.list_bytes_array(np.full(300, 700))
    off, total = pack_lists(nbytes, 1 << 20)
    _check_packing(nbytes, off, total, 1 << 20)
    assert total // (1 << 20) >= 300 * int(nbytes[0]) // (1 << 20)
    with pytest.raises(ValueError, match="does not fit"):
        pack_lists(np.array([2 << 20], np.int64), 1 << 20)


def test_entry_layout_sections():
    lay = EntryLayout(dim=3, dtype="float32", label_width=1)
    assert lay.labels_offset(5) == 40 and lay.payload_offset(5) == 64  # 40 + 20 -> 8-aligned 64
    assert lay.list_bytes(5) == 64 + 60 + 4  # -> rounded to 16
    assert lay.list_bytes(0) == 0
    np.testing.assert_array_equal(lay.list_bytes_array(np.array([0, 5])), [0, lay.list_bytes(5)])
    assert EntryLayout.from_dict(lay.to_dict()) == lay
    with pytest.raises(IndexCorruptError):
        EntryLayout(dim=3, dtype="float64")
    with pytest.raises(IndexCorruptError):
        EntryLayout.from_dict({"dim": "x"})
