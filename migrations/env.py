"""Alembic environment: the URL comes from the one ``Settings`` object (or from the caller).

``service.db.upgrade_to_head`` passes an open connection in ``config.attributes["connection"]``
(so the engine is built by ``service.db.make_engine``, with the same SQLite pragmas as the
application); the plain ``alembic`` command line builds one from ``config.attributes`` or
``service.config.get_settings().database_url``.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from service.models import Base

config = context.config
if config.config_file_name is not None:  # the alembic command line, with alembic.ini
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url")
    if url:
        return url
    from service.config import get_settings

    return get_settings().database_url


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things in place: batch mode rebuilds the table instead.
        render_as_batch=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=_database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return

    from service.db import make_engine

    engine = make_engine(_database_url())
    try:
        with engine.begin() as connection:
            _configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
