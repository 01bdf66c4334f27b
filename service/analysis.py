"""How separable are the optimal learning rate and weight decay? The measures of ``docs/measures.md``.

Plain functions on arrays (numpy + scipy only): importable without FastAPI, Ray, a database or
torch. The report (``service.report``) calls them once per optimizer.

Input: ``values[i, j]`` is the study metric (lower is better) at ``lrs[i]``, ``wds[j]``, averaged over
seeds. All geometry is on log10 axes: x = log10(lr), y = log10(wd), in decades.

Cleaning. A diverged cell (NaN or +-inf) is the worst outcome. For the numbers that add values up
(ANOVA, regret, the parabola) every non-finite value and every value worse than the task's chance
level ``c`` (1 - 1/classes for val_error, ln(classes) for val_loss) is set to ``c``:
``V = min(values, c)`` with non-finite -> ``c``. So a diverged corner weighs as much as a classifier
that guesses, no more. Without a chance level, ``c`` is the worst finite value of the grid. The
*order* of cells (which cell is best in a row, a column, the grid) uses the raw values, diverged
cells last, so "least bad" is still told apart beyond chance.

Measures (``separability``):

``best``
    The cell with the lowest raw value (first in row-major order on ties): ``{lr, wd, value}``.

``interaction_share``
    Two-way ANOVA without replication on V (n rows = lrs, m columns = wds), grand mean mu, row
    means r_i, column means c_j::

        SS_lr  = m * sum_i (r_i - mu)^2
        SS_wd  = n * sum_j (c_j - mu)^2
        SS_int = sum_ij (V_ij - r_i - c_j + mu)^2
        interaction_share = SS_int / (SS_lr + SS_wd + SS_int)      in [0, 1]

    It is the fANOVA pair share V_{lr,wd}/V on the grid. Reading: 0 exactly when V_ij = f(lr_i) +
    g(wd_j) (the best wd is the same at every lr: separable); near 1 when only the combination
    matters. A flat grid (every cell equal) has nothing to share: 0, with a warning.
    ``separability = 1 - interaction_share``.

``interaction_share_rank``
    The same share on V replaced by its ranks (``scipy.stats.rankdata``, ties averaged). A robustness
    check: it does not care how far apart the values are, only their order. It is *not* 0 for
    every additive surface (ranks of f + g are not additive), so compare it between optimizers.
    Why it matters: clamping to chance does not stop one diverged corner from dominating the raw
    share. On a 6 x 6 additive grid with values 0.03-0.1, a single corner at chance (0.9) moves the
    share from 0.001 to 0.58 (a lone outlier is (n-1)(m-1)/(nm) interaction), while the rank share
    stays at 0.02. ``warnings_for`` says so when the two differ by more than DISAGREE = 0.3.

``optimal_wd_slope``
    Per lr row, b_i = min_j V_ij; B = min_i b_i; M = median of V. Rows with
    b_i <= B + TOLERANCE * (M - B) (TOLERANCE = 0.25: the row's best is within a quarter of the way
    from the grid's best to its median) are near-optimal. For each, the row's best log10 wd:
    a unique minimum inside the row is refined by the vertex of the parabola through it and its two
    neighbours (clipped to half a grid step); a minimum shared by several cells is their mean
    log10 wd; a unique minimum on the first or last column only bounds the optimum, so the row is
    left out. The slope is the least-squares slope of these log10 wd*(lr) against log10 lr.
    Reading: 0 = the best wd does not depend on lr (tune it once); -1 = only lr*wd matters (the
    best wd falls by a decade for each decade of lr); +1 = only wd/lr matters. ``None`` with fewer
    than 3 usable rows and on a flat grid. ``separability_with_ci`` sets it to ``None`` when weight decay moves the
    metric less than seed noise near the optimum (then the slope is noise: measured on flat-in-wd
    surfaces it jumped by up to 1.5 between seed pairs).

``basin_tilt_deg``
    The near-optimal basin is the TOP_K = 10 best cells (every cell tied with the 10th included;
    the paper's black circles), diverged cells never. Its principal axis is the leading eigenvector
    of the 2x2 covariance of their (log10 lr, log10 wd) coordinates, at angle a in (-90, 90]
    degrees from the lr axis (``basin_angle_deg``). ``basin_tilt_deg = min(|a|, 90 - |a|)`` in
    [0, 45]: 0 = the basin runs along one axis (along lr or along wd, both read as "axis-aligned"),
    45 = along a diagonal. The coordinates are in decades on both axes, not in grid steps, so a
    lr*wd = const valley reads 45 (and a = -45) whatever the two axes' spacings; it agrees with a
    slope of -1. ``None`` when the basin has no direction (a single cell, a round blob, a flat
    grid).

``coordinate_regret``
    One-at-a-time tuning: at the default wd (the catalogue's for the optimizer, else the geometric
    centre of the wd axis; nearest column in log10), take the best lr; at that lr take the best wd.
    Regret = V at that cell - min V, in the metric's units; 0 = one-at-a-time tuning finds the
    grid's best. ``coordinate_trials`` = {"one_at_a_time": n + m, "full_grid": n * m}, what it would
    save.

Uncertainty (``separability_with_ci``) takes one grid per seed (S x n x m). The measures are those
of the seed mean theta. Over the bootstrap resamples of the seeds (S seeds drawn with replacement,
grid re-averaged, every measure recomputed; S >= 2; every distinct resample with its exact
probability while there are at most ``n_boot`` of them, i.e. up to 5 seeds, else ``n_boot``
random ones: :func:`bootstrap_resamples`) with percentiles q_2.5 and q_97.5,
``ci[measure] = [2 theta - q_97.5, 2 theta - q_2.5]`` (the basic bootstrap interval), clipped to the
measure's range and widened to hold theta. Why not the plain percentiles: a resample repeats seeds,
so its mean is noisier than the real one, and noise adds interaction; the percentile interval of
the interaction share would then sit *above* the estimate (its lower end at theta), pointing away
from the truth. The basic interval reverses that shift. With S = 2 a resample is seed 0, seed 1 or
their mean, so the interval is crude: it shows the two seeds' disagreement. A cell's mean is
diverged when any of its seeds diverged (a setting that sometimes blows up is not a good setting).

Noise. sigma = pooled within-cell standard deviation of the seeds, over the near-optimal rows'
cells. Weight decay "has an effect" there when the median over near-optimal rows of the row's range
(max_j - min_j of the cell means) exceeds q * sigma / sqrt(S), q the 95 % point of the studentized
range of m means with the pooled degrees of freedom (``scipy.stats.studentized_range``): what seed
noise alone would produce along a row in 19 of 20 studies. When it does not, the wd-related
measures mean "wd has no effect here", not "separable"; ``warnings_for`` says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations_with_replacement

import numpy as np
from scipy.stats import rankdata, studentized_range

from service.domain.numeric import parabola_vertex

#: Near-optimal rows: best within this fraction of the way from the grid's best to its median.
TOLERANCE = 0.25
#: The basin: this many best cells (the paper's black circles).
TOP_K = 10
#: Interval widths beyond which a measure is not a ranking argument.
#: (separability = 1 - interaction share has the same width, so it is not listed twice.)
WIDE_CI = {"interaction_share": 0.3, "optimal_wd_slope": 1.0, "basin_tilt_deg": 30.0}
#: Interaction share and its rank version further apart than this: extreme cells drive the first.
DISAGREE = 0.3
#: Measures the bootstrap gives intervals for.
CI_MEASURES = ("best_value", "interaction_share", "interaction_share_rank", "separability",
               "optimal_wd_slope", "basin_tilt_deg", "coordinate_regret")


# --------------------------------------------------------------------------- cleaning


def _axes(lrs: Sequence[float], wds: Sequence[float], values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.log10(np.asarray(lrs, dtype=float))
    y = np.log10(np.asarray(wds, dtype=float))
    v = np.asarray(values, dtype=float)
    if v.shape != (x.size, y.size):
        raise ValueError(f"values has shape {v.shape}, expected ({x.size}, {y.size}) = (len(lrs), len(wds))")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("lrs and wds must be positive and finite (the axes are log10)")
    return x, y, v


def _chance(values: np.ndarray, chance: float | None) -> float | None:
    """The clamp level: the given chance level, else the worst finite value (None if there is none)."""
    if chance is not None and math.isfinite(chance):
        return float(chance)
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else None


def _clamp(values: np.ndarray, c: float) -> np.ndarray:
    return np.where(np.isfinite(values), np.minimum(values, c), c)


def _order_key(values: np.ndarray) -> np.ndarray:
    """Raw values with every diverged cell last: what "best" and argmins compare."""
    return np.where(np.isfinite(values), values, np.inf)


# --------------------------------------------------------------------------- the measures


def interaction_share(grid) -> tuple[float, bool]:
    """SS_int / (SS_lr + SS_wd + SS_int) of a two-way ANOVA without replication, and whether flat.

    ``grid`` must be finite. Returns (0.0, True) when every cell is equal (within 1e-12 relative).
    """
    y = np.asarray(grid, dtype=float)
    if y.size == 0 or np.ptp(y) <= 1e-12 * max(1.0, float(np.abs(y).max())):
        return 0.0, True
    mu = y.mean()
    r = y.mean(axis=1, keepdims=True)
    c = y.mean(axis=0, keepdims=True)
    n, m = y.shape
    ss_lr = m * float(((r - mu) ** 2).sum())
    ss_wd = n * float(((c - mu) ** 2).sum())
    ss_int = float(((y - r - c + mu) ** 2).sum())
    total = ss_lr + ss_wd + ss_int
    if total <= 0.0:
        return 0.0, True
    return min(1.0, max(0.0, ss_int / total)), False


def _near_rows(v: np.ndarray) -> np.ndarray:
    """Indices of the lr rows whose best is within TOLERANCE of the way from best to median."""
    row_best = v.min(axis=1)
    best, med = float(v.min()), float(np.median(v))
    return np.flatnonzero(row_best <= best + TOLERANCE * (med - best) + 1e-12 * max(1.0, abs(best)))


def _row_optimum(y: np.ndarray, row_v: np.ndarray, row_key: np.ndarray) -> float | None:
    """The row's best log10 wd; None when a unique minimum sits on an edge (only a bound)."""
    m = y.size
    tied = np.flatnonzero(row_key == row_key.min())
    if tied.size > 1:
        return float(y[tied].mean())
    j = int(tied[0])
    if j == 0 or j == m - 1:
        return None
    return parabola_vertex(y[j - 1:j + 2], row_v[j - 1:j + 2])


