"""The single-config reference trainer: one ``nn.Module``, ``build_optimizer``, ``Schedule.lambda_lr``.

This is training written the ordinary way, with nothing packed. It defines what the packed
trainer (``workers.packed.train_block``) must reproduce, config by config, and it is what the
sequential and Ray Tune baselines of ``bench/trainer.py`` run. The run protocol is the same:

- init: ``task.build_model(seed)`` (``torch.manual_seed(seed)``, then the constructors);
- data: every epoch, ``task.epoch_order`` draws a permutation (and augmentation) from
  ``task.data_generator(seed)``; batches are consecutive slices of it, the last one partial;
- step s uses eta_s = ``schedule.multiplier(s)`` (``LambdaLR`` stepped once per batch) and, with
  ``wd_normalized``, lam_s = wd*sqrt(b/(B*T_s)) in the decayed parameter group;
- a non-finite batch loss means *diverged from this epoch on*: that step is not applied, training
  stops, and the frozen model's metrics are reported (later epochs repeat them, train loss NaN);
  so does a non-finite validation loss at the end of an epoch.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from workers.optim import build_optimizer, check_hyperparameters
from workers.packed import CPU_THREADS, EpochMetrics, TrialConfig, TrialResult, cpu_training, make_spec, resolve_device, train_block
from workers.tasks import get_task


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> tuple[float, float]:
    """(mean cross-entropy, error rate) of ``model`` in evaluation mode."""
    model.eval()
    loss, wrong = 0.0, 0
    for s in range(0, x.shape[0], batch):
        out = model(x[s:s + batch])
        loss += float(F.cross_entropy(out, y[s:s + batch], reduction="sum").double())
        wrong += int((out.argmax(-1) != y[s:s + batch]).sum())
    return loss / x.shape[0], wrong / x.shape[0]


def train_single(
    task: str,
    optimizer: str,
    lr: float,
    wd: float,
    seed: int,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    schedule: dict | None = None,
    wd_normalized: bool = False,
    decay_on: str = "all",
    device: str | torch.device | None = None,
    max_train: int | None = None,
    max_val: int | None = None,
    key=None,
    threads: int | None = CPU_THREADS,
) -> TrialResult:
    """Train one config of ``task`` with ``optimizer`` (arguments as in ``train_block``)."""
    check_hyperparameters(lr, wd)
    t = get_task(task)
    config = TrialConfig(lr, wd, seed, key)
    if t.analytic:
        return train_block(task, optimizer, [config], epochs=epochs, batch_size=batch_size,
                           schedule=schedule, wd_normalized=wd_normalized, decay_on=decay_on)[0]
    dev = resolve_device(device)
    with cpu_training(threads) if dev.type == "cpu" else contextlib.nullcontext():
        return _train(t, optimizer, config, epochs, batch_size, schedule, wd_normalized, decay_on,
                      dev, max_train, max_val)


def _train(t, optimizer, config, epochs, batch_size, schedule, wd_normalized, decay_on, dev, max_train, max_val):
    """The loop of :func:`train_single`, inside ``cpu_training``."""
    lr, wd, seed, key = config.lr, config.wd, config.seed, config.key
    data = t.load_data(max_train, max_val).to(dev)
    spec = make_spec(t, optimizer, epochs=epochs, batch_size=batch_size, schedule=schedule,
                     wd_normalized=wd_normalized, decay_on=decay_on, n_train=data.n_train)
    model = t.build_model(seed).to(dev)
    opt = build_optimizer(optimizer, model, lr, wd, decay_on=decay_on)
    scheduler = spec.schedule.lambda_lr(opt)
    gen = t.data_generator(seed)
    n, b = data.n_train, spec.batch_size
    step = 0
    curve: list[EpochMetrics] = []
    frozen: tuple[float, float] | None = None
    for epoch in range(spec.epochs):
        if frozen is not None:
            curve.append(EpochMetrics(key, epoch, float("nan"), *frozen, True))
            continue
        perm, aug = t.epoch_order(n, gen)
        perm = perm.to(dev)
        model.train()
        loss_sum, seen, diverged = 0.0, 0, False
        for s in range(0, n, b):
            idx = perm[s:s + b]
            x = data.x_train[idx]
            if t.augment is not None:
                x = t.augment.apply(x, aug[s:s + b])
            loss = F.cross_entropy(model(x), data.y_train[idx])
            value = float(loss.detach().double())
            loss_sum += value * idx.shape[0]
            seen += idx.shape[0]
            if not math.isfinite(value):
                diverged = True
                break
            if spec.wd_normalized:
                # The first group is the decayed one (workers.optim.param_groups).
                opt.param_groups[0]["weight_decay"] = spec.weight_decay(wd, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
            step += 1
        val_loss, val_error = evaluate(model, data.x_val, data.y_val)
        diverged = diverged or not math.isfinite(val_loss)
        curve.append(EpochMetrics(key, epoch, loss_sum / seen, val_loss, val_error, diverged))
        if diverged:
            frozen = (val_loss, val_error)
    return TrialResult.from_curve(config, curve)


__all__ = ["train_single", "evaluate"]
