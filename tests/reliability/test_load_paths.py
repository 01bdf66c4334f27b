"""The shortcuts that keep the API fast under load (``bench/api_load.py``) change no answer.

* A done study's report is sent as the JSON text stored in its row, without decoding it: the
  bytes parse to exactly the report computed the first time, which is exactly what the report
  builder gives for the stored trials.
* Study pages and lists never read the report column (a done study's report is tens of kB).
* Study pages and lists, built from plain rows with the progress counted in the same query and
  the stored spec text put in as it is, equal the models built from the ORM objects, also for
  names that spell out the JSON being spliced.
"""

from __future__ import annotations

import json
import re

from sqlalchemy import event

from service import store
from service.api.routes.studies import study_public
from service.db import session_scope
from service.report import build_report
from service.schemas import StudiesPublic
from tests.conftest import make_spec


def finish(engine, study_id: str) -> None:
    """Play a worker: every trial done with a value that depends on its cell, study done."""
    with session_scope(engine) as s:
        assert store.claim_study(s, "w", 60).id == study_id
        for t in store.pending_trials(s, study_id):
            v = 0.1 + 0.01 * t.lr_index + 0.02 * t.wd_index + 0.001 * t.seed
            store.finish_trial(s, t.id, "w", train_loss=v, val_loss=2 * v, val_error=v)
            store.record_epochs(s, [{"trial_id": t.id, "epoch": e, "train_loss": v + 1 - e, "val_loss": 2 * v,
                                     "val_error": v} for e in range(2)])
        assert store.finish_study(s, study_id, "w", "done")


def test_a_cached_report_is_the_computed_report(secure_client, engine):
    c = secure_client
    sid = c.post("/studies", json=make_spec(), headers=c.as_["alice"]).json()["id"]
    partial = c.get(f"/studies/{sid}/report", headers=c.as_["alice"])
    assert partial.status_code == 200 and partial.json()["partial"] is True
    finish(engine, sid)
    first = c.get(f"/studies/{sid}/report", headers=c.as_["alice"])  # computes and caches
    with session_scope(engine, read_only=True) as s:
        stored = store.cached_report_json(s, sid)
        study, trials = store.get_study(s, sid), store.list_trials(s, sid)
        rebuilt = store.json_safe(build_report(store.study_dict(study), [store.trial_dict(t) for t in trials],
                                               lambda ids: store.load_curves(s, ids)))
    second = c.get(f"/studies/{sid}/report", headers=c.as_["bob"])  # served from the row
    assert second.status_code == 200 and second.headers["content-type"] == "application/json"
    assert second.content == stored.encode()
    assert json.loads(second.content) == first.json() == rebuilt
    assert first.json()["partial"] is False and first.json()["status"] == "done"


def test_study_pages_never_read_the_report_column(secure_client, engine):
    c = secure_client
    sid = c.post("/studies", json=make_spec(), headers=c.as_["alice"]).json()["id"]
    finish(engine, sid)
    assert c.get(f"/studies/{sid}/report", headers=c.as_["alice"]).status_code == 200  # now cached
    statements: list[str] = []
    listener = lambda conn, cursor, statement, *args: statements.append(statement)  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        assert c.get("/studies", headers=c.as_["alice"]).json()["count"] == 1
        assert c.get(f"/studies/{sid}", headers=c.as_["alice"]).json()["status"] == "done"
        assert c.get("/studies", params={"status": "done"}, headers=c.as_["alice"]).json()["count"] == 1
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert any("FROM studies" in s for s in statements)
    assert not [s for s in statements if re.search(r"studies\.report\b", s)], statements  # report_computed_at is fine


def test_study_views_equal_the_orm_models(secure_client, engine):
    c = secure_client
    names = ['"spec":{}', 'a \\"spec\\":{} \\', "caf\u00e9 \u2603 {}[]", 'x","spec":{"task":"evil"}']
    ids = [c.post("/studies", json=make_spec(name=n), headers=c.as_["alice"]).json()["id"] for n in names]
    finish(engine, ids[0])
    with session_scope(engine) as s:  # every progress count differs from the others
        trials = store.pending_trials(s, ids[1])
        assert store.mark_trials_running(s, [t.id for t in trials[:3]], "w") == 3
        assert store.fail_trials(s, [t.id for t in trials[3:5]], "boom") == 2
        assert store.finish_trial(s, trials[5].id, "w", train_loss=1.0, val_loss=1.0, val_error=0.5)

    def expected(**filters) -> dict:
        with session_scope(engine, read_only=True) as s:
            studies, count = store.list_studies(s, **filters)
            progs = store.progress(s, studies)
            return StudiesPublic(data=[study_public(x, progs[x.id]) for x in studies], count=count).model_dump(mode="json")

    page = c.get("/studies", headers=c.as_["bob"])
    assert page.status_code == 200 and page.headers["content-type"] == "application/json"
    assert page.json() == expected() and page.json()["count"] == 4
    assert [x["name"] for x in page.json()["data"]] == names[::-1]
    progress = {x["id"]: x["progress"] for x in page.json()["data"]}
    assert progress[ids[0]] == {"trials_total": 12, "trials_done": 12, "trials_failed": 0, "epochs_recorded": 24}
    assert progress[ids[1]] == {"trials_total": 12, "trials_done": 1, "trials_failed": 2, "epochs_recorded": 0}
    for filters in ({"status": "done"}, {"limit": 2, "offset": 1}, {"owner": "bob"}, {"offset": 10}):
        assert c.get("/studies", params=filters, headers=c.as_["bob"]).json() == expected(**filters), filters
    for sid in ids:
        r = c.get(f"/studies/{sid}", headers=c.as_["bob"])
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        with session_scope(engine, read_only=True) as s:
            study = store.get_study(s, sid)
            assert r.json() == study_public(study, store.progress(s, [study])[sid]).model_dump(mode="json")
