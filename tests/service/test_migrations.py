"""Alembic is the only way the schema is made: upgrade from empty, no drift, old schemas refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, inspect

from service.db import alembic_config, check_schema_current, head_revision, make_engine, upgrade_to_head
from service.errors import SchemaOutOfDate
from service.models import Base

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"alembic_version", "api_tokens", "atlas_entries", "curve_points", "studies", "trials"}
#: The newest revision (the tests follow it: a new migration needs no edit here).
HEAD = head_revision()


def drift(engine, metadata: MetaData) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)


def test_upgrade_from_empty_makes_the_models_schema(empty_db_url):
    assert upgrade_to_head(empty_db_url) == head_revision() == HEAD
    engine = make_engine(empty_db_url)
    try:
        assert set(inspect(engine).get_table_names()) == TABLES
        assert check_schema_current(engine) == HEAD
        assert drift(engine, Base.metadata) == []
        unique = inspect(engine).get_unique_constraints("trials")
        assert [(u["name"], u["column_names"]) for u in unique] == [
            ("uq_trials_cell", ["study_id", "phase", "optimizer", "lr_index", "wd_index", "seed"])
        ]
        assert upgrade_to_head(empty_db_url) == HEAD  # idempotent
    finally:
        engine.dispose()


def test_the_drift_check_sees_a_model_change(db_url):
    """The no-drift assertion above can fail: a column the migrations lack shows up."""
    metadata = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    metadata.tables["studies"].append_column(Column("tags", Integer, nullable=True))
    engine = make_engine(db_url)
    try:
        diffs = drift(engine, metadata)
    finally:
        engine.dispose()
    assert [(d[0], d[3].name) for d in diffs] == [("add_column", "tags")]


def test_downgrade_to_base_and_up_again(db_url):
    cfg = alembic_config(db_url)
    command.downgrade(cfg, "base")
    engine = make_engine(db_url)
    try:
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        with pytest.raises(SchemaOutOfDate):
            check_schema_current(engine)
        assert upgrade_to_head(db_url) == HEAD
        assert check_schema_current(engine) == HEAD
    finally:
        engine.dispose()


def test_an_empty_database_is_refused_naming_decouple_migrate(empty_db_url):
    engine = make_engine(empty_db_url)
    try:
        with pytest.raises(SchemaOutOfDate) as info:
            check_schema_current(engine)
    finally:
        engine.dispose()
    assert str(info.value) == (
        f"the database schema is empty (never migrated) but this code needs revision {HEAD}: "
        "run `decouple migrate`"
    )


def test_decouple_migrate_works_from_any_directory(tmp_path):
    db = tmp_path / "sub" / "team.db"
    env = {**os.environ, "DECOUPLE_DATABASE_URL": f"sqlite:///{db}"}
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "migrate"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"database is at revision {HEAD}"
    engine = make_engine(f"sqlite:///{db}")
    try:
        assert check_schema_current(engine) == HEAD
    finally:
        engine.dispose()


def test_decouple_migrate_on_an_unreachable_database_says_so_in_one_line(tmp_path):
    env = {**os.environ, "DECOUPLE_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:9/nowhere"}
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "migrate"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("decouple: database unavailable: ") and out.stderr.count("\n") == 1
