"""The producer API's bodies as pydantic models: what the code validates a submission with is
what the OpenAPI document says (app.openapi builds it from these models).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from faceid_batch.models import JobState, Lane
from faceid_batch.producer.problems import KINDS, Problem
from faceid_batch.settings import Region

LivenessType = Literal["LIP", "ACTION", "SILENT"]
LaneName = Literal["onboarding", "backfill"]
KEY_MAX = 200
FIELD_LIMIT = 64 * 1024  # bytes of one multipart text field (metadata is the largest)


class Fields(BaseModel):
    """The fields of a submission, whatever carries the media."""

    model_config = ConfigDict(extra="forbid")

    liveness_type: LivenessType
    validate_data: str | None = Field(
        None, description="LIP: a 4-digit code; ACTION: an action sequence such as 1,2; "
                          "SILENT: none.")
    key: str | None = Field(None, max_length=KEY_MAX,
                            description="The idempotency key, if no Idempotency-Key header "
                                        "is sent.")
    lane: LaneName = Lane.ONBOARDING.value
    region: Region | None = Field(
        None, description="The FaceID region it is verified in (its media stay in that "
                          "region's bucket); default FACEID_REGION. A region no account "
                          "serves, or with no bucket, is refused (422).")
    callback_url: str | None = Field(
        None, description="Where the outcome is POSTed, signed the Standard Webhooks way "
                          "(see webhooks): an absolute http(s) URL, no credentials, query "
                          "string or fragment, that the egress policy allows.")
    metadata: dict[str, Any] | None = Field(None, description="Kept with the verification.")


class JsonSubmission(Fields):
    """``application/json``: the media as URLs."""

    photo_url: str = Field(description="https:// or cos://BUCKET/KEY in COS_BUCKET. JPG or "
                                       "PNG, at most 3 MB after Base64.")
    video_url: str = Field(description="https:// or cos://BUCKET/KEY in COS_BUCKET. MP4, AVI "
                                       "or FLV, at most 8 MB after Base64.")


class MultipartSubmission(BaseModel):
    """``multipart/form-data``: the media as files, streamed; the fields as text parts
    (``metadata`` as JSON text). Documents the form; uploads.py reads it."""

    photo: bytes = Field(json_schema_extra={"format": "binary"},
                         description="JPG or PNG, at most 3 MB after Base64.")
    video: bytes = Field(json_schema_extra={"format": "binary"},
                         description="MP4, AVI or FLV, at most 8 MB after Base64.")
    liveness_type: LivenessType
    validate_data: str | None = None
    key: str | None = Field(None, max_length=KEY_MAX)
    lane: LaneName = Lane.ONBOARDING.value
    region: Region | None = None
    callback_url: str | None = None
    metadata: str | None = Field(None, max_length=FIELD_LIMIT,
                                 description="A JSON object, kept with the verification.")


class Outcome(BaseModel):
    """Set once the verification is final."""

    passed: bool | None = Field(description="Success with Sim at or above PASS_THRESHOLD; "
                                            "null without a verdict.")
    code: str | None = Field(description="FaceID's Result, or a Local.* code of ours.")
    sim: float | None
    description: str | None
    request_id: str | None
    attempts: int


class Verification(BaseModel):
    """A verification: where it stands (``status``) and, once final, its ``outcome``."""

    id: int
    key: str = Field(description="The idempotency key.")
    status: JobState
    lane: LaneName
    liveness_type: LivenessType
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    callback_url: str | None
    metadata: dict[str, Any] | None
    outcome: Outcome | None = Field(description="Set once status is completed, failed or "
                                                "refused.")


class ProblemDetail(BaseModel):
    """RFC 9457 problem details (``application/problem+json``)."""

    type: str = Field(description="/problems/<kind>: " + ", ".join(KINDS))
    title: str
    status: int
    detail: str
    instance: str | None = None
    field: str | None = Field(None, description="The request field at fault.")
    code: str | None = Field(None, description="preflight-refused: the FaceID code the API "
                                               "would have answered.")
    retry_after: int | None = Field(None, description="too-many-requests: seconds.")
    verification: str | None = Field(None, description="idempotency-key-reused: the "
                                                       "verification that has the key.")


class WebhookPayload(BaseModel):
    """POSTed to callback_url when the verification ends. Headers ``webhook-id`` (the same
    on every retry), ``webhook-timestamp`` and ``webhook-signature`` (v1,<base64
    HMAC-SHA256 of id.timestamp.body>, one per WEBHOOK_SECRET): verify with any Standard
    Webhooks library."""

    event: Literal["job.finished"]
    timestamp: int = Field(description="= webhook-timestamp")
    job_id: int
    key: str
    state: JobState
    passed: bool | None
    result: str | None
    sim: float | None
    description: str | None
    request_id: str | None
    error: str | None
    lane: LaneName
    batch_id: int | None
    metadata: dict[str, Any] | None
    finished_at: datetime | None


def invalid(err: ValidationError) -> Problem:
    """The problem detail of the first thing pydantic found wrong, naming its field."""
    first = err.errors()[0]
    where = [str(x) for x in first.get("loc", ())]
    field = where[0] if where else None
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        message = "not a field of this request"
    elif kind == "missing":
        message = "is required"
    else:
        message = str(first.get("msg", "invalid"))
    return Problem("invalid-field", f"{'.'.join(where) or 'body'}: {message}", field)
