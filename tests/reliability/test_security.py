"""Issue 15, against a real ``decouple serve``: what a hostile or careless teammate could do.

Each test would fail on the code before the fix: the report storm that stalled every user, the
missing quotas and self-granted priority, extend skipping the limits, service-owned fields taken
from users, pages without security headers, docs from a CDN, slow clients held forever, /health
telling its driver's error to anyone, any Host header accepted, a local Ray on every interface.
"""

from __future__ import annotations

import math
import re
import socket
import time
from pathlib import Path

import httpx
import pytest

from service import store
from service.api.routes.health import UNAVAILABLE
from service.api.security import ASSETS_PREFIX, DOCS_CSP
from service.db import get_engine, session_scope
from service.schemas import StudySpec
from tests.conftest import make_spec
from tests.reliability.conftest import make_tokens
from tests.reliability.servers import (
    PYTHON,
    Process,
    clean_env,
    free_port,
    seed_running_study,
    start_api,
    start_report_viewers,
    viewer_statuses,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(lite_url, tmp_path):
    """``start(**env)``: a real ``decouple serve`` (auth required) on this test's SQLite file;
    returns (base URL, {name: auth header}). Servers are stopped at the end."""
    procs = []
    tokens = make_tokens(get_engine(lite_url))
    headers = {name: {"Authorization": f"Bearer {t}"} for name, t in tokens.items()}

    def start(auth: str = "required", **env: str):
        proc, base = start_api(lite_url, tmp_path / f"api{len(procs)}.log", auth=auth, **env)
        procs.append(proc)
        return base, headers

    yield start
    for p in procs:
        p.stop()


def finish(engine, study_id: str, value) -> None:
    """Play a worker: finish every trial with ``value(trial)`` and mark the study done."""
    with session_scope(engine) as s:
        assert store.claim_study(s, "w", 60, only=study_id).id == study_id
        for t in store.pending_trials(s, study_id):
            v = value(t)
            store.finish_trial(s, t.id, "w", train_loss=v, val_loss=v, val_error=v)
        assert store.finish_study(s, study_id, "w", "done")


# --- 1. a report storm does not stall other users --------------------------------------------------


def test_a_report_storm_does_not_stall_another_users_list(served, lite_url, tmp_path):
    """60 viewers of a running 3,000-trial study's report page at once, for at least 10 s and
    three pages each; meanwhile bob's ``GET /studies?limit=5`` keeps p99 under 250 ms. Before
    the cache every request built the report on the request thread pool, and bob waited as long
    as the builds took (tens of seconds)."""
    sid = seed_running_study(get_engine(lite_url), n_done=1500)
    base, as_ = served()
    token = as_["alice"]["Authorization"].split()[1]
    storm = start_report_viewers(base, f"/studies/{sid}/report.html", token, 60, tmp_path / "viewers.log")
    list_ms: list[float] = []
    try:
        time.sleep(1.0)  # the storm is under way
        with httpx.Client(base_url=base, timeout=120, headers=as_["bob"]) as http:
            while storm.alive():
                t0 = time.perf_counter()
                r = http.get("/studies", params={"limit": 5})
                list_ms.append((time.perf_counter() - t0) * 1e3)
                assert r.status_code == 200
                time.sleep(0.05)
        storm.popen.wait(timeout=30)
    finally:
        storm.stop()
    out = storm.output()
    assert "STATUSES" in out, out[-3000:]
    statuses = viewer_statuses(out)
    assert len(statuses) >= 180 and set(statuses) == {"200"}, out[-3000:]
    ordered = sorted(list_ms)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    print(f"report storm: {len(statuses)} report pages, {len(list_ms)} list requests, "
          f"list p50 {ordered[len(ordered) // 2]:.0f} ms, p99 {p99:.0f} ms, max {ordered[-1]:.0f} ms")
    assert len(list_ms) >= 50, len(list_ms)
    assert p99 < 250, f"list p99 {p99:.0f} ms under 60 report viewers (max {ordered[-1]:.0f} ms)"


# --- 2. per-user limits ----------------------------------------------------------------------------


def test_queue_limit_trial_epochs_and_priority(served):
    base, as_ = served(DECOUPLE_MAX_QUEUED_TRIALS="20", DECOUPLE_MAX_TRIAL_EPOCHS="100")
    with httpx.Client(base_url=base, timeout=30) as http:
        assert http.post("/studies", json=make_spec(epochs=8), headers=as_["alice"]).status_code == 201
        r = http.post("/studies", json=make_spec(epochs=8), headers=as_["alice"])
        assert r.status_code == 429, r.text
        assert r.json()["detail"] == ("alice has 12 trials queued or running; 12 more would make 24, "
                                      "over DECOUPLE_MAX_QUEUED_TRIALS=20")
        # Another user has a queue of their own; an admin has no limit.
        assert http.post("/studies", json=make_spec(epochs=8), headers=as_["bob"]).status_code == 201
        for _ in range(3):
            assert http.post("/studies", json=make_spec(epochs=8), headers=as_["root"]).status_code == 201
        # Trials x epochs per study: 12 x 9 = 108 > 100, a 422 naming epochs.
        r = http.post("/studies", json=make_spec(epochs=9), headers=as_["bob"])
        assert r.status_code == 422 and r.json()["detail"].startswith("epochs: 12 trials x 9 epochs = 108"), r.text
        # Priority above 0 is for admins.
        r = http.post("/studies", json=make_spec(epochs=2, priority=1), headers=as_["bob"])
        assert r.status_code == 403 and "priority" in r.json()["detail"], r.text
        assert http.post("/studies", json=make_spec(epochs=2, priority=-5), headers=as_["bob"]).status_code == 429
        assert http.post("/studies", json=make_spec(epochs=2, priority=1000), headers=as_["root"]).status_code == 201
        # A cancelled study no longer counts.
        mine = http.get("/studies", params={"owner": "alice"}, headers=as_["alice"]).json()["data"]
        assert http.post(f"/studies/{mine[0]['id']}/cancel", headers=as_["alice"]).status_code == 200
        assert http.post("/studies", json=make_spec(epochs=8), headers=as_["alice"]).status_code == 201


# --- 4. extend meets the limits; service-owned fields; integers in range ---------------------------


def edge_bound_study(engine, **overrides) -> str:
    """A done study whose best cell is on its grid's highest lr (so extend adds columns)."""
    study = make_study_with(engine, **overrides)
    finish(engine, study, lambda t: 1.0 - math.log10(t.lr) / 10)
    return study


def make_study_with(engine, owner: str = "alice", **overrides) -> str:
    spec = StudySpec.model_validate(make_spec(**overrides), context={"max_trials": None})
    with session_scope(engine) as s:
        return store.create_study(s, spec, owner=owner).id


def test_extend_meets_the_limits_of_a_submission(served, lite_url):
    engine = get_engine(lite_url)
    base, as_ = served(DECOUPLE_MAX_TRIALS="14", DECOUPLE_MAX_QUEUED_TRIALS="30")
    capped = edge_bound_study(engine)  # 12 trials; one more lr column is 4 more: 16 > 14
    near_top = edge_bound_study(engine, optimizers=[
        {"name": "sgd", "lr": {"min": 10.0, "max": 5000.0, "num": 2}, "wd": {"min": 1e-4, "max": 1e-3, "num": 2}}])
    with httpx.Client(base_url=base, timeout=30) as http:
        before = http.get(f"/studies/{capped}", headers=as_["alice"]).json()
        r = http.post(f"/studies/{capped}/extend", json={"steps": 1}, headers=as_["alice"])
        assert r.status_code == 422 and "DECOUPLE_MAX_TRIALS=14" in r.json()["detail"], r.text
        after = http.get(f"/studies/{capped}", headers=as_["alice"]).json()
        assert after == before  # nothing stored
        # 5000 x the axis's ratio (500) is far above the largest lr a submission may have.
        r = http.post(f"/studies/{near_top}/extend", json={"steps": 1}, headers=as_["alice"])
        assert r.status_code == 422 and r.json()["detail"].startswith("optimizers[0].lr.max:"), r.text
        assert len(http.get(f"/studies/{near_top}/trials", headers=as_["alice"]).json()["data"]) == 8
    # The owner's queue: 12 queued + the extended study's 2 new trials would be over 13.
    base2, _ = served(DECOUPLE_MAX_QUEUED_TRIALS="13")
    roomy = edge_bound_study(engine, seeds=[0])  # 6 trials, done
    with httpx.Client(base_url=base2, timeout=30) as http:
        assert http.post("/studies", json=make_spec(), headers=as_["alice"]).status_code == 201  # 12 queued
        r = http.post(f"/studies/{roomy}/extend", json={"steps": 1}, headers=as_["alice"])
        assert r.status_code == 429, r.text
        assert r.json()["detail"] == "alice has 14 trials queued or running; 0 more would make 14, over DECOUPLE_MAX_QUEUED_TRIALS=13"
        assert http.get(f"/studies/{roomy}", headers=as_["alice"]).json()["status"] == "done"
        r = http.post(f"/studies/{roomy}/extend", json={"steps": 1}, headers=as_["root"])  # admin: exempt
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("field, value", [
    ("origin", -1), ("origin", -(2**63) - 1), ("origin", -(2**31)), ("placement", "given"),
    ("placement", "extended"),
])
def test_service_owned_fields_are_422_naming_them(secure_client, field, value):
    """Both databases: the field is refused by name before anything is stored (no 500 for an
    origin below -2^63 on SQLite, no 422 from PostgreSQL's int4 with its own words)."""
    c = secure_client
    spec = make_spec()
    spec["optimizers"][0]["lr"][field] = value
    r = c.post("/studies", json=spec, headers=c.as_["alice"])
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == f"optimizers[0].lr.{field}", r.text
    assert c.get("/studies", headers=c.as_["alice"]).json()["count"] == 0


def test_every_integer_of_a_spec_is_range_checked(secure_client):
    c = secure_client
    for path in (("epochs",), ("batch_size",), ("priority",), ("auto_extend",), ("seeds", 0),
                 ("optimizers", 0, "lr", "num")):
        for value in (2**63, -(2**63) - 1, 10**30):
            spec = make_spec()
            target = spec
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
            r = c.post("/studies", json=spec, headers=c.as_["root"])
            assert r.status_code == 422, (path, value, r.text)
    for steps in (2**63, -1, 10**30):
        r = c.post(f"/studies/{'0' * 32}/extend", json={"steps": steps}, headers=c.as_["root"])
        assert r.status_code == 422, r.text


# --- 5 and 6. headers on every page; docs from packaged files ---------------------------------------


def test_security_headers_on_every_page_and_authenticated_answer(served, lite_url):
    engine = get_engine(lite_url)
    a, b = (make_study_with(engine, name=f"study {i}") for i in range(2))
    for sid in (a, b):
        finish(engine, sid, lambda t: 0.5 + math.log10(t.lr) ** 2 / 10)
    running = make_study_with(engine)
    base, as_ = served()
    with httpx.Client(base_url=base, timeout=60, headers=as_["alice"]) as http:
        pages = ["/", f"/studies/{a}/report.html", f"/studies/{running}/report.html",
                 f"/compare.html?ids={a},{b}", "/docs", "/redoc"]
        for path in pages:
            r = http.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), (path, r.status_code)
            csp = r.headers.get("content-security-policy", "")
            assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, (path, csp)
            assert "'unsafe-inline'" not in re.search(r"script-src[^;]*|$", csp).group(0), (path, csp)
            assert r.headers["x-frame-options"] == "DENY", path
            assert r.headers["referrer-policy"] == "no-referrer", path
            assert r.headers["x-content-type-options"] == "nosniff", path
            assert r.headers["cache-control"] == "no-store", path
            # No inline script a policy would have to allow: every <script> has a src, or (the
            # team page) its hash is in the policy.
            for attrs, body in re.findall(r"<script([^>]*)>(.*?)</script>", r.text, re.S):
                assert "src=" in attrs or path == "/", (path, body[:80])
        for path in ("/studies", f"/studies/{a}", f"/studies/{a}/report", f"/studies/{running}/report",
                     f"/studies/{a}/trials?format=csv", f"/compare?ids={a},{b}", "/optimizers", "/nope"):
            r = http.get(path)
            assert r.headers["x-content-type-options"] == "nosniff", path
            assert r.headers["cache-control"] == "no-store", path


