"""The wide conv-net engine (workers.wide) against per-config modules and the single-config trainer."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.packed import FuncEngine, PackedRun, TrialConfig, cpu_training, make_engine, make_spec, train_block
from workers.tasks import get_task
from workers.trainer import train_single
from workers.wide import WideEngine

SLICE = dict(epochs=2, batch_size=32, max_train=128, max_val=64, schedule={"name": "cosine"}, device="cpu")


@pytest.mark.parametrize("name", ["mnist5k_cnn", "mnist5k_resnet", "digits_mlp_bn", "cifar10_resnet"])
def test_conv_and_batchnorm_tasks_run_on_the_wide_engine(name):
    task = get_task(name)
    assert isinstance(make_engine(task.build_model(0), 8, task.input_shape), WideEngine)


class _NotChannelwise(nn.Module):
    """A forward that mixes configs' channels (a fixed-size view), which the wide model cannot run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).view(-1, 2 * 4 * 4))


class _Sums(nn.Module):
    """Channel-mixing arithmetic in forward (a sum over all channels) with supported layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean(dim=(2, 3))
        return self.fc(h - h.sum(1, keepdim=True))


@pytest.mark.parametrize("model", [_NotChannelwise, _Sums])
def test_a_forward_the_wide_model_cannot_reproduce_falls_back_to_vmap(model):
    assert WideEngine.supports(model())
    assert WideEngine.build(model(), (1, 4, 4), eval_batch=8) is None
    assert isinstance(make_engine(model(), 8, (1, 4, 4)), FuncEngine)
    # Layers the wide model does not know are refused without a probe.
    assert not WideEngine.supports(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout(), nn.Flatten(), nn.Linear(8, 2)))
    assert not WideEngine.supports(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))


@pytest.mark.parametrize("name", ["mnist5k_cnn", "mnist5k_resnet"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_one_step_gives_each_config_its_own_gradients_and_batchnorm_buffers(name, chunk):
    """One training step of 3 configs (own seeds, own batches) against 3 separate modules."""
    task = get_task(name)
    data = task.load_data(96, 8)
    spec = make_spec(task, "sgd", epochs=1, batch_size=32, schedule=None, wd_normalized=False,
                     decay_on="all", n_train=96)
    configs = [TrialConfig(0.1, 0.0, s) for s in (0, 1, 2)]
    with cpu_training():
        run = PackedRun(spec, configs, data, torch.device("cpu"))
        run.engine.chunk = chunk
        assert isinstance(run.engine, WideEngine)
        x = data.x_train.view(3, 32, *data.x_train.shape[1:])
        y = data.y_train.view(3, 32)
        loss = run.engine.train_step(run.stack, x, y)
        grads, buffers = run.stack.views(run.stack.g), run.stack.buffers
        for k, cfg in enumerate(configs):
            # The reference in float64: BatchNorm's backward cancels large terms, and a float32
            # module lands up to ~1.7e-4 (relative) from it on conv1's gradient, the wide one
            # 4e-6 to 1.7e-4 (by oneDNN's kernel for the group count); bound 3e-4, while a config
            # given another's rows or batch is off by O(1).
            model = task.build_model(cfg.seed).double().train()
            ref = F.cross_entropy(model(x[k].double()), y[k])
            ref.backward()
            assert abs(float(loss[k]) - float(ref.detach())) <= 1e-5
            for n, p in model.named_parameters():
                err = float((grads[n][k].double() - p.grad).norm())
                assert err <= 3e-4 * float(p.grad.norm()) + 2e-5, (n, err)  # + conv1.bias: 0 exactly, ~8e-6 of noise
            for n, b in model.named_buffers():
                if b.dtype.is_floating_point:
                    assert torch.allclose(buffers[n][k].double(), b, rtol=1e-5, atol=1e-6), n
                else:
                    assert torch.equal(buffers[n][k], b), n
        # The configs really differ (own seeds and batches), so equality is not by accident.
        assert len({round(float(v), 5) for v in loss}) == 3


def _stable(optimizer: str) -> list[TrialConfig]:
    lrs = [0.001, 0.003] if optimizer.startswith("sgd") else [1e-4, 3e-4]
    return [TrialConfig(lr, wd, seed=i % 2, key=i) for i, (lr, wd) in
            enumerate((lr, wd) for lr in lrs for wd in (1e-4, 1e-2))]


@pytest.mark.parametrize("name, optimizer", [
    ("mnist5k_cnn", "sgd"), ("mnist5k_cnn", "sgdw"), ("mnist5k_resnet", "sgdw"), ("mnist5k_resnet", "adam"),
])
def test_wide_training_equals_single_config_training(name, optimizer, monkeypatch):
    monkeypatch.setattr(type(get_task(name)), "wide_chunk", 3)  # 4 configs: a full chunk and a partial one
    configs = _stable(optimizer)
    results = train_block(name, optimizer, configs, **SLICE)
    # The float32 reference is itself ~1.5e-4 (relative) off the exact conv1 gradient (see the
    # one-step test); two epochs of SGD turn that into up to 3.2e-5 in a train loss (measured),
    # so 1e-4. Adam-family steps on BatchNorm nets amplify rounding noise further (test_packed's
    # test_adam_on_batchnorm_agrees_to_the_reference_own_rounding_noise): its band, 5e-4.
    tol = 1e-4 if optimizer.startswith("sgd") else 5e-4
    for cfg, res in zip(configs, results):
        ref = train_single(name, optimizer, cfg.lr, cfg.wd, cfg.seed, key=cfg.key, **SLICE)
        assert not res.diverged and not ref.diverged
        for a, b in zip(res.curve, ref.curve):
            assert abs(a.val_loss - b.val_loss) <= tol, (cfg, a, b)
            assert abs(a.train_loss - b.train_loss) <= tol, (cfg, a, b)
            assert a.val_error == pytest.approx(b.val_error, abs=1.5 / 64)
    finals = [r.val_loss for r in results]
    assert len({round(v, 6) for v in finals}) == len(finals)
    assert all(math.isfinite(v) for v in finals)


def test_a_diverging_config_on_the_wide_engine_is_frozen_alone():
    """The others' curves are bit-identical to a block without it (chunks are padded to a fixed
    group count, so removing a row changes no kernel's shape)."""
    configs = _stable("sgd")
    huge = TrialConfig(1e5, 1e-4, seed=0, key="huge")
    results = train_block("mnist5k_cnn", "sgd", configs[:2] + [huge] + configs[2:], **SLICE)
    assert results[2].diverged and not any(r.diverged for r in results[:2] + results[3:])
    alone = train_block("mnist5k_cnn", "sgd", configs, **SLICE)
    assert [r.curve for r in results[:2] + results[3:]] == [r.curve for r in alone]


