"""Installed tasks and update rules: the one registry built-ins and plugins both go through.

A team brings its own model or optimizer as a Python package that declares **entry points** in
two groups (``docs/plugins.md``)::

    [project.entry-points."decouple_lab.tasks"]
    wine_mlp = "my_plugin.meta:WINE_MLP"          # a TaskInfo
    [project.entry-points."decouple_lab.update_rules"]
    signum = "my_plugin.meta:SIGNUM"              # a RuleInfo

Code never arrives through the API: a spec only *names* what is installed in the image.

Each entry point names a plain *description* (:class:`TaskInfo`, :class:`RuleInfo`) importable
without torch, so the API lists plugins and validates specs (names, hyper-parameters with their
ranges, supported conventions) without importing ``workers`` or the plugin's training code. The
description's ``implementation`` is a module path the *worker* imports (``workers.plugins``).

The built-ins are entry points of the same groups (:data:`BUILTIN_ENTRY_POINTS`, distribution
``decouple-lab``) and are loaded by the same function (:func:`load_entry_point`) as every
installed one; :func:`registry` reads both once per process. A plugin that fails to load, names
itself differently from its entry point, or has a field out of range is *refused*: it is left out
of the registry and listed in ``Registry.refused`` with the reason and its distribution's name,
never raised (one bad package must not take the API or a worker down).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import metadata
from typing import Literal

from service.domain import conventions

TASK_GROUP = "decouple_lab.tasks"
RULE_GROUP = "decouple_lab.update_rules"
#: The distribution the built-ins belong to (this project).
BUILTIN_DISTRIBUTION = "decouple-lab"

#: (min, max, num) of a log-spaced axis.
AxisTuple = tuple[float, float, int]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class Distribution:
    """The installed package a task or rule comes from: what a study records and a worker checks."""

    name: str
    version: str

    def as_dict(self) -> dict[str, str]:
        return {"distribution": self.name, "version": self.version}


@dataclass(frozen=True)
class TaskInfo:
    """A task's metadata: what the API lists and validates; the worker builds the task from it.

    ``implementation`` (plugins): the module the worker imports, defining ``load_data()`` (returns
    ``x_train, y_train, x_val, y_val`` as arrays or tensors: float inputs, int labels in
    ``[0, num_classes)``) and ``build_model()`` (an ``nn.Module`` mapping ``input_shape`` to
    ``num_classes`` logits; the worker seeds torch before calling it). Built-ins leave it None:
    ``workers.tasks`` builds them. ``default_grids`` maps an optimizer base (or a full name) to
    the lr and wd axes a spec on this task gets when it leaves them out.
    """

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
    #: Shape of one input sample (block sizing without loading the data); () when not declared.
    input_shape: tuple[int, ...] = ()
    default_grids: dict[str, dict[str, AxisTuple]] = field(default_factory=dict)
    implementation: str | None = None
    #: Set by the registry: the distribution that provided this task.
    plugin: Distribution | None = None

    @property
    def chance(self) -> float:
        """val_error of a classifier that guesses: 1 - 1/num_classes."""
        return 1.0 - 1.0 / self.num_classes


@dataclass(frozen=True)
class HyperParameter:
    """A rule's hyper-parameter: a spec may set it (``optimizers[i].params``) within [min, max]."""

    name: str
    default: float
    min: float
    max: float
    description: str = ""


@dataclass(frozen=True)
class RuleInfo:
    """An update rule's metadata: a new *base* direction a spec names as ``BASE`` or ``BASE:CONVENTION``.

    ``kind="packed"``: ``implementation`` is a module defining
    ``direction(g, state, ctx, **hyperparameters) -> u`` on (K, P) tensors (one row per packed
    config; ``ctx`` holds theta, the (K, 1) scheduled step sizes lr and decays wd, eta_t and the
    step: ``workers.plugins.StepContext``); the trainer applies the decay convention and
    theta <- theta - lr*u. ``kind="torch"``: ``implementation`` is
    ``"module:Class"``, a ``torch.optim.Optimizer`` subclass taking ``lr`` and ``weight_decay``
    (plus the hyper-parameters as keyword arguments), run once per config on its slice of the
    stacked parameters; its ``weight_decay`` follows ``reference_convention``, the only convention
    it supports. ``conventions`` lists the decay conventions a spec may combine it with.
    """

    name: str
    title: str
    rule: str
    reference_convention: str
    conventions: tuple[str, ...]
    lr: AxisTuple
    #: wd axis per convention (a convention left out gets ``conventions.CONVENTION_WD``'s).
    wd: dict[str, AxisTuple] = field(default_factory=dict)
    hyperparameters: tuple[HyperParameter, ...] = ()
    kind: Literal["builtin", "packed", "torch"] = "packed"
    implementation: str | None = None
    family: str | None = None
    reference: str = ""
    plugin: Distribution | None = None

    def default_grid(self, convention: str) -> dict[str, AxisTuple]:
        return {"lr": self.lr, "wd": self.wd.get(convention, conventions.CONVENTION_WD[convention])}

    def hyperparameter_defaults(self) -> dict[str, float]:
        return {h.name: h.default for h in self.hyperparameters}


