"""``GET /``: the team's page, every study with status, live progress, owner, age and links.

One page, no front-end build: the HTML is rendered here, and a small inline script
(``service/api/static/team.js``) keeps it live by polling ``GET /studies`` every
:data:`POLL_SECONDS` seconds, rendering the same markup as :func:`study_row`.

Authentication. A browser cannot put ``Authorization: Bearer`` on a page load, so with
``DECOUPLE_AUTH=required`` the page itself answers without a token, but then holds no data: it
asks for a token, keeps it in the tab's ``sessionStorage`` and sends it with every fetch. Every data
endpoint still requires the token. The report, JSON and CSV links are fetched by the script with
the header and opened as ``blob:`` URLs, so the token never travels in a URL (where logs, history
and ``Referer`` would keep it) and the API needs no second way to authenticate. A request that does
send a valid token (``curl -H``), and every request with auth off, gets the rows rendered here, so
the page reads without JavaScript too; an invalid token is a 401, as anywhere else.

Every user-supplied string is escaped here and reaches the DOM as text in the script; the
Content-Security-Policy runs only the page's own script (by its SHA-256), so a study name that
is HTML stays text even if that ever slipped. Styles may be inline because the report page opened
from a ``blob:`` URL inherits this policy and carries its own ``<style>``.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Annotated, get_args
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.security.utils import get_authorization_scheme_param

from service import store
from service.api.deps import EngineDep, SettingsDep, current_user
from service.api.responses import error_responses
from service.api.routes.studies import MAX_INT32, StatusFilter
from service.api.security import page_headers, sign_in_form
from service.db import session_scope
from service.models import Study
from service.store import Principal

router = APIRouter(tags=["pages"])

PAGE_SIZE = 100
POLL_SECONDS = 3
STATUSES: tuple[str, ...] = get_args(StatusFilter)

_STATIC = Path(__file__).resolve().parent.parent / "static"
SCRIPT = (_STATIC / "team.js").read_text(encoding="utf-8")
STYLE = (_STATIC / "team.css").read_text(encoding="utf-8")
assert "</" not in SCRIPT and "</" not in STYLE, "inlined assets must not close their own tag"


def csp_hash(source: str) -> str:
    """The CSP source expression allowing exactly this inline script (CSP Level 2 hash)."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode() + "'"


HEADERS = page_headers(
    script_src=csp_hash(SCRIPT),
    style_src="'unsafe-inline'",
    img_src="data: blob:",  # the report's heat maps are data: PNGs
)
CONTENT_SECURITY_POLICY = HEADERS["Content-Security-Policy"]

def page_viewer(request: Request, settings: SettingsDep, engine: EngineDep) -> Principal | None:
    """Who may see the rows: anyone with auth off, a valid token's holder (401 for an invalid
    one); ``None`` when auth is required and no token came, i.e. a browser loading the page.

    The header is read here rather than through ``HTTPBearer`` so that the OpenAPI document does
    not list ``/`` as requiring a token: it does not (the page without rows is public).
    """
    if settings.auth == "off":
        return current_user(settings, engine, None)
    scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    if scheme.lower() != "bearer" or not token:
        return None
    return current_user(settings, engine, HTTPAuthorizationCredentials(scheme=scheme, credentials=token))


# --- rendering (team.js renders the same markup from GET /studies) -------------------------------


def page_url(status: str | None = None, owner: str | None = None, offset: int = 0) -> str:
    query = {k: v for k, v in (("status", status), ("owner", owner), ("offset", offset)) if v}
    return "/?" + urlencode(query) if query else "/"


def age_text(then: datetime, now: datetime) -> str:
    seconds = max(0.0, (now - then).total_seconds())
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 172_800:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86_400)} d ago"


def _percent(n: int, total: int) -> str:
    return f"{100 * n / max(total, 1):.1f}%"


