"""The compare view (service.compare, GET /compare and /compare.html) on SQLite and PostgreSQL.

Finished studies are made without training: a study is stored with the factories of
``tests.conftest``, claimed, and each trial finished with a value from a known surface in
(log10 lr, log10 wd) plus a small seed offset, as a worker would record it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from service import store
from service.compare import (
    MEASURES,
    OptimizerGrid,
    check_distinct,
    compare,
    difference,
    format_compare,
    measure_differences,
    parse_ids,
    render_compare_html,
    study_grids,
)
from service.db import session_scope
from service.errors import InvalidInput

AXES = {"lr": {"min": 1e-3, "max": 1e-1, "num": 4}, "wd": {"min": 1e-4, "max": 1e-2, "num": 4}}


def separable(x: float, y: float) -> float:
    """Additive in log10 lr and log10 wd: interaction share exactly 0 without noise."""
    return 0.05 + 0.02 * (x + 2) ** 2 + 0.02 * (y + 3) ** 2


def coupled(x: float, y: float) -> float:
    """Only lr * wd matters: the best wd moves with lr."""
    return 0.05 + 0.05 * (x + y + 5) ** 2


def offset(seed: int, i: int, j: int) -> float:
    """A deterministic seed-to-seed difference of at most 0.002."""
    return 0.001 * ((seed * 7 + i * 3 + j * 5) % 5 - 2)


def finished_study(engine, make_study, surfaces: dict, *, seeds=(0, 1), metric="val_error", name="s"):
    """A done study whose optimizer ``o`` scores ``surfaces[o](log10 lr, log10 wd) + offset``."""
    study = make_study(name=name, metric=metric, seeds=list(seeds),
                       optimizers=[{"name": o, **AXES} for o in surfaces])
    with session_scope(engine) as s:
        assert store.claim_study(s, "w", 60).id == study.id
        for t in store.pending_trials(s, study.id):
            v = surfaces[t.optimizer](math.log10(t.lr), math.log10(t.wd)) + offset(t.seed, t.lr_index, t.wd_index)
            store.finish_trial(s, t.id, "w", train_loss=v, val_loss=v, val_error=v)
        assert store.finish_study(s, study.id, "w", "done")
    return study.id


# --- pure parts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "message"), [
    ("", "ids: give at least two study ids, comma-separated (got 0)"),
    ("abc", "ids: give at least two study ids, comma-separated (got 1)"),
    ("a, ,", "ids: give at least two study ids, comma-separated (got 1)"),
    (",".join("abcdefghi"), "ids: at most 8 studies can be compared at once (got 9)"),
])
def test_parse_ids_refuses_with_the_reason(raw, message):
    with pytest.raises(InvalidInput) as exc:
        parse_ids(raw)
    assert str(exc.value) == message


def test_the_documented_id_pattern_is_the_compare_views():
    import re

    from service.api.routes.compare import ID_LIST_PATTERN
    from service.compare import ID_LIST_PATTERN as pattern

    assert ID_LIST_PATTERN == pattern
    ids = ",".join(["0" * 32] * 8)
    assert re.fullmatch(pattern, ids) and not re.fullmatch(pattern, ids + "," + "0" * 32)
    assert not re.fullmatch(pattern, "0" * 32)


def test_parse_ids_strips_blanks_and_ids_must_be_distinct():
    assert parse_ids(" a , b,") == ["a", "b"]
    check_distinct(["a", "b"])
    with pytest.raises(InvalidInput) as exc:
        check_distinct(["a", "b", "b", "a"])
    assert str(exc.value) == "ids: study a is listed more than once"


def test_difference_is_the_basic_bootstrap_interval():
    # resampled differences 0.00, 0.01, ..., 2.00: q2.5 = 0.05, q97.5 = 1.95
    samples = np.linspace(0.0, 2.0, 201)
    d = difference(1.0, samples)
    assert d["diff"] == 1.0
    assert d["ci"] == pytest.approx([2 * 1.0 - 1.95, 2 * 1.0 - 0.05])
    assert d["excludes_zero"] is True
    # the same spread around a small difference: the interval holds 0
    d = difference(0.1, samples - 0.9)
    assert d["ci"] == pytest.approx([0.2 - 1.05, 0.2 + 0.85]) and d["excludes_zero"] is False
    # mostly undefined resamples, or no point estimate: no interval
    half_nan = np.where(np.arange(201) < 101, np.nan, samples)
    assert difference(1.0, half_nan) == {"diff": 1.0, "ci": None, "excludes_zero": None}
    assert difference(None, samples) == {"diff": None, "ci": None, "excludes_zero": None}


def test_one_seed_gives_no_interval_for_the_difference():
    lrs, wds = np.geomspace(1e-3, 1e-1, 4), np.geomspace(1e-4, 1e-2, 4)
    grid = np.array([[separable(math.log10(a), math.log10(b)) for b in wds] for a in lrs])
    one = OptimizerGrid(lrs, wds, grid[None], np.ones((1, 4, 4), bool), 0.9, None)
    two = OptimizerGrid(lrs, wds, np.stack([grid, grid + 0.001]), np.ones((2, 4, 4), bool), 0.9, None)
    entry = {"best": {"value": 0.05}, "interaction_share": 0.0, "ci": {}}
    out = measure_differences(one, two, entry, {**entry, "interaction_share": 0.25})
    assert out["interaction_share"] == {"diff": 0.25, "ci": None, "excludes_zero": None,
                                        "intervals_disjoint": None}


def test_two_studies_with_the_same_grids_differ_by_exactly_nothing():
    """Same surface and seed offsets in both: every difference is 0 and its interval holds 0,
    although each study's seeds are resampled independently."""
    from service.analysis import separability_with_ci

    lrs, wds = np.geomspace(1e-3, 1e-1, 4), np.geomspace(1e-4, 1e-2, 4)
    per_seed = np.array([[[coupled(math.log10(a), math.log10(b)) + offset(s, i, j)
                           for j, b in enumerate(wds)] for i, a in enumerate(lrs)] for s in (0, 1, 2)])
    g = OptimizerGrid(lrs, wds, per_seed, np.ones(per_seed.shape, bool), 0.9, 1e-3)
    entry = separability_with_ci(lrs, wds, per_seed, chance=0.9, default_wd=1e-3)
    out = measure_differences(g, g, entry, entry)
    defined = [m for m in MEASURES if out[m]["diff"] is not None]
    assert {"best_value", "interaction_share", "interaction_share_rank", "coordinate_regret"} <= set(defined)
    for m in defined:
        d = out[m]
        assert d["diff"] == 0.0 and d["excludes_zero"] is False and d["ci"][0] <= 0.0 <= d["ci"][1]
        assert d["intervals_disjoint"] in (False, None)
    for m in ("best_value", "interaction_share"):  # the resamples do move: the interval is not a point
        assert out[m]["ci"][1] - out[m]["ci"][0] > 1e-4


