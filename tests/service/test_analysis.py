"""The separability measures on surfaces whose answer the math gives (service.analysis)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from service.analysis import bootstrap_resamples, interaction_share, separability, separability_with_ci

LRS = np.logspace(-4, -1, 8)
WDS = np.logspace(-5, -2, 8)
X = np.log10(LRS)[:, None]
Y = np.log10(WDS)[None, :]

#: f(lr) + g(wd): the best wd (10^-3.3) is the same at every lr.
ADDITIVE = 0.05 * (X + 2.6) ** 2 + (Y + 3.3) ** 2
#: f(log lr + log wd): only the product lr*wd matters; the valley is off the cell centres.
PRODUCT = (X + Y + 5.2) ** 2


def _numbers(obj):
    """Every float anywhere in a nested result."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, float):
        yield obj


def _no_nan(result):
    assert all(math.isfinite(v) for v in _numbers(result)), result
    json.dumps(result, allow_nan=False)


def test_additive_surface_is_exactly_separable():
    r = separability(LRS, WDS, ADDITIVE)
    assert r["interaction_share"] == pytest.approx(0.0, abs=1e-9)
    assert r["separability"] == pytest.approx(1.0, abs=1e-9)
    assert r["optimal_wd_slope"] == pytest.approx(0.0, abs=1e-9)
    assert r["coordinate_regret"] == 0.0
    assert r["coordinate_trials"] == {"one_at_a_time": 16, "full_grid": 64}
    assert r["diagnostics"]["slope_rows"] >= 3
    # best cell: lr nearest 10^-2.6 (row 3), wd nearest 10^-3.3 (column 4)
    assert r["best"]["lr"] == pytest.approx(LRS[3])
    assert r["best"]["wd"] == pytest.approx(WDS[4])
    assert r["warnings"] == []


def test_product_surface_has_slope_minus_one_and_diagonal_basin():
    r = separability(LRS, WDS, PRODUCT)
    add = separability(LRS, WDS, ADDITIVE)
    assert r["optimal_wd_slope"] == pytest.approx(-1.0, abs=0.1)
    assert r["basin_tilt_deg"] == pytest.approx(45.0, abs=3.0)
    assert r["basin_angle_deg"] == pytest.approx(-45.0, abs=3.0)  # along lr*wd = const
    assert r["interaction_share"] > 0.3 > add["interaction_share"] + 0.29


def test_ratio_surface_has_slope_plus_one():
    r = separability(LRS, WDS, (Y - X + 0.7) ** 2)
    assert r["optimal_wd_slope"] == pytest.approx(1.0, abs=0.1)
    assert r["basin_angle_deg"] == pytest.approx(45.0, abs=3.0)


@pytest.mark.parametrize("surface, aligned", [
    ((X + 2.5) ** 2 + 0.0 * Y, "wd"),   # lr decides; the basin runs along wd
    ((Y + 3.5) ** 2 + 0.0 * X, "lr"),   # wd decides; the basin runs along lr
])
def test_axis_aligned_ridges_read_zero_tilt(surface, aligned):
    r = separability(LRS, WDS, surface)
    assert r["basin_tilt_deg"] == pytest.approx(0.0, abs=1e-6)
    assert abs(r["basin_angle_deg"]) == pytest.approx(90.0 if aligned == "wd" else 0.0, abs=1e-6)


def test_hand_computed_three_by_three_anova():
    # y_ij = a_i * b_j, a = b = (1, 2, 3): mu = 4, row/col means 2, 4, 6.
    # SS_lr = SS_wd = 3 * (4 + 0 + 4) = 24; residuals (1, 0, -1; 0, 0, 0; -1, 0, 1): SS_int = 4.
    grid = [[1, 2, 3], [2, 4, 6], [3, 6, 9]]
    assert interaction_share(grid) == (pytest.approx(4 / 52, abs=1e-15), False)
    r = separability([1e-3, 1e-2, 1e-1], [1e-4, 1e-3, 1e-2], grid)
    assert r["interaction_share"] == pytest.approx(1 / 13, abs=1e-15)
    assert r["separability"] == pytest.approx(12 / 13, abs=1e-15)
    # ranks (ties averaged): 1, 2.5, 4.5 / 2.5, 6, 7.5 / 4.5, 7.5, 9; total SS 58.5,
    # SS_lr = SS_wd = 86/3, so SS_int = 7/6 and the share 7/351.
    assert r["interaction_share_rank"] == pytest.approx(7 / 351, abs=1e-15)


