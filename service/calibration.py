"""Synthetic grids with a known ridge slope, and the calibration battery of ``analysis.decide``.

A grid here is what a study would produce if the metric were known: on log10 axes
x = log10 lr, y = log10 wd, with u = x - x0 and w = (y - y0) - s u,

    f(x, y) = base + height * (1 - exp(-(q / 2) ** p)),   q = (u / a_lr) ** 2 + (w / a_wd) ** 2,

so at every lr the best wd is exactly y0 + s u: the ridge is a line of slope ``s`` whatever the
basin's shape (``p`` = 1 a Gaussian bowl, 1.5 flatter at the bottom and steeper at the walls; in
both the walls saturate, unlike a quadratic). Each seed adds independent normal noise, values are
capped at chance (and optionally rounded to whole validation samples), and optional diverged
corners (NaN) and chance-level bands (too much decay: the top wd columns at chance for every lr)
are laid over it. Numpy only; ``bench/verdicts.py`` and tests/service/test_decide.py use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from service.analysis import decide

#: The battery's grid: 8 x 8, lr 1e-4..1e-1, wd 1e-5..1e-1 (3/7 and 4/7 decade steps).
LRS = np.logspace(-4, -1, 8)
WDS = np.logspace(-5, -1, 8)
CHANCE = 0.9
VAL_SIZE = 360


@dataclass(frozen=True)
class Case:
    """One synthetic grid's truth and nuisance settings."""

    slope: float
    seeds: int
    noise_frac: float  # seed-noise SD as a fraction of the basin depth
    diverged_corner: int = 0  # cells with i + j >= n + m - 1 - k diverge at high lr and wd (k)
    chance_columns: int = 0  # this many top wd columns at chance for every lr
    quantize: bool = False  # round to whole validation samples (1/VAL_SIZE)
    shapes: tuple[float, ...] = (1.0, 1.5, 3.0)  # the basin exponent p is drawn from these


def synthetic(case: Case, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """S x n x m per-seed values for ``case``, and the drawn surface parameters."""
    x, y = np.log10(LRS), np.log10(WDS)
    dx, dy = x[1] - x[0], y[1] - y[0]
    x0 = rng.uniform(x[2] - dx / 2, x[-3] + dx / 2)
    y0 = rng.uniform(y[2] - dy / 2, y[-3] + dy / 2)
    a_lr, a_wd = rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0)
    p = float(rng.choice(case.shapes))
    base = rng.uniform(0.02, 0.1)
    height = (CHANCE - base) * rng.uniform(0.7, 1.5)
    depth = min(height, CHANCE - base)
    u = x[:, None] - x0
    w = (y[None, :] - y0) - case.slope * u
    q = (u / a_lr) ** 2 + (w / a_wd) ** 2
    f = base + height * (1 - np.exp(-((q / 2) ** p)))
    sd = case.noise_frac * depth
    vals = f[None] + rng.normal(0.0, sd, size=(case.seeds, *f.shape))
    vals = np.clip(vals, 0.0, CHANCE)
    if case.quantize:
        vals = np.round(vals * VAL_SIZE) / VAL_SIZE
    n, m = f.shape
    if case.chance_columns:
        vals[:, :, m - case.chance_columns:] = CHANCE
    if case.diverged_corner:
        ii, jj = np.meshgrid(range(n), range(m), indexing="ij")
        vals[:, ii + jj >= n + m - 2 - case.diverged_corner + 1] = np.nan
    return vals, {"x0": x0, "y0": y0, "a_lr": a_lr, "a_wd": a_wd, "p": p, "base": base,
                  "depth": depth, "noise_sd": sd}


def run_cases(cases: Iterable[Case], rng_seed: int = 0) -> list[dict]:
    """``decide`` on one synthetic grid per case: the truth, the verdict and the interval."""
    rng = np.random.default_rng(rng_seed)
    out = []
    for case in cases:
        vals, _ = synthetic(case, rng)
        d = decide(LRS, WDS, vals, chance=CHANCE, val_size=VAL_SIZE)
        ci = d["ridge_slope_ci"]
        out.append({"case": case, "verdict": d["verdict"], "slope": d["ridge_slope"], "ci": ci,
                    "covers": None if ci is None else bool(ci[0] <= case.slope <= ci[1])})
    return out


