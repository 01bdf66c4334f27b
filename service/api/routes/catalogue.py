"""``GET /optimizers`` and ``GET /tasks``: what a spec may name, and the defaults it gets."""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter

from service.domain import conventions
from service.domain.catalog import TASK_INFO, default_grid
from service.schemas import BaseInfoPublic, ConventionInfoPublic, OptimizerInfoPublic, OptimizersPublic, TaskInfoPublic, TasksPublic

router = APIRouter(tags=["catalogue"])


@cache
def _optimizers() -> OptimizersPublic:
    data = []
    for name in conventions.all_names():
        r = conventions.parse(name)
        data.append(OptimizerInfoPublic(
            name=name, title=r.title, base=r.base, convention=r.convention, canonical=r.canonical,
            decay_convention=r.decay_convention, rule=r.rule,
            default_grid={axis: default_grid(name)[axis].as_dict() for axis in ("lr", "wd")},
        ))
    bases = [BaseInfoPublic(name=b, title=conventions.BASE_TITLE[b], family=conventions.FAMILY[b],
                            reference=conventions.REFERENCE[b],
                            reference_convention=conventions.REFERENCE_CONVENTION[b],
                            rule=conventions.BASE_RULE[b]) for b in conventions.BASES]
    convs = [ConventionInfoPublic(name=c, decay=conventions.CONVENTION_RULE[c],
                                  description=conventions.CONVENTION_TEXT[c]) for c in conventions.CONVENTIONS]
    return OptimizersPublic(data=data, count=len(data), bases=bases, conventions=convs,
                            aliases=dict(conventions.ALIASES))


@router.get("/optimizers", response_model=OptimizersPublic)
def list_optimizers() -> OptimizersPublic:
    """Every optimizer name (the five original ones, bare bases, every BASE:CONVENTION): its exact
    update rule, weight-decay convention and default lr x wd grid; and the bases, conventions and
    aliases they are made of."""
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
