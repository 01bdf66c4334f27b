"""Schedules as multipliers eta_t and the normalized weight decay (Loshchilov & Hutter, Section 3, Appendix B.1, B.2).

Exact values where the formula gives them (restarts at exactly 1, the cosine at exactly 0.5 at
mid-budget, gamma^k after the k-th milestone), and torch's own schedulers, stepped per batch, as
an independent reference for the whole curve.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from workers.optim import build_optimizer
from workers.schedules import SCHEDULE_NAMES, Schedule, normalized_weight_decay


def _torch_multipliers(make_scheduler, steps: int) -> list[float]:
    """lr/base of a torch scheduler stepped once per batch, for steps 0..steps-1."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


# ----------------------------------------------------------------------------- warm restarts


def test_warm_restarts_return_to_exactly_one_at_each_restart():
    # T_0 = 10 epochs, T_mult = 2: restarts at epochs 10, 30, 70 (5 steps per epoch).
    s = Schedule("cosine_restarts", epochs=80, steps_per_epoch=5, t0=10, t_mult=2)
    restarts = [10 * 5, 10 * (1 + 2) * 5, 10 * (1 + 2 + 4) * 5]
    assert restarts == [50, 150, 350]
    for step in [0, *restarts]:
        assert s.multiplier(step) == 1.0
    for step in restarts:
        assert 0 < s.multiplier(step - 1) < 0.01  # the end of the previous period is near 0
    # Halfway through each period (5, 10, 20 epochs in) the cosine is exactly 0.5.
    for half in (25, 50 + 50, 150 + 100):
        assert s.multiplier(half) == 0.5
    # Within a period eta_t falls every batch, not every epoch.
    values = [s.multiplier(k) for k in range(50, 150)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_warm_restarts_with_fractional_multiplier_and_period():
    # T_mult = 1.5: restarts at epochs 3, 3 + 4.5 = 7.5, 7.5 + 6.75 = 14.25 (4 steps per epoch).
    s = Schedule("cosine_restarts", epochs=20, steps_per_epoch=4, t0=3, t_mult=1.5)
    for step in (12, 30, 57):
        assert s.multiplier(step) == 1.0
        assert s.multiplier(step - 1) < 0.05
    # T_0 = 0.1 epoch: 0.1 + 0.2 is not 0.3 in floating point; the restart must still land.
    s = Schedule("cosine_restarts", epochs=2, steps_per_epoch=10, t0=0.1, t_mult=2)
    assert [k for k in range(20) if s.multiplier(k) == 1.0] == [0, 1, 3, 7, 15]


def test_warm_restarts_match_torch_cosine_annealing_warm_restarts():
    s = Schedule("cosine_restarts", epochs=70, steps_per_epoch=3, t0=10, t_mult=2)
    ref = _torch_multipliers(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=30, T_mult=2), s.total_steps
    )
    assert max(abs(s.multiplier(k) - r) for k, r in enumerate(ref)) < 1e-12


def test_period_lengths_and_normalized_decay_change_at_each_restart():
    s = Schedule("cosine_restarts", epochs=80, steps_per_epoch=5, t0=10, t_mult=2)
    lam_norm, b, n_train = 0.05, 128, 50_000
    periods = [(0, 50, 10.0), (50, 150, 20.0), (150, 350, 40.0), (350, 400, 80.0)]
    seen = []
    for first, end, length in periods:
        expected = lam_norm * math.sqrt(b / (n_train * length))
        for step in (first, (first + end) // 2, end - 1):
            assert s.period_epochs(step) == length
            lam = normalized_weight_decay(lam_norm, b, n_train, s.period_epochs(step))
            assert lam == pytest.approx(expected, rel=1e-14)  # equal up to how the formula is rounded
        seen.append(expected)
    # Each restart doubles T, so the decay falls by sqrt(2) at each one.
    for before, after in zip(seen, seen[1:]):
        assert before / after == pytest.approx(math.sqrt(2), rel=1e-15)


def test_normalized_decay_without_restarts_uses_the_budget():
    s = Schedule("cosine", epochs=100, steps_per_epoch=391)
    assert {s.period_epochs(k) for k in (0, 1000, s.total_steps - 1)} == {100.0}
    # The paper's CIFAR-10 setting: b = 128, B = 50000, T = 100.
    lam = normalized_weight_decay(0.05, 128, 50_000, s.period_epochs(0))
    assert lam == pytest.approx(0.05 * math.sqrt(128 / (50_000 * 100)), rel=1e-14)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-0.1, 128, 50_000, 10.0), "Invalid normalized decay inputs: lam_norm=-0.1, b=128, B=50000, T=10.0"),
        ((0.05, 0, 50_000, 10.0), "Invalid normalized decay inputs: lam_norm=0.05, b=0, B=50000, T=10.0"),
        ((0.05, 128, 0, 10.0), "Invalid normalized decay inputs: lam_norm=0.05, b=128, B=0, T=10.0"),
        ((0.05, 128, 50_000, 0.0), "Invalid normalized decay inputs: lam_norm=0.05, b=128, B=50000, T=0.0"),
    ],
)
def test_normalized_decay_rejects_bad_inputs(args, message):
    with pytest.raises(ValueError) as exc:
        normalized_weight_decay(*args)
    assert str(exc.value) == message


