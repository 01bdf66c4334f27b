"""Reports of studies, built off the request path, at most one build at a time, kept in memory.

A running study's report is expensive (1.8 s at 3,000 trials, 10.7 s at 20,000) and, built once
per request on the request thread pool, 60 viewers of one study used to fill that pool and stall
every other request of every user. Here:

* An entry per study holds its report (JSON bytes, the HTML page and the figures once asked
  for) and the :func:`service.store.report_key` it was built from: status, trial counts, the
  study's counter of recorded epochs and a digest of its spec (one query by primary key; no
  curve point is counted, and heartbeats do not change it). The report changes only when that
  key does, i.e. at most once per finished epoch or spec change; and the key itself is looked
  at no more than once per ``min_interval`` seconds per study. So a report is rebuilt at most
  once per finished epoch or once per ``min_interval``, whichever is rarer, however many
  viewers poll it.
* Builds run in a process of their own (a one-process pool, started on the first build), never
  on the request thread pool: a route awaits the build without holding a request thread, and
  the build's numpy and matplotlib work, which holds the GIL for up to a second at a time
  (drawing and encoding the heat maps), cannot stall the server's event loop. Measured with a
  build thread in the server process instead: another user's list request waited 1.3 s. At
  most one refresh per study runs at a time: a request that finds one under way gets the last
  report if there is one, else waits for that same build.
* A done study's report is the one stored in its row (``service.store.compute_report`` returns
  it, or builds and stores it once); the page rendered from it is kept here too, so report.html
  of a finished study is not drawn again per viewer.

The cache is per process and bounded (:data:`MAX_ENTRIES` studies, least recently used first out).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from service import errors, store
from service.db import get_engine, read

Kind = Literal["json", "html"]

#: How often at most the key of a study whose report is cached is looked at (seconds).
MIN_INTERVAL_S = 3.0
#: Studies whose reports are kept at once.
MAX_ENTRIES = 32


def build_report(engine: Engine, study_id: str) -> dict[str, Any]:
    """The report (``service.report.study_report``); a done study's is stored in its row once."""
    from service.report import study_report

    return study_report(engine, study_id)


