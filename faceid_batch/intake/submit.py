"""Submit a job: validate everything that can be checked for free, insert the row, enqueue.

The row is the job's place in the queue (schedule.py). An onboarding job is sent the moment
it is committed: its row is inserted already marked out, then its message goes to the
lane, so a person waiting never waits for the feeder; if the submitter dies before the
send, the feeder's lost-message check sends it seconds later, and if Redis is unreachable
the job is simply due and fed when Redis is back. With several tenants, a sign-up is sent
at once only while its tenant is under its share of the lane (scheduling/onboarding.py);
beyond it, it is inserted due and the feeder sends it in its tenant's turn. A
backfill-lane job is inserted due: the feeder sends it in its turn, so a producer of
millions never fills Redis.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from faceid_batch import messages, tenants
from faceid_batch.call import accounts
from faceid_batch.db import session_scope, write_scope
from faceid_batch.egress import EgressRefused, Policy
from faceid_batch.models import DEFAULT_TENANT_ID, DedupeHit, Job, JobState, Lane
from faceid_batch.outcome.notify import CallbackURLError, check_callback_url
from faceid_batch.scheduling import onboarding, schedule
from faceid_batch.settings import FACEID_REGIONS, Settings, get_settings
from faceid_batch.stage import preflight
from faceid_batch.stage.media import MediaError, inspect_local

log = logging.getLogger(__name__)

LIVENESS_TYPES = ("LIP", "ACTION", "SILENT")
_LIP_CODE = re.compile(r"^\d{4}$")
_ACTION_SEQ = re.compile(r"^[12](,[12])*$")
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


class SubmitError(ValueError):
    """The job cannot be accepted; the message names the field and the problem, and
    ``field`` names it for machines (the producer API's problem details)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class JobSpec:
    """One verification request as a producer gives it."""

    idempotency_key: str
    photo: str
    video: str
    liveness_type: str
    validate_data: str | None = None
    lane: str = Lane.ONBOARDING.value
    callback_url: str | None = None
    metadata: dict[str, Any] | None = None
    # Filled in by validate_spec for local files, so that staging need not hash them again.
    photo_md5: str | None = None
    video_md5: str | None = None
    # Filled in by validate_spec: preflight findings on the local files (None: nothing).
    # A caller that checked the media itself (the producer API) passes its findings here.
    preflight: list[dict[str, Any]] | None = None
    # The producer API token that submitted it (a submit token sees only its own jobs).
    submitted_by: int | None = None
    # The tenant it belongs to: its idempotency key is unique within that tenant.
    tenant_id: int = DEFAULT_TENANT_ID
    # The FaceID region it is verified in (None: FACEID_REGION); see check_region.
    region: str | None = None

    @property
    def refusal(self) -> dict[str, Any] | None:
        """The preflight finding that refuses this job, if any."""
        return preflight.Findings(self.preflight or []).refusal

    def refused_values(self) -> dict[str, Any]:
        """Job columns of a refused job (state, predicted code, reason, finished)."""
        finding = self.refusal
        assert finding is not None
        return schedule.refused_columns(finding["code"], preflight.describe(finding))


def validate_liveness(liveness_type: str, validate_data: str | None) -> str | None:
    """Check LivenessType and ValidateData against the API's rules; return the clean data."""
    if liveness_type not in LIVENESS_TYPES:
        raise SubmitError(
            f"liveness type {liveness_type!r}: must be one of {', '.join(LIVENESS_TYPES)}",
            "liveness_type")
    data = (validate_data or "").strip() or None
    if liveness_type == "LIP" and (data is None or not _LIP_CODE.match(data)):
        raise SubmitError(f"validate data {data!r}: LIP needs a 4-digit code such as 1234",
                          "validate_data")
    if liveness_type == "ACTION" and (data is None or not _ACTION_SEQ.match(data)):
        raise SubmitError(
            f"validate data {data!r}: ACTION needs an action sequence such as 1,2 or 2,1",
            "validate_data")
    if liveness_type == "SILENT" and data is not None:
        raise SubmitError(f"validate data {data!r}: SILENT takes no validate data",
                          "validate_data")
    return data


def is_remote(source: str) -> bool:
    return source.startswith(("http://", "https://", "cos://"))


def check_key(key: str | None) -> str:
    """The idempotency key, if it is one (1-200 printable characters, no spaces)."""
    if not _KEY.match(key or ""):
        raise SubmitError(
            "idempotency key: 1-200 printable characters without spaces are required", "key")
    assert key is not None
    return key


def check_lane(lane: str) -> str:
    if lane not in (Lane.ONBOARDING.value, Lane.BACKFILL.value):
        raise SubmitError(f"lane {lane!r}: must be onboarding or backfill", "lane")
    return lane


def check_region(settings: Settings, region: str | None,
                 tenant_id: int | None = None) -> str | None:
    """A job's region (None: FACEID_REGION, kept as None): a known one, served by an account
    (FACEID_ACCOUNTS_FILE) and with a bucket (COS_BUCKETS), and, for a job of ``tenant_id``,
    one its tenant may use, served by an account it may use (``tenant add --regions
    --accounts``); SubmitError says which is missing. Nothing is stored or called for a job
    refused here."""
    name = region or settings.faceid_region
    if name not in FACEID_REGIONS:
        raise SubmitError(f"region {name!r}: must be one of {', '.join(FACEID_REGIONS)}",
                          "region")
    if name not in accounts.regions_served(accounts.configured_cached(settings)):
        raise SubmitError(f"region {name}: no account serves it (FACEID_ACCOUNTS_FILE)",
                          "region")
    # FACEID_REGION's bucket is COS_BUCKET, a setting every process that stages requires.
    if name != settings.faceid_region and name not in settings.buckets:
        raise SubmitError(f"region {name}: no bucket for it (COS_BUCKETS)", "region")
    if tenant_id is not None:
        _check_tenant_region(settings, tenant_id, name)
    return region


def _check_tenant_region(settings: Settings, tenant_id: int, name: str) -> None:
    allowed = tenants.allowed_cached(settings.database_url, tenant_id)
    if allowed.regions is not None and name not in allowed.regions:
        raise SubmitError(f"region {name}: this tenant may use only "
                          f"{', '.join(allowed.regions) or 'no region'}; name one of them "
                          "in the request", "region")
    if allowed.accounts is not None and not any(
            a.name in allowed.accounts for a in accounts.serving(
                accounts.configured_cached(settings), name)):
        raise SubmitError(f"region {name}: none of the accounts this tenant may use "
                          f"({', '.join(allowed.accounts) or 'none'}) serves it", "region")


def validate_spec(spec: JobSpec, settings: Settings | None = None) -> JobSpec:
    """Every free check: key, lane, liveness rules, local media (format, size), and the
    preflight rules on local media (findings in ``preflight``; a refusal is not raised)."""
    settings = settings or get_settings()
    check_key(spec.idempotency_key)
    check_lane(spec.lane)
    check_region(settings, spec.region, spec.tenant_id)
    data = validate_liveness(spec.liveness_type, spec.validate_data)
    md5s: dict[str, str | None] = {"photo": None, "video": None}
    for kind, source in (("photo", spec.photo), ("video", spec.video)):
        if not source:
            raise SubmitError(f"{kind}: a path, http(s) URL or cos://bucket/key is required",
                              kind)
        if "?" in source and is_remote(source):
            # A query string may carry a signature; we never keep one.
            raise SubmitError(f"{kind}: URLs with a query string are not accepted", kind)
        if source.startswith(("http://", "https://")):
            check_source_url(settings, kind, source)
        elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source) and not is_remote(source):
            raise SubmitError(f"{kind}: {source.split('://', 1)[0]}:// is not a source: give a "
                              "path, an http(s) URL or cos://bucket/key", kind)
        elif not is_remote(source):
            try:
                md5s[kind] = inspect_local(kind, source).md5
            except MediaError as exc:
                raise SubmitError(str(exc), kind) from None
        else:
            # Known only when the submitter read the content itself (the producer API).
            md5s[kind] = getattr(spec, f"{kind}_md5")
    callback = check_callback(settings, spec.callback_url, spec.tenant_id)
    local = {kind: None if is_remote(src) else src
             for kind, src in (("photo", spec.photo), ("video", spec.video))}
    findings = preflight.check(settings, spec.liveness_type,
                               local["photo"], local["video"])
    stored = [*(spec.preflight or []), *(findings.stored() or [])] or None
    return JobSpec(**{**spec.__dict__, "validate_data": data, "callback_url": callback,
                      "photo_md5": md5s["photo"], "video_md5": md5s["video"],
                      "preflight": stored})


