"""Seeds until decided end to end: API -> worker (one Ray experiment, seeds added as each
optimizer's current seeds finish) -> report.

The ``synthetic_seeds`` task's noise differs by optimizer and is deterministic in (optimizer,
lr, wd, seed) on every CPU (keyed on lr and wd to 13 significant digits, not their last bit), so
on the 6 x 6 grids below the path is fixed: ``sgdw`` (noise 0.002) is separable at 2 seeds;
``adamw`` (0.0485) is inconclusive at 2 with ``seeds_to_decide`` 5, gets half-way there (4 seeds)
and is separable; ``adam`` (0.045) is inconclusive at 2 with no projection (more seeds alone would
not decide) and stops. Measured ranges giving these paths: sgdw 0.001..0.0045 (all scanned),
adamw 0.047..0.050, adam 0.0275..0.0675. The test re-derives each path from the
stored trials with ``decide`` and ``next_step`` as well as checking those expected outcomes.
"""

from __future__ import annotations

import pytest

from service import store
from service.db import session_scope
from service.domain.catalog import DEFAULT_GRIDS
from service.domain.seeds import next_step
from service.report import optimizer_decision
from workers.worker import run_worker


def _grid(name: str) -> dict:
    g = DEFAULT_GRIDS[name]
    return {"name": name, "lr": {"min": g["lr"].min, "max": g["lr"].max, "num": 6},
            "wd": {"min": g["wd"].min, "max": g["wd"].max, "num": 6}}


@pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)
def test_seeds_until_decided_adds_seeds_only_where_inconclusive(client, settings, engine, local_ray):
    spec = {"name": "seeds until decided", "task": "synthetic_seeds", "epochs": 2, "batch_size": 64,
            "optimizers": [_grid("sgdw"), _grid("adamw"), _grid("adam")],
            "seeds": {"auto": True, "min": 2, "max": 8}}
    r = client.post("/studies", json=spec)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert r.json()["trials_total"] == 3 * 36 * 8  # the worst case until each optimizer stops
    assert run_worker(once=True, settings=settings, worker_id="w-seeds") == 0
    # One Ray experiment: the added seeds ran in the same one as the first two.
    assert sorted(p.name for p in (settings.state_dir / "results").iterdir()
                  if p.name.startswith(f"study-{sid}")) == [f"study-{sid}"]

    with session_scope(engine, read_only=True) as s:
        rows = store.list_trials(s, sid)
        attempts = [t.attempts for t in rows]
        trials = [store.trial_dict(t) for t in rows]
    study = client.get(f"/studies/{sid}").json()
    assert study["status"] == "done"
    # Nothing ran twice: one row per (optimizer, cell, seed), each trained once, all done.
    keys = [(t["optimizer"], t["lr_index"], t["wd_index"], t["seed"]) for t in trials]
    assert len(keys) == len(set(keys))
    assert attempts == [1] * len(trials)
    assert all(t["status"] == "done" and t["phase"] == "grid" for t in trials)
    got = {n: sorted({t["seed"] for t in trials if t["optimizer"] == n}) for n in ("sgdw", "adamw", "adam")}
    for name, seeds in got.items():  # seeds 0..k-1, every cell for each
        assert seeds == list(range(len(seeds)))
        assert sum(t["optimizer"] == name for t in trials) == 36 * len(seeds)
    # Progress ends exact: the worst case lowered by the seeds each optimizer did not get.
    total = sum(36 * len(v) for v in got.values())
    assert study["progress"].items() >= {"trials_total": total, "trials_done": total, "trials_failed": 0}.items()  # and epochs_recorded

    given = study["spec"]["seeds"]["given"]
    for opt in study["spec"]["optimizers"]:
        name = opt["name"]
        # Re-derive the path from the stored trials: decide on the first k seeds, then next_step.
        have, path = 2, []
        while True:
            dec = optimizer_decision(opt, study["spec"], [t for t in trials if t["seed"] < have])
            n, stop = next_step(dec["verdict"], dec["seeds_to_decide"], have, 8)
            path.append((have, dec["verdict"], dec["seeds_to_decide"]))
            if stop:
                break
            have = n
        assert given[name] == {"seeds": have, "stopped": stop, "verdict": dec["verdict"],
                               "seeds_to_decide": dec["seeds_to_decide"]}, path
        assert len(got[name]) == have, path
    # The designed outcomes (see the module docstring): one decided at min, one needing more.
    assert (given["sgdw"]["seeds"], given["sgdw"]["stopped"], given["sgdw"]["verdict"]) == (2, "decided", "separable")
    assert (given["adamw"]["seeds"], given["adamw"]["stopped"]) == (4, "decided")
    assert (given["adam"]["seeds"], given["adam"]["stopped"]) == (2, "seeds_will_not_decide")

    report = client.get(f"/studies/{sid}/report").json()
    for e in report["optimizers"]:
        rounds = e["seed_rounds"]
        assert (rounds["seeds"], rounds["seeds_done"], rounds["stopped"]) == (
            given[e["name"]]["seeds"], len(got[e["name"]]), given[e["name"]]["stopped"])
        assert e["decision"]["verdict"] == given[e["name"]]["verdict"]
        assert e["decision"]["seeds"] == len(got[e["name"]])
    html = client.get(f"/studies/{sid}/report.html").text
    assert "seeds auto, 2 to 8" in html
    assert "seeds until decided: 4 of at most 8 seeds, decided (separable)" in html
    assert html.count("more seeds would not decide it") == 1


