"""The producer API app: its routes (routes.py), every error a problem detail, and the
OpenAPI document built from the same pydantic models the code validates with (models.py).

    GET  /openapi.json              OpenAPI 3.1 of the routes and of the webhook payload
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from faceid_batch.admin.app import create_app as admin_app
from faceid_batch.producer.models import (
    JsonSubmission,
    MultipartSubmission,
    ProblemDetail,
    WebhookPayload,
)
from faceid_batch.producer.problems import MEDIA_TYPE, Problem
from faceid_batch.producer.routes import pages, router
from faceid_batch.producer.service import Producer
from faceid_batch.settings import Settings

_STATUS_KINDS = {401: "unauthorized", 403: "forbidden", 404: "not-found",
                 405: "method-not-allowed", 415: "unsupported-media-type"}


def create_app(settings: Settings, with_admin: bool = False) -> FastAPI:
    """Build the producer API (and, with ``with_admin``, the admin routes beside it)."""
    app = FastAPI(
        title="faceid-batch producer API",
        version="1",
        summary="Submit identity verifications (an ID photo and a selfie video) to Tencent "
                "Cloud FaceID VideoLivenessCompare through faceid-batch, and read their "
                "outcome.",
        docs_url=None, redoc_url=None, openapi_url=None,
    )
    app.state.producer = Producer(settings)
    app.include_router(router)
    app.include_router(pages)
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _unexpected)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_document() -> JSONResponse:
        return JSONResponse(openapi(app))

    @app.webhooks.post("job.finished", summary="A verification ended", responses={
        "2XX": {"description": "Delivered. Anything else is retried on "
                               "WEBHOOK_RETRY_SCHEDULE."}})
    def job_finished(body: WebhookPayload) -> None:
        """The outcome, POSTed to callback_url when the verification ends."""

    if with_admin:
        app.mount("/", admin_app(settings))
    return app


async def _problem(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, Problem):  # pragma: no cover - registered for Problem only
        raise exc
    return exc.response(request.url.path)


async def _http(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    problem = Problem(_STATUS_KINDS.get(status, "malformed-request"),
                      str(getattr(exc, "detail", "")))
    body = problem.body(request.url.path)
    body["status"] = status
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE)


async def _invalid(request: Request, exc: Exception) -> Response:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    first = errors[0] if errors else {}
    where = [str(x) for x in first.get("loc", ()) if x not in ("query", "path", "body")]
    return Problem("invalid-field", first.get("msg", "invalid request"),
                   where[-1] if where else None).response(request.url.path)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Whatever went wrong, the client gets a problem detail, never a plain-text 500; the
    # exception is logged by the server (with its traceback).
    return Problem("internal-error", "the request could not be completed; nothing was "
                   "stored, retry with the same idempotency key").response(request.url.path)


def openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI 3.1 document (also committed as docs/openapi.json)."""
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary,
                      routes=app.routes, webhooks=app.webhooks.routes)
    components = doc.setdefault("components", {})
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "A token from `faceid-batch token add NAME --scope submit` "
                                  "(or an admin token)."}}
    schemas = components.setdefault("schemas", {})
    # The request bodies are read as they stream, so FastAPI does not see their models;
    # their schemas come from the same models the code validates with.
    for model in (JsonSubmission, MultipartSubmission, ProblemDetail):
        _add_schema(schemas, model)
    for methods in doc.get("paths", {}).values():
        for operation in methods.values():
            for status, answer in operation.get("responses", {}).items():
                content = answer.get("content", {})
                if status[0] in "45" and "application/json" in content:
                    # Every error is a problem detail.
                    content[MEDIA_TYPE] = {"schema": {
                        "$ref": "#/components/schemas/ProblemDetail"}}
                    del content["application/json"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    doc["security"] = [{"bearer": []}]
    return doc


def _add_schema(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas[model.__name__] = schema
