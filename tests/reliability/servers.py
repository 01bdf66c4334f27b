"""Real processes for the reliability tests and ``bench/api_load.py``: a private PostgreSQL
cluster, ``decouple serve`` (uvicorn), ``decouple worker`` and a Ray head, all on loopback.

Every process is started in a session of its own, so that stopping it (SIGTERM, then SIGKILL)
takes its whole process group: uvicorn's or a worker's children, a Ray head's raylet and GCS.
Nothing here touches a process it did not start, and nothing touches the machine's shared
PostgreSQL server: :class:`PrivatePostgres` runs ``initdb``/``pg_ctl`` on a directory of its own,
on a free port, with its socket in that directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` different TCP ports on 127.0.0.1 nobody listens on right now. They are bound all at
    once: ports asked for one at a time can repeat (the kernel hands out a port again once its
    socket is closed), and a Ray head given the same port twice refuses to start (CI saw
    ``metrics_export is trying to use a port number 51305 that is used by other components``)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without the project's settings, plus ``overrides``."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("DECOUPLE_", "RAY_")) and k not in ("PYTHONPATH",)
    }
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    env.update(overrides)
    return env


class Process:
    """A child process in its own session, its output in ``log``."""

    def __init__(self, args: list[str], *, env: dict[str, str], log: Path, cwd: Path | None = None) -> None:
        self.args, self.log = args, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(log, "ab")
        self.popen = subprocess.Popen(
            args, env=env, cwd=cwd or ROOT, stdout=self._out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group (the child and everything it started)."""
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.kill_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group(signal.SIGKILL)  # stragglers in the group, if any
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self._out.close()

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")


# --- the API -------------------------------------------------------------------------------------


def start_api(db_url: str, log: Path, *, auth: str = "required", port: int | None = None, **env: str) -> tuple[Process, str]:
    """``decouple serve`` on a free port of 127.0.0.1; returns (process, base URL) once it answers."""
    port = port or free_port()
    proc = Process(
        [PYTHON, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=clean_env(DECOUPLE_DATABASE_URL=db_url, DECOUPLE_AUTH=auth, DECOUPLE_DATA_DIR=str(log.parent), **env),
        log=log,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.alive(), f"decouple serve exited:\n{proc.output()[-3000:]}"
        try:
            return httpx.get(f"{base}/health", timeout=2).status_code in (200, 503)
        except httpx.TransportError:
            return False

    try:
        wait_for("decouple serve to answer", up, timeout=90)
    except BaseException:
        proc.stop()
        raise
    return proc, base


# --- a private PostgreSQL cluster ----------------------------------------------------------------


def pg_bin() -> Path | None:
    """The directory of PostgreSQL's server programs (initdb, pg_ctl), or None."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    return Path(dirs[-1]) if dirs else None


class PrivatePostgres:
    """A throw-away PostgreSQL cluster under ``root``, listening on 127.0.0.1:``port`` only.

    initdb refuses to run as root; as root the cluster belongs to the ``postgres`` system user
    (its programs are run with ``runuser``). Stop and start at will; :meth:`destroy` stops it
    and removes its files.
    """

    def __init__(self, root: Path) -> None:
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.running = False
        root.mkdir(parents=True, exist_ok=True)
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(root, "postgres")
        self._run(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=5"

    def _run(self, args: list[str]) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off -c max_connections=200"
        )
        self._run(["pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "-t", "60", "start"])
        self.running = True

    def stop(self) -> None:
        """A fast shutdown: every session is disconnected at once, as in a crash of the server."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"])
        self.running = False

    def destroy(self) -> None:
        if self.running:
            try:
                self.stop()
            except RuntimeError:
                self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


def session_processes(sid: int) -> list[str]:
    """``pid command`` of every live process of session ``sid`` (a child started in its own)."""
    out = subprocess.run(["ps", "-eo", "sid=,stat=,pid=,args="], capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 3) for line in out.splitlines()]
    return [f"{r[2]} {r[3][:120]}" for r in rows if len(r) == 4 and r[0] == str(sid) and not r[1].startswith("Z")]


