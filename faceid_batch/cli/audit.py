"""Admin tokens and the access audit, added to ``faceid-batch`` by ``register``.

    faceid-batch token add NAME [--scope admin|submit] [--tenant T]   prints a new token
                                     once (only its SHA-256 is stored)
    faceid-batch token list          name, scope, created, last used, revoked (never a token)
    faceid-batch token revoke NAME   refused from the next request on, its image links too
    faceid-batch audit [--job ID] [--actor NAME] [--since T] [--until T] [--limit N]
                       [--format text|jsonl]

Each command imports what it runs inside its function, so a command loads only its own
dependencies (a query does not load Celery or the COS SDK).
"""

from __future__ import annotations

import sys
from datetime import datetime

import typer

from faceid_batch.cli.common import fail, load_settings, parse_time

token_app = typer.Typer(no_args_is_help=True,
                        help="Named bearer tokens: admin or submit scope (stored hashed).")


def register(app: typer.Typer) -> None:
    """Add ``token add|list|revoke`` and ``audit`` to the main command line."""
    app.add_typer(token_app, name="token")
    app.command("audit")(audit)


@token_app.command("add")
def token_add(name: str = typer.Argument(..., help="Who or what holds the token, e.g. alice"),
              scope: str = typer.Option("admin", "--scope", help="admin (the admin service) or "
                                        "submit (the producer API: its own verifications)"),
              tenant: str = typer.Option(None, "--tenant", help="The tenant it acts for (a "
                                         "submit token: default when not given; an admin "
                                         "token: every tenant when not given)"),
              ) -> None:
    """Create a token and print it once (alone on the last line); it cannot be shown again."""
    from faceid_batch import tenants
    from faceid_batch.admin import tokens

    url = load_settings().database_url
    try:
        tenant_id = None if tenant is None else tenants.resolve(url, tenant)
        token = tokens.add(url, name, scope, tenant_id)
    except (tokens.TokenError, tenants.TenantError) as exc:
        fail(str(exc))
    typer.echo(f"{scope} token {name!r} created; store it now, it is not shown again:",
               err=True)
    typer.echo(token)


@token_app.command("list")
def token_list() -> None:
    """Every token: name, created, last used, revoked."""
    from faceid_batch.admin import tokens

    rows = tokens.list_all(load_settings().database_url)
    typer.echo(f"{'name':<24} {'scope':<7} {'tenant':<16} {'created':<20} {'last used':<20} "
               "revoked")
    for t in rows:
        typer.echo(f"{t.name:<24} {t.scope:<7} {t.tenant or '(all)':<16} "
                   f"{_when(t.created_at):<20} {_when(t.last_used_at):<20} "
                   f"{_when(t.revoked_at)}")


@token_app.command("revoke")
def token_revoke(name: str = typer.Argument(...)) -> None:
    """Revoke a token: its requests and its image links get 401/403 from now on."""
    from faceid_batch.admin import tokens

    try:
        tokens.revoke(load_settings().database_url, name)
    except tokens.TokenError as exc:
        fail(str(exc), 1)
    typer.echo(f"token {name!r} revoked")


def audit(
    job: int = typer.Option(None, "--job", help="Only reads of this job id"),
    actor: str = typer.Option(None, "--actor", help="Only this token name or cli:user@host"),
    since: str = typer.Option(None, help="At or after (ISO 8601; UTC unless an offset is given)"),
    until: str = typer.Option(None, help="Before (ISO 8601)"),
    limit: int = typer.Option(100, help="At most this many rows, newest first"),
    fmt: str = typer.Option("text", "--format", help="text or jsonl"),
) -> None:
    """Who looked at which job's face images, when, from where, through which surface."""
    from faceid_batch.admin import audit as audit_mod

    if fmt not in ("text", "jsonl"):
        fail(f"--format: must be text or jsonl, got {fmt!r}")
    try:
        q = audit_mod.Query(job_id=job, actor=actor, since=parse_time(since, "since"),
                            until=parse_time(until, "until"), limit=limit)
        rows = audit_mod.entries(load_settings().database_url, q)
    except ValueError as exc:
        fail(str(exc))
    (audit_mod.write_text if fmt == "text" else audit_mod.write_jsonl)(rows, sys.stdout)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")
