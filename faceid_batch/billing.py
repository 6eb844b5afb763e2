"""Which FaceID answers Tencent bills, as data: one ordered table, first match wins.

Tencent bills a VideoLivenessCompare call that its service answered: ``Success`` and every
``FailedOperation.*`` (a verdict, and also the transient ones such as DownLoadTimeoutError:
the service ran and answered, so the call is paid even though it gave no verdict). Its
billing table does not bill ``InvalidParameter*``, ``InternalError*`` and
``UnauthorizedOperation*``. We extend that to every code the API gateway answers before the
service runs, and to calls that got no answer at all; each row says why.

A pattern is an exact code (``InternalError``) or a prefix ending in ``*``
(``InvalidParameter*`` also matches ``InvalidParameterValue.X``). ``BILLING_OVERRIDES``
(``Code=billable|free,Prefix*=free``) puts its entries before the defaults, so they win.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

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


_B, _F = True, False

# Exact codes first, then families; first match wins.
DEFAULT_RULES: tuple[BillingRule, ...] = (
    BillingRule("Success", _B, "the service answered with a verdict"),
    BillingRule("FailedOperation*", _B,
                "the service ran and answered (verdict or transient failure alike)"),
    # Tencent's billing table.
    BillingRule("InvalidParameter*", _F, "not billed (Tencent's billing table; also "
                "covers InvalidParameterValue*)"),
    BillingRule("InternalError*", _F, "not billed (Tencent's billing table): Tencent's fault"),
    BillingRule("UnauthorizedOperation*", _F,
                "not billed (Tencent's billing table): the account may not call"),
    # Refused by the API gateway before the service ran.
    BillingRule("AuthFailure*", _F, "credentials rejected at the gateway; the service never ran"),
    BillingRule("RequestLimitExceeded*", _F,
                "rate limit refused it at the gateway; the service never ran"),
    BillingRule("MissingParameter*", _F, "a bad request, like InvalidParameter"),
    BillingRule("UnknownParameter*", _F, "a bad request, like InvalidParameter"),
    BillingRule("InvalidAction*", _F, "unknown action: refused at the gateway"),
    BillingRule("NoSuchVersion*", _F, "unknown version: refused at the gateway"),
    BillingRule("UnsupportedRegion*", _F, "unsupported region: refused at the gateway"),
    BillingRule("UnsupportedOperation*", _F, "unsupported operation: refused, no service result"),
    BillingRule("UnsupportedProtocol*", _F, "unsupported protocol: refused at the gateway"),
    BillingRule("RequestSizeLimitExceeded*", _F, "body too large: refused at the gateway"),
    BillingRule("ServiceUnavailable*", _F, "Tencent-side outage: no service result"),
    BillingRule("ResourceUnavailable*", _F, "Tencent-side outage: no service result"),
    # Our own codes (faceid_client.py) for calls with no usable answer.
    BillingRule("ClientError.ConnectTimeout", _F, "never connected: nothing reached Tencent"),
    BillingRule("ClientError.ConnectionError", _F, "network error: no answer came back"),
    BillingRule("ClientError.ReadTimeout", _F,
                "no answer came back; Tencent may still have run and billed it "
                "(override to billable to count the worst case)"),
    BillingRule("ClientError.HttpStatus", _F, "non-200 from the gateway: no service result"),
    BillingRule("ClientError.BadResponse", _F, "no readable code to bill by"),
    BillingRule("ClientError*", _F, "no answer from Tencent"),
)

# A code no rule names: counted as billed, so an estimate errs high rather than low.
UNKNOWN = BillingRule("*", _B, "unknown code: counted as billed so the estimate errs high")


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


def current() -> BillingTable:
    """The table of this process's settings (BILLING_OVERRIDES)."""
    from faceid_batch.settings import get_settings

    return table(get_settings().billing_overrides)