# ------------------------------------------------------------------------ cosine, step, constant


def test_cosine_is_one_at_start_half_at_mid_budget_and_updates_every_batch():
    s = Schedule("cosine", epochs=10, steps_per_epoch=7)
    assert s.multiplier(0) == 1.0
    assert s.multiplier(35) == 0.5
    assert s.multiplier(1) == 0.5 + 0.5 * math.cos(math.pi / 70)
    assert s.multiplier(69) == 0.5 + 0.5 * math.cos(math.pi * 69 / 70)
    assert s.multiplier(1) < 1.0  # T_cur counts batches, not epochs
    ref = _torch_multipliers(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=70), 70)
    assert max(abs(s.multiplier(k) - r) for k, r in enumerate(ref)) < 1e-12


def test_step_schedule_drops_by_gamma_at_each_milestone():
    # The paper's drops at epochs 30, 60, 80 of 100; 3 steps per epoch.
    s = Schedule("step", epochs=100, steps_per_epoch=3)
    expected = {0: 1.0, 89: 1.0, 90: 0.1, 179: 0.1, 180: 0.1**2, 239: 0.1**2, 240: 0.1**3, 299: 0.1**3}
    assert {k: s.multiplier(k) for k in expected} == expected
    ref = _torch_multipliers(
        lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[90, 180, 240], gamma=0.1), 300
    )
    assert max(abs(s.multiplier(k) - r) for k, r in enumerate(ref)) < 1e-15


def test_step_schedule_custom_milestones_round_to_whole_epochs():
    # 0.25 * 10 = 2.5 epochs rounds to 2 (round half to even); 0.5 * 10 = 5.
    s = Schedule("step", epochs=10, steps_per_epoch=4, milestones=(0.5, 0.25), gamma=0.5)
    expected = {7: 1.0, 8: 0.5, 19: 0.5, 20: 0.25, 39: 0.25}
    assert {k: s.multiplier(k) for k in expected} == expected


def test_constant_is_one_everywhere():
    s = Schedule("constant", epochs=3, steps_per_epoch=4)
    assert {s.multiplier(k) for k in range(12)} == {1.0}


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_lambda_lr_gives_step_k_the_multiplier_of_step_k(name):
    alpha = 0.3
    s = Schedule(name, epochs=8, steps_per_epoch=5, t0=2, t_mult=2)
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = build_optimizer("adamw", [p], alpha, 0.1)
    sched = s.lambda_lr(opt)
    for k in range(s.total_steps):
        assert opt.param_groups[0]["lr"] == alpha * s.multiplier(k)
        p.grad = torch.zeros_like(p)
        opt.step()
        sched.step()


# ------------------------------------------------------------------------------ specs and errors

NAMES_LIST = "constant, step, cosine, cosine_restarts"


def test_from_spec():
    assert Schedule.from_spec(None, 10, 4) == Schedule("constant", 10, 4)
    assert Schedule.from_spec({"name": "cosine"}, 10, 4) == Schedule("cosine", 10, 4)
    s = Schedule.from_spec({"name": "cosine_restarts", "t0": 2, "t_mult": None}, 10, 4)
    assert (s.name, s.t0, s.t_mult) == ("cosine_restarts", 2.0, 2.0)
    s = Schedule.from_spec({"name": "step", "milestones": [0.5], "gamma": 0.2}, 10, 4)
    assert (s.milestones, s.gamma, s.multiplier(20)) == ((0.5,), 0.2, 0.2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(name="linear"), f"Unknown schedule: 'linear' (expected one of {NAMES_LIST})"),
        (dict(name="Cosine"), f"Unknown schedule: 'Cosine' (expected one of {NAMES_LIST})"),
        (dict(name="cosine", epochs=0), "Invalid budget: epochs=0, steps_per_epoch=5"),
        (dict(name="cosine", steps_per_epoch=0), "Invalid budget: epochs=10, steps_per_epoch=0"),
        (dict(name="cosine_restarts", t0=0.0), "Invalid warm restarts: t0=0.0, t_mult=2.0"),
        (dict(name="cosine_restarts", t_mult=0.5), "Invalid warm restarts: t0=10.0, t_mult=0.5"),
        (dict(name="step", gamma=0.0), "Invalid step gamma: 0.0"),
        (dict(name="step", gamma=1.5), "Invalid step gamma: 1.5"),
    ],
)
def test_bad_schedules_raise_naming_the_value(kwargs, message):
    args = dict(epochs=10, steps_per_epoch=5) | kwargs
    with pytest.raises(ValueError) as exc:
        Schedule(**args)
    assert str(exc.value) == message


def test_unknown_schedule_in_a_spec():
    with pytest.raises(ValueError) as exc:
        Schedule.from_spec({"name": "onecycle"}, 10, 4)
    assert str(exc.value) == f"Unknown schedule: 'onecycle' (expected one of {NAMES_LIST})"
