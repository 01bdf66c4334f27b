"""Seeds until decided: the ``seeds_to_decide`` projection against a corrected one.

    .venv/bin/python bench/seed_projection.py [--quick] [--reps N]

``seeds: {auto: true}`` gives an inconclusive optimizer more seeds, half-way towards the
projection ``seeds_to_decide``, and stops it when the projection is null or above ``max``
(``service.domain.seeds.next_step``). ``service.analysis._seeds_needed`` projects with the
slope's delta-method standard error, while the verdict reads Fieller's interval, which is much
wider where wd's curvature is uncertain; and it divides the seed-noise share by S once too often
(the fit weights cells by their seeds, so its residual variance per unit weight is
sigma^2 + S * lof^2: on a quadratic surface residual_sd / pure_sd measured 0.96-1.02 at 2-8
seeds). The candidate here, :func:`fieller_projection`, asks the verdict's own rule of Fieller's
interval with the covariance scaled by share * S / S' + (1 - share), share = pure_sd^2 /
residual_sd^2.

The benchmark plays the rule on synthetic grids (``service.calibration``: 8 x 8, a known ridge
slope s, seed noise a fraction of the basin depth; all ``max`` seeds drawn up front, the rule
reading the first n), with min 2 and max 8, once per projection in one process. A third policy,
all 8 seeds at once, shows what the extra seeds can buy at best.

Per policy: ``decided`` (separable or coupled at the stop), ``wrong`` (separable where |s| >= 0.75
or coupled where s = 0), the mean seeds spent, and ``hit``: of the rounds that projected P seeds
(P <= max), the fraction where the verdict on the first P seeds was decided.

Slopes 0 and +-1 (the decision's two sides), noise 1/50, 1/25, 1/12 and 1/8 of the depth, basins
p = 1, 1.5, 3. Numpy only, a few seconds.

Last line: ``RESULT decided_current=... decided_fieller=... decided_all8=... wrong_current=...
wrong_fieller=... seeds_current=... seeds_fieller=... hit_current=... hit_fieller=... grids=...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service import analysis  # noqa: E402
from service.calibration import CHANCE, LRS, VAL_SIZE, WDS, Case, synthetic  # noqa: E402
from service.domain.seeds import next_step  # noqa: E402

MIN_SEEDS, MAX_SEEDS = 2, 8


def fieller_projection(fit: dict, S: int, pure_sd: float | None, tol: float) -> int | None:
    """The fewest S' > S seeds at which the verdict's own interval would decide, if the fitted
    surface held (None when no S' up to ``MAX_SEEDS_TO_DECIDE`` would)."""
    s = fit["slope"]
    if s is None:
        return None
    ve, ceg, vg = fit["cov_cross_curvature"]
    rsd = fit["residual_sd"]
    share = 1.0 if pure_sd is None or rsd <= 0 else min(1.0, pure_sd ** 2 / rsd ** 2)
    for s_new in range(S + 1, analysis.MAX_SEEDS_TO_DECIDE + 1):
        k = share * S / s_new + (1.0 - share)
        lo, hi, bounded = analysis._fieller(fit["cross"], fit["curvature_wd"], ve * k, ceg * k, vg * k, fit["t"])
        if analysis._decided(s, lo, hi, bounded, tol):
            return s_new
    return None


def play(vals: np.ndarray) -> dict:
    """The auto-seed rule on one grid's seeds: final verdict, seeds used, projections made."""
    have, hits = MIN_SEEDS, []
    while True:
        d = analysis.decide(LRS, WDS, vals[:have], chance=CHANCE, val_size=VAL_SIZE)
        p = d["seeds_to_decide"]
        if p is not None and p <= MAX_SEEDS:
            v = analysis.decide(LRS, WDS, vals[:p], chance=CHANCE, val_size=VAL_SIZE)["verdict"]
            hits.append(v in ("separable", "coupled"))
        n, stop = next_step(d["verdict"], p, have, MAX_SEEDS)
        if stop:
            return {"verdict": d["verdict"], "seeds": have, "hits": hits}
        have = n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=4, help="grids per (slope, noise, basin)")
    ap.add_argument("--quick", action="store_true", help="1 grid per setting")
    args = ap.parse_args()
    reps = 1 if args.quick else args.reps
    rng = np.random.default_rng(0)
    cases = [(s, nf, p) for s in (0.0, 1.0, -1.0) for nf in (0.02, 0.04, 1 / 12, 0.125)
             for p in (1.0, 1.5, 3.0)] * reps
    grids = [(s, synthetic(Case(s, MAX_SEEDS, nf, shapes=(p,)), rng)[0]) for s, nf, p in cases]
    current = analysis._seeds_needed
    rows: dict[str, list[dict]] = {}
    for name, fn in (("current", current), ("fieller", fieller_projection)):
        analysis._seeds_needed = fn
        try:
            rows[name] = [dict(play(v), slope=s) for s, v in grids]
        finally:
            analysis._seeds_needed = current
    all8 = [dict(verdict=analysis.decide(LRS, WDS, v, chance=CHANCE, val_size=VAL_SIZE)["verdict"], seeds=MAX_SEEDS,
                 hits=[], slope=s) for s, v in grids]

    def summary(rs: list[dict]) -> dict:
        decided = [r for r in rs if r["verdict"] in ("separable", "coupled")]
        wrong = [r for r in decided if r["verdict"] == ("coupled" if r["slope"] == 0 else "separable")]
        hits = [h for r in rs for h in r["hits"]]
        return {"decided": len(decided) / len(rs), "wrong": len(wrong) / len(rs),
                "seeds": sum(r["seeds"] for r in rs) / len(rs),
                "hit": sum(hits) / len(hits) if hits else float("nan"), "projections": len(hits)}

    out = {"current": summary(rows["current"]), "fieller": summary(rows["fieller"]), "all8": summary(all8)}
    print(f"{len(grids)} synthetic 8 x 8 grids; auto seeds min {MIN_SEEDS}, max {MAX_SEEDS}")
    print(f"{'policy':34s} {'decided':>8s} {'wrong':>6s} {'seeds':>6s} {'hit':>6s} {'projections':>11s}")
    names = {"current": "delta-method projection (current)", "fieller": "Fieller projection (candidate)",
             "all8": f"all {MAX_SEEDS} seeds at once"}
    for k, o in out.items():
        print(f"{names[k]:34s} {o['decided']:8.3f} {o['wrong']:6.3f} {o['seeds']:6.2f} {o['hit']:6.3f} "
              f"{o['projections']:11d}")
    c, f = out["current"], out["fieller"]
    print(f"RESULT decided_current={c['decided']:.3f} decided_fieller={f['decided']:.3f} "
          f"decided_all8={out['all8']['decided']:.3f} wrong_current={c['wrong']:.3f} wrong_fieller={f['wrong']:.3f} "
          f"seeds_current={c['seeds']:.2f} seeds_fieller={f['seeds']:.2f} hit_current={c['hit']:.3f} "
          f"hit_fieller={f['hit']:.3f} grids={len(grids)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
