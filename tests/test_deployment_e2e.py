"""The team deployment, minus the containers: the processes ``docker-compose.yml`` (CPU variant)
describes, started from its own resolved model on loopback, each in its own process group.

1. A fresh PostgreSQL database ``e2e_<hex>`` (dropped at the end, ``WITH (FORCE)``).
2. The ``migrate`` service's command, then the ``api`` service's (``decouple serve``, auth
   required), waited for with ``GET /health`` and then the service's own healthcheck.
3. The ``ray-head`` service's command (``ray start --head --block``, token authentication, no CPUs
   for trials), waited for with its own healthcheck (``ray health-check``).
4. The ``worker`` service: ``docker/worker-entrypoint.sh decouple worker``, which joins the head as
   a Ray node offering 2 CPUs and runs ``decouple worker`` on it, with ``RAY_ADDRESS`` at the head.
5. A new user gets a token (``decouple token create``), is refused without it, submits a small
   version of the demo study with ``decouple submit --wait``, and reads ``decouple status`` and
   ``decouple report --json``: done, not partial, one entry per optimizer with a full grid.
6. The trials ran on the Ray cluster: Ray lists the head (0 CPUs) and the worker's node (2 CPUs),
   every trial was written by that ``decouple worker`` process, and Ray Tune's results for the
   study lie in the worker's data directory, reported from Ray worker processes of that node.

What changes for loopback: ports (free ones instead of 8000/6379/8265), ``0.0.0.0`` -> 127.0.0.1,
the data directory (a temporary one instead of the ``/data`` volume), a short ``--temp-dir`` for
the head (shared with nothing: other Ray clusters may run on this machine), fixed agent ports made
free ones, and a PostgreSQL database instead of the ``postgres`` service. Nothing here runs a bare
``ray stop`` (it would stop every Ray on the machine): each process group is ended on its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.conftest import PG_URL
from tests.reliability.servers import free_port, free_ports
from tests.test_compose import ROOT, VARIANTS, env_of, resolved
from workers.demo import demo_spec

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow, pytest.mark.pg]

VENV_BIN = Path(sys.executable).parent
OPTIMIZERS = ("sgdw", "adamw")
SEEDS = [0, 1]
GRID = 3  # lr and wd values per optimizer: 2 x 3 x 3 x 2 seeds = 36 trials


def small_demo_spec() -> dict[str, Any]:
    """The quick demo study cut down: two optimizers, 3 x 3 grids, two seeds, four epochs."""
    spec = demo_spec(quick=True)
    spec["name"] = "e2e: digits, sgdw vs adamw"
    spec["epochs"] = 4
    spec["seeds"] = SEEDS
    spec["optimizers"] = [
        {**o, "lr": {**o["lr"], "num": GRID}, "wd": {**o["wd"], "num": GRID}}
        for o in spec["optimizers"] if o["name"] in OPTIMIZERS
    ]
    assert [o["name"] for o in spec["optimizers"]] == list(OPTIMIZERS)
    return spec


def tail(path: Path, lines: int = 40) -> str:
    try:
        return f"\n--- {path.name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"\n--- {path.name}: not written ---"


def pg_admin(sql: str) -> None:
    conninfo = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def session_processes(sid: int) -> list[str]:
    """``pid command`` of every process still in session ``sid``."""
    out = subprocess.run(["ps", "-eo", "sid=,stat=,pid=,args="], capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()]
    return [row[2] for row in rows if row[0] == str(sid) and not row[1].startswith("Z")]  # zombies are gone


def stop_all(procs: list[subprocess.Popen], grace: float = 3.0) -> None:
    """SIGTERM each process's group (each leads its own session: Ray's daemons are in it too), then
    SIGKILL whatever of the groups is still there after ``grace`` seconds; all at once, so that
    teardown takes one grace period, not one per process."""

    def signal_groups(sig: int) -> None:
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass

    def running() -> bool:
        return any(p.poll() is None or session_processes(p.pid) for p in procs)

    signal_groups(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    signal_groups(signal.SIGKILL)
    deadline = time.monotonic() + 5  # SIGKILLed processes may take a moment to go
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)


@dataclass
class Deployment:
    api_url: str
    db_url: str
    ray_address: str
    ray_env: dict[str, str]  # what a driver of the cluster needs (the head's address and token)
    cli_env: dict[str, str]  # a laptop's environment: no database, no token
    worker: subprocess.Popen
    data_dir: Path
    logs: Path

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "decouple"), *args], env={**self.cli_env, **(env or {})},
                              cwd=self.logs, capture_output=True, text=True, timeout=timeout)

    def diagnostics(self) -> str:
        return "".join(tail(p) for p in sorted(self.logs.glob("*.log")))


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> dict[str, Any]:
    """The CPU variant's services as the real Compose binary resolves them."""
    return resolved(tmp_path_factory.mktemp("compose"), VARIANTS["cpu"])["services"]


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = f"e2e_{uuid.uuid4().hex[:16]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_until(check, what: str, proc: subprocess.Popen, log: Path, timeout: float = 60, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, f"{what}: the process exited with {proc.returncode}" + tail(log)
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s" + tail(log)
        time.sleep(every)


