"""Engine and session handling: one engine per process, one session per unit of work."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

# This process's engines, write locks and checkpointed SQLite databases, by URL. A forked
# child starts them afresh (``_after_fork``).
_engines: dict[str, Engine] = {}
_write_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
# The SQLite databases this process checkpoints from a thread of its own.
_checkpointed: set[str] = set()

log = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, url: str = "") -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers (the CLI, the admin) work while workers write; the busy timeout
    # makes concurrent writers from many worker threads wait instead of failing.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    if url in _checkpointed:
        cur.execute("PRAGMA wal_autocheckpoint=0")  # see checkpoint_in_background
    cur.close()


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain postgresql:// URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    """Build an engine; creates the directory of a SQLite file."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, pool_size=20, max_overflow=60)
        event.listen(engine, "connect",
                     lambda conn, record: _sqlite_pragmas(conn, record, url))
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=70)


def get_engine(url: str) -> Engine:
    """The engine for ``url`` in this process (built once; a new pool after a fork)."""
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = make_engine(url)
    return engine


# The parent's engines, kept referenced and never used in a forked child: closing their
# connections here (SQLite file handles, PostgreSQL sockets) would act on the parent's.
_inherited: list[Engine] = []


def _after_fork() -> None:
    # A forked child (a prefork pool process) builds its own engines. Locks held by a
    # parent's thread at the fork would stay held here, and the checkpoint thread is the
    # parent's.
    global _locks_guard
    _inherited.extend(_engines.values())
    _engines.clear()
    _write_locks.clear()
    _checkpointed.clear()
    _locks_guard = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


def affected(result: Result[Any]) -> int:
    """The rows an UPDATE, DELETE or INSERT touched (its cursor's rowcount)."""
    return cast(CursorResult[Any], result).rowcount


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One session as a unit of work: commit on success, roll back on error."""
    # A plain Session: sessionmaker() builds a new Session subclass on every call, and
    # SQLAlchemy's event registry pays for each new class (measured: a third of the CPU of
    # a job's database work).
    session = Session(get_engine(url), expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def write_scope(url: str) -> Iterator[Session]:
    """``session_scope`` for the worker's short writes (no network inside).

    On SQLite the threads of one process take turns on a Python lock instead of all meeting
    at the database's write lock, whose busy handler sleeps up to 100 ms between tries: with
    40 threads per worker, a write could wait seconds while the lock was mostly free.
    """
    if not normalise_url(url).startswith("sqlite"):
        with session_scope(url) as session:
            yield session
        return
    with _locks_guard:
        lock = _write_locks.setdefault(url, threading.Lock())
    with lock, session_scope(url) as session:
        yield session


CHECKPOINT_INTERVAL = 1.0


def checkpoint_in_background(url: str, interval: float = CHECKPOINT_INTERVAL) -> bool:
    """On SQLite, move WAL checkpoints off this process's commits onto a thread of its own.

    By default the commit that takes the WAL past 1,000 pages copies them into the database
    and fsyncs it, inside the writer's turn (``write_scope``): while the disk was busy, one
    such commit held a worker's writes for 1.8 s (seen in ``bench.throughput``: every answer
    of that worker waited, the other worker's went on). Here the process's connections never
    checkpoint on commit; a daemon thread runs a PASSIVE checkpoint (it never blocks writers
    or readers) every ``interval`` seconds. Returns False (and does nothing) off SQLite.
    """
    url = normalise_url(url)
    if make_url(url).get_backend_name() != "sqlite":
        return False
    with _locks_guard:
        if url in _checkpointed:
            return True
        _checkpointed.add(url)
    stale = _engines.pop(url, None)
    if stale is not None:
        stale.dispose()  # its connections were made with autocheckpoint on

    def run() -> None:
        while True:
            time.sleep(interval)
            try:
                with get_engine(url).connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception as exc:  # noqa: BLE001 - a missed checkpoint is retried next time
                log.warning("WAL checkpoint failed: %s", exc)

    threading.Thread(target=run, name="sqlite-checkpoint", daemon=True).start()
    return True
