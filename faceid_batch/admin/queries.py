"""The admin query layer: list, show, export and stats, shared by the CLI and the HTTP service.

Every user-supplied value reaches the database as a bound parameter; sort columns come from
a whitelist. Listings never carry image bytes (only a best frame's size, MD5 and location).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, TextIO

from sqlalchemy import Select, func, select, text
from sqlalchemy.sql.elements import ColumnElement

from faceid_batch.db import get_engine, session_scope
from faceid_batch.models import Attempt, BestFrame, Job, Result
from faceid_batch.times import parse_time

MAX_LIMIT = 1000
EXPORT_CHUNK = 1000

# Sort keys users may name -> columns. Anything else is refused. Each has an index that
# holds its order with the id as tie-break, in both directions (revisions 0005 and 0013).
SORTS: dict[str, Any] = {
    "id": Job.id,
    "created": Job.created_at,
    "finished": Job.finished_at,
    "key": Job.idempotency_key,
    "state": Job.state,
    "code": Job.result_code,
    "attempts": Job.attempts,
    # jobs.sim is results.sim (written together, cleared together by an erasure): a page in
    # Sim order is read from an index on jobs alone.
    "sim": Job.sim,
}

NULLABLE_SORTS = {"finished", "code", "sim"}
UNIQUE_SORTS = {"id", "key"}  # no tie-break needed


class QueryError(ValueError):
    """A filter, sort or page the query layer refuses; the message says which."""


def parse_verdict(value: str | None) -> bool | None:
    """``pass`` or ``fail`` (also passed/failed, true/false) as a bool; empty: None."""
    if value is None or value == "":
        return None
    if value.lower() in ("pass", "passed", "true"):
        return True
    if value.lower() in ("fail", "failed", "false"):
        return False
    raise ValueError(f"verdict: must be pass or fail, got {value!r}")


@dataclass(frozen=True)
class Filters:
    """Narrow the jobs listed; every field left None matches everything."""

    batch_id: int | None = None
    lane: str | None = None
    state: str | None = None
    code: str | None = None  # the outcome code (jobs.result_code)
    passed: bool | None = None
    sim_min: float | None = None
    sim_max: float | None = None
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None  # exclusive
    key_prefix: str | None = None
    tenant_id: int | None = None  # tenants.resolve gives it from a name

    @classmethod
    def from_options(cls, **kw: Any) -> Filters:
        """Filters from the values of the CLI's options or the admin's query string
        (batch, lane, state, code, verdict, sim_min, sim_max, since, until, key_prefix);
        a ValueError names a bad one."""
        return cls(
            batch_id=kw.get("batch"), lane=kw.get("lane"), state=kw.get("state"),
            code=kw.get("code"), passed=parse_verdict(kw.get("verdict")),
            sim_min=kw.get("sim_min"), sim_max=kw.get("sim_max"),
            created_from=parse_time(kw.get("since"), "since"),
            created_to=parse_time(kw.get("until"), "until"),
            key_prefix=kw.get("key_prefix"), tenant_id=kw.get("tenant_id"),
        )

    def clauses(self) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        if self.batch_id is not None:
            out.append(Job.batch_id == self.batch_id)
        if self.tenant_id is not None:
            out.append(Job.tenant_id == self.tenant_id)
        if self.lane:
            out.append(Job.lane == self.lane)
        if self.state:
            out.append(Job.state == self.state)
        if self.code:
            out.append(Job.result_code == self.code)
        if self.passed is not None:
            out.append(Job.passed.is_(self.passed))
        # A job without a result has no Sim (NULL), so it matches no Sim range.
        if self.sim_min is not None:
            out.append(Job.sim >= self.sim_min)
        if self.sim_max is not None:
            out.append(Job.sim <= self.sim_max)
        if self.created_from is not None:
            out.append(Job.created_at >= self.created_from)
        if self.created_to is not None:
            out.append(Job.created_at < self.created_to)
        if self.key_prefix:
            # autoescape: % and _ in the prefix are literal characters, not wildcards. On
            # PostgreSQL, ix_jobs_key_pattern reads the prefix as a range of keys.
            out.append(Job.idempotency_key.startswith(self.key_prefix, autoescape=True))
        return out


@dataclass(frozen=True)
class Page:
    """Offset paging with the job id as tie-break, so equal sort values keep one order."""

    sort: str = "-id"  # a key of SORTS, "-" in front for descending
    page: int = 1
    limit: int = 50

    @property
    def column(self) -> Any:
        """The column sorted on (a column of jobs)."""
        name = self.sort.lstrip("-")
        if name not in SORTS:
            raise QueryError(f"sort: must be one of {', '.join(sorted(SORTS))} "
                             f"(optionally with a leading -), got {self.sort!r}")
        return SORTS[name]

    def order_by(self, source: Any = None) -> list[Any]:
        """The ORDER BY of this sort on jobs, or on ``source`` (a subquery or CTE that has
        the sorted column and the id)."""
        col = self.column
        name = self.sort.lstrip("-")
        desc = self.sort.startswith("-")
        ids = Job.id if source is None else source.c.id
        if source is not None:
            col = source.c[col.key]
        tie = ids.desc() if desc else ids.asc()
        if name in UNIQUE_SORTS:
            return [col.desc() if desc else col.asc()]
        if name not in NULLABLE_SORTS:
            # Not a NULLS clause here: it would keep the index from serving the order.
            return [col.desc() if desc else col.asc(), tie]
        # NULLs last both ways, the same on both backends (their defaults differ). Ascending,
        # that is PostgreSQL's index order; descending, it is (col IS NULL), col DESC, the
        # order of the expression indexes of revision 0013.
        if desc:
            return [col.is_(None), col.desc(), tie]
        return [col.asc().nulls_last(), tie]

    def check(self) -> None:
        if self.page < 1:
            raise QueryError("page: must be at least 1")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise QueryError(f"limit: must be between 1 and {MAX_LIMIT}")


@dataclass(frozen=True)
class ResultRow:
    """One job in a listing or an export: no image bytes."""

    id: int
    key: str
    batch_id: int | None
    lane: str
    state: str
    attempts: int
    code: str | None
    passed: bool | None
    sim: float | None
    request_id: str | None
    description: str | None
    error: str | None
    created_at: datetime | None
    finished_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_ROW_COLUMNS = (
    Job.id, Job.idempotency_key, Job.batch_id, Job.lane, Job.state, Job.attempts,
    Job.result_code, Job.passed, Job.sim, Result.request_id, Result.description,
    Job.error_message, Job.created_at, Job.finished_at,
)


def _rows_query(filters: Filters) -> Select[*tuple[Any, ...]]:
    return (select(*_ROW_COLUMNS).outerjoin(Result, Result.job_id == Job.id)
            .where(*filters.clauses()))


def _page_query(filters: Filters, page: Page) -> Select[*tuple[Any, ...]]:
    """The page's job ids from the jobs table alone (every filter and sort is a column of
    jobs, most read from an index), then its rows joined to their results: the join costs
    a page's rows, not the rows skipped to reach it."""
    order = page.order_by()
    if _range_first(filters, page):
        # The planner takes a filter's rows to be spread evenly along every order, and would
        # walk the sort's index looking for them; a key prefix or a day of jobs is one
        # stretch of ids, far from the end the walk starts at. So: the filter's index range
        # first (a key prefix: ix_jobs_key_pattern; a created range: ix_jobs_created_at_id,
        # both index-only for an id sort), then its rows sorted. Its cost is the number of
        # rows in the range.
        matched = (select(Job.id, page.column).where(*filters.clauses())
                   .cte("matched").prefix_with("MATERIALIZED", dialect="postgresql"))
        first = select(matched.c.id).order_by(*page.order_by(matched))
    else:
        first = select(Job.id).where(*filters.clauses()).order_by(*order)
    ids = first.offset((page.page - 1) * page.limit).limit(page.limit + 1).subquery("page")
    return (select(*_ROW_COLUMNS).join(ids, ids.c.id == Job.id)
            .outerjoin(Result, Result.job_id == Job.id).order_by(*order))


