"""The database goes away: idle connections dropped by the server, and a whole outage.

* **Idle connections** (the machine's PostgreSQL, a schema of this test's own): the server
  closes the API's idle pooled connections, by ``idle_session_timeout`` and by
  ``pg_terminate_backend`` (only on connections carrying this test's ``application_name``);
  the next requests all answer 200: the pool pre-pings and reconnects.
* **Outage** (a private PostgreSQL cluster, so the shared server other tests use is never
  stopped): a real ``decouple serve`` and a real ``decouple worker`` (local Ray, 4 s lease) run a
  study; the cluster is stopped while the study runs. Meanwhile ``/health`` and the other
  endpoints answer 503 with the reason, never 500, and the worker stays up, retrying. The
  cluster comes back, and the study completes with every trial done exactly once, every epoch of
  every curve recorded, and every value what the analytic task says it must be.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from service.api import create_app
from service.config import Settings
from service.db import dispose_engines, upgrade_to_head
from service.schemas import axis_values
from tests.conftest import PG_URL, _pg_conninfo, _pg_execute, make_spec
from tests.reliability.conftest import make_tokens
from tests.reliability.servers import PYTHON, PrivatePostgres, Process, clean_env, start_api, wait_for
from workers.tasks import SyntheticTask

pytestmark = pytest.mark.pg

# --- idle connections ----------------------------------------------------------------------------


@pytest.fixture
def idle_pg(tmp_path):
    """(url, application_name) of a fresh migrated schema on the shared server whose sessions
    the server itself ends after 1 s idle; dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    app_name = f"decouple-idle-{uuid.uuid4().hex[:8]}"
    _pg_execute(f'CREATE SCHEMA "{schema}"')
    url = make_url(PG_URL).update_query_dict({
        "options": f"-csearch_path={schema} -cidle_session_timeout=1000",
        "application_name": app_name,
    }).render_as_string(hide_password=False)
    try:
        upgrade_to_head(url)
        yield url, app_name
    finally:
        dispose_engines(url)
        _pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _app_sessions(app_name: str) -> list[int]:
    with psycopg.connect(_pg_conninfo(), autocommit=True, connect_timeout=5) as conn:
        return [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app_name,)
        )]


def test_api_serves_after_postgres_drops_its_idle_connections(idle_pg, tmp_path):
    url, app_name = idle_pg
    settings = Settings(database_url=url, auth="required", data_dir=tmp_path / "data")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        auth = {"Authorization": f"Bearer {make_tokens(client.app.state.engine)['alice']}"}
        sid = client.post("/studies", json=make_spec(), headers=auth).json()["id"]

        def burst(n: int) -> list[int]:
            """n concurrent requests, so the pool holds several connections."""
            with ThreadPoolExecutor(4) as pool:
                return list(pool.map(lambda _: client.get(f"/studies/{sid}", headers=auth).status_code, range(n)))

        assert burst(8) == [200] * 8
        pooled = wait_for("the API's pooled connections", lambda: _app_sessions(app_name), timeout=10)
        assert len(pooled) >= 1
        # 1. The server ends them itself (idle_session_timeout = 1 s).
        wait_for("the server to end the idle sessions", lambda: not _app_sessions(app_name), timeout=15)
        assert burst(8) == [200] * 8
        # 2. An administrator (or a proxy) kills them.
        assert _app_sessions(app_name)
        with psycopg.connect(_pg_conninfo(), autocommit=True, connect_timeout=5) as conn:
            killed = conn.execute(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s) t", (app_name,)
            ).fetchone()[0]
        assert killed >= 1
        assert burst(8) == [200] * 8
        assert client.post("/studies", json=make_spec(), headers=auth).status_code == 201
        assert client.get("/health").json()["status"] == "ok"


# --- a database outage ---------------------------------------------------------------------------

SPEC = {
    "name": "outage", "task": "synthetic", "epochs": 6, "batch_size": 64, "schedule": {"name": "cosine"},
    "optimizers": [
        {"name": "adamw", "lr": {"min": 1e-4, "max": 1e-1, "num": 4}, "wd": {"min": 1e-4, "max": 1.0, "num": 4}},
    ],
    "seeds": [0, 1],
}
TRIALS = 4 * 4 * 2


@pytest.fixture
def private_pg():
    """A PostgreSQL cluster of this test alone (stopped and removed however the test ends)."""
    root = Path(tempfile.mkdtemp(prefix="decouple-pg-"))
    pg = PrivatePostgres(root)
    try:
        pg.start()
        upgrade_to_head(pg.url)
        dispose_engines(pg.url)
        yield pg
    finally:
        dispose_engines(pg.url)
        pg.destroy()


