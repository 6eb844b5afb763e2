"""The batch routes of the admin service: the list, a batch's dashboard and its live
panels, actions behind a dry run, and the end-of-run report.

Every action is two requests: a GET that says what it will do (a dry run: how many jobs,
the calls and the cost it will take) and a POST from that page that does it, audited under
the token's name (``batch_actions``). A POST carries the count its page showed
(``expect``): when the batch changed in between, nothing is done and the page says so.
The session cookie is SameSite=Strict, so no other site's form can post here with it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from faceid_batch.admin import audit, dashboard, dashboard_pages
from faceid_batch.admin.tokens import Principal
from faceid_batch.bulk.batches import Actor, BatchError
from faceid_batch.call import accounts
from faceid_batch.settings import Settings

Auth = Callable[..., Principal]
# A batch id in a path: a positive BIGINT (anything else is a 422, not a database error).
BatchId = Annotated[int, Path(ge=1, le=2**62)]
REPORTS_AT_ONCE = 2

# What a POST did, shown once on the dashboard it redirects to (fixed texts: nothing from
# the query string is echoed).
DONE = {"pause": "Paused.", "resume": "Resumed.", "cancel": "Cancelled.",
        "weight": "Weight set.", "retry": "Jobs queued again.",
        "resend-callbacks": "Callbacks queued."}


def batch_router(settings: Settings, authorised: Auth) -> APIRouter:
    """The routes under /batches (and /api/batches), each behind an admin token."""
    url = settings.database_url
    price = settings.faceid_price_per_call

    def read(batch_id: BatchId) -> dashboard.Dashboard:
        # Every account's budget (the accounts file, or the one account of the settings);
        # no secret is read.
        budgets = {a.name: float(a.rate_limit)
                   for a in accounts.configured_cached(settings)}
        return dashboard.panels(url, batch_id, budget=sum(budgets.values()),
                                threshold=settings.pass_threshold, price=Decimal(price),
                                currency=settings.faceid_price_currency, budgets=budgets)

    cache = dashboard.Panels(read)
    # Reports read a whole batch on one connection: two at a time, the rest told to wait.
    reports = threading.BoundedSemaphore(REPORTS_AT_ONCE)
    router = APIRouter(dependencies=[Depends(authorised)])

    def board(batch_id: BatchId) -> dashboard.Dashboard:
        try:
            return cache.get(batch_id)
        except dashboard.DashboardError as exc:
            raise HTTPException(404, str(exc)) from None

    @router.get("/batches", response_class=HTMLResponse)
    def batches(page: Annotated[int, Query(ge=1, le=1_000_000)] = 1) -> str:
        rows = dashboard.list_batches(url, limit=50, offset=50 * (max(1, page) - 1))
        return dashboard_pages.batches_page(rows, dashboard.progress(url, [r["id"]
                                                                           for r in rows]))

    @router.get("/batches/{batch_id}", response_class=HTMLResponse)
    def batch_page(batch_id: BatchId, done: str | None = None) -> str:
        b = board(batch_id)
        # The codes a retry can select (a failed job without a code is in "every failed job").
        codes = sorted(c for c in {*b.outcomes.failed, *b.outcomes.local} if c != "(no code)")
        return dashboard_pages.dashboard_page(b, codes, DONE.get(done or "", ""),
                                              audit.batch_actions(url, batch_id, limit=20))

    @router.get("/batches/{batch_id}/panels", response_class=HTMLResponse)
    def batch_panels(batch_id: BatchId) -> str:
        return dashboard_pages.panels(board(batch_id))

    @router.get("/api/batches/{batch_id}/dashboard")
    def batch_json(batch_id: BatchId) -> dict[str, Any]:
        b = board(batch_id)
        return {"batch_id": b.batch_id, "name": b.name, "state": b.state,
                "total": b.total, "done": b.done, "by_state": b.by_state,
                "eta_seconds": b.eta_seconds, "share_calls_per_second":
                    b.share.calls_per_second, "calls": b.calls,
                "billable_calls": b.billable_calls, "cost": str(b.cost),
                "projected_cost": str(b.projected_cost), "currency": b.currency,
                "outcomes": vars(b.outcomes), "sim_histogram": b.sim_histogram,
                "attempts": b.attempts, "read_at": b.read_at.isoformat()}

    # -- the end-of-run report -------------------------------------------------------------
    @router.get("/batches/{batch_id}/report.csv")
    def report_csv(batch_id: BatchId) -> StreamingResponse:
        from faceid_batch.admin import batch_report

        board(batch_id)  # 404 for an unknown batch, before the stream starts
        if not reports.acquire(blocking=False):
            raise HTTPException(503, "reports are being built; try again in a minute",
                                headers={"Retry-After": "30"})

        def chunks() -> Iterator[bytes]:
            try:
                yield from batch_report.iter_report_csv(url, batch_id)
            finally:
                reports.release()

        return StreamingResponse(chunks(), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="batch-{batch_id}-report.csv"'})

    @router.get("/batches/{batch_id}/summary.json")
    def report_summary(batch_id: BatchId) -> dict[str, Any]:
        from faceid_batch.admin import batch_report

        board(batch_id)
        if not reports.acquire(blocking=False):
            raise HTTPException(503, "reports are being built; try again in a minute",
                                headers={"Retry-After": "30"})
        try:
            figures: dict[str, Any] = _call(lambda: batch_report.summary(settings, batch_id))
            # The hash of the CSV this service serves for the batch now (report.csv): the
            # same rows give the same bytes, so an auditor can check the file downloaded.
            digest = hashlib.sha256()
            for chunk in batch_report.iter_report_csv(url, batch_id):
                digest.update(chunk)
        finally:
            reports.release()
        figures["report_sha256"] = digest.hexdigest()
        return figures

    # -- actions: a GET says what will happen, a POST from its page does it -----------------
    @router.get("/batches/{batch_id}/{action}", response_class=HTMLResponse)
    def plan(batch_id: BatchId, action: str, code: str | None = None,
             weight: str | None = None) -> str:
        b = board(batch_id)
        if action in ("pause", "resume", "cancel"):
            lines = {"pause": [f"Workers stop calling for batch {batch_id}; its "
                               f"{b.remaining:,} unfinished jobs wait (calls in flight "
                               "finish)."],
                     "resume": [f"Its parked jobs ({b.by_state.get('paused', 0):,}) are due "
                                "again."],
                     "cancel": [f"Jobs not yet called end failed (Local.BatchCancelled): up "
                                f"to {b.remaining:,}. Calls in flight finish. This cannot be "
                                "undone: a cancelled batch stays cancelled, and its "
                                "cancelled jobs are not retried."]}[action]
            return dashboard_pages.confirm_page(
                batch_id, action, f"{action.capitalize()} batch {batch_id}?", lines, {},
                action.capitalize(), danger=action == "cancel")
        if action == "weight":
            value = _weight(weight)
            return dashboard_pages.confirm_page(
                batch_id, "weight", f"Set the weight of batch {batch_id} to {value:g}?",
                [f"Its share of the budget against the other batches due in its lane goes "
                 f"from weight {b.weight:g} to {value:g}."], {"weight": f"{value:g}"},
                "Set weight")
        if action == "retry":
            from faceid_batch.bulk import batches as bulk

            p = _call(lambda: bulk.retry_plan(settings, batch_id, code or None))
            d = p.as_dict()
            return dashboard_pages.confirm_page(
                batch_id, "retry", f"Retry {d['jobs']:,} failed jobs of batch {batch_id}?",
                _plan_lines(d), {"code": code or "", "expect": str(d["jobs"])},
                f"Retry {d['jobs']:,} jobs")
        if action == "resend":
            from faceid_batch.bulk import batches as bulk

            r = _call(lambda: bulk.resend_plan(settings, batch_id, code or None))
            d = r.as_dict()
            return dashboard_pages.confirm_page(
                batch_id, "resend-callbacks",
                f"Resend the callbacks of {d['jobs']:,} jobs of batch {batch_id}?",
                _plan_lines(d), {"code": code or "", "expect": str(d["jobs"])},
                f"Resend {d['jobs']:,} callbacks")
        raise HTTPException(404, f"no page {action!r}")

    @router.post("/batches/{batch_id}/{action}")
    async def act(request: Request, batch_id: BatchId, action: str,
                  who: Principal = Depends(authorised)) -> Response:
        # The pages' own forms only: a browser says where a request comes from, and a form
        # posted from any other origin (a sibling subdomain included) is refused.
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise HTTPException(403, "a batch action is only taken from this service's pages")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > 4096:
                raise HTTPException(413, "form too large")
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        remote = request.client.host if request.client else None
        try:
            await run_in_threadpool(_act, settings, batch_id, action, form,
                                    Actor(who.name, "web", who.token_id or None, remote))
        except HTTPException as exc:
            if exc.status_code not in (409, 422):
                raise
            # Said on a page the operator can go back from (nothing was done).
            return HTMLResponse(dashboard_pages.refused_page(batch_id, str(exc.detail)),
                                status_code=exc.status_code)
        cache.forget(batch_id)
        return RedirectResponse(f"/batches/{batch_id}?done={action}", status_code=303)

    return router


def _weight(value: str | None) -> float:
    from faceid_batch.bulk.batches import check_weight

    try:
        return check_weight(float(value or ""))
    except (TypeError, ValueError) as exc:
        raise HTTPException(422, f"weight: {exc}") from None
    except BatchError as exc:
        raise HTTPException(422, str(exc)) from None


def _call(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except BatchError as exc:
        raise HTTPException(409, str(exc)) from None


def _plan_lines(d: dict[str, Any]) -> list[str]:
    """A plan's dict (bulk.batches.RetryPlan/ResendPlan.as_dict) as lines of plain text."""
    lines = []
    for key, value in d.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
            lines.append(f"{key.replace('_', ' ')}: {inner}")
        else:
            lines.append(f"{key.replace('_', ' ')}: {value}")
    return lines