def _range_first(filters: Filters, page: Page) -> bool:
    """Whether a page is read from its filter's range rather than in its sort's order."""
    if filters.key_prefix:
        return True
    dated = filters.created_from is not None or filters.created_to is not None
    return dated and page.column is Job.id


@dataclass
class Listing:
    rows: list[ResultRow]
    page: int
    limit: int
    has_more: bool
    sort: str = "-id"
    filters: dict[str, Any] = field(default_factory=dict)


def list_results(url: str, filters: Filters = Filters(), page: Page = Page()) -> Listing:
    """One page of jobs matching ``filters``, in ``page.sort`` order (ties by job id)."""
    page.check()
    query = _page_query(filters, page)
    with session_scope(url) as session:
        if session.bind is not None and session.bind.dialect.name == "postgresql":
            # A page reads a few hundred index entries; starting parallel workers for it
            # costs more (~30 ms measured) than it could save.
            session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
        rows = [ResultRow(*r) for r in session.execute(query)]
    return Listing(rows[:page.limit], page.page, page.limit, len(rows) > page.limit, page.sort,
                   {k: v for k, v in asdict(filters).items() if v is not None})


def iter_results(url: str, filters: Filters = Filters(), sort: str = "id") -> Iterator[ResultRow]:
    """Every matching job, streamed from a server-side cursor in chunks (constant memory)."""
    query = _rows_query(filters).order_by(*Page(sort=sort).order_by())
    with get_engine(url).connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=EXPORT_CHUNK).execute(query)
        for r in result:
            yield ResultRow(*r)


