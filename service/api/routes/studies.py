"""``/studies``: submit, list, read, export, cancel, extend and delete studies."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service import store
from service.api.deps import EngineDep, SettingsDep, UserDep
from service.api.responses import error_responses
from service.db import read, session_scope
from service.domain import seeds as seeds_rule
from service.domain.grid import axis_values
from service.errors import Conflict, InvalidInput
from service.grid_repair import MAX_EXTEND_STEPS, edge_bound
from service.grid_repair import extend_study as extend_study_grid
from service.limits import check_priority, check_queue, check_trial_epochs
from service.models import Study, Trial
from service.schemas import (
    SPEC_EXAMPLE,
    CurvePointPublic,
    CurvePublic,
    DryRunOptimizerPublic,
    DryRunPublic,
    EstimatePublic,
    Progress,
    StudiesPublic,
    StudyCreated,
    StudyPublic,
    StudySpec,
    TrialPublic,
    TrialsPublic,
    finite_or_none,
    format_errors,
)

router = APIRouter(prefix="/studies", tags=["studies"])

SPEC_EXAMPLES = {
    "five_optimizers": {
        "summary": "the README's example: adamw on an explicit grid, adam on its default one",
        "value": SPEC_EXAMPLE,
    },
    "minimal": {
        "summary": "defaults everywhere: the task's epochs and batch size, default grids, seed 0",
        "value": {"name": "adamw, defaults", "task": "digits_mlp", "optimizers": [{"name": "adamw"}]},
    },
    "auto_grid": {
        "summary": "an auto lr axis: a pilot run places it around the optimum",
        "value": {
            "name": "sgdw, auto lr", "task": "digits_mlp", "schedule": {"name": "cosine"},
            "optimizers": [{"name": "sgdw", "lr": "auto", "wd": {"min": 1e-5, "max": 1e-1, "num": 8}}],
            "seeds": [0, 1, 2],
        },
    },
    "seeds_until_decided": {
        "summary": "auto seeds: 2 each, then more for optimizers still inconclusive, up to 8",
        "value": {
            "name": "adamw and adam, seeds until decided", "task": "digits_mlp",
            "optimizers": [{"name": "adamw"}, {"name": "adam"}],
            "seeds": {"auto": True, "min": 2, "max": 8},
        },
    },
}

MAX_INT32 = 2**31 - 1  # the id and offset columns are 32-bit integers
StatusFilter = Literal["queued", "running", "done", "failed", "cancelled"]


def study_public(study: Study, prog: store.StudyProgress) -> StudyPublic:
    return StudyPublic(
        id=study.id, name=study.name, status=study.status, owner=study.owner,
        priority=study.priority, spec=study.spec, progress=Progress(**prog.as_dict()),
        created_at=study.created_at, started_at=study.started_at, finished_at=study.finished_at,
        updated_at=study.updated_at, claimed_by=study.claimed_by, attempts=study.attempts,
        last_error=study.last_error, plugins=study.plugins, waiting_reason=study.waiting_reason,
    )


def trial_public(t: Trial) -> TrialPublic:
    return TrialPublic(
        id=t.id, phase=t.phase, optimizer=t.optimizer, lr_index=t.lr_index, wd_index=t.wd_index,
        lr=t.lr, wd=t.wd, seed=t.seed, status=t.status, train_loss=finite_or_none(t.train_loss),
        val_loss=finite_or_none(t.val_loss), val_error=finite_or_none(t.val_error),
        diverged=t.diverged, diverged_epoch=t.diverged_epoch, started_at=t.started_at,
        finished_at=t.finished_at, worker=t.worker, attempts=t.attempts, error=t.error,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyCreated,
    responses={200: {"model": DryRunPublic, "description": "with ?dry_run=true: the plan; nothing stored"},
               **error_responses(403, 413, 429)},
)
def create_study(
    spec: Annotated[StudySpec, Body(openapi_examples=SPEC_EXAMPLES)],
    engine: EngineDep,
    settings: SettingsDep,
    user: UserDep,
    response: Response,
    dry_run: Annotated[bool, Query(description="validate and plan only: 200 with the expanded grid, "
                                               "counts and estimated run time; nothing is stored")] = False,
) -> Any:
    """Queue a study; its whole trial grid is stored at once (status ``queued``).

    Within the per-user limits (docs/security.md): trials x epochs at most
    ``DECOUPLE_MAX_TRIAL_EPOCHS`` (422), at most ``DECOUPLE_MAX_QUEUED_TRIALS`` of a non-admin's
    trials queued or running at once (429), ``priority`` above 0 for admins only (403).

    ``?dry_run=true`` goes through exactly the same checks (the same 401/403/422/429 answers) and
    answers 200 with the plan instead (docs/api.md): each optimizer's axes, seeds and trials, the
    trial and trial-epoch totals, and the run time estimated from the throughput this deployment
    measured on the task's own finished studies. Nothing is stored."""
    check_priority(spec.priority, user)
    check_trial_epochs(spec.trials_total, spec.epochs or 1, settings)
    if dry_run:
        with session_scope(engine, read_only=True) as session:
            check_queue(session, user.name, spec.trials_total, user, settings)
            measured = store.measured_throughput(session, spec.task)
        return JSONResponse(dry_run_plan(spec, measured).model_dump(mode="json"))
    with session_scope(engine) as session:
        check_queue(session, user.name, spec.trials_total, user, settings)
        study = store.create_study(session, spec, owner=user.name)
        created = StudyCreated(id=study.id, status=study.status, trials_total=study.trials_total)
    response.headers["Location"] = f"/studies/{created.id}"
    return created


