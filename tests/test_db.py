"""The worker's short writes take turns within a process on SQLite (db.write_scope)."""

from __future__ import annotations

import threading
import time

from sqlalchemy import text

from faceid_batch.db import write_scope


def test_write_scope_takes_turns_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path}/turns.db"
    entered, release = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with write_scope(url) as s:
            s.execute(text("select 1"))
            entered.set()
            release.wait(5)
            order.append("first")

    def second() -> None:
        entered.wait(5)
        with write_scope(url) as s:
            s.execute(text("select 1"))
            order.append("second")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    assert entered.wait(5)
    time.sleep(0.3)
    assert order == []  # the second writer waits for the first to commit
    release.set()
    for t in threads:
        t.join(5)
    assert order == ["first", "second"]


def _write_mb(url: str, mb: int) -> None:
    with write_scope(url) as s:
        s.execute(text("create table if not exists blobs (b blob)"))
    for _ in range(mb):
        with write_scope(url) as s:
            s.execute(text("insert into blobs values (randomblob(1048576))"))


def test_commits_leave_wal_checkpoints_to_a_background_thread(tmp_path):
    """With checkpoint_in_background, no commit copies the WAL into the database (and waits
    for its fsync); the process's checkpoint thread does, within a few intervals."""
    from pathlib import Path

    from faceid_batch.db import checkpoint_in_background, get_engine

    url = f"sqlite:///{tmp_path}/ckpt.db"
    main = Path(tmp_path / "ckpt.db")
    # 6 MB is past SQLite's default autocheckpoint (1,000 pages): without the thread, a
    # commit would have copied the WAL into the database file by now.
    assert checkpoint_in_background(url, interval=0.5)
    with get_engine(url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    _write_mb(url, 6)
    # The thread has not run yet or has: either way the data reaches the main file soon.
    deadline = time.monotonic() + 5
    while main.stat().st_size < 6 * 2**20 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert main.stat().st_size >= 6 * 2**20
    assert any(t.name == "sqlite-checkpoint" for t in threading.enumerate())


def test_without_background_checkpoints_commits_checkpoint(tmp_path):
    """The control: SQLite's own autocheckpoint, run by the committing writer."""
    from faceid_batch.db import get_engine

    url = f"sqlite:///{tmp_path}/auto.db"
    with get_engine(url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000


def test_background_checkpoints_are_for_sqlite_only():
    from faceid_batch.db import checkpoint_in_background

    assert not checkpoint_in_background("postgresql://u@127.0.0.1:1/db")
