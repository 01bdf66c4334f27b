"""Calibration of ``service.analysis.decide`` on synthetic grids with a known ridge slope.

    .venv/bin/python bench/verdicts.py [--quick] [--reps N] [--seed N]

Runs ``service.calibration.battery`` (8 x 8 grids on log axes; basins with a ridge of known slope
s in {0, +-0.25, +-0.75, +-1, +-1.5}, Gaussian to flat-bottomed, capped at chance; 2-5 seeds; seed
noise 1/50-1/10 of the basin depth; some with a diverged high-lr/high-wd corner, a chance-level band
of too much decay, validation-sample rounding) and prints, against the bounds the verdicts must
meet:

- ``p_coupled_s0`` = P(coupled | s = 0) (bound <= 0.05);
- ``p_separable_s_ge_075`` = P(separable | |s| >= 0.75) (bound <= 0.05);
- ``coverage`` = P(the 95 % ridge-slope interval holds s), every grid with a fit (bound >= 0.85);
- ``p_coupled_nuisance_s0``: s = 0 with chance bands and diverged corners (bound <= 0.05);
- ``p_right_3seeds``: 3 seeds, noise <= 1/20 depth, smooth basins: the right decided verdict
  (separable for s = 0, coupled for |s| >= 0.75) (bound >= 0.90); ``p_right_3seeds_flat`` the same
  on flat-bottomed basins (reported, no bound) and ``p_wrong_3seeds_flat`` the opposite verdict
  there (bound <= 0.05);
- ``decide_ms``: milliseconds per ``decide`` call on an 8 x 8 x 3 grid, beside ``baseline_ms``, the
  existing ``separability_with_ci`` (exact bootstrap over seeds) on the same grids in this
  process, and their ratio.

``--quick`` runs the battery once (about 1,100 grids, well under two minutes on a 2-core machine);
the default runs it ``--reps 3`` times with fresh draws.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cpu import cpu_model  # noqa: E402

BOUNDS = {"p_coupled_s0": ("<=", 0.05), "p_separable_s_ge_075": ("<=", 0.05), "coverage": (">=", 0.85),
          "p_coupled_nuisance_s0": ("<=", 0.05), "p_right_3seeds": (">=", 0.90),
          "p_wrong_3seeds_flat": ("<=", 0.05)}


def timing(n: int = 40) -> tuple[float, float]:
    """ms per ``decide`` and per ``separability_with_ci`` on the same 8 x 8 x 3 grids."""
    import numpy as np

    from service.analysis import decide, separability_with_ci
    from service.calibration import CHANCE, LRS, VAL_SIZE, WDS, Case, synthetic

    rng = np.random.default_rng(1)
    grids = [synthetic(Case(0.0, 3, 0.05), rng)[0] for _ in range(n)]
    decide(LRS, WDS, grids[0], chance=CHANCE)  # warm the cached quantiles
    separability_with_ci(LRS, WDS, grids[0], chance=CHANCE)
    t0 = time.perf_counter()
    for g in grids:
        decide(LRS, WDS, g, chance=CHANCE, val_size=VAL_SIZE)
    t1 = time.perf_counter()
    for g in grids:
        separability_with_ci(LRS, WDS, g, chance=CHANCE)
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e3, (t2 - t1) / n * 1e3


def main() -> int:
    from service.calibration import battery

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    reps = 1 if args.quick else args.reps
    print(f"CPU: {cpu_model()}")
    t0 = time.perf_counter()
    rates = battery(reps=reps, rng_seed=args.seed)
    took = time.perf_counter() - t0
    print(f"{rates['grids']} synthetic grids in {took:.1f} s; verdicts on the main set: {rates['verdicts']}")
    ok = True
    for k, (op, b) in BOUNDS.items():
        good = rates[k] <= b if op == "<=" else rates[k] >= b
        ok &= good
        print(f"  {k:24s} {rates[k]:.3f}  (bound {op} {b})  {'ok' if good else 'FAILS'}")
    for k in ("coverage_bounded", "p_separable_s0", "p_coupled_s_ge_075", "p_right_3seeds_flat"):
        print(f"  {k:24s} {rates[k]:.3f}  (reported)")
    d_ms, b_ms = timing()
    keys = ("p_coupled_s0", "p_separable_s_ge_075", "coverage", "coverage_bounded", "p_coupled_nuisance_s0",
            "p_right_3seeds", "p_right_3seeds_flat", "p_wrong_3seeds_flat")
    print("RESULT " + " ".join(f"{k}={rates[k]:.3f}" for k in keys)
          + f" grids={rates['grids']} bounds_met={int(ok)} decide_ms={d_ms:.2f} baseline_ms={b_ms:.2f}"
          f" decide_vs_bootstrap={d_ms / b_ms:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
