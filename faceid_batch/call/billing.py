"""Which FaceID answers Tencent bills: one ordered table, first match wins.

The defaults are the error table's own rows (errors.py says of every code whether it is
billed, and why), so a code is classified and billed by one row.

A pattern is an exact code (``InternalError``) or a prefix ending in ``*``
(``InvalidParameter*`` also matches ``InvalidParameterValue.X``). ``BILLING_OVERRIDES``
(``Code=billable|free,Prefix*=free``) puts its entries before the defaults, so they win.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from faceid_batch.call.errors import EXACT, PREFIXES, UNKNOWN_FAILED_OPERATION, UNKNOWN_OTHER

SETTING = "BILLING_OVERRIDES"
_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.]*\*?$")


class BillingError(ValueError):
    """A bad ``BILLING_OVERRIDES`` entry; the message names the variable."""


@dataclass(frozen=True)
class BillingRule:
    pattern: str  # an exact code, or a prefix ending in "*"
    billable: bool
    why: str

    def matches(self, code: str) -> bool:
        if self.pattern.endswith("*"):
            return code.startswith(self.pattern[:-1])
        return code == self.pattern


def _default_rules() -> tuple[BillingRule, ...]:
    # The error table's rows in its own order of precedence: exact codes, then families,
    # then the fallback for a new FailedOperation.
    exact = [BillingRule(code, rule.billed, rule.billed_why) for code, rule in EXACT.items()]
    families = [BillingRule(prefix + "*", rule.billed, rule.billed_why)
                for prefix, rule in PREFIXES]
    new_failed = BillingRule("FailedOperation*", UNKNOWN_FAILED_OPERATION.billed,
                             UNKNOWN_FAILED_OPERATION.billed_why)
    return (*exact, *families, new_failed)


DEFAULT_RULES: tuple[BillingRule, ...] = _default_rules()

# A code no rule names: what the error table says of an unknown code.
UNKNOWN = BillingRule("*", UNKNOWN_OTHER.billed, UNKNOWN_OTHER.billed_why)


class BillingTable:
    """The rules in order (overrides first); ``decide`` returns the first that matches."""

    def __init__(self, rules: Iterable[BillingRule]) -> None:
        self.rules = tuple(rules)
        self._cache: dict[str, BillingRule] = {}

    def decide(self, code: str) -> BillingRule:
        rule = self._cache.get(code)
        if rule is None:
            rule = next((r for r in self.rules if r.matches(code)), UNKNOWN)
            if len(self._cache) < 10_000:  # codes are few; never grow without bound
                self._cache[code] = rule
        return rule

    def billable(self, code: str) -> bool:
        return self.decide(code).billable


def parse_overrides(text: str | None) -> tuple[BillingRule, ...]:
    """``Code=billable|free,Prefix*=free`` as rules; BillingError names the variable."""
    rules = []
    for raw in (text or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        pattern, sep, value = (part.strip() for part in entry.partition("="))
        if not sep:
            raise BillingError(f"{SETTING}: entry {entry!r} needs the form CODE=billable|free")
        if not _PATTERN.match(pattern):
            raise BillingError(f"{SETTING}: {pattern!r} is not an error code or a prefix "
                               "ending in *")
        if value.lower() not in ("billable", "free"):
            raise BillingError(f"{SETTING}: {entry!r}: the value must be billable or free")
        rules.append(BillingRule(pattern, value.lower() == "billable", f"{SETTING} override"))
    return tuple(rules)


@lru_cache(maxsize=8)
def table(overrides: str | None = None) -> BillingTable:
    """The default rules with ``overrides`` (a BILLING_OVERRIDES string) in front."""
    return BillingTable(parse_overrides(overrides) + DEFAULT_RULES)

