"""Engines, sessions and the schema version: the one door to the study database.

* :func:`make_engine` tunes each backend for a team-shared queue. SQLite (the single-machine
  default) gets WAL (readers never block the writer), a busy timeout (writers queue instead of
  failing), foreign keys (``ON DELETE CASCADE`` needs them) and ``BEGIN IMMEDIATE`` transactions,
  so a read-then-write such as claiming a study takes the write lock up front and two workers can
  never both see the same study as free. PostgreSQL gets a sized, recycled pool whose
  connections are checked for life as they leave it (without a round trip, see
  :func:`idle_connection_open`), so an idle or restarted server does not break the API.
* :func:`session_scope` commits or rolls back and turns driver errors into the project's own
  (:class:`~service.errors.DatabaseUnavailable`, :class:`~service.errors.SchemaOutOfDate`,
  :class:`~service.errors.Conflict`), as Optuna's RDB storage does.
* :func:`read` runs a few reads on a plain connection (the API's per-request path): no ORM, no
  transaction round trips on PostgreSQL, once more on a fresh connection if the server had just
  ended the pooled one.
* :func:`upgrade_to_head` is ``decouple migrate``; :func:`check_schema_current` is how the API
  and the workers refuse to run on a schema that is behind.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from service.errors import Conflict, DatabaseUnavailable, DecoupleError, InvalidInput, SchemaOutOfDate

T = TypeVar("T")

#: How long an SQLite writer waits for the lock before giving up (seconds).
SQLITE_BUSY_TIMEOUT_S = 30.0
#: PostgreSQL: connections kept per process, and how far the pool may grow under load.
PG_POOL_SIZE, PG_MAX_OVERFLOW = 5, 10
#: Recycle PostgreSQL connections older than this (s): servers and proxies drop idle ones.
PG_POOL_RECYCLE_S = 1800
#: Give up connecting after this long (s), so /health answers 503 instead of hanging.
CONNECT_TIMEOUT_S = 5


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A new engine for ``url``, tuned for its backend (see the module docstring)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        in_memory = u.database in (None, "", ":memory:")
        if not in_memory:
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
        engine = create_engine(u, connect_args=connect_args, **kwargs)
        _install_sqlite_hooks(engine, wal=not in_memory)
        return engine
    # psycopg 3 connections are checked for life on checkout without a round trip (below);
    # any other driver gets SQLAlchemy's pre-ping, a round trip per checkout.
    # (Not on Windows, whose select module has no poll.)
    checked_locally = (u.get_backend_name() == "postgresql" and u.get_driver_name() == "psycopg"
                       and hasattr(select, "poll"))
    options: dict[str, Any] = {
        "pool_pre_ping": not checked_locally,
        "pool_size": PG_POOL_SIZE,
        "max_overflow": PG_MAX_OVERFLOW,
        "pool_recycle": PG_POOL_RECYCLE_S,
        "pool_timeout": 30,
    }
    if u.get_backend_name() == "postgresql":
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    options.update(kwargs)
    engine = create_engine(u, **options)
    if checked_locally and not engine.pool._pre_ping:
        event.listen(engine, "checkout", _refuse_closed_connection)
    return engine


def idle_connection_open(dbapi_connection: Any) -> bool:
    """Whether an idle psycopg connection is still open, told without a round trip.

    On an idle connection PostgreSQL sends nothing unless it is ending it (``idle_session_timeout``,
    ``pg_terminate_backend``, a shutdown or restart: an error message, then end of file), and a
    proxy that drops it closes the socket: so anything to read, or a hang-up, means it is gone.
    What it costs is one ``poll`` with a zero timeout, where SQLAlchemy's pre-ping is a query to
    the server and back on every checkout: under load, a wake-up of the server process and of
    this thread per request. (A server that vanishes without closing the socket hangs a pre-ping
    just the same; ``pool_recycle`` retires such connections.) The rare harmless message on an
    idle connection (a ParameterStatus after a configuration reload) costs one reconnect.
    """
    if dbapi_connection.closed or dbapi_connection.broken:
        return False
    try:
        fd = dbapi_connection.pgconn.socket
    except Exception:  # psycopg.OperationalError: no socket any more
        return False
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return not poller.poll(0)


def _refuse_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    # DisconnectionError on checkout: the pool discards this connection and hands out a new one.
    if not idle_connection_open(dbapi_connection):
        raise exc.DisconnectionError("the server closed this pooled connection")


def _install_sqlite_hooks(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module (which would skip it before SELECTs) and
        # issue it ourselves below, as SQLAlchemy's SQLite documentation describes.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        if wal:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE unless a read-only scope asked for DEFERRED (readers never wait under WAL).
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: the settings' database URL), made once."""
    if url is None:
        from service.config import get_settings

        url = get_settings().database_url
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def dispose_engines(url: str | None = None) -> None:
    """Close the pooled connections of cached engines (all, or the one for ``url``) and forget them."""
    with _engines_lock:
        urls = [url] if url is not None else list(_engines)
        for u in urls:
            engine = _engines.pop(u, None)
            if engine is not None:
                engine.dispose()


