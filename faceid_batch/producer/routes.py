"""The producer API's routes and the dependencies they share.

    POST /v1/verifications          multipart (files photo, video) or JSON (photo_url,
                                    video_url); Idempotency-Key; Prefer: wait=N
    GET  /v1/verifications/{id}     status and, once final, outcome
    GET  /v1/verifications?key=K    the same, by idempotency key

Every route needs ``Authorization: Bearer <token>`` (the ``principal`` dependency): a
``submit`` token sees only the verifications it created; an ``admin`` token sees all.
"""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from faceid_batch.admin import tokens
from faceid_batch.producer import resource
from faceid_batch.producer.create import NO_STORE, Creation
from faceid_batch.producer.models import ProblemDetail, Verification
from faceid_batch.producer.problems import KINDS, Problem
from faceid_batch.producer.service import MAX_WAIT, Producer, prefer_wait

router = APIRouter(prefix="/v1/verifications", tags=["verifications"])


def producer(request: Request) -> Producer:
    """The app's one Producer."""
    return cast(Producer, request.app.state.producer)


async def principal(request: Request, p: Annotated[Producer, Depends(producer)]
                    ) -> tokens.Principal:
    """Who the request acts for (401 without a good token); the lookup runs in the pool."""
    return await run_in_threadpool(p.who, request.headers.get("authorization"))


Who = Annotated[tokens.Principal, Depends(principal)]


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented problem answers of a route, each an application/problem+json."""
    return {s: {"model": ProblemDetail,
                "description": ", ".join(t for st, t, _ in KINDS.values() if st == s)}
            for s in statuses}


@router.post(
    "", summary="Create a verification", response_model=Verification, status_code=202,
    responses={200: {"model": Verification, "description": "A known key with the same "
                     "content, or (Prefer: wait) the outcome within the wait."},
               202: {"description": "Accepted: see Location for its status.",
                     "headers": {"Location": {"schema": {"type": "string"}}}},
               **problems(400, 401, 403, 408, 409, 413, 415, 422, 429, 500, 503)},
    openapi_extra={"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/MultipartSubmission"}},
        "application/json": {"schema": {"$ref": "#/components/schemas/JsonSubmission"}}}}})
async def create(
    request: Request, p: Annotated[Producer, Depends(producer)], who: Who,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", description="One per verification (or the key field). The "
        "same key with the same content answers the same verification (200); with other "
        "content, 409.")] = None,
    prefer: Annotated[str | None, Header(
        description=f"wait=N (N <= {MAX_WAIT}): answer 200 with the outcome if the "
                    "verification ends within N seconds, else 202.")] = None,
) -> Response:
    return await Creation(p, who, prefer_wait(prefer), idempotency_key or None).run(request)


@router.get("/{job_id}", summary="A verification's status and outcome",
            response_model=Verification, responses=problems(401, 404, 422))
def read(job_id: int, p: Annotated[Producer, Depends(producer)], who: Who) -> Response:
    found = p.find(who, job_id=job_id)
    if found is None:
        raise Problem("not-found", f"no verification {job_id} for this token")
    return JSONResponse(resource.show(*found), headers=NO_STORE)


@router.get("", summary="A verification by its idempotency key",
            response_model=Verification, responses=problems(401, 404, 422))
def by_key(p: Annotated[Producer, Depends(producer)], who: Who,
           key: Annotated[str | None, Query(description="The idempotency key.")] = None,
           ) -> Response:
    if not key:
        raise Problem("invalid-field", "key: the idempotency key to look up is required",
                      "key")
    found = p.find(who, key=key)
    if found is None:
        raise Problem("not-found", "no verification with this key for this token")
    return JSONResponse(resource.show(*found), headers=NO_STORE)


pages = APIRouter(include_in_schema=False)


@pages.get("/problems/{kind}")
def problem_page(kind: str) -> Response:
    """What a problem type means, as a short text page (its ``type`` URL)."""
    if kind not in KINDS:
        raise Problem("not-found", f"no problem type {kind!r}")
    status, title, meaning = KINDS[kind]
    return Response(f"{status} {title}\n\n{meaning}\n", media_type="text/plain")


__all__ = ["pages", "principal", "producer", "router"]
