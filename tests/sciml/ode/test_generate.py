"""ODEFormer's random ODE generator: distributions as configured, rejections, shards (arXiv
2310.05573, section 3 and the reference ``envs/generators.py``)."""

import json
import re
from collections import Counter

import numpy as np
import pytest

from formers.sciml.ode import expr
from formers.sciml.ode import generate as G


def test_dimension_operator_and_constant_statistics():
    """Notes test 6: D uniform on 1..6, add:mul about 3:1 among binary nodes, binary operators per
    component uniform on 1..5, at most 3 unaries, |constants| in [0.05, 20]."""
    rng = np.random.default_rng(0)
    cfg = G.GeneratorConfig()
    dims, nbin, ops, consts = Counter(), Counter(), Counter(), []
    n = 1500
    for _ in range(n):
        raw = G.sample_system(rng, cfg)
        dims[raw.dim] += 1
        nbin.update(raw.n_binary)
        ops.update(raw.op_counts)
        assert all(u <= cfg.max_unary for u in raw.n_unary)
        assert len(raw.system) == raw.dim and expr.variables(raw.system) <= set(range(raw.dim))
        consts += [nd.value for c in raw.system for nd in c.walk() if nd.op == "const"]
    assert sorted(dims) == [1, 2, 3, 4, 5, 6]
    assert all(abs(dims[d] - n / 6) < 0.2 * n / 6 for d in dims), dims
    assert sorted(nbin) == [1, 2, 3, 4, 5]
    total = sum(nbin.values())
    assert all(abs(nbin[k] - total / 5) < 0.15 * total / 5 for k in nbin), nbin
    assert 2.7 < ops["add"] / ops["mul"] < 3.3, ops
    assert {"sin", "inv", "pow2", "id"} <= set(ops) and not ({"sub", "div", "exp"} & set(ops))
    u = {k: ops[k] for k in ("id", "sin", "inv", "pow2")}  # unary weights 3:1:1:1
    assert 2.4 < u["id"] / u["sin"] < 3.6 and 0.8 < u["inv"] / u["pow2"] < 1.25, u
    mags = np.abs(consts)
    assert mags.min() >= 0.05 and mags.max() <= 20.0
    assert 0.4 < np.mean(np.asarray(consts) > 0) < 0.6


def test_tree_shapes_are_uniform_over_binary_trees():
    """3 binary operators: the 5 (Catalan) shapes are equally likely, as the reference's sampler."""
    rng = np.random.default_rng(1)
    shapes = Counter(tuple(G._random_shape(rng, 3)) for _ in range(5000))
    assert len(shapes) == 5
    assert all(abs(v - 1000) < 130 for v in shapes.values()), shapes
    for s in shapes:  # each is a valid prefix arity sequence with 3 internal nodes
        assert sum(1 for a in s if a == 2) == 3 and len(s) == 7


def test_samples_are_valid_trajectories_of_their_own_tokens():
    rng = np.random.default_rng(2)
    cfg = G.GeneratorConfig(max_dim=2, max_evals=5000)
    stats = {}
    for _ in range(3):
        s = G.generate_sample(rng, cfg, stats)
        t, x = np.asarray(s["t"]), np.asarray(s["x"])
        assert cfg.min_points <= t.size <= cfg.max_points and x.shape == (t.size, s["dim"])
        np.testing.assert_allclose(t, np.linspace(1, 10, t.size))
        assert np.all(np.isfinite(x)) and np.abs(x).max() <= cfg.max_abs  # terminal event at 100
        system = expr.from_prefix(s["tokens"])
        assert len(system) == s["dim"] and expr.to_str(system) == s["infix"]
        # the tokens are the integrated law: re-integrating them reproduces the data
        again = expr.integrate(system, x[0], t, method="RK45", rtol=1e-3, atol=1e-6, first_step=None,
                               max_abs=None)
        err = np.abs(again - x).max() / max(np.abs(x).max(), 1e-12)
        assert err < 1e-6
    assert stats["tries"] >= 3


