"""Kill storm: three ``decouple worker`` processes share one queue of ten studies on PostgreSQL and
one Ray head; every few seconds the test SIGKILLs a worker that holds a claim (its whole process
group) and starts a new one in its place.

In the end:

* every study is ``done`` and every trial row exists exactly once, done, never failed;
* no trial was trained again after it was recorded done: a trigger (test instrumentation in this
  test's own schema) notes, for every epoch written, the status its trial had at that moment,
  and no epoch may be written to a trial already done;
* the results are those of an undisturbed run: the same trials trained in this process by the
  packed trainer, each optimizer's whole grid in one block, without Ray and without faults, give
  bit-identical curves and final metrics, and hence identical reports (``test_determinism.py``
  shows why packing cannot matter).

Half the studies train the real digits MLP (so kills land in the middle of training, and the
trials left over are re-packed differently), half the analytic ``synthetic`` task (cheap, many
epochs, each one a database write and an ownership check). The storm is bounded: at most
``MAX_KILLS`` kills, and the storm gives up after ``DEADLINE_S``.
"""

from __future__ import annotations

import random
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from service import store
from service.db import dispose_engines, make_engine, session_scope, upgrade_to_head
from service.report import build_report
from service.schemas import StudySpec
from tests.conftest import _pg_conninfo, _pg_execute, pg_schema_url
from tests.reliability.servers import PYTHON, Process, RayHead
from workers.packed import TrialConfig, train_block

pytestmark = [pytest.mark.pg, pytest.mark.slow]

WORKERS = 3
MAX_KILLS = 6
KILL_EVERY_S = (3.0, 6.0)
LEASE_S = "3"
#: About 100 s on a quiet 2-core machine (each study's Ray Tune run costs ~10 s of process start-up
#: alone); the bound leaves room for a machine shared with other test runs.
DEADLINE_S = 240


def storm_specs() -> list[dict]:
    """Ten small studies, alternating the digits MLP (2 epochs) and the synthetic task (20)."""
    grids = {
        "adamw": ({"min": 1e-3, "max": 1e-2, "num": 3}, {"min": 1e-4, "max": 1e-2, "num": 2}),
        "sgdw": ({"min": 1e-2, "max": 1e-1, "num": 3}, {"min": 1e-5, "max": 1e-3, "num": 2}),
        "adam": ({"min": 1e-3, "max": 1e-2, "num": 3}, {"min": 1e-6, "max": 1e-4, "num": 2}),
    }
    specs = []
    for i in range(10):
        opt = ("adamw", "sgdw", "adam")[i % 3]
        lr, wd = grids[opt]
        digits = i % 2 == 0
        specs.append({
            "name": f"storm {i}", "task": "digits_mlp" if digits else "synthetic",
            "epochs": 2 if digits else 20, "batch_size": 64, "schedule": {"name": "cosine"},
            "optimizers": [{"name": opt, "lr": lr, "wd": wd}], "seeds": [i, i + 100],
        })
    return specs


AUDIT = """
CREATE TABLE epoch_audit (trial_id integer, epoch integer, trial_status text,
                          written_at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION audit_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO epoch_audit (trial_id, epoch, trial_status)
    SELECT NEW.trial_id, NEW.epoch, t.status FROM trials t WHERE t.id = NEW.trial_id;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_epoch BEFORE INSERT ON curve_points FOR EACH ROW EXECUTE FUNCTION audit_epoch();
"""


@pytest.fixture
def storm_db():
    """(url, schema): a fresh schema on the shared PostgreSQL server, migrated, with the epoch
    audit; dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    _pg_execute(f'CREATE SCHEMA "{schema}"')
    url = pg_schema_url(schema)
    try:
        upgrade_to_head(url)
        with psycopg.connect(_pg_conninfo(), autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            conn.execute(AUDIT)
        yield url, schema
    finally:
        dispose_engines(url)
        _pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def reference_results(studies: list[tuple[dict, list]]) -> dict[int, list[tuple]]:
    """{trial id: curve} of an undisturbed run, in this process: one block per optimizer and
    training budget, holding that optimizer's trials of every study at once."""
    groups: dict[tuple, tuple[dict, list]] = {}
    for spec, trials in studies:
        for opt in spec["optimizers"]:
            key = (opt["name"], spec["task"], spec["epochs"], spec["batch_size"], repr(spec["schedule"]),
                   spec["wd_normalized"], spec["decay_on"])
            groups.setdefault(key, (spec, []))[1].extend(t for t in trials if t.optimizer == opt["name"])
    out = {}
    for (opt, *_), (spec, trials) in groups.items():
        results = train_block(
            spec["task"], opt, [TrialConfig(t.lr, t.wd, t.seed, key=t.id) for t in trials],
            epochs=spec["epochs"], batch_size=spec["batch_size"], schedule=spec["schedule"],
            wd_normalized=spec["wd_normalized"], decay_on=spec["decay_on"],
        )
        for r in results:
            out[r.key] = [(m.epoch, m.train_loss, m.val_loss, m.val_error) for m in r.curve]
    return out


