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
from functools import lru_cache
from itertools import combinations_with_replacement

import numpy as np
from scipy.stats import f as f_dist
from scipy.stats import rankdata, studentized_range
from scipy.stats import t as student_t

from service.domain.conventions import CONVENTIONS, LR_POWER, SCHEDULE_FACTOR
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


@lru_cache(maxsize=512)
def _studentized_q95(m: int, df: int) -> float:
    """The 95 % point of the studentized range of m means on df degrees of freedom (cached: scipy
    integrates it numerically, ~0.2 s a call, and a report or a battery asks for the same few)."""
    return float(studentized_range.ppf(0.95, m, df))


def _noise(y, per_seed, present, mean, c, rows) -> dict:
    """Seed-to-seed noise near the optimum and whether wd moves the metric beyond it."""
    v = _clamp(per_seed, c)
    sub_v, sub_p = v[:, rows, :], present[:, rows, :]
    k = sub_p.sum(axis=0)
    cell_mean = np.where(sub_p, sub_v, 0.0).sum(axis=0) / np.maximum(k, 1)
    ss = (np.where(sub_p, (sub_v - cell_mean) ** 2, 0.0)).sum()
    df = int((k - 1).clip(min=0).sum())
    out: dict = {"seeds": int(per_seed.shape[0]), "seed_sd": None, "wd_range_near_best": None,
           "wd_noise_threshold": None, "wd_has_effect": None}
    if df < 1 or len(rows) == 0:
        return out
    sigma = math.sqrt(ss / df)
    s_eff = float(k[k > 0].mean())
    m = mean.shape[1]
    ranges = [float(np.ptp(_clamp(mean[i], c))) for i in rows]
    q = _studentized_q95(m, df) if m >= 2 else 0.0
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


# --------------------------------------------------------------------------- decisions
#
# ``decide`` answers the practitioner's question with one of five verdicts, from statistics that
# match it: whether the best wd moves with lr is a property of the *ridge* of good cells, so it is
# estimated from a local quadratic response surface fitted to the cells near the optimum (diverged
# and chance-level cells censored), with a Fieller interval for the ridge slope; "separable" is an
# equivalence statement (the whole interval inside +-SLOPE_TOLERANCE), "coupled" needs the interval
# to exclude 0 and the estimate to lie beyond the tolerance. The rule and its calibration are
# documented in docs/measures.md; ``bench/verdicts.py`` and tests/service/test_decide.py measure it.

#: Equivalence tolerance on the ridge slope, in decades of best wd per decade of lr: inside it the
#: best wd moves by less than half a decade when lr moves by a decade (about one half-decade grid
#: step of wd per decade of lr), which one extra wd pass at the new lr recovers.
SLOPE_TOLERANCE = 0.5
#: Confidence level of the ridge-slope interval.
LEVEL = 0.95
#: The fit's first band: cells whose seed mean is within this fraction of the way from the best
#: cell to chance (widened by BAND_GROWTH until the fit has enough cells and spread).
BAND_FRAC = 0.12
BAND_GROWTH = 1.5
#: A cell whose seed mean is this close to chance (fraction of best -> chance) is censored.
CHANCE_MARGIN = 0.05
#: The local fit needs this many cells (6 coefficients), on at least 3 lrs and 3 wds.
MIN_FIT_CELLS = 9
#: seeds_to_decide is capped here (beyond it, more seeds is not the way to decide).
MAX_SEEDS_TO_DECIDE = 64

VERDICTS = ("separable", "coupled", "inconclusive", "no_wd_effect", "not_enough_data")


