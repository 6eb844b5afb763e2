"""Tenants, added to ``faceid-batch`` by ``register``.

    faceid-batch tenant add NAME --regions R[,R] [--accounts A[,A]] [--max-calls-per-day N]
                            [--weight W]
    faceid-batch tenant list
    faceid-batch tenant show NAME [--json]
    faceid-batch tenant quota NAME (--max-calls-per-day N | --none)
    faceid-batch tenant secret rotate NAME     prints the new whsec_ once
    faceid-batch tenant secret drop-previous NAME

Each command imports what it runs inside its function, so a command loads only its own
dependencies.
"""

from __future__ import annotations

import json

import typer

from faceid_batch.cli.common import fail, load_settings

tenant_app = typer.Typer(no_args_is_help=True, help="Tenants: keys, webhook secrets, shares "
                         "and quotas per producer organisation.")
secret_app = typer.Typer(no_args_is_help=True, help="A tenant's webhook signing secrets.")
tenant_app.add_typer(secret_app, name="secret")


def register(app: typer.Typer) -> None:
    """Add ``tenant add|list|show|quota|secret`` to the main command line."""
    app.add_typer(tenant_app, name="tenant")


@tenant_app.command("add")
def tenant_add(
    name: str = typer.Argument(..., help="Lower-case letters, digits, . _ -"),
    regions: str = typer.Option(None, "--regions", help="FaceID regions its jobs may use, "
                                "comma-separated (e.g. ap-bangkok); not given: any"),
    accounts: str = typer.Option(None, "--accounts", help="Accounts (names in the accounts "
                                 "file) that may call for it, comma-separated; not given: any"),
    max_calls_per_day: int = typer.Option(None, "--max-calls-per-day",
                                          help="New submissions are refused (429) once its "
                                          "calls today (UTC) reach this"),
    weight: float = typer.Option(1.0, "--weight", help="Its share of the onboarding lane "
                                 "against the other tenants"),
) -> None:
    """Create a tenant; give it a submit token with `token add NAME --tenant T --scope submit`."""
    from faceid_batch import tenants
    from faceid_batch.call.accounts import configured
    from faceid_batch.settings import SettingsError

    settings = load_settings()
    try:
        # The accounts file's names (no secret is read), to refuse an account it lacks.
        known = [a.name for a in configured(settings)]
    except SettingsError as exc:
        fail(str(exc))
    try:
        info = tenants.add(settings.database_url, name, tenants.split_list(regions),
                           tenants.split_list(accounts), max_calls_per_day, weight,
                           known_accounts=known)
    except tenants.TenantError as exc:
        fail(str(exc))
    typer.echo(f"tenant {info.name!r} created (id {info.id}); its callbacks need a secret: "
               f"faceid-batch tenant secret rotate {info.name}")


@tenant_app.command("list")
def tenant_list() -> None:
    """Every tenant: regions, accounts, quota, weight, calls today."""
    from faceid_batch import tenants

    url = load_settings().database_url
    typer.echo(f"{'name':<20} {'regions':<24} {'accounts':<20} {'calls/day':>10} "
               f"{'today':>8} {'weight':>6} secret")
    for t in tenants.list_all(url):
        typer.echo(f"{t.name:<20} {_join(t.regions):<24} {_join(t.accounts):<20} "
                   f"{t.max_calls_per_day or '-':>10} {tenants.calls_on(url, t.id):>8} "
                   f"{t.weight:>6g} {_secret(t)}")


@tenant_app.command("show")
def tenant_show(name: str = typer.Argument(...),
                as_json: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """One tenant; its webhook secrets only as fingerprints."""
    from faceid_batch import tenants

    url = load_settings().database_url
    t = tenants.get(url, name)
    if t is None:
        fail(f"no tenant named {name!r}", 1)
    shown = {"id": t.id, "name": t.name, "regions": t.regions, "accounts": t.accounts,
             "max_calls_per_day": t.max_calls_per_day, "calls_today": tenants.calls_on(url, t.id),
             "weight": t.weight, "created_at": t.created_at.isoformat(),
             "webhook_secrets": list(t.secrets) or None}
    if as_json:
        typer.echo(json.dumps(shown, indent=2))
        return
    for key, value in shown.items():
        if key == "webhook_secrets":
            value = _secret(t)
        elif isinstance(value, list):
            value = _join(value)
        typer.echo(f"{key:>18}: {'-' if value is None else value}")


@tenant_app.command("quota")
def tenant_quota(name: str = typer.Argument(...),
                 max_calls_per_day: int = typer.Option(None, "--max-calls-per-day"),
                 none: bool = typer.Option(False, "--none", help="Remove the quota")) -> None:
    """Set or remove a tenant's daily quota of calls."""
    from faceid_batch import tenants

    if (max_calls_per_day is None) == (not none):
        fail("give --max-calls-per-day N or --none")
    try:
        tenants.set_quota(load_settings().database_url, name, None if none else max_calls_per_day)
    except tenants.TenantError as exc:
        fail(str(exc))
    typer.echo(f"tenant {name!r}: " + ("no quota" if none else
                                        f"at most {max_calls_per_day} calls a day"))


@secret_app.command("rotate")
def secret_rotate(name: str = typer.Argument(...)) -> None:
    """Give the tenant a new webhook secret and print it once (alone on the last line).
    Callbacks are signed with it and the previous one until the next rotation or
    `drop-previous`."""
    from faceid_batch import tenants

    try:
        secret = tenants.rotate_secret(load_settings().database_url, name)
    except tenants.TenantError as exc:
        fail(str(exc))
    typer.echo(f"tenant {name!r}: new webhook secret; give it to its receivers now, it is "
               "not shown again:", err=True)
    typer.echo(secret)


@secret_app.command("drop-previous")
def secret_drop_previous(name: str = typer.Argument(...)) -> None:
    """Sign the tenant's callbacks with its current secret only."""
    from faceid_batch import tenants

    try:
        dropped = tenants.drop_previous_secret(load_settings().database_url, name)
    except tenants.TenantError as exc:
        fail(str(exc))
    typer.echo(f"tenant {name!r}: " + ("previous secret dropped" if dropped
                                        else "had no previous secret"))


def _join(values: list[str] | None) -> str:
    return "(any)" if values is None else ",".join(values)


def _secret(t: object) -> str:
    from faceid_batch.tenants import DEFAULT_TENANT_ID, TenantInfo

    assert isinstance(t, TenantInfo)
    if t.secrets:
        return " ".join(t.secrets) + (" (rotating)" if len(t.secrets) == 2 else "")
    return "WEBHOOK_SECRET" if t.id == DEFAULT_TENANT_ID else "none"
