"""The /ui/ pages in a real browser (Debian's chromium) against real processes.

``decouple serve`` and ``decouple worker`` (a local Ray, real training of the digits MLP) run in
subprocesses on the parametrized database: SQLite with ``DECOUPLE_AUTH=required`` (the token typed
once, kept in the tab) and PostgreSQL with auth off. The browser drives what a new team member
does: the spec editor shows an error on its line, a valid spec is checked (dry run) and submitted,
the new study's page fills in while the worker runs it (no reload: cells appear), a hover shows
the seeds' values and a click the learning curves; two studies picked on the team page open the
compare view (heat maps on one colour scale); the atlas lists what the two studies found, and its
filters work; the exports download (Parquet, a figure as SVG and PNG, the offline report); its
owner cancels a study from its page; another user sees a study but not its owner's cancel and
extend buttons. No console errors but the 422s of the invalid specs' dry runs, no request leaves
the server. Screenshots of each page go to ``test-screenshots/`` (kept out of git).

Studies are tiny (digits_mlp, adamw on a 2 x 2 grid, two seeds, one epoch): two cores are shared.
The one submitted from the page has three optimizers (three blocks on the worker's two slots, the
third starting when one of the first two ends) and more epochs (LIVE_EPOCHS), so the page sees a
running study with some of its cells filled and others not.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from service.db import session_scope
from service.tokens import create_token
from tests.reliability.servers import PYTHON, ROOT, Process, clean_env, start_api

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = ROOT / "test-screenshots"
DRY_RUN_422 = "Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)"

GRID = {"lr": {"min": 1e-3, "max": 1e-2, "num": 2}, "wd": {"min": 1e-4, "max": 1e-2, "num": 2}}


def spec(name: str) -> dict:
    return {"name": name, "task": "digits_mlp", "epochs": 1, "batch_size": 64,
            "optimizers": [{"name": "adamw", **GRID}], "seeds": [0, 1]}


#: The study submitted from the page: three optimizers (bases adam and sgd), none diverges here.
LIVE_OPTIMIZERS = ("adamw", "adam", "sgdw")
LIVE_CELLS = 4 * len(LIVE_OPTIMIZERS)
#: Enough epochs that the third block runs alone for longer than the page can lag behind (its 3 s
#: poll plus the report cache's 3 s): measured here, 50 epochs gave the third block 2.7 s alone
#: after the first two (Ray takes about 10 s to start the first), too close; 150 gave about 8 s
#: until the MLP engine got faster (issue 19), then 3 s, and CI missed the partial state once. 600
#: give the page 8 of 12 cells for 9-12 s (measured on the 2-core Xeon, 2026-12-04, SQLite and
#: PostgreSQL), more than the page's worst lag.
LIVE_EPOCHS = 600


def live_spec(name: str) -> dict:
    return {**spec(name), "epochs": LIVE_EPOCHS, "optimizers": [{"name": o, **GRID} for o in LIVE_OPTIMIZERS]}


#: The report page's background (service/report_style.py): its inline style was applied.
REPORT_BACKGROUND = "rgb(246, 247, 249)"


#: Typed into the editor: line 4 holds the field the server refuses (lr.min must be > 0).
BAD_SPEC = """{
  "name": "typo",
  "task": "digits_mlp",
  "optimizers": [{"name": "adamw", "lr": {"min": -1, "max": 0.01, "num": 2}}],
  "seeds": [0]
}"""


def filled_cells(page) -> int:
    """Cells of the mean maps (the first map of each optimizer) that hold a value."""
    return page.evaluate("""() => [...document.querySelectorAll("section.optimizer")]
        .map(s => s.querySelector("svg.heatmap")).filter(m => m)
        .flatMap(m => [...m.querySelectorAll("rect.cell")]).filter(c => c.dataset.value !== "").length""")


def report_background(page) -> str:
    return page.evaluate("() => getComputedStyle(document.body).backgroundColor")


@pytest.mark.slow
def test_submit_watch_compare_and_atlas_in_chromium(db_url, engine, tmp_path):
    assert shutil.which(CHROMIUM), "chromium is missing: run scripts/ensure-test-services"
    backend = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    auth = "required" if backend == "sqlite" else "off"
    with session_scope(engine) as s:
        token, bob = create_token(s, "alice"), create_token(s, "bob")
    headers = {"Authorization": f"Bearer {token}"} if auth == "required" else {}
    SHOTS.mkdir(exist_ok=True)
    server, base = start_api(db_url, tmp_path / "serve" / "serve.log", auth=auth)
    worker = None
    errors: list[str] = []
    requests: list[str] = []
    try:
        # The reference study, through the API; the worker takes it first.
        r = httpx.post(base + "/studies", json=spec("reference"), headers=headers, timeout=30)
        assert r.status_code == 201, r.text
        first = r.json()["id"]
        worker = Process([PYTHON, "-m", "service.cli", "worker"], log=tmp_path / "worker.log",
                         env=clean_env(DECOUPLE_DATABASE_URL=db_url, DECOUPLE_DATA_DIR=str(tmp_path / "wdata"),
                                       OMP_NUM_THREADS="1", HOME=str(tmp_path)))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
                context.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                context.on("weberror", lambda e: errors.append(str(e.error)))
                context.on("request", lambda q: requests.append(q.url))
                page = context.new_page()

                # The team page: sign in if asked, then to the editor.
                page.goto(base + "/")
                if auth == "required":
                    page.fill("#token", token)
                    page.press("#token", "Enter")
                expect(page.locator(f'#rows tr[data-id="{first}"]')).to_have_count(1)
                page.click('a[href="/ui/submit"]')
                expect(page.locator("#tasks dt").first).to_be_visible()
                expect(page.locator("#check")).to_have_text("✓ valid")  # the example, checked
                expect(page.locator("#plan")).to_contain_text("trials")

                # The catalogue writes into the spec (an optimizer with its default grids).
                page.click('#optimizers-list button[data-optimizer="sgdw"]')
                expect(page.locator("#spec")).to_have_value(re.compile(r'"name": "sgdw"\n'))
                expect(page.locator("#plan tbody tr")).to_have_count(3)

                # An error, shown on the line of the field it names.
                page.fill("#spec", BAD_SPEC)
                err = page.locator("#errors li")
                expect(err).to_have_count(1)
                assert err.get_attribute("data-field") == "optimizers[0].lr.min"
                assert err.get_attribute("data-line") == "4"
                expect(page.locator('#gutter span.bad')).to_have_text("4")
                expect(page.locator("#submit")).to_be_disabled()
                page.screenshot(path=str(SHOTS / f"{backend}-submit-error.png"), full_page=True)

                # YAML works too; then the study, checked and submitted.
                page.select_option("#format", "yaml")
                page.fill("#spec", "name: from the page\ntask: digits_mlp\nepochs: 1\noptimizers:\n"
                                   "  - name: adamw\n    lr: {min: 0.001, max: 0.01, num: 2}\n"
                                   "    wd: {min: 0.0001, max: 0.01, num: -2}\nseeds: [0, 1]\n")
                expect(page.locator("#errors li")).to_have_attribute("data-field", "optimizers[0].wd.num")
                assert page.locator("#errors li").get_attribute("data-line") == "7"
                page.select_option("#format", "json")
                page.fill("#spec", json.dumps(live_spec("draft"), indent=2))
                expect(page.locator("#check")).to_have_text("✓ valid")
                expect(page.locator("#plan")).to_contain_text(f"24 trials, {24 * LIVE_EPOCHS} trial-epochs")
                page.screenshot(path=str(SHOTS / f"{backend}-submit.png"), full_page=True)
                # An edit, then submit at once (within the check's debounce): what is submitted is
                # the edited text once checked, never the spec checked before the edit.
                page.fill("#spec", json.dumps(live_spec("from the page"), indent=2))
                assert page.locator("#submit").is_disabled()
                page.click("#submit")
                page.wait_for_url(re.compile(r"/ui/studies/[0-9a-f]{32}$"))
                second = page.url.rsplit("/", 1)[1]
                expect(page.locator("#title")).to_have_text("from the page")

                # It fills in live: no reload, cells appear as the worker finishes trials.
                samples = []
                deadline = time.monotonic() + 420
                while True:
                    assert worker.alive(), worker.output()[-3000:]
                    assert time.monotonic() < deadline, f"study not done in time: {samples[-3:]}\n{worker.output()[-3000:]}"
                    status = page.locator("#status").inner_text() if page.locator("#status").count() else ""
                    cells = filled_cells(page) if page.locator("svg.heatmap").count() else 0
                    samples.append((status, cells))
                    if status == "done" and cells == LIVE_CELLS:
                        break
                    time.sleep(0.5)
                # Seen while the worker ran: some cells filled, others not yet.
                changes = [x for k, x in enumerate(samples) if k == 0 or x != samples[k - 1]]
                assert any(st == "running" and 0 < c < LIVE_CELLS for st, c in samples), (len(samples), changes)
                assert page.url.endswith("/ui/studies/" + second)  # never navigated away
                expect(page.locator("section.optimizer h2 .verdict.pending")).to_have_count(0)
                n = len(LIVE_OPTIMIZERS)
                expect(page.locator("section.optimizer svg.heatmap")).to_have_count(2 * n)  # mean and s.e.
                expect(page.locator("section.optimizer svg.lines")).to_have_count(2 * n)  # the slices
                assert page.locator("table.measures").first.inner_text().count("[") >= 2  # intervals
                cell = page.locator("section.optimizer svg.heatmap").first.locator("rect.cell").first
                cell.hover()
                expect(page.locator("#tip")).to_contain_text("seed 0:")
                expect(page.locator("#tip")).to_contain_text("seed 1:")
                expect(page.locator("#tip")).to_contain_text("s.e., n=2")
                cell.click()
                expect(page.locator(".curves svg.lines polyline.series, .curves svg.lines circle").first).to_be_visible()
                expect(page.locator(".curves .key")).to_have_text(["seed 0", "seed 1"])
                # Exports, fetched with the token when there is one: the server's files.
                adamw = 'section.optimizer[data-optimizer="adamw"] '
                for where, text, name, head in (
                        ("#exports ", "trials Parquet", f"study-{second}-trials.parquet", b"PAR1"),
                        (adamw, "heat map SVG", f"study-{second}-adamw-heatmap.svg", b"<svg"),
                        (adamw, "heat map PNG", f"study-{second}-adamw-heatmap.png", b"\x89PNG"),
                        ("#exports ", "report (one HTML file", f"study-{second}-report.html", b"<!doctype html>")):
                    with page.expect_download() as download:
                        page.locator(where + "a.export", has_text=text).first.click()
                    assert download.value.suggested_filename == name
                    body = Path(download.value.path()).read_bytes()
                    assert head in body[:400], (name, body[:200])
                expect(page.locator("#extend")).to_be_visible()
                expect(page.locator("#cancel")).to_be_hidden()
                page.mouse.move(5, 5)
                page.screenshot(path=str(SHOTS / f"{backend}-study.png"), full_page=True)

                # The report page, styled: with auth on the link opens it fetched with the token
                # as a blob: URL (which runs under the /ui/ policy); with auth off, as it is.
                if auth == "required":
                    with context.expect_page() as opened:
                        page.click("#report-link")
                    report = opened.value
                    report.wait_for_url(re.compile(r"^blob:"))
                else:
                    report = context.new_page()
                    report.goto(base + page.locator("#report-link").get_attribute("href"))
                report.wait_for_load_state()
                expect(report.locator("h1")).to_contain_text("from the page")
                assert report_background(report) == REPORT_BACKGROUND
                report.close()

                # Its owner cancels a study from its page (after a confirmation).
                r = httpx.post(base + "/studies", json=spec("to cancel"), headers=headers, timeout=30)
                assert r.status_code == 201, r.text
                page.goto(f"{base}/ui/studies/{r.json()['id']}")
                expect(page.locator("#cancel")).to_be_visible()
                page.once("dialog", lambda d: d.accept())
                page.click("#cancel")
                expect(page.locator("#status")).to_have_text("cancelled")
                expect(page.locator("#cancel")).to_be_hidden()

                # Compare: pick both on the team page.
                page.click('nav.top a[href="/"]')
                for sid in (first, second):
                    expect(page.locator(f'#rows tr[data-id="{sid}"] .status')).to_have_text("done")
                page.check(f'#rows tr[data-id="{first}"] input.pick')
                page.check(f'#rows tr[data-id="{second}"] input.pick')
                page.click("#compare")
                page.wait_for_url(f"{base}/ui/compare?ids={first},{second}")
                sec = page.locator('section.optimizer[data-optimizer="adamw"]')
                expect(sec.locator("svg.heatmap")).to_have_count(2)
                expect(sec.locator("td.diff")).to_have_count(6)
                scales = sec.locator("svg.heatmap").evaluate_all(
                    "ms => ms.map(m => [...m.querySelectorAll('text.tick')].slice(-2).map(t => t.textContent).join('/'))")
                assert scales[0] == scales[1], scales  # one colour scale
                page.screenshot(path=str(SHOTS / f"{backend}-compare.png"), full_page=True)

                # The atlas: a row per optimizer, (digits_mlp, adamw) from both studies; filters.
                page.click('nav.top a[href="/ui/atlas"]')
                rows = page.locator("#atlas-rows tr[data-optimizer]")
                expect(rows).to_have_count(len(LIVE_OPTIMIZERS))
                row = page.locator('#atlas-rows tr[data-optimizer="adamw"]')
                expect(row).to_contain_text("digits_mlp")
                links = row.locator("td.links a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
                assert sorted(links) == sorted([f"/ui/studies/{first}", f"/ui/studies/{second}"])
                page.select_option("#f-task", "digits_mlp")
                expect(rows).to_have_count(len(LIVE_OPTIMIZERS))
                assert "task=digits_mlp" in page.url
                page.screenshot(path=str(SHOTS / f"{backend}-atlas.png"), full_page=True)
                assert page.locator("#f-base option").evaluate_all("os => os.map(o => o.value)") == ["", "adam", "sgd"]
                page.select_option("#f-base", "sgd")
                expect(rows).to_have_count(1)
                expect(rows.first).to_have_attribute("data-optimizer", "sgdw")
                page.select_option("#f-base", "adam")
                expect(rows).to_have_count(2)
                row.locator("td.links a").last.click()  # the older study: the reference
                page.wait_for_url(f"{base}/ui/studies/{first}")
                expect(page.locator("section.optimizer svg.heatmap")).to_have_count(2)
                context.close()

                if auth == "required":  # another user sees the study, not its owner's buttons
                    other = browser.new_context()
                    other.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                    page = other.new_page()
                    page.goto(f"{base}/ui/studies/{second}")
                    expect(page.locator("#login")).to_be_visible()
                    page.fill("#token", bob)
                    page.press("#token", "Enter")
                    expect(page.locator("#status")).to_have_text("done")
                    expect(page.locator("section.optimizer svg.heatmap")).to_have_count(2 * len(LIVE_OPTIMIZERS))
                    expect(page.locator("#extend")).to_be_hidden()
                    expect(page.locator("#cancel")).to_be_hidden()
                    other.close()
            finally:
                browser.close()
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
    assert [e for e in errors if e != DRY_RUN_422] == [], errors
    assert errors.count(DRY_RUN_422) >= 2  # the JSON and the YAML error (the browser logs each 422)
    assert [u for u in requests if not u.startswith((base + "/", "blob:", "data:"))] == []
