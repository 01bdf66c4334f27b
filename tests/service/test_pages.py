"""The team page (``GET /``).

* In-process, on both backends: without a token (auth required) the page holds no data and asks
  for one while every data endpoint stays 401; with a token, or auth off, the rows are rendered on
  the server, escaped; the Content-Security-Policy allows exactly the page's own script.
* In a real headless browser (Debian's chromium) against ``decouple serve`` (uvicorn) in a
  subprocess, SQLite, auth required: a wrong token is refused, the right one lists the studies
  submitted through the API (a name that is HTML shows as text), the status and owner filters
  work and follow the browser's history, progress written to the database appears without a
  reload, the report link opens the report (one heat map) and the CSV link downloads the API's
  CSV, both fetched with the token; the server's rows and the script's rows agree; no console
  errors, no request leaves the server. With auth off there is no token prompt. Screenshots go
  to /tmp/team-page.png and /tmp/team-report.png for a human to look at.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import expect, sync_playwright

from service import store
from service.api import create_app
from service.api.routes.pages import CONTENT_SECURITY_POLICY, _pager, age_text, plugin_note
from service.db import dispose_engines, get_engine, session_scope, upgrade_to_head
from service.models import Study
from service.tokens import create_token
from tests.conftest import make_spec, make_study

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EVIL = "<img src=x onerror=alert(1)>"
UNAUTHORIZED = "Failed to load resource: the server responded with a status of 401 (Unauthorized)"


def bowl(t) -> float:
    """An additive (separable) surface in log10 lr and log10 wd, best at lr 1e-2, wd 1e-3."""
    return 0.1 + (math.log10(t.lr) + 2) ** 2 / 10 + (math.log10(t.wd) + 3) ** 2 / 10


def finish_study(engine, study_id: str) -> None:
    """Play a worker: claim the study (the oldest queued one), finish every trial, finish it."""
    with session_scope(engine) as s:
        assert store.claim_study(s, "w1", 60).id == study_id
        for t in store.list_trials(s, study_id):
            store.finish_trial(s, t.id, "w1", train_loss=bowl(t), val_loss=bowl(t), val_error=bowl(t))
        assert store.finish_study(s, study_id, "w1", "done")


# --- in-process ----------------------------------------------------------------------------------


@pytest.fixture
def secure(settings):
    with TestClient(create_app(settings.model_copy(update={"auth": "required"}))) as c:
        yield c


def served_script(html: str) -> str:
    return re.search(r"<script>(.*)</script>", html, re.S).group(1)


def test_without_a_token_the_page_asks_for_one_and_holds_no_data(secure, engine):
    study = make_study(engine, owner="alice", name="secret plan")
    r = secure.get("/")
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    html = r.text
    assert 'data-auth="required"' in html and '<tbody id="rows" data-rendered="client">' in html
    assert "secret plan" not in html and study.id not in html and "alice" not in html
    assert '<form id="login" hidden' in html and '<table id="studies" hidden>' in html
    # Every data endpoint, and the links the page shows, still need the token.
    for path in ("/studies", f"/studies/{study.id}", f"/studies/{study.id}/report.html",
                 f"/studies/{study.id}/report", f"/studies/{study.id}/trials?format=csv"):
        r = secure.get(path)
        assert (r.status_code, r.json()) == (
            401, {"detail": "authentication required: send 'Authorization: Bearer <token>'"}), path
    r = secure.get("/", headers={"Authorization": "Bearer not-a-token"})
    assert (r.status_code, r.json()) == (401, {"detail": "invalid or revoked token"})
    assert secure.get("/", params={"stauts": "done"}).status_code == 422  # typos are named, token or not
    other_scheme = secure.get("/", headers={"Authorization": "Basic YWxpY2U6eA=="})
    assert other_scheme.status_code == 200 and "secret plan" not in other_scheme.text


def test_the_policy_runs_exactly_the_pages_own_script(secure):
    r = secure.get("/")
    script = served_script(r.text)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY == (
        f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
        "img-src data: blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"
    markup = re.sub(r"<script>.*</script>", "", r.text, flags=re.S)
    assert r.text.count("<script") == 1 and re.search(r"\son\w+=", markup) is None  # no inline handlers


def test_with_a_token_the_rows_are_rendered_on_the_server(secure, engine):
    with session_scope(engine) as s:
        alice = create_token(s, "alice")
    evil = make_study(engine, owner="alice", name=EVIL)
    other = make_study(engine, owner="bob", name="bob's")
    with session_scope(engine) as s:
        trials = store.list_trials(s, other.id)
        for t in trials[:3]:
            store.finish_trial(s, t.id, "w", train_loss=1.0, val_loss=1.0, val_error=0.5)
        store.fail_trials(s, [trials[3].id], "boom")
    r = secure.get("/", headers={"Authorization": f"Bearer {alice}"})
    html = r.text
    assert r.status_code == 200 and '<tbody id="rows" data-rendered="server">' in html
    assert EVIL not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert '<span id="count">2 studies</span>' in html
    assert (f'<input type="checkbox" class="pick" value="{evil.id}" autocomplete="off"'
            f' aria-label="pick for compare">'
            f' <a href="/ui/studies/{evil.id}">&lt;img') in html  # the name opens the study page
    assert f'<a href="/studies/{evil.id}/report.html" data-open="tab">report</a>' in html
    assert f'<a href="/studies/{evil.id}/trials?format=csv" data-open="download">csv</a>' in html
    assert ('<span class="count">3/12</span><span class="failed"> · 1 failed</span>' in html
            and 'style="width: 25.0%;"' in html and 'style="width: 8.3%;"' in html)
    assert '<a class="owner" href="/?owner=bob" data-nav=""' in html
    r = secure.get("/", params={"owner": "bob", "status": "queued"}, headers={"Authorization": f"Bearer {alice}"})
    assert '<span id="count">1 study</span>' in r.text and evil.id not in r.text and other.id in r.text
    assert '<a class="chip on" href="/?status=queued&amp;owner=bob" data-nav="">queued</a>' in r.text
    assert '<a class="status queued" href="/?status=queued&amp;owner=bob"' in r.text
    r = secure.get("/", params={"status": "done"}, headers={"Authorization": f"Bearer {alice}"})
    assert "No studies match these filters." in r.text and '<span id="count">0 studies</span>' in r.text


def test_plugin_note_names_each_distribution_once_and_each_plugin_in_the_title():
    assert plugin_note(None) is None and plugin_note({}) is None
    needs = plugin_note({
        "task:wine_mlp": {"distribution": "acme", "version": "1.0"},
        "rule:signum": {"distribution": "acme", "version": "1.0"},
        "rule:lion2": {"distribution": "other-rules", "version": "0.3"},
    })
    assert needs == ("needs acme 1.0, other-rules 0.3",
                     "rule signum, task wine_mlp from acme 1.0; rule lion2 from other-rules 0.3")


def test_a_queued_row_says_why_it_waits_and_what_it_needs(client, engine):
    """The facts `decouple status` prints, on the team page: the reason a queued study waits
    (escaped: it quotes plugin metadata) and the plugins it needs; a running study shows no
    reason, even if one was left from before it was claimed."""
    study = make_study(engine, name="waits")
    with session_scope(engine) as s:
        row = s.get(Study, study.id)
        row.plugins = {"task:wine_mlp": {"distribution": "acme<b>", "version": "1.0"}}
        row.waiting_reason = "no worker with the plugins it needs has claimed it (w-bare: <b> is not installed)"
    html = client.get("/").text
    assert ('<small class="waiting" title="no worker with the plugins it needs has claimed it '
            '(w-bare: &lt;b&gt; is not installed)">no worker with the plugins it needs has claimed it '
            '(w-bare: &lt;b&gt; is not installed)</small></td>') in html
    assert ('<small class="plugins" title="task wine_mlp from acme&lt;b&gt; 1.0">needs acme&lt;b&gt; 1.0'
            '</small></td>') in html
    with session_scope(engine) as s:
        s.get(Study, study.id).status = "running"
    html = client.get("/").text
    assert 'class="waiting"' not in html and 'class="plugins"' in html


def test_with_auth_off_the_page_needs_no_token(client, engine):
    make_study(engine, name="local study")
    html = client.get("/").text
    assert 'data-auth="off"' in html and "local study" in html and '<span class="count">0/12</span>' in html
    assert '<table id="studies">' in html and "<noscript>" not in html


def test_pager_and_ages():
    assert _pager(250, 100, None, "bob", 100) == (
        '<a href="/?owner=bob" data-nav="">← newer</a><span>101–200 of 250</span>'
        '<a href="/?owner=bob&amp;offset=200" data-nav="">older →</a>'
    )
    assert _pager(0, 0, "done", None, 0) == ""
    now = datetime(2025, 1, 3, tzinfo=UTC)
    ages = [age_text(now - timedelta(seconds=s), now) for s in (-5, 59, 60, 3599, 3600, 172_799, 172_800)]
    assert ages == ["just now", "just now", "1 min ago", "59 min ago", "1 h ago", "47 h ago", "2 d ago"]


# --- a real browser against a real server ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen


def start_server(db_url: str, data_dir: Path, auth: str, log: Path) -> Server:
    """``decouple serve`` in its own process group; returns once /health answers 200."""
    port = free_port()
    env = {**os.environ, "DECOUPLE_DATABASE_URL": db_url, "DECOUPLE_AUTH": auth,
           "DECOUPLE_DATA_DIR": str(data_dir)}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "decouple serve did not answer /health in 30 s"
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return Server(url, proc)
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def stop_server(server: Server) -> None:
    try:
        os.killpg(server.proc.pid, signal.SIGTERM)
        server.proc.wait(10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(5)


@dataclass
class Team:
    server: Server
    engine: object
    db_url: str
    tokens: dict[str, str]
    ids: dict[str, str]

    def get(self, path: str, who: str = "alice") -> httpx.Response:
        return httpx.get(self.server.url + path, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=30)


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> Iterator[Team]:
    """An SQLite database with tokens for alice and bob, ``decouple serve`` on it (auth required),
    and four studies submitted through the API: one finished (by a stand-in worker), a plain one
    and one named with HTML by alice, one by bob."""
    d = tmp_path_factory.mktemp("team")
    db_url = f"sqlite:///{d / 'decouple.db'}"
    upgrade_to_head(db_url)
    engine = get_engine(db_url)
    with session_scope(engine) as s:
        tokens = {name: create_token(s, name) for name in ("alice", "bob")}
    server = start_server(db_url, d / "data", "required", d / "serve.log")
    try:
        def submit(who: str, **spec) -> str:
            r = httpx.post(server.url + "/studies", json=make_spec(**spec),
                           headers={"Authorization": f"Bearer {tokens[who]}"}, timeout=30)
            assert r.status_code == 201, r.text
            return r.json()["id"]

        unauthenticated = httpx.post(server.url + "/studies", json=make_spec(), timeout=30)
        assert unauthenticated.status_code == 401
        ids = {"done": submit("alice", name="adamw bowl", seeds=[0])}
        finish_study(engine, ids["done"])
        ids["plain"] = submit("alice", name="plain study")
        ids["evil"] = submit("alice", name=EVIL)
        ids["bob"] = submit("bob", name="bob's study")
        yield Team(server, engine, db_url, tokens, ids)
    finally:
        stop_server(server)
        dispose_engines(db_url)


@pytest.fixture(scope="module")
def browser():
    assert shutil.which(CHROMIUM), "chromium is missing: run scripts/ensure-test-services"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Watch:
    errors: list[str]
    dialogs: list[str]
    requests: list[str]


def watch(context) -> Watch:
    w = Watch([], [], [])
    context.on("console", lambda m: w.errors.append(m.text) if m.type == "error" else None)
    context.on("weberror", lambda e: w.errors.append(str(e.error)))
    context.on("dialog", lambda d: (w.dialogs.append(d.message), d.dismiss()))
    context.on("request", lambda r: w.requests.append(r.url))
    return w


def row(page, study_id: str):
    return page.locator(f'#rows tr[data-id="{study_id}"]')


def row_texts(page) -> list[list[str]]:
    """Each row's cell texts (the age column left out: it may tick between two renderings) and
    its links."""
    return page.locator("#rows tr").evaluate_all("""rows => rows.map(r => [
        ...[...r.cells].filter((c, i) => i !== 5).map(c => c.innerText.trim()),
        ...[...r.querySelectorAll('a')].map(a => a.getAttribute('href'))])""")


def test_team_page_in_chromium_with_auth_required(team: Team, browser):
    base, ids = team.server.url, team.ids
    context = browser.new_context(viewport={"width": 1280, "height": 760}, accept_downloads=True)
    try:
        w = watch(context)
        page = context.new_page()
        page.goto(base + "/")
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#studies")).to_be_hidden()
        assert [u for u in w.requests if "/studies" in u] == []  # nothing asked without a token

        page.fill("#token", "not-a-token")
        page.press("#token", "Enter")
        expect(page.locator("#login-error")).to_have_text("invalid or revoked token")
        assert w.errors == [UNAUTHORIZED] and page.evaluate("sessionStorage.length") == 0
        page.screenshot(path="/tmp/team-login.png")
        w.errors.clear()

        page.fill("#token", team.tokens["alice"])
        page.click("#login button[type=submit]")
        expect(page.locator("#rows tr")).to_have_count(4)
        expect(page.locator("#count")).to_have_text("4 studies")
        expect(page.locator("#login")).to_be_hidden()
        expect(page.locator("#session")).to_be_visible()
        assert page.locator("#rows tr").evaluate_all("rs => rs.map(r => r.dataset.id)") == [
            ids["bob"], ids["evil"], ids["plain"], ids["done"]]  # newest first
        expect(row(page, ids["evil"]).locator("td.name a")).to_have_text(EVIL)
        assert page.locator("#rows img").count() == 0
        expect(row(page, ids["done"]).locator(".status")).to_have_text("done")
        expect(row(page, ids["done"]).locator(".count")).to_have_text("6/6")
        expect(row(page, ids["bob"]).locator(".owner")).to_have_text("bob")
        assert re.fullmatch(r"just now|\d+ min ago", row(page, ids["bob"]).locator("time").inner_text())

        # Filters: status chips, the owner box, a row's own status and owner, the history.
        page.click('#chips a:text-is("done")')
        expect(page.locator("#rows tr")).to_have_count(1)
        assert page.url == base + "/?status=done" and row(page, ids["done"]).count() == 1
        expect(page.locator("#chips .chip.on")).to_have_text("done")
        page.click('#chips a:text-is("all")')
        expect(page.locator("#rows tr")).to_have_count(4)
        page.fill("#owner", "bob")
        page.press("#owner", "Enter")
        expect(page.locator("#rows tr")).to_have_count(1)
        assert page.url == base + "/?owner=bob" and row(page, ids["bob"]).count() == 1
        row(page, ids["bob"]).locator(".status").click()
        expect(page.locator("#count")).to_have_text("1 study")
        assert page.url == base + "/?status=queued&owner=bob"
        page.go_back()
        expect(page.locator("#chips .chip.on")).to_have_text("all")
        expect(page.locator("#rows tr")).to_have_count(1)
        page.fill("#owner", "carol")
        page.press("#owner", "Enter")
        expect(page.locator("#rows td.empty")).to_have_text("No studies match these filters.")
        page.fill("#owner", "")
        page.press("#owner", "Enter")
        expect(page.locator("#rows tr")).to_have_count(4)
        assert page.url == base + "/"

        # Live: a worker's progress shows up without a reload.
        with session_scope(team.engine) as s:
            assert store.claim_study(s, "w2", 60).id == ids["plain"]
            trials = store.list_trials(s, ids["plain"])
            for t in trials[:5]:
                store.finish_trial(s, t.id, "w2", train_loss=1.0, val_loss=1.0, val_error=0.5)
            store.fail_trials(s, [trials[5].id], "boom")
        plain = row(page, ids["plain"])
        expect(plain.locator(".count")).to_have_text("5/12", timeout=10_000)
        expect(plain.locator(".failed")).to_have_text(" · 1 failed")
        expect(plain.locator(".status")).to_have_text("running")
        assert plain.locator(".bar").get_attribute("aria-valuenow") == "5"

        # The report opens in a tab, fetched with the token: one heat map for one optimizer.
        with context.expect_page() as opened:
            row(page, ids["done"]).locator('td.links a:text-is("report")').click()
        report = opened.value
        report.wait_for_url(lambda u: u.startswith("blob:"))
        report.wait_for_load_state("load")
        assert report.url.startswith(f"blob:{base}/")
        heat = report.locator("img.heatmap")
        expect(heat).to_have_count(1)
        assert heat.evaluate("i => i.complete ? i.naturalWidth : 0") > 0
        expect(report.locator("section.optimizer h2").first).to_contain_text("adamw")
        expect(report.locator("body")).to_contain_text("adamw bowl")
        report.screenshot(path="/tmp/team-report.png", full_page=True)
        report.close()

        # The CSV downloads, fetched with the token: the API's own CSV.
        with page.expect_download() as download:
            row(page, ids["done"]).locator('td.links a:text-is("csv")').click()
        d = download.value
        assert d.suggested_filename == f"study-{ids['done']}-trials.csv"
        expected = team.get(f"/studies/{ids['done']}/trials?format=csv")
        assert Path(d.path()).read_text() == expected.text and expected.text.count("\n") == 7

        # A reload keeps the token (same tab); the server renders the same rows as the script.
        page.reload()
        expect(page.locator("#rows tr")).to_have_count(4)
        expect(page.locator("#login")).to_be_hidden()
        page.screenshot(path="/tmp/team-page.png", full_page=True)
        live = row_texts(page)
        plain_ctx = browser.new_context(java_script_enabled=False, extra_http_headers={
            "Authorization": f"Bearer {team.tokens['bob']}"})
        static = plain_ctx.new_page()
        static.goto(base + "/")
        assert static.locator("#rows").get_attribute("data-rendered") == "server"
        assert row_texts(static) == live and len(live) == 4
        plain_ctx.close()

        page.click("#forget")
        expect(page.locator("#login")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('decouple.token')") is None
        assert page.locator("#rows tr").count() == 0
    finally:
        context.close()
    assert w.errors == [] and w.dialogs == []
    assert [u for u in w.requests if not u.startswith((base + "/", "blob:", "data:"))] == []


def test_a_waiting_plugin_study_in_chromium(browser, tmp_path):
    """A study that names the example plugin, looked at by a worker without it: the script's row
    and the server's row both say why it waits and what it needs, in the same words."""
    from tests.service.test_plugins import plugin_spec

    db_url = f"sqlite:///{tmp_path / 'decouple.db'}"
    upgrade_to_head(db_url)
    engine = get_engine(db_url)
    server = start_server(db_url, tmp_path / "data", "off", tmp_path / "serve.log")
    context = browser.new_context(viewport={"width": 1280, "height": 760})
    try:
        r = httpx.post(server.url + "/studies", json=plugin_spec(name="wine"), timeout=30)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        with session_scope(engine) as s:  # a worker without the example plugin looked at the queue
            assert store.claim_study(s, "w-bare", 60, only=sid, installed={}) is None
        w = watch(context)
        page = context.new_page()
        page.goto(server.url + "/")
        assert page.locator("#rows").get_attribute("data-rendered") == "server"
        page.evaluate("""() => document.querySelectorAll('#rows tr').forEach(r => r.dataset.stale = '1')""")
        # The script's first poll replaces the server's rows with its own: check those.
        expect(page.locator("#rows tr[data-stale]")).to_have_count(0, timeout=15_000)
        waiting = row(page, sid).locator("small.waiting")
        expect(waiting).to_contain_text("no worker with the plugins it needs has claimed it (w-bare: ")
        assert waiting.get_attribute("title") == httpx.get(f"{server.url}/studies/{sid}").json()["waiting_reason"]
        needs = row(page, sid).locator("small.plugins")
        expect(needs).to_have_text("needs decouple-plugin-example 0.1.0")
        assert needs.get_attribute("title") == "rule adamax, rule signum, task wine_mlp from decouple-plugin-example 0.1.0"
        live = row_texts(page)
        static_ctx = browser.new_context(java_script_enabled=False)
        static = static_ctx.new_page()
        static.goto(server.url + "/")
        assert row_texts(static) == live
        static_ctx.close()

        page.goto(f"{server.url}/ui/studies/{sid}")  # the study's own page says the same
        expect(page.locator("#facts .fact")).to_contain_text([
            "plugin rule adamax from decouple-plugin-example 0.1.0",
            "plugin rule signum from decouple-plugin-example 0.1.0",
            "plugin task wine_mlp from decouple-plugin-example 0.1.0",
            "waiting no worker with the plugins it needs has claimed it (w-bare: "])
    finally:
        context.close()
        stop_server(server)
        dispose_engines(db_url)
    assert w.errors == []


