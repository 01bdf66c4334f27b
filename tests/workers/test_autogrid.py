"""The planning logic of ``"auto"`` axes and edge repair (``service.domain.placement``).

Everything runs on an analytic objective with a known optimum, shaped like the ``synthetic``
task (``workers.tasks.SyntheticTask``): with u, v the decades from the optimum in lr and wd,

    err = 0.05 + a*u^2 + b*(v + s*u)^2 + sigma*z,   capped at chance 0.9,  NaN for u >= 1.2,

s = 1 for the coupled conventions (sgd, adam, adamw_torch: the best wd falls by a decade per
decade of lr), 0 for the decoupled ones; z is standard normal, deterministic in (lr, wd, seed).
Pure numpy: no torch, no database.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from service.domain import placement as ag
from service.domain.catalog import DEFAULT_GRIDS
from service.domain.grid import Axis, axis_value, extend_axis, extension_steps
from service.domain.placement import (
    PILOT_LR,
    PILOT_WD,
    edge_directions,
    fill_worst,
    pilot_axes,
    pilot_epochs,
    pilot_share,
    place_window,
    share_lr_window,
    smooth,
)
from service.domain.rules import DECAY, FAMILY

CHANCE = 0.9
COUPLING = {"sgd": 1.0, "sgdw": 0.0, "adam": 1.0, "adamw": 0.0, "adamw_torch": 1.0}
OPTIMIZERS = tuple(COUPLING)


def bowl(optimizer, lr_c, wd_c, *, sigma=0.004, seed=0, a=0.08, b=0.04, diverge_above=1.2):
    """err(lr, wd, rep) of the module docstring; ``lr_c``, ``wd_c`` in log10."""
    s = COUPLING[optimizer]

    def f(lr, wd, rep=0):
        u, v = math.log10(lr) - lr_c, math.log10(wd) - wd_c
        if u >= diverge_above:
            return math.nan
        key = zlib.crc32(f"{seed}:{lr!r}:{wd!r}:{rep}".encode())
        z = np.random.default_rng(key).standard_normal()
        return min(CHANCE, 0.05 + a * u * u + b * (v + s * u) ** 2 + sigma * z)

    return f


def grid_of(f, lrs, wds, reps=1):
    return np.array([[np.mean([f(lr, wd, r) for r in range(reps)]) for wd in wds] for lr in lrs])


def log_values(axis: Axis) -> np.ndarray:
    return np.log10(np.geomspace(axis.min, axis.max, axis.num))


def strictly_inside(axis: Axis, c: float) -> bool:
    """The axis point nearest log10 value ``c`` is neither the first nor the last."""
    k = int(np.argmin(np.abs(log_values(axis) - c)))
    return 0 < k < axis.num - 1


def pilot_centre(optimizer: str) -> tuple[float, float]:
    lr, wd = PILOT_LR[FAMILY[optimizer]], PILOT_WD[DECAY[optimizer]]
    return (math.log10(lr.min * lr.max) / 2, math.log10(wd.min * wd.max) / 2)


def auto_place(optimizer, lr_c, wd_c, *, sigma=0.004, seed=0, num=8):
    lrs, wds = pilot_axes(optimizer, True, True, None, None)
    values = grid_of(bowl(optimizer, lr_c, wd_c, sigma=sigma, seed=seed), lrs, wds)
    return place_window(lrs, wds, values, num, num, lr_auto=True, wd_auto=True, chance=CHANCE)


# --------------------------------------------------------------------------- axes


AXES = [Axis(1e-4, 1e-1, 8), Axis(1e-3, 10.0, 8), Axis(3e-5, 0.7, 5), Axis(1e-7, 1.0, 6),
        Axis(0.01, 0.02, 2), *[g[k] for g in DEFAULT_GRIDS.values() for k in ("lr", "wd")]]


@pytest.mark.parametrize("axis", AXES, ids=str)
def test_axis_value_is_geomspace_inside_the_axis(axis):
    inside = list(np.geomspace(axis.min, axis.max, axis.num))
    assert [axis_value(axis, k) for k in range(axis.num)] == inside


@pytest.mark.parametrize("axis", AXES, ids=str)
def test_axis_value_continues_the_same_spacing_outside(axis):
    step = (math.log10(axis.max) - math.log10(axis.min)) / (axis.num - 1)
    for k in (-3, -2, -1, axis.num, axis.num + 1, axis.num + 4):
        assert math.log10(axis_value(axis, k)) == pytest.approx(math.log10(axis.min) + k * step,
                                                                abs=1e-12)
    ratio = (axis.max / axis.min) ** (1 / (axis.num - 1))
    assert axis_value(axis, -1) == pytest.approx(axis.min / ratio, rel=1e-12)
    assert axis_value(axis, axis.num) == pytest.approx(axis.max * ratio, rel=1e-12)


def test_axis_value_of_a_single_point_axis():
    assert axis_value(Axis(0.01, 0.01, 1), 0) == 0.01
    with pytest.raises(ValueError, match=r"has a single point: its spacing is undefined"):
        axis_value(Axis(0.01, 0.01, 1), 1)


def test_extend_axis_lower_keeps_the_old_indices():
    axis = Axis(1e-4, 1e-1, 4)  # one decade apart
    new, idx = extend_axis(axis, "lower", 2)
    assert idx == range(-2, 0)
    assert new.max == 1e-1 and new.num == 6
    assert new.min == pytest.approx(1e-6, rel=1e-12)
    old, now = np.geomspace(1e-4, 1e-1, 4), np.geomspace(new.min, new.max, new.num)
    np.testing.assert_allclose(now[2:], old, rtol=1e-12)  # old index k is new position k + 2
    # a second extension continues from the new origin
    newer, idx2 = extend_axis(new, "lower", 1, origin=-2)
    assert idx2 == range(-3, -2) and newer.num == 7
    assert newer.min == pytest.approx(1e-7, rel=1e-12)


def test_extend_axis_higher_keeps_the_old_indices():
    axis = Axis(1e-3, 1.0, 7)  # half a decade apart
    new, idx = extend_axis(axis, "higher", 3)
    assert idx == range(7, 10)
    assert new.min == 1e-3 and new.num == 10
    assert new.max == pytest.approx(10 ** 1.5, rel=1e-12)
    np.testing.assert_allclose(np.geomspace(new.min, new.max, 10)[:7], np.geomspace(1e-3, 1.0, 7),
                               rtol=1e-12)
    _, idx2 = extend_axis(axis, "higher", 2, origin=-2)
    assert idx2 == range(5, 7)


@pytest.mark.parametrize("args, message", [
    ((Axis(1e-3, 1.0, 4), "up", 1), 'direction must be "lower" or "higher", not \'up\''),
    ((Axis(1e-3, 1.0, 4), "lower", 0), "steps must be a positive integer, not 0"),
    ((Axis(1e-3, 1.0, 4), "lower", 1.0), "steps must be a positive integer, not 1.0"),
    ((Axis(0.1, 0.1, 1), "higher", 1), "has a single point: its spacing is undefined"),
])
def test_extend_axis_rejects(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        extend_axis(*args)


def test_extension_steps():
    assert [extension_steps(n) for n in (1, 4, 8, 9, 16, 32)] == [2, 2, 2, 3, 4, 8]


# --------------------------------------------------------------------------- pilot


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_pilot_axes_auto(optimizer):
    lrs, wds = pilot_axes(optimizer, True, True, None, None)
    lr, wd = PILOT_LR[FAMILY[optimizer]], PILOT_WD[DECAY[optimizer]]
    assert list(lrs) == list(np.geomspace(lr.min, lr.max, 6))
    assert list(wds) == list(np.geomspace(wd.min, wd.max, 6))


def test_pilot_ranges_per_convention():
    assert PILOT_LR == {"sgd": Axis(1e-5, 10.0, 6), "adam": Axis(1e-6, 1.0, 6)}
    assert PILOT_WD == {"l2": Axis(1e-7, 1.0, 6), "schedule": Axis(1e-6, 1.0, 6),
                        "lr": Axis(1e-4, 100.0, 6)}
    assert set(FAMILY) == set(DECAY) == set(DEFAULT_GRIDS)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_pilot_holds_the_grids_calibrated_on_digits(optimizer):
    """The default grids were placed around digits' optima; the pilot must reach them all."""
    lrs, wds = pilot_axes(optimizer, True, True, None, None)
    grid = DEFAULT_GRIDS[optimizer]
    assert lrs[0] <= grid["lr"].min and grid["lr"].max <= lrs[-1]
    assert wds[0] <= grid["wd"].min and grid["wd"].max <= wds[-1]