def test_flat_and_blowup_rejections():
    cfg = G.GeneratorConfig(flat_reject_prob=1.0)
    rng = np.random.default_rng(3)
    assert G.sample_trajectory(rng, expr.parse("-5*x_0"), cfg) is None  # decays to a flat tail
    assert G.sample_trajectory(rng, expr.parse("x_0**2 + 3"), cfg) is None  # blows up past 100
    assert G.sample_trajectory(rng, expr.parse("cos(3*t)"), cfg) is not None


def test_shards_resume_determinism_and_config_guard(tmp_path):
    cfg = G.GeneratorConfig(max_dim=1, max_binary=2, max_evals=5000)
    a = G.generate_dataset(tmp_path / "a", samples=4, cfg=cfg, seed=7, shard_size=2, progress=False)
    assert a["shards_written"] == 2 and a["samples"] == 4
    again = G.generate_dataset(tmp_path / "a", samples=4, cfg=cfg, seed=7, shard_size=2, progress=False)
    assert again["shards_skipped"] == 2 and again["shards_written"] == 0
    # shard 1 alone, made by a separate "run", equals the first run's shard 1
    G.generate_dataset(tmp_path / "b", samples=2, cfg=cfg, seed=7, shard_size=2, first_shard=1, progress=False)
    assert (tmp_path / "b" / "shard-00001.jsonl").read_text() == (tmp_path / "a" / "shard-00001.jsonl").read_text()
    assert not (tmp_path / "b" / "shard-00000.jsonl").exists()
    # two worker processes write the same shards as one process
    G.generate_dataset(tmp_path / "c", samples=4, cfg=cfg, seed=7, shard_size=2, workers=2, progress=False)
    for k in (0, 1):
        assert G.shard_path(tmp_path / "c", k).read_text() == G.shard_path(tmp_path / "a", k).read_text()
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["generator"]["max_dim"] == 1 and meta["seed"] == 7
    assert len(list(G.iter_samples(tmp_path / "a"))) == 4
    with pytest.raises(ValueError, match="another seed"):
        G.generate_dataset(tmp_path / "a", samples=4, cfg=cfg, seed=8, shard_size=2, progress=False)
    with pytest.raises(FileNotFoundError):
        list(G.iter_samples(tmp_path / "empty"))


def test_corrupt_noise_and_subsampling():
    rng = np.random.default_rng(4)
    t = np.linspace(1, 10, 100)
    x = np.ones((100, 2))
    t2, x2 = G.corrupt(rng, t, x, noise=0.0, subsample=0.0)
    np.testing.assert_array_equal(x2, x)
    sizes = {G.corrupt(rng, t, x, noise=0.1, subsample=0.5)[0].size for _ in range(200)}
    assert sizes == {100, 88, 75, 62, 50}  # dropped fraction from linspace(0, 0.5, 5)
    t3, x3 = G.corrupt(rng, t, x, noise=0.1, subsample=0.5)
    assert np.all(np.diff(t3) > 0) and np.abs(x3 - 1).max() < 0.1 * 6


@pytest.mark.parametrize("bad", [dict(min_dim=0), dict(min_dim=3, max_dim=2), dict(binary_ops="add:3,pow:1"),
                                 dict(unary_ops="sin:-1"), dict(method="euler"), dict(min_points=1)])
def test_config_validation_names_the_field(bad):
    with pytest.raises(ValueError, match=list(bad)[0].split("_")[0]):
        G.GeneratorConfig(**bad)


@pytest.mark.parametrize("bad,msg", [(dict(max_dim="abc"), "GeneratorConfig.max_dim='abc' (str): must be an int"),
                                     (dict(max_points=2.5), "GeneratorConfig.max_points=2.5 (float): must be an int"),
                                     (dict(rtol=True), "GeneratorConfig.rtol=True (bool): must be a number"),
                                     (dict(method=3), "GeneratorConfig.method=3 (int): must be a string")])
def test_config_types_are_checked_with_the_field_named(bad, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        G.GeneratorConfig(**bad)
    assert G.GeneratorConfig(const_max=20).const_max == 20  # an int where a float is expected is fine

