"""Response headers every answer gets, and the API documentation served from packaged files (no CDN).

:class:`SecurityHeaders` (pure ASGI middleware, so it sees every response, errors and 404s
included) adds, where the route did not set its own:

* ``X-Content-Type-Options: nosniff`` and ``Cache-Control: no-store`` on every response:
  nothing a token fetched (a study list, a report, a CSV) stays in a shared or disk cache, and no
  browser second-guesses a JSON or CSV body as HTML. The documentation's static assets, the same
  for everyone and token-free, are the exception (``/docs/assets/``: cacheable for a day).
* ``Content-Security-Policy`` (:data:`DEFAULT_CSP`: no script at all, inline styles and
  ``data:`` images for the report's heat maps, no framing), ``X-Frame-Options: DENY`` and
  ``Referrer-Policy: no-referrer``. The team page (``/``) and ``/docs`` set their own policy,
  which allows exactly their scripts.

``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) load their scripts and styles from the files the
``fastapi-offline`` package ships (Swagger UI 5, ReDoc 2, MIT-licensed), served here from
``/docs/assets/``: nothing comes from a CDN, the pages work on an offline cluster, and no third
party's script runs next to the team page's token (same origin, same ``sessionStorage``).
Swagger UI is started by ``static/swagger-init.js``, a file rather than an inline script, so the
policy allows scripts from ``'self'`` only.
"""

from __future__ import annotations

import re
from functools import cache
from html import escape
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response

#: The policy of every HTML answer that sets none of its own (the report and compare pages,
#: which have no script) and of every other answer.
DEFAULT_CSP = "; ".join([
    "default-src 'none'",
    "style-src 'unsafe-inline'",
    "img-src data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])

#: /docs and /redoc: scripts, styles and images from this server only. ReDoc starts a web worker
#: from a ``blob:`` URL and sets inline styles; Swagger UI fetches the OpenAPI document and, on
#: "Try it out", the API itself.
DOCS_CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "worker-src 'self' blob:",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])

ASSETS_PREFIX = "/docs/assets/"


def page_headers(*, script_src: str, style_src: str, img_src: str) -> dict[str, str]:
    """The headers of a page of ours that runs its script and calls the API (the team page, the
    /ui/ pages): a policy that differs only in where scripts, styles and images may come from,
    and no caching, no referrer, no sniffing."""
    policy = "; ".join([
        "default-src 'none'",
        f"script-src {script_src}",
        f"style-src {style_src}",
        f"img-src {img_src}",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ])
    return {
        "Content-Security-Policy": policy,
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }

_COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """Pure ASGI middleware adding the headers of the module's docstring to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope["path"].startswith(ASSETS_PREFIX)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                have = {k.lower() for k, _ in headers}
                extra = [(k, v) for k, v in _COMMON if k not in have]
                if b"content-security-policy" not in have:
                    extra.append((b"content-security-policy", DEFAULT_CSP.encode()))
                if not cacheable:
                    headers = [(k, v) for k, v in headers if k.lower() != b"cache-control"]
                    extra.append((b"cache-control", b"no-store"))
                elif b"cache-control" not in have:
                    extra.append((b"cache-control", b"public, max-age=86400"))
                message = {**message, "headers": headers + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- the API documentation, from packaged files -------------------------------------------------

_OFFLINE = files("fastapi_offline") / "static"
_OWN = Path(__file__).resolve().parent / "static"
#: Every file /docs/assets/ serves: a fixed list, so no path from a request reaches the disk.
ASSETS: dict[str, tuple[Any, str]] = {
    "swagger-ui-bundle.js": (_OFFLINE / "swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": (_OFFLINE / "swagger-ui.css", "text/css"),
    "redoc.standalone.js": (_OFFLINE / "redoc.standalone.js", "text/javascript"),
    "favicon.png": (_OFFLINE / "favicon.png", "image/png"),
    "swagger-init.js": (_OWN / "swagger-init.js", "text/javascript"),
}

docs_router = APIRouter(include_in_schema=False)
_DOCS_HEADERS = {"Content-Security-Policy": DOCS_CSP}


#: ReDoc 2 draws the Redocly logo in its side bar from a CDN, unconditionally (no option turns it
#: off): the policy blocks it, and the browser logs the violation as an error on every load. The
#: served bundle points it at an empty ``data:`` image instead, which fails to decode, and ReDoc
#: then leaves the logo out (its ``onError``). Found by loading /redoc offline in Chromium.
_REDOC_LOGO = re.compile(rb'"https://[a-z.]+/redoc/logo-mini\.svg"')


@cache
def _patched(name: str) -> bytes | None:
    """An asset whose served bytes differ from the packaged file (the patched ReDoc bundle)."""
    if name != "redoc.standalone.js":
        return None
    data, n = _REDOC_LOGO.subn(b'"data:,"', Path(str(ASSETS[name][0])).read_bytes())
    if n != 1:
        raise RuntimeError(f"ReDoc's bundle has {n} logo URLs, not 1: check _REDOC_LOGO against this version")
    return data


@docs_router.get("/docs/assets/{name}")
async def docs_asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, "Not Found")
    path, media_type = ASSETS[name]
    patched = _patched(name)
    if patched is not None:
        return Response(patched, media_type=media_type)
    return FileResponse(str(path), media_type=media_type)


SWAGGER_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Decouple Lab API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{ASSETS_PREFIX}swagger-ui.css"><link rel="icon" href="{ASSETS_PREFIX}favicon.png">
</head><body><div id="swagger-ui"></div>
<script src="{ASSETS_PREFIX}swagger-ui-bundle.js"></script>
<script src="{ASSETS_PREFIX}swagger-init.js"></script>
</body></html>"""

REDOC_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Decouple Lab API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="{ASSETS_PREFIX}favicon.png"></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="{ASSETS_PREFIX}redoc.standalone.js"></script>
</body></html>"""


@docs_router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return HTMLResponse(SWAGGER_PAGE, headers=_DOCS_HEADERS)


@docs_router.get("/redoc")
async def redoc() -> HTMLResponse:
    return HTMLResponse(REDOC_PAGE, headers=_DOCS_HEADERS)


def sign_in_form(button: str) -> str:
    """The token sign-in form of the team's pages (``/`` and ``/ui/...``), hidden until a page's
    script finds it has no token; ``button`` labels its submit button. The pages' scripts keep the
    token in ``sessionStorage`` and send it only to this server (``static/team.js``,
    ``static/ui/common.js``), which is what the form's text tells the user."""
    return f"""<form id="login" hidden autocomplete="off"><h2>Sign in with your API token</h2>
<div class="row"><input id="token" type="password" aria-label="API token" placeholder="API token">
<button class="primary" type="submit">{escape(button)}</button></div>
<p class="error" id="login-error" role="alert"></p>
<p>Create one with <code>decouple token create NAME</code>. It stays in this browser tab
(sessionStorage) and goes only to this server, as <code>Authorization: Bearer</code>.</p></form>"""
