"""Every base x every decay convention: against the reference implementations, the decay table, and
the packed trainer.

- Each base with its reference convention (a bare ``BASE``) runs 200 steps of a small MLP with a
  cosine schedule beside its reference (torch.optim.RAdam/NAdam/Adafactor/Muon, lion_pytorch.Lion,
  and the decoupled switches of those that have one); parameters agree to 1e-6.
- With a zero gradient every base's step is zero, so one step shrinks theta by exactly the
  decoupled convention's factor; checked bit for bit at two schedule values.
- The packed trainer matches ``train_single`` for every base x convention to 1e-5 (Muon's
  Newton-Schulz in float32 there; in torch's bfloat16 the two drift apart by rounding flips, a
  band measured and bounded below).

The packed and single paths round differently (about 1e-7 apart in the parameters), so a config
is only a fair comparison if no ReLU pre-activation comes within that distance of 0: there one
path takes the kink's other side for one example and the gradients part by ~1e-3. Muon's high lr
was 3e-2 until, on an Intel Xeon (AVX-512), muon:constant (3e-2, 1e-4) did just that: parameters
agreed to 3.7e-8 after the first step and 1.05e-7 after the fifth, then at step 6 one hidden
pre-activation was |z| = 1.0e-7 (other steps 1e-6..2e-4), the gradients differed in one row of
0.weight (60 entries, 2.7e-3) and one entry of 0.bias (7.6e-4) and nowhere else, and the epoch
val-loss gaps became 2.1e-5, 5.7e-5, 5.4e-5 (no convention bug: the reference nudged by an ulp of
lr or wd stays within 2e-7, and the same config over 1, 2 or 6 epochs matches to 2e-7). At 2e-2
the gaps of the five conventions are 1.1e-7..2.4e-7 there.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from service.domain import conventions
from workers import bases
from workers.optim import build_optimizer, get_variant, muon_parameter_names
from workers.packed import TrialConfig, train_block
from workers.trainer import train_single

lion_pytorch = pytest.importorskip("lion_pytorch")

STEPS = 200


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _train(make) -> torch.Tensor:
    """STEPS minibatch steps with a cosine schedule (LambdaLR); the final parameters, flattened."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=gen), torch.randint(0, 4, (64,), generator=gen)
    m = _model()
    opts = make(m)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 0.5 * (1 + math.cos(math.pi * t / STEPS)))
              for o in opts]
    for t in range(STEPS):
        for o in opts:
            o.zero_grad()
        s = slice(16 * (t % 4), 16 * (t % 4 + 1))
        nn.functional.cross_entropy(m(x[s]), y[s]).backward()
        for o in opts:
            o.step()
        for sc in scheds:
            sc.step()
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def _muon_reference(m: nn.Module, lr: float, wd: float, decoupled: type) -> list:
    names = muon_parameter_names(m)
    assert names == {"0.weight", "2.weight"}  # the hidden matrices; the output layer is not one
    mats = [p for n, p in m.named_parameters() if n in names]
    rest = [p for n, p in m.named_parameters() if n not in names]
    return [torch.optim.Muon(mats, lr=lr, weight_decay=wd), decoupled(rest, lr=lr, weight_decay=wd)]


