"""``faceid-batch purge``: the retention purge from the command line (see purge.py).

Each command imports what it runs inside its function, so a command loads only its own
dependencies (a query does not load Celery or the COS SDK).
"""

from __future__ import annotations

from faceid_batch.cli.common import load_settings


def register(app) -> None:  # type: ignore[no-untyped-def]
    """Add ``faceid-batch purge`` to the command line."""
    import typer

    @app.command()
    def purge(
        older_than: float = typer.Option(..., "--older-than", min=0.001, metavar="DAYS",
                                         help="Purge jobs that ended more than DAYS ago"),
        dry_run: bool = typer.Option(False, "--dry-run", help="Count, delete nothing"),
    ) -> None:
        """Delete the media objects and best frames of finished jobs past the retention
        period; the verdict rows stay (jobs.media_purged_at marks them)."""
        from faceid_batch.admin.purge import purge_media

        settings = load_settings()
        report = purge_media(settings, older_than, dry_run=dry_run)
        typer.echo(("dry run: " if dry_run else "") + report.describe())
        raise typer.Exit(1 if report.errors else 0)
