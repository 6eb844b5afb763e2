"""CLI commands for backfills and batch control, added to ``faceid-batch`` by ``register``.

    faceid-batch backfill MANIFEST [--report PATH] [--lane backfill] [--name NAME] [--weight W]
    faceid-batch batch status ID [--watch]
    faceid-batch batch pause|resume|cancel|retry-failed ID
    faceid-batch batch retry ID [--code CODE] [--dry-run] [--yes]
    faceid-batch batch resend-callbacks ID [--code CODE] [--verdict pass|fail] [--dry-run] [--yes]
    faceid-batch batch weight ID W
    faceid-batch batch report ID [--out DIR] [--partial]

Each command imports what it runs inside its function, so a command loads only its own
dependencies (a query does not load Celery or the COS SDK).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from faceid_batch.cli.common import fail, load_settings

if TYPE_CHECKING:
    from faceid_batch.bulk.backfill import BackfillResult
    from faceid_batch.bulk.batches import Actor
    from faceid_batch.settings import Settings

T = TypeVar("T")

batch_app = typer.Typer(no_args_is_help=True,
                        help="Control a backfill batch: status, pause, resume, cancel.")


def register(app: typer.Typer) -> None:
    """Add ``backfill`` and the ``batch`` group to the main command line."""
    app.command("backfill")(backfill)
    app.add_typer(batch_app, name="batch")




def backfill(
    manifest: Path = typer.Argument(..., help="CSV or JSONL: key, photo, video, "
                                    "liveness_type[, validate_data, metadata]"),
    report: Path = typer.Option(None, "--report",
                                help="Per-row error report (default: <manifest>.errors.csv)"),
    lane: str = typer.Option("backfill", help="Lane for the batch's jobs"),
    name: str = typer.Option(None, "--name", help="Batch name (default: the manifest's "
                             "absolute path); a re-run with the same name resumes it"),
    weight: float = typer.Option(None, "--weight", help="The batch's share of the budget "
                                 "against other batches due at the same time (default 1; "
                                 "a resumed batch keeps its own unless given)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar"),
    tenant: str = typer.Option(None, "--tenant", help="The tenant whose batch it is (its "
                               "keys; default: the default tenant)"),
) -> None:
    """Enqueue every good row of MANIFEST as a job of one batch; report the bad rows.

    Keys already known are not enqueued again, so a re-run after a crash inserts only what
    is missing. Prints the batch id first.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from faceid_batch import tenants
    from faceid_batch.bulk.backfill import run_backfill
    from faceid_batch.bulk.manifest import ManifestError

    settings = load_settings(need_api=True)
    try:
        tenant_id = tenants.resolve(settings.database_url, tenant)
    except tenants.TenantError as exc:
        fail(str(exc))
    # On stderr: stdout keeps the batch id and the summary for scripts.
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TextColumn("{task.fields[rows]}"), TimeElapsedColumn(),
                   console=Console(stderr=True), disable=not progress)
    task = bar.add_task("enqueuing", total=None, rows="")

    def started(batch_id: int, resumed: bool, state: str) -> None:
        typer.echo(f"batch {batch_id} " + ("resumed (same name)" if resumed else "created"))
        if state == "paused":
            typer.echo(f"batch {batch_id} is paused: new rows are stored but not run until "
                       f"`faceid-batch batch resume {batch_id}`")
        bar.start()

    def advanced(done: int, total: int, r: BackfillResult) -> None:
        bar.update(task, completed=done, total=total,
                   rows=f"{r.read:,} rows, {r.accepted:,} new, {r.bad:,} bad, "
                        f"{r.rate:,.0f} rows/s")

    try:
        result = run_backfill(settings, manifest, report_path=report, lane=lane, name=name,
                              weight=weight, on_start=started, on_progress=advanced,
                              tenant_id=tenant_id)
    except (ManifestError, ValueError, OSError) as exc:
        bar.stop()
        fail(str(exc))
    bar.stop()
    typer.echo(
        f"read {result.read:,} rows in {result.seconds:.1f}s ({result.rate:,.0f} rows/s): "
        f"{result.accepted:,} accepted, {result.known:,} duplicate (key already known, "
        f"not enqueued again), {result.bad:,} bad"
        + (f" ({result.refused:,} refused by preflight: stored as refused, never called)"
           if result.refused else "")
    )
    if result.parked:
        typer.echo(f"{result.parked:,} jobs stored but parked: the batch is paused")
    typer.echo(f"report: {result.report_path}"
               + ("" if result.bad else " (no bad rows)"))
    if result.stopped:
        fail(f"stopped early: {result.stopped}", code=1)


