"""The team's interactive pages under ``/ui/``: submit, a study filling in live, compare, the atlas.

Each page is a static shell rendered here (no data in it, so it answers a browser without a
token, like ``/``) plus scripts and one style sheet served from the package at
``/ui/assets/NAME`` (a fixed list: no path from a request reaches the disk). The scripts fetch
everything with the token the team page keeps in ``sessionStorage`` (``Authorization: Bearer``,
never in a URL), or without one when auth is off, and draw the heat maps, slice plots and
learning curves as SVG by hand (``docs/pages.md`` says why no plotting library).

Policy: scripts and styles from this server only (``'self'``, no inline script, no
``'unsafe-eval'``), fetches to this server only, no framing. The study page polls
``GET /studies/{id}`` (cheap) and fetches the cached report only when the study's progress
moved, so a crowd of viewers never rebuilds a report.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse

from service.api.deps import SettingsDep
from service.api.responses import error_responses
from service.api.security import page_headers, sign_in_form
from service.report_style import REPORT_STYLE_SOURCE

router = APIRouter(prefix="/ui", tags=["pages"])

POLL_SECONDS = 3
_ASSETS_DIR = Path(__file__).resolve().parent.parent / "static" / "ui"
#: Every file /ui/assets/ serves.
ASSETS: dict[str, str] = {
    "ui.css": "text/css",
    "common.js": "text/javascript",
    "plots.js": "text/javascript",
    "study.js": "text/javascript",
    "submit.js": "text/javascript",
    "compare.js": "text/javascript",
    "atlas.js": "text/javascript",
    "js-yaml.min.js": "text/javascript",
}

HEADERS = page_headers(
    script_src="'self'",
    # and the report page's one inline style: the study page opens the report as a blob: URL,
    # which runs under this policy (service.report_style).
    style_src=f"'self' {REPORT_STYLE_SOURCE}",
    img_src="'self' data: blob:",
)
CONTENT_SECURITY_POLICY = HEADERS["Content-Security-Policy"]
STUDY_ID = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="the study's id")]


@router.get("/assets/{name}", include_in_schema=False)
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, "Not Found")
    return FileResponse(str(_ASSETS_DIR / name), media_type=ASSETS[name])


def render(title: str, page: str, auth: str, main: str, *, scripts: tuple[str, ...] = (),
           data: dict[str, str] | None = None) -> str:
    """A page: the shared header and token form, ``main`` (static markup, ids the script fills),
    then ``common.js``, ``plots.js`` and the page's own scripts."""
    attrs = "".join(f' data-{k}="{escape(v)}"' for k, v in (data or {}).items())
    nav = "".join(
        f'<a href="{href}"{" class=on" if key == page else ""}>{label}</a>'
        for key, href, label in (("studies", "/", "studies"), ("submit", "/ui/submit", "submit"),
                                 ("atlas", "/ui/atlas", "atlas"), ("api", "/docs", "API"))
    )
    tags = "".join(f'<script src="/ui/assets/{s}"></script>' for s in ("common.js", "plots.js", *scripts))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Decouple Lab: {escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/assets/ui.css"></head>
<body data-auth="{escape(auth)}" data-page="{page}" data-poll-ms="{POLL_SECONDS * 1000}"{attrs}>
<header><div><h1><a href="/">Decouple Lab</a> · <span id="title">{escape(title)}</span></h1>
<nav class="top">{nav}</nav></div>
<div id="session" hidden>token kept in this tab only · <button type="button" class="link" id="forget">forget
token</button></div></header>
<noscript><p>This page draws with JavaScript; the API and the <code>decouple</code> CLI work without it.</p></noscript>
{sign_in_form('Sign in')}
<p id="notice" role="status"></p>
<main id="main" hidden>
{main}
</main>
{tags}
</body></html>"""


def _page(html: str) -> HTMLResponse:
    return HTMLResponse(html, headers=HEADERS)


STUDY_MAIN = """<section id="head" class="card"><div class="facts" id="facts"></div>
<div class="actions"><button type="button" id="cancel" hidden>cancel study</button>
<button type="button" id="extend" hidden>extend grid (edges)</button>
<a id="report-link" href="#">report page</a> · <a id="json-link" href="#">report JSON</a></div>
<p class="exports" id="exports"></p>
<div class="progress"><span class="bar" id="bar"><span class="ok" id="bar-ok"></span><span class="bad"
id="bar-bad"></span></span><span id="progress-text"></span></div>
<ul class="warnings" id="warnings"></ul></section>
<p class="legend">Hover a cell: its lr, wd, the value of each seed, the mean and standard error. Click
it: that cell's learning curves, one per seed. Colours share one scale per optimizer; grey: not
run yet; black: diverged.</p>
<div id="optimizers"></div>
<div id="tip" class="tip" hidden></div>"""


@router.get("/studies/{study_id}", response_class=HTMLResponse, responses=error_responses(422))
def study_page(study_id: STUDY_ID, settings: SettingsDep) -> HTMLResponse:
    """A study, filling in live: per optimizer heat maps (mean and s.e.), slice plots, curves,
    measures and verdict with intervals; cancel and extend for its owner and admins."""
    return _page(render("study", "study", settings.auth, STUDY_MAIN, scripts=("study.js",),
                        data={"study-id": study_id}))


SUBMIT_MAIN = """<div class="split"><section class="card editor-card">
<div class="editor-bar"><label>format <select id="format"><option value="json">JSON</option>
<option value="yaml">YAML</option></select></label>
<button type="button" id="example">example</button>
<span id="check" class="check" role="status"></span></div>
<div class="editor"><pre id="gutter" aria-hidden="true"></pre><textarea id="spec" spellcheck="false"
aria-label="study spec" wrap="off"></textarea></div>
<ul id="errors" class="errors"></ul>
<div id="plan" class="plan"></div>
<div class="editor-bar"><button type="button" class="primary" id="submit" disabled>submit study</button>
<span id="submit-error" class="error" role="alert"></span></div></section>
<aside class="card catalogue"><h2>Tasks</h2><dl id="tasks"></dl><h2>Optimizers</h2>
<input id="opt-filter" placeholder="filter optimizers" aria-label="filter optimizers">
<dl id="optimizers-list"></dl></aside></div>"""


@router.get("/submit", response_class=HTMLResponse)
def submit_page(settings: SettingsDep) -> HTMLResponse:
    """The spec editor: JSON or YAML, checked as you type (``POST /studies?dry_run=true``)."""
    return _page(render("submit a study", "submit", settings.auth, SUBMIT_MAIN,
                        scripts=("js-yaml.min.js", "submit.js")))


COMPARE_MAIN = """<section class="card"><p id="compare-what"></p><p class="legend" id="method"></p>
<ul class="warnings" id="warnings"></ul></section><div id="optimizers"></div><div id="tip" class="tip" hidden></div>"""


@router.get("/compare", response_class=HTMLResponse, responses=error_responses(422))
def compare_page(settings: SettingsDep, ids: str = "") -> HTMLResponse:
    """Finished studies side by side: differences with intervals, heat maps on shared scales."""
    return _page(render("compare", "compare", settings.auth, COMPARE_MAIN, scripts=("compare.js",)))


ATLAS_MAIN = """<p class="legend">One row per task and optimizer across every finished study: what the
team has learnt. A ridge slope near 0 means the best weight decay does not move with the learning
rate (tune them separately).</p>
<form id="atlas-filters" class="filters" role="search">
<label>task <select id="f-task" name="task"><option value="">any</option></select></label>
<label>base <select id="f-base" name="base"><option value="">any</option></select></label>
<label>convention <select id="f-convention" name="convention"><option value="">any</option></select></label>
<label>owner <select id="f-owner" name="owner"><option value="">any</option></select></label></form>
<table id="atlas"><thead><tr><th>task</th><th>optimizer</th><th>verdict</th><th>ridge slope (95% CI)</th>
<th>best lr</th><th>best wd</th><th>best value</th><th>best τ (epochs)</th><th>seeds</th><th>studies</th></tr></thead>
<tbody id="atlas-rows"></tbody></table>"""


@router.get("/atlas", response_class=HTMLResponse, responses=error_responses(422))
def atlas_page(settings: SettingsDep, task: str = "", base: str = "", convention: str = "",
               owner: str = "") -> HTMLResponse:
    """The team's atlas (``GET /atlas``) with filters by task, base, convention and owner."""
    return _page(render("atlas", "atlas", settings.auth, ATLAS_MAIN, scripts=("atlas.js",)))

