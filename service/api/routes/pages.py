"""``GET /``: the team's page, every study with status, progress, owner and links (server-rendered)."""

from __future__ import annotations

from html import escape
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from service import store
from service.api.deps import EngineDep
from service.api.responses import error_responses
from service.api.routes.studies import MAX_INT32, StatusFilter
from service.db import session_scope
from service.models import Study

router = APIRouter(tags=["pages"])

PAGE_SIZE = 100

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#222}
h1{font-size:1.4rem;margin-bottom:.2rem} p.sub{color:#666;margin-top:0}
table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #ddd}
th{background:#f6f6f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{padding:.05rem .45rem;border-radius:.6rem;font-size:.85em;background:#eee}
.queued{background:#eef} .running{background:#ffd} .done{background:#dfd} .failed{background:#fdd} .cancelled{background:#eee;color:#777}
progress{width:7rem} nav{margin:1rem 0}
"""


def _row(study: Study, prog: store.StudyProgress) -> str:
    sid = escape(study.id)
    total = max(prog.trials_total, 1)
    failed = f" ({prog.trials_failed} failed)" if prog.trials_failed else ""
    return (
        "<tr>"
        f'<td><a href="/studies/{sid}/report.html">{escape(study.name)}</a></td>'
        f'<td><span class="status {escape(study.status)}">{escape(study.status)}</span></td>'
        f'<td><progress max="{total}" value="{prog.trials_done}"></progress> '
        f"{prog.trials_done}/{prog.trials_total}{escape(failed)}</td>"
        f"<td>{escape(study.owner)}</td>"
        f"<td>{escape(study.spec.get('task', ''))}</td>"
        f"<td>{escape(study.created_at.strftime('%Y-%m-%d %H:%M UTC'))}</td>"
        f'<td><a href="/studies/{sid}/report.html">report</a> · '
        f'<a href="/studies/{sid}/report">json</a> · '
        f'<a href="/studies/{sid}/trials?format=csv">csv</a></td>'
        "</tr>"
    )


@router.get("/", response_class=HTMLResponse, responses=error_responses(422, 503))
def team_page(
    engine: EngineDep,
    status: StatusFilter | None = None,
    owner: str | None = None,
    offset: Annotated[int, Query(ge=0, le=MAX_INT32)] = 0,
) -> HTMLResponse:
    """Every study, newest first, with status, progress, owner and links to its report and CSV."""
    with session_scope(engine, read_only=True) as session:
        studies, count = store.list_studies(
            session, status=status, owner=owner, limit=PAGE_SIZE, offset=offset
        )
        progs = store.progress(session, studies)
    rows = "\n".join(_row(s, progs[s.id]) for s in studies) or (
        '<tr><td colspan="7">No studies yet: submit one with <code>decouple submit SPEC</code> '
        "or <code>POST /studies</code>.</td></tr>"
    )
    filters = {k: v for k, v in (("status", status), ("owner", owner)) if v}
    nav = []
    if offset > 0:
        nav.append(f'<a href="/?{escape(urlencode({**filters, "offset": max(0, offset - PAGE_SIZE)}))}">newer</a>')
    if offset + PAGE_SIZE < count:
        nav.append(f'<a href="/?{escape(urlencode({**filters, "offset": offset + PAGE_SIZE}))}">older</a>')
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Decouple Lab: studies</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>
<body><h1>Decouple Lab</h1>
<p class="sub">{count} {"study" if count == 1 else "studies"} · can the learning rate and weight decay
be tuned separately? · <a href="/docs">API</a></p>
<table><thead><tr><th>study</th><th>status</th><th>progress</th><th>owner</th><th>task</th>
<th>submitted</th><th>links</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<nav>{" · ".join(nav)}</nav>
</body></html>"""
    return HTMLResponse(html)