def check_source_url(settings: Settings, kind: str, url: str) -> str:
    """A media URL the egress policy does not refuse (its form, and its addresses when the
    name resolves now: the worker checks again when it fetches)."""
    try:
        Policy(settings.egress_networks).check(url)
    except EgressRefused as exc:
        raise SubmitError(f"{kind} URL {display_url(url)}: refused by the egress policy: "
                          f"{exc}", kind) from None
    return url


def display_url(url: str) -> str:
    """A URL as an error shows it: without credentials or query string."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def sent_at_once(lane: str) -> bool:
    """Whether a job of ``lane`` is sent when submitted (onboarding) or fed (backfill)."""
    return lane == Lane.ONBOARDING.value


def spec_columns(spec: JobSpec) -> dict[str, Any]:
    """The job columns a checked spec gives, the same for ``submit`` and a backfill's rows
    (the MD5s of local media among them, so staging does not hash them again)."""
    return dict(
        lane=spec.lane, liveness_type=spec.liveness_type, validate_data=spec.validate_data,
        photo_source=spec.photo, video_source=spec.video, photo_md5=spec.photo_md5,
        video_md5=spec.video_md5, callback_url=spec.callback_url, meta=spec.metadata,
        preflight=spec.preflight, submitted_by=spec.submitted_by, tenant_id=spec.tenant_id,
        region=spec.region,
    )


def _job_values(spec: JobSpec, out: bool | None = None) -> dict[str, Any]:
    if spec.refusal is not None:
        return {**spec_columns(spec), **spec.refused_values()}
    # Out (sent right after the commit) or due (fed in its turn): see the docstring.
    out = sent_at_once(spec.lane) if out is None else out
    return {**spec_columns(spec), **schedule.waiting_columns(out=out),
            **schedule.OUTCOME_CLEARED}


def _shares_lane(settings: Settings, spec: JobSpec) -> bool:
    """Whether storing this job out or due is decided by its tenant's share of the
    onboarding lane (a sign-up, in a deployment of several tenants)."""
    return sent_at_once(spec.lane) and spec.refusal is None and onboarding.shared(settings)


def _out_by_share(session: Session, settings: Settings, spec: JobSpec) -> int | None:
    """A sign-up goes out now, at the priority step its tenant's share gives, while its
    tenant is under its share (onboarding.py); else (None) it is stored due and the feeder
    sends it in its tenant's turn."""
    onboarding.lock_tenant(session, spec.tenant_id)
    return onboarding.send_at_once(session, settings, spec.tenant_id)


