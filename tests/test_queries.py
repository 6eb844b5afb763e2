"""The admin query layer on seeded rows (SQLite and PostgreSQL): filters, paging, export."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text

from faceid_batch.admin import queries
from faceid_batch.admin.queries import Filters, Page, QueryError, write_csv, write_jsonl
from faceid_batch.db import session_scope
from faceid_batch.models import Attempt, Batch, BestFrame, Job, Result

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
INJECTION = "x'; DROP TABLE jobs; --"
FRAME = b"\x89PNG\r\n\x1a\n-best-frame-bytes"

# key, batch (index or None), lane, state, code, passed, sim, attempts, minutes after T0
SEED = [
    ("alice-1", 0, "backfill", "completed", "Success", True, 91.5, 1, 0),
    ("alice-2", 0, "backfill", "completed", "FailedOperation.LivessDetectFake", False, 12.0, 2, 1),
    ("alice-3", 0, "backfill", "completed", "Success", True, 75.0, 1, 1),
    ("bob-1", 1, "backfill", "completed", "Success", False, 40.0, 3, 2),
    ("bob-2", 1, "backfill", "failed", "InvalidParameterValue", None, None, 1, 3),
    ("=HYPERLINK(\"http://evil\")", None, "onboarding", "completed", "Success", True, 88.0, 1, 60),
    (INJECTION + "1", None, "onboarding", "queued", None, None, None, 0, 61),
    ("carol%_1", None, "onboarding", "completed", "Success", True, 70.0, 1, 24 * 60),
    ("carolX_2", None, "onboarding", "completed", "Success", True, 70.0, 1, 24 * 60),
]


def seed(url: str) -> dict[str, int]:
    """Insert the SEED rows directly; return key -> job id."""
    ids: dict[str, int] = {}
    with session_scope(url) as s:
        batches = [Batch(name="batch-a", lane="backfill"), Batch(name="batch-b", lane="backfill")]
        s.add_all(batches)
        s.flush()
        for key, batch, lane, state, code, passed, sim, attempts, minutes in SEED:
            created = T0 + timedelta(minutes=minutes)
            job = Job(idempotency_key=key, lane=lane, state=state, liveness_type="SILENT",
                      photo_source="/p.png", video_source="/v.mp4", attempts=attempts,
                      result_code=code, passed=passed, sim=sim, created_at=created,
                      photo_key=f"media/{key[:5]}.png",
                      finished_at=created + timedelta(seconds=30) if code else None,
                      batch_id=batches[batch].id if batch is not None else None,
                      error_message="bad request" if state == "failed" else None)
            s.add(job)
            s.flush()
            ids[key] = job.id
            for n in range(1, attempts + 1):
                last = n == attempts
                s.add(Attempt(job_id=job.id, number=n, request_id=f"req-{job.id}-{n}",
                              code=(code or "Success") if last else "FailedOperation.UnKnown",
                              kind="final" if last else "transient", channel="result"))
            if sim is not None:
                s.add(Result(job_id=job.id, result=code, sim=sim, passed=bool(passed),
                             threshold=70.0, request_id=f"req-{job.id}-{attempts}",
                             description="desc"))
                s.add(BestFrame(job_id=job.id, md5="0" * 32, size=len(FRAME), content=FRAME))
    return ids


def keys(url: str, filters: Filters = Filters(), **page) -> list[str]:
    listing = queries.list_results(url, filters, Page(**page) if page else Page(limit=1000))
    return [r.key for r in listing.rows]


@pytest.fixture
def seeded(database_url):
    return database_url, seed(database_url)


def test_each_filter_narrows(seeded):
    url, ids = seeded
    with session_scope(url) as s:
        batch_a = s.scalar(select(Batch.id).where(Batch.name == "batch-a"))
    everything = set(keys(url))
    assert everything == {row[0] for row in SEED}
    cases = [
        (Filters(batch_id=batch_a), {"alice-1", "alice-2", "alice-3"}),
        (Filters(lane="onboarding"), {"=HYPERLINK(\"http://evil\")", INJECTION + "1",
                                      "carol%_1", "carolX_2"}),
        (Filters(state="failed"), {"bob-2"}),
        (Filters(code="FailedOperation.LivessDetectFake"), {"alice-2"}),
        (Filters(passed=False), {"alice-2", "bob-1"}),
        (Filters(passed=True, lane="backfill"), {"alice-1", "alice-3"}),
        (Filters(sim_min=75.0), {"alice-1", "alice-3", "=HYPERLINK(\"http://evil\")"}),
        (Filters(sim_min=20, sim_max=72), {"bob-1", "carol%_1", "carolX_2"}),
        (Filters(created_from=T0 + timedelta(minutes=1), created_to=T0 + timedelta(minutes=3)),
         {"alice-2", "alice-3", "bob-1"}),
        (Filters(key_prefix="alice-"), {"alice-1", "alice-2", "alice-3"}),
        # % and _ in a prefix are characters, not wildcards.
        (Filters(key_prefix="carol%"), {"carol%_1"}),
        (Filters(key_prefix="carol_"), set()),
        (Filters(key_prefix="carol%_"), {"carol%_1"}),
        (Filters(key_prefix="carolX"), {"carolX_2"}),
        (Filters(key_prefix="carol", sim_min=70, sim_max=70), {"carol%_1", "carolX_2"}),
    ]
    for filters, expected in cases:
        assert set(keys(url, filters)) == expected, filters


def test_sql_in_a_filter_is_data(seeded):
    url, ids = seeded
    assert keys(url, Filters(key_prefix=INJECTION)) == [INJECTION + "1"]
    assert keys(url, Filters(state=INJECTION)) == []
    with session_scope(url) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == len(SEED)


def test_paging_is_stable_and_sort_is_whitelisted(seeded):
    url, _ = seeded
    # Many equal Sim values: the id tie-break keeps pages disjoint and complete.
    for sort in ("sim", "-sim", "attempts", "-created", "code", "-id"):
        pages = [keys(url, sort=sort, page=p, limit=2) for p in range(1, 7)]
        flat = [k for page in pages for k in page]
        assert len(flat) == len(set(flat)) == len(SEED), sort
        assert flat == keys(url, sort=sort, page=1, limit=100), sort
    listing = queries.list_results(url, Filters(), Page(sort="-sim", limit=3))
    assert [r.sim for r in listing.rows] == [91.5, 88.0, 75.0] and listing.has_more
    with pytest.raises(QueryError):
        queries.list_results(url, Filters(), Page(sort="id; DROP TABLE jobs"))
    with pytest.raises(QueryError):
        queries.list_results(url, Filters(), Page(limit=0))


def _joined_order(url: str, sort: str, filters: Filters) -> list[str]:
    """The order of ``sort`` computed from results.sim through the join, NULLs last."""
    desc = sort.startswith("-")
    with session_scope(url) as s:
        rows = s.execute(select(Job.id, Job.idempotency_key, Result.sim)
                         .outerjoin(Result, Result.job_id == Job.id)
                         .where(*filters.clauses())).all()
    known = sorted((r for r in rows if r.sim is not None), key=lambda r: (r.sim, r.id),
                   reverse=desc)
    unknown = sorted((r for r in rows if r.sim is None), key=lambda r: r.id, reverse=desc)
    return [r.idempotency_key for r in known + unknown]


def test_sim_sort_and_filter_match_the_results(seeded):
    url, ids = seeded
    # A job whose result came after another's, so id order and Sim order differ throughout.
    with session_scope(url) as s:
        job = Job(idempotency_key="dave-1", lane="backfill", state="completed", sim=55.5,
                  liveness_type="SILENT", photo_source="/p.png", video_source="/v.mp4",
                  attempts=1, result_code="Success", passed=False, created_at=T0)
        s.add(job)
        s.flush()
        s.add(Result(job_id=job.id, result="Success", sim=55.5, passed=False, threshold=70.0,
                     request_id="req-dave", description="near miss"))
    for filters in (Filters(), Filters(passed=False), Filters(lane="onboarding"),
                    Filters(sim_min=40, sim_max=80), Filters(state="completed")):
        for sort in ("sim", "-sim"):
            expected = _joined_order(url, sort, filters)
            assert keys(url, filters, sort=sort, limit=1000) == expected, (sort, filters)
            pages = [k for p in range(1, 8) for k in keys(url, filters, sort=sort, page=p,
                                                          limit=2)]
            assert pages == expected, (sort, filters)
    # The page's rows still carry what only results hold.
    rows = queries.list_results(url, Filters(passed=False), Page(sort="-sim", limit=1)).rows
    assert [(r.key, r.sim, r.request_id, r.description) for r in rows] == [
        ("dave-1", 55.5, "req-dave", "near miss")]
    assert queries.list_results(url, Filters(sim_min=55.5, sim_max=55.5)).rows[0].key == "dave-1"


FULL_SORT = re.compile(r"(?<!Incremental )Sort  \(cost")


def _plan(url: str, query: Any) -> str:
    with session_scope(url) as s:
        s.execute(text("SET LOCAL enable_seqscan = off"))
        s.execute(text("SET LOCAL enable_sort = off"))
        sql = str(query.compile(s.get_bind(), compile_kwargs={"literal_binds": True}))
        return "\n".join(s.scalars(text("EXPLAIN " + sql)))


def test_every_offered_order_is_an_index(seeded):
    """On PostgreSQL, each sort (both ways), alone and under
    a verdict, is read in order from an index: no Sort node, even where a sort is the only
    other way. A key prefix is an index range, whatever the database's collation."""
    url, _ = seeded
    if not url.startswith("postgresql"):
        pytest.skip("PostgreSQL's plans")
    sorts = [s for name in queries.SORTS for s in (name, f"-{name}")]
    cases = [(s, Filters()) for s in sorts] + [
        ("-sim", Filters(passed=False)), ("-sim", Filters(passed=True)),
        ("sim", Filters(passed=True)),
        ("-id", Filters(state="failed")), ("attempts", Filters())]
    for sort, filters in cases:
        query = (select(Job.id).where(*filters.clauses())
                 .order_by(*Page(sort=sort).order_by()).limit(51))
        plan = _plan(url, query)
        # An Incremental Sort (ties of an index's order sorted by id, a few rows at a time;
        # ix_jobs_finished_at ascending) is bounded; a Sort of every matching row is not.
        assert not FULL_SORT.search(plan) and "Index" in plan, (sort, filters, plan)
    plan = _plan(url, select(Job.id).where(*Filters(key_prefix="carol%_").clauses()))
    assert "ix_jobs_key_pattern" in plan and "Index Cond" in plan, plan


