"""``/compare`` (JSON) and ``/compare.html``: finished studies side by side (``service.compare``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from service.api.deps import EngineDep
from service.api.responses import error_responses

router = APIRouter(tags=["compare"])

IdsQuery = Annotated[str, Query(max_length=2000, description="two or more study ids, comma-separated")]


@router.get("/compare", responses=error_responses(404, 409))
def get_compare(ids: IdsQuery, engine: EngineDep) -> dict[str, Any]:
    """Per optimizer: each measure per study and its difference from the first, with a bootstrap interval."""
    from service.compare import compare_studies

    return compare_studies(engine, ids)


@router.get("/compare.html", response_class=HTMLResponse, responses=error_responses(404, 409))
def get_compare_html(ids: IdsQuery, engine: EngineDep) -> HTMLResponse:
    """The comparison page: tables of measures and differences, heat maps side by side."""
    from service.compare import compare_page

    return HTMLResponse(compare_page(engine, ids))