def dry_run_plan(spec: StudySpec, measured: store.Throughput | None) -> DryRunPublic:
    """What ``spec`` would queue, and how long it would take at the ``measured`` throughput."""
    seeds: list[int] | dict[str, Any]
    if seeds_rule.is_auto(spec.seeds):
        seeds = {**spec.stored()["seeds"], "start": spec.initial_seeds}
    else:
        seeds = list(spec.initial_seeds)
    per_optimizer = seeds_rule.max_seeds(spec.seeds)
    optimizers = [
        DryRunOptimizerPublic(
            name=opt.name,
            lr=None if opt.lr.auto else axis_values(opt.lr),
            wd=None if opt.wd.auto else axis_values(opt.wd),
            seeds=seeds, trials=opt.cells * per_optimizer,
            placement={"lr": "auto" if opt.lr.auto else "given", "wd": "auto" if opt.wd.auto else "given",
                       "num": {"lr": opt.lr.num, "wd": opt.wd.num}} if opt.is_auto else None,
        )
        for opt in spec.optimizers
    ]
    trial_epochs = spec.trials_total * (spec.epochs or 1)
    if measured is None:
        estimate = EstimatePublic(
            basis=f"no study of task {spec.task} has finished on this deployment yet: nothing measured to "
                  "estimate from", trial_epochs_per_second=None, studies=0, trial_epochs_measured=0,
            wall_seconds_measured=0.0)
        seconds = None
    else:
        rate = measured.per_second
        estimate = EstimatePublic(
            basis=f"measured on this deployment: {measured.trial_epochs:,} trial-epochs in "
                  f"{measured.wall_seconds:,.0f} s of wall time over the {measured.studies} newest done "
                  f"{'study' if measured.studies == 1 else 'studies'} of task {spec.task} "
                  f"({rate:.3g} trial-epochs/s)",
            trial_epochs_per_second=rate, studies=measured.studies,
            trial_epochs_measured=measured.trial_epochs, wall_seconds_measured=measured.wall_seconds)
        seconds = trial_epochs / rate
    return DryRunPublic(dry_run=True, trials_total=spec.trials_total, trial_epochs_total=trial_epochs,
                        estimated_seconds=seconds, estimate=estimate, optimizers=optimizers,
                        spec=spec.stored(), plugins=spec.plugins_used() or None)


#: The names of :data:`service.store.STUDY_VIEW`'s columns, in order.
_VIEW_KEYS = tuple(column.key for column in store.STUDY_VIEW)


def study_fields(row: Sequence[Any]) -> dict[str, Any]:
    """A :data:`service.store.STUDY_VIEW` row as :class:`StudyPublic`'s fields, its ``spec``
    left empty (:func:`with_specs` puts the stored text in). Plain dicts, validated by pydantic
    in one call per answer, cost a third of building a model per study."""
    fields = dict(zip(_VIEW_KEYS, row))
    del fields["spec_json"]
    fields["spec"] = {}
    fields["progress"] = {
        "trials_total": fields.pop("trials_total"),
        "trials_done": fields.pop("trials_done"),
        "trials_failed": fields.pop("trials_failed"),
        "epochs_recorded": fields.pop("epochs_recorded"),
    }
    return fields


#: An empty spec as pydantic writes it. Nowhere else in a study's JSON can these characters
#: follow each other: inside a JSON string every '"' is escaped.
_EMPTY_SPEC = '"spec":{}'


