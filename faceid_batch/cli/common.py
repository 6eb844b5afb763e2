"""What every command group shares: failing with a clear message, loading the settings,
reading a time given on the command line (``times.parse_time``)."""

from __future__ import annotations

from typing import NoReturn

import typer

from faceid_batch.settings import Settings, SettingsError, get_settings
from faceid_batch.times import parse_time

__all__ = ["fail", "load_settings", "parse_time"]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: a usage error)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def load_settings(need_api: bool = False) -> Settings:
    """The settings, or a clear error naming the bad variable; ``need_api``: a command that
    calls FaceID or COS (their credentials checked)."""
    try:
        settings = get_settings()
        if need_api:
            settings.require_api()
        return settings
    except SettingsError as exc:
        fail(str(exc))
