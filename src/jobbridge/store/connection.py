"""Connections to the store's database: SQLite tuned for several processes (WAL, writers
that take the lock up front), PostgreSQL with a pre-ping pool; and where the migrations are."""

from __future__ import annotations

import contextlib
import functools
import re
import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

__all__ = [
    "WRITE_OPTION",
    "ChangeWatch",
    "WriteTurns",
    "alembic_config",
    "create_engine",
    "head_revision",
    "write_turns",
]

_BUSY_TIMEOUT = 60.0
"""Seconds a writer waits for SQLite's write lock before it fails (busy_timeout)."""
_WAL_PATIENCE = 60.0
"""Seconds a new connection waits for its turn to switch the database to WAL."""

WRITE_OPTION = "jobbridge_write"
"""The execution option that marks a connection as a writer (BEGIN IMMEDIATE on SQLite)."""


def create_engine(url: str) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": _BUSY_TIMEOUT})
    sa.event.listen(engine, "connect", _configure_sqlite)
    sa.event.listen(engine, "begin", _begin_sqlite)
    return engine


def write_turns(engine: sa.Engine) -> AbstractContextManager[object]:
    """What a thread holds while it writes. On SQLite, one writer at a time per process:
    threads of one process then queue here and start the moment the writer before them
    ends, instead of waking now and then in SQLite's busy handler to look whether the lock
    is free (with a few threads writing at once, a third more writes per second). Between
    processes, SQLite's lock and busy handler still decide."""
    if engine.dialect.name == "sqlite":
        return WriteTurns(_BUSY_TIMEOUT)
    return contextlib.nullcontext()


class WriteTurns:
    """A re-entrant turn that is waited for no longer than SQLite itself would wait: past
    that, the writer goes on and SQLite's lock says whether it may write, as it would
    without turns (an error after its own timeout, never a hang)."""

    def __init__(self, patience: float) -> None:
        self.patience = patience
        self._lock = threading.RLock()
        self._held = threading.local()

    def __enter__(self) -> None:
        taken = self._lock.acquire(timeout=self.patience)
        self._held.stack = [*getattr(self._held, "stack", []), taken]

    def __exit__(self, *exc_info: object) -> None:
        if self._held.stack.pop():
            self._lock.release()


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # jobbridge issues BEGIN itself, so that writers can take the lock up front
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT * 1000)}")
    _use_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _use_wal(cursor: Any) -> None:
    """Switch a database to WAL. The switch needs the database to itself and SQLite does not
    wait for that (no busy handler), so several processes opening a new file at once take
    turns here instead of failing."""
    deadline = time.monotonic() + _WAL_PATIENCE
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _begin_sqlite(conn: sa.Connection) -> None:
    # A deferred transaction that reads and then writes fails at once under contention;
    # BEGIN IMMEDIATE waits for the write lock instead.
    writes = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


class ChangeWatch:
    """Whether anything was committed to a SQLite database since a moment: its
    ``data_version``, read on a connection of the watch's own that never writes, changes
    with every commit of any other connection, in this process or another. On other
    databases, and in memory, it knows nothing (``version`` is None)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        database = engine.url.database
        # an in-memory database is one connection shared by all: it would watch itself
        self._watchable = engine.dialect.name == "sqlite" and database not in (None, "", ":memory:")
        self._conn: sa.Connection | None = None
        self._lock = threading.Lock()

    def version(self) -> int | None:
        if not self._watchable:
            return None
        with self._lock:
            if self._conn is None:
                self._conn = self._engine.connect()
            version = self._conn.exec_driver_sql("PRAGMA data_version").scalar()
            self._conn.rollback()  # no transaction held open between two looks
            return int(version) if version is not None else None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", "jobbridge.store:migrations")
    return config


_REVISION = re.compile(r"^(down_revision|revision)\s*=\s*(None|['\"]([^'\"]+)['\"])", re.MULTILINE)


@functools.cache
def head_revision() -> str | None:
    """The newest migration, read from the scripts' own words without loading Alembic
    (a linear history: the one revision that no other revises)."""
    revisions, revised = set(), set()
    for script in (Path(__file__).parent / "migrations" / "versions").glob("*.py"):
        found = dict((key, value) for key, _, value in _REVISION.findall(script.read_text()))
        if found.get("revision"):
            revisions.add(found["revision"])
        if found.get("down_revision"):
            revised.add(found["down_revision"])
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None
