"""The REST API (``docs/api.md``), in-process (TestClient) on SQLite and PostgreSQL, and once as a
real ``decouple serve`` (uvicorn) process."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from service import store
from service.api import create_app
from service.cli import CliError
from service.config import Settings
from service.db import head_revision, session_scope
from service.domain.catalog import DEFAULT_GRIDS
from service.domain.conventions import all_names, valid_names_message
from service.errors import SchemaOutOfDate
from service.schemas import OPTIMIZER_NAMES, user_task_names
from service.tokens import create_token
from tests.conftest import TEST_HOSTS, make_spec

UNREACHABLE_PG = "postgresql+psycopg://postgres@127.0.0.1:9/nowhere"


def post(client, **overrides):
    return client.post("/studies", json=make_spec(**overrides))


def finish_all(engine, study_id: str, value=lambda t: 0.5) -> None:
    """Play a worker: claim the study, finish every trial with ``value(trial)``, mark it done."""
    with session_scope(engine) as s:
        assert store.claim_study(s, "w", 60).id == study_id
        for t in store.pending_trials(s, study_id):
            v = value(t)
            store.finish_trial(s, t.id, "w", train_loss=v, val_loss=v, val_error=v)
        assert store.finish_study(s, study_id, "w", "done")


# --- create, read, list --------------------------------------------------------------------------


def test_create_then_get(client):
    r = post(client, name="five optimizers")
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"id", "status", "trials_total"}
    assert body["status"] == "queued" and body["trials_total"] == 12
    assert r.headers["location"] == f"/studies/{body['id']}"

    got = client.get(f"/studies/{body['id']}").json()
    assert got["name"] == "five optimizers" and got["owner"] == "local" and got["status"] == "queued"
    assert got["progress"] == {"trials_total": 12, "trials_done": 0, "trials_failed": 0, "epochs_recorded": 0}
    assert got["spec"]["optimizers"][0]["wd"] == {"min": 1e-4, "max": 1e-2, "num": 2}
    assert got["created_at"] and got["started_at"] is None and got["finished_at"] is None


def test_left_out_axes_and_budget_take_the_defaults(client):
    r = client.post("/studies", json={"name": "defaults", "task": "digits_mlp", "optimizers": [{"name": "sgdw"}]})
    assert r.status_code == 201
    grid = DEFAULT_GRIDS["sgdw"]
    assert r.json()["trials_total"] == grid["lr"].num * grid["wd"].num
    spec = client.get(f"/studies/{r.json()['id']}").json()["spec"]
    assert spec["optimizers"] == [{"name": "sgdw", "lr": grid["lr"].as_dict(), "wd": grid["wd"].as_dict()}]
    assert (spec["epochs"], spec["batch_size"], spec["seeds"], spec["schedule"]) == (30, 64, [0], {"name": "constant"})


def test_list_newest_first_filters_and_pages(client, engine):
    ids = [post(client, name=f"s{i}").json()["id"] for i in range(5)]
    with session_scope(engine) as s:
        store.cancel_study(s, ids[3], store.Principal("local"))
    body = client.get("/studies").json()
    assert [d["id"] for d in body["data"]] == ids[::-1] and body["count"] == 5
    body = client.get("/studies", params={"limit": 2, "offset": 1}).json()
    assert [d["id"] for d in body["data"]] == [ids[3], ids[2]] and body["count"] == 5
    body = client.get("/studies", params={"status": "cancelled"}).json()
    assert [d["id"] for d in body["data"]] == [ids[3]] and body["count"] == 1
    body = client.get("/studies", params={"owner": "somebody"}).json()
    assert body == {"data": [], "count": 0}
    assert client.get("/studies", params={"status": "paused"}).status_code == 422
    r = client.get("/studies", params={"limit": 0})
    assert r.status_code == 422 and r.json()["detail"] == "limit: Input should be greater than or equal to 1"


def test_trials_json_and_csv(client, engine):
    sid = post(client).json()["id"]
    with session_scope(engine) as s:
        first = store.list_trials(s, sid)[0]
        store.finish_trial(s, first.id, "w", train_loss=math.nan, val_loss=math.inf, val_error=0.9,
                           diverged=True, diverged_epoch=2)
    body = client.get(f"/studies/{sid}/trials").json()
    assert body["count"] == 12 == len(body["data"])
    t0 = body["data"][0]
    assert {"id", "optimizer", "lr", "wd", "seed", "status", "train_loss", "val_loss", "val_error"} <= set(t0)
    assert (t0["status"], t0["train_loss"], t0["val_loss"], t0["val_error"], t0["diverged"]) == ("done", None, None, 0.9, True)

    r = client.get(f"/studies/{sid}/trials", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 3 * 2 * 2  # cells x seeds
    assert (rows[0]["train_loss"], rows[0]["val_loss"], rows[0]["val_error"]) == ("nan", "inf", "0.9")
    assert rows[1]["status"] == "queued" and rows[1]["val_error"] == ""
    assert sorted({float(row["lr"]) for row in rows}) == pytest.approx([1e-3, 1e-2, 1e-1], rel=1e-12)
    assert {int(row["seed"]) for row in rows} == {0, 1}


def test_curve(client, engine):
    sid = post(client).json()["id"]
    other = post(client).json()["id"]
    with session_scope(engine) as s:
        tid = store.list_trials(s, sid)[0].id
        store.record_epoch(s, tid, 1, 2.0, 2.25, 0.5)
        store.record_epoch(s, tid, 2, 1.0, math.nan, 0.25)
    body = client.get(f"/studies/{sid}/trials/{tid}/curve").json()
    assert body == {"study_id": sid, "trial_id": tid, "points": [
        {"epoch": 1, "train_loss": 2.0, "val_loss": 2.25, "val_error": 0.5},
        {"epoch": 2, "train_loss": 1.0, "val_loss": None, "val_error": 0.25},
    ]}
    r = client.get(f"/studies/{other}/trials/{tid}/curve")
    assert r.status_code == 404 and r.json() == {"detail": f"no trial {tid} in study '{other}'"}


def test_unknown_study_is_404_everywhere(client):
    for method, path in [("GET", "/studies/nope"), ("GET", "/studies/nope/trials"),
                         ("GET", "/studies/nope/report"), ("POST", "/studies/nope/cancel"),
                         ("DELETE", "/studies/nope")]:
        r = client.request(method, path)
        assert (r.status_code, r.json()) == (404, {"detail": "no study 'nope'"}), path


def test_cancel_and_delete_with_auth_off(client):
    sid = post(client).json()["id"]
    r = client.post(f"/studies/{sid}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.post(f"/studies/{sid}/cancel").status_code == 200
    assert client.delete(f"/studies/{sid}").json() == {"id": sid, "deleted": True}
    assert client.get(f"/studies/{sid}").status_code == 404


# --- bad input -----------------------------------------------------------------------------------


def _opt(**axes):
    return [{"name": "adam", **axes}]


BAD_SPECS = [
    ({"optimizers": [{"name": "adagrad"}]},
     f"optimizers[0].name: unknown optimizer 'adagrad': unknown base 'adagrad'; {valid_names_message()}"),
    ({"optimizers": [{"name": "lion:l1"}]},
     f"optimizers[0].name: unknown optimizer 'lion:l1': unknown convention 'l1'; {valid_names_message()}"),
    ({"task": "imagenet"},
     f"task: unknown task 'imagenet' (expected one of {', '.join(user_task_names())})"),
    ({"optimizers": _opt(lr={"min": 0, "max": 1e-1, "num": 4})}, "optimizers[0].lr.min: Input should be greater than 0"),
    ({"optimizers": _opt(lr={"min": -1e-3, "max": 1e-1, "num": 4})}, "optimizers[0].lr.min: Input should be greater than 0"),
    ({"optimizers": _opt(wd={"min": 0.0, "max": 1e-2, "num": 4})}, "optimizers[0].wd.min: Input should be greater than 0"),
    ({"optimizers": _opt(lr={"min": 1e-3, "max": 1e-1, "num": 4, "step": 2})}, "optimizers[0].lr.step: Extra inputs are not permitted"),
    ({"optimizers": _opt(lr={"min": 1e-1, "max": 1e-3, "num": 4})}, "optimizers[0].lr: min (0.1) is greater than max (0.001)"),
    ({"optimizers": _opt(lr={"min": 1e-3, "max": 1e-1, "num": 0})}, "optimizers[0].lr.num: Input should be greater than or equal to 1"),
    ({"optimizers": _opt(wd={"min": 1e-3, "max": 1e-1, "num": 65})}, "optimizers[0].wd.num: Input should be less than or equal to 64"),
    ({"optimizers": _opt(lr={"min": 1e-3, "max": 1e-1, "num": 1})}, "optimizers[0].lr: num 1 needs min == max (a single point)"),
    ({"optimizers": _opt(lr={"min": 1e-3, "max": 1e-1})}, 'optimizers[0].lr: needs min, max and num (or "auto"); missing num'),
    ({"optimizers": _opt(lr="wide")}, 'optimizers[0].lr: must be {"min", "max", "num"} or "auto", not \'wide\''),
    ({"optimizers": _opt(lr={"min": "1e-3", "max": 1e-1, "num": 4})}, "optimizers[0].lr.min: Input should be a valid number"),
    ({"optimizers": [{"name": "adam"}, {"name": "adam"}]}, "optimizers: optimizer 'adam' appears more than once"),
    ({"optimizers": [{"name": "sgdw"}, {"name": "sgd:schedule"}]},
     "optimizers: optimizer 'sgd:schedule' appears more than once (as 'sgdw': both are 'sgd:schedule')"),
    ({"optimizers": [{"name": "lion"}, {"name": "lion:lr"}]},
     "optimizers: optimizer 'lion:lr' appears more than once (as 'lion': both are 'lion:lr')"),
    ({"optimizers": []}, "optimizers: List should have at least 1 item after validation, not 0"),
    ({"seeds": []}, "seeds: List should have at least 1 item after validation, not 0"),
    ({"seeds": list(range(17))}, "seeds: List should have at most 16 items after validation, not 17"),
    ({"seeds": [3, 1, 3]}, "seeds: seeds must be distinct (3 repeated)"),
    ({"seeds": [-1]}, "seeds[0]: Input should be greater than or equal to 0"),
    ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"schedule": {"name": "linear"}},
     "schedule: Input tag 'linear' found using 'name' does not match any of the expected tags: "
     "'constant', 'step', 'cosine', 'cosine_restarts'"),
    ({"schedule": {"name": "step", "gamma": 2}}, "schedule.gamma: Input should be less than or equal to 1"),
    ({"schedule": {"name": "step", "milestones": [0.5, 1.5]}}, "schedule.milestones[1]: Input should be less than 1"),
    ({"schedule": {"name": "cosine_restarts", "t_mult": 0.5}}, "schedule.t_mult: Input should be greater than or equal to 1"),
    ({"metric": "accuracy"}, "metric: Input should be 'val_error' or 'val_loss'"),
    ({"decay_on": "biases"}, "decay_on: Input should be 'all', 'weights' or 'invariant'"),
    ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
    ({"name": ""}, "name: String should have at least 1 character"),
    ({"optimizers": [{"name": n, "lr": {"min": 1e-4, "max": 1, "num": 64}, "wd": {"min": 1e-4, "max": 1, "num": 64}}
                     for n in ("adam", "sgd")], "seeds": [0, 1, 2]},
     "spec: the study has 24576 trials (grid cells x seeds, over all optimizers), more than DECOUPLE_MAX_TRIALS=20000"),
]


@pytest.mark.parametrize("overrides, detail", BAD_SPECS, ids=[d.split(":")[0] + f"-{i}" for i, (_, d) in enumerate(BAD_SPECS)])
def test_bad_spec_is_422_naming_the_field_and_stores_nothing(client, overrides, detail):
    r = post(client, **overrides)
    assert r.status_code == 422
    assert r.json()["detail"] == detail
    assert r.json()["errors"][0]["field"] == detail.split(":")[0]
    assert client.get("/studies").json()["count"] == 0


@pytest.mark.parametrize("raw, detail", [
    ('{"min": Infinity, "max": 0.1, "num": 4}', "optimizers[0].lr.min: Input should be a finite number"),
    ('{"min": 0.001, "max": NaN, "num": 4}', "optimizers[0].lr.max: Input should be a finite number"),
])
def test_non_finite_bounds_are_422(client, raw, detail):
    body = json.dumps(make_spec()).replace(json.dumps(make_spec()["optimizers"][0]["lr"]), raw)
    r = client.post("/studies", content=body, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["detail"]) == (422, detail)


def test_malformed_json_and_missing_fields(client):
    r = client.post("/studies", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body: invalid JSON")
    r = client.post("/studies", json={"task": "digits_mlp"})
    assert r.status_code == 422
    assert r.json()["detail"] == "name: Field required; optimizers: Field required"


def test_body_over_one_megabyte_is_413(client):
    spec = make_spec(name="x" * 150)
    spec["padding"] = "y" * 1_000_001
    r = client.post("/studies", json=spec)
    assert r.status_code == 413 and r.json() == {"detail": "request body is larger than 1,000,000 bytes"}

    def chunks():  # no Content-Length: the limit still holds
        yield b'{"name": "'
        for _ in range(11):
            yield b"z" * 100_000
        yield b'"}'

    r = client.post("/studies", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/studies").json()["count"] == 0


def test_trial_cap_comes_from_the_apps_settings(settings):
    with TestClient(create_app(settings.model_copy(update={"max_trials": 11}))) as c:
        r = post(c)
        assert (r.status_code, r.json()["detail"]) == (
            422, "spec: the study has 12 trials (grid cells x seeds, over all optimizers), more than DECOUPLE_MAX_TRIALS=11")
        assert post(c, seeds=[0]).status_code == 201


def test_a_study_at_the_trial_cap_is_stored_whole(settings):
    cap = 2 * 50 * 50 * 2  # two optimizers on 50 x 50 grids, two seeds
    optimizers = [{"name": n, "lr": {"min": 1e-4, "max": 1, "num": 50}, "wd": {"min": 1e-5, "max": 1e-1, "num": 50}}
                  for n in ("adamw", "sgdw")]
    with TestClient(create_app(settings.model_copy(update={"max_trials": cap}))) as c:
        r = post(c, optimizers=optimizers)
        assert r.status_code == 201 and r.json()["trials_total"] == cap
        csv_text = c.get(f"/studies/{r.json()['id']}/trials", params={"format": "csv"}).text
        assert csv_text.count("\n") == cap + 1


# --- auth ----------------------------------------------------------------------------------------


@pytest.fixture
def auth_client(settings, engine):
    with session_scope(engine) as s:
        tokens = {name: create_token(s, name) for name in ("alice", "bob")}
        tokens["root"] = create_token(s, "root", admin=True)
    with TestClient(create_app(settings.model_copy(update={"auth": "required"}))) as c:
        c.tokens = {k: {"Authorization": f"Bearer {v}"} for k, v in tokens.items()}
        yield c


def test_auth_required_means_401_without_a_valid_token(auth_client):
    c = auth_client
    assert c.get("/health").status_code == 200
    # GET / answers without a token but holds no data then (tests/service/test_pages.py).
    for method, path in [("GET", "/studies"), ("GET", "/optimizers"), ("GET", "/tasks"),
                         ("POST", "/studies"), ("GET", "/studies/x"), ("GET", "/studies/x/trials"),
                         ("GET", "/studies/x/report"), ("GET", "/studies/x/report.html"),
                         ("POST", "/studies/x/cancel"), ("DELETE", "/studies/x")]:
        r = c.request(method, path)
        assert r.status_code == 401, path
        assert r.json() == {"detail": "authentication required: send 'Authorization: Bearer <token>'"}
        assert r.headers["www-authenticate"] == "Bearer"
    r = c.get("/studies", headers={"Authorization": "Bearer not-a-token"})
    assert (r.status_code, r.json()) == (401, {"detail": "invalid or revoked token"})
    r = c.get("/studies", headers={"Authorization": "Basic YWxpY2U6eA=="})
    assert r.status_code == 401
    assert c.get("/studies", headers=c.tokens["bob"]).status_code == 200


def test_owner_or_admin_cancels_and_deletes(auth_client):
    c = auth_client
    sid = c.post("/studies", json=make_spec(), headers=c.tokens["alice"]).json()["id"]
    assert c.get(f"/studies/{sid}", headers=c.tokens["bob"]).json()["owner"] == "alice"  # everyone reads
    forbidden = {"detail": f"study {sid} belongs to 'alice'; only its owner or an admin may change it"}
    r = c.post(f"/studies/{sid}/cancel", headers=c.tokens["bob"])
    assert (r.status_code, r.json()) == (403, forbidden)
    r = c.delete(f"/studies/{sid}", headers=c.tokens["bob"])
    assert (r.status_code, r.json()) == (403, forbidden)
    assert c.post(f"/studies/{sid}/cancel", headers=c.tokens["alice"]).json()["status"] == "cancelled"
    assert c.delete(f"/studies/{sid}", headers=c.tokens["root"]).status_code == 200
    other = c.post("/studies", json=make_spec(), headers=c.tokens["bob"]).json()["id"]
    assert c.delete(f"/studies/{other}", headers=c.tokens["bob"]).status_code == 200
    assert c.get("/studies", headers=c.tokens["alice"]).json()["count"] == 0


def test_cancelling_a_done_study_is_409(client, engine):
    sid = post(client).json()["id"]
    finish_all(engine, sid)
    r = client.post(f"/studies/{sid}/cancel")
    assert r.status_code == 409
    assert r.json() == {"detail": f"study {sid} is already done; only queued or running studies can be cancelled"}


def test_token_create_cli_prints_a_working_token_once(settings, engine, monkeypatch, capsys):
    from service.config import get_settings
    from service.tokens import create_token_cli

    monkeypatch.setenv("DECOUPLE_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    try:
        assert create_token_cli("carol", admin=True) == 0
        with pytest.raises(CliError, match="invalid token name 'bad name'"):
            create_token_cli("bad name")
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr()
    token = out.out.strip()
    assert re.fullmatch(r"dl_[A-Za-z0-9_-]{43}", token)  # the prefix and 256 bits
    assert "shown only this once" in out.err and token not in out.err
    with TestClient(create_app(settings.model_copy(update={"auth": "required"}))) as c:
        sid = c.post("/studies", json=make_spec(), headers={"Authorization": f"Bearer {token}"}).json()["id"]
        assert c.get(f"/studies/{sid}", headers={"Authorization": f"Bearer {token}"}).json()["owner"] == "carol"
    with session_scope(engine) as s:
        from service.models import ApiToken

        row = s.query(ApiToken).filter_by(name="carol").one()
        assert row.admin and row.token_hash != token and len(row.token_hash) == 64


# --- catalogues, docs, pages ---------------------------------------------------------------------


def test_catalogues(client):
    from workers.optim import OPTIMIZER_NAMES as TORCH_SIDE_NAMES

    assert OPTIMIZER_NAMES == TORCH_SIDE_NAMES
    body = client.get("/optimizers").json()
    names = [o["name"] for o in body["data"]]
    # The built-ins, then the example plugin's bases (tests/conftest.py installs it): signum in 3
    # conventions, adamax (a torch.optim fallback) in its own one.
    assert names[:5] == list(OPTIMIZER_NAMES) and names == list(all_names())
    assert body["count"] == 5 + 5 + 35 + (1 + 1) + (1 + 3)
    adamw = body["data"][3]
    assert (adamw["base"], adamw["convention"], adamw["canonical"]) == ("adam", "schedule", "adam:schedule")
    assert adamw["rule"] == "theta <- theta*(1 - eta_t*wd); then " + body["bases"][1]["rule"]
    assert adamw["default_grid"] == {k: DEFAULT_GRIDS["adamw"][k].as_dict() for k in ("lr", "wd")}
    assert [b["name"] for b in body["bases"]] == ["sgd", "adam", "lion", "radam", "nadam", "adafactor", "muon",
                                                  "adamax", "signum"]
    assert {b["name"]: b["reference_convention"] for b in body["bases"]}["lion"] == "lr"
    assert {c["name"]: c["decay"] for c in body["conventions"]}["corrected"] == "theta <- theta*(1 - lr*eta_t^2*wd)"
    assert body["aliases"] == {"sgdw": "sgd:schedule", "adamw": "adam:schedule", "adamw_torch": "adam:lr"}
    lion = next(o for o in body["data"] if o["name"] == "lion")
    assert lion["canonical"] == "lion:lr" and lion["default_grid"]["wd"]["min"] >= 1e-2  # Lion: larger wd
    tasks = client.get("/tasks").json()
    assert [t["name"] for t in tasks["data"]] == user_task_names()
    digits = tasks["data"][0]
    assert (digits["name"], digits["epochs"], digits["batch_size"], digits["num_classes"]) == ("digits_mlp", 30, 64, 10)


def test_openapi_docs_show_the_spec_and_its_examples(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/studies"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/StudySpec"}
    assert body["examples"]["five_optimizers"]["value"]["optimizers"][0]["name"] == "adamw"
    assert schema["components"]["schemas"]["StudySpec"]["additionalProperties"] is False
    assert "422" in schema["paths"]["/studies"]["post"]["responses"]


def test_team_page_lists_studies_with_links(client, engine):
    sid = post(client, name="<b>bold</b> study").json()["id"]
    with session_scope(engine) as s:
        t = store.list_trials(s, sid)[0]
        store.finish_trial(s, t.id, "w", train_loss=1.0, val_loss=1.0, val_error=0.5)
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "&lt;b&gt;bold&lt;/b&gt; study" in html and "<b>bold</b>" not in html
    assert f'href="/studies/{sid}/report.html"' in html and f'href="/studies/{sid}/trials?format=csv"' in html
    assert "1/12" in html and "local" in html and "queued" in html


# --- reports -------------------------------------------------------------------------------------


def test_report_partial_while_running_then_cached_when_done(client, engine):
    sid = post(client, name="bowl", seeds=[0]).json()["id"]
    r = client.get(f"/studies/{sid}/report")
    assert r.status_code == 200 and r.json()["partial"] is True and r.json()["study_id"] == sid

    # An additive (perfectly separable) surface in log10 lr and log10 wd.
    finish_all(engine, sid, lambda t: 0.1 + (math.log10(t.lr) + 2) ** 2 / 10 + (math.log10(t.wd) + 3) ** 2 / 10)
    report = client.get(f"/studies/{sid}/report").json()
    assert report["partial"] is False and report["status"] == "done" and report["ranking"] == ["adamw"]
    entry = report["optimizers"][0]
    assert entry["name"] == "adamw"
    assert entry["grid"]["lr"] == pytest.approx([1e-3, 1e-2, 1e-1]) and entry["grid"]["wd"] == pytest.approx([1e-4, 1e-2])
    assert entry["best"]["lr"] == pytest.approx(1e-2) and entry["best"]["value"] == pytest.approx(0.2)
    assert entry["interaction_share"] == pytest.approx(0.0, abs=1e-9)
    with session_scope(engine) as s:
        study = store.get_study(s, sid)
        cached_at = study.report_computed_at
        assert study.report == report
    assert client.get(f"/studies/{sid}/report").json() == report
    with session_scope(engine) as s:
        assert store.get_study(s, sid).report_computed_at == cached_at  # served from the row

    page = client.get(f"/studies/{sid}/report.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "bowl" in page.text and "adamw" in page.text


# --- health and schema ---------------------------------------------------------------------------


def test_health_ok(client):
    assert client.get("/health").json() == {"status": "ok", "database": "ok", "revision": head_revision()}


def test_health_503_when_the_database_is_unreachable(tmp_path):
    settings = Settings(database_url=UNREACHABLE_PG, auth="off", data_dir=tmp_path, allowed_hosts=TEST_HOSTS)
    with TestClient(create_app(settings)) as c:  # starts anyway: the database may come back
        r = c.get("/health")
        assert r.status_code == 503
        body = r.json()
        assert (body["status"], body["database"]) == ("error", "unreachable")
        assert body["detail"].startswith("database unavailable: ")
        r = c.get("/studies")
        assert r.status_code == 503 and r.json()["detail"].startswith("database unavailable: ")
        assert c.post("/studies", json=make_spec()).status_code == 503


def test_api_refuses_an_out_of_date_schema(empty_db_url, tmp_path):
    settings = Settings(database_url=empty_db_url, auth="off", data_dir=tmp_path, allowed_hosts=TEST_HOSTS)
    app = create_app(settings)
    with pytest.raises(SchemaOutOfDate, match=r"run `decouple migrate`$"):
        with TestClient(app):
            pass
    r = TestClient(app).get("/health")  # no lifespan: /health still tells why
    assert r.status_code == 503 and r.json()["database"] == "out of date"
    from service.api import serve

    with pytest.raises(CliError, match=r"^the database schema is empty \(never migrated\) but this code needs "
                                       rf"revision {head_revision()}: run `decouple migrate`$"):
        serve(port=1, settings=settings)


# --- a real server -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(db_url: str, tmp_path, port: int) -> subprocess.Popen:
    env = {**os.environ, "DECOUPLE_DATABASE_URL": db_url, "DECOUPLE_AUTH": "off", "DECOUPLE_DATA_DIR": str(tmp_path)}
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_decouple_serve_runs_uvicorn(db_url, tmp_path):
    port = _free_port()
    proc = _serve(db_url, tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not come up"
            time.sleep(0.2)
        r = httpx.post(f"{base}/studies", json=make_spec(name="over the wire"), timeout=10)
        assert r.status_code == 201 and r.json()["trials_total"] == 12
        listed = httpx.get(f"{base}/studies", timeout=10).json()
        assert [d["name"] for d in listed["data"]] == ["over the wire"]
        assert httpx.post(f"{base}/studies", content=b"x" * 1_000_001, timeout=10).status_code == 413
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_decouple_serve_refuses_an_empty_database(tmp_path):
    proc = _serve(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path, _free_port())
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out.strip().splitlines()[-1] == (
        f"decouple: the database schema is empty (never migrated) but this code needs revision {head_revision()}: "
        "run `decouple migrate`"
    )


def test_out_of_range_ids_and_control_characters_are_422(client):
    sid = post(client).json()["id"]
    r = client.get(f"/studies/{sid}/trials/{2**31}/curve")
    assert (r.status_code, r.json()["detail"]) == (422, "trial_id: Input should be less than or equal to 2147483647")
    r = client.get("/studies", params={"offset": 2**31})
    assert r.status_code == 422
    r = post(client, name="nul\x00byte")
    assert (r.status_code, r.json()["detail"]) == (422, "name: must not contain control characters")
    assert client.get("/studies/" + "f" * 10_000).status_code == 404
    assert client.get("/studies").json()["count"] == 1


def test_api_survives_postgresql_dropping_its_connections(tmp_path):
    """pool_pre_ping: connections a server restart killed are replaced, never handed to a request."""
    from sqlalchemy.engine import make_url

    from service.db import dispose_engines, upgrade_to_head
    from tests.conftest import _pg_execute, pg_schema_url

    tag = "decouple_test_" + os.urandom(6).hex()
    _pg_execute(f'CREATE SCHEMA "{tag}"')
    url = make_url(pg_schema_url(tag)).update_query_dict({"application_name": tag}).render_as_string(hide_password=False)
    try:
        upgrade_to_head(url)
        with TestClient(create_app(Settings(database_url=url, auth="off", data_dir=tmp_path, allowed_hosts=TEST_HOSTS))) as c:
            assert post(c).status_code == 201
            assert c.get("/studies").json()["count"] == 1  # the pool now holds an idle connection
            _pg_execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{tag}'")
            assert c.get("/studies").json()["count"] == 1
            assert c.get("/health").status_code == 200
    finally:
        dispose_engines(url)
        _pg_execute(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')
