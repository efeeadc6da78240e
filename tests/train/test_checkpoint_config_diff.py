"""The config check of checkpoints names what differs, briefly, also for another kind of model."""

from formers.train.checkpoint import _config_diff


def test_same_kind_lists_every_differing_field():
    a = {"model": "odeformer-tiny", "d_model": 32, "n_heads": 2}
    b = {"model": "odeformer", "d_model": 128, "n_heads": 2}
    assert _config_diff(a, b) == ["d_model: checkpoint 32 vs now 128",
                                  "model: checkpoint 'odeformer-tiny' vs now 'odeformer'"]


def test_another_kind_of_model_is_said_first_and_the_list_is_capped():
    lm = {"arch": "decoder", "vocab_size": 11, **{f"lm_{i}": i for i in range(20)}}
    ode = {"model": "odeformer-tiny", "vocab_size": 10230, **{f"ode_{i}": i for i in range(20)}}
    got = _config_diff(lm, ode)
    assert got[0] == "another kind of model ('decoder' in the checkpoint, 'odeformer-tiny' now)"
    assert len(got) == 1 + 8 + 1 and got[-1] == "... and 35 more"  # 43 differing fields