def _slope(x: np.ndarray, y: np.ndarray, v: np.ndarray, key: np.ndarray, rows: np.ndarray):
    pts = []
    if y.size >= 3:
        for i in rows:
            w = _row_optimum(y, v[i], key[i])
            if w is not None:
                pts.append((x[i], w))
    if len(pts) < 3:
        return None, len(pts)
    px, py = np.array(pts).T
    dx = px - px.mean()
    return float((dx * (py - py.mean())).sum() / (dx * dx).sum()), len(pts)


def basin_mask(values) -> np.ndarray:
    """The near-optimal basin: the TOP_K best finite cells, every cell tied with the K-th included."""
    key = _order_key(np.asarray(values, dtype=float))
    finite = np.isfinite(key)
    if not finite.any():
        return finite
    kth = np.sort(key[finite])[min(TOP_K, int(finite.sum())) - 1]
    return finite & (key <= kth)


def _basin(x: np.ndarray, y: np.ndarray, key: np.ndarray):
    """(tilt in [0, 45], signed angle in (-90, 90], elongation, cell count) of the TOP_K basin."""
    ii, jj = np.nonzero(basin_mask(key))
    pts = np.column_stack([x[ii], y[jj]])
    if len(pts) < 2:
        return None, None, None, len(pts)
    cov = np.cov(pts, rowvar=False)
    evals, evecs = np.linalg.eigh(cov)  # ascending
    lo, hi = float(evals[0]), float(evals[1])
    if hi <= 0 or hi - lo <= 1e-9 * hi:
        return None, None, None, len(pts)
    vx, vy = evecs[:, 1]
    angle = math.degrees(math.atan2(vy, vx))
    if angle <= -90:
        angle += 180
    elif angle > 90:
        angle -= 180
    tilt = min(abs(angle), 90 - abs(angle))
    elong = math.sqrt(hi / lo) if lo > 1e-15 * hi else None
    return tilt, angle, elong, len(pts)