def _out(session: Session, settings: Settings, spec: JobSpec, share: bool) -> int | None:
    """The priority step a new job is sent at right after its commit, or None: it is stored
    due (a backfill row, or a sign-up over its tenant's share)."""
    if share:
        return _out_by_share(session, settings, spec)
    return messages.lane_priority(spec.lane) if sent_at_once(spec.lane) else None


def insert_job(settings: Settings, spec: JobSpec) -> tuple[int, bool]:
    """Insert the job row; return (job id, created). An existing key returns its job,
    except a ``refused`` one: it is checked again (a refusal cost nothing), so it is
    updated from ``spec`` and counts as created (to be sent) if it now passes."""
    job_id, created, _, _ = _insert_job(settings, spec)
    return job_id, created


def _insert_job(settings: Settings,
                spec: JobSpec) -> tuple[int, bool, str | None, int | None]:
    """``insert_job``, plus the state the key's job had before (None: a new key) and, for
    a created job stored out (its message is to be sent now), its priority step (None: due
    or not created)."""
    mine = (Job.tenant_id == spec.tenant_id, Job.idempotency_key == spec.idempotency_key)
    with session_scope(settings.database_url) as session:
        existing = session.execute(select(Job.id, Job.state).where(*mine)).first()
        if existing is not None and existing.state == JobState.REFUSED.value:
            _, changed, out = _recheck_refused(settings, existing.id, spec)
            return existing.id, changed, existing.state, out
        if existing is not None:
            return existing.id, False, existing.state, None
    share = _shares_lane(settings, spec)
    try:
        with (write_scope if share else session_scope)(settings.database_url) as session:
            out = _out(session, settings, spec, share)
            job = Job(idempotency_key=spec.idempotency_key,
                      **_job_values(spec, out is not None))
            session.add(job)
            session.flush()
            return job.id, spec.refusal is None, None, out
    except IntegrityError:
        # Another producer inserted the same key between our check and our insert.
        with session_scope(settings.database_url) as session:
            # .one(): the key is there (the insert just collided with it).
            return session.scalars(select(Job.id).where(*mine)).one(), False, None, None


