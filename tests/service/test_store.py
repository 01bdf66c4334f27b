"""The study store on SQLite and PostgreSQL: grid materialization, the queue, non-finite values."""

from __future__ import annotations

import math
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update

from service import store
from service.db import _refuse_closed_connection, idle_connection_open, make_engine, read, session_scope
from service.errors import Conflict, DatabaseUnavailable, Forbidden, NotFound, SchemaOutOfDate
from service.models import CurvePoint, Study, Trial, utcnow
from service.schemas import StudySpec, axis_values
from service.store import Principal
from tests.conftest import make_spec

ALICE, BOB, ADMIN = Principal("alice"), Principal("bob"), Principal("root", admin=True)


def spec(**overrides) -> StudySpec:
    return StudySpec.model_validate(make_spec(**overrides), context={"max_trials": None})


def trial_ids(engine, study_id: str) -> list[int]:
    with session_scope(engine) as s:
        return [t.id for t in store.list_trials(s, study_id)]


# --- creating and reading studies ----------------------------------------------------------------


def test_create_study_materializes_every_cell_and_seed(engine):
    with session_scope(engine) as s:
        study = store.create_study(s, spec(), owner="alice")
    with session_scope(engine) as s:
        stored = store.get_study(s, study.id)
        trials = store.list_trials(s, study.id)
    assert stored.status == "queued" and stored.owner == "alice" and stored.trials_total == 12
    assert len(stored.id) == 32 and int(stored.id, 16) >= 0
    assert len(trials) == 3 * 2 * 2
    assert {t.status for t in trials} == {"queued"} and {t.phase for t in trials} == {"grid"}
    cells = {(t.lr_index, t.wd_index, t.seed) for t in trials}
    assert cells == {(i, j, seed) for i in range(3) for j in range(2) for seed in (0, 1)}
    lrs = sorted({t.lr for t in trials})
    assert lrs == axis_values({"min": 1e-3, "max": 1e-1, "num": 3}) == pytest.approx([1e-3, 1e-2, 1e-1], rel=1e-12)
    assert sorted({t.wd for t in trials}) == [1e-4, 1e-2]
    # The stored spec has every default filled in, for the workers and the report.
    assert stored.spec["optimizers"][0]["lr"] == {"min": 1e-3, "max": 1e-1, "num": 3}
    assert stored.spec["decay_on"] == "all" and stored.spec["wd_normalized"] is False
    assert stored.created_at.tzinfo is not None


def test_auto_axis_defers_that_optimizers_trials_but_counts_them(engine):
    optimizers = [
        {"name": "adamw", "lr": {"min": 1e-3, "max": 1e-1, "num": 3}, "wd": {"min": 1e-4, "max": 1e-2, "num": 2}},
        {"name": "sgd", "lr": {"auto": True, "num": 4}},  # wd: sgd's default axis, 8 points
    ]
    with session_scope(engine) as s:
        study = store.create_study(s, spec(optimizers=optimizers), owner="local")
    with session_scope(engine) as s:
        trials = store.list_trials(s, study.id)
        prog = store.progress(s, [store.get_study(s, study.id)])[study.id]
    assert study.trials_total == (3 * 2 + 4 * 8) * 2 == 76
    assert len(trials) == 12 and {t.optimizer for t in trials} == {"adamw"}
    assert study.spec["optimizers"][1]["lr"] == {"auto": True, "num": 4}
    assert (prog.trials_total, prog.trials_done, prog.trials_failed) == (76, 0, 0)


def test_the_schema_refuses_a_second_copy_of_a_trial(engine, make_study):
    study = make_study()
    row = {"study_id": study.id, "phase": "grid", "optimizer": "adamw", "lr_index": 0, "wd_index": 0,
           "lr": 1e-3, "wd": 1e-4, "seed": 0, "status": "queued", "diverged": False, "attempts": 0}
    with pytest.raises(Conflict, match="conflicts with data already stored"):
        with session_scope(engine) as s:
            s.add(Trial(**row))
    assert len(trial_ids(engine, study.id)) == 12


