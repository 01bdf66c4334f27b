"""``GET /health``: is the database reachable and at the code's schema revision?"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import EngineDep
from service.db import check_schema_current
from service.errors import DatabaseUnavailable, SchemaOutOfDate
from service.schemas import HealthPublic

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthPublic,
    responses={503: {"description": "the database is unreachable or its schema is behind"}},
)
def health(engine: EngineDep):
    """200 when the database answers and its schema is current; 503 with the reason otherwise."""
    try:
        revision = check_schema_current(engine)
    except DatabaseUnavailable as exc:
        return JSONResponse(status_code=503, content={"status": "error", "database": "unreachable", "detail": str(exc)})
    except SchemaOutOfDate as exc:
        return JSONResponse(status_code=503, content={"status": "error", "database": "out of date", "detail": str(exc)})
    return HealthPublic(status="ok", database="ok", revision=revision)