def _recheck_refused(settings: Settings, job_id: int,
                     spec: JobSpec) -> tuple[int, bool, int | None]:
    share = _shares_lane(settings, spec)
    with (write_scope if share else session_scope)(settings.database_url) as session:
        out = _out(session, settings, spec, share)
        changed = schedule.recheck_refused(session, job_id,
                                           _job_values(spec, out is not None))
    return job_id, changed and spec.refusal is None, out


def check_callback(settings: Settings, url: str | None,
                   tenant_id: int = DEFAULT_TENANT_ID) -> str | None:
    """The callback URL, checked: absolute http(s), nothing secret in it, and a secret to
    sign it with (callbacks are always signed): the tenant's own, or WEBHOOK_SECRET for the
    default tenant."""
    if url is None:
        return None
    try:
        url = check_callback_url(url, Policy(settings.egress_networks))
    except CallbackURLError as exc:
        raise SubmitError(str(exc), "callback_url") from None
    if tenant_id != DEFAULT_TENANT_ID:
        if not tenants.signs_with_own(settings.database_url, tenant_id):
            raise SubmitError("callback_url needs a webhook secret of this tenant: "
                              "`faceid-batch tenant secret rotate TENANT` makes one",
                              "callback_url")
        return url
    if tenants.signs_with_own(settings.database_url, tenant_id):
        return url
    if settings.webhook_secret is None or not settings.webhook_secret.get_secret_value():
        raise SubmitError("callback_url needs WEBHOOK_SECRET to be set: callbacks are "
                          "always signed", "callback_url")
    return url


def record_dedupe_hit(settings: Settings, job_id: int, key: str, source: str) -> None:
    """One ``dedupe_hits`` row: a submission answered by an existing job (no new call)."""
    with session_scope(settings.database_url) as session:
        batch_id = session.scalar(select(Job.batch_id).where(Job.id == job_id))
        session.add(DedupeHit(source=source, count=1, job_id=job_id, idempotency_key=key,
                              batch_id=batch_id))


def send_now(settings: Settings, job_id: int, lane: str, priority: int | None = None) -> bool:
    """Send the message of a committed job that is marked out (at ``priority``, default the
    lane's); False if Redis could not take it (the job is then due, and the feeder sends it
    when Redis is back)."""
    try:
        messages.send_verify(job_id, lane, priority)
        return True
    except Exception as exc:  # noqa: BLE001 - kombu and redis-py raise many kinds for "away"
        log.warning("job %s: not sent (%s); it is due and goes out when Redis is back",
                    job_id, type(exc).__name__)
        with session_scope(settings.database_url) as session:
            schedule.due_again(session, [job_id])
        return False


def submit(settings: Settings, spec: JobSpec, source: str = "submit") -> tuple[int, bool]:
    """Validate, preflight, insert (idempotent on the key), then enqueue. Return (job id,
    created). A job refused by preflight is stored ``refused`` and never sent (created
    is False); a known key adds a ``dedupe_hits`` row for ``source`` ("submit", "api")."""
    spec = validate_spec(spec, settings)
    job_id, created, known_state, out = _insert_job(settings, spec)
    if created and out is not None:
        send_now(settings, job_id, spec.lane, out)
    elif spec.refusal is not None:
        log.info("job %s refused by preflight: %s", job_id, preflight.describe(spec.refusal))
    elif known_state is not None and known_state != JobState.REFUSED.value:
        record_dedupe_hit(settings, job_id, spec.idempotency_key, source)
    return job_id, created
