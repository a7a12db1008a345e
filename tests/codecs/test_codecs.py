"""The codec registry: one object per posting encoding, its layout facts and its codebook."""

import pickle

import numpy as np
import pytest

from spann.codecs import CODECS, Codec, choose_codec, get_codec
from spann.codecs.encodings import FULL, FULL_CODEC, RABITQ, SQ8, CodebookView, codebook_view
from spann.errors import IndexCorruptError, ParameterError
from spann.format.layout import EntryLayout
from spann.params import ENCODINGS, BuildParams, SearchParams

#: name: (kind, coded, aux floats, code bytes at dim 50 float32, rotated heads, head columns at dim 50)
FACTS = {
    "full": (FULL, False, 0, 200, False, 50),
    "sq8": (SQ8, True, 0, 50, False, 50),
    "rabitq": (RABITQ, True, 2, 8, True, 64),
}


def test_registry_holds_one_codec_per_encoding():
    assert tuple(CODECS) == ("full", "sq8", "rabitq") == ENCODINGS  # BuildParams accepts exactly these
    for name, codec in CODECS.items():
        assert isinstance(codec, Codec) and codec.name == name and get_codec(name) is codec
        assert get_codec(codec) is codec
        assert pickle.loads(pickle.dumps(codec)) is codec
    assert FULL_CODEC is CODECS["full"]


def test_unknown_encoding_is_refused_in_one_line():
    with pytest.raises(ParameterError, match="encoding must be one of full, sq8, rabitq, got 'pq'") as e:
        get_codec("pq")
    assert "\n" not in str(e.value)
    with pytest.raises(IndexCorruptError, match="not known"):
        EntryLayout(dim=8, dtype="float32", encoding="pq")


@pytest.mark.parametrize("name", list(FACTS))
def test_layout_facts(name):
    kind, coded, aux, code_bytes, rotated, head_cols = FACTS[name]
    c = get_codec(name)
    assert (c.kind, c.coded, c.aux_floats, c.rotated_heads) == (kind, coded, aux, rotated)
    assert c.code_bytes(50, "float32") == code_bytes and c.head_columns(50) == head_cols
    assert c.residual is c.bounded is c.verify_factors is (name == "rabitq")
    assert c.id_bytes(1000) == (4 if coded else 8) and c.id_bytes(2**31) == 8
    lay = EntryLayout(dim=50, dtype="float32", encoding=name, id_bytes=c.id_bytes(1000))
    assert lay.codec is c and lay.coded == coded
    assert (lay.code_bytes, lay.aux_floats) == (code_bytes, aux)
    assert EntryLayout.from_dict(lay.to_dict()) == lay and "codec" not in lay.to_dict()
    assert pickle.loads(pickle.dumps(lay)).codec is c
    if not coded:
        with pytest.raises(IndexCorruptError, match="id size"):
            EntryLayout(dim=50, dtype="float32", encoding=name, id_bytes=4)
    assert get_codec("full").code_bytes(50, "uint8") == 50


@pytest.mark.parametrize("name", list(FACTS))
def test_replica_rules_and_rerank_depth(name):
    c = get_codec(name)
    want = (6, 2.0, 2.0, 1.0) if c.coded else (8, 0.5, 1.3, 0.0)
    p = BuildParams().resolved(c)
    assert (p.encoding, p.replica_count, p.closure_eps, p.rng_factor, p.soar_lambda) == (name, *want)
    assert BuildParams(replica_count=3, closure_eps=1.0, rng_factor=1.5).resolved(c).replica_count == 3
    assert BuildParams(soar_lambda=0.0).resolved(c).soar_lambda == 0.0
    sp = SearchParams()
    assert sp.effective_rerank(10, c) == (15 if name == "sq8" else 30)
    assert sp.effective_rerank(40, c) == (60 if name == "sq8" else 120)
    assert SearchParams(rerank=5).effective_rerank(10, c) == 10


@pytest.mark.parametrize("name", list(FACTS))
def test_train_and_encode_round_trip_shapes(name):
    c = get_codec(name)
    rng = np.random.default_rng(0)
    n, d = 300, 50
    x = rng.standard_normal((n, d)).astype(np.float32)
    arrays = c.train(x, seed=3)
    specs = c.codebook_arrays(d)
    assert set(arrays) == set(specs)
    for a, (dt, shape) in specs.items():
        assert arrays[a].dtype == dt and arrays[a].shape == shape
    centers = np.repeat(x[:1], n, axis=0) if c.residual else None
    codes, aux = c.encode(arrays, x, centers)
    assert codes.dtype == np.uint8 and codes.shape == (n, c.code_bytes(d, "float32"))
    assert aux.dtype == np.float32 and aux.shape == (n, c.aux_floats)
    v = c.view(arrays)
    assert isinstance(v, CodebookView) and int(v.kind) == c.kind
    assert codebook_view(name, arrays).kind == v.kind
    if name == "full":
        np.testing.assert_array_equal(codes.view(np.float32), x)
    if name == "sq8":  # decodes within half a step per dimension
        back = arrays["lo"] + arrays["scale"] * codes.astype(np.float32)
        assert (np.abs(back - x) <= arrays["scale"] * 0.5 + 1e-5).all()
    if name == "rabitq":
        np.testing.assert_allclose(aux[:, 0], np.linalg.norm(x - x[:1], axis=1), rtol=1e-5)
        assert (aux[1:, 1] > 0).all() and (aux[:, 1] <= 1 + 1e-5).all()
        with pytest.raises(ValueError, match="centre"):
            c.encode(arrays, x)


@pytest.mark.parametrize("name", list(FACTS))
def test_head_space(name):
    c = get_codec(name)
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((20, 51)).astype(np.float32)  # 50 dims + an inner-product column
    rot = c.train(rows[:, :50]).get("rotation")
    h = c.to_head_space(rows, 50, rot)
    if not c.rotated_heads:
        assert h is rows
        return
    assert h.shape == (20, 65) and h.flags.c_contiguous and h.dtype == np.float32
    np.testing.assert_array_equal(h[:, 64], rows[:, 50])
    np.testing.assert_allclose(np.linalg.norm(h[:, :64], axis=1), np.linalg.norm(rows[:, :50], axis=1), rtol=1e-5)


def test_auto_choice():
    assert choose_codec("auto", np.dtype("uint8"), 768) is CODECS["full"]
    assert choose_codec("auto", np.dtype("float32"), 384) is CODECS["rabitq"]
    assert choose_codec("auto", np.dtype("float32"), 383) is CODECS["sq8"]
    assert choose_codec("sq8", np.dtype("uint8"), 768) is CODECS["sq8"]
    with pytest.raises(ParameterError):
        choose_codec("bogus", np.dtype("float32"), 8)