def test_hand_computed_coordinate_regret():
    # default wd = centre column; its best lr is row 1; row 1's best wd is column 1 (value 2);
    # the grid's best is 0 at (0, 0): one-at-a-time tuning loses exactly 2.
    grid = [[0, 3, 9], [5, 2, 6], [9, 4, 8]]
    r = separability([1e-3, 1e-2, 1e-1], [1e-4, 1e-3, 1e-2], grid)
    assert r["coordinate_regret"] == 2.0
    assert r["diagnostics"]["coordinate_cell"] == [1, 1]
    # from the default wd 1e-4 (column 0) it finds the best cell
    r0 = separability([1e-3, 1e-2, 1e-1], [1e-4, 1e-3, 1e-2], grid, default_wd=1.2e-4)
    assert r0["coordinate_regret"] == 0.0


def test_non_finite_cells_are_clamped_to_chance_and_never_give_nan():
    grid = ADDITIVE.copy()
    grid[7, 7], grid[7, 6], grid[6, 7], grid[0, 0] = np.nan, np.inf, -np.inf, 99.0
    chance = 2.0
    r = separability(LRS, WDS, grid, chance=chance)
    _no_nan(r)
    same = ADDITIVE.copy()
    same[7, 7] = same[7, 6] = same[6, 7] = same[0, 0] = chance
    ref = separability(LRS, WDS, same, chance=chance)
    for k in ("interaction_share", "interaction_share_rank", "coordinate_regret"):
        assert r[k] == pytest.approx(ref[k], abs=1e-12)
    assert r["diagnostics"]["diverged_cells"] == 3
    assert "3 of 64 cells diverged; they count as the worst outcome (chance level, 2)." in r["warnings"]
    # without a chance level the worst finite value (99) is the clamp
    assert separability(LRS, WDS, grid)["diagnostics"]["chance"] == 99.0


def test_tie_grids_never_give_nan():
    flat = separability(LRS, WDS, np.full((8, 8), 0.1))
    _no_nan(flat)
    assert flat["interaction_share"] == 0.0 and flat["separability"] == 1.0
    assert flat["optimal_wd_slope"] is None and flat["basin_tilt_deg"] is None
    assert flat["coordinate_regret"] == 0.0
    assert any("same in every cell" in w for w in flat["warnings"])
    # val_error-like values: few distinct levels, many ties
    rng = np.random.default_rng(3)
    steps = np.round(ADDITIVE * 4) / 4 + rng.integers(0, 2, (8, 8)) / 4
    _no_nan(separability(LRS, WDS, steps))
    block = np.ones((8, 8))
    block[2:4, 2:4] = 0.0  # a round (square) basin: no direction
    r = separability(LRS, WDS, block)
    _no_nan(r)
    assert r["basin_tilt_deg"] is None


def test_all_diverged_grid():
    r = separability(LRS, WDS, np.full((8, 8), np.nan))
    _no_nan(r)
    assert r["best"] is None and r["interaction_share"] is None and r["separability"] is None
    assert r["warnings"] == ["Every cell diverged (NaN or inf): nothing to measure. Try lower learning rates."]


def test_edge_warning_names_the_direction():
    grid = (X + 1.0) ** 2 + (Y + 5.0) ** 2   # optimum beyond the highest lr and at the lowest wd
    r = separability(LRS, WDS, grid)
    assert r["warnings"][0] == ("The best cell lies on the edge of the grid (lr = 0.1, wd = 1e-05): the "
                                "optimum may be outside it. Extend the grid towards higher lr and lower wd.")


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"values has shape \(2, 2\), expected \(8, 8\)"):
        separability(LRS, WDS, [[1, 2], [3, 4]])


# --------------------------------------------------------------------------- intervals


