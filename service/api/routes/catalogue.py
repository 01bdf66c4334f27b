"""``GET /optimizers`` and ``GET /tasks``: what a spec may name, and the defaults it gets."""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter

from service.domain import conventions, plugins
from service.domain.catalog import TASK_INFO, default_grid
from service.schemas import (
    BaseInfoPublic,
    ConventionInfoPublic,
    HyperParameterPublic,
    OptimizerInfoPublic,
    OptimizersPublic,
    TaskInfoPublic,
    TasksPublic,
)


def _dist(entry: plugins.TaskInfo | plugins.RuleInfo | None) -> dict[str, str]:
    d = (entry.plugin if entry is not None else None) or plugins.builtin_distribution()
    return {"distribution": d.name, "version": d.version}


def _axes(grid: dict[str, tuple[float, float, int]]) -> dict[str, dict[str, float]]:
    return {k: {"min": v[0], "max": v[1], "num": v[2]} for k, v in grid.items()}

router = APIRouter(tags=["catalogue"])


@cache
def _optimizers() -> OptimizersPublic:
    reg = plugins.registry()
    data = []
    for name in conventions.all_names():
        r = conventions.parse(name)
        data.append(OptimizerInfoPublic(
            name=name, title=r.title, base=r.base, convention=r.convention, canonical=r.canonical,
            decay_convention=r.decay_convention, rule=r.rule,
            default_grid={axis: default_grid(name)[axis].as_dict() for axis in ("lr", "wd")},
            **_dist(reg.rules.get(r.base)),
        ))
    bases = []
    for b in conventions.all_bases():
        info = reg.rules.get(b)
        bases.append(BaseInfoPublic(
            name=b, title=conventions.base_title(b), family=conventions.base_family(b),
            reference=conventions.base_reference(b), reference_convention=conventions.base_reference_convention(b),
            rule=conventions.base_rule(b), conventions=list(conventions.base_conventions(b)),
            kind=info.kind if info is not None else "builtin",
            hyperparameters=[HyperParameterPublic(name=h.name, default=h.default, min=h.min, max=h.max,
                                                  description=h.description)
                             for h in (info.hyperparameters if info is not None else ())],
            **_dist(info)))
    convs = [ConventionInfoPublic(name=c, decay=conventions.CONVENTION_RULE[c],
                                  description=conventions.CONVENTION_TEXT[c]) for c in conventions.CONVENTIONS]
    refused = {k: v for k, v in reg.refused.items() if k.startswith("rule:")}
    return OptimizersPublic(data=data, count=len(data), bases=bases, conventions=convs,
                            aliases=dict(conventions.ALIASES), refused=refused)


@router.get("/optimizers", response_model=OptimizersPublic)
def list_optimizers() -> OptimizersPublic:
    """Every optimizer name (the five original ones, bare bases, every BASE:CONVENTION, installed
    plugins' bases): its exact update rule, weight-decay convention, default lr x wd grid and the
    distribution providing it; and the bases (with a plugin's hyper-parameters), conventions and
    aliases they are made of."""
    return _optimizers()


@router.get("/tasks", response_model=TasksPublic)
def list_tasks(include_synthetic: bool = False) -> TasksPublic:
    """The training tasks a spec may name (built-ins and installed plugins, each with its
    distribution and version), with their default epochs, batch size and grids."""
    data = [
        TaskInfoPublic(
            name=t.name, description=t.description, num_classes=t.num_classes, epochs=t.epochs,
            batch_size=t.batch_size, needs_data_dir=t.needs_data_dir, synthetic=t.synthetic,
            input_shape=list(t.input_shape), default_grids={k: _axes(g) for k, g in t.default_grids.items()},
            **_dist(t),
        )
        for t in TASK_INFO.values()
        if include_synthetic or not t.synthetic
    ]
    refused = {k: v for k, v in plugins.registry().refused.items() if k.startswith("task:")}
    return TasksPublic(data=data, count=len(data), refused=refused)