def ridge_fit(x, y, means, counts, *, level: float = LEVEL) -> dict | None:
    """Local quadratic f = a + b x + c y + d x^2 + e xy + g y^2 by weighted least squares.

    ``x``, ``y``: the cells' coordinates (log10 lr and log10 wd in any convention: they need not
    form a rectangle); ``means``: the cells' seed means; ``counts``: seeds per cell (the weights,
    Var(mean) ~ 1/count). The residual variance of the cell means estimates seed noise and
    lack of fit together, so the interval widens when the surface is not quadratic near its best.

    The ridge (best y at each x) is y*(x) = -(c + e x) / (2 g), slope -e / (2 g); its interval is
    Fieller's for the ratio e/g with Student t on k - 6 degrees of freedom (exact for normal
    coefficients; unbounded when g is not clearly away from 0, i.e. when wd's curvature is not
    established; a clearly negative g, a maximum in wd, has an interval but no slope, and
    ``decide`` reads neither). Returns None when the design is singular or there are fewer than
    7 cells.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    v, w = np.asarray(means, float), np.asarray(counts, float)
    k = x.size
    if k < 7:
        return None
    x0, y0 = x[np.argmin(v)], y[np.argmin(v)]
    u, t = x - x0, y - y0  # centred at the best cell: the slope does not change, conditioning does
    X = np.column_stack([np.ones(k), u, t, u * u, u * t, t * t])
    sw = np.sqrt(w)
    Xw, vw = X * sw[:, None], v * sw
    if np.linalg.matrix_rank(Xw) < 6:
        return None
    coef, *_ = np.linalg.lstsq(Xw, vw, rcond=None)
    resid = vw - Xw @ coef
    df = k - 6
    s2 = float(resid @ resid) / df
    cov = s2 * np.linalg.inv(Xw.T @ Xw)
    e, g = float(coef[4]), float(coef[5])
    ve, vg, ceg = float(cov[4, 4]), float(cov[5, 5]), float(cov[4, 5])
    tq = float(student_t.ppf(0.5 + level / 2, df))
    slope = -e / (2 * g) if g > 0 else None
    lo, hi, bounded = _fieller(e, g, ve, ceg, vg, tq)
    # delta-method standard error (for the seeds-to-decide projection)
    se = None
    if g > 0:
        grad = np.array([-1 / (2 * g), e / (2 * g * g)])
        var = grad @ np.array([[ve, ceg], [ceg, vg]]) @ grad
        se = math.sqrt(var) if var > 0 else 0.0
    return {"slope": slope, "ci": [lo, hi], "bounded": bounded, "cells": k, "df": df,
            "curvature_wd": g, "curvature_wd_se": math.sqrt(vg), "cross": e, "cov_cross_curvature": [ve, ceg, vg],
            "residual_sd": math.sqrt(s2), "slope_se": se, "t": tq,
            "coef": [float(c) for c in coef], "centre": [float(x0), float(y0)]}


def _fieller(e: float, g: float, ve: float, ceg: float, vg: float, tq: float) -> tuple[float, float, bool]:
    """(lo, hi, bounded): Fieller's interval for the ridge slope -e/(2g), from the cross term e,
    wd's curvature g, their variances ve, vg and covariance ceg, and the t quantile ``tq``.

    The set {r : (e - r g)^2 <= t^2 (ve - 2 r ceg + r^2 vg)} for r = e/g, slope = -r/2; bounded
    when g is clearly away from 0 (|g| > t * se(g)), else (-inf, inf), bounded False. (A clearly
    negative g, a maximum in wd, gives a bounded interval, but no slope: ``ridge_fit``.)
    """
    qa = g * g - tq * tq * vg
    qb = -2 * (e * g - tq * tq * ceg)
    qc = e * e - tq * tq * ve
    if not qa > 0:  # NaN too
        return -math.inf, math.inf, False
    # r = e/g always lies in the set (its left side is 0, the right a variance >= 0), so in exact
    # arithmetic disc >= 0; a negative disc is rounding (a residual-free fit: the interval
    # collapses onto the estimate), not an empty set.
    disc = max(qb * qb - 4 * qa * qc, 0.0)
    r1 = (-qb - math.sqrt(disc)) / (2 * qa)
    r2 = (-qb + math.sqrt(disc)) / (2 * qa)
    return -r2 / 2, -r1 / 2, True


def _decided(slope: float | None, lo: float, hi: float, bounded: bool, tol: float) -> str | None:
    """The decided verdict an interval gives, or None: ``separable`` (bounded, inside +-tol) or
    ``coupled`` (bounded, excludes 0, and |slope| >= tol)."""
    if slope is None or not bounded:
        return None
    if -tol < lo and hi < tol:
        return "separable"
    if (lo > 0 or hi < 0) and abs(slope) >= tol:
        return "coupled"
    return None


def _fit_cells(v_mean: np.ndarray, usable: np.ndarray, x: np.ndarray, y: np.ndarray, c: float):
    """The band of cells near the optimum the ridge is fitted on, and the band's height.

    Starts at BAND_FRAC of the way from the best cell to chance and widens by BAND_GROWTH until
    it holds MIN_FIT_CELLS cells on >= 3 lrs and >= 3 wds (or every usable cell).
    """
    best = float(v_mean[usable].min())
    span = max(c - best, 1e-12)
    frac = BAND_FRAC
    while True:
        band = usable & (v_mean <= best + frac * span)
        ii, jj = np.nonzero(band)
        if (band.sum() >= MIN_FIT_CELLS and np.unique(ii).size >= 3 and np.unique(jj).size >= 3) \
                or band.sum() == usable.sum():
            return band, frac * span
        frac *= BAND_GROWTH


def _local_interaction(per_seed_v: np.ndarray, bi: int, bj: int, present: np.ndarray | None = None) -> dict | None:
    """Two-way ANOVA with replication (seeds) on the 3 x 3 cells around the best one.

    Interaction F = MS_int / MS_within on (2*2, 9*(S-1)) degrees of freedom; the window is moved
    inside the grid at its edges. ``per_seed_v`` is clamped at chance. None with one seed or a
    grid narrower than 3, or when a seed is missing in the window (``present``): the balanced
    design is what the F test needs.
    """
    S, n, m = per_seed_v.shape
    if S < 2 or n < 3 or m < 3:
        return None
    i0, j0 = min(max(bi - 1, 0), n - 3), min(max(bj - 1, 0), m - 3)
    if present is not None and not present[:, i0:i0 + 3, j0:j0 + 3].all():
        return None
    w = per_seed_v[:, i0:i0 + 3, j0:j0 + 3]
    cell = w.mean(axis=0)
    mu = cell.mean()
    r = cell.mean(axis=1, keepdims=True)
    cc = cell.mean(axis=0, keepdims=True)
    ss_lr = S * 3 * float(((r - mu) ** 2).sum())
    ss_wd = S * 3 * float(((cc - mu) ** 2).sum())
    ss_int = S * float(((cell - r - cc + mu) ** 2).sum())
    ss_err = float(((w - cell) ** 2).sum())
    df_int, df_err = 4, 9 * (S - 1)
    total = ss_lr + ss_wd + ss_int
    share = ss_int / total if total > 0 else 0.0
    if ss_err <= 0:
        f, p = (math.inf, 0.0) if ss_int > 0 else (0.0, 1.0)
    else:
        f = (ss_int / df_int) / (ss_err / df_err)
        p = float(f_dist.sf(f, df_int, df_err))
    return {"window": {"lr_index": [i0, i0 + 2], "wd_index": [j0, j0 + 2]}, "share": share,
            "F": f, "p": p, "df": [df_int, df_err]}


def regret_by_start(v: np.ndarray, key: np.ndarray, usable: np.ndarray | None = None) -> list[float | None]:
    """One-at-a-time regret from every start column j0: best lr at wd_j0, then best wd there.

    ``v`` is the clamped seed-mean grid, ``key`` its ordering (diverged last). Element j0 is
    V[i1, j1] - min V, in the metric's units; None for a column with no ``usable`` cell (every
    cell diverged or at chance: the "best lr" there is a tie-break, not a choice).
    """
    best = float(v.min())
    out: list[float | None] = []
    for j0 in range(v.shape[1]):
        if usable is not None and not usable[:, j0].any():
            out.append(None)
            continue
        i1 = int(np.argmin(key[:, j0]))
        j1 = int(np.argmin(key[i1]))
        out.append(float(v[i1, j1] - best))
    return out


def _seeds_needed(fit: dict, S: int, pure_sd: float | None, tol: float) -> int | None:
    """Seeds at which the interval would be narrow enough to decide, if the estimate held.

    Decided means: inside +-tol (needs half-width tol - |s|) or excluding 0 beyond tol (needs
    half-width |s|). The slope's variance is split into seed noise (shrinks as 1/S) and lack of
    fit (does not); None when even infinitely many seeds would not get there.

    Known flaw (``docs/design-notes.md``, "Seeds until decided"): the verdict's interval is
    Fieller's, much wider than this delta-method one where wd's curvature is uncertain, and the
    noise share divides pure_sd^2 by S once too often (the fit's residual variance per unit weight
    is sigma^2 + S * lof^2: measured residual_sd / pure_sd 0.96-1.02 on a quadratic surface).
    ``bench/seed_projection.py`` measures the corrected projection against this one.
    """
    s, se = fit["slope"], fit["slope_se"]
    if s is None or not se or se <= 0:
        return None
    need = tol - abs(s) if abs(s) < tol else abs(s)
    if need <= 0:
        return None
    t = fit["t"]
    rsd = fit["residual_sd"]
    noise_share = 1.0 if pure_sd is None or rsd <= 0 else min(1.0, (pure_sd ** 2 / S) / rsd ** 2)
    var_now = se * se
    var_noise, var_lof = var_now * noise_share, var_now * (1 - noise_share)
    target = (need / t) ** 2
    if var_lof >= target:
        return None
    s_new = S * var_noise / (target - var_lof)
    return int(min(MAX_SEEDS_TO_DECIDE, max(S + 1, math.ceil(s_new))))


def _g(v: float | None, fmt: str = ".3g") -> str:
    return "-" if v is None else format(v, fmt)


def _interval_text(ci) -> str:
    lo, hi = ci
    a = "-inf" if not math.isfinite(lo) else f"{lo:+.2f}"
    b = "+inf" if not math.isfinite(hi) else f"{hi:+.2f}"
    return f"[{a}, {b}]"


def decide(lrs, wds, per_seed_values, *, chance: float | None = None, default_wd: float | None = None,
           present=None, val_size: int | None = None, error_metric: bool | None = None,
           tolerance: float = SLOPE_TOLERANCE) -> dict:
    """Can lr and wd be tuned separately on this grid? A verdict with the numbers that decided it.

    ``per_seed_values``: S x n x m, lower is better, NaN/inf = diverged (the shapes of
    :func:`separability_with_ci`; ``present`` marks finished seeds as there). ``val_size``: the
    validation set's size, to state regret in samples for an error metric (``error_metric``,
    default: when a chance level below 1 is given). Returns

    - ``verdict``: ``separable`` (the ridge slope's 95 % interval lies inside +-``tolerance``),
      ``coupled`` (the interval excludes 0 and |slope| >= tolerance), ``inconclusive`` (neither),
      ``no_wd_effect`` (wd moves the metric near the optimum less than seed noise does),
      ``not_enough_data`` (one seed, missing cells, or too few usable cells near the optimum);
    - ``ridge_slope``, ``ridge_slope_ci`` ([lo, hi]; +-inf = unbounded), ``tolerance``;
    - ``seeds``, ``seeds_to_decide`` (inconclusive only: the projected seeds, else None);
    - ``reason``: one sentence citing the numbers that decided;
    - evidence: ``ridge`` (the local fit), ``interaction`` (seed-level ANOVA on the 3 x 3 cells
      around the best), ``regret`` (one-at-a-time regret from every start column, in the metric,
      in seed SDs and in validation samples), ``wd_effect`` (the noise test of
      :func:`separability_with_ci`), ``censored_cells``.
    """
    per_seed = np.asarray(per_seed_values, dtype=float)
    if per_seed.ndim != 3:
        raise ValueError(f"per_seed_values must be S x n x m, got shape {per_seed.shape}")
    x, y, _ = _axes(lrs, wds, per_seed[0])
    S, n, m = per_seed.shape
    pres = np.ones(per_seed.shape, bool) if present is None else np.asarray(present, bool)
    mean = _seed_mean(per_seed, pres)
    c = _chance(np.where(pres, per_seed, np.nan), chance)
    if error_metric is None:
        error_metric = chance is not None and chance < 1.0
    out: dict = {"verdict": "not_enough_data", "reason": "", "tolerance": tolerance, "level": LEVEL,
                 "ridge_slope": None, "ridge_slope_ci": None, "seeds": S, "seeds_to_decide": None,
                 "ridge": None, "interaction": None, "regret": None, "wd_effect": None,
                 "censored_cells": None, "best": None}

    def finish(verdict: str, reason: str) -> dict:
        out["verdict"], out["reason"] = verdict, reason
        return out

    if np.isnan(mean).any():
        return finish("not_enough_data", f"{int(np.isnan(mean).sum())} of {n * m} cells have no finished "
                      "seed yet, so there is nothing to decide on.")
    if c is None or not np.isfinite(mean).any():
        return finish("not_enough_data", "Every cell diverged: nothing to decide on.")
    key = _order_key(mean)
    v = _clamp(mean, c)
    bi, bj = np.unravel_index(int(np.argmin(key)), key.shape)
    best = float(mean[bi, bj])
    out["best"] = {"lr": float(10 ** x[bi]), "wd": float(10 ** y[bj]), "value": best,
                   "index": [int(bi), int(bj)]}
    if np.ptp(v) <= 1e-12 * max(1.0, abs(best)):
        return finish("not_enough_data", "The metric is the same in every cell: lr and wd make no "
                      "difference on this grid.")
    # censored: a diverged seed, or a mean within CHANCE_MARGIN of the way to chance
    diverged = ~np.isfinite(mean)
    at_chance = np.isfinite(mean) & (mean >= c - CHANCE_MARGIN * (c - best))
    usable = ~diverged & ~at_chance
    out["censored_cells"] = {"diverged": int(diverged.sum()), "chance_level": int(at_chance.sum())}
    # seed noise near the optimum and whether wd moves the metric beyond it
    rows = _near_rows(v)
    noise = _noise(y, per_seed, pres, mean, c, rows) if S >= 2 else {"seeds": S}
    out["wd_effect"] = noise
    clamped_seeds = _clamp(per_seed, c)
    band, height = _fit_cells(np.where(usable, v, np.inf), usable, x, y, c)
    ii, jj = np.nonzero(band)
    sd = noise.get("seed_sd")
    # seed SD over the fitted cells (pure error), the noise unit of regret
    if S >= 2:
        sub = clamped_seeds[:, ii, jj]
        sub_p = pres[:, ii, jj]
        k_ = sub_p.sum(axis=0)
        cm = np.where(sub_p, sub, 0).sum(axis=0) / np.maximum(k_, 1)
        dfp = int((k_ - 1).clip(min=0).sum())
        pure_sd = math.sqrt(float(np.where(sub_p, (sub - cm) ** 2, 0).sum()) / dfp) if dfp else None
    else:
        pure_sd = None
    sd = pure_sd if pure_sd is not None else sd
    regrets = regret_by_start(v, key, usable)
    worst_j = int(np.argmax([-1.0 if r is None else r for r in regrets]))
    worst = float(regrets[worst_j] or 0.0)
    from_default = _regret(y, v, key, default_wd)[0]

    def samples(r: float) -> float | None:
        return r * val_size if (val_size and error_metric) else None

    out["regret"] = {
        "by_start_column": regrets, "max": worst, "seed_sd": sd,
        "max_in_seed_sd": worst / sd if sd else None,
        "by_start_column_in_seed_sd": [None if r is None else r / sd for r in regrets] if sd else None,
        "start_columns_skipped": sum(r is None for r in regrets),
        "max_in_samples": samples(worst), "val_size": val_size if error_metric else None,
        "worst_start_wd": float(10 ** y[worst_j]), "from_default_wd": from_default,
    }
    basin = basin_mask(mean)
    out["top_cells"] = [[int(i), int(j)] for i, j in zip(*np.nonzero(basin))]
    if worst <= 1e-12:
        regret_txt = "one-at-a-time tuning (lr, then wd) finds the grid's best from every start wd"
    else:
        regret_txt = f"one-at-a-time tuning (lr, then wd) loses at most {worst:.3g}"
        if sd:
            smp = samples(worst)
            regret_txt += f" ({worst / sd:.2f} seed SD" + (f", {smp:.1f} of {val_size} validation samples)"
                                                            if smp is not None else ")")
        regret_txt += f", starting from wd = {10 ** y[worst_j]:.3g}"
        regret_txt += (", and nothing from the default wd" if from_default <= 1e-12
                       else f", and {from_default:.3g} from the default wd")
    out["interaction"] = _local_interaction(clamped_seeds, int(bi), int(bj), pres)
    if S < 2:
        return finish("not_enough_data", f"One seed only: no way to tell the ridge from seed noise "
                      f"({regret_txt}). Run two or more seeds.")
    if noise.get("wd_has_effect") is False:
        return finish("no_wd_effect", f"Weight decay moves the metric near the optimum by "
                      f"{noise['wd_range_near_best']:.3g}, less than seed noise alone gives "
                      f"({noise['wd_noise_threshold']:.3g}): there is no wd optimum to move with lr; "
                      f"{regret_txt}.")
    if band.sum() < 7 or np.unique(ii).size < 3 or np.unique(jj).size < 3:
        return finish("not_enough_data", f"Only {int(band.sum())} usable cells near the optimum on "
                      f"{np.unique(ii).size} lrs and {np.unique(jj).size} wds (the rest diverged or are "
                      "at chance): a ridge needs 3 of each. Use a finer grid around the best cell.")
    fit = ridge_fit(x[ii], y[jj], v[ii, jj], pres[:, ii, jj].sum(axis=0))
    if fit is None:
        return finish("not_enough_data", "The cells near the optimum do not determine a quadratic "
                      "surface: use a finer grid around the best cell.")
    fit["band_height"] = height
    fit["_means"], fit["_counts"] = v[ii, jj], pres[:, ii, jj].sum(axis=0)
    fit["lr_index"], fit["wd_index"] = [int(i) for i in ii], [int(j) for j in jj]
    out["ridge"] = fit
    out["ridge_slope"] = fit["slope"]
    out["ridge_slope_ci"] = list(fit["ci"])
    lo, hi = fit["ci"]
    s = fit["slope"]
    where = f"fit on {fit['cells']} cells near the optimum, {S} seeds"
    decided = _decided(s, lo, hi, fit["bounded"], tolerance)
    if decided == "separable":
        return finish("separable", f"The best wd stays put as lr changes: ridge slope {s:+.2f} "
                      f"{_interval_text(fit['ci'])} lies inside +-{tolerance:g} ({where}); {regret_txt}.")
    if decided == "coupled":
        return finish("coupled", f"The best wd moves with lr: ridge slope {s:+.2f} "
                      f"{_interval_text(fit['ci'])} excludes 0 and exceeds +-{tolerance:g} ({where}); "
                      f"still, {regret_txt}.")
    out["seeds_to_decide"] = _seeds_needed(fit, S, pure_sd, tolerance)
    more = (f"about {out['seeds_to_decide']} seeds would decide it" if out["seeds_to_decide"]
            else "more seeds alone would not decide it (a finer grid near the best cell would)")
    if s is None or not fit["bounded"]:
        why = (f"wd's curvature near the optimum is not established (ridge slope interval "
               f"{_interval_text(fit['ci'])})")
    else:
        why = (f"ridge slope {s:+.2f} {_interval_text(fit['ci'])} is neither inside +-{tolerance:g} "
               "nor clear of 0 beyond it")
    return finish("inconclusive", f"Cannot tell yet: {why} ({where}); {more}; {regret_txt}.")


# --------------------------------------------------------------------------- parametrizations
#
# A decoupled decay step is theta <- theta * (1 - c_t) with c_t = lr^p * m(s_t) * lam: the
# conventions differ in the power p of the base lr and in the schedule factor m. Two conventions
# with the same m describe the same trajectories, lam_to = lr^(p_from - p_to) * lam_from, so one
# grid can be read in both; with a constant schedule (s_t = 1) every m is 1 and all of them can.
# ``l2`` (decay through the gradient) has no such rewriting.

#: convention -> (schedule factor, power of the base lr in the per-step decay), for the decoupled
#: conventions of ``service.domain.conventions`` (the paper's: c_t = s_t * lam; torch.optim.AdamW's:
#: c_t = lr * s_t * lam; constant: c_t = lam; corrected: c_t = lr * s_t^2 * lam).
DECAY_CONVENTIONS: dict[str, tuple[str, int]] = {
    c: (f, p) for c in CONVENTIONS
    if (f := SCHEDULE_FACTOR[c]) is not None and (p := LR_POWER[c]) is not None
}
#: Words for each coordinate system in the report.
CONVENTION_WORDS = {"schedule": "the paper's (decay scaled by the schedule only)",
                    "lr": "PyTorch's (decay multiplied by lr)",
                    "constant": "constant decay", "corrected": "corrected decay (lr * schedule^2)",
                    "tau_epochs": "the timescale tau = 1/(lr_eff * lam_lr), in epochs"}


def convertible(convention: str, *, constant_schedule: bool = False) -> list[str]:
    """The other conventions a grid in ``convention`` can be read in (none for ``l2``)."""
    if convention not in DECAY_CONVENTIONS:
        return []
    fam = DECAY_CONVENTIONS[convention][0]
    return [c for c, (f, _) in DECAY_CONVENTIONS.items()
            if c != convention and (constant_schedule or f == fam)]


def convert_wd(lrs, wds, from_convention: str, to_convention: str, *,
               constant_schedule: bool = False) -> np.ndarray:
    """The n x m grid of wd values in ``to_convention`` for the cells (lrs[i], wds[j]).

    lam_to = lr^(p_from - p_to) * lam_from (e.g. lam_schedule = lr * lam_lr). The result is not a
    rectangle on log axes unless the powers agree. ValueError for a pair that cannot be converted.
    """
    if to_convention not in convertible(from_convention, constant_schedule=constant_schedule) \
            and to_convention != from_convention:
        raise ValueError(f"a grid in the {from_convention!r} convention cannot be read in the "
                         f"{to_convention!r} convention")
    lr = np.asarray(lrs, float)[:, None]
    wd = np.asarray(wds, float)[None, :]
    p_from, p_to = DECAY_CONVENTIONS[from_convention][1], DECAY_CONVENTIONS[to_convention][1]
    return wd * lr ** (p_from - p_to)


def timescale_epochs(lrs, wds, convention: str, iters_per_epoch: int | None) -> np.ndarray | None:
    """tau = 1/(lr^p * lam) iterations (the EMA timescale of the weights, at schedule value 1),
    in epochs when ``iters_per_epoch`` is given (else in iterations); None for ``l2``."""
    if convention not in DECAY_CONVENTIONS:
        return None
    p = DECAY_CONVENTIONS[convention][1]
    lr = np.asarray(lrs, float)[:, None]
    wd = np.asarray(wds, float)[None, :]
    tau = 1.0 / (lr ** p * wd)
    return tau / iters_per_epoch if iters_per_epoch else tau


def _axis_verdict(fit: dict | None, tolerance: float) -> str:
    if fit is None or fit["slope"] is None or not fit["bounded"]:
        return "inconclusive"
    lo, hi = fit["ci"]
    if -tolerance < lo and hi < tolerance:
        return "axis_aligned"
    if (lo > 0 or hi < 0) and abs(fit["slope"]) >= tolerance:
        return "tilted"
    return "inconclusive"


def parametrizations(lrs, wds, decision: dict, convention: str, *, iters_per_epoch: int | None = None,
                     constant_schedule: bool = False) -> dict | None:
    """The decision's ridge read in every coordinate system the grid can be written in.

    The same cells near the optimum (``decision["ridge"]``) are refitted with their wd coordinate
    converted (:func:`convert_wd`; the converted points are not a rectangle) and in
    (log lr, log tau) with tau in epochs (:func:`timescale_epochs`). A quadratic stays a quadratic
    under these shears, so each slope is the original plus the shear (an identity the tests check);
    what changes is which system's interval lies inside the tolerance: ``axis_aligned`` (inside
    +-tolerance), ``tilted`` (clear of 0 beyond it) or ``inconclusive``. Also the best cell's tau in
    epochs and its range over the TOP_K best cells (``basin_mask``). None when the decision has no ridge or the
    convention has no rewriting (``l2``).
    """
    fit0 = decision.get("ridge")
    if not fit0 or convention not in DECAY_CONVENTIONS:
        return None
    tol = decision.get("tolerance", SLOPE_TOLERANCE)
    ii, jj = np.array(fit0["lr_index"]), np.array(fit0["wd_index"])
    lr = np.asarray(lrs, float)
    per_seed_means = fit0.get("_means")
    counts = fit0.get("_counts")
    x = np.log10(lr[ii])
    out: list[dict] = []
    systems: list[tuple[str, np.ndarray]] = [(convention, np.log10(np.asarray(wds, float)[jj]))]
    for other in convertible(convention, constant_schedule=constant_schedule):
        systems.append((other, np.log10(convert_wd(lrs, wds, convention, other,
                                                   constant_schedule=constant_schedule)[ii, jj])))
    tau = timescale_epochs(lrs, wds, convention, iters_per_epoch)
    if tau is not None:
        systems.append(("tau_epochs" if iters_per_epoch else "tau_iterations", np.log10(tau[ii, jj])))
    for name, yy in systems:
        fit = ridge_fit(x, yy, per_seed_means, counts)
        out.append({"coordinates": name, "words": CONVENTION_WORDS.get(name, name),
                    "ridge_slope": None if fit is None else fit["slope"],
                    "ridge_slope_ci": None if fit is None else list(fit["ci"]),
                    "reading": _axis_verdict(fit, tol)})
    best = decision.get("best") or {}
    bi, bj = best.get("index", [None, None])
    best_tau = float(tau[bi, bj]) if tau is not None and bi is not None else None
    top = np.array(decision.get("top_cells") or [[bi, bj]])
    tau_top = tau[top[:, 0], top[:, 1]] if tau is not None and bi is not None else None
    aligned = [o["coordinates"] for o in out if o["reading"] == "axis_aligned"]
    return {"systems": out, "axis_aligned_in": aligned,
            "best_tau": best_tau, "tau_unit": "epochs" if iters_per_epoch else "iterations",
            "tau_range_top_cells": None if tau_top is None else [float(tau_top.min()), float(tau_top.max())],
            "iters_per_epoch": iters_per_epoch}