def _by() -> Actor:
    """The CLI's user as the actor of a batch action (its batch_actions row)."""
    from faceid_batch.admin.audit import cli_actor
    from faceid_batch.bulk.batches import Actor

    name, host = cli_actor()
    return Actor(name, "cli", None, host)


def _batch_call(fn: Callable[[Settings, int], T], batch_id: int) -> T:
    from faceid_batch.bulk.batches import BatchError

    try:
        return fn(load_settings(), batch_id)
    except BatchError as exc:
        fail(str(exc))


@batch_app.command("status")
def status(
    batch_id: int = typer.Argument(..., metavar="ID"),
    watch: bool = typer.Option(False, "--watch", "-w", help="Live progress until done"),
    interval: float = typer.Option(2.0, help="Seconds between refreshes with --watch"),
) -> None:
    """Counts by state and outcome, recent rate and ETA."""
    from faceid_batch.bulk import batches

    st = _batch_call(batches.status, batch_id)
    if not watch:
        typer.echo(batches.format_status(st))
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn(f"batch {batch_id}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}")) as bar:
        task = bar.add_task("", total=st.total or None, info="")

        def render(s: batches.BatchStatus) -> None:
            bar.update(task, total=s.total or None, completed=s.done,
                       info=f"{s.state}, {s.rate:.1f}/s, ETA {batches.format_eta(s)}")

        try:
            st = batches.watch(load_settings(), batch_id, render, interval=interval)
        except KeyboardInterrupt:
            st = batches.status(load_settings(), batch_id)
    typer.echo(batches.format_status(st))


@batch_app.command("pause")
def pause(batch_id: int = typer.Argument(..., metavar="ID")) -> None:
    """Stop calling for the batch; queued jobs wait (jobs already calling finish)."""
    from faceid_batch.bulk import batches

    parked = _batch_call(lambda s, bid: batches.pause(s, bid, _by()), batch_id)
    typer.echo(f"batch {batch_id} paused; {parked} waiting jobs parked (workers park any "
               "already on their way)")


@batch_app.command("resume")
def resume(batch_id: int = typer.Argument(..., metavar="ID")) -> None:
    """Resume a paused batch: its parked jobs are sent again."""
    from faceid_batch.bulk import batches

    due = _batch_call(lambda s, bid: batches.resume(s, bid, _by()), batch_id)
    typer.echo(f"batch {batch_id} resumed; {due} parked jobs due again")


@batch_app.command("cancel")
def cancel(batch_id: int = typer.Argument(..., metavar="ID")) -> None:
    """Cancel the batch: jobs not yet called end failed (Local.BatchCancelled)."""
    from faceid_batch.bulk import batches

    closed = _batch_call(lambda s, bid: batches.cancel(s, bid, _by()), batch_id)
    typer.echo(f"batch {batch_id} cancelled; {closed} jobs closed before any call")


@batch_app.command("retry-failed")
def retry_failed(batch_id: int = typer.Argument(..., metavar="ID")) -> None:
    """Queue the batch's failed jobs again, with fresh attempts."""
    from faceid_batch.bulk import batches

    n = _batch_call(batches.retry_failed, batch_id)
    typer.echo(f"batch {batch_id}: {n} failed jobs queued again")


def _confirm(yes: bool, question: str) -> None:
    """Go on if --yes was given or the operator says yes; otherwise stop, changing nothing."""
    if not yes and not typer.confirm(question, default=False):
        typer.echo("nothing changed")
        raise typer.Exit(1)