def test_docs_are_served_from_packaged_files_under_a_csp(served):
    base, _ = served()
    with httpx.Client(base_url=base, timeout=30) as http:
        for page in ("/docs", "/redoc"):
            r = http.get(page)
            assert r.headers["content-security-policy"] == DOCS_CSP
            urls = re.findall(r'(?:src|href)="([^"]+)"', r.text)
            assert urls and all(u.startswith(ASSETS_PREFIX) for u in urls), urls
            for url in urls:
                asset = http.get(url)
                assert asset.status_code == 200 and len(asset.content) > 400, url
                assert asset.headers["x-content-type-options"] == "nosniff"
        assert "SwaggerUIBundle" in http.get(ASSETS_PREFIX + "swagger-ui-bundle.js").text
        assert http.get(ASSETS_PREFIX + "..%2Fconsts.py").status_code == 404
    cdn = re.compile(r"cdn\.|unpkg|jsdelivr", re.I)
    offending = [str(p) for p in (ROOT / "service").rglob("*") if p.is_file() and p.suffix in (".py", ".js", ".css", ".html")
                 and cdn.search(p.read_text(errors="replace"))]
    assert offending == []


def test_docs_and_redoc_render_in_chromium_with_no_request_leaving_the_server(served):
    """/docs and /redoc in a real browser (Debian's chromium) under their CSP: the page renders
    the API's title, no request goes anywhere but this server (any other is aborted and listed:
    an offline cluster would never answer it), and the console has no error (a CSP violation is
    one)."""
    import shutil

    from playwright.sync_api import sync_playwright

    from tests.service.test_report_browser import ARGS, CHROMIUM

    assert shutil.which(CHROMIUM), "chromium is missing: run scripts/ensure-test-services"
    base, _ = served()
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for path, rendered in (("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")):
                errors: list[str] = []
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))

                def route(r, path=path):
                    if r.request.url.startswith(base + "/") or r.request.url.startswith(("data:", "blob:")):
                        r.continue_()
                    else:
                        outside.append(f"{path}: {r.request.url}")
                        r.abort()

                page.route("**/*", route)
                page.goto(base + path, wait_until="load")
                title = page.locator(rendered).first
                title.wait_for(timeout=30_000)
                assert "Decouple Lab" in title.inner_text(), (path, title.inner_text())
                page.wait_for_timeout(500)  # late requests (fonts, validator badges) would show now
                assert errors == [], (path, errors)
                page.close()
        finally:
            browser.close()
    assert outside == []