REFERENCES = {
    # name: (reference optimizers, lr, wd)
    "sgd": (lambda m: [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)], 0.1, 1e-3),
    "adam": (lambda m: [torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-3)], 1e-2, 1e-3),
    "adam:lr": (lambda m: [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=1e-1)], 1e-2, 1e-1),
    "radam": (lambda m: [torch.optim.RAdam(m.parameters(), lr=1e-2, weight_decay=1e-3)], 1e-2, 1e-3),
    "radam:lr": (lambda m: [torch.optim.RAdam(m.parameters(), lr=1e-2, weight_decay=1e-1,
                                              decoupled_weight_decay=True)], 1e-2, 1e-1),
    "nadam": (lambda m: [torch.optim.NAdam(m.parameters(), lr=1e-2, weight_decay=1e-3)], 1e-2, 1e-3),
    "nadam:lr": (lambda m: [torch.optim.NAdam(m.parameters(), lr=1e-2, weight_decay=1e-1,
                                              decoupled_weight_decay=True)], 1e-2, 1e-1),
    "adafactor": (lambda m: [torch.optim.Adafactor(m.parameters(), lr=3e-2, weight_decay=1e-1)], 3e-2, 1e-1),
    "lion": (lambda m: [lion_pytorch.Lion(m.parameters(), lr=1e-3, weight_decay=1e-1)], 1e-3, 1e-1),
    "lion:schedule": (lambda m: [lion_pytorch.Lion(m.parameters(), lr=1e-3, weight_decay=1e-3,
                                                   decoupled_weight_decay=True)], 1e-3, 1e-3),
    "muon": (lambda m: _muon_reference(m, 2e-2, 1e-1, torch.optim.AdamW), 2e-2, 1e-1),
}


def test_every_base_has_a_reference_test_of_its_bare_name():
    assert set(conventions.BASES) <= set(REFERENCES)
    for base in conventions.BASES:
        assert get_variant(base).decay == conventions.REFERENCE_CONVENTION[base]


@pytest.mark.parametrize("name", list(REFERENCES))
def test_base_matches_its_reference_implementation_over_a_cosine_schedule(name):
    make_ref, lr, wd = REFERENCES[name]
    ref = _train(make_ref)
    ours = _train(lambda m: [build_optimizer(name, m, lr, wd)])
    start = torch.cat([p.detach().flatten() for p in _model().parameters()])
    assert (ref - start).abs().max() > 1e-2  # it trained: the comparison is not of two initial states
    assert (ours - ref).abs().max().item() <= 1e-6


def _expected_factor(convention: str, base_lr: float, lr_t: float, wd: float) -> float:
    """1 - c from the table, with eta_t = current lr / lr at build."""
    eta = lr_t / base_lr
    return 1 - {"lr": lr_t * wd, "schedule": eta * wd, "constant": wd,
                "corrected": lr_t * eta * wd}[convention]


@pytest.mark.parametrize("base", conventions.BASES)
@pytest.mark.parametrize("convention", [c for c in conventions.CONVENTIONS if c != "l2"])
def test_decay_with_a_zero_gradient_shrinks_theta_by_exactly_the_tables_factor(base, convention):
    base_lr, wd = 0.05, 0.3
    model = _model()
    opt = build_optimizer(f"{base}:{convention}", model, base_lr, wd)
    for multiplier in (1.0, 0.3):
        lr_t = base_lr * multiplier
        for g in opt.param_groups:
            g["lr"] = lr_t
        before = [p.detach().clone() for p in model.parameters()]
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        factor = _expected_factor(convention, base_lr, lr_t, wd)
        for b, p in zip(before, model.parameters()):
            assert torch.equal(p.detach(), b * factor), (base, convention, multiplier)
    # the two schedule values gave different factors wherever the table says they should
    f1, f2 = (_expected_factor(convention, base_lr, base_lr * s, wd) for s in (1.0, 0.3))
    assert (f1 == f2) is (convention == "constant")


SLICE = dict(epochs=3, batch_size=64, max_train=384, max_val=192)
#: Two stable lrs per base (muon 2e-2, not 3e-2: see the module docstring on ReLU kinks).
LRS = {"sgd": [0.03, 0.3], "adam": [1e-3, 1e-2], "radam": [1e-3, 1e-2], "nadam": [1e-3, 1e-2],
       "lion": [1e-4, 1e-3], "adafactor": [3e-3, 3e-2], "muon": [3e-3, 2e-2]}


def _configs(base: str, convention: str) -> list[TrialConfig]:
    """Four stable configs: two lrs x per-step decays of 1e-4 and 1e-2 (converted to the convention's wd)."""
    lrs = LRS[base]
    wds = [1e-4 / lrs[0], 1e-2 / lrs[0]] if convention in ("lr", "corrected") else [1e-4, 1e-2]
    return [TrialConfig(lr, wd, seed=i % 2, key=i) for i, (lr, wd) in
            enumerate((lr, wd) for lr in lrs for wd in wds)]


