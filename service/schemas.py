"""Pydantic models: the study spec (``docs/api.md``) and the API's public shapes.

The spec models reject bad input by themselves: unknown optimizer or task
names (the message lists the allowed ones), non-positive or non-finite bounds, min > max, axes of
0 or more than 64 points, 0 or more than 16 seeds, duplicate names, unknown fields, and studies
with more trials than ``DECOUPLE_MAX_TRIALS``. FastAPI turns any of these into a 422 whose message
names the field (:func:`format_errors`); routes hold no hand-written checks.

A grid axis is log-spaced: ``num`` points from ``min`` to ``max``,
``v_k = min * (max/min)**(k/(num-1))`` for k = 0..num-1 (:func:`service.domain.grid.axis_values`,
the one place that computes them). A spec normalized by the model (:meth:`StudySpec.stored`) has
every default filled in, so workers and the report read explicit axes, epochs and schedule parameters.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from service.domain import conventions, plugins
from service.domain import seeds as seeds_rule
from service.domain.catalog import TASK_INFO, default_grid
from service.domain.grid import axis_values as axis_values  # re-exported: the spec's axes' points
from service.domain.rules import OPTIMIZER_NAMES as OPTIMIZER_NAMES  # re-exported: the paper's five names
from service.domain.rules import SCHEDULE_NAMES

MAX_AXIS_POINTS = 64
MAX_SEEDS = 16
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_PRIORITY = 1_000

#: The trial cap a request is checked against. The API sets it per request from the app's own
#: settings (so an app built with explicit settings needs no environment); anything else falls
#: back to ``get_settings().max_trials``. ``model_validate(..., context={"max_trials": n})``
#: overrides both; ``None`` there skips the check (re-reading a stored spec).
max_trials_var: ContextVar[int | None] = ContextVar("decouple_max_trials", default=None)

#: Largest lr or wd an axis may reach (a test diverges SGD on purpose at lr 1,000); bounds an
#: extension as it bounds a submission.
MAX_AXIS_VALUE = 1e4

PositiveFinite = Annotated[float, Field(gt=0, le=MAX_AXIS_VALUE, allow_inf_nan=False, strict=True)]

#: Fields the service sets on a stored spec and users may not: a submission that carries one is
#: a 422 naming it. ``StudySpec.from_stored`` (context ``{"stored": True}``) reads them back.
SERVICE_OWNED = ("placement", "origin")


def _names(names: Any) -> str:
    return ", ".join(names)


def user_task_names() -> list[str]:
    return [name for name, info in TASK_INFO.items() if not info.synthetic]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- grid axes -----------------------------------------------------------------------------------


class GridAxis(_Spec):
    """A log-spaced axis ``{"min", "max", "num"}``, or ``"auto"`` / ``{"auto": true, "num": 8}``.

    An auto axis is placed by a coarse pilot run around the optimizer's optimum; ``num`` is how
    many points the final axis gets (default: the optimizer's default grid size).
    """

    min: PositiveFinite | None = None
    max: PositiveFinite | None = None
    num: int | None = Field(None, ge=1, le=MAX_AXIS_POINTS, strict=True)
    auto: bool = Field(False, strict=True)
    #: How a stored axis came to be (set by the worker/extension, not by users): the user's
    #: ``"given"`` values, ``"auto"`` placed by the pilot, or ``"extended"`` by edge repair.
    placement: Literal["given", "auto", "extended"] | None = None
    #: Trial index of the axis's first point: negative after edge repair added points below
    #: (trials already run keep their indices), so a point's trial index is ``origin + k``.
    origin: int | None = Field(None, ge=-(2**31 - 1), le=0, strict=True)

    @field_validator("placement", "origin")
    @classmethod
    def _service_owned(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not (info.context or {}).get("stored"):
            raise ValueError("is set by the service only; leave it out")
        return value

    @model_validator(mode="before")
    @classmethod
    def _auto_shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            if data == "auto":
                return {"auto": True}
            raise ValueError(f'must be {{"min", "max", "num"}} or "auto", not {data!r}')
        return data

    @model_validator(mode="after")
    def _check_bounds(self) -> GridAxis:
        if self.auto:
            if self.min is not None or self.max is not None:
                raise ValueError("an auto axis takes only num (the pilot run places min and max)")
            return self
        missing = [k for k in ("min", "max", "num") if getattr(self, k) is None]
        if missing:
            raise ValueError(f'needs min, max and num (or "auto"); missing {_names(missing)}')
        if self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is greater than max ({self.max:g})")
        if self.num == 1 and self.min != self.max:
            raise ValueError("num 1 needs min == max (a single point)")
        return self

    @model_serializer
    def _serialize(self) -> dict[str, Any]:
        if self.auto:
            return {"auto": True, "num": self.num}
        out: dict[str, Any] = {"min": self.min, "max": self.max, "num": self.num}
        if self.placement is not None:
            out["placement"] = self.placement
        if self.origin:
            out["origin"] = self.origin
        return out


# --- optimizers and schedules --------------------------------------------------------------------


class OptimizerSpec(_Spec):
    """One optimizer of the study and its lr x wd grid; an axis left out takes the default."""

    # The enum documents the names; the validator below gives the friendlier message.
    name: str = Field(json_schema_extra={"enum": list(conventions.all_names())})
    lr: GridAxis | None = None
    wd: GridAxis | None = None
    #: A plugin rule's hyper-parameters (``GET /optimizers``: names, defaults and ranges); the
    #: stored spec has every one, defaults filled in. Built-in bases take none.
    params: dict[str, Annotated[float, Field(strict=True, allow_inf_nan=False)]] | None = None
    #: Which of lr and wd took the default (a task may have its own defaults per base).
    _defaulted: set[str] = PrivateAttr(default_factory=set)

    @field_validator("name")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        try:
            conventions.parse(name)
        except conventions.UnknownOptimizer as e:
            raise ValueError(str(e)) from None
        return name

    @model_validator(mode="after")
    def _fill_defaults(self) -> OptimizerSpec:
        self._check_params()
        for key in ("lr", "wd"):
            default = default_grid(self.name)[key]
            axis = getattr(self, key)
            if axis is None:
                self._defaulted.add(key)
                axis = GridAxis(min=default.min, max=default.max, num=default.num)
            elif axis.auto and axis.num is None:
                axis = GridAxis(auto=True, num=default.num)
            setattr(self, key, axis)
        return self

    def _check_params(self) -> None:
        base = conventions.parse(self.name).base
        rule = plugins.rule_of(base)
        declared = {h.name: h for h in rule.hyperparameters} if rule is not None else {}
        given = dict(self.params or {})
        if not declared:
            if given:
                raise ValueError(f"params: {self.name!r} takes no hyper-parameters (got {_names(given)})")
            self.params = None
            return
        for key, value in given.items():
            h = declared.get(key)
            if h is None:
                raise ValueError(f"params.{key}: {base!r} has no hyper-parameter {key!r} "
                                 f"(it has {_names(declared)})")
            if not h.min <= value <= h.max:
                raise ValueError(f"params.{key}: {value:g} is outside [{h.min:g}, {h.max:g}]")
        self.params = {k: given.get(k, h.default) for k, h in declared.items()}

    @model_serializer(mode="wrap")
    def _serialize(self, handler: Any) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("params") is None:
            out.pop("params", None)  # built-in bases: the stored spec keeps its old shape
        return out

    def task_defaults(self, grids: dict[str, dict[str, tuple[float, float, int]]]) -> None:
        """Replace the defaulted axes by a task's own defaults for this base (or this name)."""
        r = conventions.parse(self.name)
        grid = grids.get(self.name) or grids.get(r.canonical) or grids.get(r.base)
        for key in self._defaulted & set(grid or {}):
            lo, hi, num = grid[key]  # type: ignore[index]
            setattr(self, key, GridAxis(min=lo, max=hi, num=num))

    @property
    def is_auto(self) -> bool:
        """True when a pilot run must place this optimizer's grid before its trials exist."""
        return bool(self.lr.auto or self.wd.auto)

    @property
    def cells(self) -> int:
        return self.lr.num * self.wd.num


class ConstantSchedule(_Spec):
    name: Literal["constant"]


class StepSchedule(_Spec):
    """eta drops by ``gamma`` at each milestone (fractions of the training budget)."""

    name: Literal["step"]
    milestones: list[Annotated[float, Field(gt=0, lt=1, strict=True)]] = Field(
        default_factory=lambda: [0.3, 0.6, 0.8], min_length=1, max_length=16
    )
    gamma: float = Field(0.1, gt=0, le=1, strict=True)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, ms: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(ms, ms[1:], strict=False)):
            raise ValueError("milestones must be strictly increasing")
        return ms


