"""Settings from the environment, validated once at start.

Every field is read from the environment variable of the same name in upper case
(``DATABASE_URL``, ``FACEID_REGION`` ...). A bad value stops the program with an
error that names the variable; nothing is called or charged before that check.
"""

from __future__ import annotations

import logging
import os
import re
from decimal import Decimal
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

FACEID_REGIONS = ("ap-bangkok", "ap-hongkong", "ap-singapore")
Region = Literal["ap-bangkok", "ap-hongkong", "ap-singapore"]


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""


class Settings(BaseSettings):
    """All runtime settings. docs/settings.md says what each means and trades off."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str = "sqlite:///var/faceid.db"
    redis_url: str = "redis://127.0.0.1:6379/0"

    faceid_secret_id: SecretStr | None = None
    faceid_secret_key: SecretStr | None = None
    faceid_token: SecretStr | None = None
    faceid_region: Region = "ap-singapore"
    faceid_endpoint: str = "https://faceid.intl.tencentcloudapi.com"
    faceid_connect_timeout: float = Field(3.05, gt=0)
    faceid_read_timeout: float = Field(30.0, gt=0)
    faceid_rate_limit: int = Field(20, ge=1, le=10_000)
    # A TOML file of several accounts (call/accounts.py); None: the FACEID_SECRET_* account.
    faceid_accounts_file: str | None = None
    # The limiter's window is 1 s plus this: it must cover how much later than our own send
    # time (read after the write returned) one request reaches the API than another: the
    # network's jitter, and on a saturated host the kernel's delay in passing the bytes on
    # (up to 6.3 ms measured at 20/s on two saturated cores, docs/benchmarks.md).
    rate_limit_margin_ms: int = Field(10, ge=0, le=500)
    # The GIL switch interval in worker processes (sys.setswitchinterval), in ms: a task
    # thread whose rate-limit slot has come waits up to this long per busy thread ahead of it.
    worker_switch_interval_ms: float = Field(1.0, gt=0, le=100)
    # Seconds one call holds a worker thread (its wait for a slot, the API's answer): a
    # worker started without -c runs budget x this many threads (call/accounts.py).
    worker_call_seconds: float = Field(1.6, gt=0, le=60)

    cos_bucket: str | None = None
    cos_region: str | None = None
    cos_domain: str | None = None
    cos_scheme: Literal["http", "https"] = "https"
    cos_secret_id: SecretStr | None = None
    cos_secret_key: SecretStr | None = None
    cos_token: SecretStr | None = None
    cos_key_prefix: str = "faceid-batch/media/"
    # region=bucket,...: the bucket of each region (COS_BUCKET serves FACEID_REGION).
    cos_buckets: str = ""
    # region=host[:port],...: a custom COS domain per region (COS_DOMAIN: FACEID_REGION's).
    cos_domains: str = ""
    presign_expiry_seconds: int = Field(300, ge=30, le=3600)

    # The egress policy (egress.py) for every fetch and POST made on a producer's behalf:
    # networks (CIDRs) reached although they are not global (a media server on the LAN).
    egress_allow_networks: str = ""
    # One fetch of a producer's media URL (all its redirects) ends within this many seconds.
    source_fetch_seconds: float = Field(20.0, gt=0, le=600)
    # At most this share of a worker process's threads wait on producers' servers at once
    # (fetching their media URLs, POSTing their callbacks); a job or a callback that finds
    # them all busy waits in the schedule instead of holding a thread.
    egress_share: float = Field(0.25, gt=0, le=1)
    # Tries at staging a job's media (fetching its sources, writing them to COS) before
    # the job ends failed with the Local.* code of the last failure.
    stage_max_attempts: int = Field(3, ge=1, le=50)

    pass_threshold: float = Field(70.0, ge=0, le=100)
    max_attempts: int = Field(6, ge=1, le=50)
    retry_base_delay: float = Field(2.0, gt=0)
    retry_max_delay: float = Field(120.0, gt=0)
    bestframe_max_bytes: int = Field(10 * 1024 * 1024, gt=0)
    # How long Redis keeps a message a worker took but never acknowledged (it was killed)
    # before handing it out again. Jobs do not wait for it (leases bring them back); it only
    # bounds how late a duplicate message, or a held webhook retry, comes back.
    broker_visibility_timeout: int = Field(900, ge=5)
    breaker_probe_after: float = Field(30.0, gt=0)
    # The backstop for a worker that is alive but whose task is hung: a running job not
    # updated for this long is made due again even though its lease is renewed.
    stuck_after_seconds: int = Field(900, ge=5)
    # How often the feeder runs the backstop sweep (parked answers, hung jobs).
    sweep_interval_seconds: float = Field(30.0, gt=0)

    # The schedule (feeder.py, leases.py). A worker process's lease lives this long without
    # a heartbeat (renewed every third of it): a killed worker's jobs are due again this
    # long after the kill. The feeder's own lock has the same lifetime.
    worker_lease_seconds: float = Field(10.0, ge=2, le=300)
    # Messages the feeder keeps in each lane's Redis list (unset: two seconds of the rate
    # limit, at least 10). The backlog stays in the database.
    queue_depth: int | None = Field(None, ge=1, le=100_000)
    # How often the feeder tops the lanes up (and so how late a due retry can be sent).
    feed_interval_seconds: float = Field(0.25, gt=0, le=10)

    # The producer API (producer/): a lane refuses a new HTTP submission (429) while its
    # backlog is more than the budget answers in this many seconds.
    onboarding_max_wait_seconds: float = Field(10.0, gt=0, le=3600)
    backfill_max_wait_seconds: float = Field(3600.0, gt=0, le=30 * 86400)
    # A submission's whole body arrives within this many seconds, or it is answered 408.
    api_body_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    # Multipart uploads one API process reads at once; more are answered 503 (Retry-After).
    api_max_uploads: int = Field(64, ge=1, le=10_000)

    # Completion callbacks (notify.py): one or two whsec_ secrets shared with the receiver.
    webhook_secret: SecretStr | None = None
    webhook_timeout: float = Field(10.0, gt=0, le=120)
    # The delays between a callback's attempts (webhooks.DEFAULT_SCHEDULE: 13 attempts
    # over about 28 hours); attempts are one more than the delays.
    webhook_retry_schedule: str = "5s 30s 1m 2m 5m 15m 30m 1h 2h 4h 8h 12h"

    # Operations: worker log lines, the Prometheus endpoint, the retention purge.
    log_format: Literal["json", "text"] = "json"
    metrics_port: int = Field(9808, ge=0, le=65535)  # 0: no metrics endpoint
    metrics_addr: str = "127.0.0.1"  # compose sets 0.0.0.0 inside its network
    purge_after_days: float | None = Field(None, gt=0)  # unset: no scheduled purge
    purge_interval_seconds: float = Field(3600.0, gt=0)

    # Admin service: the bearer token every route needs, and how long its
    # signed image links live.
    admin_token: SecretStr | None = None
    admin_link_seconds: int = Field(60, ge=5, le=3600)
    # How long a review-page login lasts (its cookie's Max-Age and its row's expires_at).
    admin_session_seconds: int = Field(28800, ge=60, le=7 * 86400)

    # Access audit: the key of the admin's signed image links. Unset: derived
    # from ADMIN_TOKEN, else random per process (links then die with the process).
    admin_link_secret: SecretStr | None = None

    # Cost accounting: which answers are billed (billing.py), and the
    # price of one billed call for `faceid-batch cost`'s estimate.
    billing_overrides: str = ""  # "Code=billable|free,Prefix*=free", before the defaults
    faceid_price_per_call: Decimal = Field(Decimal("0"), ge=0)  # 0: amount not estimated
    faceid_price_currency: str = Field("USD", pattern=r"^[A-Z]{3}$")

    @property
    def lane_depth(self) -> int:
        """Messages the feeder keeps in each lane's Redis list."""
        return self.queue_depth or max(10, 2 * self.faceid_rate_limit)

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_form(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip():
            # Checked by the parser of the module that owns the setting. Imported here: settings
            # is the bottom layer, and its owner imports nothing that reads settings (see the
            # import-linter contracts in pyproject.toml), so this makes no cycle.
            from faceid_batch.outcome.webhooks import WebhookSecretError, secret_keys

            try:
                secret_keys(value.get_secret_value())
            except WebhookSecretError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _webhook_schedule_parse(cls, value: str) -> str:
        # Checked by the parser of the module that owns it (see _webhook_secret_form).
        from faceid_batch.outcome.webhooks import parse_schedule

        parse_schedule(value)
        return value

    @property
    def webhook_delays(self) -> tuple[float, ...]:
        """WEBHOOK_RETRY_SCHEDULE as seconds."""
        from faceid_batch.outcome.webhooks import parse_schedule

        return parse_schedule(self.webhook_retry_schedule)

    @field_validator("billing_overrides")
    @classmethod
    def _billing_overrides_parse(cls, value: str) -> str:
        # Checked by the parser of the module that owns the setting. Imported here: settings
        # is the bottom layer, and its owner imports nothing that reads settings (see the
        # import-linter contracts in pyproject.toml), so this makes no cycle.
        from faceid_batch.call.billing import parse_overrides

        parse_overrides(value)  # BillingError (a ValueError) names BILLING_OVERRIDES
        return value

    # Preflight (preflight.py): rule actions as "rule=refuse|warn|off,...",
    # the LIP duration window around the API's ~6 s, and the smallest photo side in pixels.
    preflight_rules: str = ""
    preflight_lip_min_seconds: float = Field(3.0, ge=0)
    preflight_lip_max_seconds: float = Field(10.0, gt=0)
    preflight_photo_min_side: int = Field(200, ge=0, le=10_000)

    @field_validator("preflight_rules")
    @classmethod
    def _preflight_rules_known(cls, value: str) -> str:
        # Checked by the parser of the module that owns the setting. Imported here: settings
        # is the bottom layer, and its owner imports nothing that reads settings (see the
        # import-linter contracts in pyproject.toml), so this makes no cycle.
        from faceid_batch.stage.preflight_rules import parse_rules

        parse_rules(value)
        return value

    @model_validator(mode="after")
    def _preflight_lip_window(self) -> Settings:
        if self.preflight_lip_min_seconds >= self.preflight_lip_max_seconds:
            raise ValueError("PREFLIGHT_LIP_MIN_SECONDS: must be below "
                             f"PREFLIGHT_LIP_MAX_SECONDS ({self.preflight_lip_max_seconds:g})")
        return self

    @field_validator("egress_allow_networks")
    @classmethod
    def _egress_networks_parse(cls, value: str) -> str:
        for part in value.replace(",", " ").split():
            try:
                ip_network(part, strict=False)
            except ValueError:
                raise ValueError(f"{part!r} is not a network (a CIDR such as 10.1.0.0/16)"
                                 ) from None
        return value

    @property
    def egress_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        """EGRESS_ALLOW_NETWORKS as networks."""
        return tuple(ip_network(p, strict=False)
                     for p in self.egress_allow_networks.replace(",", " ").split())

    @field_validator("faceid_endpoint")
    @classmethod
    def _endpoint_is_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// or http://")
        return value.rstrip("/")

    @field_validator("cos_key_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        value = value.strip("/")
        return f"{value}/" if value else ""

    @model_validator(mode="after")
    def _cos_region_matches(self) -> Settings:
        if self.cos_region is None:
            self.cos_region = self.faceid_region
        elif self.cos_region != self.faceid_region:
            # FaceID downloads the media from a bucket in its own region; a bucket
            # elsewhere gives DownLoadTimeoutError on every call and still costs money.
            raise ValueError(
                f"COS_REGION: must equal FACEID_REGION ({self.faceid_region}), "
                f"got {self.cos_region!r}"
            )
        return self

    @field_validator("cos_buckets", "cos_domains")
    @classmethod
    def _region_map_shape(cls, value: str) -> str:
        parse_region_map(value)
        return value

    @property
    def buckets(self) -> dict[str, str]:
        """The bucket of each region: COS_BUCKETS, and COS_BUCKET for FACEID_REGION."""
        found = parse_region_map(self.cos_buckets)
        if self.cos_bucket and self.cos_bucket.strip():
            found.setdefault(self.faceid_region, self.cos_bucket.strip())
        return found

    @property
    def domains(self) -> dict[str, str]:
        """The custom COS domain of each region that has one (COS_DOMAINS, and COS_DOMAIN
        for FACEID_REGION)."""
        found = parse_region_map(self.cos_domains)
        if self.cos_domain:
            found.setdefault(self.faceid_region, self.cos_domain)
        return found

    @model_validator(mode="after")
    def _buckets_agree(self) -> Settings:
        named = parse_region_map(self.cos_buckets).get(self.faceid_region)
        if named and self.cos_bucket and named != self.cos_bucket.strip():
            raise ValueError(f"COS_BUCKETS: names {named!r} for {self.faceid_region} "
                             f"(FACEID_REGION), but COS_BUCKET is {self.cos_bucket!r}")
        # COS_BUCKET (and COS_DOMAIN) are always FACEID_REGION's, however they were given.
        self.cos_bucket = self.cos_bucket or named
        self.cos_domain = self.cos_domain or parse_region_map(self.cos_domains).get(
            self.faceid_region)
        return self

    # -- credentials -----------------------------------------------------------
    def require_api(self) -> None:
        """Raise SettingsError naming each variable the API and COS calls need but lack."""
        # With an accounts file, the keys are the file's (call/accounts.py checks them).
        keys = () if self.faceid_accounts_file else (
            ("FACEID_SECRET_ID", self.faceid_secret_id),
            ("FACEID_SECRET_KEY", self.faceid_secret_key))
        missing = [
            name
            for name, value in (*keys, ("COS_BUCKET", self.buckets.get(self.faceid_region)))
            if value is None or not str(value.get_secret_value() if isinstance(value, SecretStr)
                                        else value).strip()
        ]
        if missing:
            raise SettingsError(
                "missing required setting(s): " + ", ".join(missing)
                + " (set them in the environment; see docs/settings.md)"
            )

    @property
    def cos_credentials(self) -> tuple[str, str, str | None]:
        """COS keys: the COS_* ones when set, else the same API key pair as FaceID."""
        sid = self.cos_secret_id or self.faceid_secret_id
        skey = self.cos_secret_key or self.faceid_secret_key
        token = self.cos_token or self.faceid_token
        if sid is None or skey is None:
            raise SettingsError("missing required setting(s): " + (
                "COS_SECRET_ID, COS_SECRET_KEY (the COS keys, with FACEID_ACCOUNTS_FILE)"
                if self.faceid_accounts_file else "FACEID_SECRET_ID, FACEID_SECRET_KEY"))
        return (
            sid.get_secret_value(),
            skey.get_secret_value(),
            token.get_secret_value() if token else None,
        )


_MAP_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")


def parse_region_map(value: str) -> dict[str, str]:
    """``region=value,region=value`` (COS_BUCKETS, COS_DOMAINS) as a dict; ValueError names
    what is wrong."""
    found: dict[str, str] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        region, sep, what = (part.strip() for part in item.partition("="))
        if not sep or not what:
            raise ValueError(f"expected region=value, got {item!r}")
        if region not in FACEID_REGIONS:
            raise ValueError(f"unknown region {region!r} (known: {', '.join(FACEID_REGIONS)})")
        if region in found:
            raise ValueError(f"region {region} is named twice")
        if not _MAP_VALUE.match(what):
            raise ValueError(f"{region}: {what!r} is not a bucket or host name")
        found[region] = what
    return found


def _describe(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = item.get("loc") or ()
        name = str(loc[0]).upper() if loc else ""
        msg = item.get("msg", "invalid")
        if item.get("type") == "literal_error" and name == "FACEID_REGION":
            msg = "must be one of " + ", ".join(FACEID_REGIONS)
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        got = item.get("input")
        shown = "" if got is None or "SECRET" in name or "TOKEN" in name else f" (got {got!r})"
        lines.append(f"{name}: {msg}{shown}" if name and not msg.startswith(name) else msg)
    return "invalid setting: " + "; ".join(lines)


# Settings that no longer exist, and what took their place: a value left in the
# environment is ignored, and said so.
RETIRED = {"WEBHOOK_MAX_ATTEMPTS": "WEBHOOK_RETRY_SCHEDULE",
           "WEBHOOK_RETRY_BASE_DELAY": "WEBHOOK_RETRY_SCHEDULE"}


def load_settings(**overrides: Any) -> Settings:
    """Read and validate settings; raise SettingsError with the variable's name."""
    for name, instead in RETIRED.items():
        if name in os.environ:
            logging.getLogger(__name__).warning("%s is no longer read (see %s); it is "
                                                "ignored", name, instead)
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise SettingsError(_describe(err)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return load_settings()