def encode(report: dict[str, Any]) -> bytes:
    """As Starlette's ``JSONResponse`` writes it."""
    return json.dumps(report, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


@dataclass
class _Entry:
    key: tuple[Any, ...] | None = None
    json: bytes | None = None
    html: str | None = None
    checked_at: float = 0.0
    task: asyncio.Task[None] | None = None
    #: Figures drawn from ``json`` (PNG or SVG bytes) by (optimizer, figure, format), and the
    #: drawings under way; both emptied when ``json`` changes.
    figures: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    drawing: dict[tuple[str, str, str], asyncio.Future[Any]] = field(default_factory=dict)

    def payload(self, kind: Kind) -> bytes | str | None:
        return self.json if kind == "json" else self.html


class ReportCache:
    """See the module's docstring. ``get`` is called from the event loop only."""

    def __init__(self, *, min_interval: float = MIN_INTERVAL_S, max_entries: int = MAX_ENTRIES) -> None:
        self.min_interval, self.max_entries = min_interval, max_entries
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._pool: ProcessPoolExecutor | None = None
        #: Builds and figure drawings started, for tests and logs.
        self.builds = 0
        self.drawings = 0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: a fresh interpreter, not a fork of a server with threads and an event loop.
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def get(self, engine: Engine, study_id: str, kind: Kind, status: str | None = None) -> bytes | str:
        """The study's report as JSON bytes or the HTML page; :class:`NotFound` for no study.

        ``status``, the study's status as the caller just read it: a report built while the
        study had another status is never served as fresh (a study that has just finished gets
        its final report at once, not a few seconds later)."""
        slot = (str(engine.url), study_id)
        # Once this request has waited for a refresh, what that refresh left is the answer: it
        # read the study after the caller did (else a study whose status moved on since, or a
        # min_interval of 0, would have it refresh forever).
        waited = False
        while True:
            entry = self._entries.get(slot)
            if entry is None:
                entry = self._entries[slot] = _Entry()
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            self._entries.move_to_end(slot)
            have = entry.payload(kind)
            same_status = status is None or (entry.key is not None and entry.key[0] == status)
            fresh = same_status and time.monotonic() - entry.checked_at < self.min_interval
            if have is not None and (waited or fresh or (entry.task is not None and same_status)):
                return have  # fresh; or the last one while its refresh runs
            if entry.task is None:
                entry.task = asyncio.ensure_future(self._refresh(engine, slot, entry, kind))
                entry.task.add_done_callback(_retrieve)
            await asyncio.shield(entry.task)  # the error of a failed refresh is raised here too
            waited = True

    async def figure(self, engine: Engine, study_id: str, optimizer: str, name: str, fmt: str,
                     status: str | None = None) -> bytes:
        """One figure of the study's report (``service.report.optimizer_figure``) as PNG or SVG
        bytes, drawn in the build process from the report this cache holds, once per report:
        viewers of one study share each drawing until the report changes."""
        data = await self.get(engine, study_id, "json", status)
        entry = self._entries.get((str(engine.url), study_id))
        want = (optimizer, name, fmt)
        if entry is not None and entry.json is data:
            if want in entry.figures:
                return entry.figures[want]
            if want in entry.drawing:
                return _unpack_figure(await asyncio.shield(entry.drawing[want]))
        loop = asyncio.get_running_loop()
        self.drawings += 1
        future = loop.run_in_executor(self._executor(), figure_in_process, data, optimizer, name, fmt)
        if entry is not None and entry.json is data:
            entry.drawing[want] = future  # type: ignore[assignment]
        try:
            figure = _unpack_figure(await future)
        finally:
            if entry is not None and entry.drawing.get(want) is future:
                del entry.drawing[want]
        if entry is not None and entry.json is data:
            entry.figures[want] = figure
        return figure

    async def _refresh(self, engine: Engine, slot: tuple[str, str], entry: _Entry, kind: Kind) -> None:
        try:
            key = await run_in_threadpool(read, engine, store.report_key, slot[1])
            if key != entry.key or entry.payload(kind) is None:
                old = entry.json if key == entry.key else None
                loop = asyncio.get_running_loop()
                self.builds += 1
                url = engine.url.render_as_string(hide_password=False)
                outcome = await loop.run_in_executor(self._executor(), build_in_process, url, slot[1], old, kind)
                data, html = _unpack(outcome)
                if key != entry.key:
                    entry.html = None
                if data is not entry.json:
                    entry.figures, entry.drawing = {}, {}
                entry.key, entry.json = key, data
                entry.html = html if html is not None else entry.html
            entry.checked_at = time.monotonic()
        except BaseException:
            if entry.key is None and self._entries.get(slot) is entry:
                del self._entries[slot]  # nothing cached: no study, or the database is down
            raise
        finally:
            entry.task = None


def build_in_process(url: str, study_id: str, old: bytes | None, kind: Kind) -> tuple[Any, ...]:
    """In the build process: ("ok", report JSON, page or None), the report being ``old`` when
    only its page is missing; or ("error", exception class name, message): the project's
    exceptions do not all survive pickling, so they travel as their name and text."""
    try:
        engine = get_engine(url)
        if old is not None:
            report, data = json.loads(old), old
        else:
            report = build_report(engine, study_id)
            data = encode(report)
        if kind != "html":
            return "ok", data, None
        from service.report import render_html

        return "ok", data, render_html(report)
    except Exception as exc:  # noqa: BLE001 - every error goes back to the request
        return "error", type(exc).__name__, str(exc)


def figure_in_process(data: bytes, optimizer: str, name: str, fmt: str) -> tuple[Any, ...]:
    """In the build process: ("ok", figure bytes), or ("error", exception class name, message)."""
    try:
        from service.report import optimizer_figure

        return "ok", optimizer_figure(json.loads(data), optimizer, name, fmt)
    except Exception as exc:  # noqa: BLE001 - every error goes back to the request
        return "error", type(exc).__name__, str(exc)


def _unpack_figure(outcome: tuple[Any, ...]) -> bytes:
    if outcome[0] == "ok":
        return outcome[1]
    return _unpack(outcome)[0]  # raises


def _unpack(outcome: tuple[Any, ...]) -> tuple[bytes, str | None]:
    if outcome[0] == "ok":
        return outcome[1], outcome[2]
    _, name, message = outcome
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.DecoupleError) and cls is not errors.InvalidInput:
        raise cls(message)
    raise RuntimeError(f"building the report failed: {name}: {message}")


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a refresh's error as seen: its waiters raise it; nobody may be left to."""
    if not task.cancelled():
        task.exception()
