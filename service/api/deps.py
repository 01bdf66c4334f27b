"""Request dependencies: the app's settings and engine, and who is asking."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine

from service.config import Settings
from service.db import read
from service.errors import Unauthorized
from service.store import Principal
from service.tokens import authenticate

#: With auth off (the single-user default) everything belongs to, and may be changed by, ``local``.
LOCAL = Principal(name="local", admin=True)

_bearer = HTTPBearer(auto_error=False, description="a token from `decouple token create NAME`")


# The dependencies that do no I/O are coroutines: FastAPI runs a plain ``def`` dependency in its
# thread pool, a hop per dependency per request that cost more than these functions' work.


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]


def current_user(
    settings: SettingsDep,
    engine: EngineDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The token's holder when ``DECOUPLE_AUTH=required`` (401 without a valid one), else ``local``."""
    if settings.auth == "off":
        return LOCAL
    if credentials is None or not credentials.credentials:
        raise Unauthorized("authentication required: send 'Authorization: Bearer <token>'")
    who = read(engine, authenticate, credentials.credentials)
    if who is None:
        raise Unauthorized("invalid or revoked token")
    return who


UserDep = Annotated[Principal, Depends(current_user)]


async def known_query_only(request: Request) -> None:
    """422 for a query parameter the route does not declare.

    FastAPI ignores unknown parameters, so a typo (``/studies?stauts=done``, ``?owner_name=x``)
    would silently answer with every study; naming the stray parameter is kinder and matches how
    unknown spec fields are treated.
    """
    route = request.scope.get("route")
    if route is None or not request.query_params:
        return
    allowed = _declared_query(route)
    unknown = [k for k in dict.fromkeys(request.query_params.keys()) if k not in allowed]
    if unknown:
        expected = ", ".join(sorted(allowed)) or "none"
        raise RequestValidationError([
            {"loc": ("query", k), "msg": f"unknown query parameter (expected: {expected})", "type": "extra_forbidden"}
            for k in unknown
        ])


def _declared_query(route) -> set[str]:
    """Query parameter names of the route and of its dependencies (a few objects to walk)."""
    found: set[str] = set()
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        found.update(p.alias for p in dependant.query_params)
        stack.extend(dependant.dependencies)
    return found
