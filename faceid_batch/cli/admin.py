"""Admin commands added to ``faceid-batch`` by ``register``: query, inspect, export, serve.

    faceid-batch results [filters] [--sort -sim] [--page 2 --limit 50]
    faceid-batch show JOB [--json] [--save-images DIR]
    faceid-batch export --format csv|jsonl [--output FILE] [filters]
    faceid-batch stats [--batch ID | --since T --until T] [--json]
    faceid-batch admin [--host 127.0.0.1] [--port 8088]

Each command imports what it runs inside its function, so a command loads only its own
dependencies (a query does not load Celery or the COS SDK).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer

from faceid_batch.cli.common import fail, load_settings
from faceid_batch.settings import Settings, SettingsError

# Filter options shared by results and export (typer reads them as default values).
BATCH = typer.Option(None, "--batch", help="Only jobs of this batch id")
LANE = typer.Option(None, help="onboarding or backfill")
STATE = typer.Option(None, help="queued, running, retrying, completed, failed, paused")
CODE = typer.Option(None, help="Outcome code, e.g. FailedOperation.LivessDetectFake")
VERDICT = typer.Option(None, help="pass or fail")
SIM_MIN = typer.Option(None, "--sim-min", help="Sim at least this")
SIM_MAX = typer.Option(None, "--sim-max", help="Sim at most this")
SINCE = typer.Option(None, help="Created at or after (ISO 8601; UTC unless an offset is given)")
UNTIL = typer.Option(None, help="Created before (ISO 8601)")
KEY_PREFIX = typer.Option(None, "--key-prefix", help="Idempotency key starts with this")
TENANT = typer.Option(None, "--tenant", help="Only jobs of this tenant (its name)")


def register(app: typer.Typer) -> None:
    """Add results, show, export, stats and admin to the main command line."""
    app.command("results")(results)
    app.command("show")(show)
    app.command("export")(export)
    app.command("stats")(stats)
    app.command("admin")(admin)


def _filters(**kw: Any) -> Any:
    from faceid_batch import tenants
    from faceid_batch.admin.queries import Filters

    try:
        tenant = kw.pop("tenant", None)
        if tenant is not None:
            kw["tenant_id"] = tenants.resolve(load_settings().database_url, tenant)
        return Filters.from_options(**kw)
    except ValueError as exc:
        fail(str(exc))


def results(
    batch: int = BATCH, lane: str = LANE, state: str = STATE, code: str = CODE,
    verdict: str = VERDICT, sim_min: float = SIM_MIN, sim_max: float = SIM_MAX,
    since: str = SINCE, until: str = UNTIL, key_prefix: str = KEY_PREFIX,
    tenant: str = TENANT,
    sort: str = typer.Option("-id", help="id, created, finished, key, state, code, attempts "
                             "or sim; a leading - sorts descending"),
    page: int = typer.Option(1, help="Page number (from 1)"),
    limit: int = typer.Option(50, help="Rows per page"),
) -> None:
    """A table of jobs and their outcomes, filtered, sorted and paged (newest first)."""
    from faceid_batch.admin import queries
    from faceid_batch.admin.report import format_results_table

    filters = _filters(batch=batch, lane=lane, state=state, code=code, verdict=verdict,
                       sim_min=sim_min, sim_max=sim_max, since=since, until=until,
                       key_prefix=key_prefix, tenant=tenant)
    try:
        listing = queries.list_results(load_settings().database_url, filters,
                                       queries.Page(sort=sort, page=page, limit=limit))
    except queries.QueryError as exc:
        fail(str(exc))
    typer.echo(format_results_table(listing.rows))
    if listing.has_more:
        typer.echo(f"(more: --page {page + 1})")


def show(
    job_id: int = typer.Argument(..., metavar="JOB"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
    save_images: str = typer.Option(
        None, "--save-images", metavar="DIR",
        help="Also write the best frame (and the ID photo, when COS is configured) to DIR; "
             "each image written is recorded in the access audit as cli:<user>@<host>"),
) -> None:
    """One job: every attempt with its RequestId and code, the result, the best frame."""
    from faceid_batch.admin import queries

    settings = load_settings()
    shown = queries.show(settings.database_url, job_id)
    if shown is None:
        fail(f"no job {job_id}", 1)
    if save_images:
        for line in _save_images(settings, job_id, save_images):
            typer.echo(line, err=True)
    if as_json:
        typer.echo(json.dumps(shown, default=str, indent=2))
        return
    job, result, frame = shown["job"], shown["result"], shown["best_frame"]
    for name in ("id", "key", "batch_id", "lane", "state", "liveness_type", "attempts", "code",
                 "passed", "error", "photo_key", "video_key", "created_at", "finished_at"):
        typer.echo(f"{name:>14}: {job[name] if job[name] is not None else '-'}")
    typer.echo("\nattempts:")
    for a in shown["attempts"]:
        typer.echo(f"  #{a['number']} {a['started_at']} {a['code']} ({a['kind']}) "
                   f"RequestId={a['request_id'] or '-'} http={a['http_status'] or '-'} "
                   f"{a['latency_ms']} ms")
    if result:
        typer.echo(f"\nresult: {result['result']} sim={result['sim']} passed={result['passed']} "
                   f"threshold={result['threshold']} RequestId={result['request_id']}")
    if frame:
        typer.echo(f"best frame: {frame['location']} size={frame['size']} md5={frame['md5']}")


def _save_images(settings: Settings, job_id: int, directory: str) -> list[str]:
    """Write the job's face images to ``directory`` (mode 0600); return one note per image.

    The audit row is written after the image is read and before the file is: when the audit
    cannot be written, no file is.
    """
    from faceid_batch.admin import audit, queries
    from faceid_batch.admin.images import sniff

    actor, host = audit.cli_actor()
    os.makedirs(directory, exist_ok=True)
    notes = []

    def keep(what: str, content: bytes) -> None:
        ext = {"image/png": ".png", "image/jpeg": ".jpg"}.get(sniff(content[:16]), ".bin")
        path = os.path.join(directory, f"job-{job_id}-{what}{ext}")
        audit.record(settings.database_url, actor=actor, surface="cli", what=what,
                     job_id=job_id, remote=host, detail=os.path.abspath(path))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        notes.append(f"{what}: written to {path}")

    frame = queries.best_frame_bytes(settings.database_url, job_id)
    if frame:
        keep("best_frame", frame)
    else:
        notes.append("best_frame: none stored for this job")
    key = queries.photo_key(settings.database_url, job_id)
    if not key or not settings.cos_bucket:
        notes.append("id_photo: not saved (" + ("no ID photo staged" if not key
                                                 else "COS_BUCKET is not set") + ")")
        return notes
    photo = _fetch_id_photo(settings, key)
    if photo is None:
        notes.append("id_photo: not saved (COS did not return it; purged?)")
    else:
        keep("id_photo", photo)
    return notes


def _fetch_id_photo(settings: Settings, key: str) -> bytes | None:
    import requests

    from faceid_batch.stage.storage import MediaStager

    try:
        # A photo is at most 3 MB after Base64, so one read in memory is fine.
        answer = requests.get(MediaStager(settings).presign(key), timeout=(5, 30))
    except (SettingsError, requests.RequestException):
        return None
    return answer.content if answer.status_code == 200 and answer.content else None


def export(
    fmt: str = typer.Option("csv", "--format", help="csv or jsonl"),
    output: str = typer.Option(None, "--output", "-o", help="File to write (default: stdout)"),
    batch: int = BATCH, lane: str = LANE, state: str = STATE, code: str = CODE,
    verdict: str = VERDICT, sim_min: float = SIM_MIN, sim_max: float = SIM_MAX,
    since: str = SINCE, until: str = UNTIL, key_prefix: str = KEY_PREFIX,
    tenant: str = TENANT,
) -> None:
    """Stream matching jobs to CSV (formulas neutralised) or JSONL, in id order."""
    from faceid_batch.admin import queries

    if fmt not in ("csv", "jsonl"):
        fail(f"--format: must be csv or jsonl, got {fmt!r}")
    filters = _filters(batch=batch, lane=lane, state=state, code=code, verdict=verdict,
                       sim_min=sim_min, sim_max=sim_max, since=since, until=until,
                       key_prefix=key_prefix, tenant=tenant)
    rows = queries.iter_results(load_settings().database_url, filters)
    write = queries.write_csv if fmt == "csv" else queries.write_jsonl
    if output:
        with open(output, "w", newline="", encoding="utf-8") as out:
            n = write(rows, out)
        typer.echo(f"{n} rows written to {output}", err=True)
    else:
        write(rows, sys.stdout)


def stats(
    batch: int = BATCH, since: str = SINCE, until: str = UNTIL,
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Pass rate, outcome codes, attempts per job and throughput per minute."""
    from faceid_batch.admin import queries

    filters = _filters(batch=batch, since=since, until=until)
    st = queries.stats(load_settings().database_url, filters)
    if as_json:
        typer.echo(json.dumps(st, default=str, indent=2))
        return
    rate = "-" if st["pass_rate"] is None else f"{st['pass_rate'] * 100:.1f} %"
    typer.echo(f"jobs {st['jobs']}  finished {st['finished']}  passed {st['passed']}  "
               f"failed {st['failed']}  pass rate {rate}")
    typer.echo("states: " + "  ".join(f"{k}={v}" for k, v in st["by_state"].items()))
    typer.echo("\noutcome codes:")
    for name, n in st["codes"].items():
        typer.echo(f"  {n:>8}  {name}")
    typer.echo("\nattempts per job:")
    for a, n in st["attempts"].items():
        typer.echo(f"  {a:>3}: {n}")
    typer.echo("\nfinished per minute:")
    for minute, n in st["per_minute"].items():
        typer.echo(f"  {minute}  {n}")


def admin(
    host: str = typer.Option("127.0.0.1", help="Address to listen on"),
    port: int = typer.Option(8088, help="Port to listen on"),
) -> None:
    """Serve the admin API and review page (every route needs an admin token)."""
    settings = load_settings()
    from faceid_batch.admin.app import AdminConfigError, create_app

    try:
        app = create_app(settings)
    except AdminConfigError as exc:
        fail(str(exc))
    if app.state.link_key_source == "random per process":
        typer.echo("note: neither ADMIN_LINK_SECRET nor ADMIN_TOKEN is set: image links are "
                   "signed with a key of this process and stop working when it restarts",
                   err=True)
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info")