def _act(settings: Settings, batch_id: BatchId, action: str, form: dict[str, str],
         by: Actor) -> None:
    """Do one confirmed action; it writes its batch_actions row in its own transaction."""
    from faceid_batch.bulk import batches as bulk

    def expect() -> int:
        # Required: the count the dry run showed, so the action is the one confirmed.
        raw = form.get("expect", "")
        if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
            raise HTTPException(422, "expect: the number of jobs the dry run showed is "
                                     "required")
        return int(raw)

    code = form.get("code") or None
    if action == "pause":
        _call(lambda: bulk.pause(settings, batch_id, by))
    elif action == "resume":
        _call(lambda: bulk.resume(settings, batch_id, by))
    elif action == "cancel":
        _call(lambda: bulk.cancel(settings, batch_id, by))
    elif action == "weight":
        value = _weight(form.get("weight"))
        _call(lambda: bulk.set_weight(settings, batch_id, value, by))
    elif action == "retry":
        _call(lambda: bulk.retry(settings, batch_id, code, actor=by.name, expect=expect(),
                                 surface=by.surface, token_id=by.token_id, remote=by.remote))
    elif action == "resend-callbacks":
        _call(lambda: bulk.resend_callbacks(settings, batch_id, code, actor=by.name,
                                            expect=expect(), surface=by.surface,
                                            token_id=by.token_id, remote=by.remote))
    else:
        raise HTTPException(404, f"no action {action!r}")