def _query(pg: PrivatePostgres, sql: str, *args):
    with psycopg.connect(pg.conninfo, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


def _execute(pg: PrivatePostgres, sql: str) -> None:
    with psycopg.connect(pg.conninfo, autocommit=True) as conn:
        conn.execute(sql)


def expected_final(trial: dict) -> float:
    """The analytic task's final val_error for a trial (what the worker must have stored)."""
    from workers.tasks import get_task

    task = get_task("synthetic")
    assert isinstance(task, SyntheticTask)
    return task.outcome(trial["optimizer"], trial["lr"], trial["wd"], trial["seed"], SPEC["epochs"] - 1, SPEC["epochs"]).val_error


REFUSE_EPOCHS = """
CREATE FUNCTION refuse_epochs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'writes refused (failover in progress)' USING ERRCODE = '08006';
END $$;
CREATE TRIGGER refuse_epochs BEFORE INSERT ON curve_points FOR EACH ROW EXECUTE FUNCTION refuse_epochs();
"""


def test_database_outage_answers_503_and_loses_nothing(private_pg):
    """Two faults, one worker (its Ray start-up is the expensive part):

    1. The blocks' writes are refused with a connection failure (SQLSTATE 08006, what a client
       sees during a failover) while the worker's own queries go through: Ray's retries run out,
       and the study must go back to the queue with its trials pending, not be finished as done
       with every trial failed.
    2. The whole server stops mid-study, for a few seconds: 503s, then the study completes.
    """
    pg = private_pg
    home = Path(tempfile.mkdtemp(prefix="dcr-"))  # short: Ray's socket paths must fit 107 bytes
    from service.db import make_engine, session_scope
    from service.tokens import create_token

    engine = make_engine(pg.url)
    with session_scope(engine) as s:
        token = create_token(s, "alice")
    engine.dispose()
    auth = {"Authorization": f"Bearer {token}"}
    _execute(pg, REFUSE_EPOCHS)

    worker = Process(
        [PYTHON, "-m", "service.cli", "worker"],
        env=clean_env(DECOUPLE_DATABASE_URL=pg.url, DECOUPLE_LEASE_SECONDS="4", DECOUPLE_DATA_DIR=str(home)),
        log=home / "worker.log",
    )
    api = None
    try:
        api, base = start_api(pg.url, home / "api.log")
        http = httpx.Client(base_url=base, timeout=15)
        sid = http.post("/studies", json=SPEC, headers=auth).json()["id"]

        # 1. Writes refused: the first attempt ends, the study is back in the queue, nothing failed.
        def first_attempt_over():
            status, attempts = _query(pg, "SELECT status, attempts FROM studies WHERE id = %s", sid)[0]
            return status in ("done", "failed") or (attempts >= 1 and status == "queued")
        wait_for("the first attempt to end", first_attempt_over, timeout=150, interval=0.2)
        status, failed = _query(pg, "SELECT status, (SELECT count(*) FROM trials WHERE study_id = %s "
                                    "AND status = 'failed') FROM studies WHERE id = %s", sid, sid)[0]
        assert (status, failed) == ("queued", 0), worker.output()[-3000:]
        assert "lost the database" in worker.output()
        _execute(pg, "DROP TRIGGER refuse_epochs ON curve_points")

        # 2. The server stops while the study runs again.
        wait_for("the first epoch on record",
                 lambda: _query(pg, "SELECT count(*) FROM curve_points")[0][0] > 0, timeout=150, interval=0.05)
        pg.stop()
        stopped_at = time.monotonic()
        answers = []
        while time.monotonic() - stopped_at < 5:
            for method, path, body in [
                ("GET", "/health", None), ("GET", "/studies", None), ("GET", f"/studies/{sid}", None),
                ("GET", f"/studies/{sid}/report", None), ("POST", "/studies", make_spec()),
                ("POST", f"/studies/{sid}/cancel", None),
            ]:
                r = http.request(method, path, json=body, headers=auth)
                answers.append((method, path, r.status_code, r.json()))
            time.sleep(0.5)
        for method, path, status, body in answers:
            assert status == 503, (method, path, status, body)
            if path == "/health":
                assert body == {"status": "unavailable", "database": "unavailable",
                                "detail": "database unavailable: the reason is in the server's log"}
                continue
            assert body["detail"].startswith("database unavailable: "), body
        assert worker.alive(), worker.output()[-3000:]
        pg.start()
        assert http.get("/health").json()["status"] == "ok"

        wait_for("the study to finish after the outage",
                 lambda: _query(pg, "SELECT status FROM studies WHERE id = %s", sid)[0][0] in ("done", "failed"),
                 timeout=180, interval=0.5)
        study = http.get(f"/studies/{sid}", headers=auth).json()
        assert study["status"] == "done", (study, worker.output()[-3000:])
        assert study["progress"].items() >= {"trials_total": TRIALS, "trials_done": TRIALS, "trials_failed": 0}.items()
        trials = http.get(f"/studies/{sid}/trials", headers=auth).json()["data"]
        cells = {(t["optimizer"], t["lr_index"], t["wd_index"], t["seed"]) for t in trials}
        assert len(trials) == len(cells) == TRIALS  # each trial exactly once
        for opt in SPEC["optimizers"]:
            lrs, wds = axis_values(opt["lr"]), axis_values(opt["wd"])
            assert {(t["lr"], t["wd"]) for t in trials if t["optimizer"] == opt["name"]} == {(a, b) for a in lrs for b in wds}
        for t in trials:
            want = expected_final(t)
            assert t["status"] == "done", t
            if math.isnan(want):  # the task diverges far above the optimum: stored as NaN, published as null
                assert t["diverged"] and t["val_error"] is None, t
            else:
                assert t["val_error"] == want, t
        epochs = _query(pg, "SELECT trial_id, count(*), min(epoch), max(epoch) FROM curve_points "
                            "JOIN trials ON trials.id = trial_id WHERE study_id = %s GROUP BY trial_id", sid)
        assert sorted(e[1:] for e in epochs) == [(SPEC["epochs"], 0, SPEC["epochs"] - 1)] * TRIALS
        report = http.get(f"/studies/{sid}/report", headers=auth).json()
        assert report["partial"] is False and [o["name"] for o in report["optimizers"]] == ["adamw"]
    finally:
        worker.stop()
        if api is not None:
            api.stop()
        shutil.rmtree(home, ignore_errors=True)
