"""``/studies/{id}/report`` (JSON) and ``/studies/{id}/report.html`` (the page).

The report of a done study is computed once and kept in its row; a running study's is partial
(``"partial": true``). Both go through :class:`service.api.report_cache.ReportCache`: built off
the request thread pool, one build per study at a time, rebuilt only when the study has moved on
(a finished epoch) and no more often than every few seconds. ``service.report`` (analysis, plots)
is imported on first use, so the API starts without matplotlib.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from service import store
from service.api.deps import EngineDep
from service.api.report_cache import ReportCache, build_report
from service.api.responses import error_responses
from service.db import read

router = APIRouter(prefix="/studies", tags=["reports"])


def study_report(engine: Any, study_id: str) -> dict[str, Any]:
    """The report, built now (a done study's: the stored one)."""
    return build_report(engine, study_id)


def _cache(request: Request) -> ReportCache:
    return request.app.state.report_cache


@router.get(
    "/{study_id}/report",
    response_model=None,
    responses={
        200: {"description": "the report (docs/api.md)", "content": {"application/json": {"schema": {"type": "object"}}}},
        **error_responses(404),
    },
)
async def get_report(study_id: str, engine: EngineDep, request: Request) -> Response:
    """Per optimizer: best cell, separability measures with intervals, the grid; and the ranking."""
    status, cached = await run_in_threadpool(read, engine, store.report_state, study_id)
    if status == "done" and cached is not None:  # a done study's report, kept in its row: as stored
        return Response(cached, media_type="application/json")
    return Response(await _cache(request).get(engine, study_id, "json", status), media_type="application/json")


@router.get(
    "/{study_id}/report.html", response_class=HTMLResponse, responses=error_responses(404, 422, 503)
)
async def get_report_html(study_id: str, engine: EngineDep, request: Request) -> HTMLResponse:
    """The report page: heat maps per optimizer, the measures table and the ranking."""
    status, _ = await run_in_threadpool(read, engine, store.report_state, study_id, with_report=False)
    return HTMLResponse(await _cache(request).get(engine, study_id, "html", status))
