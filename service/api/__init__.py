"""The REST API (``docs/api.md``): ``create_app(settings)`` and ``serve(host, port)``.

* Domain errors (``service.errors``) become HTTP statuses here, in one table
  (:data:`ERROR_STATUS`); a bad spec is a 422 whose ``detail`` names the field.
* Request bodies over 1 MB are refused with 413 before anything parses them.
* The app refuses to start on a database whose schema is behind (naming ``decouple migrate``);
  an unreachable database does not stop it: ``/health`` says 503 until the database is back.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from service.api.responses import error_responses
from service.config import Settings, get_settings
from service.db import check_schema_current, get_engine, translate_db_error
from service.errors import (
    Conflict,
    DatabaseUnavailable,
    DecoupleError,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    SchemaOutOfDate,
    Unauthorized,
)
from service.schemas import errors_summary, format_errors, max_trials_var

log = logging.getLogger(__name__)

#: Largest request body accepted (bytes); a spec is a few hundred bytes.
MAX_BODY_BYTES = 1_000_000

#: The one place where the project's errors meet HTTP.
ERROR_STATUS: dict[type[DecoupleError], int] = {
    InvalidInput: 422,
    NotFound: 404,
    Unauthorized: 401,
    Forbidden: 403,
    Conflict: 409,
    PayloadTooLarge: 413,
    DatabaseUnavailable: 503,
    SchemaOutOfDate: 503,
}

API_DESCRIPTION = """\
Grid studies over learning rate x weight decay, queued in a team-shared database and run by
workers on Ray Tune. Each study's report says, per optimizer, how separable the optimal learning
rate and weight decay are (Loshchilov & Hutter, *Decoupled Weight Decay Regularization*).

With `DECOUPLE_AUTH=required`, every request but `/health` needs `Authorization: Bearer <token>`
(`decouple token create NAME`); the team page `/` loads without one, asks for it and holds no data
until then. Errors answer `{"detail": "..."}`; a bad spec answers 422 with
the field named in `detail` and each problem in `errors`.
"""


def status_for(error: DecoupleError) -> int:
    for cls in type(error).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors and stray driver errors to JSON answers."""

    @app.exception_handler(DecoupleError)
    async def _domain_error(request: Request, exc: DecoupleError) -> JSONResponse:
        code = status_for(exc)
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        return JSONResponse(status_code=code, content={"detail": str(exc)}, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = format_errors(list(exc.errors()))
        return JSONResponse(status_code=422, content={"detail": errors_summary(errors), "errors": errors})

    @app.exception_handler(SQLAlchemyError)
    async def _driver_error(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        mapped = translate_db_error(exc)
        if mapped is None:
            raise exc
        return await _domain_error(request, mapped)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette lists only the methods of the first route whose path matched; RFC 9110
            # wants every method the resource supports (GET and POST /studies are two routes).
            allowed = allowed_methods(request.app, request.scope)
            headers = {**(exc.headers or {}), **({"Allow": ", ".join(allowed)} if allowed else {})}
            return JSONResponse(status_code=405, content={"detail": exc.detail}, headers=headers)
        reason = _UNREADABLE_BODY.get(type(exc.__cause__)) if exc.status_code == 400 else None
        if reason is not None:  # FastAPI's 400 for a body json.loads could not take
            errors = [{"field": "body", "message": f"invalid JSON ({reason})", "type": "json_invalid"}]
            return JSONResponse(status_code=422, content={"detail": errors_summary(errors), "errors": errors})
        return await http_exception_handler(request, exc)


#: Why json.loads refused a body, by the exception FastAPI chains to its 400: answered as the 422
#: every other malformed body gets.
_UNREADABLE_BODY: dict[type, str] = {
    RecursionError: "nested too deeply",  # deeper than the recursion limit, ~1,000 levels
    UnicodeDecodeError: "not UTF-8",
}


def allowed_methods(app: FastAPI, scope: dict) -> list[str]:
    """Every method the API documents for ``scope``'s path (HEAD wherever GET is)."""
    table = getattr(app.state, "path_methods", None)
    if table is None:  # built once, from the public OpenAPI document
        table = app.state.path_methods = [
            (compile_path(path)[0], {m.upper() for m in ops} | ({"HEAD"} if "get" in ops else set()))
            for path, ops in app.openapi()["paths"].items()
        ]
    methods: set[str] = set()
    for regex, ops in table:
        if regex.match(scope["path"]):
            methods |= ops
    return sorted(methods)


class RequestLimits:
    """Pure ASGI middleware: refuse bodies over ``max_body_bytes`` (413) before any parsing, and
    make the app's own trial cap the one spec validation sees (``service.schemas.max_trials_var``).

    The body is read here (at most ``max_body_bytes`` + one chunk) and replayed to the app, so a
    client that lies about or omits ``Content-Length`` is refused just the same.
    """

    def __init__(self, app: Any, *, max_body_bytes: int, max_trials: int) -> None:
        self.app, self.max_body_bytes, self.max_trials = app, max_body_bytes, max_trials

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = max_trials_var.set(self.max_trials)
        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                receive = await self._buffered(scope, receive, send)
                if receive is None:
                    return
            await self.app(scope, receive, send)
        finally:
            max_trials_var.reset(token)

    async def _buffered(self, scope: dict, receive: Any, send: Any) -> Any:
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, send)
            return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(scope, send)
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _too_large(self, scope: dict, send: Any) -> None:
        response = JSONResponse(
            status_code=413,
            content={"detail": f"request body is larger than {self.max_body_bytes:,} bytes"},
        )
        await response(scope, None, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: from the environment). Tests pass their own."""
    from service.api.routes import api_router

    settings = settings or get_settings()
    engine = get_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            check_schema_current(engine)
        except DatabaseUnavailable as exc:
            log.warning("starting without the database (%s); /health answers 503 until it is back", exc)
        yield

    app = FastAPI(
        title="Decouple Lab",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        responses=error_responses(422, 503),
    )
    app.state.settings = settings
    app.state.engine = engine
    install_error_handlers(app)
    app.add_middleware(RequestLimits, max_body_bytes=MAX_BODY_BYTES, max_trials=settings.max_trials)
    app.include_router(api_router)
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None) -> None:
    """``decouple serve``: run the API with uvicorn; refuse an out-of-date schema."""
    import uvicorn

    from service.errors import CliError

    settings = settings or get_settings()
    try:
        check_schema_current(get_engine(settings.database_url))
    except SchemaOutOfDate as exc:
        raise CliError(str(exc)) from exc
    except DatabaseUnavailable as exc:
        log.warning("the database is unavailable (%s); serving anyway, /health answers 503", exc)
    # loop/http "auto": uvloop and httptools (project dependencies) where installed.
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", loop="auto", http="auto")
