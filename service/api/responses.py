"""The error answers each route documents in the OpenAPI schema.

Every error body is :class:`~service.schemas.ErrorBody` (``{"detail": ..., "errors"?: [...]}``)
and is JSON, also on the routes that answer HTML when they succeed (``/``,
``/studies/{id}/report.html``): FastAPI documents an additional response in the route's own media
type, so the JSON content is spelled out here as well. A client generated from the schema, or a
fuzzer checking every answer against it (``tests/reliability``), meets no undocumented status
or content type.
"""

from __future__ import annotations

from typing import Any

from service.schemas import ErrorBody

DESCRIPTIONS = {
    401: "no valid token (with DECOUPLE_AUTH=required)",
    403: "only the study's owner or an admin may do this (priority above 0: admins only)",
    404: "no such study (or trial)",
    409: "not possible in the study's current state",
    413: "request body over 1 MB",
    429: "over DECOUPLE_MAX_QUEUED_TRIALS: too many of your trials are queued or running",
    422: "invalid request; `detail` names the field",
    503: "the database is unavailable",
}

_JSON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for ``codes``, each a JSON :class:`ErrorBody`."""
    return {
        code: {"model": ErrorBody, "description": DESCRIPTIONS[code], "content": dict(_JSON_ERROR)}
        for code in codes
    }
