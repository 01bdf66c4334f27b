"""``/studies/{id}/report`` (JSON) and ``/studies/{id}/report.html`` (the page).

The report of a done study is computed once and kept in its row; while a study runs, each request
builds a fresh one, marked ``"partial": true``. ``service.report`` (analysis, plots) is imported
on first use, so the API starts without matplotlib.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response

from service import store
from service.api.deps import EngineDep
from service.api.responses import error_responses
from service.db import read

router = APIRouter(prefix="/studies", tags=["reports"])


def study_report(engine: Any, study_id: str) -> dict[str, Any]:
    from service.report import study_report as build

    return build(engine, study_id)


@router.get(
    "/{study_id}/report",
    response_model=None,
    responses={
        200: {"description": "the report (docs/api.md)", "content": {"application/json": {"schema": {"type": "object"}}}},
        **error_responses(404),
    },
)
def get_report(study_id: str, engine: EngineDep) -> Response:
    """Per optimizer: best cell, separability measures with intervals, the grid; and the ranking."""
    cached = read(engine, store.cached_report_json, study_id)
    if cached is not None:  # a done study's report, kept in its row: sent as stored
        return Response(cached, media_type="application/json")
    return JSONResponse(study_report(engine, study_id))


@router.get(
    "/{study_id}/report.html", response_class=HTMLResponse, responses=error_responses(404, 422, 503)
)
def get_report_html(study_id: str, engine: EngineDep) -> HTMLResponse:
    """The report page: heat maps per optimizer, the measures table and the ranking."""
    from service.report import render_html

    return HTMLResponse(render_html(study_report(engine, study_id)))