def _nearest(axis_log: np.ndarray, value: float) -> int:
    return int(np.argmin(np.round(np.abs(axis_log - math.log10(value)), 9)))


def _regret(y: np.ndarray, v: np.ndarray, key: np.ndarray, default_wd: float | None):
    j0 = _nearest(y, default_wd) if default_wd is not None else _nearest(y, 10 ** float(y.mean()))
    i1 = int(np.argmin(key[:, j0]))
    j1 = int(np.argmin(key[i1]))
    return float(v[i1, j1] - v.min()), (i1, j1), j0


def _raw_measures(x, y, values, c, default_wd) -> dict:
    """Every measure of one mean grid (no noise judgement), plus what the warnings need."""
    n, m = values.shape
    key = _order_key(values)
    diverged = ~np.isfinite(values)
    out: dict = {
        "best": None, "interaction_share": None, "interaction_share_rank": None,
        "optimal_wd_slope": None, "basin_tilt_deg": None, "basin_angle_deg": None,
        "coordinate_regret": None, "coordinate_trials": {"one_at_a_time": n + m, "full_grid": n * m},
        "separability": None,
    }
    diag: dict = {"shape": [n, m], "diverged_cells": int(diverged.sum()), "chance": c,
                  "all_diverged": bool(diverged.all()), "flat": False}
    out["diagnostics"] = diag
    if diverged.all() or c is None:
        diag["all_diverged"] = True
        return out
    v = _clamp(values, c)
    bi, bj = np.unravel_index(int(np.argmin(key)), key.shape)
    out["best"] = {"lr": float(10 ** x[bi]), "wd": float(10 ** y[bj]), "value": float(values[bi, bj])}
    diag["best_index"] = [int(bi), int(bj)]
    share, flat = interaction_share(v)
    diag["flat"] = flat
    out["interaction_share"] = share
    out["separability"] = 1.0 - share
    out["interaction_share_rank"] = interaction_share(rankdata(v, method="average").reshape(v.shape))[0]
    rows = _near_rows(v)
    diag["near_rows"] = [int(i) for i in rows]
    if not flat:
        out["optimal_wd_slope"], diag["slope_rows"] = _slope(x, y, v, key, rows)
        tilt, angle, elong, k = _basin(x, y, key)
        out["basin_tilt_deg"], out["basin_angle_deg"] = tilt, angle
        diag["basin_cells"], diag["basin_elongation"] = k, elong
    regret, cell, j0 = _regret(y, v, key, default_wd)
    out["coordinate_regret"] = regret
    diag["coordinate_cell"] = list(cell)
    diag["default_wd_index"] = j0
    return out