# --- 7. slow clients, /health, Host ----------------------------------------------------------------


def test_slow_clients_are_dropped_within_the_request_timeout(served):
    base, _ = served(DECOUPLE_REQUEST_TIMEOUT="2")
    port = int(base.rsplit(":", 1)[1])
    sockets = []
    started = time.monotonic()
    try:
        for i in range(30):  # 20 trickle their headers, 10 their body, a byte per half second
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i < 20:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            else:
                s.sendall(b"POST /studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 500\r\n\r\n{")
            s.setblocking(False)
            sockets.append(s)
        closed: dict[int, float] = {}
        answers: dict[int, bytes] = {}
        for _ in range(40):  # at most 20 s
            for i, s in enumerate(sockets):
                if i in closed:
                    continue
                try:
                    s.send(b"X" if i < 20 else b" ")
                except OSError:
                    closed[i] = time.monotonic() - started
                    continue
                try:
                    data = s.recv(4096)
                    answers[i] = answers.get(i, b"") + data
                    if data == b"":
                        closed[i] = time.monotonic() - started
                except BlockingIOError:
                    pass
                except OSError:
                    closed[i] = time.monotonic() - started
            if len(closed) == len(sockets):
                break
            time.sleep(0.5)
        assert len(closed) == len(sockets), f"{len(sockets) - len(closed)} slow connections still open after 20 s"
        assert max(closed.values()) < 8, closed
        assert all(answers.get(i, b"").startswith(b"HTTP/1.1 408") for i in range(20)), answers
        # The server still answers everyone else.
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
    finally:
        for s in sockets:
            s.close()


