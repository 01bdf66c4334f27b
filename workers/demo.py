"""`decouple demo`: the embedded default, end to end.

Migrates the configured database (a SQLite file by default), queues the built-in demo study
(digits, all five optimizers, cosine schedule, default grids, two seeds), runs it with a worker
in this process on a local Ray, shows a progress bar, prints the separability table and writes
the self-contained report page. ``--quick`` is a 4x4 grid, one seed, 8 epochs: a smoke test.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from service.domain.catalog import DEFAULT_GRIDS
from service.domain.rules import OPTIMIZER_NAMES


def demo_spec(quick: bool = False) -> dict[str, Any]:
    """The demo study's spec (``docs/api.md`` format)."""
    if quick:
        optimizers = [
            {"name": name,
             "lr": {**DEFAULT_GRIDS[name]["lr"].as_dict(), "num": 4},
             "wd": {**DEFAULT_GRIDS[name]["wd"].as_dict(), "num": 4}}
            for name in OPTIMIZER_NAMES
        ]
        return {"name": "demo (quick): digits, five optimizers", "task": "digits_mlp", "epochs": 8,
                "batch_size": 64, "schedule": {"name": "cosine"}, "optimizers": optimizers,
                "seeds": [0], "metric": "val_error"}
    return {"name": "demo: digits, five optimizers", "task": "digits_mlp", "epochs": 30,
            "batch_size": 64, "schedule": {"name": "cosine"},
            "optimizers": [{"name": name} for name in OPTIMIZER_NAMES],
            "seeds": [0, 1], "metric": "val_error"}


class ProgressWatcher(threading.Thread):
    """Polls a study's trial counts and shows them as a rich progress bar (trials done / total)."""

    def __init__(self, engine, study_id: str, total: int, label: str = "training") -> None:
        super().__init__(daemon=True)
        self.engine, self.study_id, self.total, self.label = engine, study_id, total, label
        self._stop_event = threading.Event()

    def run(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from service import store
        from service.db import session_scope

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), transient=False) as bar:
            task = bar.add_task(self.label, total=self.total)
            while True:
                stopping = self._stop_event.wait(1.0)
                try:
                    with session_scope(self.engine, read_only=True) as s:
                        study = store.get_study(s, self.study_id)
                        p = store.progress(s, [study])[study.id]
                    bar.update(task, completed=p.trials_done + p.trials_failed, total=p.trials_total)
                except Exception:  # a progress bar never stops the work
                    pass
                if stopping:
                    return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def run_demo(out: str | Path = "demo-report", quick: bool = False) -> int:
    from service import store
    from service.config import get_settings
    from service.db import make_engine, session_scope, upgrade_to_head
    from service.report import format_table, render_html, study_report
    from service.schemas import StudySpec
    from workers import ray_adapter
    from workers.worker import run_worker

    settings = get_settings()
    # Matplotlib (the report's heat maps) would keep its font cache in ~/.cache and ~/.config;
    # the demo writes only to the data directory and DIR.
    os.environ.setdefault("MPLCONFIGDIR", str(settings.data_dir.resolve() / "matplotlib"))
    upgrade_to_head(settings.database_url)
    engine = make_engine(settings.database_url)
    spec = StudySpec.model_validate(demo_spec(quick), context={"max_trials": settings.max_trials})
    with session_scope(engine) as s:
        study = store.create_study(s, spec, owner="local")
        study_id, total = study.id, study.trials_total
    print(f"queued study {study_id}: {total} trials ({settings.database_url})")

    t0 = time.perf_counter()
    watcher = ProgressWatcher(engine, study_id, total)
    watcher.start()
    try:
        run_worker(once=True, settings=settings, only=study_id)  # the demo's study, not the queue
    finally:
        watcher.stop()
        ray_adapter.shutdown()
    elapsed = time.perf_counter() - t0

    report = study_report(engine, study_id)
    print()
    print(format_table(report))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    page = out / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    print(f"\n{total} trials in {elapsed:.0f} s; report: {page.resolve()}")
    return 0 if report.get("status") == "done" else 1
