"""The API the team's pages build on (issue 20): ``POST /studies?dry_run=true``, ``GET /atlas``,
the exports, and the report cache's key, in-process on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service import store
from service.api import create_app
from service.db import session_scope
from service.models import Study
from service.tokens import create_token
from tests.conftest import make_spec


def finish_all(engine, study_id: str, value=lambda t: 0.5, *, seconds: float | None = None) -> None:
    """Play a worker: claim, finish every trial with ``value(trial)``, mark done; ``seconds``:
    set the study's wall time (finished_at - started_at) to exactly that."""
    with session_scope(engine) as s:
        assert store.claim_study(s, "w", 60).id == study_id
        for t in store.pending_trials(s, study_id):
            v = value(t)
            store.finish_trial(s, t.id, "w", train_loss=v, val_loss=v, val_error=v)
        assert store.finish_study(s, study_id, "w", "done")
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
                         "optimizers", "spec"}
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
        dry = c.post("/studies?dry_run=true", json=make_spec(priority=5), headers=alice)
        real = c.post("/studies", json=make_spec(priority=5), headers=alice)
        assert dry.status_code == real.status_code == 403 and dry.json() == real.json()
        assert c.post("/studies", json=make_spec(), headers=alice).status_code == 201  # 12 of 20 queued
        dry = c.post("/studies?dry_run=true", json=make_spec(), headers=alice)
        real = c.post("/studies", json=make_spec(), headers=alice)
        assert dry.status_code == real.status_code == 429 and dry.json() == real.json()
        assert c.post("/studies?dry_run=true", json=make_spec(seeds=[0]), headers=alice).status_code == 200
        assert c.get("/studies", headers=alice).json()["count"] == 1