def test_wide_model_is_a_copy_and_leaves_the_template_alone():
    template = get_task("mnist5k_cnn").build_model(0)
    before = copy.deepcopy(template.state_dict())
    engine = WideEngine.build(template, (1, 28, 28), eval_batch=8)
    assert engine is not None
    assert isinstance(template.conv1, nn.Conv2d) and engine.wide is not template
    assert all(torch.equal(v, template.state_dict()[k]) for k, v in before.items())


def test_channels_last_batchnorm_is_as_precise_as_nchw():
    """The wide engine's channels-last BatchNorm against float64, on the hard case: channel means
    several standard deviations from 0 with a constant background (as a conv bias over MNIST
    gives) and a gradient with an offset. PyTorch's own channels-last kernel (one float pass per
    sum) misses the bound on this input, so the test can tell the two apart."""
    from workers.cpu_kernels import BatchNormChannelsLast
    gen = torch.Generator().manual_seed(0)
    n, C, h, w = 32, 24, 14, 14
    x = torch.randn(n, C, h, w, generator=gen) * 0.3 + 3.0
    x[:, :, :4] = 2.5
    dy = torch.randn(n, C, h, w, generator=gen) * (torch.rand(n, C, h, w, generator=gen) < 0.25) + 0.05
    weight, bias = torch.rand(C, generator=gen) + 0.5, torch.randn(C, generator=gen)

    def run(fn, dtype, layout):
        xi = x.to(dtype).clone(memory_format=layout).requires_grad_()
        wi, bi = weight.to(dtype).clone().requires_grad_(), bias.to(dtype).clone().requires_grad_()
        rm, rv = torch.zeros(C, dtype=dtype), torch.ones(C, dtype=dtype)
        y = fn(xi, wi, bi, rm, rv)
        y.backward(dy.to(dtype).contiguous(memory_format=layout))
        return [y, xi.grad, wi.grad, bi.grad, rm, rv]

    def native(x_, w_, b_, rm, rv):
        return F.batch_norm(x_, rm, rv, w_, b_, True, 0.1, 1e-5)

    def ours(x_, w_, b_, rm, rv):
        return BatchNormChannelsLast.apply(x_, w_, b_, rm, rv, 0.1, 1e-5)

    ref = run(native, torch.float64, torch.contiguous_format)
    cl = torch.channels_last

    def errors(out):
        return [float((a.detach().double() - r.detach()).norm() / r.detach().norm()) for a, r in zip(out, ref)]

    # Relative errors measured for [y, dx, dweight, dbias, running mean, running var]: ours
    # (float64 sums) 1.7e-7, 6.2e-8, 2.0e-6, 3.1e-8, 4.3e-8, 3.4e-8; NCHW's float32 kernel 2.0e-7,
    # 6.1e-8, 2.0e-6, 1.4e-7, 4e-8, 3e-8; PyTorch's channels-last one 3.8e-6, 3.9e-6, 4.0e-5,
    # 2.3e-5, 4.5e-7, 8e-8. dweight = sum(dy * xhat) cancels most (dy has an offset, xhat mean 0).
    # The bounds: about twice NCHW's errors.
    bounds = [4e-7, 1.5e-7, 4e-6, 3e-7, 1e-7, 1e-7]
    got = run(ours, torch.float32, cl)
    assert all(t.is_contiguous(memory_format=cl) for t in got[:2])
    assert all(e <= b for e, b in zip(errors(got), bounds)), errors(got)
    assert any(e > b for e, b in zip(errors(run(native, torch.float32, cl)), bounds))
