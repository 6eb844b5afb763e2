"""Problem details (RFC 9457): every error of the producer API, as ``application/problem+json``.

Each kind of problem has a stable ``type`` (a path under ``/problems/``, served as a short
page by the API) and a title; ``detail`` says what was wrong with this request, ``field``
names the request field at fault, and a few kinds carry more (``code``: the FaceID code
preflight predicts; ``retry_after``: seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

MEDIA_TYPE = "application/problem+json"

# slug -> (status, title, what it means)
KINDS: dict[str, tuple[int, str, str]] = {
    "malformed-request": (400, "Malformed request",
                          "The body could not be read as the content type it says."),
    "unauthorized": (401, "Unauthorized",
                     "No token, or a token that is wrong or revoked: send "
                     "Authorization: Bearer <token>."),
    "forbidden": (403, "Forbidden", "The token's scope does not allow this."),
    "not-found": (404, "Not found",
                  "No such verification, or not one this token created."),
    "method-not-allowed": (405, "Method not allowed",
                           "This route does not take this method (see the OpenAPI document)."),
    "idempotency-key-reused": (409, "Idempotency key reused",
                               "A verification with this key exists with different content; "
                               "a retry must send the same request."),
    "payload-too-large": (413, "Payload too large",
                          "A file or field is over its limit (the API's: photo 3 MB, video "
                          "8 MB after Base64); nothing was stored."),
    "unsupported-media-type": (415, "Unsupported media type",
                               "The request body, or a file's content (read from its first "
                               "bytes), is not a type this API takes."),
    "invalid-field": (422, "Invalid field", "A field is missing or has a value the API "
                                            "refuses; nothing was stored or charged."),
    "preflight-refused": (422, "Refused before any call",
                          "Reading the media predicts that FaceID would refuse it and charge "
                          "for the call (``code``); nothing was stored or charged."),
    "request-timeout": (408, "Request timeout",
                        "The body did not arrive in time (API_BODY_TIMEOUT_SECONDS); nothing "
                        "was stored. Retry with the same key."),
    "too-many-requests": (429, "Too many requests",
                          "The lane's backlog is longer than the budget can answer in time; "
                          "come back after Retry-After seconds (with the same key)."),
    "quota-exceeded": (429, "Daily quota reached",
                       "The tenant's FaceID calls today (UTC) have reached its quota "
                       "(--max-calls-per-day); come back after Retry-After seconds, the next "
                       "UTC day."),
    "internal-error": (500, "Internal error",
                       "Something failed on our side; nothing was stored. Retry with the "
                       "same key."),
    "unavailable": (503, "Service unavailable",
                    "The database, Redis or the media store could not be reached, or the "
                    "server is taking as many uploads as it can; nothing was stored. Retry "
                    "with the same key."),
}


@dataclass
class Problem(Exception):
    """An error answered as a problem detail."""

    kind: str
    detail: str
    field: str | None = None
    extra: dict[str, Any] | None = None
    headers: dict[str, str] | None = None

    @classmethod
    def invalid(cls, exc: ValueError) -> Problem:
        """The problem of a field check that failed (a SubmitError names its field)."""
        return cls("invalid-field", str(exc), getattr(exc, "field", None))

    @property
    def status(self) -> int:
        return KINDS[self.kind][0]

    def body(self, instance: str | None = None) -> dict[str, Any]:
        status, title, _ = KINDS[self.kind]
        body: dict[str, Any] = {"type": f"/problems/{self.kind}", "title": title,
                                "status": status, "detail": self.detail}
        if self.field is not None:
            body["field"] = self.field
        if instance is not None:
            body["instance"] = instance
        body.update(self.extra or {})
        return body

    def response(self, instance: str | None = None) -> JSONResponse:
        return JSONResponse(self.body(instance), status_code=self.status,
                            media_type=MEDIA_TYPE, headers=self.headers)