def processes_naming(marker: str) -> list[int]:
    """Pids of the processes whose command line contains ``marker`` (a path unique to a test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


# --- a Ray head ----------------------------------------------------------------------------------


class RayHead:
    """``ray start --head --block`` on 127.0.0.1 with token authentication, in its own session.

    Every port it would otherwise take from a fixed default (client server 10001, dashboard 8265,
    agents) is a free one, and its temp dir is ``temp_dir`` (short: Ray's socket paths must fit
    in 107 bytes), so it shares nothing with other Ray clusters on the machine. :meth:`stop` ends
    its process group; a bare ``ray stop`` is never run (it would stop every Ray here).
    """

    def __init__(self, temp_dir: Path, *, num_cpus: int, log: Path) -> None:
        self.temp_dir = temp_dir
        self.port, *others = free_ports(6)
        self.address = f"127.0.0.1:{self.port}"
        self.token = secrets_token()
        ports = dict(zip(("--dashboard-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                          "--runtime-env-agent-port", "--metrics-export-port"), others, strict=True))
        args = [
            str(Path(PYTHON).with_name("ray")), "start", "--head", "--block", f"--port={self.port}",
            "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--num-gpus=0",
            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
            "--object-store-memory=200000000", *(f"{k}={v}" for k, v in ports.items()),
        ]
        self.proc = Process(args, env=self.env(), log=log, cwd=temp_dir.parent)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a process needs to join this cluster (address and token included)."""
        return clean_env(RAY_ADDRESS=self.address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, **extra)

    def wait_ready(self, timeout: float = 120) -> None:
        def up() -> bool:
            assert self.proc.alive(), f"ray start exited:\n{self.proc.output()[-3000:]}"
            check = subprocess.run(
                [str(Path(PYTHON).with_name("ray")), "health-check", f"--address={self.address}"],
                env=self.env(), capture_output=True, timeout=60,
            )
            return check.returncode == 0

        wait_for("the Ray head", up, timeout=timeout, interval=1.0)

    def stop(self) -> list[str]:
        """End the head's process group, then any process still naming this head's temp dir
        (Ray's own, by construction); returns what was left in the group before that sweep."""
        self.proc.stop(timeout=10)
        left = session_processes(self.proc.pid)
        for pid in processes_naming(str(self.temp_dir)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left


def secrets_token() -> str:
    import secrets

    return secrets.token_hex(32)


# --- a running study and a crowd watching its report ---------------------------------------------


def seed_running_study(engine: Any, n_done: int) -> str:
    """A running study (owner alice) of 3,000 trials (five optimizers, 10 x 10 grids, six seeds), ``n_done``
    of them finished with 10-epoch curves, as a worker would have written them."""
    import math

    from service import store
    from service.db import session_scope
    from service.schemas import StudySpec

    spec = StudySpec.model_validate({
        "name": "big, running", "task": "synthetic", "epochs": 10,
        "optimizers": [{"name": n, "lr": {"min": 1e-4, "max": 1e-1, "num": 10},
                        "wd": {"min": 1e-6, "max": 1e-2, "num": 10}}
                       for n in ("sgd", "sgdw", "adam", "adamw", "adamw_torch")],
        "seeds": [0, 1, 2, 3, 4, 5],
    }, context={"max_trials": None})
    with session_scope(engine) as s:
        sid = store.create_study(s, spec, owner="alice").id
    with session_scope(engine) as s:
        store.claim_study(s, "w", 3600, only=sid)
        trials = store.pending_trials(s, sid)[:n_done]
        points = []
        for t in trials:
            v = 0.1 + (math.log10(t.lr) + 2.5) ** 2 / 10 + (math.log10(t.wd) + 4) ** 2 / 10 + t.seed * 1e-3
            points += [{"trial_id": t.id, "epoch": e, "train_loss": v + 1 / e, "val_loss": v + 1 / e,
                        "val_error": min(1.0, v + 1 / e)} for e in range(1, 11)]
            store.finish_trial(s, t.id, "w", train_loss=v, val_loss=v, val_error=min(1.0, v))
        store.record_epochs(s, points)
    return sid


#: The 60 viewers, in a process of their own: parsing 60 report pages of 0.7 MB each in the
#: measuring process would delay its own clock readings, not the server's answers.
VIEWERS = """
import asyncio, sys, time, httpx
base, path, token, viewers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
statuses = []
async def main():
    started = time.monotonic()
    def over():
        elapsed = time.monotonic() - started
        return (elapsed > 10 and len(statuses) >= 3 * viewers) or elapsed > 120
    limits = httpx.Limits(max_connections=viewers)
    async with httpx.AsyncClient(base_url=base, timeout=180, limits=limits,
                                 headers={"Authorization": "Bearer " + token}) as client:
        async def viewer():
            while not over():
                statuses.append((await client.get(path)).status_code)
        await asyncio.gather(*(viewer() for _ in range(viewers)))
asyncio.run(main())
print("STATUSES", " ".join(map(str, statuses)))
"""




def start_report_viewers(base: str, path: str, token: str, viewers: int, log: Path) -> Process:
    """:data:`VIEWERS` against ``base``: ``viewers`` clients fetching ``path`` in a loop until
    10 s have passed and each has had three answers (at most 120 s)."""
    return Process([PYTHON, "-c", VIEWERS, base, path, token, str(viewers)], env=clean_env(), log=log)


def viewer_statuses(output: str) -> list[str]:
    """The statuses :data:`VIEWERS` printed last."""
    assert "STATUSES" in output, output[-3000:]
    return output.split("STATUSES", 1)[1].split()
