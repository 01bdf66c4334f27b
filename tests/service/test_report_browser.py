"""The report page in a real headless browser (Debian's chromium, installed by scripts/ensure-test-services).

It must load from a file (as when mailed or attached to a ticket) without console errors, without
any request leaving the file, and show one loaded heat map per optimizer. A screenshot goes to
/tmp/report.png for a human to look at.
"""

from __future__ import annotations

import shutil

from playwright.sync_api import sync_playwright

from service.report import build_report, render_html
from tests.service.test_report import Curves, make_study

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_report_page_loads_in_chromium_with_one_heat_map_per_optimizer(tmp_path):
    assert shutil.which(CHROMIUM), "chromium is missing: run scripts/ensure-test-services"
    optimizers = ("adamw", "sgdw", "sgd")
    study, trials = make_study(optimizers=optimizers, seeds=(0, 1, 2))
    page_file = tmp_path / "report.html"
    report = build_report(study, trials, Curves())
    page_file.write_text(render_html(report), encoding="utf-8")

    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri(), wait_until="load")
            heat = page.locator("img.heatmap")
            assert heat.count() == len(optimizers)
            widths = heat.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            assert all(w > 0 for w in widths), widths
            assert page.locator("img.curves").count() == len(optimizers)
            sections = page.locator("section.optimizer h2").all_inner_texts()
            # most separable first, the two decoupled variants above SGD + L2
            assert [s.split(" ")[0] for s in sections] == report["ranking"]
            assert report["ranking"][-1] == "sgd"
            page.screenshot(path="/tmp/report.png", full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []

