"""``GET /health``: is the database reachable and at the code's schema revision?"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import EngineDep, SettingsDep
from service.db import check_schema_current
from service.errors import DatabaseUnavailable, SchemaOutOfDate
from service.schemas import HealthPublic

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)

#: What anyone may read of a failure when auth is required: /health answers without a token, and
#: a driver's message names hosts, users, database names and versions.
UNAVAILABLE = {"status": "unavailable", "database": "unavailable",
               "detail": "database unavailable: the reason is in the server's log"}


@router.get(
    "/health",
    response_model=HealthPublic,
    responses={503: {"description": "the database is unreachable or its schema is behind"}},
)
def health(engine: EngineDep, settings: SettingsDep):
    """200 when the database answers and its schema is current, 503 otherwise. With
    ``DECOUPLE_AUTH=required`` a 503 says only "unavailable" (the reason goes to the server's
    log); with auth off, where every caller is the local admin, it says why."""
    try:
        revision = check_schema_current(engine)
    except (DatabaseUnavailable, SchemaOutOfDate) as exc:
        log.warning("/health: %s", exc)
        if settings.auth != "off":
            return JSONResponse(status_code=503, content=UNAVAILABLE)
        state = "unreachable" if isinstance(exc, DatabaseUnavailable) else "out of date"
        return JSONResponse(status_code=503, content={"status": "error", "database": state, "detail": str(exc)})
    return HealthPublic(status="ok", database="ok", revision=revision)
