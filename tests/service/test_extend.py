"""Edge repair: ``POST /studies/{id}/extend`` and the ``auto_extend`` option, end to end.

``synthetic_offgrid`` puts each optimizer's optimum half a decade below its default lr range and
above its default wd range, so a study on the default grids is edge-bound in both axes. After
repair the optimum must lie inside, every trial of the first grid keeps its id and result, and
no trial is ever run twice (``attempts == 1``).
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from service.db import session_scope
from service.domain.catalog import DEFAULT_GRIDS
from service.models import Trial
from tests.service.test_api import auth_client  # noqa: F401 (a fixture)
from workers.tasks import get_task
from workers.worker import run_worker


def offgrid_spec(**extra) -> dict:
    return {"name": "edge-bound", "task": "synthetic_offgrid", "epochs": 2, "batch_size": 64,
            "optimizers": [{"name": "sgdw"}], "seeds": [0, 1], **extra}


def trials_of(engine, study_id: str) -> list[Trial]:
    with session_scope(engine, read_only=True) as s:
        return list(s.scalars(select(Trial).where(Trial.study_id == study_id).order_by(Trial.id)))


def best_cell(trials: list[Trial]) -> tuple[int, int]:
    cells: dict[tuple[int, int], list[float]] = {}
    for t in trials:
        cells.setdefault((t.lr_index, t.wd_index), []).append(t.val_error)
    return min(cells, key=lambda k: sum(cells[k]) / len(cells[k]))


def assert_repaired(spec_opt: dict, trials: list[Trial], first: dict[int, tuple]) -> None:
    lr, wd = spec_opt["lr"], spec_opt["wd"]
    lr_star, wd_star = get_task("synthetic_offgrid").centre("sgdw")
    assert lr["min"] < lr_star < lr["max"] and wd["min"] < wd_star < wd["max"]
    assert lr["placement"] == "extended" and wd["placement"] == "extended"
    bi, bj = best_cell(trials)
    assert lr["origin"] < bi < lr["origin"] + lr["num"] - 1 and 0 < bj < wd["num"] - 1
    assert len(trials) == lr["num"] * wd["num"] * 2
    assert all(t.status == "done" and t.attempts == 1 for t in trials)
    # The first grid: same ids, same results.
    assert {t.id: (t.lr_index, t.wd_index, t.seed, t.val_error) for t in trials if t.id in first} == first


# One database each: every worker run is a Ray experiment (~10 s).
@pytest.mark.parametrize("empty_db_url", [pytest.param("postgresql", marks=pytest.mark.pg)], indirect=True)
def test_extend_endpoint_repairs_an_edge_bound_grid(client, settings, engine, local_ray):
    sid = client.post("/studies", json=offgrid_spec()).json()["id"]
    r = client.post(f"/studies/{sid}/extend")
    assert r.status_code == 409 and r.json()["detail"] == \
        f"study {sid} is queued; only a done study can be extended"
    assert run_worker(once=True, settings=settings, worker_id="w-1") == 0
    first = {t.id: (t.lr_index, t.wd_index, t.seed, t.val_error) for t in trials_of(engine, sid)}
    assert len(first) == 128
    assert client.get(f"/studies/{sid}/report").json()["optimizers"][0]["placement"] == \
        {"lr": "given", "wd": "given"}

    # Bad inputs: reasons, nothing changed.
    r = client.post(f"/studies/{sid}/extend", json={"optimizers": ["adam"]})
    assert r.status_code == 422 and "the study has no optimizer 'adam' (it has sgdw)" in r.text
    assert client.post(f"/studies/{sid}/extend", json={"steps": 0}).status_code == 422
    assert client.post(f"/studies/{sid}/extend", json={"steps": 9}).status_code == 422
    assert client.post(f"/studies/{sid}/extend", json={"bogus": 1}).status_code == 422
    assert client.post("/studies/0123456789abcdef0123456789abcdef/extend").status_code == 404
    assert client.get(f"/studies/{sid}").json()["status"] == "done"

    r = client.post(f"/studies/{sid}/extend", json={"optimizers": ["sgdw"]})
    assert r.status_code == 200, r.text
    body = r.json()
    grid = DEFAULT_GRIDS["sgdw"]
    assert body["status"] == "queued" and body["trials_total"] == 10 * 10 * 2
    assert body["extended"]["sgdw"]["lr"]["direction"] == "lower"
    assert body["extended"]["sgdw"]["wd"]["direction"] == "higher"
    assert body["extended"]["sgdw"]["lr"]["steps"] == 2 and body["extended"]["sgdw"]["lr"]["num"] == 10
    assert body["extended"]["sgdw"]["trials_added"] == 10 * 10 * 2 - 128
    assert client.get(f"/studies/{sid}/report").json()["status"] == "queued"  # cache dropped

    assert run_worker(once=True, settings=settings, worker_id="w-2") == 0
    study = client.get(f"/studies/{sid}").json()
    assert study["status"] == "done" and study["progress"]["trials_done"] == 200
    opt = study["spec"]["optimizers"][0]
    assert opt["lr"]["origin"] == -2 and opt["lr"]["max"] == grid["lr"].max
    assert_repaired(opt, trials_of(engine, sid), first)
    report = client.get(f"/studies/{sid}/report").json()["optimizers"][0]
    assert report["placement"] == {"lr": "extended", "wd": "extended"}
    assert report["trials"]["total"] == 200 and len(report["grid"]["lr"]) == 10

    r = client.post(f"/studies/{sid}/extend")
    assert r.status_code == 409 and r.json()["detail"] == \
        "nothing to extend: no optimizer has its best cell on an edge of its grid"
    r = client.post(f"/studies/{sid}/extend", json={"optimizers": ["sgdw"], "steps": 1})
    assert r.status_code == 409 and r.json()["detail"] == \
        "nothing to extend: the best cell of sgdw is inside its grid"


@pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)
def test_auto_extend_repairs_within_the_same_run(client, settings, engine, local_ray):
    sid = client.post("/studies", json=offgrid_spec(auto_extend=2)).json()["id"]
    assert client.get(f"/studies/{sid}").json()["spec"]["auto_extend"] == 2
    assert run_worker(once=True, settings=settings, worker_id="w-3") == 0
    study = client.get(f"/studies/{sid}").json()
    assert study["status"] == "done" and study["attempts"] == 1
    trials = trials_of(engine, sid)
    first = {t.id: (t.lr_index, t.wd_index, t.seed, t.val_error) for t in trials[:128]}
    assert {(t.lr_index, t.wd_index) for t in trials[:128]} == {(i, j) for i in range(8) for j in range(8)}
    assert_repaired(study["spec"]["optimizers"][0], trials, first)


def test_auto_extend_is_bounded(client):
    r = client.post("/studies", json=offgrid_spec(auto_extend=6))
    assert r.status_code == 422 and "auto_extend" in r.text


def test_only_owner_or_admin_may_extend(auth_client):  # noqa: F811 (the imported fixture)
    c = auth_client
    sid = c.post("/studies", json=offgrid_spec(), headers=c.tokens["alice"]).json()["id"]
    r = c.post(f"/studies/{sid}/extend", headers=c.tokens["bob"])
    assert (r.status_code, r.json()) == (403, {
        "detail": f"study {sid} belongs to 'alice'; only its owner or an admin may change it"})
    for who in ("alice", "root"):
        r = c.post(f"/studies/{sid}/extend", headers=c.tokens[who])
        assert (r.status_code, r.json()) == (409, {
            "detail": f"study {sid} is queued; only a done study can be extended"})
    assert c.post(f"/studies/{sid}/extend").status_code == 401


def test_a_stored_axis_origin_numbers_its_trials():
    """An extended axis keeps its first point's trial index (``origin``) through a round trip."""
    from service.schemas import StudySpec
    from service.store import grid_rows

    lr = {"min": 1e-3, "max": 1e-1, "num": 3, "placement": "extended", "origin": -1}
    spec = StudySpec.from_stored({"name": "x", "task": "synthetic", "optimizers": [
        {"name": "sgdw", "lr": lr, "wd": {"min": 1e-4, "max": 1e-4, "num": 1}}]})
    assert spec.stored()["optimizers"][0]["lr"] == lr
    assert [(r["lr_index"], r["wd_index"]) for r in grid_rows(spec)] == [(-1, 0), (0, 0), (1, 0)]
    with pytest.raises(ValueError, match="origin"):
        StudySpec.from_stored({"name": "x", "task": "synthetic", "optimizers": [
            {"name": "sgdw", "lr": {**lr, "origin": 1}}]})