def plugin_note(plugins: dict[str, dict[str, str]] | None) -> tuple[str, str] | None:
    """(text, title) saying which installed plugins a study needs, or None for built-ins only.

    The text names each distribution once (what a worker must have installed), the title each
    plugin, both sorted: ``{"rule:adamax": {"distribution": "acme", "version": "1.0"}, ...}`` reads
    "needs acme 1.0", titled "rule adamax, task wine_mlp from acme 1.0". ``team.js`` writes the same."""
    if not plugins:
        return None
    by_dist: dict[str, list[str]] = {}
    for key in sorted(plugins):
        dist = plugins[key]
        by_dist.setdefault(f"{dist['distribution']} {dist['version']}", []).append(key.replace(":", " ", 1))
    text = "needs " + ", ".join(sorted(by_dist))
    title = "; ".join(f"{', '.join(by_dist[dist])} from {dist}" for dist in sorted(by_dist))
    return text, title


def study_row(study: Study, prog: store.StudyProgress, *, status: str | None, owner: str | None,
              now: datetime) -> str:
    """One table row: a box to pick it for comparing, name (opens the study page), status, progress bar, owner, task, age, links."""
    e = escape
    base = f"/studies/{quote(study.id, safe='')}"
    done, failed, total = prog.trials_done, prog.trials_failed, prog.trials_total
    failed_note = f'<span class="failed"> · {failed} failed</span>' if failed else ""
    # Why a queued study is not running (no worker with its plugins has claimed it), and what
    # it needs: the same facts `decouple status` prints.
    waiting = (f'<small class="waiting" title="{e(study.waiting_reason)}">{e(study.waiting_reason)}</small>'
               if study.status == "queued" and study.waiting_reason else "")
    needs = plugin_note(study.plugins)
    needs_note = f'<small class="plugins" title="{e(needs[1])}">{e(needs[0])}</small>' if needs else ""
    return (
        f'<tr data-id="{e(study.id)}">'
        f'<td class="name"><input type="checkbox" class="pick" value="{e(study.id)}" autocomplete="off"'
        f' aria-label="pick for compare">'
        f' <a href="/ui/studies/{quote(study.id, safe="")}">{e(study.name)}</a></td>'
        f'<td><a class="status {e(study.status)}" href="{e(page_url(study.status, owner))}" data-nav=""'
        f' title="show only {e(study.status)} studies">{e(study.status)}</a>{waiting}</td>'
        f'<td class="progress"><span class="bar" role="progressbar" aria-valuemin="0"'
        f' aria-valuemax="{total}" aria-valuenow="{done}" title="{done} done, {failed} failed, of {total}">'
        f'<span class="ok" style="width: {_percent(done, total)};"></span>'
        f'<span class="bad" style="width: {_percent(failed, total)};"></span></span>'
        f'<span class="count">{done}/{total}</span>{failed_note}</td>'
        f'<td><a class="owner" href="{e(page_url(status, study.owner))}" data-nav=""'
        f' title="show only studies of {e(study.owner)}">{e(study.owner)}</a></td>'
        f"<td>{e(str(study.spec.get('task', '')))}{needs_note}</td>"
        f'<td><time datetime="{e(study.created_at.isoformat())}"'
        f' title="{e(study.created_at.strftime("%Y-%m-%d %H:%M UTC"))}">{age_text(study.created_at, now)}</time></td>'
        f'<td class="links"><a href="{e(base)}/report.html" data-open="tab">report</a> · '
        f'<a href="{e(base)}/report" data-open="tab">json</a> · '
        f'<a href="{e(base)}/trials?format=csv" data-open="download">csv</a></td>'
        "</tr>"
    )


def _empty_row(filtered: bool) -> str:
    text = ("No studies match these filters." if filtered
            else "No studies yet: submit one with decouple submit SPEC, or POST /studies.")
    return f'<tr><td class="empty" colspan="7">{escape(text)}</td></tr>'


def _chips(status: str | None, owner: str | None) -> str:
    chips = ['<span class="label">status</span>']
    for s in ("", *STATUSES):
        cls = "chip on" if s == (status or "") else "chip"
        chips.append(f'<a class="{cls}" href="{escape(page_url(s, owner))}" data-nav="">{s or "all"}</a>')
    return "".join(chips)


