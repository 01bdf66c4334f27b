"""The report page's style sheet, and the Content-Security-Policy source that allows exactly it.

The report page (``GET /studies/{id}/report.html``, :func:`service.report.render_html`) is one
self-contained file: its style is inline, so it opens offline. Rather than ``'unsafe-inline'``, its
policy allows this one ``<style>`` by its SHA-256 (:data:`REPORT_STYLE_SOURCE`). The /ui/ pages'
policy carries the same hash: the study page opens the report with the tab's token as a ``blob:``
URL, and a ``blob:`` document runs under the policy of the page that made it (CSP Level 3), so
without the hash its style would be refused there. A light module (no matplotlib), so the API
can build its policies without importing :mod:`service.report`.
"""

from __future__ import annotations

import base64
import hashlib


def csp_hash(source: str) -> str:
    """The CSP source expression allowing exactly this inline script or style (CSP Level 2 hash)."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode() + "'"


#: The report page's whole style (no ``style=`` attributes in the page: a hash covers only
#: ``<style>`` elements).
REPORT_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#f6f7f9}
main{max-width:1080px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;margin:0 0 8px}
.meta{color:#555;margin:0 0 16px}
.card{background:#fff;border:1px solid #e2e4e8;border-radius:8px;padding:16px 20px;margin:0 0 20px}
.banner{background:#fff4d6;border:1px solid #f0c36d;border-radius:6px;padding:8px 12px;margin:0 0 16px}
table{border-collapse:collapse;font-size:.92em}
th,td{padding:4px 10px;border-bottom:1px solid #eceef1;text-align:left;vertical-align:top}
th{background:#fafbfc;font-weight:600}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.row{display:flex;flex-wrap:wrap;gap:20px;align-items:flex-start}
.row>div{flex:1 1 340px}
img{max-width:100%;height:auto}
img.pilot{opacity:.6}
ul.warn{padding-left:18px;margin:8px 0}ul.warn li{color:#8a4b00;margin:2px 0}
.verdict{font-weight:600;margin:6px 0 10px}
.conv{color:#444;font-size:.92em}
.muted{color:#777;font-size:.9em}
dt{font-weight:600;margin-top:8px}dd{margin:2px 0 0 16px}
"""
assert "</" not in REPORT_CSS, "an inlined style must not close its own tag"

#: ``style-src`` source allowing exactly :data:`REPORT_CSS` as an inline ``<style>``.
REPORT_STYLE_SOURCE = csp_hash(REPORT_CSS)

#: The report page's own policy: its inline style by hash, its figures as ``data:`` images, no
#: script, no request, no framing.
REPORT_CSP = "; ".join([
    "default-src 'none'",
    f"style-src {REPORT_STYLE_SOURCE}",
    "img-src data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])
