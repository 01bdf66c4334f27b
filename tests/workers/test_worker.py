"""The worker end to end: API -> queue -> `decouple worker` on a real local Ray -> database.

Everything is real: SQLite and PostgreSQL (the ``db_url`` fixture), Ray Tune with its own
processes, the packed trainer (``digits_mlp``) or the analytic ``synthetic`` task where a test
needs many cheap epochs (each epoch is still a real database write and ownership check). One
local Ray serves the in-process tests of this module; the subprocess tests start their own.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.db import session_scope
from service.models import CurvePoint, Study, Trial
from workers.optim import OPTIMIZER_NAMES
from workers.runner import BLOCK_RETRIES, make_blocks
from workers.worker import run_worker

DECOUPLE = str(Path(sys.executable).with_name("decouple"))


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def trial_rows(engine, study_id: str) -> list[Trial]:
    with session_scope(engine, read_only=True) as s:
        return list(s.scalars(select(Trial).where(Trial.study_id == study_id).order_by(Trial.id)))


def curve_epochs(engine, study_id: str) -> dict[int, list[int]]:
    """{trial id: [epochs recorded, ascending]} for every trial of the study."""
    with session_scope(engine, read_only=True) as s:
        ids = list(s.scalars(select(Trial.id).where(Trial.study_id == study_id)))
        out: dict[int, list[int]] = {i: [] for i in ids}
        rows = s.execute(
            select(CurvePoint.trial_id, CurvePoint.epoch)
            .where(CurvePoint.trial_id.in_(ids)).order_by(CurvePoint.trial_id, CurvePoint.epoch)
        )
        for tid, epoch in rows:
            out[tid].append(epoch)
    return out


def synthetic_spec(name: str, epochs: int, optimizers=("adamw",), lr_num: int = 2, wd_num: int = 2,
                   seeds=(0,)) -> dict:
    """A study of the analytic task: no training, but every epoch is a real database write."""
    return {
        "name": name, "task": "synthetic", "epochs": epochs, "batch_size": 64,
        "schedule": {"name": "cosine"},
        "optimizers": [
            {"name": o, "lr": {"min": 1e-3, "max": 1e-2 if lr_num > 1 else 1e-3, "num": lr_num},
             "wd": {"min": 1e-4, "max": 1e-3 if wd_num > 1 else 1e-4, "num": wd_num}}
            for o in optimizers
        ],
        "seeds": list(seeds), "metric": "val_error",
    }


def submit(client, spec: dict) -> str:
    r = client.post("/studies", json=spec)
    assert r.status_code == 201, r.text
    return r.json()["id"]


# --- submit, run once, everything recorded ---------------------------------------------------------


def test_submit_then_worker_once_trains_every_trial(client, settings, engine, local_ray):
    # sgd at lr 1000 blows up within the first epoch; lr 0.01 trains normally.
    spec = {
        "name": "worker end to end", "task": "digits_mlp", "epochs": 3, "batch_size": 64,
        "schedule": {"name": "cosine"},
        "optimizers": [{"name": "sgd", "lr": {"min": 0.01, "max": 1000.0, "num": 3},
                        "wd": {"min": 1e-4, "max": 1e-4, "num": 1}}],
        "seeds": [0, 1], "metric": "val_error",
    }
    r = client.post("/studies", json=spec)
    assert r.status_code == 201, r.text
    study_id = r.json()["id"]
    assert r.json()["trials_total"] == 6

    started: list[str] = []
    assert run_worker(once=True, settings=settings, worker_id="w-e2e", on_study_start=started.append) == 0
    assert started == [study_id]

    study = client.get(f"/studies/{study_id}").json()
    assert study["status"] == "done"
    assert study["progress"].items() >= {"trials_total": 6, "trials_done": 6, "trials_failed": 0}.items()  # and epochs_recorded
    assert study["claimed_by"] == "w-e2e" and study["attempts"] == 1

    # The worker stored the report as it finished, so the atlas shows the study at once; and a
    # dry run of the same spec now estimates its time from this run's measured throughput.
    atlas = client.get("/atlas").json()
    assert atlas["pending"] == [] and [(r["task"], r["optimizer"], r["studies"]) for r in atlas["data"]] == [
        ("digits_mlp", "sgd", [study_id])]
    plan = client.post("/studies", params={"dry_run": "true"}, json=spec).json()
    wall = (datetime.fromisoformat(study["finished_at"]) - datetime.fromisoformat(study["started_at"])).total_seconds()
    assert plan["estimate"]["trial_epochs_measured"] == 6 * 3 and plan["estimate"]["studies"] == 1
    assert plan["estimate"]["trial_epochs_per_second"] == pytest.approx(18 / wall, rel=1e-9)
    assert plan["estimated_seconds"] == pytest.approx(wall, rel=1e-9)  # the same spec: the same time

    trials = client.get(f"/studies/{study_id}/trials").json()["data"]
    assert len(trials) == 6
    by_lr = {}
    for t in trials:
        assert t["status"] == "done" and t["worker"] == "w-e2e" and t["attempts"] == 1
        assert t["error"] is None and t["finished_at"] is not None
        by_lr.setdefault(t["lr_index"], []).append(t)
        curve = client.get(f"/studies/{study_id}/trials/{t['id']}/curve").json()["points"]
        assert [p["epoch"] for p in curve] == [0, 1, 2]
        if t["diverged"]:
            # Explicitly diverged: the epoch is recorded and the non-finite metrics come back null.
            assert 0 <= t["diverged_epoch"] < 3
            assert t["val_loss"] is None
            assert all(p["train_loss"] is None for p in curve[t["diverged_epoch"] + 1:])
        else:
            assert t["diverged_epoch"] is None
            for key in ("train_loss", "val_loss", "val_error"):
                assert math.isfinite(t[key]), (key, t)
            assert curve[-1]["val_error"] == t["val_error"] and curve[-1]["val_loss"] == t["val_loss"]
    assert all(not t["diverged"] and t["val_error"] < 0.5 for t in by_lr[0])  # lr 0.01 learns
    assert all(t["diverged"] for t in by_lr[2])  # lr 1000 diverges

    # The database keeps the non-finite values themselves, not just "null".
    for t in trial_rows(engine, study_id):
        if t.diverged:
            assert not math.isfinite(t.val_loss)


# --- a worker killed mid-study; a second one finishes it -----------------------------------------


def worker_env(tmp_path: Path, db_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a `decouple worker` subprocess: settings from variables, nothing else.

    Ray variables of this process (its own local cluster's auth token path) are left out, and
    HOME is an empty folder, so the subprocess shows what a worker does on its own.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DECOUPLE_"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), DECOUPLE_DATABASE_URL=db_url, DECOUPLE_DATA_DIR=str(data_dir),
               PYTHONUNBUFFERED="1", **extra)
    return env


def session_members(sid: int) -> list[int]:
    """Pids of live (not zombie) processes in session ``sid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            pids.append(int(entry))
    return pids


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL a worker started with ``start_new_session`` and every process of its session.

    Killing its process group is not enough: Ray's trial processes run in process groups of their
    own (same session), and they outlive the raylet, finishing their block unsupervised. Repeated
    until the session is empty, in case one was being started meanwhile.
    """

    def kill_all() -> bool:
        members = session_members(proc.pid)
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return not members

    wait_for(kill_all, 30, f"the processes of session {proc.pid} to exit", interval=0.2)
    proc.wait(timeout=30)


def status_counts(engine, study_id: str) -> dict[str, int]:
    with session_scope(engine, read_only=True) as s:
        rows = s.execute(
            select(Trial.status, func.count()).where(Trial.study_id == study_id).group_by(Trial.status)
        )
        return {status: int(n) for status, n in rows}


# The team case (PostgreSQL, row locks); the lease logic itself is the same on SQLite.
@pytest.mark.parametrize("empty_db_url", [pytest.param("postgresql", marks=pytest.mark.pg)], indirect=True)
def test_worker_study_runs_that_study_alone_and_says_why_it_cannot(client, settings, engine, local_ray,
                                                                   monkeypatch, capsys):
    """``decouple worker --study ID``: that study is claimed and run, an older queued one is left
    alone; a finished, an unknown and a plugin study this machine cannot run each get one line."""
    from service.cli import main
    from service.config import get_settings
    from tests.service.test_plugins import plugin_spec

    monkeypatch.setenv("DECOUPLE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("DECOUPLE_DATA_DIR", str(settings.data_dir))
    get_settings.cache_clear()
    older = submit(client, synthetic_spec("older", 2))
    mine = submit(client, synthetic_spec("mine", 2))
    try:
        assert main(["worker", "--study", mine]) == 0
        assert capsys.readouterr().out == f"study {mine}: done\n"
        assert client.get(f"/studies/{older}").json()["status"] == "queued"

        assert main(["worker", "--study", mine]) == 2
        assert capsys.readouterr().err == f"decouple: study {mine} was not claimed, it is done\n"
        unknown = "0" * 32
        assert main(["worker", "--study", unknown]) == 2
        assert capsys.readouterr().err == f"decouple: no study '{unknown}'\n"

        wine = submit(client, plugin_spec(name="wine"))
        monkeypatch.setattr("workers.worker.installed_plugins", dict)  # a machine without the plugin

        def no_ray(*args, **kwargs):
            raise AssertionError("Ray started for a study this machine cannot claim")

        monkeypatch.setattr("workers.ray_adapter.ensure_ray", no_ray)
        assert main(["worker", "--study", wine]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"decouple: study {wine} was not claimed, it is queued: no worker with the "
                              "plugins it needs has claimed it (")
        assert "task wine_mlp from decouple-plugin-example 0.1.0 is not installed" in err
        # recorded on the study, as a worker's claim that passed it over records it
        assert err.rstrip("\n").endswith(client.get(f"/studies/{wine}").json()["waiting_reason"])
        assert client.get(f"/studies/{older}").json()["status"] == "queued"
    finally:
        get_settings.cache_clear()


def test_killed_worker_study_is_finished_by_another_without_rerunning(
    client, engine, db_url, tmp_path
):
    # Three optimizers x 2 x 2 cells = three blocks on two Ray slots: the third starts when one
    # of the first two has finished, so there is a moment with trials done and trials running.
    epochs = 300
    spec = synthetic_spec("killed worker", epochs, optimizers=("adam", "adamw", "sgdw"))
    study_id = submit(client, spec)
    host = socket.gethostname()

    env1 = worker_env(tmp_path, db_url, tmp_path / "data1", DECOUPLE_LEASE_SECONDS="3")
    log1 = open(tmp_path / "worker1.log", "w")
    w1 = subprocess.Popen([DECOUPLE, "worker"], cwd=tmp_path, env=env1, stdout=log1,
                          stderr=subprocess.STDOUT, start_new_session=True)

    def mid_study():
        if w1.poll() is not None:
            pytest.fail(f"worker 1 exited ({w1.returncode}): {(tmp_path / 'worker1.log').read_text()}")
        counts = status_counts(engine, study_id)
        if not (counts.get("done") and counts.get("running")):
            return False
        # A running block with at most half its epochs behind it: it cannot finish in the
        # moment between this check and the kill (one near its end could, leaving none running).
        curves = curve_epochs(engine, study_id)
        return any(len(curves[t.id]) < epochs // 2
                   for t in trial_rows(engine, study_id) if t.status == "running")

    try:
        wait_for(mid_study, 120, "some trials done and a block running far from its end")
    finally:
        kill_session(w1)
        log1.close()

    at_kill = {t.id: t for t in trial_rows(engine, study_id)}
    done1 = {i for i, t in at_kill.items() if t.status == "done"}
    running1 = {i for i, t in at_kill.items() if t.status == "running"}
    assert done1 and running1, [(t.id, t.status, t.worker) for t in at_kill.values()]
    for i in done1:
        assert at_kill[i].worker.startswith(f"{host}:{w1.pid}:") and at_kill[i].attempts == 1

    # The dead worker's lease runs out; only then may another worker take the study.
    def lease_expired():
        with session_scope(engine, read_only=True) as s:
            st = s.get(Study, study_id)
            return st.status == "running" and st.lease_expires_at < datetime.now(UTC)

    wait_for(lease_expired, 10, "the dead worker's lease to expire")
    env2 = worker_env(tmp_path, db_url, tmp_path / "data2", DECOUPLE_LEASE_SECONDS="3")
    w2 = subprocess.Popen([DECOUPLE, "worker", "--once"], cwd=tmp_path, env=env2,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    try:
        out, _ = w2.communicate(timeout=180)
    finally:
        kill_session(w2)
    assert w2.returncode == 0, out

    study = client.get(f"/studies/{study_id}").json()
    # Any claim beyond the second is this worker's own loop re-claiming after run_study gave the
    # study back (a block that lost the database, DatabaseUnavailable): its log says which.
    assert study["status"] == "done" and study["attempts"] == 2, (study, out[-4000:])
    assert study["claimed_by"].startswith(f"{host}:{w2.pid}:")
    after = {t.id: t for t in trial_rows(engine, study_id)}
    assert len(after) == 3 * 2 * 2 and set(after) == set(at_kill)
    assert all(t.status == "done" for t in after.values())
    for i, t in after.items():
        if i in done1:  # recorded by the first worker: untouched
            assert (t.worker, t.finished_at, t.attempts) == (at_kill[i].worker, at_kill[i].finished_at, 1)
        else:
            assert t.worker.startswith(f"{host}:{w2.pid}:")
            assert t.attempts == (2 if i in running1 else 1)
    # The second worker's Tune experiment held exactly the trials not done, each once.
    results = tmp_path / "data2" / "ray" / "results" / f"study-{study_id}"
    ran = [t[0] for p in results.glob("*/params.json") for t in json.loads(p.read_text())["block"]["trials"]]
    assert sorted(ran) == sorted(set(at_kill) - done1)
    assert all(e == list(range(epochs)) for e in curve_epochs(engine, study_id).values())


# --- cancel mid-run ----------------------------------------------------------------------------------


def test_cancel_mid_run_stops_within_an_epoch_and_the_worker_goes_on(client, engine, settings, local_ray):
    # One trial (one block, one Ray process) each: enough to see the stop and the next claim.
    long_id = submit(client, synthetic_spec("to cancel", 10_000, lr_num=1, wd_num=1))
    next_id = submit(client, synthetic_spec("next", 3, lr_num=1, wd_num=1))

    exit_codes: list[int] = []
    worker = threading.Thread(
        target=lambda: exit_codes.append(run_worker(once=True, settings=settings, worker_id="w-cancel"))
    )
    worker.start()
    try:
        # Both blocks of the long study are training (every trial has written a few epochs).
        wait_for(lambda: all(len(e) >= 3 for e in curve_epochs(engine, long_id).values()), 120,
                 "every trial of the long study to record 3 epochs")
        r = client.post(f"/studies/{long_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        at_cancel = {i: e[-1] for i, e in curve_epochs(engine, long_id).items()}
    finally:
        worker.join(timeout=120)
    assert not worker.is_alive() and exit_codes == [0]

    # Each block noticed at its next epoch's ownership check: at most the epoch in flight when
    # the cancel committed (on PostgreSQL it may commit after the read above) and one more.
    final = {i: e[-1] for i, e in curve_epochs(engine, long_id).items()}
    # (The ownership check comes before the write, so a stopped block writes nothing more.)
    assert all(0 <= final[i] - at_cancel[i] <= 2 for i in final), (at_cancel, final)
    long_study = client.get(f"/studies/{long_id}").json()
    assert long_study["status"] == "cancelled"
    assert long_study["progress"].items() >= {"trials_total": 1, "trials_done": 0, "trials_failed": 0}.items()  # and epochs_recorded
    assert all(t["status"] == "queued" and t["finished_at"] is None
               for t in client.get(f"/studies/{long_id}/trials").json()["data"])

    nxt = client.get(f"/studies/{next_id}").json()
    assert nxt["status"] == "done" and nxt["claimed_by"] == "w-cancel"
    assert nxt["progress"].items() >= {"trials_total": 1, "trials_done": 1, "trials_failed": 0}.items()  # and epochs_recorded
    assert all(e == [0, 1, 2] for e in curve_epochs(engine, next_id).values())


# --- a block that raises -----------------------------------------------------------------------------


# Backend-neutral (the store's fail_trials is tested on both): SQLite only, as each retry is a
# fresh Ray process importing torch.
@pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)
def test_failing_block_is_retried_then_its_trials_fail_and_the_study_finishes(
    client, engine, settings, local_ray
):
    # A real failure: CIFAR-10 is not in the worker's data directory. One trial, so one block
    # and one Ray process per attempt.
    spec = {
        "name": "no data", "task": "cifar10_resnet", "epochs": 1, "batch_size": 128,
        "optimizers": [{"name": "adamw", "lr": {"min": 1e-3, "max": 1e-3, "num": 1},
                        "wd": {"min": 1e-4, "max": 1e-4, "num": 1}}],
        "seeds": [0],
    }
    study_id = submit(client, spec)
    assert run_worker(once=True, settings=settings, worker_id="w-fail") == 0

    study = client.get(f"/studies/{study_id}").json()
    assert study["status"] == "done" and study["last_error"] is None
    assert study["progress"].items() >= {"trials_total": 1, "trials_done": 0, "trials_failed": 1}.items()  # and epochs_recorded
    data_dir = settings.data_dir.resolve()
    for t in client.get(f"/studies/{study_id}/trials").json()["data"]:
        assert t["status"] == "failed" and t["attempts"] == 1 + BLOCK_RETRIES
        assert t["error"].startswith(f"block failed after {BLOCK_RETRIES} retries: ")
        assert f"CIFAR-10 not found under DECOUPLE_DATA_DIR={data_dir}: missing data_batch_1" in t["error"]

    report = client.get(f"/studies/{study_id}/report").json()
    assert report["status"] == "done" and report["partial"] is False
    (entry,) = report["optimizers"]
    assert entry["trials"] == {"total": 1, "done": 0, "failed": 1, "diverged": 0, "pending": 0}
    assert entry["grid"]["seeds"] == [[0]] and entry["grid"]["value"] == [[None]]
    assert "1 trial(s) failed (an error, not divergence) and are left out of the averages." in entry["warnings"]


# --- where a local Ray writes -------------------------------------------------------------------------


def test_ray_temp_dir_is_the_data_dir_or_a_short_link_to_it(tmp_path):
    from workers.ray_adapter import MAX_TEMP_DIR_CHARS, _short_temp_dir

    # Short enough for Ray's socket paths: used as it is.
    short = Path(tempfile.mkdtemp(prefix="dr-", dir="/tmp"))
    try:
        assert _short_temp_dir(short / "tmp") == short / "tmp" and (short / "tmp").is_dir()
    finally:
        shutil.rmtree(short)

    # Too long (107-byte socket paths): a link in /tmp, created once, pointing into the data dir;
    # links of ours to data dirs that are gone are swept away meanwhile.
    dangling = Path(f"/tmp/decouple-ray-{os.getuid()}-test{os.getpid()}")
    dangling.unlink(missing_ok=True)
    dangling.symlink_to(tmp_path / "deleted")
    target = tmp_path / ("d" * 60) / "ray" / "tmp"
    link = _short_temp_dir(target)
    assert not dangling.is_symlink()
    try:
        assert link.parent == Path("/tmp") and link.is_symlink() and len(str(link)) <= MAX_TEMP_DIR_CHARS
        assert Path(os.readlink(link)) == target.resolve() and target.is_dir()
        assert _short_temp_dir(target) == link
        # Someone else's link under that name is refused, not written through.
        link.unlink()
        link.symlink_to(tmp_path)
        with pytest.raises(RuntimeError, match=f"{link} exists and is not this user's link to {target}"):
            _short_temp_dir(target)
    finally:
        link.unlink(missing_ok=True)


# --- cutting a study into blocks ------------------------------------------------------------------------


def _rows(counts: dict[str, int]) -> list[tuple[int, str, float, float, int]]:
    rows, tid = [], 0
    for opt, n in counts.items():
        for k in range(n):
            tid += 1
            rows.append((tid, opt, 10.0 ** -(k % 8), 1e-4, k // 8))
    return rows


@pytest.mark.parametrize(
    ("counts", "max_block", "slots", "sizes"),
    [
        # The full demo on 2 CPUs: five blocks of 128 would leave a slot idle for a third of the
        # run (makespan 3 x 128); ten of 64 take five even rounds.
        ({o: 128 for o in OPTIMIZER_NAMES}, 256, 2, [64] * 10),
        # The quick demo: halving would not pay for the extra blocks' overhead.
        ({o: 16 for o in OPTIMIZER_NAMES}, 256, 2, [16] * 5),
        ({"adamw": 6}, 256, 2, [3, 3]),  # one optimizer still feeds both slots
        ({"adamw": 1}, 256, 2, [1]),
        ({"adamw": 300}, 256, 1, [150, 150]),  # max_block: two near-equal halves, not 256 + 44
        ({o: 128 for o in OPTIMIZER_NAMES}, 4096, 1, [128] * 5),  # one GPU: one block each
        # 5+3 | 5 ends at 16 (a block costs its size + 4); 4+3 | 3+3 at 15.
        ({"sgd": 10, "adam": 3}, 256, 2, [4, 3, 3, 3]),
    ],
)
def test_make_blocks_balances_the_slots(counts, max_block, slots, sizes):
    rows = _rows(counts)
    blocks = make_blocks(rows, max_block, slots)
    assert [len(b.trials) for b in blocks] == sizes
    by_id = {r[0]: r for r in rows}
    seen = [t[0] for b in blocks for t in b.trials]
    assert sorted(seen) == sorted(by_id)  # every trial exactly once
    for b in blocks:  # one optimizer per block, rows carried as (id, lr, wd, seed)
        assert all(by_id[t[0]][1] == b.optimizer and t == (t[0], *by_id[t[0]][2:]) for t in b.trials)
    assert make_blocks([], max_block, slots) == []
