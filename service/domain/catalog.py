"""The catalogues the API serves (`GET /optimizers`, `GET /tasks`), importable without torch.

Task *metadata* comes from the registry (``service.domain.plugins``: the built-ins of
``service.domain.builtins`` and installed plugins alike); the data loaders and model builders live
in ``workers.tasks`` (which imports torch) and are looked up by the same names. A request can only
name a registered task.
"""

from __future__ import annotations

from service.domain import conventions, plugins
from service.domain.grid import Axis
from service.domain.plugins import TaskInfo

__all__ = ["TASK_INFO", "TaskInfo", "DEFAULT_GRIDS", "default_grid", "default_wd", "chance_level"]


#: Every task this process can name, built-ins and installed plugins alike
#: (``service.domain.plugins.registry``); the built-ins' metadata is in ``service.domain.builtins``.
TASK_INFO: dict[str, TaskInfo] = dict(plugins.registry().tasks)


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