def test_list_studies_newest_first_with_filters_and_pages(engine, make_study):
    ids = [make_study(owner=owner, name=f"s{i}").id for i, owner in enumerate(["alice", "bob", "alice", "bob", "alice"])]
    with session_scope(engine) as s:
        store.cancel_study(s, ids[1], BOB)
        page, count = store.list_studies(s)
        assert [x.id for x in page] == ids[::-1] and count == 5
        page, count = store.list_studies(s, owner="alice", limit=2, offset=1)
        assert [x.id for x in page] == [ids[2], ids[0]] and count == 3
        page, count = store.list_studies(s, status="cancelled")
        assert [x.id for x in page] == [ids[1]] and count == 1
        page, count = store.list_studies(s, limit=2, offset=4)
        assert [x.id for x in page] == [ids[0]] and count == 5


def test_get_study_and_curve_not_found(engine, make_study):
    study = make_study()
    other = make_study()
    foreign = trial_ids(engine, other.id)[0]
    with session_scope(engine) as s:
        with pytest.raises(NotFound, match="no study 'missing'"):
            store.get_study(s, "missing")
        with pytest.raises(NotFound, match=f"no trial {foreign} in study '{study.id}'"):
            store.get_curve(s, study.id, foreign)


# --- permissions ---------------------------------------------------------------------------------


def test_only_owner_or_admin_cancels_and_deletes(engine, make_study):
    study = make_study(owner="alice")
    with pytest.raises(Forbidden, match=f"study {study.id} belongs to 'alice'; only its owner or an admin may change it"):
        with session_scope(engine) as s:
            store.cancel_study(s, study.id, BOB)
    with pytest.raises(Forbidden):
        with session_scope(engine) as s:
            store.delete_study(s, study.id, BOB)
    with session_scope(engine) as s:
        assert store.cancel_study(s, study.id, ALICE).status == "cancelled"
        assert store.cancel_study(s, study.id, ALICE).status == "cancelled"  # idempotent
    with session_scope(engine) as s:
        store.delete_study(s, study.id, ADMIN)
    with session_scope(engine) as s:
        with pytest.raises(NotFound):
            store.get_study(s, study.id)


def test_cancelling_a_finished_study_is_a_conflict(engine, make_study):
    study = make_study()
    with session_scope(engine) as s:
        store.claim_study(s, "w1", 60)
    with session_scope(engine) as s:
        assert store.finish_study(s, study.id, "w1", "done")
    with pytest.raises(Conflict, match=f"study {study.id} is already done; only queued or running studies can be cancelled"):
        with session_scope(engine) as s:
            store.cancel_study(s, study.id, ADMIN)


def test_delete_cascades_to_trials_and_curves(engine, make_study):
    study, keep = make_study(), make_study()
    tid = trial_ids(engine, study.id)[0]
    with session_scope(engine) as s:
        assert store.record_epoch(s, tid, 1, 2.0, 2.1, 0.5)
    with session_scope(engine) as s:
        store.delete_study(s, study.id, ADMIN)
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(Trial)) == 12  # only `keep`'s
        assert s.scalar(select(func.count()).select_from(CurvePoint)) == 0
        assert {t.study_id for t in s.scalars(select(Trial))} == {keep.id}


# --- non-finite values ---------------------------------------------------------------------------


def test_nan_and_infinities_round_trip_explicitly(engine, make_study):
    study = make_study()
    a, b, c = trial_ids(engine, study.id)[:3]
    with session_scope(engine) as s:
        assert store.finish_trial(s, a, "w", train_loss=math.nan, val_loss=math.inf, val_error=0.9,
                                  diverged=True, diverged_epoch=3)
        assert store.finish_trial(s, b, "w", train_loss=-math.inf, val_loss=0.25, val_error=0.0)
        store.record_epochs(s, [
            {"trial_id": c, "epoch": 1, "train_loss": 1.5, "val_loss": math.nan, "val_error": math.inf},
            {"trial_id": c, "epoch": 2, "train_loss": None, "val_loss": -math.inf, "val_error": 0.125},
        ])
    with session_scope(engine) as s:
        ta, tb = s.get(Trial, a), s.get(Trial, b)
        assert math.isnan(ta.train_loss) and ta.val_loss == math.inf and ta.val_error == 0.9
        assert ta.diverged is True and ta.diverged_epoch == 3 and ta.status == "done"
        assert tb.train_loss == -math.inf and tb.val_loss == 0.25 and tb.val_error == 0.0
        curve = store.get_curve(s, study.id, c)
        assert curve[0]["train_loss"] == 1.5 and math.isnan(curve[0]["val_loss"]) and curve[0]["val_error"] == math.inf
        assert curve[1]["train_loss"] is None and curve[1]["val_loss"] == -math.inf and curve[1]["val_error"] == 0.125
        # In the table: NULL plus an explicit kind, never a silent 0.
        raw = s.execute(text(
            "SELECT train_loss, train_loss_kind, val_loss, val_loss_kind, val_error, val_error_kind "
            "FROM trials WHERE id = :id"), {"id": a}).one()
        assert tuple(raw) == (None, "nan", None, "inf", 0.9, "finite")
        assert store.trial_dict(ta)["val_loss"] == math.inf