def battery(reps: int = 1, rng_seed: int = 0) -> dict:
    """The calibration rates of ``decide`` and the grids each is measured on.

    - ``p_coupled_s0``: P(coupled | s = 0), over seeds 2-5, noise 1/50-1/10 of depth, with and
      without nuisance (bound <= 0.05);
    - ``p_separable_s_ge_075``: P(separable | |s| >= 0.75) (bound <= 0.05);
    - ``coverage``: P(interval covers s) over every grid where a ridge was fitted (bound >= 0.85);
      ``coverage_bounded`` the same over bounded intervals only;
    - ``p_coupled_nuisance_s0``: P(coupled | s = 0 with a chance band and a diverged corner)
      (bound <= 0.05);
    - ``p_right_3seeds``: P(separable | s = 0) and P(coupled | |s| >= 0.75) together, 3 seeds,
      noise <= 1/20 of depth, smooth basins (p = 1, 1.5) (bound >= 0.90);
      ``p_right_3seeds_flat`` the same on flat-bottomed basins (p = 3), where a quadratic fits
      worse, the interval widens and more grids stay ``inconclusive`` (no bound; reported), and
      ``p_wrong_3seeds_flat`` the opposite verdict there (bound <= 0.05).
    """
    slopes = (0.0, 0.25, -0.25, 0.75, -0.75, 1.0, -1.0, 1.5, -1.5)
    grid = [Case(s, S, nf, dc, cc, qz)
            for s in slopes for S in (2, 3, 4, 5) for nf in (0.02, 0.05, 0.1)
            for dc, cc in ((0, 0), (2, 0), (0, 1)) for qz in (False, True)] * reps
    main = run_cases(grid, rng_seed)
    nuisance = run_cases([Case(0.0, S, nf, dc, cc, qz) for S in (2, 3, 4, 5) for nf in (0.02, 0.05, 0.1)
                          for dc in (2, 4) for cc in (1, 2) for qz in (False, True)] * reps, rng_seed + 1)
    power_cases = [Case(s, 3, nf, dc, cc, qz) for s in (0.0, 0.0, 0.0, 0.75, -0.75, 1.0, -1.0, 1.5, -1.5)
                   for nf in (0.02, 0.05) for dc, cc in ((0, 0), (2, 0), (0, 1)) for qz in (False, True)]
    power = run_cases([Case(c.slope, c.seeds, c.noise_frac, c.diverged_corner, c.chance_columns,
                            c.quantize, (1.0, 1.5)) for c in power_cases] * (2 * reps), rng_seed + 2)
    flat = run_cases([Case(c.slope, c.seeds, c.noise_frac, c.diverged_corner, c.chance_columns,
                           c.quantize, (3.0,)) for c in power_cases] * reps, rng_seed + 3)

    def rate(rows: list[dict], hit) -> float:
        return sum(1 for r in rows if hit(r)) / max(1, len(rows))

    s0 = [r for r in main if r["case"].slope == 0]
    big = [r for r in main if abs(r["case"].slope) >= 0.75]
    fitted = [r for r in main if r["ci"] is not None]
    bounded = [r for r in fitted if np.isfinite(r["ci"][0]) and np.isfinite(r["ci"][1])]

    def right(r: dict) -> bool:
        return r["verdict"] == ("separable" if r["case"].slope == 0 else "coupled")

    verdicts: dict[str, int] = {}
    for r in main:
        verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
    return {
        "p_coupled_s0": rate(s0, lambda r: r["verdict"] == "coupled"),
        "p_separable_s_ge_075": rate(big, lambda r: r["verdict"] == "separable"),
        "coverage": rate(fitted, lambda r: r["covers"]),
        "coverage_bounded": rate(bounded, lambda r: r["covers"]),
        "p_coupled_nuisance_s0": rate(nuisance, lambda r: r["verdict"] == "coupled"),
        "p_right_3seeds": rate(power, right),
        "p_right_3seeds_flat": rate(flat, right),
        "p_wrong_3seeds_flat": rate(flat, lambda r: r["verdict"] == ("coupled" if r["case"].slope == 0
                                                                     else "separable")),
        "p_separable_s0": rate(s0, lambda r: r["verdict"] == "separable"),
        "p_coupled_s_ge_075": rate(big, lambda r: r["verdict"] == "coupled"),
        "grids": len(main) + len(nuisance) + len(power) + len(flat),
        "verdicts": verdicts,
    }
