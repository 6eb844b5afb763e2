"""``faceid-batch cost``: billable calls, retries, calls avoided, and the estimated amount.

Each command imports what it runs inside its function, so a command loads only its own
dependencies (a query does not load Celery or the COS SDK).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from faceid_batch.cli.common import fail, load_settings, parse_time

COST_HELP = """What FaceID calls cost for a batch and/or a period, and what was avoided.

\b
billable      calls Tencent bills: Success and FailedOperation.*
              (billing.py; BILLING_OVERRIDES changes it)
not billable  InvalidParameter*, InternalError*, UnauthorizedOperation*,
              gateway refusals (RequestLimitExceeded, AuthFailure*...),
              calls that got no answer (timeouts, network errors)
transient     billable calls answered with a transient code (e.g.
              FailedOperation.DownLoadTimeoutError): paid, no verdict,
              so the job called again (or gave up at MAX_ATTEMPTS);
              free transient answers (InternalError) are not counted
preflight     jobs refused before any call (state refused)
dedupe        submissions answered by an existing job
              (the sum of dedupe_hits.count)
amount        billable x FACEID_PRICE_PER_CALL, FACEID_PRICE_CURRENCY

\b
Period: calls by when they were sent, refusals by job creation,
dedupe by when it happened. --since inclusive, --until exclusive
(ISO 8601, UTC unless an offset is given). With --batch or
--tenant as well, all must hold.
"""


if TYPE_CHECKING:
    import typer


def register(app: typer.Typer) -> None:
    """Add ``faceid-batch cost`` to the command line."""
    import typer

    @app.command(help=COST_HELP)
    def cost(
        batch: str = typer.Option(None, "--batch", help="Batch id or name"),
        since: str = typer.Option(None, help="From this time (ISO 8601, inclusive)"),
        until: str = typer.Option(None, help="Until this time (ISO 8601, exclusive)"),
        fmt: str = typer.Option("text", "--format", help="text or json"),
        tenant: str = typer.Option(None, "--tenant", help="Only this tenant's jobs"),
    ) -> None:
        from faceid_batch.admin.cost import cost_report

        if fmt not in ("text", "json"):
            fail(f"--format: must be text or json, got {fmt!r}")
        settings = load_settings()
        try:
            report = cost_report(settings, batch, parse_time(since, "--since"),
                                 parse_time(until, "--until"), tenant)
        except ValueError as exc:  # a bad time, or CostError: no such batch
            fail(str(exc))
        if fmt == "json":
            typer.echo(json.dumps(report.to_json(), indent=2))
        else:
            typer.echo(report.describe())
