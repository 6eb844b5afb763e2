"""``faceid-batch purge``: the retention purge and erasure requests (see admin/purge.py).

Each command imports what it runs inside its function, so a command loads only its own
dependencies (a query does not load Celery or the COS SDK).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from faceid_batch.cli.common import fail, load_settings

if TYPE_CHECKING:
    import typer


def register(app: typer.Typer) -> None:
    """Add ``faceid-batch purge`` to the command line."""
    import typer

    @app.command()
    def purge(
        older_than: float | None = typer.Option(
            None, "--older-than", min=0.001, metavar="DAYS",
            help="Purge jobs that ended more than DAYS ago (and uploads no job took)"),
        job: int | None = typer.Option(None, "--job", metavar="ID",
                                       help="Erase one job's face data now (by its id)"),
        key: str | None = typer.Option(None, "--key", metavar="KEY",
                                       help="Erase one job's face data now (by its key)"),
        tenant: str | None = typer.Option(None, "--tenant", metavar="NAME",
                                          help="The tenant whose key --key names (keys are "
                                               "unique per tenant; default: the default "
                                               "tenant)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="Count, delete nothing"),
    ) -> None:
        """Delete the media objects and best frames of finished jobs past the retention
        period (the verdict rows stay; jobs.media_purged_at marks them), or, with --job or
        --key, erase one job's media, best frame and biometric columns at once (a
        right-to-be-forgotten request; the row, its verdict and the audit stay, and the
        erasure is audited)."""
        from faceid_batch.admin.purge import PurgeError, erase, find_job, purge_media

        if sum(x is not None for x in (older_than, job, key)) != 1:
            fail("give exactly one of --older-than DAYS, --job ID, --key KEY")
        settings = load_settings(need_api=not dry_run)
        if older_than is not None:
            report = purge_media(settings, older_than, dry_run=dry_run)
            typer.echo(("dry run: " if dry_run else "") + report.describe())
            raise typer.Exit(1 if report.errors else 0)
        if dry_run:
            fail("--dry-run goes with --older-than; an erasure is not counted first")
        from faceid_batch import tenants
        from faceid_batch.admin.audit import cli_actor

        if tenant is not None and key is None:
            fail("--tenant goes with --key (a job id names one job already)")
        try:
            tenant_id = tenants.resolve(settings.database_url, tenant)
            job_id = find_job(settings, job_id=job, key=key, tenant_id=tenant_id)
            report = erase(settings, job_id, actor=cli_actor()[0])
        except (PurgeError, tenants.TenantError) as exc:
            fail(str(exc), 1)
        typer.echo(f"job {job_id} erased: {report.describe()}")
        for object_key, others in sorted(report.shared_with.items()):
            users = ", ".join(map(str, others)) or "an upload not yet stored as a job"
            typer.echo(f"  kept {object_key}: job(s) {users} use the same file; erase "
                       "them too to delete it")
