"""``service.analysis.decide``: the verdict, its evidence, its calibration on known truth, and the
ridge read in every parametrization (numpy only; no database, no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.analysis import (
    SLOPE_TOLERANCE,
    convert_wd,
    convertible,
    decide,
    parametrizations,
    regret_by_start,
    ridge_fit,
    timescale_epochs,
)
from service.calibration import CHANCE, LRS, VAL_SIZE, WDS, Case, battery, synthetic

X, Y = np.log10(LRS), np.log10(WDS)


def bowl(slope: float, *, x0=-2.5, y0=-3.0, a_lr=0.8, a_wd=0.7, base=0.05, height=0.8) -> np.ndarray:
    """A Gaussian basin (capped at chance) whose best wd is exactly y0 + slope * (x - x0)."""
    u = X[:, None] - x0
    w = Y[None, :] - y0 - slope * u
    return np.minimum(base + height * (1 - np.exp(-((u / a_lr) ** 2 + (w / a_wd) ** 2) / 2)), CHANCE)


def seeds(f: np.ndarray, S: int, sd: float, rng_seed: int = 0) -> np.ndarray:
    return f[None] + np.random.default_rng(rng_seed).normal(0, sd, size=(S, *f.shape))


# --------------------------------------------------------------------------- exact math


def test_ridge_fit_recovers_an_exact_quadratic_and_its_slope():
    # f = 1 + 0.3 x - 0.2 y + 2 x^2 + 1.2 x y + 0.8 y^2: ridge slope -e/(2g) = -1.2 / 1.6 = -0.75
    xs, ys = np.meshgrid(np.arange(-2, 3) * 0.5, np.arange(-2, 3) * 0.4, indexing="ij")
    x, y = xs.ravel(), ys.ravel()
    f = 1 + 0.3 * x - 0.2 * y + 2 * x * x + 1.2 * x * y + 0.8 * y * y
    fit = ridge_fit(x, y, f, np.full(x.size, 3))
    assert fit["slope"] == pytest.approx(-0.75, abs=1e-9)
    # no residual: Fieller's interval collapses onto the estimate
    assert fit["ci"][0] == pytest.approx(-0.75, abs=1e-6) and fit["ci"][1] == pytest.approx(-0.75, abs=1e-6)
    assert fit["cells"] == 25 and fit["df"] == 19


def test_ridge_fit_is_unbounded_when_wd_has_no_curvature():
    rng = np.random.default_rng(3)
    xs, ys = np.meshgrid(np.arange(5.0), np.arange(5.0), indexing="ij")
    f = (xs - 2) ** 2 + rng.normal(0, 0.5, xs.shape)  # nothing in y but noise
    fit = ridge_fit(xs.ravel(), ys.ravel(), f.ravel(), np.ones(25))
    assert not fit["bounded"] and fit["ci"] == [-math.inf, math.inf]


def test_regret_by_start_column_by_hand():
    v = np.array([[0.30, 0.10, 0.50],
                  [0.20, 0.40, 0.05],
                  [0.25, 0.60, 0.70]])
    # start column 0: best lr row 1 (0.20), best wd there 0.05 -> 0; column 1: row 0, best 0.10 -> 0.05;
    # column 2: row 1 -> 0
    assert regret_by_start(v, v) == pytest.approx([0.0, 0.05, 0.0], abs=1e-15)
    # a start column with no usable cell (all at chance or diverged) has no "best lr" to pick
    usable = np.ones(v.shape, bool)
    usable[:, 2] = False
    assert regret_by_start(v, v, usable)[2] is None


def test_convert_wd_and_timescale():
    lrs, wds = np.array([1e-3, 1e-2]), np.array([1e-2, 1.0])
    paper = convert_wd(lrs, wds, "lr", "schedule")  # lambda_paper = lr * lambda_torch
    assert np.allclose(paper, [[1e-5, 1e-3], [1e-4, 1e-2]], rtol=1e-12, atol=0)
    back = convert_wd(lrs, wds, "schedule", "lr")
    assert np.allclose(back, [[10.0, 1000.0], [1.0, 100.0]], rtol=1e-12, atol=0)
    assert convertible("schedule") == ["lr"] and convertible("lr") == ["schedule"]
    assert convertible("l2") == [] and convertible("constant") == []
    assert set(convertible("constant", constant_schedule=True)) == {"schedule", "lr", "corrected"}
    with pytest.raises(ValueError, match="cannot be read"):
        convert_wd(lrs, wds, "l2", "schedule")
    with pytest.raises(ValueError, match="cannot be read"):
        convert_wd(lrs, wds, "constant", "lr")
    # tau = 1/(lr * lambda_torch) iterations = 1/lambda_paper; 23 iterations per epoch
    tau = timescale_epochs(lrs, wds, "lr", 23)
    assert tau[0, 0] == pytest.approx(1 / (1e-3 * 1e-2) / 23, rel=1e-12)
    assert np.allclose(timescale_epochs(lrs, paper, "schedule", 23), tau, rtol=1e-12, atol=0)
    assert timescale_epochs(lrs, wds, "l2", 23) is None


def test_parametrizations_shift_the_slope_by_the_shear_exactly():
    vals = seeds(bowl(1.0), 3, 0.01)
    d = decide(LRS, WDS, vals, chance=CHANCE)
    assert d["verdict"] == "coupled"
    p = parametrizations(LRS, WDS, d, "schedule", iters_per_epoch=23)
    by = {o["coordinates"]: o for o in p["systems"]}
    s, (lo, hi) = d["ridge_slope"], d["ridge_slope_ci"]
    assert by["schedule"]["ridge_slope"] == pytest.approx(s, abs=1e-9)
    # lambda_torch = lambda_paper / lr: log wd shifts by -log lr, the slope by -1
    assert by["lr"]["ridge_slope"] == pytest.approx(s - 1, abs=1e-9)
    assert by["lr"]["ridge_slope_ci"] == pytest.approx([lo - 1, hi - 1], abs=1e-9)
    # log tau = -(log lambda_paper) - log 23: slope -s
    assert by["tau_epochs"]["ridge_slope"] == pytest.approx(-s, abs=1e-9)
    assert by["schedule"]["reading"] == "tilted" and by["lr"]["reading"] == "axis_aligned"
    assert p["axis_aligned_in"] == ["lr"]
    bj = d["best"]["index"][1]
    assert p["best_tau"] == pytest.approx(1 / WDS[bj] / 23, rel=1e-12)
    assert parametrizations(LRS, WDS, d, "l2") is None


# --------------------------------------------------------------------------- verdicts


def test_separable_and_coupled_surfaces():
    for slope, want in ((0.0, "separable"), (-1.0, "coupled"), (1.5, "coupled")):
        d = decide(LRS, WDS, seeds(bowl(slope), 3, 0.01, rng_seed=int(slope * 10) + 50), chance=CHANCE,
                   val_size=VAL_SIZE)
        assert d["verdict"] == want, d["reason"]
        lo, hi = d["ridge_slope_ci"]
        assert lo <= slope <= hi
        assert f"{d['ridge_slope']:+.2f}" in d["reason"] and f"{lo:+.2f}" in d["reason"]
        assert d["seeds_to_decide"] is None
        r = d["regret"]
        assert len(r["by_start_column"]) == len(WDS)
        assert r["max"] == max(x for x in r["by_start_column"] if x is not None)
        assert r["max_in_samples"] == pytest.approx(r["max"] * VAL_SIZE)
        assert d["interaction"]["df"] == [4, 18]


def test_diverged_corner_and_chance_band_are_censored_not_fitted():
    vals = seeds(bowl(0.0), 3, 0.01, rng_seed=11)
    vals[:, :, 7] = CHANCE  # too much decay: the top wd column at chance everywhere
    vals[:, 5:, 5:] = np.nan  # a diverged corner: high lr, high wd
    d = decide(LRS, WDS, vals, chance=CHANCE)
    assert d["censored_cells"]["diverged"] == 9 and d["censored_cells"]["chance_level"] >= 5
    fitted = set(zip(d["ridge"]["lr_index"], d["ridge"]["wd_index"]))
    assert not any(i >= 5 and j >= 5 for i, j in fitted) and not any(j == 7 for _, j in fitted)
    assert d["verdict"] == "separable", d["reason"]
    # the chance column is no start: its "best lr" would be a tie-break
    assert d["regret"]["by_start_column"][7] is None and d["regret"]["start_columns_skipped"] == 1


def test_no_wd_effect():
    u = X[:, None] + 2.5
    flat_in_wd = 0.05 + 0.3 * u ** 2 + 0 * Y[None, :]
    d = decide(LRS, WDS, seeds(flat_in_wd, 3, 0.02, rng_seed=2), chance=CHANCE)
    assert d["verdict"] == "no_wd_effect", d["reason"]
    assert "less than seed noise" in d["reason"]


def test_not_enough_data():
    one = decide(LRS, WDS, seeds(bowl(0.0), 1, 0.01), chance=CHANCE)
    assert one["verdict"] == "not_enough_data" and "One seed" in one["reason"]
    missing = seeds(bowl(0.0), 2, 0.01)
    missing[:, 3, 3] = np.nan
    present = np.ones(missing.shape, bool)
    present[:, 3, 3] = False
    d = decide(LRS, WDS, missing, chance=CHANCE, present=present)
    assert d["verdict"] == "not_enough_data" and d["reason"].startswith("1 of 64 cells")
    gone = np.full((2, 8, 8), np.nan)
    assert decide(LRS, WDS, gone, chance=CHANCE)["verdict"] == "not_enough_data"
    small = decide(LRS[:3], WDS[:2], seeds(bowl(0.0)[:3, :2], 2, 0.01), chance=CHANCE)
    assert small["verdict"] == "not_enough_data"


def test_inconclusive_says_how_many_seeds_would_decide():
    # s = 0.3 with noise 1/10 of the depth and 2 seeds: too noisy to show |s| < 0.5 or s != 0
    hits = 0
    for k in range(6):
        d = decide(LRS, WDS, seeds(bowl(0.3), 2, 0.08, rng_seed=100 + k), chance=CHANCE)
        if d["verdict"] == "inconclusive":
            hits += 1
            n = d["seeds_to_decide"]
            assert n is None or 2 < n <= 64
            assert "Cannot tell yet" in d["reason"]
    assert hits >= 1


def test_bad_input():
    with pytest.raises(ValueError, match="S x n x m"):
        decide(LRS, WDS, np.zeros((8, 8)))
    with pytest.raises(ValueError, match="expected"):
        decide(LRS, WDS, np.zeros((2, 8, 7)))


# --------------------------------------------------------------------------- calibration


def test_calibration_battery_meets_its_bounds():
    """1,068 synthetic grids (``service.calibration.battery``, rng_seed 0).

    Measured here (and by ``bench/verdicts.py --quick``): P(coupled | s = 0) = 0.014 (bound
    <= 0.05); P(separable | |s| >= 0.75) = 0.002 (<= 0.05); coverage of the 95 % interval 0.964
    (>= 0.85); P(coupled | s = 0 with chance bands and diverged corners) = 0.000 (<= 0.05); right
    decided verdict with 3 seeds, noise <= 1/20 depth, smooth basins 0.972 (>= 0.90); wrong verdict
    on flat-bottomed basins 0.019 (<= 0.05; the right one there only 0.49: most stay inconclusive).
    """
    r = battery(reps=1, rng_seed=0)
    assert r["p_coupled_s0"] <= 0.05
    assert r["p_separable_s_ge_075"] <= 0.05
    assert r["coverage"] >= 0.85
    assert r["p_coupled_nuisance_s0"] <= 0.05
    assert r["p_right_3seeds"] >= 0.90
    assert r["p_wrong_3seeds_flat"] <= 0.05
    assert r["grids"] > 1000


def test_synthetic_grid_has_the_stated_ridge():
    # noise-free: on the grid's rows the best wd column follows y0 + s (x - x0) to within half a step
    rng = np.random.default_rng(0)
    vals, par = synthetic(Case(0.75, 1, 0.0, shapes=(1.0,)), rng)
    assert vals.shape == (1, 8, 8) and np.nanmax(vals) <= CHANCE
    step = Y[1] - Y[0]
    checked = 0
    for i in range(8):
        want = par["y0"] + 0.75 * (X[i] - par["x0"])
        if Y[0] + step < want < Y[-1] - step and vals[0, i].min() < CHANCE - 0.01:
            assert abs(Y[int(np.argmin(vals[0, i]))] - want) <= step / 2 + 1e-9
            checked += 1
    assert checked >= 3
    assert SLOPE_TOLERANCE == 0.5


def test_local_interaction_test_at_seed_level():
    additive = 0.05 + 0.3 * (X[:, None] + 2.5) ** 2 + 0.3 * (Y[None, :] + 3) ** 2
    d = decide(LRS, WDS, seeds(np.minimum(additive, CHANCE), 3, 0.01, rng_seed=4), chance=CHANCE)
    assert d["interaction"]["p"] > 0.05 and d["interaction"]["df"] == [4, 18]
    coupled = decide(LRS, WDS, seeds(bowl(-1.0, a_wd=0.4), 3, 0.005, rng_seed=4), chance=CHANCE)
    assert coupled["interaction"]["p"] < 1e-3
    # a seed that did not finish inside the 3 x 3 window: no balanced test, the verdict still stands
    vals = seeds(bowl(0.0), 3, 0.01, rng_seed=4)
    present = np.ones(vals.shape, bool)
    bi, bj = decide(LRS, WDS, vals, chance=CHANCE)["best"]["index"]
    present[2, bi, bj] = False
    vals[2, bi, bj] = np.nan
    d = decide(LRS, WDS, vals, chance=CHANCE, present=present)
    assert d["interaction"] is None and d["verdict"] == "separable"