def _seeds(surface, sd, S=4, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([surface + rng.normal(0, sd, surface.shape) for _ in range(S)])


def test_identical_seeds_give_zero_width_intervals_at_the_point_estimate():
    r = separability_with_ci(LRS, WDS, np.stack([PRODUCT] * 3), n_boot=50)
    for k in ("interaction_share", "interaction_share_rank", "separability", "optimal_wd_slope",
              "basin_tilt_deg", "coordinate_regret"):
        assert r["ci"][k] == [pytest.approx(r[k])] * 2, k
    assert r["ci"]["best_value"] == [pytest.approx(r["best"]["value"])] * 2
    assert r["noise"]["seed_sd"] == pytest.approx(0.0, abs=1e-12)


def test_bootstrap_intervals_separate_additive_from_product():
    add = separability_with_ci(LRS, WDS, _seeds(ADDITIVE, 0.02), n_boot=200)
    prod = separability_with_ci(LRS, WDS, _seeds(PRODUCT, 0.02), n_boot=200)
    for r in (add, prod):
        _no_nan(r)
        for lo, hi in (v for v in r["ci"].values() if v is not None):
            assert lo <= hi
    assert add["ci"]["interaction_share"][1] < 0.05 < 0.3 < prod["ci"]["interaction_share"][0]
    lo, hi = prod["ci"]["optimal_wd_slope"]
    assert -1.2 < lo <= hi < -0.8
    assert add["noise"]["wd_has_effect"] is True and prod["noise"]["wd_has_effect"] is True
    # the same seed gives the same intervals
    again = separability_with_ci(LRS, WDS, _seeds(ADDITIVE, 0.02), n_boot=200)
    assert again["ci"] == add["ci"]


def test_flat_in_wd_surface_reports_no_wd_effect_and_no_slope():
    # four equally good lr rows, wd does nothing: each row's "best wd" is wherever noise put it
    rows = np.arange(8)[:, None]
    surface = 0.05 + 0.3 * ((rows < 2) | (rows > 5)) + 0.0 * Y
    r = separability_with_ci(LRS, WDS, _seeds(surface, 0.01, S=3, seed=0), n_boot=100)
    assert r["noise"]["wd_has_effect"] is False
    assert r["diagnostics"]["slope_rows"] == 4
    assert r["diagnostics"]["slope_without_wd_effect"] == pytest.approx(-0.2968, abs=1e-4)
    assert r["optimal_wd_slope"] is None and r["ci"]["optimal_wd_slope"] is None
    # ... while the interaction share holds near 0
    assert r["interaction_share"] < 0.002
    assert any(w.startswith("Weight decay moves the metric less than the seed-to-seed noise")
               and "wd has no effect here" in w for w in r["warnings"])
    _no_nan(r)


def test_few_seeds_enumerate_the_exact_bootstrap_distribution():
    draws, weights = bootstrap_resamples(2, 400)
    assert [d.tolist() for d in draws] == [[0, 0], [0, 1], [1, 1]]
    assert weights.tolist() == [0.25, 0.5, 0.25]
    for S, n in ((3, 10), (4, 35), (5, 126)):
        draws, weights = bootstrap_resamples(S, 400)
        assert len(draws) == n == len({tuple(d) for d in draws})
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    draws, weights = bootstrap_resamples(6, 400)  # 462 distinct resamples > 400: random ones
    assert weights is None and len(draws) == 400


def test_two_seed_interval_is_the_basic_interval_of_the_three_resamples():
    per_seed = _seeds(PRODUCT, 0.02, S=2)
    chance = 1.0
    r = separability_with_ci(LRS, WDS, per_seed, chance=chance)
    assert separability_with_ci(LRS, WDS, per_seed, chance=chance, n_boot=5, rng_seed=7)["ci"] == r["ci"]
    theta = r["interaction_share"]
    # seed 0 alone (1/4), their mean (1/2), seed 1 alone (1/4): q_2.5 is the smallest, q_97.5 the largest
    shares = [separability(LRS, WDS, g, chance=chance)["interaction_share"]
              for g in (per_seed[0], per_seed.mean(axis=0), per_seed[1])]
    lo, hi = 2 * theta - max(shares), 2 * theta - min(shares)
    assert r["ci"]["interaction_share"] == [max(min(lo, theta), 0.0), min(max(hi, theta), 1.0)]


def test_one_seed_has_no_intervals_and_says_so():
    r = separability_with_ci(LRS, WDS, ADDITIVE[None])
    assert set(r["ci"].values()) == {None}
    assert r["interaction_share"] == pytest.approx(0.0, abs=1e-9)
    assert ("One seed only: no intervals, and no way to tell a wd effect from seed noise. "
            "Run two or more seeds.") in r["warnings"]


def test_wide_interval_is_flagged():
    # two seeds that disagree completely: one additive, one product-only
    r = separability_with_ci(LRS, WDS, np.stack([ADDITIVE, PRODUCT]), n_boot=100)
    assert r["unreliable"] == ["interaction_share", "optimal_wd_slope", "basin_tilt_deg"]
    assert any(w.startswith("The interaction share's 95% interval") and w.endswith(
        "is too wide to rank on; run more seeds.") for w in r["warnings"])


def test_missing_cells_leave_only_best_and_a_warning():
    per_seed = _seeds(ADDITIVE, 0.01, S=2)
    present = np.ones(per_seed.shape, bool)
    present[:, 0, 5] = False          # no seed finished
    present[1, 4, 4] = False          # one seed finished: the cell is there
    per_seed[0, 6, 6] = np.inf        # one seed diverged: the cell is diverged
    r = separability_with_ci(LRS, WDS, per_seed, present=present)
    _no_nan(r)
    assert r["interaction_share"] is None and r["optimal_wd_slope"] is None
    assert r["best"]["wd"] == pytest.approx(WDS[4])
    assert r["diagnostics"]["missing_cells"] == [[0, 5]]
    assert r["diagnostics"]["diverged_cells"] == 1
    assert r["warnings"][0] == ("1 of 64 grid cells have no finished trial yet, so the separability "
                                "measures wait for a complete grid.")