def show(url: str, job_id: int) -> dict[str, Any] | None:
    """One job in full: every attempt, the result, the best frame's location (no bytes)."""
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        attempts = session.scalars(
            select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.id)).all()
        result = session.scalar(select(Result).where(Result.job_id == job_id))
        frame = session.execute(
            select(BestFrame.id, BestFrame.md5, BestFrame.size, BestFrame.object_key,
                   BestFrame.created_at, BestFrame.content.is_not(None))
            .where(BestFrame.job_id == job_id)).first()
        return {
            "job": {
                "id": job.id, "key": job.idempotency_key, "batch_id": job.batch_id,
                "batch_row": job.batch_row, "lane": job.lane, "state": job.state,
                "liveness_type": job.liveness_type, "attempts": job.attempts,
                "code": job.result_code, "passed": job.passed, "error": job.error_message,
                "photo_source": job.photo_source, "video_source": job.video_source,
                "photo_key": job.photo_key, "video_key": job.video_key,
                "photo_md5": job.photo_md5, "video_md5": job.video_md5,
                "created_at": job.created_at, "started_at": job.started_at,
                "finished_at": job.finished_at, "media_purged_at": job.media_purged_at,
            },
            "attempts": [
                {"number": a.number, "started_at": a.started_at, "latency_ms": a.latency_ms,
                 "http_status": a.http_status, "request_id": a.request_id, "code": a.code,
                 "kind": a.kind, "channel": a.channel, "message": a.message,
                 "counted": a.counted}
                for a in attempts
            ],
            "result": None if result is None else {
                "result": result.result, "description": result.description, "sim": result.sim,
                "request_id": result.request_id, "passed": result.passed,
                "threshold": result.threshold, "created_at": result.created_at,
            },
            "best_frame": None if frame is None else {
                "md5": frame[1], "size": frame[2], "object_key": frame[3],
                "created_at": frame[4], "stored_in_db": bool(frame[5]),
                "location": f"best_frames.content (id {frame[0]})" if frame[5]
                else (frame[3] or "none"),
            },
        }


