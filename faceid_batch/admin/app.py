"""The admin app factory: JSON routes mirroring queries.py, the review pages, signed images.

Every route except the login form and logout needs an admin token (a named one from
``faceid-batch token add``, or the bootstrap ADMIN_TOKEN), as ``Authorization: Bearer``, or a
login session of one, whose id is the HttpOnly cookie the login form sets (a browser cannot
put a header on a link or an image; auth.py says why the cookie is not the token). Image
routes need the token *and* a valid short-lived signature issued to that same token; every
image served is first written to the access audit (audit.py) under the token's name.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from faceid_batch import tenants
from faceid_batch.admin import audit, pages, queries, tokens
from faceid_batch.admin.auth import COOKIE, KINDS, LEGACY_COOKIE, Sessions, TokenCheck, link_key
from faceid_batch.admin.batch_routes import batch_router
from faceid_batch.admin.images import ImageSource
from faceid_batch.admin.queries import Filters
from faceid_batch.admin.tokens import Principal
from faceid_batch.settings import Settings

NO_STORE = {"Cache-Control": "no-store, private", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer"}


class AdminConfigError(RuntimeError):
    """The admin service cannot start with these settings; the message says why."""


def create_app(settings: Settings) -> FastAPI:
    """Build the admin app; raise AdminConfigError when no token could ever be accepted."""
    token = settings.admin_token.get_secret_value().strip() if settings.admin_token else ""
    url = settings.database_url
    if not token and not tokens.any_active(url, tokens.ADMIN):
        raise AdminConfigError(
            "no admin token: the admin service shows face images and refuses to start without "
            "one (add a named token with `faceid-batch token add NAME`, or set ADMIN_TOKEN to "
            "a long random string)")
    key, key_source = link_key(settings)
    known = tokens.Authenticator(url, token or None)
    sessions = Sessions(url, known, settings.admin_session_seconds)
    check = TokenCheck(known, key, sessions)
    images = ImageSource(settings)
    app = FastAPI(title="faceid-batch admin", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.database_url = url
    app.state.link_key_source = key_source

    @app.middleware("http")
    async def _headers(request: Request,
                       call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for k, v in NO_STORE.items():
            response.headers.setdefault(k, v)
        return response

    def authorised(request: Request) -> Principal:
        who = check.who(request.headers.get("authorization"), request.cookies.get(COOKIE))
        if who is None:
            raise HTTPException(401, "missing, wrong or revoked admin token",
                                headers={"WWW-Authenticate": "Bearer"})
        if not who.is_admin:
            # A producer's token creates and reads its own verifications, nothing here.
            raise HTTPException(403, f"token {who.name!r} has scope {who.scope!r}: the admin "
                                     "service needs an admin token")
        if who.tenant_id is not None:
            # Listings, images, exports and batches here span every tenant: an admin token
            # of one tenant reads that tenant's verifications on the producer API only.
            raise HTTPException(403, f"token {who.name!r} is an admin token of one tenant: "
                                     "the admin service needs an admin token of every tenant")
        return who

    def filters(
        batch: str | None = None, lane: str | None = None, state: str | None = None,
        code: str | None = None, verdict: str | None = None,
        sim_min: str | None = None, sim_max: str | None = None,
        since: str | None = None, until: str | None = None, key_prefix: str | None = None,
        tenant: str | None = None,
    ) -> queries.Filters:
        # Strings, not int/float: the review form sends empty fields, which mean "any".
        try:
            tenant_id = None if not tenant else tenants.resolve(url, tenant)
            return Filters.from_options(tenant_id=tenant_id,
                batch=_number(int, "batch", batch), lane=lane or None, state=state or None,
                code=code or None, verdict=verdict or None,
                sim_min=_number(float, "sim_min", sim_min),
                sim_max=_number(float, "sim_max", sim_max), since=since, until=until,
                key_prefix=key_prefix or None)
        except (ValueError, tenants.TenantError) as exc:
            raise HTTPException(422, str(exc)) from None

    def listing(f: queries.Filters, sort: str, page: int, limit: int) -> queries.Listing:
        try:
            return queries.list_results(url, f, queries.Page(sort=sort, page=page, limit=limit))
        except queries.QueryError as exc:
            raise HTTPException(422, str(exc)) from None

    def shown(job_id: int, who: Principal, via: str) -> dict[str, Any]:
        job = queries.show(url, job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        job["images"] = {kind: check.image_link(job_id, kind, settings.admin_link_seconds,
                                                who, via)
                         for kind in KINDS}
        return job

    auth = [Depends(authorised)]

    # -- JSON -----------------------------------------------------------------------------
    @app.get("/api/results", dependencies=auth)
    def api_results(f: queries.Filters = Depends(filters), sort: str = "-id",
                    page: int = 1, limit: int = 50) -> dict[str, Any]:
        out = listing(f, sort, page, limit)
        return {"rows": [r.as_dict() for r in out.rows], "page": out.page, "limit": out.limit,
                "has_more": out.has_more, "sort": out.sort, "filters": out.filters}

    # The JSON carries links, not bytes: the audit records the fetch of an image, not this.
    @app.get("/api/jobs/{job_id}")
    def api_job(job_id: int, who: Principal = Depends(authorised)) -> dict[str, Any]:
        return shown(job_id, who, "api")

    @app.get("/api/stats", dependencies=auth)
    def api_stats(batch: str | None = None, since: str | None = None,
                  until: str | None = None, tenant: str | None = None) -> dict[str, Any]:
        return queries.stats(url, filters(batch=batch, since=since, until=until,
                                          tenant=tenant))

    @app.get("/api/export", dependencies=auth)
    def api_export(f: queries.Filters = Depends(filters),
                   format: str = Query("csv", pattern="^(csv|jsonl)$")) -> StreamingResponse:
        media = "text/csv" if format == "csv" else "application/x-ndjson"
        return StreamingResponse(
            _export_chunks(queries.iter_results(url, f), format), media_type=media,
            headers={"Content-Disposition": f'attachment; filename="results.{format}"'})

    # -- images ---------------------------------------------------------------------------
    @app.get("/media/{job_id}/{kind}")
    def media(request: Request, job_id: int, kind: str, exp: int, by: int, via: str, sig: str,
              who: Principal = Depends(authorised)) -> Response:
        if not check.link_valid(job_id, kind, exp, by, via, sig):
            raise HTTPException(403, "image link expired or invalid")
        # The link names the token it was issued to; only that token, still active (it just
        # authenticated), may use it, so the audit row names who actually looked.
        if by != who.token_id:
            raise HTTPException(403, "image link was issued to another token")

        def record() -> None:
            audit.record(url, actor=who.name, token_id=who.token_id or None, surface=via,
                         what=kind, job_id=job_id,
                         remote=request.client.host if request.client else None,
                         detail=(request.headers.get("user-agent") or "")[:200] or None)

        if kind == "best_frame":
            return images.best_frame(url, job_id, record)
        return images.id_photo(url, job_id, record)

    # -- review pages ---------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    def login_form() -> str:
        return pages.login()

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        presented = (form.get("token") or [""])[0].strip()
        who = check.who(f"Bearer {presented}")
        if who is None or not who.is_admin:
            return HTMLResponse(pages.login("Wrong token."), status_code=401)
        if who.tenant_id is not None:
            return HTMLResponse(pages.login("This admin token is of one tenant: the admin "
                                            "service needs one of every tenant."),
                                status_code=403)
        sessions.end(request.cookies.get(COOKIE))  # one browser, one session
        response = RedirectResponse("/review", status_code=303)
        response.set_cookie(COOKIE, sessions.open(presented), max_age=sessions.seconds,
                            httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        response.delete_cookie(LEGACY_COOKIE, path="/")
        return response

    # A POST, like the login: the SameSite=Strict cookie is not sent with another site's
    # form, so no other site can end a session (nor use one).
    @app.post("/logout")
    def logout(request: Request) -> Response:
        sessions.end(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
        response.delete_cookie(LEGACY_COOKIE, path="/")
        return response

    @app.exception_handler(HTTPException)
    async def _errors(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith(("/review", "/batches")) and exc.status_code == 401:
            return RedirectResponse("/login", status_code=303)
        return Response(json.dumps({"detail": exc.detail}), status_code=exc.status_code,
                        media_type="application/json", headers=exc.headers)

    @app.get("/", dependencies=auth)
    def root() -> Response:
        return RedirectResponse("/review", status_code=303)

    @app.get("/review", response_class=HTMLResponse, dependencies=auth)
    def review(request: Request, f: queries.Filters = Depends(filters), sort: str = "-id",
               page: int = 1, limit: int = 50) -> str:
        return pages.listing(listing(f, sort, page, limit), dict(request.query_params))

    app.include_router(batch_router(settings, authorised))

    @app.get("/review/jobs/{job_id}", response_class=HTMLResponse)
    def review_job(job_id: int, who: Principal = Depends(authorised)) -> str:
        return pages.job(shown(job_id, who, "web"))

    return app


def _number(kind: type, name: str, value: str | None) -> Any:
    if value is None or not value.strip():
        return None
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{name}: not a number: {value!r}") from None


def _export_chunks(rows: Iterator[queries.ResultRow], fmt: str) -> Iterator[str]:
    """CSV or JSONL text in chunks of a few hundred rows (constant memory)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    if fmt == "csv":
        writer.writerow(queries.EXPORT_FIELDS)
    for n, row in enumerate(rows, 1):
        if fmt == "csv":
            writer.writerow([queries.csv_cell(getattr(row, f)) for f in queries.EXPORT_FIELDS])
        else:
            queries.write_jsonl([row], buf)
        if n % 500 == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()
