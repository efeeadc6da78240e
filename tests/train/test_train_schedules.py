"""The one-cycle and step learning-rate schedules against independent formulas."""

import pytest
import torch

from formers.train.config import TrainConfig
from formers.train.schedule import lr_at


def test_one_cycle_equals_torch_one_cycle_lr():
    # Pathformer's scheduler: OneCycleLR(max_lr, pct_start 0.4, total epochs * steps), stepped per batch
    total, rise = 50, 20
    opt = torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), lr=5e-4)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-4, total_steps=total, pct_start=rise / total)
    cfg = TrainConfig(max_steps=total, lr=5e-4, warmup_steps=rise, schedule="one_cycle",
                      min_lr_ratio=1 / (25 * 1e4))
    for step in range(total):
        assert lr_at(step, cfg) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        opt.step()
        ref.step()
    assert lr_at(0, cfg) == pytest.approx(5e-4 / 25)
    assert lr_at(rise - 1, cfg) == pytest.approx(5e-4)
    assert lr_at(10 * total, cfg) == pytest.approx(5e-4 * 4e-6)


@pytest.mark.parametrize("rule, gamma, hold", [("type1", 0.5, 2), ("type3", 0.9, 4)])
def test_step_schedule_is_the_per_epoch_lradj_rule(rule, gamma, hold):
    # the reference adjusts after epoch e (0-based) with adjust(e + 1): epoch e + 1 then trains at
    # type1: lr * 0.5 ** ((e + 1) - 1); type3: lr if e + 1 < 3 else lr * 0.9 ** ((e + 1) - 3)
    lr, spe = 1e-3, 7
    def reference(epoch):
        if epoch == 0:
            return lr
        if rule == "type1":
            return lr * 0.5 ** (epoch - 1)
        return lr if epoch < 3 else lr * 0.9 ** (epoch - 3)
    cfg = TrainConfig(max_steps=12 * spe, lr=lr, schedule="step", lr_gamma=gamma, lr_step_every=spe,
                      warmup_steps=hold * spe)
    for step in range(12 * spe):
        assert lr_at(step, cfg) == pytest.approx(reference(step // spe), rel=1e-12)


def test_schedule_config_errors():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="lr_step_every"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="lr_gamma"):
        TrainConfig(lr_gamma=0.0)
