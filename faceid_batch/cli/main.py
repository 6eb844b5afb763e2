"""The ``faceid-batch`` command line.

Each command imports what it runs inside its function, so a command loads only its own
dependencies (a query does not load Celery or the COS SDK).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from faceid_batch.call.breaker import AccountBreaker

from faceid_batch.cli import admin, audit, batch, cost, purge, tenant
from faceid_batch.cli.common import fail, load_settings
from faceid_batch.settings import SettingsError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Batch identity checks with Tencent Cloud FaceID VideoLivenessCompare.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema (Alembic).")
app.add_typer(db_app, name="db")





@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Bring the database schema to REVISION (default: head)."""
    from faceid_batch import migrate

    settings = load_settings()
    migrate.upgrade(settings.database_url, revision)
    typer.echo(f"database at revision {migrate.current(settings.database_url)}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision."""
    from faceid_batch import migrate

    typer.echo(migrate.current(load_settings().database_url) or "(none)")


@app.command()
def submit(
    photo: str = typer.Option(..., help="ID photo: path, http(s) URL or cos://bucket/key"),
    video: str = typer.Option(..., help="Selfie video: path, http(s) URL or cos://bucket/key"),
    liveness_type: str = typer.Option("SILENT", "--liveness-type", "-t",
                                      help="LIP, ACTION or SILENT"),
    validate_data: str = typer.Option(None, "--validate-data", "-d",
                                      help="LIP: 4-digit code; ACTION: e.g. 1,2; SILENT: none"),
    key: str = typer.Option(..., "--key", "-k", help="Idempotency key (unique per job)"),
    lane: str = typer.Option("onboarding", help="onboarding or backfill"),
    region: str = typer.Option(None, help="FaceID region it is verified in (default: "
                                          "FACEID_REGION)"),
) -> None:
    """Validate and enqueue one verification job; print its id (exit 3: refused by preflight,
    stored with the predicted code, nothing sent)."""
    from faceid_batch.intake.submit import JobSpec, SubmitError
    from faceid_batch.intake.submit import submit as do_submit

    settings = load_settings()
    try:
        settings.require_api()
        job_id, created = do_submit(settings, JobSpec(
            idempotency_key=key, photo=photo, video=video, liveness_type=liveness_type,
            validate_data=validate_data, lane=lane, region=region,
        ))
    except (SubmitError, SettingsError) as exc:
        fail(str(exc))
    if created:
        typer.echo(job_id)
        return
    from faceid_batch.db import session_scope
    from faceid_batch.models import Job, JobState

    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        state, why = (job.state, job.error_message) if job else (None, None)
    if state == JobState.REFUSED.value:
        # Stored, never sent, nothing charged: exit 3 so a script can tell it from accepted.
        typer.echo(f"{job_id} refused by preflight, no call made: {why}")
        raise typer.Exit(3)
    typer.echo(f"{job_id} (existing job for this key)")


@app.command()
def worker(
    pool: str = typer.Option("threads", help="Celery pool: threads, prefork, solo"),
    concurrency: int | None = typer.Option(
        None, "--concurrency", "-c", min=1,
        help="Calls in flight (default: the accounts' budget together x "
             "WORKER_CALL_SECONDS: 32 for one account at 20/s)"),
    queues: str = typer.Option("onboarding,backfill", "--queues", "-Q",
                               help="Lanes to consume, in priority order"),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
    beat: bool = typer.Option(False, "--beat", "-B",
                              help="Also run beat (the retention purge's schedule)"),
) -> None:
    """Run a Celery worker (same as: celery -A faceid_batch.worker worker -P threads ...)."""
    settings = load_settings(need_api=True)
    from faceid_batch.call import accounts
    from faceid_batch.worker import celery_app

    try:
        found = accounts.load(settings)  # names a missing key's variable before starting
    except SettingsError as exc:
        fail(str(exc))
    if concurrency is None:
        concurrency = accounts.threads_for(found, settings.worker_call_seconds)

    argv = ["worker", "-P", pool, "-c", str(concurrency), "-Q", queues,
            "--loglevel", loglevel, "--without-gossip", "--without-mingle"]
    celery_app.worker_main(argv + (["-B"] if beat else []))


@app.command()
def beat(loglevel: str = typer.Option("INFO", "--loglevel", "-l")) -> None:
    """Run beat: the retention purge's schedule, and a feeder candidate (one per site)."""
    load_settings()
    from faceid_batch.worker import celery_app

    celery_app.start(["beat", "--loglevel", loglevel,
                      "--schedule", "/tmp/faceid-batch-beat-schedule"])


@app.command()
def sweep() -> None:
    """Run the backstop sweep now (parked answers, hung jobs; the feeder runs it too)."""
    from faceid_batch.scheduling.recovery import sweep_stuck_jobs
    from faceid_batch.worker import resources

    load_settings()
    counts = sweep_stuck_jobs(resources())
    typer.echo(" ".join(f"{k}={v}" for k, v in counts.items()))


@app.command()
def api(
    host: str = typer.Option("127.0.0.1", help="Address to listen on"),
    port: int = typer.Option(8090, help="Port to listen on"),
    with_admin: bool = typer.Option(False, "--with-admin",
                                    help="Also serve the admin routes (admin tokens only)"),
) -> None:
    """Serve the producer API: POST /v1/verifications, GET /v1/verifications/{id}."""
    settings = load_settings(need_api=True)
    import uvicorn

    from faceid_batch.producer.app import create_app

    uvicorn.run(create_app(settings, with_admin=with_admin), host=host, port=port,
                log_level="info", proxy_headers=False, server_header=False)


@app.command("webhook-secret")
def webhook_secret() -> None:
    """Print a new WEBHOOK_SECRET in the Standard Webhooks form (whsec_...)."""
    from faceid_batch.outcome.webhooks import new_secret

    typer.echo(new_secret())


breaker_app = typer.Typer(no_args_is_help=True, help="The account breakers shared by all "
                          "workers: one per account (FACEID_ACCOUNTS_FILE).")
app.add_typer(breaker_app, name="breaker")


def _breakers(account: str | None) -> list[AccountBreaker]:
    """The breaker of ``account``, or of every account (in the accounts file's order)."""
    import redis

    from faceid_batch.call import accounts
    from faceid_batch.call.breaker import AccountBreaker

    settings = load_settings()
    try:
        names = [a.name for a in accounts.configured(settings)]
    except SettingsError as exc:
        fail(str(exc))
    if account is not None and account not in names:
        fail(f"--account {account!r}: no such account; the accounts are {', '.join(names)}")
    client = redis.Redis.from_url(settings.redis_url)
    return [AccountBreaker(client, probe_after=settings.breaker_probe_after, account=n)
            for n in names if account in (None, n)]


@breaker_app.command("status")
def breaker_status(
    account: str | None = typer.Option(None, "--account", help="Only this account's breaker "
                                "(default: every account's)"),
) -> None:
    """Show each account's breaker: may workers call FaceID on it (exit 1 when any shown is
    open)."""
    any_open = False
    for breaker in _breakers(account):
        state = breaker.state()
        any_open |= state.open
        typer.echo(f"{breaker.account}: {state.describe()}")
    raise typer.Exit(1 if any_open else 0)


@breaker_app.command("close")
def breaker_close(
    account: str | None = typer.Option(None, "--account", help="The account whose breaker to close "
                                "(needed when there are several)"),
    every: bool = typer.Option(False, "--all", help="Close every account's breaker"),
) -> None:
    """Close an account's breaker now (after the account was fixed); workers resume calling
    on it. With one account, no option is needed; with several, name one or give --all."""
    if account is not None and every:
        fail("give --account NAME or --all, not both")
    breakers = _breakers(account)
    if account is None and not every and len(breakers) > 1:
        fail("there are several accounts: give --account NAME (one of "
             f"{', '.join(b.account for b in breakers)}) or --all")
    for breaker in breakers:
        breaker.close()
        typer.echo(f"{breaker.account}: closed: calls allowed")


@app.command()
def demo(
    jobs: int = typer.Option(5, help="Sample jobs to run (at least 4)"),
    timeout: float = typer.Option(120.0, help="Seconds to wait for all outcomes"),
) -> None:
    """Run sample jobs end to end: local redis-server, the simulator, a real worker, SQLite."""
    from faceid_batch.local.demo import run_demo

    try:
        sys.exit(run_demo(jobs=max(4, jobs), timeout=timeout))
    except SettingsError as exc:
        fail(str(exc))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def simulator(ctx: typer.Context) -> None:
    """Run the bundled FaceID + COS simulator (arguments go to python -m faceid_sim)."""
    from faceid_sim.cli import main

    sys.exit(main(list(ctx.args)))

# The command groups: backfill and batch control, the purge, admin queries and the admin
# service, tokens and the access audit, cost, tenants.
for _group in (batch, purge, admin, audit, cost, tenant):
    _group.register(app)


def _main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    _main()