def test_health_tells_no_driver_error_without_a_token(tmp_path):
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    proc, base = start_api(dead, tmp_path / "api.log", auth="required")
    try:
        r = httpx.get(f"{base}/health", timeout=30)
        assert r.status_code == 503 and r.json() == UNAVAILABLE, r.text
        r = httpx.get(f"{base}/studies", headers={"Authorization": "Bearer x"}, timeout=30)
        assert r.status_code == 503 and r.json() == {"detail": UNAVAILABLE["detail"]}, r.text
        assert "connection" in proc.output().lower()  # the reason is in the log
    finally:
        proc.stop()


def test_host_header_is_checked(served):
    base, as_ = served(auth="off")  # default: loopback names only
    port = base.rsplit(":", 1)[1]
    for host, code in [(f"127.0.0.1:{port}", 200), (f"localhost:{port}", 200), ("rebind.example", 400),
                       (f"evil.example:{port}", 400)]:
        assert httpx.get(f"{base}/studies", headers={"Host": host}, timeout=10).status_code == code, host
    base, as_ = served()  # auth required: any name (a rebinding page has no token)
    assert httpx.get(f"{base}/studies", headers={"Host": "api.team.example", **as_["bob"]}, timeout=10).status_code == 200
    base, as_ = served(DECOUPLE_ALLOWED_HOSTS="api.team.example, 127.0.0.1")
    assert httpx.get(f"{base}/studies", headers={"Host": "api.team.example", **as_["bob"]}, timeout=10).status_code == 200
    assert httpx.get(f"{base}/studies", headers={"Host": "other.example", **as_["bob"]}, timeout=10).status_code == 400


