"""``workers.blocks``: the database writes of a block, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from sqlalchemy import event

from service import store
from service.db import session_scope
from workers.blocks import record_block_epoch


def test_two_blocks_of_a_study_record_an_epoch_at_once_without_a_deadlock(engine, make_study):
    """Both blocks check ownership, then count their points into the study row. With the row
    share-locked by both checks, both updates waited for each other (PostgreSQL failed one block
    with "deadlock detected", seen in the browser test's worker log). The barrier holds each at
    its update until the other arrives there too, or 3 s: the interleaving that deadlocked."""
    sid = make_study().id
    with session_scope(engine) as s:
        assert store.claim_study(s, "w", 60).id == sid
        t0, t1 = (t.id for t in store.list_trials(s, sid)[:2])
    barrier = threading.Barrier(2, timeout=3)

    def meet(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("UPDATE studies SET") and "epochs_recorded=" in statement:
            met.append(statement)
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass  # the other block waits for this one's lock: go on alone

    results: dict[int, object] = {}
    met: list[str] = []

    def block(tid: int) -> None:
        try:
            results[tid] = record_block_epoch(engine, sid, "w", 0, [point_of(tid)])
        except Exception as e:  # noqa: BLE001 - the test reports it
            results[tid] = e

    event.listen(engine, "before_cursor_execute", meet)
    try:
        threads = [threading.Thread(target=block, args=(tid,)) for tid in (t0, t1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        event.remove(engine, "before_cursor_execute", meet)
    assert results == {t0: True, t1: True} and len(met) == 2
    with engine.connect() as conn:
        assert store.report_key(conn, sid)[5] == 2  # epochs_recorded: both points counted
    assert record_block_epoch(engine, sid, "other worker", 1, [point_of(t0)]) is False  # not its claim


def point_of(tid: int) -> SimpleNamespace:
    return SimpleNamespace(key=tid, train_loss=1.0, val_loss=1.0, val_error=0.5)
