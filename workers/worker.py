"""`decouple worker`: claim queued studies from the shared database and run them on Ray.

The loop is deliberately simple; the database does the hard part. A claim is a row lock
(PostgreSQL ``FOR UPDATE SKIP LOCKED``, SQLite an immediate transaction) plus a lease that a
heartbeat renews, so any number of workers can share one queue, and a dead worker's study is
picked up again once its lease expires. When the database is unreachable the worker waits and
retries instead of dying.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

from service.config import Settings, get_settings

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def installed_plugins() -> dict[str, dict[str, str]]:
    """The plugins this worker can run, "task:NAME"/"rule:NAME" -> {"distribution", "version"}.

    Read once at start-up: the registry (``service.domain.plugins``), then every plugin's
    implementation imported (``workers.tasks``, ``workers.plugins.load_rules``). A plugin the
    registry or the import refused is logged and left out, so studies that need it stay queued.
    """
    from service.domain.plugins import registry
    from workers import plugins, tasks  # noqa: F401 - importing workers.tasks registers the tasks

    plugins.load_rules()
    reg = registry()
    for key, why in {**reg.refused, **plugins.REFUSED}.items():
        log.error("plugin refused (%s): %s", key, why)
    return {key: dist.as_dict() for key, dist in reg.plugins().items() if key not in plugins.REFUSED}


def run_worker(
    once: bool = False,
    ray_address: str | None = None,
    *,
    settings: Settings | None = None,
    worker_id: str | None = None,
    poll_seconds: float = 2.0,
    on_study_start=None,
    only: str | None = None,
) -> int:
    """Claim and run studies until the queue is empty (``once``) or forever. Returns an exit code.

    ``only``: claim that one study and no other (with ``once``, run it and return)."""
    from service.db import check_schema_current, make_engine
    from workers import ray_adapter

    settings = settings or get_settings()
    worker_id = worker_id or new_worker_id()
    engine = make_engine(settings.database_url)
    try:
        check_schema_current(engine)
        installed = installed_plugins()
        log.info("worker %s plugins: %s", worker_id,
                 ", ".join(f"{k} ({v['distribution']} {v['version']})" for k, v in installed.items()) or "none")
        ray_adapter.ensure_ray(ray_address or settings.ray_address, settings.state_dir)
        log.info("worker %s ready", worker_id)
        return _loop(engine, worker_id, settings, once=once, poll_seconds=poll_seconds,
                     on_study_start=on_study_start, only=only, installed=installed)
    finally:
        engine.dispose()  # an in-process worker (demo, tests) must not leave its pool open


def _loop(engine, worker_id: str, settings: Settings, *, once: bool, poll_seconds: float, on_study_start,
          only: str | None = None, installed: dict[str, dict[str, str]] | None = None) -> int:
    from service import store
    from service.db import session_scope
    from service.errors import DatabaseUnavailable
    from workers.runner import run_study

    backoff = poll_seconds
    while True:
        try:
            with session_scope(engine) as s:
                study = store.claim_study(s, worker_id, settings.lease_seconds, only=only,
                                           installed=installed)
                study_id = study.id if study is not None else None
            backoff = poll_seconds
        except DatabaseUnavailable as exc:
            log.warning("database unavailable (%s); retrying in %.0f s", exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            continue
        if study_id is None:
            if once:
                return 0
            time.sleep(poll_seconds)
            continue
        if on_study_start is not None:
            on_study_start(study_id)
        try:
            status = run_study(engine, study_id, worker_id, settings)
            log.info("study %s: %s", study_id, status)
            if status == "done":
                store_final_report(engine, study_id)
        except DatabaseUnavailable as exc:
            # The lease will expire and this or another worker resumes the study.
            log.warning("database lost while running study %s: %s", study_id, exc)
            time.sleep(backoff)
        except Exception as exc:  # anything else fails the study, with the reason stored
            log.exception("study %s failed", study_id)
            try:
                with session_scope(engine) as s:
                    store.finish_study(s, study_id, worker_id, "failed", error=f"{type(exc).__name__}: {exc}")
            except Exception:
                log.exception("could not mark study %s failed", study_id)


def store_final_report(engine, study_id: str) -> None:
    """Compute a study that just finished and store its report (and with it its atlas entries,
    ``service.store.cache_report``), so ``GET /atlas`` shows it without anyone opening it first.
    A failure here is logged, not fatal: the report is computed on its first request instead."""
    from service.report import study_report

    try:
        study_report(engine, study_id)
    except Exception:
        log.exception("could not store the report of study %s (it is computed on its first request)", study_id)
