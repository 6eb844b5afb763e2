"""Completion callbacks: POST a finished job's outcome to its ``callback_url``, signed the
Standard Webhooks way (https://www.standardwebhooks.com), so a receiver checks it with the
published ``standardwebhooks`` library of its language.

The request (``Content-Type: application/json``) carries:

- ``webhook-id``: the message id, the same on every retry of this outcome (receivers
  deduplicate on it);
- ``webhook-timestamp``: Unix seconds when this attempt was sent (refuse old ones);
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` for each secret
  in WEBHOOK_SECRET (one, or two while rotating: the receiver accepts either), space-separated.

The body keeps its fields (``event``, ``timestamp``, ``job_id``, ``key``, ``state`` ...).
A non-2xx answer or a network error is retried with exponential backoff and full jitter,
up to ``WEBHOOK_MAX_ATTEMPTS``; redirects are not followed (the signed outcome goes only to
the URL given). Every attempt is a row in ``webhook_deliveries``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from sqlalchemy import func, select

from faceid_batch.call.errors import backoff
from faceid_batch.db import session_scope
from faceid_batch.messages import send_webhook
from faceid_batch.models import Job, Result, WebhookDelivery
from faceid_batch.outcome.webhooks import SIGNATURE_HEADER, headers_for
from faceid_batch.settings import Settings

if TYPE_CHECKING:
    from faceid_batch.worker import Resources

log = logging.getLogger(__name__)

EVENT = "job.finished"


class CallbackURLError(ValueError):
    """The callback URL cannot be used; the message says why."""


def check_callback_url(url: str) -> str:
    """Accept an absolute http(s) URL without credentials or query string (we keep it)."""
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
    return parts.geturl()


def message_id(job: Job) -> str:
    """The same id for every attempt at one outcome; a new one when the job ends again."""
    finished = int(job.finished_at.timestamp() * 1000) if job.finished_at else 0
    return f"msg_job{job.id}_{finished}"


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


def job_finished(res: Resources, job_id: int,
                 known: tuple[str | None, str] | None = None) -> bool:
    """Queue the completion callback of a job that has just reached a final state.

    ``known`` is the job's (callback_url, lane) when the caller has just read them.
    Returns whether one was queued. Never raises: the job's answer is stored already and
    must not be retried because a callback could not be queued (that is logged instead).
    """
    try:
        if known is None:
            with session_scope(res.settings.database_url) as session:
                row = session.execute(
                    select(Job.callback_url, Job.lane).where(Job.id == job_id)
                ).first()
            if row is None:
                return False
            known = (row.callback_url, row.lane)
        callback_url, lane = known
        if not callback_url:
            return False
        send_webhook(job_id, lane)
        return True
    except Exception:  # noqa: BLE001 - see the docstring
        log.exception("job %s: completion callback could not be queued", job_id)
        return False


def max_countdown(settings: Settings) -> float:
    """A delivery's retry is an ETA message held unacked by a worker; the Redis transport
    redelivers it after the visibility timeout. Staying well under that timeout means a
    waiting retry is never delivered twice."""
    return min(settings.retry_max_delay, settings.broker_visibility_timeout / 3)


class RetryIn(Exception):
    """The delivery failed and is to be tried again in ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"retry in {delay:.1f}s")
        self.delay = delay


def deliver(res: Resources, job_id: int, retries: int) -> str:
    """POST the job's outcome to its callback URL once (``retries`` earlier tries of this
    outcome); return how it ended, or raise RetryIn with the backoff of the next try."""
    s = res.settings
    round_attempt = retries + 1  # attempts for this outcome so far
    with session_scope(s.database_url) as session:
        job = session.get(Job, job_id)
        if job is None or not job.callback_url:
            return "no-callback"
        result = session.scalar(select(Result).where(Result.job_id == job_id))
        url = job.callback_url
        payload = callback_body(job, result)
        msg_id = message_id(job)
        attempt = 1 + (session.scalar(
            select(func.count()).select_from(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
        ) or 0)

    status, error, latency_ms = None, None, 0
    if s.webhook_secret is None or not s.webhook_secret.get_secret_value():
        # Configuration, not a receiver failure: retrying cannot help until it is set.
        error = "WEBHOOK_SECRET is not set: nothing is sent unsigned"
        round_attempt = s.webhook_max_attempts
    else:
        timestamp = int(time.time())
        body = json.dumps({"event": EVENT, "timestamp": timestamp, **payload},
                          separators=(",", ":"), sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "faceid-batch-webhook/2",
            **headers_for(s.webhook_secret.get_secret_value(), msg_id, body, timestamp),
        }
        started = time.monotonic()
        try:
            resp = res.webhook_http.post(
                url, data=body, headers=headers, allow_redirects=False,
                timeout=(min(s.webhook_timeout, 5.0), s.webhook_timeout))
            status = resp.status_code
            resp.close()
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except requests.RequestException as exc:
            error = type(exc).__name__
        latency_ms = int((time.monotonic() - started) * 1000)

    with session_scope(s.database_url) as session:
        session.add(WebhookDelivery(job_id=job_id, attempt=attempt, status_code=status,
                                    error=error, latency_ms=latency_ms))
    if error is None:
        log.info("job %s: callback delivered (attempt %d, HTTP %s)", job_id, attempt, status)
        return "delivered"
    if round_attempt >= s.webhook_max_attempts:
        log.warning("job %s: callback not delivered after %d attempts: %s",
                    job_id, round_attempt, error)
        return "gave-up"
    delay = backoff(round_attempt, s.webhook_retry_base_delay, max_countdown(s))
    log.info("job %s: callback attempt %d failed (%s); retrying in %.1fs",
             job_id, attempt, error, delay)
    raise RetryIn(delay)
