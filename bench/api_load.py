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
``--quick``: 15 s of load (under two minutes with set-up).
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 s of load instead of 60")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
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
        latencies, errors, wall, server_cpu, client_cpu = asyncio.run(
            drive(base, token, finished, ids, seconds, args.concurrency, warmup=min(3.0, seconds / 5),
                  server_pid=server.pid)
        )
    finally:
        if server is not None:
            server.stop()
        with psycopg.connect(conninfo(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        import shutil

        shutil.rmtree(home, ignore_errors=True)

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
    print(
        f"RESULT report_p99_ms={percentile(latencies['report'], 99):.1f} list_p99_ms={percentile(latencies['list'], 99):.1f} "
        f"requests_per_s={total / wall:.0f} errors={sum(errors.values())} health_p99_ms={percentile(health, 99):.1f} "
        f"server_cpu_ms_per_request={cpu_per_request:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
