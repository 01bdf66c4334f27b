"""Shared fixtures: real databases (SQLite and PostgreSQL), the API in-process, factories.

Database fixtures are parametrized, so a test that asks for ``db_url`` (or anything built on it:
``engine``, ``session``, ``settings``, ``client``) runs once on SQLite and once on PostgreSQL:

* ``empty_db_url``: a database with no tables. SQLite: a file in the test's ``tmp_path``.
  PostgreSQL (``DECOUPLE_TEST_PG_URL``, default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``):
  a fresh *schema* named ``t_<random>``, selected through the URL's ``search_path``, dropped with
  everything in it when the test ends, so parallel runs never see each other's rows.
* ``db_url``: the same, migrated to head with ``service.db.upgrade_to_head``.
* ``engine``: the process-wide engine for ``db_url`` (``service.db.get_engine``); disposed after.
* ``session``: a plain ``Session`` on it; commit what you want others to see, it is closed after.
* ``settings``: a ``Settings`` pointing at ``db_url`` (auth off, data dir in ``tmp_path``);
  ``settings.model_copy(update={...})`` for variants. Nothing reads the process environment's
  database URL; call ``service.config.get_settings.cache_clear()`` after changing env vars.
* ``client``: a ``TestClient`` on ``create_app(settings)`` with its lifespan running.

Factories (also importable: ``from tests.conftest import make_spec``): ``make_spec(**overrides)``
returns a small valid spec dict (digits_mlp, adamw on a 3 x 2 grid, seeds [0, 1]: 12 trials);
``make_study(engine, owner="local", **overrides)`` stores one and returns the ``Study``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import dispose_engines, get_engine, session_scope, upgrade_to_head

#: The example plugin (``docs/plugins.md``), installed into this environment before any test module
#: is imported: the plugin registry is read once per process (``service.domain.plugins.registry``).
EXAMPLE_PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "decouple-plugin-example"
EXAMPLE_DISTRIBUTION = "decouple-plugin-example"


def ensure_example_plugin() -> None:
    """``pip install --no-deps -e examples/decouple-plugin-example`` unless it is installed from there.

    Offline: no dependencies, no build isolation (setuptools comes with the environment).
    """
    import importlib
    import json
    import subprocess
    import sys
    from importlib import metadata

    try:
        url = json.loads(metadata.distribution(EXAMPLE_DISTRIBUTION).read_text("direct_url.json") or "{}").get("url", "")
        if url == EXAMPLE_PLUGIN.as_uri():
            return
    except metadata.PackageNotFoundError:
        pass
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "-e", str(EXAMPLE_PLUGIN)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"installing the example plugin failed:\n{out.stdout}{out.stderr}")
    importlib.invalidate_caches()
    import site

    site.main()  # read the new .pth file, so this process finds the package too


def pytest_configure(config: pytest.Config) -> None:
    ensure_example_plugin()


PG_URL = os.environ.get("DECOUPLE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


# --- factories -----------------------------------------------------------------------------------


def make_spec(**overrides: Any) -> dict[str, Any]:
    """A small valid study spec (12 trials); keyword arguments replace top-level fields."""
    spec: dict[str, Any] = {
        "name": "test study",
        "task": "digits_mlp",
        "epochs": 2,
        "batch_size": 64,
        "schedule": {"name": "cosine"},
        "optimizers": [
            {"name": "adamw", "lr": {"min": 1e-3, "max": 1e-1, "num": 3}, "wd": {"min": 1e-4, "max": 1e-2, "num": 2}}
        ],
        "seeds": [0, 1],
        "metric": "val_error",
    }
    spec.update(overrides)
    return spec


def make_study(engine: Any, owner: str = "local", **overrides: Any):
    """Store a study built from ``make_spec(**overrides)`` (committed) and return it."""
    from service import store
    from service.schemas import StudySpec

    spec = StudySpec.model_validate(make_spec(**overrides), context={"max_trials": None})
    with session_scope(engine) as s:
        return store.create_study(s, spec, owner=owner)


@pytest.fixture(name="make_spec")
def make_spec_fixture():
    return make_spec


@pytest.fixture(name="make_study")
def make_study_fixture(engine):
    """``make_study(owner="local", **overrides)`` on this test's database."""

    def factory(owner: str = "local", **overrides: Any):
        return make_study(engine, owner=owner, **overrides)

    return factory


# --- databases -----------------------------------------------------------------------------------


def _pg_conninfo() -> str:
    url = make_url(PG_URL).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def pg_schema_url(schema: str) -> str:
    """``PG_URL`` with its search_path set to ``schema`` (where Alembic and the app create tables)."""
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def _pg_execute(sql: str) -> None:
    import psycopg

    try:
        with psycopg.connect(_pg_conninfo(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL at {make_url(PG_URL).render_as_string()} is unreachable ({exc}); "
            "run scripts/ensure-test-services or set DECOUPLE_TEST_PG_URL"
        )


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory) -> Path:
    """An SQLite file migrated once per run; each test gets a copy (a copy is ~100x faster)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "decouple.db"
    url = f"sqlite:///{path}"
    upgrade_to_head(url)
    dispose_engines(url)
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def empty_db_url(request, tmp_path) -> Iterator[str]:
    """An empty database on each backend (see the module docstring)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'decouple.db'}"
        yield url
        dispose_engines(url)
        return
    schema = f"t_{uuid.uuid4().hex[:16]}"
    _pg_execute(f'CREATE SCHEMA "{schema}"')
    url = pg_schema_url(schema)
    try:
        yield url
    finally:
        dispose_engines(url)
        _pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def db_url(empty_db_url, request) -> str:
    """A database migrated to head, on each backend."""
    if empty_db_url.startswith("sqlite"):
        template = request.getfixturevalue("_sqlite_template")
        shutil.copyfile(template, make_url(empty_db_url).database)
    else:
        upgrade_to_head(empty_db_url)
    return empty_db_url


@pytest.fixture
def backend(db_url) -> str:
    return make_url(db_url).get_backend_name()


@pytest.fixture
def engine(db_url):
    return get_engine(db_url)


@pytest.fixture
def session(engine) -> Iterator[Session]:
    s = Session(bind=engine, expire_on_commit=False)
    try:
        yield s
    finally:
        s.rollback()
        s.close()


#: DECOUPLE_ALLOWED_HOSTS for in-process apps: Starlette's TestClient sends ``Host: testserver``,
#: which the default for auth off (loopback names only) refuses.
TEST_HOSTS = "testserver,localhost,127.0.0.1"


@pytest.fixture
def settings(db_url, tmp_path) -> Settings:
    return Settings(
        database_url=db_url, auth="off", data_dir=tmp_path / "data", max_trials=20_000,
        lease_seconds=60.0, allowed_hosts=TEST_HOSTS,
    )


@pytest.fixture
def client(settings):
    from fastapi.testclient import TestClient

    from service.api import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray (2 CPUs) per test module: start-up costs seconds, a module's tests reuse it."""
    from workers import ray_adapter

    state = tmp_path_factory.mktemp("ray-state")
    resources = ray_adapter.ensure_ray(None, state, num_cpus=2)
    yield resources
    ray_adapter.shutdown()