@batch_app.command("retry")
def retry(
    batch_id: int = typer.Argument(..., metavar="ID"),
    code: str | None = typer.Option(None, "--code", help="Only the jobs that failed with "
                                    "this result code (e.g. Local.SourceTimeout)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (jobs by code, "
                                 "estimated calls and cost) and change nothing"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation"),
) -> None:
    """Run the batch's failed jobs again from their first attempt, after a dry run.

    Only jobs that ended failed (no verdict) are retried, never a completed job: a verdict,
    passed or not, is final and was paid for. Prints the plan, asks for confirmation
    (unless --yes), then runs exactly the jobs the plan counted; if that number changed
    meanwhile, nothing is done. Jobs closed by a cancel are never retried.
    """
    from faceid_batch.admin.audit import cli_actor
    from faceid_batch.bulk import batches

    settings = load_settings()
    try:
        plan = batches.retry_plan(settings, batch_id, code)
        typer.echo(plan.describe())
        if dry_run or not plan.jobs:
            typer.echo("dry run: nothing changed" if dry_run else "nothing to retry")
            return
        _confirm(yes, f"Run these {plan.jobs:,} jobs again?")
        actor, host = cli_actor()
        n = batches.retry(settings, batch_id, code, actor=actor, expect=plan.jobs,
                          surface="cli", remote=host)
    except batches.BatchError as exc:
        fail(str(exc))
    typer.echo(f"batch {batch_id}: {n:,} failed jobs queued again"
               + (" (parked until the batch resumes)" if plan.paused else ""))


@batch_app.command("resend-callbacks")
def resend_callbacks(
    batch_id: int = typer.Argument(..., metavar="ID"),
    code: str | None = typer.Option(None, "--code", help="Only the jobs that ended with "
                                    "this result code"),
    verdict: str | None = typer.Option(None, "--verdict", metavar="pass|fail",
                                       help="Only completed jobs with this verdict"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print how many callbacks would "
                                 "be queued, by code, and change nothing"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation"),
) -> None:
    """Queue the completion callback again for the batch's finished jobs, after a dry run.

    Only jobs that have a callback URL and no callback still pending; each gets a new
    webhook-id. No FaceID call, no cost. Prints the plan, asks for confirmation (unless
    --yes), then queues exactly what it counted; if that number changed, nothing is done.
    """
    from faceid_batch.admin.audit import cli_actor
    from faceid_batch.bulk import batches

    verdicts = {"pass": True, "fail": False, None: None}
    if verdict not in verdicts:
        fail(f"--verdict {verdict}: pass or fail")
    passed = verdicts[verdict]
    settings = load_settings()
    try:
        plan = batches.resend_plan(settings, batch_id, code, passed)
        typer.echo(plan.describe())
        if dry_run or not plan.jobs:
            typer.echo("dry run: nothing changed" if dry_run else "nothing to send")
            return
        _confirm(yes, f"Queue these {plan.jobs:,} callbacks again?")
        actor, host = cli_actor()
        n = batches.resend_callbacks(settings, batch_id, code, passed, actor=actor,
                                     expect=plan.jobs, surface="cli", remote=host)
    except batches.BatchError as exc:
        fail(str(exc))
    typer.echo(f"batch {batch_id}: {n:,} callbacks queued again")


@batch_app.command("weight")
def weight(batch_id: int = typer.Argument(..., metavar="ID"),
           value: float = typer.Argument(..., metavar="W")) -> None:
    """Set the batch's share of the budget against other batches due at the same time."""
    from faceid_batch.bulk import batches

    _batch_call(lambda settings, bid: batches.set_weight(settings, bid, value, _by()),
                batch_id)
    typer.echo(f"batch {batch_id}: weight {value:g} (the feeder uses it within a second)")


@batch_app.command("report")
def report(
    batch_id: int = typer.Argument(..., metavar="ID"),
    out: Path = typer.Option(Path("."), "--out", help="Directory for the two files "
                             "(made if missing; default: the current directory)"),
    partial: bool = typer.Option(False, "--partial", help="Report a batch that has not "
                                 "ended yet (jobs still waiting or running)"),
) -> None:
    """Write the end-of-run report: a CSV row per job and a JSON summary, with their hashes.

    batch-ID-report.csv lists the jobs in manifest order; batch-ID-summary.json holds the
    counts, pass rate, error mix, cost, duration and throughput, the SHA-256 of the CSV and
    of the manifest. Refused while jobs are waiting or running, unless --partial.
    """
    from faceid_batch.admin.batch_report import format_summary, write_report

    try:
        files = _batch_call(lambda settings, bid: write_report(settings, bid, out, partial),
                            batch_id)
    except OSError as exc:
        fail(f"--out {out}: {exc}")
    typer.echo(f"batch {batch_id} report" + (" (partial)" if files.summary["partial"] else ""))
    typer.echo(f"  rows:    {files.csv_path} ({files.rows} jobs)")
    typer.echo(f"  summary: {files.summary_path}")
    typer.echo(f"  report sha256:   {files.report_sha256}")
    typer.echo(f"  manifest sha256: {files.manifest_sha256 or 'unknown (not recorded)'}")
    typer.echo(format_summary(files.summary))