def test_team_page_in_chromium_with_auth_off(team: Team, browser, tmp_path):
    """The same database served with auth off: no prompt, the rows at first paint, kept live,
    and plain links (no token to add)."""
    server = start_server(team.db_url, tmp_path / "data", "off", tmp_path / "serve.log")
    context = browser.new_context()
    try:
        w = watch(context)
        page = context.new_page()
        page.goto(server.url + "/")
        assert page.locator("#rows").get_attribute("data-rendered") == "server"
        expect(page.locator("#rows tr")).to_have_count(4)
        expect(page.locator("#login")).to_be_hidden()
        expect(page.locator("#session")).to_be_hidden()
        with page.expect_response(lambda r: r.url.startswith(server.url + "/studies?")):
            pass  # the first poll, a few seconds on
        expect(page.locator("#notice")).to_contain_text("refreshes every 3 s")
        with page.expect_download() as download:
            row(page, team.ids["done"]).locator('td.links a:text-is("csv")').click()
        assert download.value.url == f"{server.url}/studies/{team.ids['done']}/trials?format=csv"  # no blob:
        assert Path(download.value.path()).read_text() == team.get(f"/studies/{team.ids['done']}/trials?format=csv").text
    finally:
        context.close()
        stop_server(server)
    assert w.errors == [] and w.dialogs == []