def separability(lrs, wds, values, *, chance: float | None = None,
                 default_wd: float | None = None) -> dict:
    """The separability measures of one lr x wd grid (see the module docstring).

    ``values[i][j]`` is the metric at ``lrs[i]``, ``wds[j]`` (lower is better; NaN/inf = diverged).
    Returns the measures (``None`` where undefined, never NaN), ``diagnostics`` and ``warnings``.
    """
    x, y, v = _axes(lrs, wds, values)
    out = _raw_measures(x, y, v, _chance(v, chance), default_wd)
    out["warnings"] = warnings_for(out, lrs=lrs, wds=wds)
    return out


# --------------------------------------------------------------------------- uncertainty


def _seed_mean(per_seed: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean over the present seeds; a cell is diverged (inf) when any present seed diverged."""
    finite = np.isfinite(per_seed)
    bad = (present & ~finite).any(axis=0)
    count = present.sum(axis=0)
    total = np.where(present & finite, per_seed, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    mean = np.where(bad, np.inf, mean)
    return np.where(count > 0, mean, np.nan)


def _noise(y, per_seed, present, mean, c, rows) -> dict:
    """Seed-to-seed noise near the optimum and whether wd moves the metric beyond it."""
    v = _clamp(per_seed, c)
    sub_v, sub_p = v[:, rows, :], present[:, rows, :]
    k = sub_p.sum(axis=0)
    cell_mean = np.where(sub_p, sub_v, 0.0).sum(axis=0) / np.maximum(k, 1)
    ss = (np.where(sub_p, (sub_v - cell_mean) ** 2, 0.0)).sum()
    df = int((k - 1).clip(min=0).sum())
    out = {"seeds": int(per_seed.shape[0]), "seed_sd": None, "wd_range_near_best": None,
           "wd_noise_threshold": None, "wd_has_effect": None}
    if df < 1 or len(rows) == 0:
        return out
    sigma = math.sqrt(ss / df)
    s_eff = float(k[k > 0].mean())
    m = mean.shape[1]
    ranges = [float(np.ptp(_clamp(mean[i], c))) for i in rows]
    q = float(studentized_range.ppf(0.95, m, df)) if m >= 2 else 0.0
    threshold = q * sigma / math.sqrt(s_eff)
    wd_range = float(np.median(ranges))
    out.update(seed_sd=sigma, wd_range_near_best=wd_range, wd_noise_threshold=threshold,
               wd_has_effect=bool(wd_range > threshold))
    return out


def separability_with_ci(lrs, wds, per_seed_values, *, chance: float | None = None,
                         default_wd: float | None = None, n_boot: int = 400, rng_seed: int = 0,
                         present=None) -> dict:
    """The measures of the seed-mean grid with 95 % bootstrap intervals over seeds.

    ``per_seed_values`` is S x n x m (NaN/inf = that seed diverged). ``present`` (S x n x m bool,
    default all True) marks the seeds that finished in each cell; a cell without any is missing and
    then only ``best`` is computed. Adds ``ci`` ({measure: [lo, hi] or None}), ``noise``,
    ``unreliable`` (measures whose interval is too wide to rank on) and the warnings.
    """
    per_seed = np.asarray(per_seed_values, dtype=float)
    if per_seed.ndim != 3:
        raise ValueError(f"per_seed_values must be S x n x m, got shape {per_seed.shape}")
    x, y, _ = _axes(lrs, wds, per_seed[0])
    pres = np.ones(per_seed.shape, bool) if present is None else np.asarray(present, bool)
    mean = _seed_mean(per_seed, pres)
    missing = np.isnan(mean)
    c = _chance(np.where(pres, per_seed, np.nan), chance)
    S = per_seed.shape[0]
    if missing.any():
        out = _raw_measures(x, y, np.where(missing, np.inf, mean), c, default_wd)
        for k in ("interaction_share", "interaction_share_rank", "optimal_wd_slope", "basin_tilt_deg",
                  "basin_angle_deg", "coordinate_regret", "separability"):
            out[k] = None
        out["diagnostics"]["diverged_cells"] = int((~np.isfinite(mean) & ~missing).sum())
        # "all diverged" only if something finished; an unstarted grid is just missing
        out["diagnostics"]["all_diverged"] = bool((~missing).any() and not np.isfinite(mean).any())
        out["diagnostics"]["missing_cells"] = [[int(i), int(j)] for i, j in zip(*np.nonzero(missing))]
        out["ci"] = {k: None for k in CI_MEASURES}
        out["noise"] = {"seeds": S}
        out["unreliable"] = []
        out["warnings"] = warnings_for(out, lrs=lrs, wds=wds)
        return out
    out = _raw_measures(x, y, mean, c, default_wd)
    rows = np.array(out["diagnostics"].get("near_rows", []), dtype=int)
    out["noise"] = _noise(y, per_seed, pres, mean, c, rows) if c is not None else {"seeds": S}
    out["ci"] = _bootstrap(x, y, per_seed, pres, mean, c, default_wd, n_boot, rng_seed) if S >= 2 and c is not None \
        else {k: None for k in CI_MEASURES}
    out["unreliable"] = [k for k, w in WIDE_CI.items()
                         if out["ci"].get(k) is not None and out["ci"][k][1] - out["ci"][k][0] > w]
    if out["noise"].get("wd_has_effect") is False and out["optimal_wd_slope"] is not None:
        # The row optima are wherever the noise put them; a number here would be read as a finding.
        out["diagnostics"]["slope_without_wd_effect"] = out["optimal_wd_slope"]
        out["optimal_wd_slope"] = None
        out["ci"]["optimal_wd_slope"] = None
    out["warnings"] = warnings_for(out, lrs=lrs, wds=wds)
    return out


def bootstrap_resamples(S: int, n_boot: int, rng_seed: int = 0) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The seed resamples of the bootstrap and their weights.

    With few seeds every distinct resample is enumerated with its exact probability (a multiset
    of S seeds drawn with replacement, weight S!/(prod counts!)/S^S) whenever there are no more
    than ``n_boot`` of them: 3 for S = 2, 10 for S = 3, 35 for S = 4, 126 for S = 5. That is the
    bootstrap distribution itself, not a Monte Carlo estimate of it, and far cheaper. Otherwise
    ``n_boot`` random resamples with equal weight (weights ``None``).
    """
    if math.comb(2 * S - 1, S) <= n_boot:
        draws = [np.array(d) for d in combinations_with_replacement(range(S), S)]
        weights = np.array([math.factorial(S) / math.prod(math.factorial(int(c)) for c in np.bincount(d))
                            for d in draws]) / S**S
        return draws, weights
    rng = np.random.default_rng(rng_seed)
    return [rng.integers(0, S, size=S) for _ in range(n_boot)], None


def _bootstrap(x, y, per_seed, present, mean, c, default_wd, n_boot, rng_seed) -> dict:
    draws, weights = bootstrap_resamples(per_seed.shape[0], n_boot, rng_seed)
    w = np.ones(len(draws)) if weights is None else weights
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in CI_MEASURES}
    for idx, wi in zip(draws, w, strict=True):
        g = _seed_mean(per_seed[idx], present[idx])
        # a cell none of whose drawn seeds finished keeps its full-sample mean
        g = np.where(np.isnan(g), mean, g)
        r = _raw_measures(x, y, g, c, default_wd)
        r["best_value"] = r["best"]["value"] if r["best"] else None
        for k in CI_MEASURES:
            if r[k] is not None:
                samples[k].append((r[k], wi))
    point = _raw_measures(x, y, mean, c, default_wd)
    point["best_value"] = point["best"]["value"] if point["best"] else None
    ci: dict = {}
    for k, s in samples.items():
        # a measure undefined in the point estimate or in more than half the resamples (by
        # weight) has no interval worth showing
        if point[k] is None or sum(wi for _, wi in s) * 2 < w.sum():
            ci[k] = None
            continue
        values = [v for v, _ in s]
        if weights is None:
            q_lo, q_hi = np.percentile(values, [2.5, 97.5])
        else:  # the exact distribution's quantiles
            q_lo, q_hi = np.percentile(values, [2.5, 97.5], weights=[wi for _, wi in s],
                                       method="inverted_cdf")
        lo, hi = 2 * point[k] - q_hi, 2 * point[k] - q_lo
        lo_bound, hi_bound = _RANGE.get(k, (-math.inf, math.inf))
        ci[k] = [float(min(max(lo, lo_bound), point[k])), float(max(min(hi, hi_bound), point[k]))]
    return ci