class CosineSchedule(_Spec):
    name: Literal["cosine"]


class CosineRestartsSchedule(_Spec):
    """Cosine annealing restarted every period; periods start at ``t0`` epochs and grow by ``t_mult``."""

    name: Literal["cosine_restarts"]
    t0: float = Field(10.0, gt=0, allow_inf_nan=False, strict=True)
    t_mult: float = Field(2.0, ge=1, allow_inf_nan=False, strict=True)


ScheduleSpec = Annotated[
    ConstantSchedule | StepSchedule | CosineSchedule | CosineRestartsSchedule,
    Field(discriminator="name"),
]


# --- seeds --------------------------------------------------------------------------------------


class SeedRecord(_Spec):
    """How many seeds an optimizer of an auto-seeds study got, and why it stopped (service-owned)."""

    seeds: int = Field(ge=1, le=MAX_SEEDS, strict=True)
    stopped: Literal["decided", "reached_max", "seeds_will_not_decide"] | None = None
    verdict: str | None = None
    seeds_to_decide: int | None = None


class AutoSeeds(_Spec):
    """``{"auto": true, "min": 2, "max": 8}``: seeds 0..min-1 first, then more seeds for each
    optimizer whose verdict is still inconclusive, up to ``max`` (``service.domain.seeds``)."""

    auto: Literal[True]
    min: int = Field(2, ge=2, le=MAX_SEEDS, strict=True)
    max: int = Field(8, ge=2, le=MAX_SEEDS, strict=True)
    #: Set by the worker, never by users: per optimizer, the seeds it got and why it stopped.
    given: dict[str, SeedRecord] | None = None

    @field_validator("given")
    @classmethod
    def _service_owned(cls, given: Any, info: ValidationInfo) -> Any:
        if given is not None and not (info.context or {}).get("stored"):
            raise ValueError("is set by the service (the seeds each optimizer got), not by users")
        return given

    @model_validator(mode="after")
    def _min_le_max(self) -> AutoSeeds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    @model_serializer
    def _serialize(self) -> dict[str, Any]:
        out: dict[str, Any] = {"auto": True, "min": self.min, "max": self.max}
        if self.given is not None:
            out["given"] = {k: v.model_dump(mode="json") for k, v in self.given.items()}
        return out