def _finish_pending(engine, sid: str) -> int:
    """Play a worker for the pending trials: the synthetic task's final outcome of each."""
    from workers.tasks import get_task

    task, n = get_task("synthetic_seeds"), 0
    with session_scope(engine) as s:
        for t in store.pending_trials(s, sid):
            o = task.outcome(t.optimizer, t.lr, t.wd, t.seed, 1, 2)
            store.finish_trial(s, t.id, "w", train_loss=o.train_loss, val_loss=o.val_loss,
                               val_error=o.val_error)
            n += 1
    return n


def test_seed_round_adds_new_rows_stops_once_and_keeps_progress_an_upper_bound(client, engine):
    """The store side of a round without Ray (both databases): added seeds are new rows only,
    ``trials_total`` never rises and ends exact, and a stopped optimizer's round is a no-op (a
    resumed worker may run it again)."""
    from workers.auto_phase import seed_round

    spec = {"name": "rounds", "task": "synthetic_seeds", "epochs": 2, "batch_size": 64,
            "optimizers": [_grid("sgdw"), _grid("adamw")], "seeds": {"auto": True, "min": 2, "max": 8}}
    sid = client.post("/studies", json=spec).json()["id"]
    with session_scope(engine) as s:
        assert store.claim_study(s, "w", 60).id == sid
    assert _finish_pending(engine, sid) == 2 * 36 * 2
    totals = [client.get(f"/studies/{sid}").json()["progress"]["trials_total"]]
    assert totals == [2 * 36 * 8]
    assert seed_round(engine, sid, "sgdw") == []  # separable at 2 seeds
    assert seed_round(engine, sid, "sgdw") == []  # stopped: nothing happens twice
    totals.append(client.get(f"/studies/{sid}").json()["progress"]["trials_total"])
    assert seed_round(engine, sid, "adamw") == [2, 3]  # seeds_to_decide 5: half-way, 2 -> 4
    p = client.get(f"/studies/{sid}").json()["progress"]
    totals.append(p["trials_total"])
    assert p["trials_done"] == 2 * 36 * 2
    assert _finish_pending(engine, sid) == 36 * 2  # only the new seeds' trials were pending
    assert seed_round(engine, sid, "adamw") == []
    study = client.get(f"/studies/{sid}").json()
    totals.append(study["progress"]["trials_total"])
    assert totals == [576, 576 - 36 * 6, 576 - 36 * 6, 36 * 2 + 36 * 4]
    assert study["progress"]["trials_done"] == totals[-1]
    assert study["spec"]["seeds"]["given"] == {
        "sgdw": {"seeds": 2, "stopped": "decided", "verdict": "separable", "seeds_to_decide": None},
        "adamw": {"seeds": 4, "stopped": "decided", "verdict": "separable", "seeds_to_decide": None}}
