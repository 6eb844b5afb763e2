"""Worker logging: one JSON object a line (``LOG_FORMAT=json``, the default) or plain text.

Every line logged while a task runs carries the job's id, and the FaceID RequestId once the
answer is in: ``bind`` sets them in context variables (one context per task thread), a filter
copies them onto each record. Messages themselves are unchanged.
"""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

job_id_var: ContextVar[int | None] = ContextVar("faceid_job_id", default=None)
request_id_var: ContextVar[str | None] = ContextVar("faceid_request_id", default=None)

# Tasks whose first argument is a job id.
JOB_TASKS = frozenset({"faceid_batch.verify", "faceid_batch.deliver_webhook"})
# Attributes every LogRecord has; anything else was passed with ``extra=`` and is kept.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def bind(job_id: int | None = None, request_id: str | None = None) -> None:
    """Tag the log lines of this task thread from now on (until ``clear``)."""
    if job_id is not None:
        job_id_var.set(job_id)
    if request_id is not None:
        request_id_var.set(request_id)


def clear() -> None:
    job_id_var.set(None)
    request_id_var.set(None)


def _job_of_message(data: object) -> int | None:
    """The job id of Celery's own lines about a task message ("Task ... received")."""
    if not isinstance(data, dict) or data.get("name") not in JOB_TASKS:
        return None
    try:
        return int(str(data.get("args", "")).strip("[]()").split(",")[0])
    except ValueError:
        return None


# A presigned COS URL's query (signature, key id, session token), and any such parameter or
# credential header wherever a library might print one.
_SIGNED_QUERY = re.compile(r"\?[^\s\"'<>]*(?:q-sign|x-cos-security-token)[^\s\"'<>]*", re.I)
_SIGNED = re.compile(r"(?:q-signature|q-sign-[a-z-]+|q-ak|q-key-time|x-cos-security-token"
                     r"|X-TC-Token|Authorization|Signature)[=:]\s*[^&\s\"',]+", re.I)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without URL signatures, tokens, or any of ``secrets``."""
    text = _SIGNED_QUERY.sub("?[redacted]", text)
    text = _SIGNED.sub("[redacted]", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


class ContextFilter(logging.Filter):
    """Copies the job id / RequestId of the running task onto the record, and redacts
    signatures and the configured secrets from the message (a second line of defence:
    the code never logs them on purpose)."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if len(s) >= 8)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler's handleError
            message = None
        if message is not None and (clean := redact(message, self.secrets)) != message:
            record.msg, record.args = clean, None
        # Tracebacks too: a transport error's text can hold the URL it failed on.
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id_var.get() or _job_of_message(getattr(record, "data", None))
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, message, job_id, request_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                out[key] = value
        out.setdefault("process", record.process)
        out["thread"] = record.threadName
        if record.exc_info or record.exc_text:
            out["exc_info"] = record.exc_text or (
                self.formatException(record.exc_info) if record.exc_info else "")
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """The usual text line, with ``[job N RequestId R]`` when known."""

    def __init__(self) -> None:
        super().__init__("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s%(ctx)s")

    def format(self, record: logging.LogRecord) -> str:
        job_id, request_id = getattr(record, "job_id", None), getattr(record, "request_id", None)
        parts = ([f"job_id={job_id}"] if job_id is not None else []) + (
            [f"request_id={request_id}"] if request_id else [])
        record.ctx = f" [{' '.join(parts)}]" if parts else ""
        return super().format(record)


def configure(logger: logging.Logger, log_format: str, secrets: tuple[str, ...] = ()) -> None:
    """Give ``logger``'s handlers our formatter and the context/redaction filter."""
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    for handler in logger.handlers:
        handler.setFormatter(formatter)
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter(secrets))