def test_kill_storm(storm_db):
    url, schema = storm_db
    engine = make_engine(url)
    home = Path(tempfile.mkdtemp(prefix="dks-"))  # short: Ray's socket paths must fit 107 bytes
    rng = random.Random(20)
    head = RayHead(home / "ray", num_cpus=2, log=home / "ray-head.log")
    workers: list[Process] = []
    started = 0

    def start_worker() -> Process:
        nonlocal started
        started += 1
        return Process(
            [PYTHON, "-m", "service.cli", "worker"],
            env=head.env(DECOUPLE_DATABASE_URL=url, DECOUPLE_LEASE_SECONDS=LEASE_S, DECOUPLE_DATA_DIR=str(home / "data")),
            log=home / f"worker-{started}.log",
        )

    def statuses() -> dict[str, tuple[str, str | None]]:
        with session_scope(engine, read_only=True) as s:
            studies, _ = store.list_studies(s, limit=100)
            return {st.id: (st.status, st.claimed_by) for st in studies}

    t0 = time.monotonic()
    kills = []
    try:
        with session_scope(engine) as s:
            ids = [store.create_study(s, StudySpec.model_validate(spec, context={"max_trials": None}), owner="storm").id
                   for spec in storm_specs()]
        head.wait_ready()
        workers = [start_worker() for _ in range(WORKERS)]

        while time.monotonic() - t0 < DEADLINE_S:
            now = statuses()
            if all(status == "done" for status, _ in now.values()):
                break
            assert not any(status == "failed" for status, _ in now.values()), now
            if len(kills) < MAX_KILLS:
                time.sleep(rng.uniform(*KILL_EVERY_S))
                busy = {claim.split(":")[1] for status, claim in statuses().values() if status == "running" and claim}
                candidates = [i for i, w in enumerate(workers) if str(w.pid) in busy] or list(range(WORKERS))
                victim = rng.choice(candidates)
                workers[victim].kill_group(signal.SIGKILL)
                workers[victim].stop(timeout=5)
                kills.append((round(time.monotonic() - t0, 1), victim, str(workers[victim].pid) in busy))
                workers[victim] = start_worker()
            else:
                time.sleep(0.5)
        final = statuses()
        assert all(status == "done" for status, _ in final.values()), (final, kills, _tails(home))
    finally:
        for w in workers:  # done with them: no need to wait for a graceful exit
            w.kill_group(signal.SIGKILL)
            w.stop(timeout=10)
        left = head.stop()
        shutil.rmtree(home, ignore_errors=True)
        time.sleep(1)  # a Ray daemon that was still exiting may have written its last log line
        shutil.rmtree(home, ignore_errors=True)
    assert left == [], f"Ray processes left running: {left}"
    assert len(kills) == MAX_KILLS and sum(busy for *_, busy in kills) >= MAX_KILLS // 2, kills

    with psycopg.connect(_pg_conninfo(), autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        rewritten = conn.execute(
            "SELECT trial_id, epoch FROM epoch_audit WHERE trial_status = 'done'"
        ).fetchall()
        attempts = dict(conn.execute("SELECT id, attempts FROM studies").fetchall())
    assert rewritten == [], f"epochs written to trials already done: {rewritten[:10]}"
    assert max(attempts.values()) >= 2  # the storm did take studies away from their workers

    with session_scope(engine, read_only=True) as s:
        studies = [store.get_study(s, sid) for sid in ids]
        trials = {st.id: store.list_trials(s, st.id) for st in studies}
        curves = store.load_curves(s, [t.id for ts in trials.values() for t in ts])
        want = reference_results([(st.spec, trials[st.id]) for st in studies])
        for study in studies:
            mine = trials[study.id]
            cells = {(t.phase, t.optimizer, t.lr_index, t.wd_index, t.seed) for t in mine}
            assert len(mine) == len(cells) == study.trials_total == 12
            assert {t.status for t in mine} == {"done"}
            # repr: exact for every float (it round-trips), and NaN equals NaN.
            got = [(t.id, [(p["epoch"], p["train_loss"], p["val_loss"], p["val_error"]) for p in curves[t.id]]) for t in mine]
            assert repr(got) == repr([(t.id, want[t.id]) for t in mine]), f"{study.name} differs from an undisturbed run"
            finals = [(t.train_loss, t.val_loss, t.val_error) for t in mine]
            assert repr(finals) == repr([want[t.id][-1][1:] for t in mine])
            # Hence the reports agree too: built from the stored trials, and from the reference.
            stored = build_report(store.study_dict(study), [store.trial_dict(t) for t in mine],
                                  lambda ids: store.load_curves(s, ids))
            reference_trials = [
                {**store.trial_dict(t), **dict(zip(("train_loss", "val_loss", "val_error"), want[t.id][-1][1:]))}
                for t in mine
            ]
            reference = build_report(
                store.study_dict(study), reference_trials,
                lambda ids: {i: [dict(zip(("epoch", "train_loss", "val_loss", "val_error"), p)) for p in want[i]] for i in ids},
            )
            assert stored == reference
    engine.dispose()


def _tails(home: Path) -> str:
    parts = []
    for log in sorted(home.glob("worker-*.log"))[-4:]:
        parts.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(parts)
