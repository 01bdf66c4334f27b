"""The API the team's pages build on (issue 20): ``POST /studies?dry_run=true``, ``GET /atlas``,
the exports, and the report cache's key, in-process on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, event, update

from service import store
from service.api import create_app
from service.db import session_scope
from service.models import Study
from service.report_style import REPORT_CSP, csp_hash
from service.tokens import create_token
from tests.conftest import make_spec
from tests.service.test_api import finish_all as play_worker


def finish_all(engine, study_id: str, value=lambda t: 0.5, *, seconds: float | None = None) -> None:
    """``tests.service.test_api.finish_all`` (play a worker, every trial ``value(trial)``), then,
    with ``seconds``, set the study's wall time (finished_at - started_at) to exactly that."""
    play_worker(engine, study_id, value)
    if seconds is not None:
        with session_scope(engine) as s:
            study = store.get_study(s, study_id)
            s.execute(update(Study).where(Study.id == study_id)
                      .values(started_at=study.finished_at - timedelta(seconds=seconds)))


# --- POST /studies?dry_run=true ------------------------------------------------------------------


def test_dry_run_plans_without_storing_and_estimates_from_measured_throughput(client, engine):
    r = client.post("/studies", params={"dry_run": "true"}, json=make_spec())
    assert r.status_code == 200, r.text
    plan = r.json()
    assert set(plan) == {"dry_run", "trials_total", "trial_epochs_total", "estimated_seconds", "estimate",
                         "optimizers", "spec", "plugins"}
    assert plan["plugins"] is None  # built-ins only (tests/service/test_plugins.py: a plugin study's)
    assert (plan["dry_run"], plan["trials_total"], plan["trial_epochs_total"]) == (True, 12, 24)
    assert plan["estimated_seconds"] is None and plan["estimate"]["trial_epochs_per_second"] is None
    assert plan["estimate"]["basis"].startswith("no study of task digits_mlp has finished")
    (opt,) = plan["optimizers"]
    assert opt["name"] == "adamw" and opt["trials"] == 12 and opt["seeds"] == [0, 1]
    assert opt["lr"] == pytest.approx([1e-3, 1e-2, 1e-1], rel=1e-12) and opt["wd"] == pytest.approx([1e-4, 1e-2])
    assert opt["placement"] is None
    assert plan["spec"]["batch_size"] == 64 and plan["spec"]["optimizers"][0]["lr"]["num"] == 3
    assert client.get("/studies").json()["count"] == 0  # nothing stored

    # Two done studies of the task: 24 trial-epochs in 12 s and 48 (4 epochs) in 20 s: pooled
    # 72 trial-epochs in 32 s = 2.25 per second. A study of another task does not count.
    a = client.post("/studies", json=make_spec()).json()["id"]
    finish_all(engine, a, seconds=12.0)
    b = client.post("/studies", json=make_spec(epochs=4)).json()["id"]
    finish_all(engine, b, seconds=20.0)
    other = client.post("/studies", json=make_spec(task="synthetic")).json()["id"]
    finish_all(engine, other, seconds=1.0)
    plan = client.post("/studies", params={"dry_run": "true"}, json=make_spec(epochs=3)).json()
    est = plan["estimate"]
    assert (est["studies"], est["trial_epochs_measured"], est["wall_seconds_measured"]) == (2, 72, 32.0)
    assert est["trial_epochs_per_second"] == 2.25
    assert plan["trial_epochs_total"] == 36 and plan["estimated_seconds"] == 16.0
    assert "72 trial-epochs in 32 s" in est["basis"] and "digits_mlp" in est["basis"]
    assert client.get("/studies").json()["count"] == 3


