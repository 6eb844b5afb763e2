"""Times as the product keeps them: aware, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_aware(value: datetime) -> datetime:
    """An aware datetime: SQLite hands stored times back naive, and they are UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def parse_time(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time as an aware UTC datetime (a naive one is taken as UTC); a ValueError
    names the option or field ``name``."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name}: not an ISO 8601 time: {value!r}") from None
    return as_aware(parsed).astimezone(UTC)
