"""The report JSON, the terminal table and the HTML page (service.report), on hand-made trials."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from service.domain.catalog import chance_level
from service.report import build_report, format_table, render_html
from workers.optim import VARIANTS

LR = {"min": 1e-4, "max": 1e-1, "num": 6}
WD = {"min": 1e-5, "max": 1e-2, "num": 6}
SURFACES = {
    # additive in log lr, log wd: separable
    "adamw": lambda x, y: 0.03 + 0.02 * (x + 2.6) ** 2 + 0.03 * (y + 3.4) ** 2,
    # separable, with a steeper lr valley
    "sgdw": lambda x, y: 0.035 + 0.05 * (x + 2.2) ** 2 + 0.02 * (y + 3.0) ** 2,
    # only the product matters: must be searched jointly
    "sgd": lambda x, y: 0.03 + 0.05 * (x + y + 5.8) ** 2,
}


def make_study(status="done", optimizers=("adamw", "sgd"), seeds=(0, 1), noise=0.002,
               diverge=((5, 5),), skip=(), fail=()):
    """A study dict and its trials: val_error from SURFACES plus seed noise.

    ``diverge``: cells whose every seed diverged; ``skip``: (optimizer, i, j, seed) still queued;
    ``fail``: (optimizer, i, j, seed) that failed with an error.
    """
    spec = {"name": "hand-made", "task": "digits_mlp", "metric": "val_error", "epochs": 3,
            "seeds": list(seeds), "schedule": {"name": "cosine"},
            "optimizers": [{"name": o, "lr": LR, "wd": WD} for o in optimizers]}
    lrs = np.geomspace(LR["min"], LR["max"], LR["num"])
    wds = np.geomspace(WD["min"], WD["max"], WD["num"])
    rng = np.random.default_rng(7)
    trials, tid = [], 0
    for o in optimizers:
        for i, lr in enumerate(lrs):
            for j, wd in enumerate(wds):
                for s in seeds:
                    tid += 1
                    v = float(SURFACES[o](math.log10(lr), math.log10(wd)) + rng.normal(0, noise))
                    t = {"id": tid, "phase": "grid", "optimizer": o, "lr_index": i, "wd_index": j,
                         "lr": float(lr), "wd": float(wd), "seed": s, "status": "done",
                         "train_loss": v / 2, "val_loss": 2 * v, "val_error": v,
                         "diverged": False, "diverged_epoch": None}
                    if (i, j) in diverge:
                        t.update(train_loss=float("nan"), val_loss=float("inf"), val_error=float("nan"),
                                 diverged=True, diverged_epoch=2)
                    if (o, i, j, s) in skip:
                        t.update(status="queued", train_loss=None, val_loss=None, val_error=None)
                    if (o, i, j, s) in fail:
                        t.update(status="failed", train_loss=None, val_loss=None, val_error=None)
                    trials.append(t)
    trials.append({"id": 10_000, "phase": "pilot", "optimizer": optimizers[0], "lr_index": None,
                   "wd_index": None, "lr": 1.0, "wd": 0.0, "seed": 0, "status": "done",
                   "train_loss": 0.0, "val_loss": 0.0, "val_error": 0.0, "diverged": False,
                   "diverged_epoch": None})
    study = {"id": "s-1", "name": spec["name"], "status": status, "spec": spec,
             "created_at": "2025-01-01T00:00:00", "finished_at": None, "owner": "alice"}
    return study, trials


class Curves:
    """load_curves that records what it was asked for."""

    def __init__(self):
        self.asked: list[list[int]] = []

    def __call__(self, ids):
        self.asked.append(list(ids))
        return {i: [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_error": 0.3 / e}
                    for e in (1, 2, 3)] for i in ids}


def _cell_seeds(trials, o, i, j):
    return [t for t in trials if t["optimizer"] == o and t["phase"] == "grid"
            and t["lr_index"] == i and t["wd_index"] == j]


def test_done_study_report():
    study, trials = make_study()
    curves = Curves()
    rep = build_report(study, trials, curves)
    json.dumps(rep, allow_nan=False)
    assert rep["partial"] is False and rep["status"] == "done" and rep["metric"] == "val_error"
    assert rep["chance"] == pytest.approx(chance_level("digits_mlp", "val_error"))
    assert rep["ranking"] == ["adamw", "sgd"]
    adamw, sgd = rep["optimizers"]
    # seed mean, exactly
    cell = _cell_seeds(trials, "adamw", 2, 3)
    assert adamw["grid"]["value"][2][3] == pytest.approx(np.mean([t["val_error"] for t in cell]), abs=1e-15)
    # the diverged corner is null and counted
    assert adamw["grid"]["value"][5][5] is None and adamw["grid"]["diverged"][5][5] == 2
    assert adamw["grid"]["seeds"][5][5] == 2
    assert adamw["trials"] == {"total": 72, "done": 72, "failed": 0, "diverged": 2, "pending": 0}
    assert adamw["decay_convention"] == VARIANTS["adamw"].decay_convention
    assert sgd["decay_convention"] == VARIANTS["sgd"].decay_convention
    # the lone diverged corner carries the raw share; the rank version and the slope see the basin
    assert adamw["interaction_share_rank"] < 0.1 < 0.3 < sgd["interaction_share_rank"]
    assert adamw["optimal_wd_slope"] == pytest.approx(0.0, abs=0.05)
    assert any(w.startswith("The interaction share (0.58) and its rank version (0.02) disagree") for w in adamw["warnings"])
    assert sgd["optimal_wd_slope"] == pytest.approx(-1.0, abs=0.15)
    assert adamw["verdict"].startswith("Separable: tune wd once and keep it when you change lr.")
    assert sgd["verdict"].startswith("Coupled: the best wd moves with lr")
    # the verdicts come from decide: the ridge slope's interval holds the surface's true slope
    da, ds = adamw["decision"], sgd["decision"]
    assert da["verdict"] == "separable" and ds["verdict"] == "coupled"
    assert da["ridge_slope_ci"][0] <= 0.0 <= da["ridge_slope_ci"][1]
    assert -0.5 < da["ridge_slope_ci"][0] and da["ridge_slope_ci"][1] < 0.5
    assert ds["ridge_slope_ci"][0] <= -1.0 <= ds["ridge_slope_ci"][1] < 0
    assert adamw["verdict"].endswith(da["reason"]) and sgd["verdict"].endswith(ds["reason"])
    assert f"{ds['ridge_slope']:+.2f}" in ds["reason"]
    # the diverged corner is censored, not fitted
    assert da["censored_cells"] == {"diverged": 1, "chance_level": 0}
    assert [5, 5] not in [list(c) for c in zip(da["ridge"]["lr_index"], da["ridge"]["wd_index"])]
    # regret from every start column, in seed SDs and validation samples (360 for digits)
    r = ds["regret"]
    assert len(r["by_start_column"]) == 6 and r["max"] == max(r["by_start_column"])
    assert r["max_in_seed_sd"] == pytest.approx(r["max"] / r["seed_sd"])
    assert r["max_in_samples"] == pytest.approx(r["max"] * 360)
    for e in (adamw, sgd):
        assert set(e["ci"]) >= {"interaction_share", "optimal_wd_slope", "separability"}
        assert e["ci"]["separability"][0] <= e["separability"] <= e["ci"]["separability"][1]
    # the other decoupled convention: lam_torch = lam_paper / lr
    oc = adamw["other_convention"]
    assert oc["convention"] == "torch"
    assert oc["best_wd"] == pytest.approx(adamw["best"]["wd"] / adamw["best"]["lr"])
    assert oc["optimal_wd_slope"] == pytest.approx(adamw["optimal_wd_slope"] - 1)
    assert sgd["other_convention"] is None
    # curves: exactly the best cells' trials, one call
    best_ids = [t["id"] for e in (adamw, sgd) for t in _cell_seeds(
        trials, e["name"], *e["diagnostics"]["best_index"])]
    assert curves.asked == [best_ids]
    assert [c["seed"] for c in adamw["best_curves"]] == [0, 1]
    assert adamw["best_curves"][0]["curve"][2] == {"epoch": 3, "train_loss": 1 / 3, "val_loss": 1.2 / 3,
                                                   "val_error": 0.3 / 3}


def test_adamw_torch_other_convention_is_the_paper_one():
    study, trials = make_study(optimizers=("adamw",))
    for t in trials:
        t["optimizer"] = "adamw_torch"
    study["spec"]["optimizers"][0]["name"] = "adamw_torch"
    e = build_report(study, trials, Curves())["optimizers"][0]
    assert e["other_convention"]["convention"] == "paper"
    assert e["other_convention"]["best_wd"] == pytest.approx(e["best"]["wd"] * e["best"]["lr"])
    assert e["other_convention"]["optimal_wd_slope"] == pytest.approx(e["optimal_wd_slope"] + 1)


def test_running_study_with_missing_cells_is_partial():
    skip = {("sgd", 0, 0, 0), ("sgd", 0, 0, 1), ("sgd", 3, 1, 1)}
    study, trials = make_study(status="running", skip=skip)
    rep = build_report(study, trials, Curves())
    json.dumps(rep, allow_nan=False)
    assert rep["partial"] is True
    assert rep["warnings"][0] == "The study is running: this report is partial and will change."
    sgd = rep["optimizers"][1]
    assert sgd["grid"]["value"][0][0] is None and sgd["grid"]["seeds"][0][0] == 0
    # one seed of two finished: the cell holds that seed's value
    (done,) = [t for t in _cell_seeds(trials, "sgd", 3, 1) if t["status"] == "done"]
    assert sgd["grid"]["value"][3][1] == done["val_error"]
    assert sgd["interaction_share"] is None and sgd["separability"] is None
    assert sgd["warnings"][0] == ("1 of 36 grid cells have no finished trial yet, so the separability "
                                  "measures wait for a complete grid.")
    assert sgd["trials"]["pending"] == 3
    assert sgd["verdict"] == "Not enough finished cells to judge yet."
    assert rep["ranking"] == ["adamw"]
    assert "Not ranked (no complete grid or nothing to measure): sgd." in rep["warnings"]


def test_one_diverged_seed_makes_the_cell_diverged_and_failed_trials_are_named():
    study, trials = make_study(diverge=(), fail={("adamw", 1, 1, 0)})
    t = _cell_seeds(trials, "adamw", 4, 4)[1]
    t.update(val_error=float("inf"), diverged=True)
    rep = build_report(study, trials, Curves())
    json.dumps(rep, allow_nan=False)
    adamw = rep["optimizers"][0]
    assert adamw["grid"]["value"][4][4] is None and adamw["grid"]["diverged"][4][4] == 1
    assert adamw["grid"]["seeds"][1][1] == 1
    assert ("1 trial(s) failed (an error, not divergence) and are left out of the averages."
            in adamw["warnings"])
    assert "1 of 36 cells diverged; they count as the worst outcome (chance level, 0.9)." in adamw["warnings"]


def test_all_diverged_optimizer_is_unranked():
    study, trials = make_study(diverge=[(i, j) for i in range(6) for j in range(6)])
    rep = build_report(study, trials, Curves())
    json.dumps(rep, allow_nan=False)
    assert rep["ranking"] == []
    e = rep["optimizers"][0]
    assert e["best"] is None and e["verdict"].startswith("Every setting diverged")
    assert e["best_curves"] == []
    assert all(v is None for row in e["grid"]["value"] for v in row)


def test_format_table():
    study, trials = make_study()
    rep = build_report(study, trials, Curves())
    text = format_table(rep)
    lines = text.splitlines()
    assert lines[0] == 'Study s-1 "hand-made": done, validation error (lower is better)'
    assert lines[2].split() == ["rank", "optimizer", "best", "val_error", "at", "lr,", "wd", "verdict",
                                "ridge", "slope", "[95%", "CI]", "regret", "max", "(seed", "SD)",
                                "separability", "[95%", "CI]"]
    assert lines[4].split()[:2] == ["1", "adamw"]
    assert lines[5].split()[:2] == ["2", "sgd"]
    a, g = rep["optimizers"]
    assert lines[4].split()[5] == "separable" and lines[5].split()[5] == "coupled"
    ci = a["ci"]["separability"]
    assert f"{a['separability']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" in lines[4]
    dc = g["decision"]
    assert f"{dc['ridge_slope']:+.2f} [{dc['ridge_slope_ci'][0]:+.2f}, {dc['ridge_slope_ci'][1]:+.2f}]" in lines[5]
    assert f"{dc['regret']['max']:.3g} ({dc['regret']['max_in_seed_sd']:.2f})" in lines[5]
    assert f"adamw: {a['verdict']}" in lines
    assert any(line.startswith("  ! ") for line in lines)


def test_render_html_is_self_contained_with_one_heat_map_per_optimizer():
    study, trials = make_study(status="running", skip={("sgd", 0, 0, 0), ("sgd", 0, 0, 1)})
    page = render_html(build_report(study, trials, Curves()))
    assert page.startswith("<!doctype html>")
    assert len(re.findall(r"<img class='heatmap'[^>]*src='data:image/png;base64,", page)) == 2
    assert len(re.findall(r"<img class='curves'[^>]*src='data:image/png;base64,", page)) == 2
    assert not re.search(r"""(src|href)=['"](https?:|//)""", page)
    assert "Partial report" in page
    assert "tune wd once and keep it when you change lr" in page
    assert VARIANTS["sgd"].decay_convention in page


def test_queued_study_has_no_measures_and_says_why():
    study, trials = make_study(status="queued")
    trials = [dict(t, status="queued", val_error=None) for t in trials]
    rep = build_report(study, trials, Curves())
    json.dumps(rep, allow_nan=False)
    assert rep["partial"] is True and rep["ranking"] == []
    for e in rep["optimizers"]:
        assert e["best"] is None and e["best_curves"] == []
        assert e["verdict"] == "Not enough finished cells to judge yet."
        assert e["warnings"] == ["36 of 36 grid cells have no finished trial yet, so the separability "
                                 "measures wait for a complete grid."]
    assert render_html(rep).count("<img class='heatmap'") == 2


def test_auto_axis_before_its_pilot_has_no_grid_yet():
    study, trials = make_study()
    study["status"] = "running"
    study["spec"]["optimizers"][1] = {"name": "sgd", "lr": {"auto": True, "num": 6}, "wd": WD}
    trials = [t for t in trials if t["optimizer"] != "sgd" or t["phase"] == "pilot"]
    rep = build_report(study, trials, Curves())
    json.dumps(rep, allow_nan=False)
    sgd = rep["optimizers"][1]
    assert sgd["grid"]["value"] == [] and sgd["separability"] is None
    assert sgd["warnings"] == ["The grid is not placed yet: its auto axis waits for the pilot run."]
    assert rep["ranking"] == ["adamw"]
    page = render_html(rep)
    assert page.count("<img class='heatmap'") == 1 and "No grid yet." in page
    assert format_table(rep).splitlines()[5].split()[:2] == ["-", "sgd"]


def test_auto_axis_after_its_pilot_takes_the_trials_values():
    study, trials = make_study(optimizers=("adamw",))
    study["spec"]["optimizers"][0]["lr"] = {"auto": True, "num": 6}
    placed = build_report(study, trials, Curves())["optimizers"][0]
    expected = np.geomspace(LR["min"], LR["max"], LR["num"])
    assert placed["grid"]["lr"] == pytest.approx(list(expected), rel=1e-12)
    assert placed["separability"] is not None