def test_dry_run_describes_auto_axes_and_auto_seeds(client):
    spec = make_spec(optimizers=[{"name": "sgdw", "lr": "auto", "wd": {"min": 1e-5, "max": 1e-1, "num": 5}},
                                 {"name": "adamw"}],
                     seeds={"auto": True, "min": 2, "max": 4})
    plan = client.post("/studies?dry_run=true", json=spec).json()
    sgdw, adamw = plan["optimizers"]
    assert sgdw["lr"] is None and len(sgdw["wd"]) == 5
    assert sgdw["placement"]["lr"] == "auto" and sgdw["placement"]["wd"] == "given"
    assert sgdw["trials"] == sgdw["placement"]["num"]["lr"] * 5 * 4
    assert sgdw["seeds"] == {"auto": True, "min": 2, "max": 4, "start": [0, 1]}
    assert adamw["placement"] is None and adamw["trials"] == len(adamw["lr"]) * len(adamw["wd"]) * 4
    assert plan["trials_total"] == sgdw["trials"] + adamw["trials"]
    assert plan["trials_total"] == client.post("/studies", json=spec).json()["trials_total"]


@pytest.mark.parametrize("overrides", [
    {"optimizers": [{"name": "adagrad"}]},
    {"seeds": [3, 1, 3]},
    {"colour": "red"},
    {"epochs": 10_000, "optimizers": [{"name": "adam", "lr": {"min": 1e-4, "max": 1, "num": 64},
                                        "wd": {"min": 1e-4, "max": 1, "num": 64}}]},
])
def test_dry_run_gives_the_same_422_as_a_submission(client, overrides):
    spec = make_spec(**overrides)
    dry, real = client.post("/studies?dry_run=true", json=spec), client.post("/studies", json=spec)
    assert dry.status_code == real.status_code == 422
    assert dry.json() == real.json()
    assert client.get("/studies").json()["count"] == 0


def test_dry_run_gives_the_same_401_403_429_as_a_submission(settings, engine):
    with session_scope(engine) as s:
        alice = {"Authorization": f"Bearer {create_token(s, 'alice')}"}
    app = create_app(settings.model_copy(update={"auth": "required", "max_queued_trials": 20}))
    with TestClient(app) as c:
        for params in ({"dry_run": "true"}, {}):
            r = c.post("/studies", params=params, json=make_spec())
            assert (r.status_code, r.json()["detail"]) == (401, "authentication required: send 'Authorization: Bearer <token>'")
        assert c.get("/atlas").status_code == 401 and c.get("/atlas", headers=alice).status_code == 200
        dry = c.post("/studies?dry_run=true", json=make_spec(priority=5), headers=alice)
        real = c.post("/studies", json=make_spec(priority=5), headers=alice)
        assert dry.status_code == real.status_code == 403 and dry.json() == real.json()
        assert c.post("/studies", json=make_spec(), headers=alice).status_code == 201  # 12 of 20 queued
        dry = c.post("/studies?dry_run=true", json=make_spec(), headers=alice)
        real = c.post("/studies", json=make_spec(), headers=alice)
        assert dry.status_code == real.status_code == 429 and dry.json() == real.json()
        assert c.post("/studies?dry_run=true", json=make_spec(seeds=[0]), headers=alice).status_code == 200
        assert c.get("/studies", headers=alice).json()["count"] == 1


# --- GET /atlas ----------------------------------------------------------------------------------

GRID5 = {"lr": {"min": 1e-4, "max": 1e0, "num": 5}, "wd": {"min": 1e-5, "max": 1e-1, "num": 5}}


def separable(t) -> float:
    """Additive in log10 lr and log10 wd: the best wd is the same at every lr."""
    return 0.05 + (math.log10(t.lr) + 2) ** 2 / 20 + (math.log10(t.wd) + 3) ** 2 / 40 + 0.002 * t.seed


def coupled(t) -> float:
    """Only lr * wd matters (ridge slope -1)."""
    return 0.05 + (math.log10(t.lr) + math.log10(t.wd) + 5) ** 2 / 20 + 0.01 * (math.log10(t.lr) + 2) ** 2 + 0.002 * t.seed