def test_show_has_every_attempt_and_no_bytes(seeded):
    url, ids = seeded
    shown = queries.show(url, ids["bob-1"])
    assert [a["request_id"] for a in shown["attempts"]] == [
        f"req-{ids['bob-1']}-{n}" for n in (1, 2, 3)]
    assert shown["attempts"][-1]["code"] == "Success"
    assert shown["result"]["sim"] == 40.0 and shown["result"]["passed"] is False
    assert shown["best_frame"]["size"] == len(FRAME) and shown["best_frame"]["stored_in_db"]
    assert FRAME not in json.dumps(shown, default=str).encode()
    assert queries.show(url, 10**9) is None


def test_export_neutralises_formulas(seeded):
    url, _ = seeded
    out = io.StringIO()
    n = write_csv(queries.iter_results(url), out)
    assert n == len(SEED)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    evil = [r for r in rows if "HYPERLINK" in r["key"]]
    assert evil[0]["key"] == "'=HYPERLINK(\"http://evil\")"
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r"))
                   for r in rows for cell in r.values())
    out = io.StringIO()
    write_jsonl(queries.iter_results(url, Filters(key_prefix="=")), out)
    assert [json.loads(line)["key"] for line in out.getvalue().splitlines()] == [
        "=HYPERLINK(\"http://evil\")"]  # JSONL is data, kept as is