def test_pilot_axes_given_axes_are_kept_or_subsampled():
    small, large = Axis(1e-3, 1e-1, 3), Axis(1e-5, 1e-2, 16)
    lrs, wds = pilot_axes("adamw", False, True, small, None)
    assert list(lrs) == list(np.geomspace(1e-3, 1e-1, 3))
    assert len(wds) == 6
    lrs, wds = pilot_axes("sgd", True, False, None, large)
    assert list(wds) == list(np.geomspace(1e-5, 1e-2, 16)[[0, 3, 6, 9, 12, 15]])
    lrs, wds = pilot_axes("sgd", False, False, small, large)  # no auto axis: still well defined
    assert (len(lrs), len(wds)) == (3, 6)


def test_pilot_axes_scales_a_normalized_wd():
    scale = 1 / math.sqrt(64 / (1437 * 30))
    _, wds = pilot_axes("adamw", False, True, Axis(1e-3, 1e-3, 1), None, wd_scale=scale)
    np.testing.assert_allclose(wds, np.geomspace(1e-6, 1.0, 6) * scale, rtol=1e-14)


@pytest.mark.parametrize("call, message", [
    (lambda: pilot_axes("lamb", True, True, None, None), "unknown optimizer 'lamb'"),
    (lambda: pilot_axes("sgd", False, True, None, None),
     "the lr axis is not auto, so its given axis is needed"),
    (lambda: pilot_axes("sgd", True, True, None, None, wd_scale=0.0),
     "wd_scale must be a positive finite number, not 0.0"),
])
def test_pilot_axes_rejects(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_pilot_epochs_policy():
    # the default 8 x 8 grid, 2 seeds: a full-length pilot takes 36/164 of the time
    assert pilot_epochs(30) == 30
    assert pilot_share(36, 30, 128, 30) == pytest.approx(36 / 164)
    assert pilot_share(36, 30, 128, 30) < 0.25
    # the boundary: 36 pilot cells fit from 108 final trials on (36 * 0.75 = 0.25 * 108)
    assert pilot_epochs(30, final_trials=108) == 30
    assert pilot_epochs(30, final_trials=107) == 29  # floor(107 * 30 / 108)
    # 8 x 8 x 1 seed: floor(64 * 30 / (3 * 36)) = 17 epochs, 24.2 % of the time
    assert pilot_epochs(30, final_trials=64) == 17
    assert pilot_share(36, 17, 64, 30) == pytest.approx(612 / 2532)
    # a tiny final grid: never below a quarter of the epochs
    assert pilot_epochs(30, final_trials=16) == 8
    assert pilot_epochs(1, final_trials=1) == 1
    # one auto axis against a 4-point given axis: 24 pilot cells before 8 x 4 x 2 = 64 trials
    assert pilot_epochs(20, pilot_trials=24, final_trials=64) == 17


# --------------------------------------------------------------------------- smoothing


def test_fill_worst():
    v = [[0.1, math.nan], [math.inf, 1.7]]
    np.testing.assert_array_equal(fill_worst(v, chance=0.9), [[0.1, 0.9], [0.9, 0.9]])
    np.testing.assert_array_equal(fill_worst(v), [[0.1, 1.7], [1.7, 1.7]])
    np.testing.assert_array_equal(fill_worst([[math.nan, -math.inf]]), [[0.0, 0.0]])


def test_smoothing_ignores_a_single_lucky_cell():
    lrs, wds = pilot_axes("adamw", True, True, None, None)
    f = bowl("adamw", -2.4, -3.6, sigma=0.0)  # the optimum sits on pilot cell (3, 2)
    values = grid_of(f, lrs, wds)
    assert np.unravel_index(np.nanargmin(values), values.shape) == (3, 2)
    lucky = (1, 4)  # err 0.74, far from the optimum, read as 0.02 by luck
    values[lucky] = 0.02
    assert np.unravel_index(np.nanargmin(values), values.shape) == lucky
    s = smooth(values, chance=CHANCE)
    assert np.unravel_index(np.argmin(s), s.shape) == (3, 2)
    tol = 0.04 * (CHANCE - 0.02)
    block = fill_worst(values, chance=CHANCE)[0:3, 3:6].copy()
    block[1, 1] = np.inf
    assert s[lucky] == block.min() - tol  # lifted to its best neighbour, less the tolerance
    assert s[lucky] > s[3, 2] + tol
    result = place_window(lrs, wds, values, 8, 8, lr_auto=True, wd_auto=True, chance=CHANCE)
    assert strictly_inside(result[0], -2.4) and strictly_inside(result[1], -3.6)


def test_smoothing_keeps_the_best_cell_next_to_divergence():
    """The best lr sits just below the divergence boundary; an average would move away from it."""
    values = np.array([[0.30, 0.31, 0.30],
                       [0.12, 0.11, 0.12],
                       [0.05, 0.04, 0.05],
                       [math.nan, math.nan, math.nan]])
    assert np.unravel_index(np.argmin(smooth(values, chance=CHANCE)), values.shape) == (2, 1)
    mean = smooth(values, chance=CHANCE, kind="mean")  # moved a whole pilot step down in lr
    assert np.unravel_index(np.argmin(mean), values.shape)[0] == 1


def test_smooth_rejects():
    with pytest.raises(ValueError, match="values must be a non-empty 2-D array, not of shape"):
        smooth([0.1, 0.2])
    with pytest.raises(ValueError, match='kind must be "support", "median" or "mean", not \'max\''):
        smooth([[0.1]], kind="max")


# --------------------------------------------------------------------------- placement


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("sigma", [0.004, 0.01])
def test_auto_grid_holds_the_optimum_across_8_decades(optimizer, sigma):
    """lr over 8 decades (wd centred), wd over 8 decades (lr centred), both within +-3 decades."""
    c_lr, c_wd = pilot_centre(optimizer)
    sweep = np.arange(-4.0, 4.01, 0.5)
    centres = ([(c_lr + d, c_wd) for d in sweep] + [(c_lr, c_wd + d) for d in sweep]
               + [(c_lr + a, c_wd + b) for a in np.arange(-3, 3.01, 1.0)
                  for b in np.arange(-3, 3.01, 1.0)])
    missed = []
    for seed in (0, 1):
        for lr_c, wd_c in centres:
            lr_axis, wd_axis = auto_place(optimizer, lr_c, wd_c, sigma=sigma, seed=seed)
            assert lr_axis.num == wd_axis.num == 8
            assert math.log10(lr_axis.max / lr_axis.min) == pytest.approx(3.0, abs=0.01)
            assert math.log10(wd_axis.max / wd_axis.min) == pytest.approx(4.0, abs=0.01)
            if not (strictly_inside(lr_axis, lr_c) and strictly_inside(wd_axis, wd_c)):
                missed.append((seed, round(lr_c, 2), round(wd_c, 2), lr_axis, wd_axis))
    assert missed == []


def test_place_window_on_an_exact_bowl():
    """A noise-free bowl centred on a pilot cell: the quadratic vertex is exactly that cell."""
    lrs, wds = np.geomspace(1e-5, 10.0, 6), np.geomspace(1e-6, 1.0, 6)
    xs, ys = np.log10(lrs), np.log10(wds)
    values = 0.05 + 0.1 * (xs[:, None] - xs[2]) ** 2 + 0.1 * (ys[None, :] - ys[3]) ** 2
    lr_axis, wd_axis = place_window(lrs, wds, values, 8, 5, lr_auto=True, wd_auto=True)
    # centred on (10**-2.6, 10**-2.4): 3 decades of lr and 4 of wd, 3 significant digits
    assert lr_axis == Axis(7.94e-05, 0.0794, 8) and wd_axis == Axis(3.98e-05, 0.398, 5)


def test_place_window_follows_a_tilted_basin_between_pilot_cells():
    """Coupled convention (best wd falls a decade per decade of lr), optimum off the pilot cells:
    the least-squares quadratic through the 3 x 3 block finds it exactly; two 1-D parabolas
    through the best cell would not (they read the tilt as an offset)."""
    lrs, wds = np.geomspace(1e-5, 10.0, 6), np.geomspace(1e-6, 1.0, 6)
    u = np.log10(lrs)[:, None] - (-2.3)
    v = np.log10(wds)[None, :] - (-2.8)
    values = np.minimum(0.05 + 0.1 * u**2 + 0.1 * (v + u) ** 2, CHANCE)
    lr_axis, wd_axis = place_window(lrs, wds, values, 8, 8, lr_auto=True, wd_auto=True,
                                    chance=CHANCE)
    assert lr_axis == Axis(0.000158, 0.158, 8)  # 10**(-2.3 -+ 1.5)
    assert wd_axis == Axis(1.58e-05, 0.158, 8)  # 10**(-2.8 -+ 2)


def test_place_window_at_the_pilot_edge_reaches_beyond_it():
    """Best on the pilot's first lr: the window keeps one pilot step inward, the rest below."""
    lrs, wds = np.geomspace(1e-5, 10.0, 6), np.geomspace(1e-6, 1.0, 6)
    xs, ys = np.log10(lrs), np.log10(wds)
    values = 0.05 + 0.1 * (xs[:, None] + 6.0) ** 2 + 0.05 * (ys[None, :] - ys[2]) ** 2
    lr_axis, _ = place_window(lrs, wds, values, 8, 8, lr_auto=True, wd_auto=True)
    assert lr_axis == Axis(1.58e-07, 0.000158, 8)  # 10**(-5 + 1.2 - 3) .. 10**(-5 + 1.2)
    assert strictly_inside(lr_axis, -6.0)


def test_place_window_where_wd_never_mattered_looks_above():
    lrs, wds = np.geomspace(1e-5, 10.0, 6), np.geomspace(1e-6, 1.0, 6)
    xs = np.log10(lrs)
    values = np.repeat((0.05 + 0.1 * (xs - xs[3]) ** 2)[:, None], 6, axis=1)
    _, wd_axis = place_window(lrs, wds, values, 8, 8, lr_auto=True, wd_auto=True)
    assert wd_axis == Axis(0.0631, 631.0, 8)  # from one pilot step below the top, 4 decades up


def test_place_window_reads_wd_on_the_lr_rows_it_keeps():
    """Paper-style AdamW's pilot on digits (30 epochs, cosine; val_error): at lr = 1, the pilot's
    top row, every wd is near-optimal, but the lr window stops below 1, and at every lr it keeps
    the error rises at wd = 1. The wd window must cover below 1, not look above the pilot (it was
    0.0631..631, and the grid's best sat on its lower edge)."""
    values = [[0.886, 0.886, 0.889, 0.897, 0.897, 0.897],
              [0.719, 0.719, 0.717, 0.647, 0.897, 0.897],
              [0.094, 0.094, 0.097, 0.172, 0.619, 0.786],
              [0.028, 0.028, 0.028, 0.025, 0.106, 0.603],
              [0.031, 0.031, 0.028, 0.028, 0.019, 0.100],
              [0.044, 0.028, 0.039, 0.044, 0.031, 0.044]]
    lrs, wds = pilot_axes("adamw", True, True, None, None)
    lr_axis, wd_axis = place_window(lrs, wds, values, 8, 8, lr_auto=True, wd_auto=True,
                                    chance=CHANCE)
    assert lr_axis == Axis(0.000251, 0.251, 8)  # best row and the one below, then 1.8 decades
    assert wd_axis == Axis(0.0001, 1.0, 8)  # closed at wd = 1 on the kept rows, open below
    assert strictly_inside(wd_axis, math.log10(0.0631))  # the pilot's best wd


def test_place_window_without_information_centres_on_the_pilot():
    """Every pilot run diverged: nothing to place by, so the pilot's central cell (2, 2);
    the grid's edge repair takes it from there."""
    lrs, wds = pilot_axes("adamw", True, True, None, None)
    for chance in (CHANCE, None):
        lr_axis, wd_axis = place_window(lrs, wds, np.full((6, 6), math.nan), 8, 8, lr_auto=True,
                                        wd_auto=True, chance=chance)
        assert lr_axis == Axis(7.94e-06, 0.00794, 8)  # 10**(-3.6 -+ 1.5)
        assert wd_axis == Axis(2.51e-06, 0.0251, 8)  # 10**(-3.6 -+ 2)


def test_place_window_keeps_a_given_axis():
    given = Axis(1e-3, 1e-1, 5)
    lrs, wds = pilot_axes("adamw", False, True, given, None)
    f = bowl("adamw", -2.0, -2.5)
    lr_axis, wd_axis = place_window(lrs, wds, grid_of(f, lrs, wds), 5, 8, lr_auto=False,
                                    wd_auto=True, given_lr=given, chance=CHANCE)
    assert lr_axis is given
    assert strictly_inside(wd_axis, -2.5)
    with pytest.raises(ValueError, match="the lr axis is not auto, so given_lr is needed"):
        place_window(lrs, wds, grid_of(f, lrs, wds), 5, 8, lr_auto=False, wd_auto=True)
    with pytest.raises(ValueError, match=r"pilot_values has shape \(2, 2\), expected \(5, 6\)"):
        place_window(lrs, wds, [[0.1, 0.2], [0.3, 0.4]], 5, 8, lr_auto=False, wd_auto=True,
                     given_lr=given)


def test_place_window_single_point_and_floor():
    lrs, wds = np.geomspace(1e-5, 10.0, 6), np.geomspace(1e-6, 1.0, 6)
    xs, ys = np.log10(lrs), np.log10(wds)
    values = 0.05 + 0.1 * (xs[:, None] - xs[2]) ** 2 + 0.05 * (ys[None, :] - ys[3]) ** 2
    lr_axis, _ = place_window(lrs, wds, values, 1, 8, lr_auto=True, wd_auto=True)
    assert lr_axis == Axis(0.00251, 0.00251, 1)
    # best at the tiniest lr of a low pilot: the window may not reach below FLOOR["lr"] = 1e-8
    lrs = np.geomspace(1e-9, 1e-4, 6)
    values = 0.05 + 0.1 * (np.log10(lrs)[:, None] + 12) ** 2 + 0.1 * (ys[None, :] - ys[3]) ** 2
    lr_axis, _ = place_window(lrs, wds, values, 8, 8, lr_auto=True, wd_auto=True)
    assert lr_axis == Axis(1e-8, 1e-5, 8)


# --------------------------------------------------------------------------- edge repair


def test_edge_directions():
    v = np.full((4, 5), 0.5)
    v[1, 2] = 0.1
    assert edge_directions(v, tolerance=0.0) == {"lr": None, "wd": None}
    v[1, 2], v[0, 2] = 0.5, 0.1
    assert edge_directions(v, tolerance=0.0) == {"lr": "lower", "wd": None}
    v[0, 2], v[3, 4] = 0.5, 0.1
    assert edge_directions(v, tolerance=0.0) == {"lr": "higher", "wd": "higher"}
    v[3, 4], v[2, 0] = 0.5, 0.1
    assert edge_directions(v, tolerance=0.0) == {"lr": None, "wd": "lower"}


def test_edge_directions_near_ties_count_as_inside():
    v = np.array([[0.30, 0.20, 0.30],
                  [0.20, 0.11, 0.20],
                  [0.10, 0.12, 0.30]])  # best on the high-lr and low-wd edges, 0.01 ahead
    assert edge_directions(v, tolerance=0.0) == {"lr": "higher", "wd": "lower"}
    assert edge_directions(v, tolerance=0.009) == {"lr": "higher", "wd": "lower"}
    assert edge_directions(v, tolerance=0.01) == {"lr": None, "wd": None}
    v[1, 1] = 0.10  # an exact tie with an inner cell
    assert edge_directions(v, tolerance=0.0) == {"lr": None, "wd": None}


def test_edge_directions_diverged_cells_are_the_worst():
    v = np.array([[0.30, 0.20, math.nan],
                  [0.25, 0.15, math.inf],
                  [0.20, 0.10, math.nan]])
    assert edge_directions(v, tolerance=0.0) == {"lr": "higher", "wd": None}
    assert edge_directions(np.full((3, 3), math.nan), tolerance=0.0) == {"lr": None, "wd": None}
    assert edge_directions([[0.3, 0.2, 0.1]], tolerance=0.0) == {"lr": None, "wd": "higher"}
    with pytest.raises(ValueError, match="tolerance must be a finite number >= 0, not -0.1"):
        edge_directions(v, tolerance=-0.1)


@pytest.mark.parametrize("optimizer, lr_c, wd_c", [
    ("adamw", 0.8, -5.8),          # lr optimum above the window, wd optimum below it
    ("sgd", -4.0, -3.0),           # a decade below in lr; only the lowest row does not diverge
    ("adamw_torch", -1.5, 0.5),    # wd far above, coupled
    ("sgdw", -3.7, -6.0),          # both below
])
def test_edge_repair_extends_until_the_optimum_is_inside(optimizer, lr_c, wd_c):
    """A window placed off the optimum is found edge-bound, extended, and no cell runs twice."""
    lr_axis, wd_axis = Axis(1e-3, 1.0, 8), Axis(1e-5, 0.1, 8)  # log10: -3..0 and -5..-1
    f = bowl(optimizer, lr_c, wd_c, sigma=0.004)
    runs: dict[tuple[int, int], int] = {}
    cells: dict[tuple[int, int], float] = {}
    stored: dict[tuple[int, int], tuple[float, float]] = {}
    o_lr = o_wd = 0  # trial index of each axis's first point

    def run_missing():
        lrs = np.geomspace(lr_axis.min, lr_axis.max, lr_axis.num)
        wds = np.geomspace(wd_axis.min, wd_axis.max, wd_axis.num)
        for i in range(o_lr, o_lr + lr_axis.num):
            for j in range(o_wd, o_wd + wd_axis.num):
                lr, wd = lrs[i - o_lr], wds[j - o_wd]
                if (i, j) in cells:  # reused: the same cell, to a few ulp
                    assert lr == pytest.approx(stored[(i, j)][0], rel=1e-12)
                    assert wd == pytest.approx(stored[(i, j)][1], rel=1e-12)
                    continue
                runs[(i, j)] = runs.get((i, j), 0) + 1
                cells[(i, j)] = float(np.mean([f(lr, wd, r) for r in range(2)]))
                stored[(i, j)] = (lr, wd)

    def current():
        return np.array([[cells[(i, j)] for j in range(o_wd, o_wd + wd_axis.num)]
                         for i in range(o_lr, o_lr + lr_axis.num)])

    run_missing()
    assert not (strictly_inside(lr_axis, lr_c) and strictly_inside(wd_axis, wd_c))
    assert edge_directions(current(), tolerance=0.006) != {"lr": None, "wd": None}
    extensions = 0
    while (d := edge_directions(current(), tolerance=0.006)) != {"lr": None, "wd": None}:
        assert extensions < 6, (lr_axis, wd_axis, d)
        extensions += 1
        if d["lr"]:
            lr_axis, new = extend_axis(lr_axis, d["lr"], extension_steps(8), origin=o_lr)
            o_lr = min(o_lr, new.start)
        if d["wd"]:
            wd_axis, new = extend_axis(wd_axis, d["wd"], extension_steps(8), origin=o_wd)
            o_wd = min(o_wd, new.start)
        run_missing()
    assert strictly_inside(lr_axis, lr_c) and strictly_inside(wd_axis, wd_c)
    assert set(runs.values()) == {1}  # no trial run twice
    assert len(runs) == lr_axis.num * wd_axis.num  # and the extended grid has no holes


# --------------------------------------------------------------------------- families


def test_share_lr_window_by_family():
    windows = {"sgd": Axis(1e-3, 1.0, 8), "sgdw": Axis(1e-2, 10.0, 8),
               "adam": Axis(1e-4, 0.1, 8), "adamw": Axis(3e-5, 0.03, 6),
               "adamw_torch": Axis(1e-4, 0.1, 1)}
    shared = share_lr_window(windows, FAMILY)
    assert shared["sgd"] == shared["sgdw"] == Axis(1e-3, 10.0, 8)
    assert shared["adam"] == Axis(3e-5, 0.1, 8)
    assert shared["adamw"] == Axis(3e-5, 0.1, 6)  # each keeps the size its trials were counted with
    assert shared["adamw_torch"] == Axis(1e-4, 0.1, 1)  # a single point has no window to share
    assert share_lr_window({"adam": Axis(1e-4, 0.1, 8)}) == {"adam": Axis(1e-4, 0.1, 8)}
    assert share_lr_window(windows, {"sgd": "a", "adam": "a"})["sgd"] == Axis(1e-4, 1.0, 8)
    assert ag.FAMILY["adamw_torch"] == "adam" and ag.FAMILY["sgdw"] == "sgd"