def done_study(engine, owner: str, value, *, report: bool = True, **overrides) -> tuple[str, dict | None]:
    """A done study of ``owner`` whose trials score ``value(trial)``; its report stored (as a
    worker does when it finishes one) unless ``report=False``."""
    from tests.conftest import make_study

    sid = make_study(engine, owner=owner, **{"seeds": [0, 1], **overrides}).id
    finish_all(engine, sid, value)
    if not report:
        return sid, None
    from service.report import study_report

    return sid, study_report(engine, sid)


def _expected(report: dict, name: str) -> dict:
    e = next(o for o in report["optimizers"] if o["name"] == name)
    d = e["decision"]
    return {"verdict": d["verdict"], "ridge_slope": d["ridge_slope"], "ridge_slope_ci": d["ridge_slope_ci"],
            "best": {k: e["best"][k] for k in ("lr", "wd", "value")}, "metric": report["metric"],
            # tau in epochs only (a task without a train size has it in iterations: not shown)
            "best_tau_epochs": p["best_tau"] if (p := e["parametrizations"] or {}).get("tau_unit") == "epochs" else None,
            "seeds": max(max(r) for r in e["grid"]["seeds"])}


def mine_tau(report: dict) -> float | None:
    return _expected(report, "adamw")["best_tau_epochs"]


def test_atlas_one_row_per_task_and_optimizer_newest_study_first(client, engine):
    a, rep_a = done_study(engine, "alice", separable, name="a",
                          optimizers=[{"name": "adamw", **GRID5}, {"name": "sgd", **GRID5}])
    b, rep_b = done_study(engine, "bob", coupled, name="b", optimizers=[{"name": "adamw", **GRID5}])
    c, rep_c = done_study(engine, "alice", separable, name="c", task="synthetic",
                          optimizers=[{"name": "sgdw", **GRID5}])
    unreported, _ = done_study(engine, "carol", separable, report=False, name="d")
    client.post("/studies", json=make_spec(name="queued"))  # not done: not in the atlas

    body = client.get("/atlas").json()
    assert set(body) == {"data", "count", "pending"} and body["pending"] == [unreported]
    assert [(r["task"], r["optimizer"]) for r in body["data"]] == [
        ("digits_mlp", "adamw"), ("digits_mlp", "sgd"), ("synthetic", "sgdw")]
    assert body["count"] == 3
    adamw, sgd, sgdw = body["data"]
    assert set(adamw) == {"task", "optimizer", "base", "convention", "verdict", "ridge_slope", "ridge_slope_ci",
                          "best", "metric", "best_tau_epochs", "seeds", "study", "finished_at", "studies",
                          "owners", "n_studies", "verdicts"}
    # the newest study's numbers, exactly as its report has them; every study listed, newest first
    assert {k: adamw[k] for k in _expected(rep_b, "adamw")} == _expected(rep_b, "adamw")
    assert (adamw["study"], adamw["studies"], adamw["owners"], adamw["n_studies"]) == (b, [b, a], ["alice", "bob"], 2)
    v_a, v_b = _expected(rep_a, "adamw")["verdict"], _expected(rep_b, "adamw")["verdict"]
    assert adamw["verdicts"] == ({v_a: 2} if v_a == v_b else {v_a: 1, v_b: 1})
    assert (adamw["base"], adamw["convention"]) == ("adam", "schedule")
    assert {k: sgd[k] for k in _expected(rep_a, "sgd")} == _expected(rep_a, "sgd")
    assert (sgd["studies"], sgd["base"], sgd["convention"]) == ([a], "sgd", "l2")
    assert {k: sgdw[k] for k in _expected(rep_c, "sgdw")} == _expected(rep_c, "sgdw")
    assert v_a == "separable" and _expected(rep_b, "adamw")["ridge_slope"] < -0.5  # the surfaces read as built
    assert mine_tau(rep_a) is not None and sgd["best_tau_epochs"] is None  # L2 has no tau

    # filters: exact match; owner keeps only that owner's studies
    assert [r["optimizer"] for r in client.get("/atlas", params={"base": "sgd"}).json()["data"]] == ["sgd", "sgdw"]
    assert [r["optimizer"] for r in client.get("/atlas", params={"convention": "schedule"}).json()["data"]] == ["adamw", "sgdw"]
    assert [r["task"] for r in client.get("/atlas", params={"task": "synthetic"}).json()["data"]] == ["synthetic"]
    mine = client.get("/atlas", params={"owner": "alice", "task": "digits_mlp"}).json()["data"]
    assert [(r["optimizer"], r["studies"]) for r in mine] == [("adamw", [a]), ("sgd", [a])]
    assert {k: mine[0][k] for k in _expected(rep_a, "adamw")} == _expected(rep_a, "adamw")
    assert client.get("/atlas", params={"owner": "nobody"}).json()["data"] == []
    assert client.get("/atlas", params={"verdict": "separable"}).status_code == 422  # not a filter

    # A study whose report is dropped (extended, queued again) leaves the atlas until its new
    # report; the older study answers meanwhile. Deleting a study deletes its entries.
    with session_scope(engine) as s:
        s.execute(update(Study).where(Study.id == b).values(report=None, report_computed_at=None))
    adamw = client.get("/atlas", params={"task": "digits_mlp"}).json()["data"][0]
    assert (adamw["study"], adamw["studies"]) == (a, [a])
    from service.report import study_report

    study_report(engine, b)
    assert client.get("/atlas").json()["data"][0]["studies"] == [b, a]
    assert client.delete(f"/studies/{a}").status_code == 200
    assert [r["studies"] for r in client.get("/atlas").json()["data"]] == [[b], [c]]


