"""``/compare`` (JSON) and ``/compare.html``: finished studies side by side (``service.compare``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from service.api.deps import EngineDep
from service.api.responses import error_responses

router = APIRouter(tags=["compare"])

#: ``service.compare.ID_LIST_PATTERN``, spelled out so the API starts without numpy and scipy
#: (a test holds the two equal). The pattern is documented, not enforced by FastAPI, so that a
#: wrong list gets the compare view's own reason (too few ids, an unknown one, one not done)
#: rather than a regex.
ID_LIST_PATTERN = r"^[0-9a-f]{32}(,[0-9a-f]{32}){1,7}$"
IdsQuery = Annotated[str, Query(max_length=2000, description="two to eight study ids, comma-separated",
                                json_schema_extra={"pattern": ID_LIST_PATTERN})]


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