def with_specs(model: BaseModel, specs: list[str]) -> Response:
    """``model`` (studies whose ``spec`` is empty, in document order) serialized once by
    pydantic's compiled serializer, each study's stored spec text then put in its place.

    Returned as a model, FastAPI would validate it again against the ``response_model`` and
    encode it in Python. The specs are the JSON the database keeps (``json.dumps`` of the
    validated spec), so they go out as they are: decoding a page of them into dicts, validating
    and encoding them again cost as much as the rest of the page (``bench/api_load.py``).
    """
    parts = model.model_dump_json().split(_EMPTY_SPEC)
    if len(parts) != len(specs) + 1:
        raise AssertionError(f"{len(parts) - 1} spec slots for {len(specs)} specs")
    out = [parts[0]]
    for spec, rest in zip(specs, parts[1:]):
        out += ['"spec":', spec, rest]
    return Response("".join(out), media_type="application/json")


@router.get("", response_model=StudiesPublic)
def list_studies(
    engine: EngineDep,
    status: StatusFilter | None = None,
    owner: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_INT32)] = 0,
) -> Response:
    """Studies, newest first, with their progress; ``count`` is the total matching the filters."""
    rows, count = read(engine, store.study_views, status=status, owner=owner, limit=limit, offset=offset)
    page = StudiesPublic.model_validate({"data": [study_fields(row) for row in rows], "count": count})
    return with_specs(page, [row.spec_json for row in rows])


@router.get("/{study_id}", response_model=StudyPublic, responses=error_responses(404))
def get_study(study_id: str, engine: EngineDep) -> Response:
    """A study: its spec (defaults filled in), status, progress, timestamps and owner."""
    row = read(engine, store.study_view, study_id)
    return with_specs(StudyPublic.model_validate(study_fields(row)), [row.spec_json])


CSV_COLUMNS = (
    "id", "phase", "optimizer", "lr_index", "wd_index", "lr", "wd", "seed", "status",
    "train_loss", "val_loss", "val_error", "diverged", "diverged_epoch", "worker",
    "started_at", "finished_at",
)


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest exact form; 'nan', 'inf' and '-inf' stay what they are
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def trials_parquet(trials: list[Trial]) -> bytes:
    """The CSV's columns as a Parquet file (pyarrow): typed columns (floats keep NaN and inf, the
    timestamps are UTC), for pandas, polars, DuckDB or Spark without parsing text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {
        "id": pa.int64(), "lr_index": pa.int32(), "wd_index": pa.int32(), "seed": pa.int64(),
        "lr": pa.float64(), "wd": pa.float64(), "train_loss": pa.float64(), "val_loss": pa.float64(),
        "val_error": pa.float64(), "diverged": pa.bool_(), "diverged_epoch": pa.int32(),
        "started_at": pa.timestamp("us", tz="UTC"), "finished_at": pa.timestamp("us", tz="UTC"),
    }
    table = pa.table({c: pa.array([getattr(t, c) for t in trials], type=types.get(c, pa.string()))
                      for c in CSV_COLUMNS})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def trials_csv(trials: list[Trial]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for t in trials:
        writer.writerow([_csv_cell(getattr(t, c)) for c in CSV_COLUMNS])
    return buf.getvalue()


@router.get(
    "/{study_id}/trials",
    response_model=TrialsPublic,
    responses={
        200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}},
              "description": "JSON; CSV with ?format=csv; Parquet with ?format=parquet"},
        **error_responses(404),
    },
)
def list_trials(
    study_id: str,
    engine: EngineDep,
    format: Literal["json", "csv", "parquet"] = "json",
    phase: Literal["grid", "pilot"] | None = None,
):
    """Every trial with its final metrics (null while not run, or when NaN/inf: see ``diverged``);
    ``?format=csv`` gives one row per trial, with NaN and inf written out; ``?format=parquet``
    the same columns as a typed Parquet file (NaN and inf kept as floats)."""
    with session_scope(engine, read_only=True) as session:
        trials = store.list_trials(session, study_id, phase=phase)
        if format == "parquet":
            return Response(
                trials_parquet(trials),
                media_type="application/vnd.apache.parquet",
                headers={"Content-Disposition": f'attachment; filename="study-{study_id}-trials.parquet"'},
            )
        if format == "csv":
            return PlainTextResponse(
                trials_csv(trials),
                media_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="study-{study_id}-trials.csv"'},
            )
        return TrialsPublic(data=[trial_public(t) for t in trials], count=len(trials))


@router.get("/{study_id}/trials/{trial_id}/curve", response_model=CurvePublic, responses=error_responses(404))
def get_curve(
    study_id: str, trial_id: Annotated[int, Path(ge=1, le=MAX_INT32)], engine: EngineDep
) -> CurvePublic:
    """A trial's per-epoch train loss, validation loss and validation error."""
    with session_scope(engine, read_only=True) as session:
        points = store.get_curve(session, study_id, trial_id)
    return CurvePublic(
        study_id=study_id,
        trial_id=trial_id,
        points=[
            CurvePointPublic(
                epoch=p["epoch"], train_loss=finite_or_none(p["train_loss"]),
                val_loss=finite_or_none(p["val_loss"]), val_error=finite_or_none(p["val_error"]),
            )
            for p in points
        ],
    )


