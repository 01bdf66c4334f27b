"""``/studies/{id}/report`` (JSON), ``/studies/{id}/report.html`` (the page, self-contained: it
opens offline) and ``/studies/{id}/figures/{optimizer}/{figure}.{png|svg}`` (each figure alone).

The report of a done study is computed once and kept in its row; a running study's is partial
(``"partial": true``). Both go through :class:`service.api.report_cache.ReportCache`: built off
the request thread pool, one build per study at a time, rebuilt only when the study has moved on
(a finished epoch) and no more often than every few seconds. ``service.report`` (analysis, plots)
is imported on first use, so the API starts without matplotlib.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from service import store
from service.api.deps import EngineDep
from service.api.report_cache import ReportCache, build_report
from service.api.responses import error_responses
from service.db import read
from service.report_style import REPORT_CSP

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
async def get_report_html(study_id: str, engine: EngineDep, request: Request, download: bool = False) -> HTMLResponse:
    """The report page: heat maps per optimizer, the measures table and the ranking. One
    self-contained file (figures as ``data:`` URIs, inline style, no script, no external request),
    so it opens offline; ``?download=1`` sends it as an attachment, ``study-{id}-report.html``."""
    status, _ = await run_in_threadpool(read, engine, store.report_state, study_id, with_report=False)
    headers = {"Content-Security-Policy": REPORT_CSP}  # its inline style by hash (service.report_style)
    if download:
        headers["Content-Disposition"] = f'attachment; filename="study-{study_id}-report.html"'
    return HTMLResponse(await _cache(request).get(engine, study_id, "html", status), headers=headers)


FIGURE_MEDIA = {"png": "image/png", "svg": "image/svg+xml"}
FigureFile = Annotated[str, Path(pattern=r"^(heatmap|curves|pilot)\.(png|svg)$",
                                 description="heatmap, curves or pilot; .png or .svg")]


@router.get(
    "/{study_id}/figures/{optimizer}/{figure}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/svg+xml": {}},
              "description": "the figure, drawn as on the report page"},
        **error_responses(404),
    },
)
async def get_figure(
    study_id: str, optimizer: str, figure: FigureFile, engine: EngineDep, request: Request,
    download: bool = False,
) -> Response:
    """One figure of one optimizer of the report, as PNG or SVG: ``heatmap`` (the metric over
    lr x wd), ``curves`` (the best cell's learning curves per seed), ``pilot`` (an auto axis's
    pilot grid). 404 naming what is missing: no such study or optimizer, or no such figure yet.
    Drawn once per report and shared by every viewer (``service.api.report_cache``);
    ``?download=1`` sends it as an attachment."""
    name, fmt = figure.split(".")
    status, _ = await run_in_threadpool(read, engine, store.report_state, study_id, with_report=False)
    data = await _cache(request).figure(engine, study_id, optimizer, name, fmt, status)
    filename = f"study-{study_id}-{optimizer.replace(':', '_')}-{figure}"
    disposition = "attachment" if download else "inline"
    return Response(data, media_type=FIGURE_MEDIA[fmt],
                    headers={"Content-Disposition": f'{disposition}; filename="{filename}"'})