class PluginError(ValueError):
    """A plugin's description is unusable; the message names the plugin and the field."""


@dataclass
class Registry:
    """Every task and update rule this process can name, and the plugins it refused."""

    tasks: dict[str, TaskInfo] = field(default_factory=dict)
    rules: dict[str, RuleInfo] = field(default_factory=dict)
    #: "group:name" -> why the plugin was left out (it names the distribution).
    refused: dict[str, str] = field(default_factory=dict)

    def plugins(self) -> dict[str, Distribution]:
        """"task:NAME" / "rule:NAME" -> distribution, for every non-built-in entry."""
        out = {f"task:{n}": t.plugin for n, t in self.tasks.items() if t.plugin and not is_builtin(t.plugin)}
        out.update({f"rule:{n}": r.plugin for n, r in self.rules.items() if r.plugin and not is_builtin(r.plugin)})
        return out


def is_builtin(dist: Distribution | None) -> bool:
    return dist is None or dist.name == BUILTIN_DISTRIBUTION


def _ep(name: str, group: str, attr: str) -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=f"service.domain.builtins:{attr}", group=group)


#: The built-ins, declared exactly as a plugin declares its own (loaded by :func:`load_entry_point`).
BUILTIN_ENTRY_POINTS: tuple[metadata.EntryPoint, ...] = (
    *(_ep(n, TASK_GROUP, n.upper()) for n in (
        "digits_mlp", "digits_mlp_bn", "mnist5k_cnn", "mnist5k_resnet", "cifar10_resnet",
        "synthetic", "synthetic_offgrid", "synthetic_seeds")),
    *(_ep(b, RULE_GROUP, b.upper()) for b in conventions.BASES),
)


def _check_axis(where: str, axis: object) -> None:
    ok = (isinstance(axis, tuple) and len(axis) == 3 and all(isinstance(v, (int, float)) for v in axis[:2])
          and isinstance(axis[2], int) and 0 < axis[0] <= axis[1] and math.isfinite(axis[1]) and 1 <= axis[2] <= 64)
    if not ok:
        raise PluginError(f"{where} must be (min, max, num) with 0 < min <= max and 1 <= num <= 64, not {axis!r}")


def check_task(info: TaskInfo) -> None:
    """Raise :class:`PluginError` naming the field when a task description is unusable."""
    if not _NAME.match(info.name):
        raise PluginError(f"name {info.name!r} must be lower-case letters, digits and _ (at most 40)")
    for f in ("num_classes", "epochs", "batch_size"):
        v = getattr(info, f)
        if not isinstance(v, int) or isinstance(v, bool) or v < (2 if f == "num_classes" else 1):
            raise PluginError(f"{f} must be a positive integer (num_classes at least 2), not {v!r}")
    if not isinstance(info.description, str) or not info.description:
        raise PluginError("description must be a non-empty string")
    if not isinstance(info.input_shape, tuple) or not all(isinstance(d, int) and d > 0 for d in info.input_shape):
        raise PluginError(f"input_shape must be a tuple of positive integers, not {info.input_shape!r}")
    for key, grid in info.default_grids.items():
        for axis in ("lr", "wd"):
            if axis in grid:
                _check_axis(f"default_grids[{key!r}][{axis!r}]", grid[axis])
    if info.plugin is not None and not is_builtin(info.plugin):
        if not info.implementation:
            raise PluginError("implementation (the module defining load_data and build_model) is missing")
        if not info.input_shape:
            raise PluginError("input_shape is missing")


def check_rule(info: RuleInfo) -> None:
    """Raise :class:`PluginError` naming the field when a rule description is unusable."""
    if not _NAME.match(info.name):
        raise PluginError(f"name {info.name!r} must be lower-case letters, digits and _ (at most 40)")
    if info.name in conventions.ALIASES:
        raise PluginError(f"name {info.name!r} is an alias of {conventions.ALIASES[info.name]!r}")
    bad = [c for c in info.conventions if c not in conventions.CONVENTIONS]
    if not info.conventions or bad:
        raise PluginError(f"conventions must be a non-empty subset of {', '.join(conventions.CONVENTIONS)}"
                          + (f" (unknown: {', '.join(map(repr, bad))})" if bad else ""))
    if info.reference_convention not in info.conventions:
        raise PluginError(f"reference_convention {info.reference_convention!r} is not one of its conventions")
    if info.kind == "torch" and tuple(info.conventions) != (info.reference_convention,):
        raise PluginError("a torch.optim fallback supports exactly its reference_convention (where its "
                          "weight_decay sits)")
    _check_axis("lr", info.lr)
    for conv, axis in info.wd.items():
        _check_axis(f"wd[{conv!r}]", axis)
    names = set()
    for h in info.hyperparameters:
        if not isinstance(h, HyperParameter) or not _NAME.match(h.name) or h.name in names:
            raise PluginError(f"hyperparameters: {h!r} is not a HyperParameter with a distinct lower-case name")
        names.add(h.name)
        if not (math.isfinite(h.min) and math.isfinite(h.max) and h.min <= h.default <= h.max):
            raise PluginError(f"hyperparameters[{h.name!r}]: needs finite min <= default <= max")
    if info.kind != "builtin" and not info.implementation:
        raise PluginError("implementation is missing")
    if info.kind == "torch" and ":" not in (info.implementation or ""):
        raise PluginError("implementation of a torch rule must be 'module:OptimizerClass'")


