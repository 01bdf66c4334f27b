"""``GET /optimizers`` and ``GET /tasks``: what a spec may name, and the defaults it gets."""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter

from service.domain.catalog import DEFAULT_GRIDS, TASK_INFO
from service.domain.rules import VARIANTS
from service.schemas import OptimizerInfoPublic, OptimizersPublic, TaskInfoPublic, TasksPublic

router = APIRouter(tags=["catalogue"])


@cache
def _optimizers() -> OptimizersPublic:
    data = [
        OptimizerInfoPublic(
            name=v.name, title=v.title, decay_convention=v.decay_convention, rule=v.rule,
            default_grid={axis: DEFAULT_GRIDS[v.name][axis].as_dict() for axis in ("lr", "wd")},
        )
        for v in VARIANTS.values()
    ]
    return OptimizersPublic(data=data, count=len(data))


@router.get("/optimizers", response_model=OptimizersPublic)
def list_optimizers() -> OptimizersPublic:
    """The five optimizers: update rule, weight-decay convention and default lr x wd grid."""
    return _optimizers()


@router.get("/tasks", response_model=TasksPublic)
def list_tasks(include_synthetic: bool = False) -> TasksPublic:
    """The training tasks a spec may name, with their default epochs and batch size."""
    data = [
        TaskInfoPublic(
            name=t.name, description=t.description, num_classes=t.num_classes, epochs=t.epochs,
            batch_size=t.batch_size, needs_data_dir=t.needs_data_dir, synthetic=t.synthetic,
        )
        for t in TASK_INFO.values()
        if include_synthetic or not t.synthetic
    ]
    return TasksPublic(data=data, count=len(data))