@router.post("/{study_id}/cancel", response_model=StudyPublic, responses=error_responses(403, 404, 409))
def cancel_study(study_id: str, engine: EngineDep, user: UserDep) -> StudyPublic:
    """Cancel a queued or running study (its owner or an admin)."""
    with session_scope(engine) as session:
        study = store.cancel_study(session, study_id, user)
        return study_public(study, store.progress(session, [study])[study.id])


@router.delete("/{study_id}", responses=error_responses(403, 404))
def delete_study(study_id: str, engine: EngineDep, user: UserDep) -> dict:
    """Delete a study, its trials and curves (its owner or an admin)."""
    with session_scope(engine) as session:
        store.delete_study(session, study_id, user)
    return {"id": study_id, "deleted": True}


class ExtendRequest(BaseModel):
    """Which optimizers to extend (default: every edge-bound one) and by how many points."""

    model_config = ConfigDict(extra="forbid")

    optimizers: list[str] | None = Field(None, min_length=1)
    #: Points added per extended side (default: a quarter of the axis, at least 2).
    steps: int | None = Field(None, ge=1, le=MAX_EXTEND_STEPS, strict=True)


@router.post("/{study_id}/extend", responses=error_responses(403, 404, 409, 422, 429))
def extend_study(
    study_id: str, engine: EngineDep, settings: SettingsDep, user: UserDep,
    body: Annotated[ExtendRequest | None, Body()] = None,
) -> dict:
    """Edge repair: extend every optimizer whose best cell lies on its grid's edge (or the named
    ones) with the same spacing, and queue the study again so a worker runs the new trials (and
    retries any that failed; done trials never run again). Its owner or an admin; the study must
    be done. The extended study must meet every limit a submission meets (trial cap, axis length
    and value range, trial-epochs, the owner's queue limit), else nothing changes."""
    body = body or ExtendRequest()
    with session_scope(engine) as session:
        study = store.get_study(session, study_id, for_update=True)
        store._check_can_modify(study, user)
        if study.status != "done":
            raise Conflict(f"study {study_id} is {study.status}; only a done study can be extended")
        names = [o["name"] for o in study.spec["optimizers"]]
        for name in body.optimizers or []:
            if name not in names:
                raise InvalidInput("optimizers", f"the study has no optimizer {name!r} "
                                   f"(it has {', '.join(names)})")
        directions = edge_bound(session, study, body.optimizers)
        if not directions:
            raise Conflict(
                f"nothing to extend: the best cell of {', '.join(body.optimizers)} is inside its grid"
                if body.optimizers else
                "nothing to extend: no optimizer has its best cell on an edge of its grid")
        extended = extend_study_grid(session, study, directions, body.steps)
        now = store.utcnow()
        study.status, study.finished_at, study.updated_at = "queued", None, now
        study.claimed_by, study.lease_expires_at = None, None
        session.flush()
        check_extended(session, study, user, settings)
        return {"id": study_id, "status": study.status, "trials_total": study.trials_total,
                "extended": extended}


def check_extended(session: Any, study: Study, user: store.Principal, settings: Any) -> None:
    """The limits of a submission, on a study just extended (the caller's transaction is rolled
    back by the error, so a refused extension stores nothing)."""
    try:
        StudySpec.model_validate(study.spec, context={"stored": True, "max_trials": None})
    except ValidationError as exc:
        first = format_errors(list(exc.errors()))[0]
        raise InvalidInput(first["field"], f"{first['message']} (after this extension)") from None
    # The study's own count, not the spec's: under auto seeds the spec counts every optimizer at
    # its seed maximum, while a finished study's optimizers have stopped where they were decided.
    if study.trials_total > settings.max_trials:
        raise InvalidInput("steps", f"the study would have {study.trials_total} trials (grid cells x seeds, over "
                                    f"all optimizers), more than DECOUPLE_MAX_TRIALS={settings.max_trials} "
                                    "(after this extension)")
    check_trial_epochs(study.trials_total, int(study.spec.get("epochs") or 1), settings)
    check_queue(session, study.owner, 0, user, settings)