def translate_db_error(error: exc.SQLAlchemyError) -> DecoupleError | None:
    """The project's exception for a driver error, or None when it is a programming error.

    Missing tables -> SchemaOutOfDate; a value out of range -> InvalidInput; a unique or foreign
    key violation -> Conflict; a lost or refused connection, a lock waited out -> DatabaseUnavailable.
    """
    orig = getattr(error, "orig", None)
    lines = str(orig if orig is not None else error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    orig_name = type(orig).__name__
    if orig_name in ("UndefinedTable", "UndefinedColumn") or text.startswith(
        ("no such table", "no such column")
    ):
        return SchemaOutOfDate(f"the database schema is missing parts ({text}): run `decouple migrate`")
    if isinstance(error, exc.DataError):  # a value the column cannot hold (range, NUL byte)
        return InvalidInput("request", f"a value the database cannot store ({text})")
    if isinstance(error, exc.IntegrityError):
        return Conflict(f"conflicts with data already stored ({text})")
    if isinstance(
        error, exc.OperationalError | exc.InterfaceError | exc.DisconnectionError | exc.TimeoutError
    ):
        return DatabaseUnavailable(f"database unavailable: {text}")
    return None


@contextmanager
def session_scope(engine: Engine | None = None, *, read_only: bool = False) -> Iterator[Session]:
    """A session that commits when the block ends, rolls back on error, and always closes.

    Driver errors leave as :class:`DatabaseUnavailable`, :class:`SchemaOutOfDate` or
    :class:`Conflict` (the original chained). ``read_only`` lets SQLite readers start a plain
    (deferred) transaction instead of taking the write lock.
    """
    engine = engine if engine is not None else get_engine()
    if read_only and is_sqlite(engine):
        engine = engine.execution_options(sqlite_begin="DEFERRED")
    session = Session(bind=engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except exc.SQLAlchemyError as error:
        _rollback_quietly(session)
        mapped = translate_db_error(error)
        if mapped is None:
            raise
        raise mapped from error
    except BaseException:
        _rollback_quietly(session)
        raise
    finally:
        session.close()


def read(engine: Engine | None, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``work(connection, *args, **kwargs)`` on a pooled connection, for a few reads without
    the ORM; driver errors translated as in :func:`session_scope`. The API's per-request path: the
    token lookup, a study, a page of studies, a cached report.

    On PostgreSQL the statements run in autocommit mode: each one sees what was committed before
    it began, exactly as in a ``READ COMMITTED`` transaction, without the ``BEGIN`` and ``COMMIT``
    round trips. SQLite reads in a deferred transaction (readers never wait under WAL).

    A pooled connection that the server ended in the instant between its checkout check
    (:func:`idle_connection_open`) and the first query fails with a disconnect: the work then
    runs once more, on a fresh connection (it only reads, so there is nothing to undo).
    """
    return _read(engine, "AUTOCOMMIT", work, args, kwargs)


def read_snapshot(engine: Engine | None, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """:func:`read` for work of several queries that must agree with each other (the atlas: its
    entries, then the newest of each): every statement sees one snapshot of the database. On
    PostgreSQL a ``REPEATABLE READ`` transaction (read-only work never fails to serialize); SQLite's
    deferred read transaction is one snapshot already (WAL)."""
    return _read(engine, "REPEATABLE READ", work, args, kwargs)


def _read(engine: Engine | None, isolation: str, work: Callable[..., T], args: Any, kwargs: Any) -> T:
    engine = engine if engine is not None else get_engine()
    for attempt in (1, 2):
        try:
            with engine.connect() as conn:
                if engine.dialect.name == "sqlite":
                    conn.execution_options(sqlite_begin="DEFERRED")
                else:
                    conn.execution_options(isolation_level=isolation)
                result = work(conn, *args, **kwargs)
                if conn.in_transaction():
                    conn.commit()
                return result
        except exc.SQLAlchemyError as error:
            if attempt == 1 and isinstance(error, exc.DBAPIError) and error.connection_invalidated:
                continue
            mapped = translate_db_error(error)
            if mapped is None:
                raise
            raise mapped from error
    raise AssertionError("unreachable")


def _rollback_quietly(session: Session) -> None:
    try:
        session.rollback()
    except exc.SQLAlchemyError:
        pass  # the connection is gone; the pool will invalidate it


def ping(engine: Engine) -> None:
    """Raise :class:`DatabaseUnavailable` unless the database answers ``SELECT 1``."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except exc.SQLAlchemyError as error:
        raise (translate_db_error(error) or DatabaseUnavailable(str(error))) from error


# --- Alembic -------------------------------------------------------------------------------------


def alembic_config(url: str | None = None):
    """An Alembic ``Config`` built in code, so ``decouple migrate`` works from any directory.

    ``script_location`` is the installed ``migrations`` package; ``migrations/env.py`` takes the
    URL (or an open connection) from ``config.attributes`` and falls back to the settings.
    """
    from alembic.config import Config

    import migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).resolve().parent))
    if url is not None:
        cfg.attributes["database_url"] = url
    return cfg


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest revision in ``migrations/versions`` (read once per process)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except exc.SQLAlchemyError as error:
        raise (translate_db_error(error) or DatabaseUnavailable(str(error))) from error


def upgrade_to_head(url: str | None = None) -> str:
    """``alembic upgrade head`` on ``url`` (default: the settings' database); returns the revision."""
    from alembic import command

    if url is None:
        from service.config import get_settings

        url = get_settings().database_url
    engine = make_engine(url)
    try:
        cfg = alembic_config(url)
        try:
            with engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except exc.SQLAlchemyError as error:
            raise (translate_db_error(error) or DatabaseUnavailable(str(error))) from error
        return current_revision(engine) or ""
    finally:
        engine.dispose()


def check_schema_current(engine: Engine) -> str:
    """Return the database's revision; raise :class:`SchemaOutOfDate` unless it is the code's head."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return current
    where = f"at revision {current}" if current else "empty (never migrated)"
    raise SchemaOutOfDate(
        f"the database schema is {where} but this code needs revision {head}: run `decouple migrate`"
    )
