"""The worker's side of plugins: import what an installed description names, and run it safely.

``service.domain.plugins`` reads the descriptions (torch-free, shared with the API). Here the
worker imports their ``implementation`` modules (:func:`task_module`, :func:`rule_implementation`),
once per process. A module that fails to import or lacks what the interface asks for is refused
(:data:`REFUSED`) and the worker advertises only what it can run (``workers.worker.installed``),
so it never claims a study that needs it. A plugin that loads but fails while training (a loader
that raises, a direction of the wrong shape) raises :class:`PluginFailure` naming the plugin: the
block fails, its trials record that message, and the worker goes on.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any

import torch

from service.domain.plugins import Distribution, RuleInfo, TaskInfo, registry

#: "task:NAME" / "rule:NAME" -> why this process cannot run it (the message names the plugin).
REFUSED: dict[str, str] = {}


class PluginFailure(RuntimeError):
    """A plugin failed while loading data, building its model or stepping; the message names it."""


def describe(info: TaskInfo | RuleInfo) -> str:
    """``plugin task 'wine_mlp' (decouple-plugin-example 0.1.0)``: how errors name a plugin."""
    kind = "task" if isinstance(info, TaskInfo) else "update rule"
    dist = info.plugin or Distribution("unknown", "unknown")
    return f"plugin {kind} {info.name!r} ({dist.name} {dist.version})"


def task_module(info: TaskInfo) -> ModuleType:
    """The implementation module of a plugin task, with callable ``load_data`` and ``build_model``."""
    try:
        module = importlib.import_module(info.implementation or "")
    except Exception as e:
        raise PluginFailure(f"{describe(info)}: import of {info.implementation} failed: {type(e).__name__}: {e}") from e
    missing = [f for f in ("load_data", "build_model") if not callable(getattr(module, f, None))]
    if missing:
        raise PluginFailure(f"{describe(info)}: {info.implementation} defines no {' or '.join(missing)}")
    return module


@dataclass(frozen=True)
class StepContext:
    """What a packed direction is given besides the gradient and its state, for one step.

    ``p``: the parameters, (K, P), one row per config (read only); ``lr``: (K, 1), each config's
    scheduled step size lr*eta_t; ``wd``: (K, 1), each config's decay coefficient (it applies to
    the first ``n_decayed`` columns; the trainer applies it per the convention, so a direction
    normally ignores it); ``eta``: the schedule multiplier eta_t; ``step``: 1, 2, ...
    New fields may be added; a direction reads the ones it needs.
    """

    p: torch.Tensor
    lr: torch.Tensor
    wd: torch.Tensor
    eta: float
    step: int
    n_decayed: int


@dataclass(frozen=True)
class LoadedRule:
    """A plugin rule's implementation: a packed ``direction`` or a ``torch.optim.Optimizer`` class."""

    info: RuleInfo
    direction: Any = None
    optimizer_class: type | None = None

    def hyperparameters(self, given: dict[str, float] | None) -> dict[str, float]:
        """The defaults overridden by ``given``; a name the rule does not declare is an error."""
        values = self.info.hyperparameter_defaults()
        unknown = sorted(set(given or {}) - set(values))
        if unknown:
            raise ValueError(f"{describe(self.info)} has no hyper-parameter {', '.join(unknown)} "
                             f"(it has {', '.join(values) or 'none'})")
        values.update(given or {})
        return values


def _load_rule(info: RuleInfo) -> LoadedRule:
    target = info.implementation or ""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise PluginFailure(f"{describe(info)}: import of {module_name} failed: {type(e).__name__}: {e}") from e
    if info.kind == "torch":
        cls = getattr(module, attr, None)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise PluginFailure(f"{describe(info)}: {target} is not a torch.optim.Optimizer subclass")
        return LoadedRule(info, optimizer_class=cls)
    direction = getattr(module, attr or "direction", None)
    if not callable(direction):
        raise PluginFailure(f"{describe(info)}: {target} defines no callable {attr or 'direction'}")
    return LoadedRule(info, direction=direction)


@cache
def rule_implementation(base: str) -> LoadedRule | None:
    """The loaded implementation of plugin base ``base``; None for a built-in base."""
    info = registry().rules.get(base)
    if info is None or info.kind == "builtin":
        return None
    return _load_rule(info)


def load_rules() -> None:
    """Import every plugin rule's implementation now (a worker's start-up), refusing the broken ones."""
    for name, info in registry().rules.items():
        if info.kind == "builtin":
            continue
        try:
            rule_implementation(name)
        except PluginFailure as e:
            REFUSED[f"rule:{name}"] = str(e)


__all__ = ["REFUSED", "PluginFailure", "StepContext", "LoadedRule", "describe", "task_module", "rule_implementation", "load_rules"]
