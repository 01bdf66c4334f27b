"""Fixtures for the reliability tests: an API with auth required and three token holders.

* ``secure_client``: a ``TestClient`` on ``create_app`` with ``DECOUPLE_AUTH=required`` over the
  parametrized ``db_url`` (SQLite and a fresh PostgreSQL schema, see ``tests/conftest.py``), for
  what the database itself must survive (odd strings, huge numbers, SQL in filters).
* ``lite_client``: the same on SQLite only, for what the app refuses before any query (request
  validation, body limits), where a second backend would only double the time.

Each has tokens for ``alice`` and ``bob`` (plain users) and ``root`` (admin):
``client.tokens[name]`` is the raw token, ``client.as_[name]`` the header dict that sends it.
``max_trials`` is 500, so that a fuzzer posting random grids never makes the database
materialize tens of thousands of rows. Server errors come back as 500 answers, not exceptions.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.config import Settings
from service.db import dispose_engines, get_engine, session_scope
from service.tokens import create_token

#: The trial cap the reliability apps run with (DECOUPLE_MAX_TRIALS).
MAX_TRIALS = 500


def make_tokens(engine) -> dict[str, str]:
    """Tokens for alice and bob, and root (admin), stored in ``engine``'s database."""
    with session_scope(engine) as s:
        tokens = {name: create_token(s, name) for name in ("alice", "bob")}
        tokens["root"] = create_token(s, "root", admin=True)
    return tokens


def _client(settings: Settings, engine) -> Iterator[TestClient]:
    tokens = make_tokens(engine)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.tokens = tokens
        client.as_ = {name: {"Authorization": f"Bearer {t}"} for name, t in tokens.items()}
        yield client


@pytest.fixture
def secure_settings(settings):
    return settings.model_copy(update={"auth": "required", "max_trials": MAX_TRIALS})


@pytest.fixture
def secure_client(secure_settings, engine):
    yield from _client(secure_settings, engine)


@pytest.fixture
def lite_url(request, tmp_path) -> Iterator[str]:
    """A migrated SQLite database (a copy of the session's template)."""
    path = tmp_path / "lite.db"
    shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
    url = f"sqlite:///{path}"
    yield url
    dispose_engines(url)


@pytest.fixture
def lite_client(lite_url, tmp_path):
    settings = Settings(
        database_url=lite_url, auth="required", max_trials=MAX_TRIALS, data_dir=tmp_path / "data"
    )
    yield from _client(settings, get_engine(lite_url))