def test_atlas_reads_one_snapshot_when_a_study_is_deleted_between_its_queries(client, engine):
    """The atlas reads its entries, then the newest entry of each (task, optimizer): a study
    deleted in between (another request) must not leave a member without its newest entry. On
    PostgreSQL's autocommit reads that was a KeyError, a 500; both queries now see one snapshot."""
    a, _ = done_study(engine, "alice", separable, optimizers=[{"name": "adamw", **GRID5}])
    b, _ = done_study(engine, "bob", separable, optimizers=[{"name": "adamw", **GRID5}])
    fired: list[str] = []

    def delete_b_first(conn, cursor, statement, parameters, context, executemany):
        if not fired and "atlas_entries.study_id IN" in statement:  # the second query, about to run
            fired.append(statement)
            with session_scope(engine) as s:  # another connection, committed before it runs
                s.execute(delete(Study).where(Study.id == b))

    event.listen(engine, "before_cursor_execute", delete_b_first)
    try:
        body = client.get("/atlas").json()
    finally:
        event.remove(engine, "before_cursor_execute", delete_b_first)
    assert fired
    assert [(r["study"], r["studies"]) for r in body["data"]] == [(b, [b, a])]  # as it was when it began
    assert [(r["study"], r["studies"]) for r in client.get("/atlas").json()["data"]] == [(a, [a])]


def test_atlas_pending_follows_the_filters_and_is_capped(client, engine, monkeypatch):
    from service.api.routes import atlas

    a, _ = done_study(engine, "alice", separable, report=False, optimizers=[{"name": "adamw", **GRID5}])
    b, _ = done_study(engine, "bob", separable, report=False, optimizers=[{"name": "sgd", **GRID5}])
    c, _ = done_study(engine, "alice", separable, report=False, task="synthetic",
                      optimizers=[{"name": "sgdw", **GRID5}])

    def pending(**params):
        return client.get("/atlas", params=params).json()["pending"]

    assert pending() == [c, b, a]  # newest first
    assert pending(owner="alice") == [c, a]
    assert pending(task="digits_mlp") == [b, a]
    assert pending(base="sgd") == [c, b]
    assert pending(base="sgd", convention="l2") == [b]
    assert pending(owner="bob", task="synthetic") == []
    monkeypatch.setattr(atlas, "PENDING_LIMIT", 2)
    assert pending() == [c, b]


