"""The API under load: a real ``decouple serve`` over 1,000 studies in PostgreSQL.

    .venv/bin/python bench/api_load.py [--quick] [--seconds S] [--concurrency C]

Set-up (not timed): a fresh schema ``bench_<hex>`` on the PostgreSQL server of
``DECOUPLE_BENCH_PG_URL`` (default: the test server, ``postgresql+psycopg://postgres@127.0.0.1:5432/test``),
migrated, holding 1,000 studies: one finished 640-trial study (five optimizers, 8 x 8 grids,
two seeds, 30-epoch curves: 19,200 curve points; results from the analytic ``synthetic`` task,
inserted directly with the store's functions, as a worker would have written them) and 999 small
queued ones of three owners. ``decouple serve`` runs as a subprocess with auth required; the
schema is dropped at the end, whatever happens.

Load: ``C`` (default 4) concurrent clients on one ``httpx.AsyncClient`` over loopback, for a fixed
time after a short warm-up, each request drawn at random: ``GET /studies/{finished}/report`` 40%,
``GET /studies/{id}`` 25% (any of the 1,000), ``GET /studies`` 25% (a page of 100, newest first),
``POST /studies`` 10% (a new small study). Every answer other than 200/201 counts as an error.
Baseline, measured in the same run against the same server: ``GET /health`` alone (one query),
which is what the framework, the server and loopback cost before any study data is involved.

Prints per kind p50/p99, the CPU time the server process used per request over the measured
window (user + system, from ``/proc``: what a request costs the server, far less noisy on a shared
machine than latencies; the load generator's own, which shares the two cores, beside it) and
``RESULT report_p99_ms=... list_p99_ms=... requests_per_s=...
errors=... health_p99_ms=... server_cpu_ms_per_request=...``. Targets on a 2-core machine: report p99 <= 50 ms, zero errors.
Then the report storm (issue 15): a running 3,000-trial study (1,500 trials done, 10-epoch curves)
is added, 60 clients in a process of their own fetch its ``report.html`` in a loop (at least
10 s and three pages each), and another user's ``GET /studies?limit=5`` is timed meanwhile, one
request every 50 ms; the same request on the quiet server, just before, is the baseline:
``list_p99_under_report_storm_ms=... list_p99_quiet_ms=...`` (target: under 250 ms).
``--quick``: 15 s of load (under two minutes with set-up, the storm aside).

The atlas (issue 20): 1,000 done studies are added, each with its report marked stored and the
five atlas entries of the finished study's real report (``service.store.atlas_summary``), over
the user tasks and three owners: 5,000 entries, 1,000 studies listed per row group. ``GET
/atlas`` is then timed alone, one request at a time (``ATLAS_REQUESTS``), whole and filtered by
an owner; ``atlas_p50_ms=... atlas_p99_ms=... atlas_owner_p99_ms=... atlas_server_cpu_ms=...``
(target: p99 under 200 ms; the server's CPU time per atlas request beside it, which a loaded
shared machine does not inflate). The same request's ``/health`` floor is the baseline above. ``--atlas-only`` skips the
load and the storm.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx  # noqa: E402
import psycopg  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

PG_URL = os.environ.get("DECOUPLE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

FINISHED_SPEC = {
    "name": "finished: five optimizers, 8 x 8, two seeds",
    "task": "synthetic", "epochs": 30, "batch_size": 64, "schedule": {"name": "cosine"},
    "optimizers": [{"name": n} for n in ("sgd", "sgdw", "adam", "adamw", "adamw_torch")],
    "seeds": [0, 1], "metric": "val_error",
}
SMALL_SPEC = {
    "name": "small", "task": "digits_mlp", "epochs": 20, "batch_size": 64, "schedule": {"name": "cosine"},
    "optimizers": [{"name": "adamw", "lr": {"min": 1e-4, "max": 1e-1, "num": 3}, "wd": {"min": 1e-4, "max": 1e-1, "num": 2}}],
    "seeds": [0, 1],
}
MIX = {"report": 0.40, "study": 0.25, "list": 0.25, "post": 0.10}
#: Done studies in the atlas, and sequential ``GET /atlas`` requests timed.
ATLAS_STUDIES = 1000
ATLAS_REQUESTS = 200


def schema_url(schema: str) -> str:
    return make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


def conninfo() -> str:
    return make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)


def seed_database(url: str) -> tuple[str, list[str], str]:
    """Migrate and fill; returns (finished study id, every study id, a token)."""
    from service import store
    from service.db import make_engine, session_scope, upgrade_to_head
    from service.schemas import StudySpec
    from service.tokens import create_token
    from workers.tasks import get_task

    upgrade_to_head(url)
    engine = make_engine(url)
    task = get_task("synthetic")
    try:
        with session_scope(engine) as s:
            token = create_token(s, "bench")
            finished = store.create_study(s, StudySpec.from_stored(FINISHED_SPEC), owner="bench")
        with session_scope(engine) as s:
            assert store.claim_study(s, "bench-worker", 3600).id == finished.id
            trials = store.pending_trials(s, finished.id)
            assert len(trials) == 640, len(trials)
            epochs = FINISHED_SPEC["epochs"]
            points = []
            for t in trials:
                for e in range(epochs):
                    o = task.outcome(t.optimizer, t.lr, t.wd, t.seed, e, epochs)
                    points.append({"trial_id": t.id, "epoch": e, "train_loss": o.train_loss,
                                   "val_loss": o.val_loss, "val_error": o.val_error})
                store.finish_trial(s, t.id, "bench-worker", train_loss=o.train_loss, val_loss=o.val_loss,
                                   val_error=o.val_error, diverged=o.diverged,
                                   diverged_epoch=epochs // 2 - 1 if o.diverged else None)
            store.record_epochs(s, points)
            assert store.finish_study(s, finished.id, "bench-worker", "done")
        ids = [finished.id]
        small = StudySpec.from_stored(SMALL_SPEC)
        for batch in range(10):
            with session_scope(engine) as s:
                for i in range(100 if batch else 99):
                    owner = ("alice", "bob", "carol")[i % 3]
                    ids.append(store.create_study(s, small, owner=owner).id)
        # As autovacuum would within a minute of a bulk load: without statistics the planner
        # guesses a few hundred rows and scans every trial for each page's progress counts.
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
        return finished.id, ids, token
    finally:
        engine.dispose()


def seed_atlas(url: str, finished: str, n: int = ATLAS_STUDIES) -> int:
    """``n`` done studies with a stored report and the finished study's five atlas entries each
    (over the user tasks and three owners); returns how many entries were written."""
    from sqlalchemy import insert, select

    from service import store
    from service.db import make_engine, session_scope
    from service.models import AtlasEntry, Study
    from service.schemas import user_task_names

    engine = make_engine(url)
    try:
        with session_scope(engine) as s:
            report = s.scalar(select(Study.report).where(Study.id == finished))
            assert report is not None, "the finished study's report is computed first"
            summary = store.atlas_summary(report)
            spec = s.scalar(select(Study.spec).where(Study.id == finished))
            tasks = user_task_names()
            now = store.utcnow()
            studies, entries = [], []
            for i in range(n):
                sid = uuid.uuid4().hex
                at = now - timedelta(minutes=i)
                task = tasks[i % len(tasks)]
                studies.append({
                    "id": sid, "name": f"atlas {i}", "spec": {**spec, "task": task},
                    "owner": ("alice", "bob", "carol")[i % 3], "status": "done", "priority": 0,
                    "created_at": at, "started_at": at, "finished_at": at, "updated_at": at, "attempts": 1,
                    "trials_total": 640, "report": {"study_id": sid, "atlas": "bench"}, "report_computed_at": at,
                })
                entries += [{**e, "study_id": sid, "task": task} for e in summary]
            s.execute(insert(Study), studies)
            s.execute(insert(AtlasEntry), entries)
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
        return len(entries)
    finally:
        engine.dispose()


def time_atlas(base: str, token: str, n: int = ATLAS_REQUESTS, **params: str) -> tuple[list[float], int]:
    """``n`` sequential ``GET /atlas`` (ms) and the row count of the last answer."""
    out: list[float] = []
    rows = 0
    with httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(n):
            t0 = time.perf_counter()
            r = http.get("/atlas", params=params)
            r.raise_for_status()
            rows = len(r.json()["data"])  # decoding it is the client's, not timed: measured to the last byte
            out.append((time.perf_counter() - t0) * 1e3)
    return out, rows


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), in the values' unit."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds that process ``pid`` has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(base: str, token: str, finished: str, ids: list[str], seconds: float, concurrency: int,
                warmup: float, seed: int = 0, server_pid: int | None = None
                ) -> tuple[dict[str, list[float]], dict[str, int], float, float, float]:
    """Run the mix for ``seconds`` after ``warmup``; latencies (ms) and errors per kind, the
    measured wall time, and the CPU seconds the server process (NaN without ``server_pid``) and
    this load generator used meanwhile."""
    rng = random.Random(seed)
    kinds, weights = list(MIX), list(MIX.values())
    latencies: dict[str, list[float]] = {k: [] for k in MIX}
    errors: dict[str, int] = {k: 0 for k in MIX}
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30, limits=limits) as client:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds

        async def one_client() -> None:
            while (now := time.perf_counter()) < stop_at:
                kind = rng.choices(kinds, weights)[0]
                t0 = time.perf_counter()
                try:
                    if kind == "report":
                        r = await client.get(f"/studies/{finished}/report")
                    elif kind == "study":
                        r = await client.get(f"/studies/{rng.choice(ids)}")
                    elif kind == "list":
                        r = await client.get("/studies")
                    else:
                        r = await client.post("/studies", json={**SMALL_SPEC, "name": f"load {uuid.uuid4().hex[:8]}"})
                    ok = r.status_code in (200, 201)
                    if ok:
                        r.content  # noqa: B018 - read to the end
                except httpx.HTTPError:
                    ok = False
                elapsed_ms = (time.perf_counter() - t0) * 1e3
                if now >= measure_from:
                    latencies[kind].append(elapsed_ms)
                    errors[kind] += 0 if ok else 1

        cpu_at_start, own_cpu_at_start = math.nan, math.nan

        async def cpu_probe() -> None:
            nonlocal cpu_at_start, own_cpu_at_start
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            own_cpu_at_start = process_cpu_s(os.getpid())
            if server_pid is not None:
                cpu_at_start = process_cpu_s(server_pid)

        await asyncio.gather(cpu_probe(), *(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - measure_from
        server_cpu = process_cpu_s(server_pid) - cpu_at_start if server_pid is not None else math.nan
        own_cpu = process_cpu_s(os.getpid()) - own_cpu_at_start
    return latencies, errors, wall, server_cpu, own_cpu


async def baseline(base: str, seconds: float, concurrency: int) -> list[float]:
    """``GET /health`` only, same client settings: the floor every request pays."""
    out: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        stop_at = time.perf_counter() + seconds

        async def one() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = await client.get("/health")
                if r.status_code == 200:
                    out.append((time.perf_counter() - t0) * 1e3)

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return out


def time_list(base: str, token: str, seconds: float | None = None, until: object = None) -> list[float]:
    """``GET /studies?limit=5`` every 50 ms for ``seconds``, or while ``until()`` is true (ms)."""
    out: list[float] = []
    start = time.monotonic()
    with httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {token}"}) as http:
        while (until() if until is not None else time.monotonic() - start < seconds):  # type: ignore[operator]
            t0 = time.perf_counter()
            r = http.get("/studies", params={"limit": 5})
            if r.status_code == 200:
                out.append((time.perf_counter() - t0) * 1e3)
            time.sleep(0.05)
    return out


def report_storm(url: str, base: str, token: str, home: Path) -> tuple[list[float], list[float], int]:
    """(quiet list latencies, list latencies under the storm, report pages served)."""
    from service.db import make_engine
    from service.tokens import create_token
    from tests.reliability.servers import seed_running_study, start_report_viewers, viewer_statuses

    engine = make_engine(url)
    try:
        sid = seed_running_study(engine, n_done=1500)
        from service.db import session_scope

        with session_scope(engine) as s:
            viewer_token = create_token(s, "alice")
    finally:
        engine.dispose()
    quiet = time_list(base, token, seconds=5.0)
    viewers = start_report_viewers(base, f"/studies/{sid}/report.html", viewer_token, 60, home / "viewers.log")
    try:
        time.sleep(1.0)
        stormy = time_list(base, token, until=viewers.alive)
        viewers.popen.wait(timeout=30)
    finally:
        viewers.stop()
    pages = [x for x in viewer_statuses(viewers.output()) if x == "200"]
    return quiet, stormy, len(pages)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 s of load instead of 60")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--atlas-only", action="store_true", help="time GET /atlas only (no load, no storm)")
    args = parser.parse_args()
    from bench._cpu import cpu_model

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs")
    seconds = args.seconds or (15.0 if args.quick else 60.0)

    from tests.reliability.servers import start_api

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(conninfo(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = schema_url(schema)
    home = Path(tempfile.mkdtemp(prefix="decouple-apiload-"))
    server = None
    try:
        t0 = time.perf_counter()
        finished, ids, token = seed_database(url)
        print(f"seeded 1,000 studies (one finished, 640 trials, 19,200 curve points) in {time.perf_counter() - t0:.1f} s")
        server, base = start_api(url, home / "api.log", auth="required")
        # The finished study's report is computed once, on its first request, and kept in its row.
        t0 = time.perf_counter()
        r = httpx.get(f"{base}/studies/{finished}/report", headers={"Authorization": f"Bearer {token}"}, timeout=120)
        r.raise_for_status()
        print(f"first report request (computes and caches it): {(time.perf_counter() - t0) * 1e3:.0f} ms, "
              f"{len(r.content) / 1e3:.0f} kB")
        health = asyncio.run(baseline(base, min(5.0, seconds / 3), args.concurrency))
        latencies: dict[str, list[float]] = {k: [] for k in MIX}
        errors: dict[str, int] = {k: 0 for k in MIX}
        wall, server_cpu, client_cpu, quiet, stormy, storm_pages = math.nan, math.nan, math.nan, [], [], 0
        if not args.atlas_only:
            latencies, errors, wall, server_cpu, client_cpu = asyncio.run(
                drive(base, token, finished, ids, seconds, args.concurrency, warmup=min(3.0, seconds / 5),
                      server_pid=server.pid)
            )
            quiet, stormy, storm_pages = report_storm(url, base, token, home)
        t0 = time.perf_counter()
        n_entries = seed_atlas(url, finished)
        print(f"atlas: {ATLAS_STUDIES:,} done studies, {n_entries:,} entries added in {time.perf_counter() - t0:.1f} s")
        time_atlas(base, token, 10)  # warm-up: connections, plans
        cpu0 = process_cpu_s(server.pid)
        atlas, atlas_rows = time_atlas(base, token)
        atlas_cpu_ms = (process_cpu_s(server.pid) - cpu0) / len(atlas) * 1e3
        atlas_owner, owner_rows = time_atlas(base, token, owner="alice")
    finally:
        if server is not None:
            server.stop()
        with psycopg.connect(conninfo(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        import shutil

        shutil.rmtree(home, ignore_errors=True)

    print(f"  atlas   n={len(atlas):6d}  p50={percentile(atlas, 50):7.1f} ms  p99={percentile(atlas, 99):7.1f} ms  "
          f"({atlas_rows} rows over {ATLAS_STUDIES + 1:,} done studies; ?owner=alice: {owner_rows} rows, "
          f"p50={percentile(atlas_owner, 50):.1f} ms p99={percentile(atlas_owner, 99):.1f} ms); server CPU "
          f"{atlas_cpu_ms:.1f} ms per atlas request; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    atlas_result = (f"atlas_p50_ms={percentile(atlas, 50):.1f} atlas_p99_ms={percentile(atlas, 99):.1f} "
                    f"atlas_owner_p99_ms={percentile(atlas_owner, 99):.1f} atlas_server_cpu_ms={atlas_cpu_ms:.1f}")
    if args.atlas_only:
        print(f"RESULT {atlas_result} health_p99_ms={percentile(health, 99):.1f}")
        return 0
    total = sum(len(v) for v in latencies.values())
    print(f"{seconds:.0f} s of load, {args.concurrency} concurrent clients, {total} requests")
    for kind in MIX:
        v = latencies[kind]
        print(f"  {kind:7s} n={len(v):6d}  p50={percentile(v, 50):7.1f} ms  p99={percentile(v, 99):7.1f} ms  errors={errors[kind]}")
    print(f"  health  n={len(health):6d}  p50={percentile(health, 50):7.1f} ms  p99={percentile(health, 99):7.1f} ms  (baseline)")
    cpu_per_request = server_cpu / total * 1e3 if total else math.nan
    print(f"  server process CPU (user + system): {server_cpu:.1f} s, {cpu_per_request:.2f} ms per request "
          f"(this load generator: {client_cpu / total * 1e3 if total else math.nan:.2f} ms per request); "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  report storm: {storm_pages} report pages of a running 3,000-trial study to 60 clients; another "
          f"user's list: n={len(stormy)} p50={percentile(stormy, 50):.1f} ms p99={percentile(stormy, 99):.1f} ms "
          f"(quiet: p50={percentile(quiet, 50):.1f} ms p99={percentile(quiet, 99):.1f} ms)")
    print(
        f"RESULT report_p99_ms={percentile(latencies['report'], 99):.1f} list_p99_ms={percentile(latencies['list'], 99):.1f} "
        f"requests_per_s={total / wall:.0f} errors={sum(errors.values())} health_p99_ms={percentile(health, 99):.1f} "
        f"server_cpu_ms_per_request={cpu_per_request:.2f} list_p99_under_report_storm_ms={percentile(stormy, 99):.1f} "
        f"list_p99_quiet_ms={percentile(quiet, 99):.1f} {atlas_result}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
