"""What the benchmarks share: the simulator's fake keys, percentiles, timestamps, printing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Obviously fake keys: they only ever reach the bundled simulator.
SECRET_ID = "AKIDbenchFAKEkeyNOTrealXXXXXXXXXXX"
SECRET_KEY = "benchFAKEsecretKEYnotREAL0000000"


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), NaN for no values."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def ts(when: datetime) -> float:
    """Unix seconds of a stored time (SQLite hands back naive datetimes, stored as UTC)."""
    return when.replace(tzinfo=when.tzinfo or UTC).timestamp()


def print_scenarios(results: list[dict[str, Any]], width: int = 58) -> None:
    """Each scenario's figures, one a line."""
    for r in results:
        print()
        for k, v in r.items():
            print(f"  {k:<{width}} {v}")
