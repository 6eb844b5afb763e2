"""What the producer API's routes share (``Producer``, one per app): the settings, the token
check, the media store, admission, and the blocking steps of a request.

Every method here may block (the database, Redis, COS): the routes call them through
``run_in_threadpool`` (or are plain ``def`` routes, which FastAPI runs in its pool), never
on the event loop.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from faceid_batch import tenants
from faceid_batch.admin import tokens
from faceid_batch.db import session_scope
from faceid_batch.models import DEFAULT_TENANT_ID, Job, Result
from faceid_batch.producer import resource
from faceid_batch.producer.admission import Admission, retry_after
from faceid_batch.producer.problems import Problem
from faceid_batch.settings import Settings
from faceid_batch.stage.storage import MediaStager

MAX_WAIT = 30  # seconds a client may ask to wait for the outcome (Prefer: wait=N)
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.I)
# The largest id a job can have (BIGINT): a larger one would overflow the query.
MAX_ID = 2**63 - 1


def prefer_wait(header: str | None) -> int | None:
    """N of ``Prefer: wait=N`` (RFC 7240), capped at MAX_WAIT; None if not asked."""
    match = _PREFER_WAIT.search(header or "")
    if match is None:
        return None
    digits = match.group(1).lstrip("0") or "0"
    # Any number of digits is a number: more than a few is simply more than MAX_WAIT.
    return MAX_WAIT if len(digits) > 4 else min(int(digits), MAX_WAIT)


@dataclass
class Places:
    """The admission places a request holds (admission.py): given back when the request
    ends without storing a job, kept once it stored one."""

    lanes: list[str] = field(default_factory=list)
    stored: bool = False
    # The tenant whose lines they are (admission is counted per tenant).
    tenant: int = DEFAULT_TENANT_ID


def until_midnight() -> float:
    """Seconds until the next UTC day, when daily quotas start again."""
    now = time.time()
    return 86400.0 - now % 86400.0


def visible(job: Job, who: tokens.Principal) -> bool:
    """A submit token sees the verifications it created; an admin token those of its tenant,
    or all when it has none."""
    if who.is_admin:
        return who.tenant_id is None or job.tenant_id == who.tenant_id
    return job.submitted_by is not None and job.submitted_by == who.token_id \
        and job.tenant_id == who.tenant


class Producer:
    """The producer API's state and its blocking steps."""

    def __init__(self, settings: Settings) -> None:
        settings.require_api()
        self.settings = settings
        token = settings.admin_token.get_secret_value().strip() if settings.admin_token else ""
        self.tokens = tokens.Authenticator(settings.database_url, token or None)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.admission = Admission(settings, self.redis)
        self.uploads = 0  # multipart uploads in progress (API_MAX_UPLOADS); the loop's own
        self._stager: MediaStager | None = None

    @property
    def stager(self) -> MediaStager:
        if self._stager is None:
            self._stager = MediaStager(self.settings)
        return self._stager

    def who(self, authorization: str | None) -> tokens.Principal:
        """The principal a request's ``Authorization: Bearer`` names, or a 401/403."""
        header = authorization or ""
        presented = header[7:].strip() if header[:7].lower() == "bearer " else ""
        principal = self.tokens.principal(presented or None)
        if principal is None:
            raise Problem("unauthorized", "missing, wrong or revoked token",
                          headers={"WWW-Authenticate": "Bearer"})
        if principal.scope not in (tokens.SUBMIT, tokens.ADMIN):
            raise Problem("forbidden", f"scope {principal.scope!r} cannot use this API")
        return principal

    def content_source(self, md5: str, fmt: str) -> str:
        """Where an upload is kept: content-addressed in the bucket, as staging keeps it."""
        return f"cos://{self.settings.cos_bucket}/{self.stager.content_key(md5, fmt)}"

    def find(self, who: tokens.Principal, *, job_id: int | None = None,
             key: str | None = None) -> tuple[Job, Result | None] | None:
        """A verification this principal may see, by id or key (in its tenant's keys); None
        if there is none: another tenant's verification is answered as an unknown one."""
        if job_id is not None and not 0 < job_id <= MAX_ID:
            return None
        with session_scope(self.settings.database_url) as session:
            found = resource.load(session, job_id=job_id, key=key, tenant_id=who.tenant)
        return found if found is not None and visible(found[0], who) else None

    def known(self, key: str, who: tokens.Principal) -> tuple[Job, Result | None] | None:
        """The verification that has this key in the principal's tenant, if any; 409 if it
        is another token's of the same tenant. Another tenant's keys are not looked at."""
        with session_scope(self.settings.database_url) as session:
            found = resource.load(session, key=key, tenant_id=who.tenant)
        if found is not None and not visible(found[0], who):
            # Keys are per tenant: another producer's key is not this one's to reuse.
            raise Problem("idempotency-key-reused", "this idempotency key belongs to "
                          "another token's verification", "key")
        return found

    def show(self, job_id: int) -> dict[str, Any]:
        """A stored verification's JSON."""
        with session_scope(self.settings.database_url) as session:
            found = resource.load(session, job_id=job_id)
            if found is None:
                raise Problem("not-found", f"no verification {job_id}")
            return resource.show(*found)

    def admit(self, lane: str, places: Places) -> None:
        """Take a place in the tenant's line of ``lane`` for this request, or refuse it
        (429): also once the tenant's calls today have reached its daily quota."""
        if lane in places.lanes:
            return
        over = tenants.over_quota(self.settings.database_url, places.tenant)
        if over is not None:
            left = until_midnight()
            raise Problem(
                "quota-exceeded",
                f"this tenant's calls today ({over[0]:,}) have reached its quota of "
                f"{over[1]:,} a day (UTC); submissions are taken again after midnight UTC, "
                f"in {retry_after(left)} s", extra={"retry_after": int(retry_after(left))},
                headers={"Retry-After": retry_after(left)})
        wait = self.admission.check(lane, places.tenant)
        if wait is not None:
            raise Problem(
                "too-many-requests",
                f"the {lane} lane's backlog is longer than the budget answers in "
                f"{self.admission.max_wait(lane):g} s; come back in {retry_after(wait)} s "
                "with the same idempotency key", extra={"retry_after": int(retry_after(wait))},
                headers={"Retry-After": retry_after(wait)})
        places.lanes.append(lane)

    def give_back(self, places: Places) -> None:
        """The places of a request that stored no job go back to their lines."""
        if not places.stored:
            for lane in places.lanes:
                self.admission.release(lane, places.tenant)
        places.lanes.clear()
