"""``seeds: {"auto": true, "min", "max"}`` in the spec: what is accepted, what is a 422 naming
the field, and the pure rule that decides whether an optimizer gets more seeds."""

from __future__ import annotations

import pytest

from service.domain.seeds import initial_seeds, next_step, seeds_of

SPEC = {"name": "seeds", "task": "synthetic", "epochs": 2, "batch_size": 64,
        "optimizers": [{"name": "adamw", "lr": {"min": 1e-3, "max": 1.0, "num": 6},
                        "wd": {"min": 1e-4, "max": 1.0, "num": 5}}]}


def test_auto_seeds_are_accepted_and_counted_at_their_worst_case(client):
    r = client.post("/studies", json={**SPEC, "seeds": {"auto": True, "min": 2, "max": 7}})
    assert r.status_code == 201, r.text
    assert r.json()["trials_total"] == 6 * 5 * 7  # the cap and progress count max seeds
    sid = r.json()["id"]
    study = client.get(f"/studies/{sid}").json()
    assert study["spec"]["seeds"] == {"auto": True, "min": 2, "max": 7}
    trials = client.get(f"/studies/{sid}/trials").json()["data"]
    assert sorted({t["seed"] for t in trials}) == [0, 1] and len(trials) == 6 * 5 * 2
    # defaults: min 2, max 8; a list keeps working unchanged
    r = client.post("/studies", json={**SPEC, "seeds": {"auto": True}})
    assert r.status_code == 201 and r.json()["trials_total"] == 6 * 5 * 8
    r = client.post("/studies", json={**SPEC, "seeds": [4, 9]})
    assert r.status_code == 201 and r.json()["trials_total"] == 6 * 5 * 2
    sid = r.json()["id"]
    trials = client.get(f"/studies/{sid}/trials").json()["data"]
    assert sorted({t["seed"] for t in trials}) == [4, 9]


BAD = [
    ({"auto": True, "min": 1}, "seeds.min: Input should be greater than or equal to 2"),
    ({"auto": True, "max": 17}, "seeds.max: Input should be less than or equal to 16"),
    ({"auto": True, "min": 5, "max": 3}, "seeds: min (5) is greater than max (3)"),
    ({"auto": True, "min": 2, "max": 8, "until": "decided"}, "seeds.until: Extra inputs are not permitted"),
    ({"min": 2, "max": 8}, "seeds.auto: Field required"),
    ({"auto": False, "min": 2}, "seeds.auto: Input should be True"),
    ({"auto": True, "min": "2"}, "seeds.min: Input should be a valid integer"),
    ({"auto": True, "given": {"adamw": {"seeds": 5}}},
     "seeds.given: is set by the service (the seeds each optimizer got), not by users"),
]


@pytest.mark.parametrize(("seeds", "detail"), BAD, ids=[d.split(":")[0] + f"-{i}" for i, (_, d) in enumerate(BAD)])
def test_bad_auto_seeds_are_422_naming_the_field(client, seeds, detail):
    r = client.post("/studies", json={**SPEC, "seeds": seeds})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == detail
    assert client.get("/studies").json()["count"] == 0


def test_trial_cap_counts_max_seeds(client, settings):
    big = {**SPEC, "optimizers": [{"name": "adamw", "lr": {"min": 1e-3, "max": 1.0, "num": 50},
                                   "wd": {"min": 1e-4, "max": 1.0, "num": 50}}]}
    # 2500 cells: min 2 (5000) fits under the cap of 20000, max 9 (22500) does not
    r = client.post("/studies", json={**big, "seeds": {"auto": True, "min": 2, "max": 9}})
    assert r.status_code == 422 and "22500 trials" in r.json()["detail"], r.text
    assert client.post("/studies", json={**big, "seeds": {"auto": True, "min": 2, "max": 8}}).status_code == 201


def test_next_step_rule():
    assert next_step("separable", None, 2, 8) == (2, "decided")
    assert next_step("coupled", None, 5, 8) == (5, "decided")
    assert next_step("no_wd_effect", None, 2, 8) == (2, "decided")
    assert next_step("not_enough_data", None, 2, 8) == (2, "seeds_will_not_decide")
    assert next_step("inconclusive", None, 3, 8) == (3, "seeds_will_not_decide")
    assert next_step("inconclusive", 9, 3, 8) == (3, "seeds_will_not_decide")
    assert next_step("inconclusive", 5, 8, 8) == (8, "reached_max")
    # half-way towards the projection, at least one seed, at most max
    assert next_step("inconclusive", 5, 2, 8) == (4, None)
    assert next_step("inconclusive", 3, 2, 8) == (3, None)
    assert next_step("inconclusive", 2, 2, 8) == (3, None)
    assert next_step("inconclusive", 8, 2, 8) == (5, None)
    assert next_step("inconclusive", 8, 7, 8) == (8, None)
    assert initial_seeds({"auto": True, "min": 3, "max": 8}) == [0, 1, 2]
    assert initial_seeds([5, 2]) == [5, 2]
    assert seeds_of({"auto": True, "min": 2, "max": 8, "given": {"adam": {"seeds": 4}}}, "adam") == [0, 1, 2, 3]
    assert seeds_of({"auto": True, "min": 2, "max": 8}, "sgd") == [0, 1]