def test_record_epoch_is_an_idempotent_upsert(engine, make_study):
    study = make_study()
    tid = trial_ids(engine, study.id)[0]
    with session_scope(engine) as s:
        assert store.record_epoch(s, tid, 1, 2.0, 2.5, 0.75)
    with session_scope(engine) as s:
        assert store.record_epoch(s, tid, 1, 1.0, 1.5, 0.5)  # a retried block writes epoch 1 again
        assert store.record_epoch(s, tid, 2, 0.5, 0.75, 0.25)
        assert not store.record_epoch(s, 10**9, 1, 1.0, 1.0, 1.0)  # the trial is gone: skipped
    with session_scope(engine) as s:
        assert store.get_curve(s, study.id, tid) == [
            {"epoch": 1, "train_loss": 1.0, "val_loss": 1.5, "val_error": 0.5},
            {"epoch": 2, "train_loss": 0.5, "val_loss": 0.75, "val_error": 0.25},
        ]


def test_finish_trial_first_result_wins(engine, make_study):
    study = make_study()
    tid = trial_ids(engine, study.id)[0]
    with session_scope(engine) as s:
        assert store.mark_trials_running(s, [tid], "w1") == 1
    with session_scope(engine) as s:
        assert store.finish_trial(s, tid, "w1", train_loss=0.5, val_loss=0.25, val_error=0.125)
    with session_scope(engine) as s:
        assert not store.finish_trial(s, tid, "w2", train_loss=9.0, val_loss=9.0, val_error=0.9, diverged=True)
        assert store.fail_trials(s, [tid], "late failure") == 0
        assert store.mark_trials_running(s, [tid], "w2") == 0
    with session_scope(engine) as s:
        t = s.get(Trial, tid)
        assert (t.status, t.worker, t.val_error, t.diverged, t.attempts) == ("done", "w1", 0.125, False, 1)


def test_pending_mark_running_and_fail(engine, make_study):
    study = make_study()
    ids = trial_ids(engine, study.id)
    with session_scope(engine) as s:
        assert store.mark_trials_running(s, ids[:4], "w1") == 4
        store.finish_trial(s, ids[0], "w1", train_loss=1.0, val_loss=1.0, val_error=0.5)
        assert store.fail_trials(s, ids[1:3], "CUDA out of memory") == 2
    with session_scope(engine) as s:
        pending = store.pending_trials(s, study.id)
        assert [t.id for t in pending] == ids[1:]
        failed = [t for t in pending if t.status == "failed"]
        assert [(t.id, t.error) for t in failed] == [(ids[1], "CUDA out of memory"), (ids[2], "CUDA out of memory")]
        running = s.get(Trial, ids[3])
        assert (running.status, running.worker, running.attempts) == ("running", "w1", 1)
        prog = store.progress(s, [store.get_study(s, study.id)])[study.id]
        assert (prog.trials_total, prog.trials_done, prog.trials_failed, prog.trials_running) == (12, 1, 2, 1)


# --- the queue -----------------------------------------------------------------------------------


def test_claim_order_priority_then_age(engine, make_study):
    low = make_study(name="low")
    high = make_study(name="high", priority=5)
    low2 = make_study(name="low2")
    order = []
    for _ in range(3):
        with session_scope(engine) as s:
            order.append(store.claim_study(s, "w", 60).id)
    with session_scope(engine) as s:
        assert store.claim_study(s, "w", 60) is None
        claimed = store.get_study(s, high.id)
    assert order == [high.id, low.id, low2.id]
    assert (claimed.status, claimed.claimed_by, claimed.attempts) == ("running", "w", 1)
    assert claimed.started_at is not None
    assert claimed.lease_expires_at - claimed.started_at == pytest.approx(timedelta(seconds=60), abs=timedelta(seconds=1))