def _seeds_kind(value: Any) -> str:
    return "auto" if isinstance(value, (dict, AutoSeeds)) else "list"


#: ``seeds``: a list, or the auto object; the tag picks the one model (so an error names
#: ``seeds.min``, not both alternatives).
SeedsSpec = Annotated[
    Annotated[list[Annotated[int, Field(ge=0, le=2**31 - 1, strict=True)]],
              Field(min_length=1, max_length=MAX_SEEDS, json_schema_extra={"uniqueItems": True}),
              Tag("list")]
    | Annotated[AutoSeeds, Tag("auto")],
    Discriminator(_seeds_kind),
]


# --- the study spec ------------------------------------------------------------------------------

SPEC_EXAMPLE: dict[str, Any] = {
    "name": "digits, five optimizers",
    "task": "digits_mlp",
    "epochs": 30,
    "batch_size": 64,
    "schedule": {"name": "cosine"},
    "optimizers": [
        {
            "name": "adamw",
            "lr": {"min": 1e-4, "max": 1e-1, "num": 8},
            "wd": {"min": 1e-6, "max": 1e-2, "num": 8},
        },
        {"name": "adam"},
    ],
    "seeds": [0, 1],
    "metric": "val_error",
}


class StudySpec(_Spec):
    """A grid study: for each optimizer, every (lr, wd) cell of its grid, once per seed."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SPEC_EXAMPLE]})

    name: str = Field(min_length=1, max_length=200)
    task: str = Field(json_schema_extra={"enum": user_task_names()})
    #: Default: the task's own budget (``GET /tasks``).
    epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS, strict=True)
    batch_size: int | None = Field(None, ge=1, le=MAX_BATCH_SIZE, strict=True)
    schedule: ScheduleSpec = Field(default_factory=lambda: ConstantSchedule(name="constant"))
    optimizers: list[OptimizerSpec] = Field(min_length=1)
    #: A list of seeds, or ``{"auto": true, "min", "max"}`` (seeds until decided).
    seeds: SeedsSpec = Field(default_factory=lambda: [0])
    metric: Literal["val_error", "val_loss"] = "val_error"
    #: The wd axis holds lambda_norm; each trial uses lambda = lambda_norm*sqrt(b/(B*T)).
    wd_normalized: bool = Field(False, strict=True)
    decay_on: Literal["all", "weights", "invariant"] = "all"
    priority: int = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, strict=True)
    #: Edge repair: after the grid, extend an optimizer whose best cell is on an edge, up to N times.
    auto_extend: int = Field(0, ge=0, le=5, strict=True)
    #: Optimizers of one family (SGD or Adam) share the covering lr window of their auto lr axes.
    share_lr_window: bool = Field(False, strict=True)

    @field_validator("name")
    @classmethod
    def _printable_name(cls, name: str) -> str:
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            raise ValueError("must not contain control characters")
        return name

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        # Synthetic (test-only) tasks are accepted but not advertised.
        if task not in TASK_INFO:
            raise ValueError(f"unknown task {task!r} (expected one of {_names(user_task_names())})")
        return task

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("optimizers")
    @classmethod
    def _distinct_optimizers(cls, optimizers: list[OptimizerSpec]) -> list[OptimizerSpec]:
        seen: dict[str, str] = {}  # canonical BASE:CONVENTION -> the name it was first given as
        for opt in optimizers:
            rule = conventions.parse(opt.name).canonical
            if rule in seen:
                first = seen[rule]
                same = "" if first == opt.name else f" (as {first!r}: both are {rule!r})"
                raise ValueError(f"optimizer {opt.name!r} appears more than once{same}")
            seen[rule] = opt.name
        return optimizers

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | AutoSeeds) -> list[int] | AutoSeeds:
        if isinstance(seeds, AutoSeeds):
            return seeds
        dupes = sorted({s for s in seeds if seeds.count(s) > 1})
        if dupes:
            raise ValueError(f"seeds must be distinct ({_names(map(str, dupes))} repeated)")
        return seeds

    @model_validator(mode="after")
    def _fill_and_cap(self, info: ValidationInfo) -> StudySpec:
        task = TASK_INFO[self.task]
        if task.default_grids:
            for opt in self.optimizers:
                opt.task_defaults(task.default_grids)
        if self.epochs is None:
            self.epochs = task.epochs
        if self.batch_size is None:
            self.batch_size = task.batch_size
        cap = _max_trials(info)
        if cap is not None and self.trials_total > cap:
            raise ValueError(
                f"the study has {self.trials_total} trials (grid cells x seeds, over all "
                f"optimizers), more than DECOUPLE_MAX_TRIALS={cap}"
            )
        return self

    @property
    def trials_total(self) -> int:
        """Grid-phase trials: sum over optimizers of lr.num * wd.num, times the seeds (under auto
        seeds the worst case, ``max``: the cap must hold however many seeds the study adds)."""
        return sum(opt.cells for opt in self.optimizers) * seeds_rule.max_seeds(self.seeds)

    def plugins_used(self) -> dict[str, dict[str, str]]:
        """The installed plugins this spec names (its task, its optimizers' bases), with the
        distribution and version this process has: what the study records and a worker must have."""
        reg = plugins.registry()
        used: dict[str, dict[str, str]] = {}
        task = reg.tasks.get(self.task)
        if task is not None and not plugins.is_builtin(task.plugin):
            used[f"task:{self.task}"] = task.plugin.as_dict()  # type: ignore[union-attr]
        for opt in self.optimizers:
            rule = reg.rules.get(conventions.parse(opt.name).base)
            if rule is not None and not plugins.is_builtin(rule.plugin):
                used[f"rule:{rule.name}"] = rule.plugin.as_dict()  # type: ignore[union-attr]
        return used

    @property
    def initial_seeds(self) -> list[int]:
        """The seeds every optimizer's grid starts with (a list: all; auto: 0..min-1)."""
        return seeds_rule.initial_seeds(self.seeds)

    def stored(self) -> dict[str, Any]:
        """The spec as stored: JSON, with every default filled in."""
        return self.model_dump(mode="json")

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> StudySpec:
        """Re-read a stored spec (no trial cap: it was checked at submission)."""
        return cls.model_validate(data, context={"max_trials": None, "stored": True})


def _max_trials(info: ValidationInfo) -> int | None:
    context = info.context or {}
    if "max_trials" in context:
        return context["max_trials"]
    cap = max_trials_var.get()
    if cap is not None:
        return cap
    from service.config import get_settings

    return get_settings().max_trials


# --- validation errors as readable messages ------------------------------------------------------


#: Where FastAPI says a value came from; the first element of a request error's ``loc``.
_SOURCES = ("body", "query", "path", "header", "cookie")


def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        if i == 0 and item in _SOURCES:
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif parts and parts[-1] == "schedule" and item in SCHEDULE_NAMES:
            continue  # the discriminated union's tag, not a field
        elif i and loc[i - 1] == "seeds" and item in ("list", "auto"):
            continue  # the seeds union's tag
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "spec"


def _message(error: dict[str, Any]) -> str:
    msg = str(error.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def format_errors(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Pydantic errors as ``[{"field": "optimizers[0].lr.min", "message": "..."}]``."""
    out = []
    for e in errors:
        if e.get("type") == "json_invalid":  # loc is a character position, not a field
            detail = (e.get("ctx") or {}).get("error")
            out.append({"field": "body", "message": "invalid JSON" + (f" ({detail})" if detail else ""), "type": "json_invalid"})
            continue
        out.append({"field": _field_path(tuple(e.get("loc", ()))), "message": _message(e), "type": e.get("type", "")})
    return out


def errors_summary(errors: list[dict[str, str]]) -> str:
    """One line for humans: ``field: message; field: message``."""
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)


# --- public API shapes ---------------------------------------------------------------------------


def finite_or_none(x: float | None) -> float | None:
    """JSON has no NaN or infinity: a non-finite metric is published as null (``status`` says it ran)."""
    return x if x is not None and math.isfinite(x) else None


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: ``detail`` is one line naming the field or the cause."""

    detail: str
    errors: list[dict[str, str]] | None = None


class StudyCreated(BaseModel):
    id: str
    status: str
    trials_total: int


class EstimatePublic(BaseModel):
    """How ``estimated_seconds`` was reached: the throughput measured on this deployment."""

    #: Which measured throughput was used, in words (or why there is none).
    basis: str
    #: Trial-epochs per wall second of the spec's task, pooled over its newest done studies; null
    #: when this deployment has finished no study of the task yet.
    trial_epochs_per_second: float | None
    #: The done studies, trial-epochs and wall seconds it was measured over (0 when none).
    studies: int
    trial_epochs_measured: int
    wall_seconds_measured: float


class DryRunOptimizerPublic(BaseModel):
    name: str
    #: The axis's points; null for an ``auto`` axis (its pilot run places it).
    lr: list[float] | None
    wd: list[float] | None
    #: The seed list, or for auto seeds ``{"auto": true, "min", "max", "start": [seeds]}``.
    seeds: list[int] | dict[str, Any]
    #: Grid trials (cells x seeds; under auto seeds at ``max`` seeds, the worst case).
    trials: int
    #: Only for an optimizer with an ``auto`` axis: ``{"lr": "auto"|"given", "wd": ..., "num": {"lr", "wd"}}``.
    placement: dict[str, Any] | None = None


class DryRunPublic(BaseModel):
    """``POST /studies?dry_run=true``: what the spec would queue; nothing is stored."""

    dry_run: Literal[True]
    trials_total: int
    trial_epochs_total: int
    estimated_seconds: float | None
    estimate: EstimatePublic
    optimizers: list[DryRunOptimizerPublic]
    spec: dict[str, Any]
    #: The installed plugins the study would record (as ``StudyPublic.plugins``); None: built-ins only.
    plugins: dict[str, dict[str, str]] | None = None


class Progress(BaseModel):
    trials_total: int
    trials_done: int
    trials_failed: int
    #: Curve points written for the study so far (every phase; an epoch run again counts again):
    #: grows as epochs land, between finished trials, so a page watching a study knows when the
    #: (cached) partial report has moved. The report cache's key counts the same.
    epochs_recorded: int


class StudyPublic(BaseModel):
    id: str
    name: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    owner: str
    priority: int
    spec: dict[str, Any]
    progress: Progress
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    claimed_by: str | None
    attempts: int
    last_error: str | None
    #: Installed plugins the study uses, "task:NAME"/"rule:NAME" -> distribution and version.
    plugins: dict[str, dict[str, str]] | None = None
    #: Why it is still queued: no worker with the plugins it needs has claimed it.
    waiting_reason: str | None = None


class StudiesPublic(BaseModel):
    data: list[StudyPublic]
    count: int


class TrialPublic(BaseModel):
    id: int
    phase: str
    optimizer: str
    lr_index: int
    wd_index: int
    lr: float
    wd: float
    seed: int
    status: Literal["queued", "running", "done", "failed"]
    train_loss: float | None
    val_loss: float | None
    val_error: float | None
    diverged: bool
    diverged_epoch: int | None
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    attempts: int
    error: str | None


class TrialsPublic(BaseModel):
    data: list[TrialPublic]
    count: int


class CurvePointPublic(BaseModel):
    epoch: int
    train_loss: float | None
    val_loss: float | None
    val_error: float | None


class CurvePublic(BaseModel):
    study_id: str
    trial_id: int
    points: list[CurvePointPublic]


class AxisPublic(BaseModel):
    min: float
    max: float
    num: int


class OptimizerInfoPublic(BaseModel):
    name: str
    title: str
    base: str
    convention: str
    #: The ``BASE:CONVENTION`` an alias or a bare base stands for (the name itself otherwise).
    canonical: str
    decay_convention: str
    rule: str
    default_grid: dict[str, AxisPublic]
    #: The distribution providing the base (``decouple-lab`` for the built-ins) and its version.
    distribution: str
    version: str


class HyperParameterPublic(BaseModel):
    name: str
    default: float
    min: float
    max: float
    description: str


class BaseInfoPublic(BaseModel):
    name: str
    title: str
    family: str
    reference: str
    reference_convention: str
    rule: str
    #: The conventions it may be combined with (``BASE:CONVENTION``).
    conventions: list[str]
    #: ``builtin``; a plugin's ``packed`` direction or ``torch`` (a torch.optim.Optimizer, one
    #: instance per config: slower).
    kind: Literal["builtin", "packed", "torch"]
    #: What ``optimizers[i].params`` may set, with defaults and ranges (plugins only).
    hyperparameters: list[HyperParameterPublic]
    distribution: str
    version: str


class ConventionInfoPublic(BaseModel):
    name: str
    decay: str
    description: str


class OptimizersPublic(BaseModel):
    """Every name a spec may use (``data``), and the bases, conventions and aliases they combine."""

    data: list[OptimizerInfoPublic]
    count: int
    bases: list[BaseInfoPublic]
    conventions: list[ConventionInfoPublic]
    aliases: dict[str, str]
    #: Installed plugins this process refused, "rule:NAME" -> why (they cannot be named).
    refused: dict[str, str]


class TaskInfoPublic(BaseModel):
    name: str
    description: str
    num_classes: int
    epochs: int
    batch_size: int
    needs_data_dir: bool
    synthetic: bool
    #: Shape of one input sample; [] when not declared.
    input_shape: list[int]
    #: The lr/wd axes a spec on this task gets per optimizer base (or name) when it leaves them out.
    default_grids: dict[str, dict[str, AxisPublic]]
    #: The distribution providing the task (``decouple-lab`` for the built-ins) and its version.
    distribution: str
    version: str


class TasksPublic(BaseModel):
    data: list[TaskInfoPublic]
    count: int
    #: Installed plugins this process refused, "task:NAME" -> why (they cannot be named).
    refused: dict[str, str]


class HealthPublic(BaseModel):
    status: str
    database: str
    revision: str | None = None