def test_a_worker_stores_the_report_of_a_study_it_finished_so_the_atlas_shows_it(client, engine, caplog):
    from workers.worker import store_final_report

    sid, _ = done_study(engine, "alice", separable, report=False, optimizers=[{"name": "adamw", **GRID5}])
    assert client.get("/atlas").json() == {"data": [], "count": 0, "pending": [sid]}
    store_final_report(engine, sid)
    body = client.get("/atlas").json()
    assert (body["pending"], [r["studies"] for r in body["data"]]) == ([], [[sid]])
    store_final_report(engine, "0" * 32)  # no such study: logged, not raised
    assert "could not store the report of study " + "0" * 32 in caplog.text


def test_migration_0003_backfills_the_atlas_and_the_epoch_counters(empty_db_url):
    """A database at 0001 with a done study whose report is stored (made here at head, then
    taken down to 0001, which keeps the report and drops the new table and column) gets its
    atlas entries and its epoch counters from the upgrade."""
    from alembic import command
    from sqlalchemy import func, select

    from service.db import alembic_config, make_engine, upgrade_to_head
    from service.store import atlas_summary
    from tests.conftest import make_study

    upgrade_to_head(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        sid = make_study(engine, owner="alice", optimizers=[{"name": "adamw", **GRID5}, {"name": "sgd", **GRID5}]).id
        finish_all(engine, sid, separable)
        queued = make_study(engine).id
        with session_scope(engine) as s:
            store.record_epochs(s, [{"trial_id": t.id, "epoch": e, "val_error": 0.5}
                                    for t in store.list_trials(s, sid)[:7] for e in range(3)])
        from service.report import study_report

        report = study_report(engine, sid)
        command.downgrade(alembic_config(empty_db_url), "0001")
        engine.dispose()
        command.upgrade(alembic_config(empty_db_url), "0003")
        with session_scope(engine) as s:
            members, newest = store.atlas_rows(s)
            counters = dict(s.execute(select(Study.id, Study.epochs_recorded)).all())
            assert s.scalar(select(func.count()).select_from(Study).where(Study.report.is_not(None))) == 1
        expected = atlas_summary(report)
        assert [tuple(m) for m in members] == [("digits_mlp", e["optimizer"], sid, "alice", e["verdict"])
                                               for e in expected]
        assert [e["optimizer"] for e in expected] == ["adamw", "sgd"]
        for want in expected:
            row = newest[(sid, want["optimizer"])]
            assert {k: getattr(row, k) for k in want} == want
        assert counters == {sid: 21, queued: 0}
    finally:
        engine.dispose()


# --- exports -------------------------------------------------------------------------------------


def test_trials_as_parquet_have_the_csv_columns_typed(client, engine):
    import io

    import pyarrow.parquet as pq

    from service.api.routes.studies import CSV_COLUMNS

    sid = client.post("/studies", json=make_spec()).json()["id"]
    with session_scope(engine) as s:
        first, second = store.list_trials(s, sid)[:2]
        store.finish_trial(s, first.id, "w", train_loss=math.nan, val_loss=math.inf, val_error=0.9,
                           diverged=True, diverged_epoch=2)
        store.finish_trial(s, second.id, "w", train_loss=0.25, val_loss=0.5, val_error=0.125)
    r = client.get(f"/studies/{sid}/trials", params={"format": "parquet"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.parquet"
    assert r.headers["content-disposition"] == f'attachment; filename="study-{sid}-trials.parquet"'
    table = pq.read_table(io.BytesIO(r.content))
    assert table.column_names == list(CSV_COLUMNS) and table.num_rows == 12
    rows = table.to_pylist()
    assert math.isnan(rows[0]["train_loss"]) and rows[0]["val_loss"] == math.inf and rows[0]["val_error"] == 0.9
    assert (rows[0]["diverged"], rows[0]["diverged_epoch"], rows[0]["status"]) == (True, 2, "done")
    assert (rows[1]["train_loss"], rows[1]["val_loss"], rows[1]["val_error"]) == (0.25, 0.5, 0.125)
    assert rows[2]["status"] == "queued" and rows[2]["val_error"] is None and rows[2]["finished_at"] is None
    assert rows[1]["finished_at"].tzinfo is not None
    assert [row["lr"] for row in rows] == [t["lr"] for t in client.get(f"/studies/{sid}/trials").json()["data"]]
    assert str(table.schema.field("lr").type) == "double" and str(table.schema.field("seed").type) == "int64"
    assert client.get(f"/studies/{sid}/trials", params={"format": "xlsx"}).status_code == 422


def test_each_figure_as_png_and_svg_and_the_report_as_a_download(client, engine):
    sid, _ = done_study(engine, "local", separable, report=False,
                        optimizers=[{"name": "adamw", **GRID5}, {"name": "sgd:lr", **GRID5}])
    with session_scope(engine) as s:  # curves for the best cell: epochs of every trial
        store.record_epochs(s, [{"trial_id": t.id, "epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.0,
                                 "val_error": 0.5} for t in store.list_trials(s, sid) for e in range(3)])
    report = client.get(f"/studies/{sid}/report").json()
    assert [e["name"] for e in report["optimizers"]] == ["adamw", "sgd:lr"]
    for opt in ("adamw", "sgd:lr"):
        for name in ("heatmap", "curves"):
            png = client.get(f"/studies/{sid}/figures/{opt}/{name}.png")
            assert png.status_code == 200 and png.headers["content-type"] == "image/png", png.text
            assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
            safe = opt.replace(":", "_")
            assert png.headers["content-disposition"] == f'inline; filename="study-{sid}-{safe}-{name}.png"'
            svg = client.get(f"/studies/{sid}/figures/{opt}/{name}.svg", params={"download": 1})
            assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
            assert b"<svg" in svg.content[:1000] and b"<script" not in svg.content and b"http" not in svg.content.replace(
                b"http://www.w3.org", b"").replace(b"http://purl.org", b"").replace(b"http://creativecommons.org", b"").replace(
                b"https://matplotlib.org", b"")
            assert svg.headers["content-disposition"].startswith("attachment;")
    # the same bytes as the page's own heat map (a data: URI there)
    from service.report import heatmap_png

    entry = report["optimizers"][0]
    png = client.get(f"/studies/{sid}/figures/adamw/heatmap.png").content
    import base64

    assert heatmap_png(entry, report["metric"], report["chance"]) == "data:image/png;base64," + base64.b64encode(png).decode()

    r = client.get(f"/studies/{sid}/figures/adamw/pilot.png")
    assert (r.status_code, r.json()["detail"]) == (404, "adamw has no pilot figure yet (it had no pilot run)")
    r = client.get(f"/studies/{sid}/figures/lion/heatmap.png")
    assert (r.status_code, r.json()["detail"]) == (404, f"study {sid} has no optimizer 'lion' (it has adamw, sgd:lr)")
    r = client.get(f"/studies/{sid}/figures/adamw/heatmap.gif")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "figure"
    assert client.get(f"/studies/{'0' * 32}/figures/adamw/heatmap.png").status_code == 404

    page = client.get(f"/studies/{sid}/report.html", params={"download": 1})
    assert page.status_code == 200 and page.headers["content-disposition"] == (
        f'attachment; filename="study-{sid}-report.html"')
    assert "<script" not in page.text and "http://" not in page.text and "https://" not in page.text
    assert "content-disposition" not in client.get(f"/studies/{sid}/report.html").headers
    # Its one inline style is allowed by its hash (no 'unsafe-inline', no style= attribute), in
    # its own policy and in the /ui/ pages' (which a blob: copy of it runs under).
    styles = re.findall(r"<style>(.*?)</style>", page.text, re.S)
    assert len(styles) == 1 and re.search(r"\sstyle=", page.text) is None
    assert page.headers["content-security-policy"] == REPORT_CSP
    assert f"style-src {csp_hash(styles[0])};" in REPORT_CSP and "unsafe-inline" not in REPORT_CSP
    assert csp_hash(styles[0]) in client.get(f"/ui/studies/{sid}").headers["content-security-policy"]


# --- the report cache: one build per change, never one per viewer ----------------------------------


def test_report_key_changes_with_epochs_trials_and_spec_but_not_heartbeats(engine, make_study):
    sid = make_study().id
    with session_scope(engine) as s:
        assert store.claim_study(s, "w", 60).id == sid
    with engine.connect() as conn:
        seen = [store.report_key(conn, sid)]

    def changed() -> bool:
        with engine.connect() as conn:
            now = store.report_key(conn, sid)
        new = now != seen[-1]
        seen.append(now)
        return new

    with session_scope(engine) as s:
        assert store.heartbeat(s, sid, "w", 60)
    assert not changed()
    with session_scope(engine) as s:
        t0, t1 = store.list_trials(s, sid)[:2]
        store.record_epoch(s, t0.id, 0, 1.0, 1.0, 0.5)
    assert changed() and seen[-1][5] == 1  # epochs_recorded
    with session_scope(engine) as s:
        store.record_epochs(s, [{"trial_id": t0.id, "epoch": 0, "val_error": 0.4},
                                {"trial_id": t1.id, "epoch": 0, "val_error": 0.6}])
    assert changed() and seen[-1][5] == 3  # an upsert of the same epoch counts again: it may differ
    with session_scope(engine) as s:
        store.finish_trial(s, t0.id, "w", train_loss=1.0, val_loss=1.0, val_error=0.5)
    assert changed() and seen[-1][3] == 1  # trials done
    with session_scope(engine) as s:  # a spec-only change: the seeds record a worker keeps
        study = store.get_study(s, sid)
        s.execute(update(Study).where(Study.id == sid).values(spec={**study.spec, "name": "renamed"}))
    assert changed()
    assert not changed()


def test_polls_of_a_running_study_share_one_build_per_change(engine, make_study):
    import asyncio

    from service.api.report_cache import ReportCache

    sid = make_study(optimizers=[{"name": "adamw", **GRID5}]).id
    with session_scope(engine) as s:
        assert store.claim_study(s, "w", 60).id == sid
        trials = store.list_trials(s, sid)
        for t in trials[:10]:
            store.finish_trial(s, t.id, "w", train_loss=0.5, val_loss=0.5, val_error=separable(t))

    async def scenario() -> None:
        cache = ReportCache(min_interval=0.0)  # every request looks at the key
        try:
            viewers = await asyncio.gather(*(cache.get(engine, sid, "json", "running") for _ in range(30)))
            assert cache.builds == 1 and len(set(viewers)) == 1
            for _ in range(5):  # nothing changed: polls answer from the cache
                assert await cache.get(engine, sid, "json", "running") == viewers[0]
            assert cache.builds == 1
            with session_scope(engine) as s:
                store.heartbeat(s, sid, "w", 60)
            await cache.get(engine, sid, "json", "running")
            assert cache.builds == 1
            with session_scope(engine) as s:  # an epoch lands: one rebuild for everyone
                store.record_epoch(s, trials[10].id, 0, 1.0, 1.0, 0.5)
            again = await asyncio.gather(*(cache.get(engine, sid, "json", "running") for _ in range(30)))
            assert cache.builds == 2 and len(set(again)) == 1
            figures = await asyncio.gather(*(cache.figure(engine, sid, "adamw", "heatmap", "svg", "running")
                                             for _ in range(10)))
            assert cache.drawings == 1 and len(set(figures)) == 1 and b"<svg" in figures[0]
            assert await cache.figure(engine, sid, "adamw", "heatmap", "svg", "running") == figures[0]
            assert cache.drawings == 1 and cache.builds == 2
        finally:
            cache.close()

    asyncio.run(scenario())


def test_report_grid_has_per_seed_values_their_standard_error_and_trial_ids(client, engine):
    """Seeds 0, 1, 2 at known values: the mean, the SE (sample SD / sqrt(n)) and each seed's
    value and trial are exact; a diverged seed makes its cell null, a missing one shrinks n."""
    sid = client.post("/studies", json=make_spec(seeds=[0, 1, 2])).json()["id"]
    with session_scope(engine) as s:
        assert store.claim_study(s, "w", 60).id == sid
        trials = store.list_trials(s, sid)
        for t in trials:
            cell = (t.lr_index, t.wd_index)
            if cell == (1, 1) and t.seed == 2:
                store.mark_trials_running(s, [t.id], "w")  # running: two epochs recorded so far
                store.record_epochs(s, [{"trial_id": t.id, "epoch": e, "val_error": 0.5} for e in (0, 1)])
                continue
            diverged = cell == (2, 0) and t.seed == 1
            v = math.inf if diverged else 0.1 * (t.lr_index + 1) + 0.01 * t.wd_index + 0.02 * t.seed
            store.finish_trial(s, t.id, "w", train_loss=v, val_loss=v, val_error=v, diverged=diverged)
    grid = client.get(f"/studies/{sid}/report").json()["optimizers"][0]["grid"]
    ids = {(t.seed, t.lr_index, t.wd_index): t.id for t in trials}
    assert grid["seed_list"] == [0, 1, 2]
    # cell (0, 0): 0.10, 0.12, 0.14 -> mean 0.12, SD 0.02, SE 0.02/sqrt(3)
    assert [grid["per_seed"][s][0][0] for s in range(3)] == pytest.approx([0.10, 0.12, 0.14])
    assert grid["value"][0][0] == pytest.approx(0.12) and grid["se"][0][0] == pytest.approx(0.02 / math.sqrt(3))
    # cell (1, 1): seeds 0 and 1 only -> 0.21, 0.23: SE = SD / sqrt(2) = 0.01414.../1.414... = 0.01
    assert grid["per_seed"][2][1][1] is None and grid["trial_ids"][2][1][1] is None
    assert grid["se"][1][1] == pytest.approx(0.01) and grid["seeds"][1][1] == 2
    # cell (2, 0): seed 1 diverged -> mean and SE null, the other seeds' values kept
    assert grid["value"][2][0] is None and grid["se"][2][0] is None and grid["per_seed"][1][2][0] is None
    assert grid["per_seed"][0][2][0] == pytest.approx(0.30) and grid["diverged"][2][0] == 1
    assert grid["trial_ids"] == [[[ids.get((s, i, j)) if (i, j, s) != (1, 1, 2) else None for j in range(2)]
                                  for i in range(3)] for s in range(3)]
    # the running trial: in no value, its id for its curve so far; the epochs it recorded count
    assert grid["running_ids"] == [[[ids[(2, 1, 1)] if (i, j, s) == (1, 1, 2) else None for j in range(2)]
                                    for i in range(3)] for s in range(3)]
    assert [p["epoch"] for p in client.get(f"/studies/{sid}/trials/{ids[(2, 1, 1)]}/curve").json()["points"]] == [0, 1]
    progress = client.get(f"/studies/{sid}").json()["progress"]
    assert progress == {"trials_total": 18, "trials_done": 17, "trials_failed": 0, "epochs_recorded": 2}
    listed = next(x for x in client.get("/studies").json()["data"] if x["id"] == sid)
    assert listed["progress"] == progress