def load_entry_point(ep: metadata.EntryPoint, dist: Distribution) -> TaskInfo | RuleInfo:
    """The description ``ep`` names, checked and stamped with ``dist``; :class:`PluginError` otherwise."""
    try:
        obj = ep.load()
    except Exception as e:  # an ImportError, or anything the plugin's module raises on import
        raise PluginError(f"import of {ep.value} failed: {type(e).__name__}: {e}") from e
    expected = TaskInfo if ep.group == TASK_GROUP else RuleInfo
    if not isinstance(obj, expected):
        raise PluginError(f"{ep.value} is a {type(obj).__name__}, not a {expected.__name__}")
    if obj.name != ep.name:
        raise PluginError(f"{ep.value} is named {obj.name!r}, its entry point {ep.name!r}")
    obj = replace(obj, plugin=dist)
    if isinstance(obj, TaskInfo):
        check_task(obj)
    else:
        if not is_builtin(dist) and obj.kind == "builtin":
            raise PluginError("kind must be 'packed' or 'torch'")
        check_rule(obj)
    return obj


def _installed(group: str) -> list[tuple[metadata.EntryPoint, Distribution]]:
    out = []
    for ep in metadata.entry_points(group=group):
        d = ep.dist
        dist = Distribution(d.name if d is not None else "unknown", d.version if d is not None else "unknown")
        out.append((ep, dist))
    return sorted(out, key=lambda x: (x[1].name, x[0].name))


def builtin_distribution() -> Distribution:
    try:
        return Distribution(BUILTIN_DISTRIBUTION, metadata.version(BUILTIN_DISTRIBUTION))
    except metadata.PackageNotFoundError:
        return Distribution(BUILTIN_DISTRIBUTION, "0+unknown")


def discover() -> Registry:
    """Read the built-ins and every installed entry point of both groups (a fresh registry)."""
    reg = Registry()
    builtin = builtin_distribution()
    candidates = [(ep, builtin) for ep in BUILTIN_ENTRY_POINTS]
    candidates += _installed(TASK_GROUP) + _installed(RULE_GROUP)
    for ep, dist in candidates:
        key = f"{'task' if ep.group == TASK_GROUP else 'rule'}:{ep.name}"
        where = f"plugin {ep.name!r} of {dist.name} {dist.version}"
        target = reg.tasks if ep.group == TASK_GROUP else reg.rules
        if ep.name in target or (ep.group == RULE_GROUP and ep.name in conventions.BASES and not is_builtin(dist)):
            reg.refused[key] = f"{where}: the name is already taken (by {(target[ep.name].plugin or builtin).name})"
            continue
        try:
            obj = load_entry_point(ep, dist)
        except PluginError as e:
            reg.refused[key] = f"{where}: {e}"
            continue
        target[ep.name] = obj  # type: ignore[assignment]
    for name, rule in reg.rules.items():
        if not is_builtin(rule.plugin):
            conventions.register_base(
                name, title=rule.title, family=rule.family or name, reference=rule.reference or rule.title,
                reference_convention=rule.reference_convention, rule=rule.rule, supported=rule.conventions,
                lr=rule.lr, wd=rule.wd)
    return reg


@cache
def registry() -> Registry:
    """The registry of this process, read once (when a process starts: API, worker, Ray task)."""
    return discover()


def rule_of(base: str) -> RuleInfo | None:
    return registry().rules.get(base)


def installed_message(kind: Literal["task", "rule"]) -> str:
    reg = registry()
    if kind == "task":
        names = [n for n, t in reg.tasks.items() if not t.synthetic]
    else:
        names = list(reg.rules)
    return ", ".join(names)


__all__ = [
    "TASK_GROUP", "RULE_GROUP", "BUILTIN_DISTRIBUTION", "BUILTIN_ENTRY_POINTS", "Distribution", "TaskInfo",
    "HyperParameter", "RuleInfo", "PluginError", "Registry", "check_task", "check_rule", "load_entry_point",
    "discover", "registry", "rule_of", "is_builtin", "installed_message", "builtin_distribution",
]
