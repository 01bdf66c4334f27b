"""``"auto"`` axes end to end: API -> worker (pilot, placement, grid) on a real local Ray -> report.

The analytic ``synthetic`` tasks have a known optimum per optimizer (``SyntheticTask.centre``):
inside each default grid (``synthetic``) and half a decade below its lr range and above its wd
range (``synthetic_offgrid``), so the five optimizers put the optimum at ten places spread over
about 8 decades of lr and 9 of wd. The pure placement sweep is in ``test_autogrid.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sqlalchemy import func, select

from service.db import session_scope
from service.domain import placement as autogrid
from service.models import CurvePoint, Trial
from workers.optim import OPTIMIZER_NAMES
from workers.tasks import get_task
from workers.worker import run_worker


def trials_of(engine, study_id: str) -> list[Trial]:
    with session_scope(engine, read_only=True) as s:
        return list(s.scalars(select(Trial).where(Trial.study_id == study_id).order_by(Trial.id)))


def seed_means(trials: list[Trial], optimizer: str) -> dict[tuple[int, int], float]:
    cells: dict[tuple[int, int], list[float]] = {}
    for t in trials:
        if t.phase == "grid" and t.optimizer == optimizer:
            assert t.status == "done", t
            cells.setdefault((t.lr_index, t.wd_index), []).append(
                t.val_error if not t.diverged else math.inf)
    return {k: float(np.mean(v)) for k, v in cells.items()}


def assert_optimum_inside(task: str, opt: dict, trials: list[Trial]) -> None:
    """The true optimum lies strictly inside the final axes, and so does the best cell."""
    lr_star, wd_star = get_task(task).centre(opt["name"])
    lr, wd = opt["lr"], opt["wd"]
    assert lr["min"] < lr_star < lr["max"] and wd["min"] < wd_star < wd["max"], (opt, lr_star, wd_star)
    means = seed_means(trials, opt["name"])
    assert len(means) == lr["num"] * wd["num"]
    (bi, bj) = min(means, key=means.get)
    lo_i, lo_j = lr.get("origin", 0), wd.get("origin", 0)
    assert lo_i < bi < lo_i + lr["num"] - 1 and lo_j < bj < lo_j + wd["num"] - 1, (opt, bi, bj)


# One database each: every study costs a Ray experiment.
@pytest.mark.parametrize(("empty_db_url", "task"), [
    ("sqlite", "synthetic"), pytest.param("postgresql", "synthetic_offgrid", marks=pytest.mark.pg)],
    indirect=["empty_db_url"])
def test_auto_axes_put_every_optimum_inside_and_keep_the_pilot_apart(task, client, settings, engine, local_ray):
    spec = {"name": f"auto {task}", "task": task, "epochs": 4, "batch_size": 64,
            "optimizers": [{"name": o, "lr": "auto", "wd": {"auto": True, "num": 6}}
                           for o in OPTIMIZER_NAMES],
            "seeds": [3, 4], "metric": "val_error"}
    r = client.post("/studies", json=spec)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert r.json()["trials_total"] == 5 * 8 * 6 * 2
    assert run_worker(once=True, settings=settings, worker_id="w-auto") == 0
    # Pilot and grid ran as one Ray experiment (each grid placed as soon as its pilot was done).
    assert sorted(p.name for p in (settings.state_dir / "results").iterdir()
                  if p.name.startswith(f"study-{sid}")) == [f"study-{sid}"]

    study = client.get(f"/studies/{sid}").json()
    assert study["status"] == "done"
    assert study["progress"].items() >= {"trials_total": 480, "trials_done": 480, "trials_failed": 0}.items()  # and epochs_recorded
    trials = trials_of(engine, sid)
    pilot = [t for t in trials if t.phase == "pilot"]
    # One pilot block per optimizer (its 36 cells), not cut to balance the slots.
    assert len({(t.optimizer, t.started_at) for t in pilot}) == 5
    # 36 one-seed cells per optimizer, the spec's first seed, each trained once.
    assert len(pilot) == 5 * 36 and {t.seed for t in pilot} == {3}
    assert all(t.status == "done" and t.attempts == 1 for t in trials)
    # pilot_epochs(4, 36 pilot, 96 final) = floor(1/3 * 96*4/36) = 3 epochs (share 25 %).
    assert autogrid.pilot_epochs(4, pilot_trials=36, final_trials=96) == 3
    with session_scope(engine, read_only=True) as s:
        rows = s.execute(  # the last epoch recorded per trial
            select(CurvePoint.trial_id, func.max(CurvePoint.epoch)).where(
                CurvePoint.trial_id.in_([t.id for t in trials])).group_by(CurvePoint.trial_id)).all()
    epochs = {tid: n for tid, n in rows}
    assert {epochs[t.id] for t in pilot} == {2} and {epochs[t.id] for t in trials if t.phase == "grid"} == {3}

    for opt in study["spec"]["optimizers"]:
        assert opt["lr"]["placement"] == "auto" and opt["wd"]["placement"] == "auto"
        assert (opt["lr"]["num"], opt["wd"]["num"]) == (8, 6)
        assert_optimum_inside(task, opt, trials)

    report = client.get(f"/studies/{sid}/report").json()
    for e in report["optimizers"]:
        assert e["placement"] == {"lr": "auto", "wd": "auto"}
        assert e["trials"]["total"] == 8 * 6 * 2  # pilot trials are not in the grid's measures
        assert len(e["grid"]["lr"]) == 8 and len(e["grid"]["wd"]) == 6
    html = client.get(f"/studies/{sid}/report.html").text
    assert html.count("class='pilot'") == 5 and "placed: lr auto, wd auto" in html


@pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)
def test_resumed_study_reuses_its_pilot_and_shares_lr_windows(client, settings, engine, local_ray):
    """A worker that died after the pilot: the next one runs no pilot trial again. Also a given
    wd axis (piloted on its own values) and ``share_lr_window`` within the Adam family."""
    from service import store
    from workers.auto_phase import run_pilots

    spec = {"name": "resume", "task": "synthetic", "epochs": 2, "batch_size": 64,
            "optimizers": [{"name": "adam", "lr": {"auto": True, "num": 5},
                            "wd": {"min": 1e-6, "max": 1e-2, "num": 3}},
                           {"name": "adamw", "lr": {"auto": True, "num": 5}, "wd": "auto"}],
            "seeds": [0], "share_lr_window": True}
    sid = client.post("/studies", json=spec).json()["id"]
    with session_scope(engine) as s:
        store.claim_study(s, "w-dead", 600)
    from workers.runner import run_rows

    def run(rows, epochs, phase):
        return run_rows(engine, sid, "w-dead", settings, rows, epochs=epochs, phase=phase)

    assert run_pilots(engine, sid, run, lambda: True)
    with session_scope(engine) as s:  # the grid was placed, then the worker died
        study = store.get_study(s, sid)
        placed = study.spec["optimizers"]
        study.status, study.claimed_by = "queued", None
    adam, adamw = placed
    assert adam["lr"] == adamw["lr"] and adam["lr"]["placement"] == "auto" and adam["lr"]["num"] == 5
    assert adam["wd"] == {"min": 1e-6, "max": 1e-2, "num": 3, "placement": "given"}
    pilot_ids = {t.id: t.finished_at for t in trials_of(engine, sid) if t.phase == "pilot"}
    assert run_worker(once=True, settings=settings, worker_id="w-next") == 0
    trials = trials_of(engine, sid)
    assert {t.id: t.finished_at for t in trials if t.phase == "pilot"} == pilot_ids
    assert all(t.status == "done" and t.attempts == 1 for t in trials)
    assert len(trials) == (6 * 3 + 36) + (5 * 3 + 5 * 8)
    # The given wd axis: the pilot runs its own 3 values (it has fewer than 6).
    assert sorted({t.wd for t in trials if t.phase == "pilot" and t.optimizer == "adam"}) == \
        pytest.approx([1e-6, 1e-4, 1e-2])
    study = client.get(f"/studies/{sid}").json()
    assert study["status"] == "done" and study["spec"]["optimizers"] == placed
    assert [e["placement"] for e in client.get(f"/studies/{sid}/report").json()["optimizers"]] == \
        [{"lr": "auto", "wd": "given"}, {"lr": "auto", "wd": "auto"}]


@pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)
def test_phased_blocks_place_each_grid_when_its_own_pilot_is_done(client, settings, engine, db_url):
    """``PhasedBlocks`` driven by hand as Tune drives it (two slots, each block trained for real
    by ``execute_block`` on the analytic task, no Ray): every pilot block is handed out first, an
    optimizer's grid appears once its pilot block has finished (both Adam-family optimizers'
    pilots under ``share_lr_window``), blocks shrink towards the end, and every trial is handed
    out exactly once."""
    from service import store
    from workers import auto_phase
    from workers.blocks import execute_block
    from workers.ray_adapter import DONE

    spec = {"name": "phased", "task": "synthetic", "epochs": 2, "batch_size": 64,
            "optimizers": [{"name": "sgd", "lr": "auto", "wd": "auto"},
                           {"name": "adam", "lr": "auto", "wd": "auto"},
                           {"name": "adamw", "lr": "auto", "wd": "auto"}],
            "seeds": [0, 1], "share_lr_window": True}
    sid = client.post("/studies", json=spec).json()["id"]
    with session_scope(engine) as s:
        store.claim_study(s, "w", 600)
    groups, epochs = auto_phase.add_pilots(engine, sid)
    assert sorted(map(sorted, groups)) == [["adam", "adamw"], ["sgd"]] and set(epochs.values()) == {2}
    base = {"study_id": sid, "worker_id": "w", "task": "synthetic", "batch_size": 64,
            "schedule": {"name": "constant"}, "wd_normalized": False, "decay_on": "all"}

    def make_config(opt, rows, ep, phase):
        return {**base, "optimizer": opt, "trials": [[r[0], r[2], r[3], r[4]] for r in rows],
                "epochs": ep or 2, "phase": phase}

    def source_for(slots):
        return auto_phase.PhasedBlocks(engine, sid, groups=groups, pilot_epochs=epochs,
                                       make_config=make_config, max_block=256, slots=slots,
                                       min_block=8, still_ours=lambda: True)

    # Eight slots for three pilots: each pilot in three pieces of 12, so every slot starts on one.
    many = source_for(8)
    assert [(c["optimizer"], len(c["trials"])) for c in many._queue] == \
        [(o, 12) for o in ("sgd", "adam", "adamw") for _ in range(3)]
    source = source_for(2)
    running, handed, log = [], [], []
    while True:
        while len(running) < 2:  # Tune asks while fewer than `slots` blocks are live
            config = source.next_block()
            if config is None or config == DONE:
                break
            running.append(config)
            handed.append(config)
            log.append((config["phase"], config["optimizer"], len(config["trials"])))
        if not running:
            assert config == DONE
            break
        done = running.pop(0)  # the oldest block finishes first
        source.block_done(done, execute_block(done, db_url), False)

    # The three pilots (36 cells each) first; sgd's grid (64 x 2 seeds) could start after its
    # pilot, the Adam family's only after both of its pilots.
    assert log[:3] == [("pilot", "sgd", 36), ("pilot", "adam", 36), ("pilot", "adamw", 36)]
    assert log[3][:2] == ("grid", "sgd")
    assert [n for p, o, n in log[3:] if p == "pilot"] == []
    sizes = [n for p, _, n in log if p == "grid"]
    assert sum(sizes) == 3 * 128 and sizes[-1] < sizes[0]
    ids = [t[0] for c in handed for t in c["trials"]]
    assert len(ids) == len(set(ids)) == 3 * 36 + 3 * 128
    trials = trials_of(engine, sid)
    assert len(trials) == len(ids) and all(t.status == "done" for t in trials)
    with session_scope(engine, read_only=True) as s:
        placed = store.get_study(s, sid).spec["optimizers"]
    assert placed[1]["lr"] == placed[2]["lr"] and placed[1]["lr"]["placement"] == "auto"


def test_a_pilot_block_that_loses_the_database_is_not_a_failed_pilot(client, engine, db_url):
    """A pilot block whose database is unreachable (a real refused connection) reports
    ``db_lost``: its cells stay queued, nothing is placed, the source hands out nothing more and
    holds DatabaseUnavailable for the runner; a grid block in the same state raises instead
    (Ray retries it)."""
    from service import store
    from service.errors import DatabaseUnavailable
    from workers import auto_phase
    from workers.blocks import execute_block
    from workers.ray_adapter import DONE

    spec = {"name": "lost", "task": "synthetic", "epochs": 2, "batch_size": 64,
            "optimizers": [{"name": "adamw", "lr": "auto", "wd": "auto"}], "seeds": [0]}
    sid = client.post("/studies", json=spec).json()["id"]
    with session_scope(engine) as s:
        store.claim_study(s, "w", 600)
    groups, epochs = auto_phase.add_pilots(engine, sid)
    base = {"study_id": sid, "worker_id": "w", "task": "synthetic", "batch_size": 64,
            "schedule": {"name": "constant"}, "wd_normalized": False, "decay_on": "all"}
    source = auto_phase.PhasedBlocks(
        engine, sid, groups=groups, pilot_epochs=epochs, max_block=256, slots=1, min_block=8,
        make_config=lambda opt, rows, ep, phase: {**base, "optimizer": opt, "epochs": ep or 2, "phase": phase,
                                                  "trials": [[r[0], r[2], r[3], r[4]] for r in rows]},
        still_ours=lambda: True)
    pilot = source.next_block()
    unreachable = "postgresql+psycopg://postgres@127.0.0.1:9/test"  # nothing listens on port 9
    metrics = execute_block(pilot, unreachable)
    assert metrics == {"trials_done": 0, "stopped": True, "db_lost": True}
    source.block_done(pilot, metrics, False)
    assert isinstance(source.error, DatabaseUnavailable) and source.next_block() == DONE
    trials = trials_of(engine, sid)
    assert len(trials) == 36 and {(t.phase, t.status) for t in trials} == {("pilot", "queued")}
    with session_scope(engine, read_only=True) as s:
        assert store.get_study(s, sid).spec["optimizers"][0]["lr"] == {"auto": True, "num": 8}
    with pytest.raises(DatabaseUnavailable):
        execute_block({**pilot, "phase": "grid"}, unreachable)


@pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)
def test_a_pilot_that_fails_is_placed_without_it_and_the_study_finishes(client, settings, engine, local_ray):
    """A real failure inside the one experiment (CIFAR-10 is not in the data directory): the
    pilot block fails after its retries, the optimizer is placed without it (nothing measured:
    centred on the pilot), its grid is queued and fails the same way, and the study ends as done
    instead of waiting for a placement that never comes."""
    from workers.runner import BLOCK_RETRIES

    spec = {"name": "no data", "task": "cifar10_resnet", "epochs": 1, "batch_size": 128,
            "optimizers": [{"name": "adamw", "lr": {"auto": True, "num": 2},
                            "wd": {"min": 1e-4, "max": 1e-4, "num": 1}}],
            "seeds": [0]}
    sid = client.post("/studies", json=spec).json()["id"]
    assert run_worker(once=True, settings=settings, worker_id="w-nodata") == 0
    study = client.get(f"/studies/{sid}").json()
    assert study["status"] == "done"
    assert study["progress"].items() >= {"trials_total": 2, "trials_done": 0, "trials_failed": 2}.items()  # and epochs_recorded
    (opt,) = study["spec"]["optimizers"]
    assert opt["lr"] == {"min": 7.94e-06, "max": 0.00794, "num": 2, "placement": "auto"}
    trials = trials_of(engine, sid)
    assert [(t.phase, t.status, t.attempts) for t in trials] == \
        [("pilot", "failed", 1 + BLOCK_RETRIES)] * 6 + [("grid", "failed", 1 + BLOCK_RETRIES)] * 2
    assert all("CIFAR-10 not found" in t.error for t in trials)