# --- on the databases ----------------------------------------------------------------------------


def test_compare_json_matches_the_reports_and_finds_the_difference(client, engine, make_study):
    a = finished_study(engine, make_study, {"adamw": separable}, name="plain")
    b = finished_study(engine, make_study, {"adamw": coupled}, name="other")
    reports = {sid: client.get(f"/studies/{sid}/report").json() for sid in (a, b)}

    r = client.get("/compare", params={"ids": f"{a},{b}"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [s["study_id"] for s in out["studies"]] == [a, b]
    assert [s["name"] for s in out["studies"]] == ["plain", "other"]
    assert out["metric"] == "val_error" and out["measures"] == list(MEASURES)
    assert [o["name"] for o in out["optimizers"]] == ["adamw"]
    for opt in out["optimizers"]:
        entries = [next(e for e in reports[sid]["optimizers"] if e["name"] == opt["name"]) for sid in (a, b)]
        for per_study, e in zip(opt["studies"], entries):
            assert per_study["best"] == e["best"]
            assert per_study["measures"]["interaction_share"] == {"value": e["interaction_share"],
                                                                   "ci": e["ci"]["interaction_share"]}
        (diff,) = opt["differences"]
        assert diff["study_id"] == b and diff["vs"] == a
        share = diff["measures"]["interaction_share"]
        assert share["diff"] == entries[1]["interaction_share"] - entries[0]["interaction_share"]
        assert share["ci"][0] <= share["diff"] <= share["ci"][1]

    (adamw,) = out["optimizers"]
    # separable -> coupled: the interaction share rises far beyond the seed noise
    share = adamw["differences"][0]["measures"]["interaction_share"]
    assert share["diff"] > 0.5 and share["ci"][0] > 0 and share["excludes_zero"] is True
    assert share["intervals_disjoint"] is True
    assert adamw["warnings"] == [] and out["warnings"] == []

    text = format_compare(out)
    lines = text.splitlines()
    assert lines[0] == f"studies: #1 plain ({a}); #2 other ({b})"
    row = next(line for line in lines if line.strip().startswith("interaction share ") )
    d = share["diff"]
    assert row.split()[2:4] == [f"{adamw['studies'][0]['measures']['interaction_share']['value']:.3f}",
                                f"{adamw['studies'][1]['measures']['interaction_share']['value']:.3f}"]
    assert row.endswith(f"{d:+.3f} [{share['ci'][0]:+.3f}, {share['ci'][1]:+.3f}] *")

    page = client.get(f"/compare.html?ids={a},{b}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Comparison: plain vs other" in page.text
    assert "#2 &minus; #1 [95% CI]" in page.text and "&#8800;0" in page.text
    assert page.text.count("<img class='heatmap'") == 2 and f"/studies/{a}/report.html" in page.text


def test_compare_refuses_with_reasons(client, engine, make_study):
    """Each id is checked before any report is built: 404 unknown, 409 not done, 422 too few."""
    queued = make_study(name="queued").id
    running = make_study(name="running").id
    with session_scope(engine) as s:
        assert store.claim_study(s, "w", 60).id == queued
        assert store.claim_study(s, "w", 60).id == running
        assert store.finish_study(s, queued, "w", "failed", error="boom")
    unknown = "0" * 32

    r = client.get("/compare", params={"ids": running})
    assert r.status_code == 422
    assert r.json()["detail"] == "ids: give at least two study ids, comma-separated (got 1)"
    r = client.get("/compare", params={"ids": f"{unknown},{running}"})
    assert r.status_code == 404 and r.json()["detail"] == f"no study '{unknown}'"
    r = client.get("/compare.html", params={"ids": f"{running},{unknown}"})
    assert r.status_code == 409
    assert r.json()["detail"] == f"study {running} is running: only finished (done) studies can be compared"
    r = client.get("/compare", params={"ids": f"{queued},{running}"})
    assert r.status_code == 409
    assert r.json()["detail"] == f"study {queued} is failed: only finished (done) studies can be compared"
    r = client.get("/compare")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "ids"
    r = client.get("/compare", params={"ids": f"{unknown},{unknown}"})  # existence is checked first
    assert r.status_code == 404


def test_studies_on_different_metrics_are_not_compared():
    with pytest.raises(InvalidInput) as exc:
        compare([{"metric": "val_error", "optimizers": []}, {"metric": "val_loss", "optimizers": []}], [{}, {}])
    assert str(exc.value) == ("ids: the studies use different metrics (val_error, val_loss): only studies on "
                              "the same metric can be compared")


def test_optimizer_missing_from_the_first_study_has_no_difference(engine, make_study):
    from service.compare import load_studies

    a = finished_study(engine, make_study, {"adamw": separable}, seeds=(0,))
    b = finished_study(engine, make_study, {"adamw": separable, "sgd": coupled})
    reports, grids, decay_on = load_studies(engine, [a, b])
    assert decay_on == ["all", "all"]
    assert grids[0]["adamw"].per_seed.shape == (1, 4, 4) and grids[1]["sgd"].per_seed.shape == (2, 4, 4)
    out = compare(reports, grids, decay_on=decay_on, n_boot=50)
    adamw, sgd = out["optimizers"]
    assert adamw["warnings"] == [f"study {a} has one seed: the differences with study {b} have no interval."]
    assert all(d["excludes_zero"] is None for d in adamw["differences"][0]["measures"].values())
    assert sgd["studies"][0]["present"] is False and sgd["differences"][0]["measures"] is None
    assert sgd["warnings"] == [f"the first study, {a}, has no sgd grid: no differences for sgd."]
    page = render_compare_html(out)
    assert "has no sgd grid" in page and "<img" not in page
    # the other way round: the study after the first lacks it
    out = compare(reports[::-1], grids[::-1], n_boot=50)
    assert out["optimizers"][1]["warnings"] == [f"study {a} has no sgd grid: no difference for it."]


def test_study_grids_read_cells_like_the_report(engine, make_study):
    """A diverged seed makes its cell +inf; a queued trial is absent, as in build_report."""
    study = make_study(optimizers=[{"name": "adamw", **AXES}], seeds=[0, 1])
    with session_scope(engine) as s:
        store.claim_study(s, "w", 60)
        trials = store.pending_trials(s, study.id)
        for t in trials[:-1]:
            diverged = (t.lr_index, t.wd_index, t.seed) == (2, 3, 1)
            v = float("nan") if diverged else 0.1 * (t.lr_index + 1) + 0.01 * t.wd_index
            store.finish_trial(s, t.id, "w", train_loss=v, val_loss=v, val_error=v, diverged=diverged)
        last = (trials[-1].seed, trials[-1].lr_index, trials[-1].wd_index)
    with session_scope(engine, read_only=True) as s:
        sdict = store.study_dict(store.get_study(s, study.id))
        tdicts = [store.trial_dict(t) for t in store.list_trials(s, study.id)]
    g = study_grids(sdict, tdicts)["adamw"]
    assert g.seeds == 2 and g.chance == pytest.approx(0.9) and g.default_wd == pytest.approx(1e-2)
    assert g.lrs == pytest.approx([1e-3, 10 ** (-3 + 2 / 3), 10 ** (-3 + 4 / 3), 1e-1])
    assert g.per_seed[1, 2, 3] == math.inf and g.per_seed[0, 2, 3] == pytest.approx(0.33)
    assert last == (1, 3, 3) and not g.present[1, 3, 3] and np.isnan(g.per_seed[1, 3, 3])
    assert g.present.sum() == 31
