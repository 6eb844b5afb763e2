"""Completion callbacks: POST a finished job's outcome to its ``callback_url``, signed the
Standard Webhooks way (https://www.standardwebhooks.com), so a receiver checks it with the
published ``standardwebhooks`` library of its language.

The request (``Content-Type: application/json``) carries:

- ``webhook-id``: the message id, the same on every retry of this outcome (receivers
  deduplicate on it);
- ``webhook-timestamp``: Unix seconds when this attempt was sent (refuse old ones);
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` for each secret
  of the job's tenant (one, or two while rotating: the receiver accepts either),
  space-separated: the tenant's own (``faceid-batch tenant secret rotate``), or for the
  default tenant without one, WEBHOOK_SECRET.

The body keeps its fields (``event``, ``timestamp``, ``job_id``, ``key``, ``state`` ...).
Each callback is a due row (scheduling/callbacks.py), queued in the transaction that ends
its job; a non-2xx answer or a network error makes it due again after the next delay of
WEBHOOK_RETRY_SCHEDULE (about 28 hours in all by default), so a receiver that is down for
hours still gets it, and a worker killed mid-delivery strands nothing. The POST goes through
the egress policy (egress.py): checked addresses only, redirects not followed (the signed
outcome goes only to the URL given), the answer's body never read. Every attempt is a row
in ``webhook_deliveries``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select

from faceid_batch import tenants
from faceid_batch.db import session_scope, write_scope
from faceid_batch.egress import EgressError, EgressRefused, Policy
from faceid_batch.models import DEFAULT_TENANT_ID, Job, Result, WebhookDelivery, WebhookMessage
from faceid_batch.outcome.webhooks import SIGNATURE_HEADER, headers_for
from faceid_batch.resources import Resources
from faceid_batch.scheduling import callbacks
from faceid_batch.times import utcnow

log = logging.getLogger(__name__)

EVENT = "job.finished"


class CallbackURLError(ValueError):
    """The callback URL cannot be used; the message says why."""


def check_callback_url(url: str, policy: Policy | None = None) -> str:
    """Accept an absolute http(s) URL without credentials or query string (we keep it)
    that the egress policy does not refuse (``policy``: the default one)."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url.strip()):
        # http.client could never send it: it would fail every retry for a day.
        raise CallbackURLError("callback URL: no spaces or control characters")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackURLError(f"callback URL {url!r}: must be an absolute http(s) URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        # The URL is stored with the job; a token in it would be a kept secret. The
        # signature (WEBHOOK_SECRET) is how the receiver knows the call is ours.
        raise CallbackURLError(
            "callback URL: no credentials, query string or fragment; the receiver checks "
            f"the {SIGNATURE_HEADER} header instead"
        )
    try:
        (policy or Policy()).check(parts.geturl())
    except EgressRefused as exc:
        raise CallbackURLError(f"callback URL: refused by the egress policy: {exc}") from None
    return parts.geturl()


def message_id(job_id: int, message: int) -> str:
    """The ``webhook-id``: the same for every attempt at one outcome, a new one when the job
    ends again (a failed job retried)."""
    return f"msg_job{job_id}_{message}"


def callback_body(job: Job, result: Result | None) -> dict[str, Any]:
    """The outcome of a finished job, as delivered (and as ``api.wait`` reports it)."""
    return {
        "job_id": job.id,
        "key": job.idempotency_key,
        "state": job.state,
        "passed": job.passed,
        "result": job.result_code,
        "sim": result.sim if result else None,
        "description": result.description if result else None,
        "request_id": result.request_id if result else None,
        "error": job.error_message,
        "lane": job.lane,
        "batch_id": job.batch_id,
        "metadata": job.meta,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def deliver(res: Resources, message: int, token: str) -> str:
    """POST one claimed callback once (``token``: its claim); write how it went and, if it
    failed, when it is due again. Returns ``delivered``, ``retrying``, ``gave-up`` or
    ``not-claimed`` (claimed again since: another message delivers it)."""
    s = res.settings
    if not res.egress_slots.acquire(blocking=False):
        # Every thread this process lets wait on producers' servers is busy (receivers
        # that answer slowly): the callback waits in the schedule, not on a thread.
        with write_scope(s.database_url) as session:
            callbacks.later(session, message, token,
                            utcnow() + timedelta(seconds=random.uniform(1.0, 2.0)))
        return "busy"
    try:
        return _deliver(res, message, token)
    finally:
        res.egress_slots.release()


def _deliver(res: Resources, message: int, token: str) -> str:
    s = res.settings
    with write_scope(s.database_url) as session:
        taken = callbacks.take(session, message, token, s.webhook_timeout)
    if taken is None:
        return "not-claimed"
    job_id, attempt = taken["job_id"], taken["attempts"] + 1
    with session_scope(s.database_url) as session:
        job = session.get(Job, job_id)
        result = session.scalar(select(Result).where(Result.job_id == job_id))
        url = job.callback_url if job is not None else None
        payload = callback_body(job, result) if job is not None else None
        tenant_id = job.tenant_id if job is not None else DEFAULT_TENANT_ID

    status, error, final, latency_ms = None, None, False, 0
    secret = signing_secret(res, tenant_id)
    if url is None or payload is None:
        error, final = "the job has no callback URL any more", True
    elif secret is None:
        # Configuration, not a receiver failure: retrying cannot help until it is set.
        error, final = ("WEBHOOK_SECRET is not set: nothing is sent unsigned"
                        if tenant_id == DEFAULT_TENANT_ID else
                        "the tenant has no webhook secret: nothing is sent unsigned"), True
    else:
        timestamp = int(time.time())
        body = json.dumps({"event": EVENT, "timestamp": timestamp, **payload},
                          separators=(",", ":"), sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "faceid-batch-webhook/2",
            **headers_for(secret, message_id(job_id, message), body, timestamp),
        }
        started = time.monotonic()
        try:
            status = res.egress.post(url, body, headers, timeout=s.webhook_timeout)
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except EgressRefused as exc:
            # The policy refuses the same URL every time.
            error, final = f"refused by the egress policy: {exc}", True
        except EgressError as exc:
            error = exc.kind
        latency_ms = int((time.monotonic() - started) * 1000)

    delays = s.webhook_delays
    with write_scope(s.database_url) as session:
        session.add(WebhookDelivery(job_id=job_id, attempt=attempt, status_code=status,
                                    error=error, latency_ms=latency_ms, message_id=message))
        if error is None:
            callbacks.delivered(session, message, token)
        elif final or attempt > len(delays):
            callbacks.gave_up(session, message, token, error)
        else:
            delay = delays[attempt - 1] * random.uniform(0.8, 1.2)
            callbacks.retry_at(session, message, token,
                               utcnow() + timedelta(seconds=delay), error)
    if error is None:
        log.info("job %s: callback delivered (attempt %d, HTTP %s)", job_id, attempt, status)
        return "delivered"
    if final or attempt > len(delays):
        log.warning("job %s: callback not delivered after %d attempts: %s",
                    job_id, attempt, error)
        return "gave-up"
    log.info("job %s: callback attempt %d failed (%s); due again in %.0fs",
             job_id, attempt, error, delay)
    return "retrying"


def signing_secret(res: Resources, tenant_id: int) -> str | None:
    """The secrets a tenant's callbacks are signed with: its own (tenants.py), or, for the
    default tenant without one, WEBHOOK_SECRET. None: none to sign with. Never logged: one
    tenant's receivers verify with its secrets only, so they cannot forge another's."""
    own = tenants.signing_secret(res.settings.database_url, tenant_id)
    if own is not None or tenant_id != DEFAULT_TENANT_ID:
        return own
    configured = res.settings.webhook_secret
    return configured.get_secret_value() if configured is not None \
        and configured.get_secret_value() else None


def queue_again(res: Resources, job_id: int) -> None:
    """A callback message of the earlier kind (one per job, retried by Celery countdowns)
    becomes a due row, unless the job has one already."""
    with write_scope(res.settings.database_url) as session:
        if session.scalar(select(WebhookMessage.id)
                          .where(WebhookMessage.job_id == job_id).limit(1)) is None:
            callbacks.enqueue(session, job_id)