@pytest.fixture(scope="module")
def deployment(services, database) -> Iterator[Deployment]:
    from ray.util import get_node_ip_address

    # Short: Ray's socket paths under the head's temp dir must stay under 107 bytes.
    home = Path(tempfile.mkdtemp(prefix="dce", dir="/tmp"))
    logs, data_dir = home / "logs", home / "data"
    logs.mkdir()
    base = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    # The `secrets` service's script makes this deployment's secrets, as on the first `up`; the
    # machine's PostgreSQL trusts loopback, so the database password file is not needed here.
    secrets = home / "secrets"
    secrets.mkdir()
    made = subprocess.run([str(ROOT / "docker" / "secrets.sh"), "init"], capture_output=True, text=True, timeout=60,
                          env={**base, "DECOUPLE_SECRETS_DIR": str(secrets)})
    assert made.returncode == 0, made.stderr
    ray_token = (secrets / "ray-auth-token").read_text()
    local = {"DECOUPLE_DATABASE_URL": database, "DECOUPLE_DATA_DIR": str(data_dir),
             "RAY_AUTH_TOKEN_PATH": str(secrets / "ray-auth-token"),
             "DECOUPLE_ADMIN_TOKEN_FILE": str(secrets / "admin-token")}

    def env_for(service: str, **extra: str) -> dict[str, str]:
        env = env_of(services[service])
        assert env["DECOUPLE_AUTH"] == "required" and env["DECOUPLE_DATA_DIR"] == "/data", service
        assert env.pop("POSTGRES_PASSWORD_FILE") == "/run/decouple-secrets/postgres-password"
        return {**base, **env, **{k: v for k, v in local.items() if k in env}, **extra}

    started: list[subprocess.Popen] = []

    def start(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(logs / f"{name}.log", "w") as out:
            proc = subprocess.Popen(argv, env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        started.append(proc)
        return proc

    try:
        # migrate: a one-shot, before anything else touches the database.
        assert services["migrate"]["command"] == ["decouple", "migrate"]
        migrate = subprocess.run(services["migrate"]["command"], env=env_for("migrate"), cwd=home,
                                 capture_output=True, text=True, timeout=120)
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr

        # api and ray-head start side by side, as Compose would start them.
        api_port, gcs_port, dash_port, agent_port = free_ports(4)
        api_cmd = [a.replace("0.0.0.0", "127.0.0.1").replace("8000", str(api_port))
                   for a in services["api"]["command"]]
        assert api_cmd[:2] == ["decouple", "serve"]
        api = start("api", api_cmd, env_for("api"))
        head_cmd = [a.replace("6379", str(gcs_port)).replace("0.0.0.0", "127.0.0.1").replace("8265", str(dash_port))
                    for a in services["ray-head"]["command"]]
        assert head_cmd[:4] == ["ray", "start", "--head", "--block"] and "--num-cpus=0" in head_cmd
        head_cmd += [f"--temp-dir={home / 'ray'}", f"--dashboard-agent-listen-port={agent_port}"]
        head_env = env_for("ray-head")
        assert head_env["RAY_AUTH_MODE"] == "token" and head_env["RAY_USAGE_STATS_ENABLED"] == "0"
        head = start("ray-head", head_cmd, head_env)

        api_url = f"http://127.0.0.1:{api_port}"

        def api_healthy() -> bool:
            try:
                return httpx.get(api_url + "/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(api_healthy, "the API's /health", api, logs / "api.log")
        api_check = [a.replace("8000", str(api_port)) for a in services["api"]["healthcheck"]["test"][1:]]
        assert subprocess.run(api_check, env=base, capture_output=True, timeout=30).returncode == 0

        wait_until(lambda: port_open(gcs_port), "the Ray head's port", head, logs / "ray-head.log")
        health = [a.replace("6379", str(gcs_port)) for a in services["ray-head"]["healthcheck"]["test"][1:]]
        assert health[:2] == ["ray", "health-check"]
        wait_until(lambda: subprocess.run(health, env=head_env, capture_output=True, timeout=60).returncode == 0,
                   "ray health-check", head, logs / "ray-head.log", every=0.5)

        # worker: joins the head as a node, then runs `decouple worker` (a Ray driver) on it.
        ray_address = f"{get_node_ip_address()}:{gcs_port}"
        worker_cmd = services["worker"]["command"]
        assert worker_cmd == ["decouple-worker-entrypoint", "decouple", "worker"]
        worker_env = env_for(
            "worker", RAY_ADDRESS=ray_address, DECOUPLE_GPU_COUNT="0",
            DECOUPLE_RAY_START_ARGS=f"--num-cpus=2 --dashboard-agent-listen-port={free_port()}",
        )
        worker = start("worker", [str(ROOT / "docker" / "worker-entrypoint.sh"), *worker_cmd[1:]], worker_env)

        yield Deployment(
            api_url=api_url, db_url=database, ray_address=ray_address,
            ray_env={**base, "RAY_ADDRESS": ray_address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": ray_token,
                     "RAY_USAGE_STATS_ENABLED": "0"},
            cli_env={**base, "DECOUPLE_API_URL": api_url}, worker=worker, data_dir=data_dir, logs=logs,
        )
    finally:
        stop_all(started)
        left = {p.args[0]: session_processes(p.pid) for p in started}
        shutil.rmtree(home, ignore_errors=True)
    assert not any(left.values()), f"processes left running: {left}"


RAY_NODES = """
import json, ray
ray.init(log_to_driver=False)
print(json.dumps(sorted([n["NodeManagerAddress"], n["Resources"].get("CPU", 0.0)] for n in ray.nodes() if n["Alive"])))
"""


def test_a_new_user_submits_the_demo_study_to_the_team_deployment(deployment: Deployment, tmp_path):
    d = deployment
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump(small_demo_spec(), sort_keys=False))

    # An admin makes the new user's token on the database (compose: `docker compose run --rm api ...`).
    made = d.cli("token", "create", "newuser", env={"DECOUPLE_DATABASE_URL": d.db_url})
    assert made.returncode == 0, made.stderr
    token = made.stdout.splitlines()[0]
    assert re.fullmatch(r"dl_[A-Za-z0-9_-]{43}", token) and made.stderr.startswith("created token for 'newuser'")

    # Without the token the API refuses, and the CLI says why in one line.
    refused = d.cli("submit", str(spec_file))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == (
        "decouple: authentication required: send 'Authorization: Bearer <token>' "
        f"(HTTP 401 from {d.api_url}): set DECOUPLE_TOKEN or --token to a valid token; an admin creates "
        "one with `decouple token create NAME`\n"
    )
    r = httpx.post(d.api_url + "/studies", json=small_demo_spec(), timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"

    with_token = {"DECOUPLE_TOKEN": token}
    total = len(OPTIMIZERS) * GRID * GRID * len(SEEDS)
    started = time.monotonic()
    sub = d.cli("submit", str(spec_file), "--wait", env=with_token, timeout=180)
    assert sub.returncode == 0, sub.stdout + sub.stderr + d.diagnostics()
    waited = time.monotonic() - started
    first = sub.stdout.splitlines()[0]
    m = re.fullmatch(r"study ([0-9a-f]{32}) queued: (\d+) trials", first)
    assert m and int(m.group(2)) == total, sub.stdout
    study_id = m.group(1)
    assert all(name in sub.stdout for name in OPTIMIZERS)  # the separability table
    assert f"{total}/{total}" in sub.stderr  # the progress bar's last state

    nodes = subprocess.Popen([sys.executable, "-c", RAY_NODES], env=d.ray_env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # alongside the CLI calls below
    status = d.cli("status", study_id, env=with_token)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[1:4] == ["status    done", f"progress  {total}/{total} trials done, 0 failed", "owner     newuser"]

    rep = d.cli("report", study_id, "--json", env=with_token)
    assert rep.returncode == 0, rep.stderr
    report = json.loads(rep.stdout)
    assert (report["study_id"], report["status"], report["partial"]) == (study_id, "done", False)
    assert sorted(e["name"] for e in report["optimizers"]) == sorted(OPTIMIZERS)
    assert sorted(report["ranking"]) == sorted(OPTIMIZERS)
    for entry in report["optimizers"]:
        grid = entry["grid"]
        assert len(grid["lr"]) == len(grid["wd"]) == GRID and len(grid["value"]) == GRID
        values = [v for row in grid["value"] for v in row]
        assert len(values) == GRID * GRID and all(v is not None and 0 <= v <= 1 for v in values), entry["name"]
        assert 0 <= entry["separability"] <= 1

    # The trials ran on the Ray cluster, driven by this worker: Ray lists the head (no CPUs) and
    # the worker's node (its 2 CPUs); every trial was written by the `decouple worker` that the
    # entrypoint exec'd (same pid); Tune's results lie in that worker's data directory.
    auth = {"Authorization": f"Bearer {token}"}
    study = httpx.get(f"{d.api_url}/studies/{study_id}", headers=auth, timeout=10).json()
    assert study["claimed_by"].startswith(f"{socket.gethostname()}:{d.worker.pid}:")
    trials = httpx.get(f"{d.api_url}/studies/{study_id}/trials", headers=auth, timeout=10).json()["data"]
    assert len(trials) == total and {t["status"] for t in trials} == {"done"}
    assert {t["worker"] for t in trials} == {study["claimed_by"]}
    out, err = nodes.communicate(timeout=60)
    assert nodes.returncode == 0, err
    ip = d.ray_address.split(":")[0]
    assert json.loads(out.splitlines()[-1]) == [[ip, 0.0], [ip, 2.0]]
    results = d.data_dir / "ray" / "results" / f"study-{study_id}"
    reported = [json.loads(line) for f in results.glob("*/result.json") for line in f.read_text().splitlines()]
    assert reported, f"no Tune results under {results}"
    assert {r["node_ip"] for r in reported} == {ip}
    assert d.worker.pid not in {r["pid"] for r in reported}  # trained in Ray's worker processes
    print(f"submit --wait: {waited:.1f} s for {total} trials")
