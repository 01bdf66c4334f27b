"""``bench/study.py --auto``: the demo study with every axis ``"auto"`` (issue 10).

    .venv/bin/python bench/study.py --auto [--quick] [--epochs N] [--seeds N]

Posts the demo spec with every axis auto (keeping each axis's number of points) through the API,
runs a worker to completion (pilot, placement, grid), and prints per optimizer the placed window
and whether its best seed-mean cell ended strictly inside; the last line holds ``pilot_share``
(target <= 0.25), ``pilot_share_trial_epochs`` and ``all_inside``. ``study_spec`` and
``end_to_end`` are ``bench/study.py``'s.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def run_auto(args, study_spec, end_to_end) -> None:
    """The demo study with every axis ``"auto"``: the pilot's share of the training time, and
    whether every optimizer's best (seed-mean) cell ended strictly inside its final grid.

    ``pilot_share`` is measured: the pilot phase's wall-clock span (first start to last finish of
    its trials) over the pilot's plus the grid's; ``pilot_share_trial_epochs`` is the planned
    share in trial-epochs (``workers.autogrid.pilot_share``), independent of the machine.
    """
    from sqlalchemy import select

    from service.db import make_engine, session_scope
    from service.models import Trial

    spec = study_spec(args.quick)
    for opt in spec["optimizers"]:
        for key in ("lr", "wd"):  # keep the demo's number of points (the quick grid's 4)
            opt[key] = {"auto": True, "num": opt[key]["num"]} if key in opt else "auto"
    if args.epochs:
        spec["epochs"] = args.epochs
    if args.seeds:
        spec["seeds"] = list(range(args.seeds))
    spec["name"] = spec.get("name", "demo") + ", auto axes"
    with tempfile.TemporaryDirectory(prefix="decouple-bench-") as tmp:
        e2e_s, study, report = end_to_end(spec, Path(tmp))
        engine = make_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        with session_scope(engine, read_only=True) as s:
            trials = list(s.scalars(select(Trial).where(Trial.study_id == study["id"])))
        engine.dispose()
    spans, epochs = {}, {}
    for phase in ("pilot", "grid"):
        mine = [t for t in trials if t.phase == phase]
        spans[phase] = (max(t.finished_at for t in mine) - min(t.started_at for t in mine)).total_seconds()
    pilot_n = sum(t.phase == "pilot" for t in trials)
    grid_n = len(trials) - pilot_n
    from workers.auto_phase import pilot_epochs_for

    placed = {o["name"]: o for o in study["spec"]["optimizers"]}
    epochs = {n: pilot_epochs_for(study["spec"], o, 36) for n, o in placed.items()}
    pe = sum(36 * e for e in epochs.values())
    share_te = pe / (pe + grid_n * study["spec"]["epochs"])
    inside = {}
    for e in report["optimizers"]:
        bi = e["diagnostics"].get("best_index")
        n, m = len(e["grid"]["lr"]), len(e["grid"]["wd"])
        inside[e["name"]] = bi is not None and 0 < bi[0] < n - 1 and 0 < bi[1] < m - 1
        o = placed[e["name"]]
        print(f"{e['name']:12s} lr [{o['lr']['min']:.3g}, {o['lr']['max']:.3g}] wd "
              f"[{o['wd']['min']:.3g}, {o['wd']['max']:.3g}] best {e['best']} "
              f"{'inside' if inside[e['name']] else 'ON AN EDGE'} (pilot {epochs[e['name']]} epochs)")
    print(f"{pilot_n} pilot + {grid_n} grid trials, {study['spec']['epochs']} epochs, "
          f"{e2e_s:.1f} s end to end; pilot {spans['pilot']:.1f} s, grid {spans['grid']:.1f} s")
    fields = {
        "pilot_share": f"{spans['pilot'] / (spans['pilot'] + spans['grid']):.3f}",
        "pilot_share_trial_epochs": f"{share_te:.3f}",
        "all_inside": str(all(inside.values())).lower(),
        "seconds": f"{e2e_s:.1f}",
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()))