def _pager(count: int, shown: int, status: str | None, owner: str | None, offset: int) -> str:
    parts = []
    if offset > 0:
        href = page_url(status, owner, max(0, offset - PAGE_SIZE))
        parts.append(f'<a href="{escape(href)}" data-nav="">← newer</a>')
    if shown:
        parts.append(f"<span>{offset + 1}–{offset + shown} of {count}</span>")
    if offset + PAGE_SIZE < count:
        parts.append(f'<a href="{escape(page_url(status, owner, offset + PAGE_SIZE))}" data-nav="">older →</a>')
    return "".join(parts)


def render_page(*, auth: str, rows: str | None, count: int | None, status: str | None,
                owner: str | None, pager: str) -> str:
    """The page; ``rows`` is None when the viewer is not known yet (the script asks for a token)."""
    shell = rows is None
    hidden = " hidden" if shell else ""
    count_text = "" if count is None else f"{count} {'study' if count == 1 else 'studies'}"
    noscript = (
        "<noscript><p>With authentication on, this page needs JavaScript to send your token; "
        "the API and <code>decouple status</code> work without it.</p></noscript>" if shell else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Decouple Lab: studies</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>{STYLE}</style></head>
<body data-auth="{escape(auth)}" data-page-size="{PAGE_SIZE}" data-poll-ms="{POLL_SECONDS * 1000}">
<header><div><h1>Decouple Lab</h1>
<p class="sub"><span id="count">{count_text}</span>can the learning rate and weight decay be tuned
separately? · <a href="/ui/submit">submit a study</a> · <a href="/ui/atlas">atlas</a> ·
<a href="/docs">API</a></p></div>
<div id="session" hidden>token kept in this tab only · <button type="button" class="link" id="forget">forget
token</button></div></header>
{noscript}
{sign_in_form('Show studies')}
<div id="filters"{hidden}><div class="chips" id="chips">{_chips(status, owner)}</div>
<form id="owner-form" role="search"><label for="owner">owner</label>
<input id="owner" name="owner" list="owners" value="{escape(owner or "")}" placeholder="anyone">
<datalist id="owners"></datalist><button type="submit">filter</button></form>
<button type="button" id="compare" disabled title="tick two or more finished studies">compare picked</button></div>
<p id="notice" role="status"></p>
<table id="studies"{hidden}><thead><tr><th>study</th><th>status</th><th>progress</th><th>owner</th>
<th>task</th><th>submitted</th><th>links</th></tr></thead>
<tbody id="rows" data-rendered="{"client" if shell else "server"}">
{rows or ""}
</tbody></table>
<nav id="pager"{hidden}>{pager}</nav>
<script>{SCRIPT}</script>
</body></html>"""


@router.get("/", response_class=HTMLResponse, responses=error_responses(401, 422, 503))
def team_page(
    engine: EngineDep,
    settings: SettingsDep,
    viewer: Annotated[Principal | None, Depends(page_viewer)],
    status: StatusFilter | None = None,
    owner: str | None = None,
    offset: Annotated[int, Query(ge=0, le=MAX_INT32)] = 0,
) -> HTMLResponse:
    """The team's page: every study, newest first, with live progress, owner, age and links."""
    if viewer is None:
        page = render_page(auth=settings.auth, rows=None, count=None, status=status, owner=owner, pager="")
        return HTMLResponse(page, headers=HEADERS)
    with session_scope(engine, read_only=True) as session:
        studies, count = store.list_studies(session, status=status, owner=owner, limit=PAGE_SIZE, offset=offset)
        progs = store.progress(session, studies)
    now = datetime.now(UTC)
    rows = "\n".join(study_row(s, progs[s.id], status=status, owner=owner, now=now) for s in studies)
    page = render_page(
        auth=settings.auth, rows=rows or _empty_row(bool(status or owner or offset)), count=count,
        status=status, owner=owner, pager=_pager(count, len(studies), status, owner, offset),
    )
    return HTMLResponse(page, headers=HEADERS)