def best_frame_bytes(url: str, job_id: int) -> bytes | None:
    with session_scope(url) as session:
        return session.scalar(select(BestFrame.content).where(BestFrame.job_id == job_id))


def photo_key(url: str, job_id: int) -> str | None:
    with session_scope(url) as session:
        return session.scalar(select(Job.photo_key).where(Job.id == job_id))


def _minute(column: Any, dialect: str) -> tuple[Any, Any]:
    """The minute of ``column`` to group by, and its ``YYYY-MM-DDTHH:MM`` label."""
    if dialect == "postgresql":
        minute = func.date_trunc("minute", column)
        return minute, func.to_char(minute, "YYYY-MM-DD\"T\"HH24:MI")
    label = func.strftime("%Y-%m-%dT%H:%M", column)
    return label, label


def stats(url: str, filters: Filters = Filters()) -> dict[str, Any]:
    """Pass rate, outcome-code histogram, attempts per job and throughput per finished minute.

    For a batch, the minutes are an index-only scan of ix_jobs_batch_finished (when its
    pages are all-visible); the counts read the batch's rows once. The two reads run side
    by side, on two connections."""
    where = filters.clauses()
    dialect = get_engine(url).dialect.name

    def read(stmt: Any) -> list[Any]:
        with session_scope(url) as session:
            if dialect == "postgresql":
                # A batch's finished minutes are sorted in memory, not spilled (~8 MB for
                # 100,000 jobs); and no JIT, which costs more than a query of this size.
                session.execute(text("SET LOCAL work_mem = '32MB'"))
                session.execute(text("SET LOCAL jit = off"))
            return list(session.execute(stmt).all())

    minute, label = _minute(Job.finished_at, dialect)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="stats") as pool:
        # One pass over the jobs grouped by everything counted; the groups are few.
        counted = pool.submit(read, select(
            Job.state, Job.result_code, Job.attempts, Job.passed, func.count())
            .where(*where).group_by(Job.state, Job.result_code, Job.attempts, Job.passed))
        minutes = pool.submit(read, select(label, func.count())
                              .where(*where, Job.finished_at.is_not(None))
                              .group_by(minute).order_by(minute))
        groups, per_minute = counted.result(), minutes.result()
    # Finished: the jobs with a finished_at, each counted in its minute.
    finished = sum(n for _, n in per_minute)
    total = passed = failed = 0
    by_state: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    attempts: Counter[int] = Counter()
    for state, code, tries, verdict, n in groups:
        total += n
        passed += n if verdict is True else 0
        failed += n if verdict is False else 0
        by_state[state] += n
        codes[code or "-"] += n
        attempts[int(tries)] += n
    verdicts = passed + failed
    return {
        "jobs": total,
        "finished": finished,
        "by_state": dict(by_state.most_common()),
        "passed": passed,
        "failed": failed,
        "pass_rate": round(passed / verdicts, 4) if verdicts else None,
        "codes": dict(codes.most_common()),
        "attempts": dict(sorted(attempts.items())),
        "per_minute": {m: n for m, n in per_minute},
        "filters": {k: v for k, v in asdict(filters).items() if v is not None},
    }


# -- export ----------------------------------------------------------------------------
EXPORT_FIELDS = tuple(ResultRow.__dataclass_fields__)
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """A value as a CSV cell that no spreadsheet evaluates."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def write_csv(rows: Iterable[ResultRow], out: TextIO) -> int:
    """Write rows as CSV (header first), one at a time; return how many."""
    writer = csv.writer(out)
    writer.writerow(EXPORT_FIELDS)
    n = 0
    for row in rows:
        writer.writerow([csv_cell(getattr(row, f)) for f in EXPORT_FIELDS])
        n += 1
    return n


def write_jsonl(rows: Iterable[ResultRow], out: TextIO) -> int:
    """Write rows as JSON lines, one at a time; return how many."""
    n = 0
    for row in rows:
        out.write(json.dumps(row.as_dict(), default=_json_default) + "\n")
        n += 1
    return n


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
