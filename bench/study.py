"""End-to-end cost of a study: API + database + worker + Ray, against the bare packed trainer.

    .venv/bin/python bench/study.py [--quick] [--auto]

In one process: (1) the demo study's spec is posted to the API (in-process ASGI client over a
fresh SQLite file) and a worker (``run_worker(once=True)``, its local Ray started *inside* the
timing) runs it to completion; (2) the bare baseline trains the same grid with
``workers.packed.train_block`` directly, one block per optimizer (``auto_block_size`` configs
at most), with torch's default thread count or one thread, whichever trains the first block
faster (:func:`bare_threads`). A sampler thread records the peak resident memory of
this process and all its descendants (Ray's own processes included) during (1).

Figures, on the last line:

- ``e2e_over_bare`` = end-to-end seconds / bare seconds (target <= 1.3);
- ``trials_per_second`` = trials / end-to-end seconds;
- ``peak_rss_gib`` = the peak of the summed RSS of the process tree (target <= 3); shared pages
  (torch's libraries in every Ray process) count once per process, so this overstates the
  machine's real use, which ``peak_pss_gib`` (proportional set size) measures.

``--quick`` is the demo's quick grid (4x4 per optimizer, one seed, 8 epochs). ``--auto`` (every
axis ``auto``: a pilot run places the grid) reports the pilot's share and whether every optimum
ended inside instead (``bench/auto_study.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray starts its worker processes at niceness 15; the bare baseline runs at 0 in this process. On
# a machine shared with other work that alone would slow the end-to-end run, so both run at 0.
os.environ.setdefault("RAY_worker_niceness", "0")


# --- memory of a process tree, from /proc -------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (Ray's trial processes are grandchildren, via raylet)."""
    kids, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _kib(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(root: int) -> tuple[int, int]:
    """(summed RSS, summed PSS) of the tree in bytes."""
    rss = pss = 0
    for pid in process_tree(root):
        rss += _kib(f"/proc/{pid}/status", "VmRSS:")
        pss += _kib(f"/proc/{pid}/smaps_rollup", "Pss:")
    return rss * 1024, pss * 1024


class PeakMemory(threading.Thread):
    """Samples the memory of this process tree every ``interval`` seconds; keeps the peaks."""

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_rss = self.peak_pss = 0
        self.processes = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self._stop_event.wait(self.interval):
            rss, pss = tree_memory(me)
            if rss > self.peak_rss:
                self.peak_rss, self.processes = rss, len(process_tree(me))
            self.peak_pss = max(self.peak_pss, pss)

    def stop(self) -> tuple[int, int]:
        self._stop_event.set()
        self.join()
        return self.peak_rss, self.peak_pss


# --- the two runs ---------------------------------------------------------------------------------


def study_spec(quick: bool) -> dict:
    from workers.demo import demo_spec

    return demo_spec(quick=quick)


def _grid(spec: dict) -> tuple[dict, list[tuple[str, list]]]:
    """The spec with every default filled in, and per optimizer its (lr, wd, seed) configs."""
    from service.schemas import StudySpec, axis_values
    from workers.packed import TrialConfig

    full = StudySpec.model_validate(spec, context={"max_trials": None}).stored()
    return full, [
        (o["name"], [TrialConfig(lr, wd, seed) for lr in axis_values(o["lr"])
                     for wd in axis_values(o["wd"]) for seed in full["seeds"]])
        for o in full["optimizers"]
    ]


def _train(full: dict, optimizer: str, configs: list, epochs: int | None = None) -> None:
    from workers.packed import train_block

    train_block(full["task"], optimizer, configs, epochs=epochs or full["epochs"],
                batch_size=full["batch_size"], schedule=full["schedule"],
                wd_normalized=full["wd_normalized"], decay_on=full["decay_on"],
                threads=None)  # the thread count set by the caller (bare_threads probes it)


def bare_threads(spec: dict, epochs: int = 2) -> tuple[int, dict[int, float]]:
    """The torch thread count (its default, or 1) that trains the first block faster.

    Torch's intra-op threads need idle cores: on a shared or small machine its default can be
    several times slower than one thread on these small kernels, and the baseline should be the
    bare trainer at its best, not at its worst.
    """
    import torch

    from workers.packed import auto_block_size

    full, grids = _grid(spec)
    optimizer, configs = grids[0]
    block = configs[: auto_block_size(full["task"])]
    default = torch.get_num_threads()
    timings = {}
    _train(full, optimizer, block[:2], epochs=1)  # load the data set, warm up
    for n in sorted({default, 1}, reverse=True):
        torch.set_num_threads(n)
        t0 = time.perf_counter()
        _train(full, optimizer, block, epochs=epochs)
        timings[n] = time.perf_counter() - t0
    torch.set_num_threads(default)
    return min(timings, key=timings.get), timings


def bare(spec: dict, threads: int) -> tuple[float, int]:
    """Seconds to train every cell x seed of ``spec`` with ``train_block`` directly; and how many."""
    import torch

    from workers.packed import auto_block_size

    full, grids = _grid(spec)
    k = auto_block_size(full["task"])
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    n = 0
    t0 = time.perf_counter()
    for optimizer, configs in grids:
        for i in range(0, len(configs), k):
            _train(full, optimizer, configs[i : i + k])
        n += len(configs)
    elapsed = time.perf_counter() - t0
    torch.set_num_threads(default)
    return elapsed, n


def end_to_end(spec: dict, workdir: Path) -> tuple[float, dict, dict]:
    """Post the spec to the API, run a worker until the queue is empty; (seconds, study, report)."""
    from fastapi.testclient import TestClient

    from service.api import create_app
    from service.config import Settings
    from service.db import upgrade_to_head
    from workers import ray_adapter
    from workers.worker import run_worker

    url = f"sqlite:///{workdir / 'bench.db'}"
    settings = Settings(DECOUPLE_DATABASE_URL=url, DECOUPLE_DATA_DIR=str(workdir / "data"))
    upgrade_to_head(url)
    try:
        with TestClient(create_app(settings)) as client:
            r = client.post("/studies", json=spec)
            r.raise_for_status()
            study_id = r.json()["id"]
            t0 = time.perf_counter()
            run_worker(once=True, settings=settings)
            elapsed = time.perf_counter() - t0
            study = client.get(f"/studies/{study_id}").json()
            report = client.get(f"/studies/{study_id}/report").json()
    finally:
        ray_adapter.shutdown()
    if study["status"] != "done" or study["progress"]["trials_done"] != study["progress"]["trials_total"]:
        raise SystemExit(f"the study did not finish: {study['status']}, {study['progress']}")
    return elapsed, study, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the demo's quick grid (4x4, 1 seed, 8 epochs)")
    ap.add_argument("--auto", action="store_true", help="every axis 'auto' (a pilot run places the grid)")
    ap.add_argument("--epochs", type=int, help="--auto only: train for this many epochs instead")
    ap.add_argument("--seeds", type=int, help="--auto only: this many seeds (0, 1, ...) instead")
    args = ap.parse_args()
    if args.auto:  # bench/auto_study.py
        from auto_study import run_auto

        return run_auto(args, study_spec, end_to_end)

    spec = study_spec(args.quick)
    sampler = PeakMemory()
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="decouple-bench-") as tmp:
        e2e_s, study, _report = end_to_end(spec, Path(tmp))
    peak_rss, peak_pss = sampler.stop()
    threads, probe = bare_threads(spec)
    bare_s, n = bare(spec, threads)
    assert n == study["progress"]["trials_total"], (n, study["progress"])
    print(f"end to end (API + DB + worker + Ray start-up): {n} trials in {e2e_s:.1f} s")
    print("bare probe (first block, 2 epochs): "
          + ", ".join(f"{k} thread(s) {v:.1f} s" for k, v in sorted(probe.items())))
    print(f"bare packed trainer, same grid, this process, {threads} thread(s): {bare_s:.1f} s")
    print(f"peak memory of the worker's process tree ({sampler.processes} processes): "
          f"RSS {peak_rss / 2**30:.2f} GiB, PSS {peak_pss / 2**30:.2f} GiB")
    fields = {
        "e2e_over_bare": f"{e2e_s / bare_s:.2f}",
        "trials_per_second": f"{n / e2e_s:.2f}",
        "peak_rss_gib": f"{peak_rss / 2**30:.2f}",
        "peak_pss_gib": f"{peak_pss / 2**30:.2f}",
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
