"""``bench/study.py --auto``: the demo study with every axis ``"auto"`` (issue 10).

    .venv/bin/python bench/study.py --auto [--quick] [--epochs N] [--seeds N]

Posts the demo spec with every axis auto (keeping each axis's number of points) through the API,
runs a worker to completion (pilot, placement, grid: one Ray experiment), then runs the *same
grid given by hand* (the placed axes as plain axes, a fresh database and a fresh local Ray) the
same way, and prints per optimizer the placed window and whether its best seed-mean cell ended
strictly inside. The last line holds:

- ``pilot_share``: the pilot's share of the auto run's block-seconds (per block, its trials'
  start to their last finish, summed per phase), i.e. of the time the Ray slots spent training,
  the pilot's and the grid's measured in the same run under the same load (target <= 0.25). A
  Ray process's one-time data loading (~1 s for digits) falls in its first block, a pilot block,
  so this errs against the pilot. The worker
  overlaps the phases (an optimizer's grid starts as soon as its own pilot has placed it), so
  the pilot has no wall-clock span of its own: the span measure this replaced (pilot span over
  pilot + grid spans, with the phases one after the other) read 0.31-0.41;
- ``pilot_extra_wall_share`` = (auto seconds - given seconds) / auto seconds: the share of the
  auto study's end-to-end time (worker start to study done, Ray's start included, as
  ``bench/study.py`` times it) that it took longer than the same grid given by hand. What the
  user waits for, but the two runs follow each other, so on a shared machine a change of load
  between them moves it by more than the pilot costs, and the given grid is cut into blocks by
  ``workers.planning.make_blocks`` (even rounds of equal blocks) while the auto run cuts its grid
  blocks smaller towards the end (``workers.auto_phase.PhasedBlocks``), which can finish its
  slots more evenly: read it as a bound check, not as the pilot's cost;
- ``pilot_share_cpu``: the same pilot blocks (one per optimizer) and grid blocks (64 cells) trained
  again by the bare packed trainer in this process, one thread, in CPU seconds: the pilot's share
  of the training compute, which neither the other load of a shared machine nor Ray's scheduling
  moves (0.198-0.213 here, where ``pilot_share`` read 0.15-0.29 and ``pilot_extra_wall_share``
  -0.05-0.47 in runs under load averages 2-6 on a 2-core machine shared with other work; the
  calmest run, load 1.9-3.7: 0.215 and 0.181, auto 23.1 s, given 18.9 s);
- ``pilot_share_trial_epochs``: the planned share in trial-epochs
  (``service.domain.placement.pilot_share``), independent of the machine;
- ``all_inside``, ``seconds`` (auto run) and ``given_seconds``.

``study_spec`` and ``end_to_end`` are ``bench/study.py``'s.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path


def _block_seconds(trials: list) -> dict[str, float]:
    """Per phase, the summed durations of its blocks: the trials of one block share optimizer,
    phase and start time (``store.mark_trials_running`` stamps them together)."""
    blocks: dict[tuple, list] = {}
    for t in trials:
        key = (t.phase, t.optimizer, t.started_at)
        blocks.setdefault(key, []).append(t.finished_at)
    out = {"pilot": 0.0, "grid": 0.0}
    for (phase, _opt, started), finished in blocks.items():
        out[phase] = out.get(phase, 0.0) + (max(finished) - started).total_seconds()
    return out


def cpu_seconds(spec: dict) -> dict[str, float]:
    """CPU seconds of the pilot's and the placed grid's blocks, trained again in this process by
    the bare packed trainer on one thread (see the module docstring, ``pilot_share_cpu``)."""
    import torch

    from service.schemas import axis_values
    from workers.auto_phase import pilot_epochs_for, pilot_rows
    from workers.packed import TrialConfig, train_block

    def train(opt: str, configs: list, epochs: int) -> float:
        t0 = time.process_time()
        train_block(spec["task"], opt, configs, epochs=epochs, batch_size=spec["batch_size"],
                    schedule=spec["schedule"], wd_normalized=spec["wd_normalized"],
                    decay_on=spec["decay_on"])
        return time.process_time() - t0

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {"pilot": 0.0, "grid": 0.0}
    try:
        for placed in spec["optimizers"]:  # every axis was auto: pilot it as such
            auto = {"name": placed["name"],
                    **{k: {"auto": True, "num": placed[k]["num"]} for k in ("lr", "wd")}}
            rows = pilot_rows(spec, auto)
            out["pilot"] += train(auto["name"], [TrialConfig(r["lr"], r["wd"], r["seed"]) for r in rows],
                                  pilot_epochs_for(spec, placed, len(rows)))
            grid = [TrialConfig(lr, wd, seed) for lr in axis_values(placed["lr"])
                    for wd in axis_values(placed["wd"]) for seed in spec["seeds"]]
            for i in range(0, len(grid), 64):
                out["grid"] += train(placed["name"], grid[i:i + 64], spec["epochs"])
    finally:
        torch.set_num_threads(threads)
    return out


def given_spec(spec: dict, placed: dict) -> dict:
    """``spec`` with every optimizer's axes as the auto run placed them, given by hand."""
    out = copy.deepcopy(spec)
    out["optimizers"] = [
        {**o, **{k: {f: placed[o["name"]][k][f] for f in ("min", "max", "num")} for k in ("lr", "wd")}}
        for o in spec["optimizers"]
    ]
    out["name"] = spec["name"].replace("auto axes", "the placed axes given")
    return out


def run_auto(args, study_spec, end_to_end) -> None:
    """The demo study with every axis ``"auto"``, then the same grid given by hand (see above)."""
    # Imported before either timed run, so that the first (auto) run does not pay alone for
    # loading Ray Tune into this process (~2 s of CPU): both then start Ray the same way.
    import ray.tune  # noqa: F401
    from sqlalchemy import select

    from service.db import make_engine, session_scope
    from service.models import Trial
    from workers.auto_phase import pilot_epochs_for

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
    placed = {o["name"]: o for o in study["spec"]["optimizers"]}
    with tempfile.TemporaryDirectory(prefix="decouple-bench-") as tmp:
        given_s, given_study, _ = end_to_end(given_spec(spec, placed), Path(tmp))
    busy = _block_seconds(trials)
    cpu = cpu_seconds(study["spec"])
    pilot_n = sum(t.phase == "pilot" for t in trials)
    grid_n = len(trials) - pilot_n
    assert grid_n == given_study["progress"]["trials_total"], (grid_n, given_study["progress"])
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
    print(f"{pilot_n} pilot + {grid_n} grid trials, {study['spec']['epochs']} epochs: auto "
          f"{e2e_s:.1f} s end to end, the same grid given {given_s:.1f} s; block-seconds pilot "
          f"{busy['pilot']:.1f}, grid {busy['grid']:.1f}; CPU seconds (bare trainer, one thread) "
          f"pilot {cpu['pilot']:.1f}, grid {cpu['grid']:.1f}")
    fields = {
        "pilot_share": f"{busy['pilot'] / (busy['pilot'] + busy['grid']):.3f}",
        "pilot_extra_wall_share": f"{(e2e_s - given_s) / e2e_s:.3f}",
        "pilot_share_cpu": f"{cpu['pilot'] / (cpu['pilot'] + cpu['grid']):.3f}",
        "pilot_share_trial_epochs": f"{share_te:.3f}",
        "all_inside": str(all(inside.values())).lower(),
        "seconds": f"{e2e_s:.1f}",
        "given_seconds": f"{given_s:.1f}",
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()))