def _max_gap(task: str, name: str) -> float:
    configs = _configs(*conventions.parse(name).canonical.split(":"))
    cosine = {"name": "cosine"}
    results = train_block(task, name, configs, schedule=cosine, device="cpu", **SLICE)
    gap = 0.0
    for cfg, res in zip(configs, results):
        ref = train_single(task, name, cfg.lr, cfg.wd, cfg.seed, schedule=cosine, device="cpu", **SLICE)
        assert res.diverged is ref.diverged is False
        gap = max(gap, abs(res.train_loss - ref.train_loss),
                  *(abs(a.val_loss - b.val_loss) for a, b in zip(res.curve, ref.curve)))
    finals = [r.val_loss for r in results]
    assert len({round(v, 6) for v in finals}) == len(finals)  # lr and wd both mattered
    return gap


@pytest.mark.slow
@pytest.mark.parametrize("base", conventions.BASES)
@pytest.mark.parametrize("convention", conventions.CONVENTIONS)
def test_packed_trainer_matches_single_config_training(base, convention, monkeypatch):
    monkeypatch.setattr(bases, "NS_DTYPE", torch.float32)
    assert _max_gap("digits_mlp", f"{base}:{convention}") <= 1e-5


@pytest.mark.slow
def test_muon_in_bfloat16_stays_within_its_rounding_band():
    """torch's bfloat16 Newton-Schulz: measured gaps 5.9e-5..2.8e-4 over the five conventions (Xeon)."""
    assert _max_gap("digits_mlp", "muon") <= 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adafactor", "muon:schedule"])
def test_per_tensor_bases_match_on_the_batchnorm_model(name, monkeypatch):
    monkeypatch.setattr(bases, "NS_DTYPE", torch.float32)
    assert _max_gap("digits_mlp_bn", name) <= 1e-4


def test_muon_orthogonalizes_conv_kernels_as_flattened_matrices():
    torch.manual_seed(0)
    g = torch.randn(3, 6, 4, 3, 3)
    p = torch.zeros_like(g)
    state: dict = {}
    bases.muon_step(p, g, state, lr=1.0, c=None, momentum=0.0, nesterov=False)
    expected = -bases.newton_schulz(g.reshape(3, 6, -1)).float().reshape(g.shape)
    assert torch.equal(p, expected)


def test_batched_newton_schulz_is_torchs_per_matrix():
    from torch.optim._muon import _zeropower_via_newtonschulz

    torch.manual_seed(0)
    for shape in [(128, 64), (64, 128), (10, 12)]:
        g = torch.randn(5, *shape)
        ours = bases.newton_schulz(g)
        for k in range(5):
            assert torch.equal(ours[k], _zeropower_via_newtonschulz(g[k], bases.NS_COEFFICIENTS, 5, 1e-7))


@pytest.mark.parametrize("name", conventions.all_names())
def test_every_name_has_a_pilot_grid_covering_its_default_grid_and_a_family(name):
    from service.domain import placement as autogrid
    from service.domain.catalog import default_grid

    lrs, wds = autogrid.pilot_axes(name, True, True, None, None)
    grid = default_grid(name)
    assert len(lrs) == len(wds) == autogrid.PILOT_POINTS
    assert lrs[0] <= grid["lr"].min * 1.0001 and lrs[-1] >= grid["lr"].max * 0.9999
    assert wds[0] <= grid["wd"].min * 1.0001 and wds[-1] >= grid["wd"].max * 0.9999
    assert autogrid.family_of(name) == conventions.base_family(conventions.parse(name).base)


def test_synthetic_task_couples_as_the_convention_scales_the_decay():
    from workers.tasks import SyntheticTask

    assert [SyntheticTask.coupling(f"lion:{c}") for c in conventions.CONVENTIONS] == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert SyntheticTask.coupling("adamw") == SyntheticTask.COUPLING["adamw"] == 0.0