# --- 3. a local Ray listens on loopback only --------------------------------------------------------


def listening(pids: set[int]) -> list[tuple[int, str, str, int]]:
    import psutil

    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for c in proc.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    found.append((pid, proc.name(), c.laddr.ip, c.laddr.port))
        except psutil.Error:
            pass
    return found


def tree(pid: int, marker: str) -> set[int]:
    """The process and its descendants, and any process naming ``marker`` (Ray's own, adopted
    by init when their parent exits)."""
    import psutil

    out: set[int] = set()
    try:
        root = psutil.Process(pid)
        out = {root.pid} | {c.pid for c in root.children(recursive=True)}
    except psutil.Error:
        pass
    for p in psutil.process_iter(["cmdline"]):
        if marker in " ".join(p.info["cmdline"] or []):
            out.add(p.pid)
    return out


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1") or ip.startswith("::ffff:127.")


@pytest.mark.slow
def test_a_local_ray_listens_on_loopback_only(lite_url, tmp_path):
    """``decouple worker`` without RAY_ADDRESS starts a local Ray: every listening socket of the
    worker's process tree (GCS, raylet, workers, agents) is on loopback."""
    engine = get_engine(lite_url)
    sid = make_study_with(engine, task="synthetic", epochs=30)
    data = tmp_path / "data"
    worker = Process([PYTHON, "-m", "service.cli", "worker", "--once"],
                     env=clean_env(DECOUPLE_DATABASE_URL=lite_url, DECOUPLE_DATA_DIR=str(data)),
                     log=tmp_path / "worker.log")
    try:
        seen: list[tuple[int, str, str, int]] = []

        def ray_up() -> bool:
            assert worker.alive() or seen, worker.output()[-3000:]
            found = listening(tree(worker.pid, str(data.resolve())))
            seen.extend(f for f in found if f not in seen)
            return any(name == "gcs_server" for _, name, _, _ in found) and any(
                name == "raylet" for _, name, _, _ in found)

        wait_for("a local Ray's GCS and raylet", ray_up, timeout=120, interval=0.5)
        for _ in range(10):  # its workers and agents come up while the study runs
            seen.extend(f for f in listening(tree(worker.pid, str(data.resolve()))) if f not in seen)
            time.sleep(0.5)
        outside = [f for f in seen if not is_loopback(f[2])]
        assert outside == [], f"listening outside loopback: {outside}"
        assert len(seen) >= 3, seen
        worker.popen.wait(timeout=300)
        with session_scope(engine) as s:
            assert store.get_study(s, sid).status == "done", worker.output()[-3000:]
    finally:
        worker.stop()