def test_stats(seeded):
    url, _ = seeded
    with session_scope(url) as s:
        batch_a = s.scalar(select(Batch.id).where(Batch.name == "batch-a"))
    st = queries.stats(url, Filters(batch_id=batch_a))
    assert (st["jobs"], st["finished"], st["passed"], st["failed"]) == (3, 3, 2, 1)
    assert st["pass_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert st["codes"] == {"Success": 2, "FailedOperation.LivessDetectFake": 1}
    assert st["attempts"] == {1: 2, 2: 1}
    assert st["per_minute"] == {"2026-01-01T10:00": 1, "2026-01-01T10:01": 2}
    ranged = queries.stats(url, Filters(created_from=T0 + timedelta(days=1)))
    assert ranged["jobs"] == 2 and ranged["pass_rate"] == 1.0
    everything = queries.stats(url)
    assert (everything["jobs"], everything["finished"]) == (len(SEED), len(SEED) - 1)
    assert sum(everything["per_minute"].values()) == everything["finished"]


def test_cli_commands(seeded, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from faceid_batch.cli.main import app
    from faceid_batch.settings import get_settings

    url, ids = seeded
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        run = CliRunner().invoke
        out = run(app, ["results", "--verdict", "fail", "--sort", "-sim"])
        assert out.exit_code == 0, out.output
        lines = out.output.splitlines()
        assert [line.split()[1] for line in lines[1:]] == ["bob-1", "alice-2"]
        out = run(app, ["results", "--key-prefix", INJECTION, "--limit", "5"])
        assert out.exit_code == 0 and INJECTION + "1" in out.output and "alice" not in out.output
        assert run(app, ["results", "--sort", "sim; DROP TABLE jobs"]).exit_code == 2
        out = run(app, ["show", str(ids["bob-1"])])
        assert out.exit_code == 0 and f"RequestId=req-{ids['bob-1']}-3" in out.output
        target = tmp_path / "out.csv"
        out = run(app, ["export", "--format", "csv", "--output", str(target), "--lane",
                        "onboarding"])
        assert out.exit_code == 0, out.output
        assert "'=HYPERLINK" in target.read_text() and "alice" not in target.read_text()
        out = run(app, ["stats", "--since", "2026-01-02", "--json"])
        assert out.exit_code == 0 and json.loads(out.output)["jobs"] == 2
    finally:
        get_settings.cache_clear()