def test_concurrent_claims_never_share_a_study(engine, make_study):
    """Six workers race for three studies: each study goes to exactly one of them."""
    studies = {make_study(name=f"s{i}").id for i in range(3)}
    barrier = threading.Barrier(6)
    results: dict[str, str | None] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            barrier.wait()
            with session_scope(engine) as s:
                study = store.claim_study(s, name, 60)
                results[name] = study.id if study else None
                time.sleep(0.05)  # hold the claim's transaction open while the others try
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    claimed = [sid for sid in results.values() if sid is not None]
    assert sorted(claimed) == sorted(studies)  # every study once, none twice
    with session_scope(engine) as s:
        for sid in studies:
            study = store.get_study(s, sid)
            assert study.attempts == 1 and results[study.claimed_by] == sid


def test_expired_lease_is_reclaimed_and_the_old_worker_loses_its_claim(engine, make_study):
    study = make_study()
    with session_scope(engine) as s:
        assert store.claim_study(s, "w1", 60).id == study.id
    with session_scope(engine) as s:
        assert store.claim_study(s, "w2", 60) is None  # the lease holds
        assert store.heartbeat(s, study.id, "w1", 60)
    with session_scope(engine) as s:  # w1 goes silent: its lease runs out
        s.execute(update(Study).where(Study.id == study.id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    with session_scope(engine) as s:
        again = store.claim_study(s, "w2", 60)
        assert again.id == study.id and again.attempts == 2 and again.claimed_by == "w2"
    with session_scope(engine) as s:
        assert not store.heartbeat(s, study.id, "w1", 60)
        assert not store.finish_study(s, study.id, "w1", "done")
        assert store.heartbeat(s, study.id, "w2", 60)
        assert store.finish_study(s, study.id, "w2", "failed", error="boom")
    with session_scope(engine) as s:
        final = store.get_study(s, study.id)
        assert (final.status, final.last_error, final.lease_expires_at) == ("failed", "boom", None)
        assert final.finished_at is not None
        assert store.claim_study(s, "w3", 60) is None


def test_a_short_lease_expires_by_itself(engine, make_study):
    study = make_study()
    with session_scope(engine) as s:
        store.claim_study(s, "w1", 0.05)
    time.sleep(0.1)
    with session_scope(engine) as s:
        assert store.claim_study(s, "w2", 60).id == study.id


def test_cancel_and_delete_end_the_workers_claim(engine, make_study):
    study, other = make_study(), make_study()
    with session_scope(engine) as s:
        store.claim_study(s, "w1", 60)
        store.claim_study(s, "w2", 60)
    with session_scope(engine) as s:
        store.cancel_study(s, study.id, ADMIN)
        store.delete_study(s, other.id, ADMIN)
    with session_scope(engine) as s:
        assert not store.heartbeat(s, study.id, "w1", 60)
        assert not store.finish_study(s, study.id, "w1", "done")
        assert not store.heartbeat(s, other.id, "w2", 60)
        assert store.get_study(s, study.id).status == "cancelled"
        assert store.claim_study(s, "w3", 60) is None


def test_cancel_puts_the_trials_in_flight_back_to_queued_and_keeps_results(engine, make_study):
    study = make_study()
    with session_scope(engine) as s:
        store.claim_study(s, "w1", 60)
        ids = [t.id for t in store.list_trials(s, study.id)]
        store.mark_trials_running(s, ids[:3], "w1")
        store.finish_trial(s, ids[0], "w1", train_loss=0.5, val_loss=0.6, val_error=0.1)
    with session_scope(engine) as s:
        store.cancel_study(s, study.id, ADMIN)
    with session_scope(engine) as s:
        trials = {t.id: t for t in store.list_trials(s, study.id)}
        assert trials[ids[0]].status == "done" and trials[ids[0]].val_error == 0.1
        assert [(trials[i].status, trials[i].worker, trials[i].started_at) for i in ids[1:3]] == [("queued", None, None)] * 2
        assert not any(t.status == "running" for t in trials.values())


def test_a_claim_can_be_restricted_to_one_study(engine, make_study):
    first, second = make_study(), make_study()
    with session_scope(engine) as s:
        assert store.claim_study(s, "demo", 60, only=second.id).id == second.id
    with session_scope(engine) as s:
        assert store.claim_study(s, "demo", 60, only=second.id) is None  # running, lease held
        assert store.claim_study(s, "demo", 60, only="no-such-study") is None
        assert store.get_study(s, first.id).status == "queued"  # the queue's head, untouched
        assert store.claim_study(s, "w", 60).id == first.id


def test_release_puts_a_study_back_in_the_queue(engine, make_study):
    study = make_study()
    with session_scope(engine) as s:
        store.claim_study(s, "w1", 60)
    with session_scope(engine) as s:
        assert not store.release_study(s, study.id, "w2")
        assert store.release_study(s, study.id, "w1")
    with session_scope(engine) as s:
        assert store.claim_study(s, "w2", 60).id == study.id


def test_finish_study_takes_only_done_or_failed(engine, make_study):
    study = make_study()
    with session_scope(engine) as s:
        with pytest.raises(ValueError, match="a worker finishes a study as 'done' or 'failed', not 'cancelled'"):
            store.finish_study(s, study.id, "w", "cancelled")


def test_add_trials_skips_existing_cells_and_drops_the_cached_report(engine, make_study):
    study = make_study(optimizers=[{"name": "sgd", "lr": {"auto": True, "num": 2}, "wd": {"min": 1e-4, "max": 1e-2, "num": 2}}])
    assert trial_ids(engine, study.id) == []
    pilot = [{"optimizer": "sgd", "lr_index": i, "wd_index": 0, "lr": lr, "wd": 1e-3, "seed": 0}
             for i, lr in enumerate([1e-3, 1e-1])]
    with session_scope(engine) as s:
        assert store.add_trials(s, study.id, pilot, phase="pilot") == 2
        assert store.add_trials(s, study.id, pilot, phase="pilot") == 0  # a retried pilot
        s.execute(update(Study).where(Study.id == study.id).values(report={"cached": True}))
    grid = [{"optimizer": "sgd", "lr_index": i, "wd_index": j, "lr": lr, "wd": wd, "seed": seed}
            for i, lr in enumerate([0.01, 0.1]) for j, wd in enumerate([1e-4, 1e-2]) for seed in (0, 1)]
    with session_scope(engine) as s:
        assert store.add_trials(s, study.id, grid) == 8
    with session_scope(engine) as s:
        stored = store.get_study(s, study.id)
        assert stored.report is None
        assert len(store.list_trials(s, study.id, phase="grid")) == 8
        assert len(store.list_trials(s, study.id, phase="pilot")) == 2
        assert store.progress(s, [stored])[study.id].trials_total == 8


def test_report_cache_is_filled_once_when_done(engine, make_study):
    study = make_study()
    calls = []

    def build(study_d, trials, load_curves):
        calls.append(study_d["status"])
        assert {"id", "name", "status", "spec", "created_at", "finished_at", "owner", "plugins"} == set(study_d)
        assert len(trials) == 12 and load_curves([trials[0]["id"]]) == {trials[0]["id"]: []}
        return {"study_id": study_d["id"], "partial": study_d["status"] != "done", "x": math.nan}

    with session_scope(engine) as s:
        report, cache = store.compute_report(s, study.id, build)
        assert report == {"study_id": study.id, "partial": True, "x": None} and not cache
        store.claim_study(s, "w", 60)
        store.finish_study(s, study.id, "w", "done")
    with session_scope(engine) as s:
        report, cache = store.compute_report(s, study.id, build)
        assert cache and store.cache_report(s, study.id, report)
    with session_scope(engine) as s:
        assert store.compute_report(s, study.id, build) == ({"study_id": study.id, "partial": False, "x": None}, False)
    assert calls == ["queued", "done"]


# --- sessions and driver errors ------------------------------------------------------------------


def test_session_scope_rolls_back_on_error(engine, make_study):
    study = make_study()
    with pytest.raises(RuntimeError):
        with session_scope(engine) as s:
            store.cancel_study(s, study.id, ADMIN)
            raise RuntimeError("changed my mind")
    with session_scope(engine) as s:
        assert store.get_study(s, study.id).status == "queued"


def test_missing_tables_say_run_decouple_migrate(empty_db_url):
    engine = make_engine(empty_db_url)
    try:
        with pytest.raises(SchemaOutOfDate, match=r"the database schema is missing parts \(.*\): run `decouple migrate`"):
            with session_scope(engine) as s:
                store.claim_study(s, "w", 60)
    finally:
        engine.dispose()


def test_unreachable_database_is_database_unavailable():
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/nowhere")
    try:
        with pytest.raises(DatabaseUnavailable, match="^database unavailable: "):
            with session_scope(engine) as s:
                store.claim_study(s, "w", 60)
    finally:
        engine.dispose()


def test_engines_are_tuned_for_their_backend(engine, backend):
    statements: list[str] = []
    from sqlalchemy import event

    def log(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", log)
    try:
        with session_scope(engine) as s:
            s.execute(text("SELECT 1"))
        with session_scope(engine, read_only=True) as s:
            s.execute(text("SELECT 1"))
    finally:
        event.remove(engine, "before_cursor_execute", log)
    if backend == "sqlite":
        # Writers take the lock up front (claims are read-then-write); readers do not wait.
        assert statements == ["BEGIN IMMEDIATE", "SELECT 1", "BEGIN DEFERRED", "SELECT 1"]
        with engine.connect() as conn:
            pragmas = [conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in ("journal_mode", "foreign_keys", "busy_timeout")]
        assert pragmas == ["wal", 1, 30_000]
    else:
        assert statements == ["SELECT 1", "SELECT 1"]
        # No pre-ping round trip: pooled connections are checked for life locally on checkout.
        assert engine.pool._pre_ping is False and engine.pool.size() == 5 and engine.pool._recycle == 1800
        assert event.contains(engine, "checkout", _refuse_closed_connection)


@pytest.mark.parametrize("empty_db_url", [pytest.param("postgresql", marks=pytest.mark.pg)], indirect=True)
def test_pooled_connections_the_server_ended_are_replaced(engine, backend):
    """PostgreSQL: a pooled connection that the server ended while it was idle is refused at
    checkout (its socket has the server's goodbye to read), and one ended between that check and
    the first query makes ``db.read`` run its work again on a fresh connection."""
    assert backend == "postgresql"
    import psycopg
    from sqlalchemy import event

    from tests.conftest import _pg_conninfo

    def terminate(pid: int) -> None:
        with psycopg.connect(_pg_conninfo(), autocommit=True, connect_timeout=5) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0] is True
            deadline = time.monotonic() + 10
            while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]:
                assert time.monotonic() < deadline, f"backend {pid} still running"
                time.sleep(0.02)

    def backend_pid(conn) -> int:
        return conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()

    own = make_engine(engine.url.render_as_string(hide_password=False))
    try:
        first = read(own, backend_pid)
        assert own.pool.checkedin() == 1 and read(own, backend_pid) == first  # one pooled connection, reused
        with own.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert idle_connection_open(raw)
        # 1. Ended while idle in the pool: refused at checkout, so even a session (which is
        #    never run again) gets a live connection.
        terminate(first)
        assert not idle_connection_open(raw)
        with session_scope(own) as s:
            second = s.execute(text("SELECT pg_backend_pid()")).scalar()
        assert second != first and own.pool.checkedin() == 1

        # 2. Ended after the checkout check passed, before the first query.
        ended: list[int] = []

        def end_after_check(dbapi_connection, _record, _proxy):
            if not ended:
                ended.append(dbapi_connection.info.backend_pid)
                terminate(ended[0])

        event.listen(own, "checkout", end_after_check)  # runs after the engine's own check
        try:
            third = read(own, backend_pid)
        finally:
            event.remove(own, "checkout", end_after_check)
        assert ended == [second] and third not in (first, second)
        # A session (writes) is not run again: it answers 503, as for any connection lost mid-way.
        ended.clear()
        event.listen(own, "checkout", end_after_check)
        try:
            with pytest.raises(DatabaseUnavailable):
                with session_scope(own) as s:
                    s.execute(text("SELECT 1"))
        finally:
            event.remove(own, "checkout", end_after_check)
        assert ended == [third]
        assert read(own, backend_pid) not in (first, second, third)
    finally:
        own.dispose()
