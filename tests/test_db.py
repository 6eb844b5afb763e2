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