#: Natural ranges the intervals are clipped to.
_RANGE = {"interaction_share": (0.0, 1.0), "interaction_share_rank": (0.0, 1.0),
          "separability": (0.0, 1.0), "basin_tilt_deg": (0.0, 45.0), "coordinate_regret": (0.0, math.inf)}


# --------------------------------------------------------------------------- warnings


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def warnings_for(result: dict, *, lrs=None, wds=None) -> list[str]:
    """Plain-words warnings for one optimizer's result (of ``separability``/``_with_ci``)."""
    d = result.get("diagnostics", {})
    out: list[str] = []
    n, m = d.get("shape", (0, 0))
    missing = d.get("missing_cells") or []
    if missing:
        out.append(f"{len(missing)} of {n * m} grid cells have no finished trial yet, so the "
                   "separability measures wait for a complete grid.")
    if d.get("all_diverged"):
        out.append("Every cell diverged (NaN or inf): nothing to measure. Try lower learning rates.")
        return out
    if d.get("diverged_cells"):
        out.append(f"{d['diverged_cells']} of {n * m} cells diverged; they count as the worst outcome "
                   f"(chance level, {_fmt(d['chance'])}).")
    if d.get("flat"):
        out.append("The metric is the same in every cell: lr and wd make no difference on this grid, "
                   "so the measures say nothing (interaction share set to 0).")
    bi = d.get("best_index")
    if bi is not None and not missing:
        ways = []
        if n > 1 and bi[0] == 0:
            ways.append("lower lr")
        if n > 1 and bi[0] == n - 1:
            ways.append("higher lr")
        if m > 1 and bi[1] == 0:
            ways.append("lower wd")
        if m > 1 and bi[1] == m - 1:
            ways.append("higher wd")
        if ways:
            where = []
            if lrs is not None and ("lower lr" in ways or "higher lr" in ways):
                where.append(f"lr = {_fmt(float(lrs[bi[0]]))}")
            if wds is not None and ("lower wd" in ways or "higher wd" in ways):
                where.append(f"wd = {_fmt(float(wds[bi[1]]))}")
            at = f" ({', '.join(where)})" if where else ""
            out.append(f"The best cell lies on the edge of the grid{at}: the optimum may be outside it. "
                       f"Extend the grid towards {' and '.join(ways)}.")
    share, rank_share = result.get("interaction_share"), result.get("interaction_share_rank")
    if share is not None and rank_share is not None and abs(share - rank_share) > DISAGREE:
        out.append(f"The interaction share ({share:.2f}) and its rank version ({rank_share:.2f}) disagree: "
                   "a few extreme cells (diverged or near chance) carry most of the variance. For the "
                   "shape of the good region, read the rank version and the best-wd slope.")
    noise = result.get("noise") or {}
    if noise.get("wd_has_effect") is False:
        out.append(
            f"Weight decay moves the metric less than the seed-to-seed noise near the optimum "
            f"(spread along wd {_fmt(noise['wd_range_near_best'])}, noise alone gives up to "
            f"{_fmt(noise['wd_noise_threshold'])}): wd has no effect here. The wd-related measures mean "
            "\"no effect\", not \"separable\", and the best-wd slope is not reported.")
    elif noise.get("seeds") == 1 and not missing:
        out.append("One seed only: no intervals, and no way to tell a wd effect from seed noise. "
                   "Run two or more seeds.")
    if result.get("optimal_wd_slope") is None and not missing and not d.get("flat") \
            and noise.get("wd_has_effect") is not False and result.get("interaction_share") is not None:
        out.append(f"The best-wd slope needs 3 near-optimal lr rows whose best wd lies inside the grid; "
                   f"only {d.get('slope_rows', 0)} found.")
    ci = result.get("ci") or {}
    names = {"interaction_share": "interaction share", "separability": "separability",
             "optimal_wd_slope": "best-wd slope", "basin_tilt_deg": "basin tilt"}
    for k in result.get("unreliable", []):
        if k == "optimal_wd_slope" and result.get("optimal_wd_slope") is None:
            continue
        lo, hi = ci[k]
        out.append(f"The {names[k]}'s 95% interval [{_fmt(lo)}, {_fmt(hi)}] is too wide to rank on; "
                   "run more seeds.")
    return out
