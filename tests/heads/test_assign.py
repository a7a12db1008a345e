import numpy as np

from spann.heads.assign import select_replicas


def _run(x, heads, cand, eps, rng_factor, R=8, soar_lambda=0.0):
    heads = np.asarray(heads, np.float32)
    d = np.array([((x - heads[c]) ** 2).sum() for c in cand], np.float32)
    order = np.argsort(d)
    ci, cd = np.asarray(cand, np.int32)[order], d[order]
    oi, od = np.full(R, -1, np.int32), np.full(R, np.inf, np.float32)
    n = select_replicas(ci, cd, heads, R, np.float32(eps), np.float32(rng_factor), np.float32(soar_lambda), oi, od)
    return list(oi[:n])


def test_closure_rule():
    x = np.array([0.0, 0.0], np.float32)
    heads = [[1.0, 0.0], [0.0, 1.1], [0.0, -1.5], [-3.0, 0.0]]  # distances 1, 1.1, 1.5, 3
    # rng_factor huge: the RNG rule never fires, only closure decides
    assert _run(x, heads, [0, 1, 2, 3], eps=0.05, rng_factor=1e6) == [0]
    assert _run(x, heads, [0, 1, 2, 3], eps=0.15, rng_factor=1e6) == [0, 1]
    assert _run(x, heads, [0, 1, 2, 3], eps=0.6, rng_factor=1e6) == [0, 1, 2]
    assert _run(x, heads, [0, 1, 2, 3], eps=10, rng_factor=1e6) == [0, 1, 2, 3]
    assert _run(x, heads, [0, 1, 2, 3], eps=10, rng_factor=1e6, R=2) == [0, 1]


def test_rng_rule():
    x = np.array([0.0, 0.0], np.float32)
    # c0 at distance 1; c1 just behind c0 (same direction): c0 covers it; c2 on the other side
    heads = [[1.0, 0.0], [1.3, 0.1], [-1.2, 0.0]]
    assert _run(x, heads, [0, 1, 2], eps=10, rng_factor=1.0) == [0, 2]
    # a large rng_factor makes the rule permissive (SPTAG: rng_factor * d(c_i, c_j) < d(x, c_j) skips)
    assert _run(x, heads, [0, 1, 2], eps=10, rng_factor=100.0) == [0, 2, 1]


def test_nearest_head_always_kept():
    x = np.array([5.0, 5.0], np.float32)
    heads = [[0.0, 0.0], [5.0, 4.0]]
    assert _run(x, heads, [0, 1], eps=0.0, rng_factor=1.0)[0] == 1


def test_soar_rule_prefers_orthogonal_residuals():
    x = np.array([0.0, 0.0], np.float32)
    # c1 lies behind c0 (residual parallel to c0's), c2 is farther but at a right angle
    heads = [[1.0, 0.0], [1.2, 0.0], [0.0, 1.3]]
    assert _run(x, heads, [0, 1, 2], eps=10, rng_factor=1e6, R=2, soar_lambda=1.0) == [0, 2]
    # a negligible penalty: the nearest eligible head, as with no rule at all
    assert _run(x, heads, [0, 1, 2], eps=10, rng_factor=1e6, R=2, soar_lambda=1e-6) == [0, 1]
    # the closure rule still bounds the candidates, and the nearest head is always kept
    assert _run(x, heads, [0, 1, 2], eps=0.25, rng_factor=1e6, R=3, soar_lambda=1.0) == [0, 1]
    assert _run(x, heads, [0, 1, 2], eps=10, rng_factor=1e6, R=3, soar_lambda=1.0) == [0, 1, 2]


def _soar_reference(x, heads, cand, eps, R, lam):
    """SOAR greedy on explicit residual vectors (float64)."""
    d = np.array([((x - heads[c]) ** 2).sum() for c in cand])
    order = np.argsort(d, kind="stable")
    cand, d = np.asarray(cand)[order], d[order]
    eligible = [j for j in range(len(cand)) if d[j] <= d[0] * (1 + eps) ** 2]
    taken, pen = [0], np.zeros(len(cand))
    while len(taken) < R:
        r = x - heads[cand[taken[-1]]]
        rest = [j for j in eligible if j not in taken]
        if not rest:
            break
        for j in rest:
            pen[j] += float(r @ (x - heads[cand[j]])) ** 2 / float(r @ r)
        taken.append(min(rest, key=lambda j: d[j] + lam * pen[j]))
    return sorted(int(cand[j]) for j in taken)


def test_soar_rule_matches_residual_reference():
    # the kernel takes the residuals' dot products from distances alone; the reference uses the
    # residual vectors: both must choose the same heads
    rng = np.random.default_rng(5)
    agree = 0
    for _ in range(200):
        heads = rng.normal(size=(24, 8))
        x = rng.normal(size=8)
        cand = list(rng.choice(24, 16, replace=False))
        lam = float(rng.choice([0.5, 1.0, 4.0]))
        got = sorted(_run(x.astype(np.float32), heads, cand, eps=1.0, rng_factor=1e6, R=5, soar_lambda=lam))
        agree += got == _soar_reference(x, heads, cand, 1.0, 5, lam)
    assert agree >= 198  # float32 against float64: a near tie may fall either way


def test_build_records_the_rule_and_older_indexes_keep_rng(tmp_path):
    import json

    import spann
    from spann.io.index_files import seal_root
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(3000, 48)) + 4 * rng.normal(size=(30, 48))[rng.integers(0, 30, 3000)]).astype(np.float32)
    counts = {}
    for lam in (None, 0.0):
        p = tmp_path / f"i{lam}.spann"
        params = spann.BuildParams(encoding="sq8", soar_lambda=lam, calibration_queries=0)
        with spann.build(x, p, metric="l2", params=params, progress=False) as idx:
            assert idx.build_params.soar_lambda == (1.0 if lam is None else 0.0)
            counts[lam] = idx.info()["stats"]["replicas_per_vector"]
    # the RNG rule drops replicas the SOAR rule keeps (SOAR fills replica_count inside the closure)
    assert counts[None] > counts[0.0] + 0.5
    # metadata written before the rule existed: it opens, reads as the RNG rule, and takes inserts
    p = tmp_path / "i1.0.spann"
    (tmp_path / "iNone.spann").rename(p)
    meta = json.loads((p / "zarr.json").read_text())
    del meta["attributes"]["spann"]["params"]["soar_lambda"]
    (p / "zarr.json").write_text(json.dumps(seal_root(meta)))
    with spann.open(p) as old:
        assert old.build_params.soar_lambda == 0.0
        old.add(x[:20] + 0.01)
        assert len(old) == 3020
