"""HTTP server of the simulated FaceID endpoint: ``POST /`` plus the ``/_sim/`` control API.

Like the real API 3.0 gateway, every API answer is HTTP 200 with a JSON ``Response`` object:
an ``Error`` envelope for rejected calls, or ``Result``/``Sim``/``BestFrame`` for verdicts.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

from faceid_sim.codes import description
from faceid_sim.control import Simulator
from faceid_sim.httpbase import SimHandler, SimHTTPServer
from faceid_sim.liveness import Outcome, ParamError, evaluate, validate_params
from faceid_sim.tc3 import Tc3Error, parse_authorization, verify_tc3

log = logging.getLogger("faceid_sim.api")

ACTION = "VideoLivenessCompare"
VERSION = "2018-03-01"
REGIONS = ("ap-bangkok", "ap-hongkong", "ap-singapore")
MAX_BODY = 10 * 1024 * 1024  # API 3.0 caps request bodies at 10 MB


class ApiError(Exception):
    """A call rejected before the engine ran, answered as an Error envelope."""

    def __init__(self, code: str, message: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message or description(code)


def _require_header(headers: Any, name: str, param: str) -> str:
    value = (headers.get(name) or "").strip()
    if not value:
        raise ApiError(
            "MissingParameter", f"The request is missing a required parameter `{param}`."
        )
    return value


class FaceIdHandler(SimHandler):
    """Request handler; ``sim`` is bound by make_api_server."""

    sim: Simulator
    server_version = "faceid-sim"
    # The rate-limit window counts kernel arrival times (see SimHandler.stamp_arrivals).
    stamp_arrivals = True

    def clock(self) -> float:
        return self.sim.now()

    def do_POST(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        if parts.path.startswith("/_sim/"):
            self._control(parts.path, parts.query)
        elif parts.path == "/":
            self._api_call(parts.query)
        else:
            self.send_json(404, {"error": f"no route {self.command} {parts.path}"})

    # --- the API --------------------------------------------------------------------------
    def _api_call(self, query: str) -> None:
        sim = self.sim
        record: dict[str, Any] = {
            "request_id": str(uuid.uuid4()),
            "t_start": self.arrival_wall or time.time(),
            # "kernel": the receive time of the request's first bytes; "handler": when a
            # handler thread got to it (no kernel stamp could be read).
            "t_start_source": self.arrival_source,
            "t_end": None,
            "secret_id": None,
            "action": self.headers.get("X-TC-Action"),
            "region": self.headers.get("X-TC-Region"),
            "video_md5": None,
            "image_md5": None,
            "liveness_type": None,
            "media_hosts": [],
            "code": None,
            "channel": "error",
            "sim": None,
            "scripted": False,
            "charged": False,
        }
        # Counted by the rate limit when it reaches the counter (arrival_jitter), and logged so.
        delay = sim.arrival_delay()
        arrival = self.arrival_monotonic() + delay
        record["t_start"] += delay
        try:
            body = self.read_body(MAX_BODY)
            if body is None:
                self.close_connection = True
                raise ApiError("RequestSizeLimitExceeded", "The request body exceeds 10 MB.")
            self._note_request(record, query, body)
            params = self._gateway(query, body, arrival)
            validate_params(params)
            outcome = evaluate(sim, params, record["request_id"])
        except (ApiError, ParamError, Tc3Error) as exc:
            outcome = Outcome(exc.code, "error", exc.message, 0.0, None, False, engine=False)
        except Exception:
            # A simulator bug must still answer like the API does, and show up in the log.
            log.exception("simulator failure")
            outcome = Outcome(
                "InternalError",
                "error",
                "Simulator internal error.",
                0.0,
                None,
                False,
                engine=False,
            )
        self._answer(record, outcome)

    def _note_request(self, record: dict[str, Any], query: str, body: bytes) -> None:
        """Fill the call record from the request as sent, even if it is about to be refused,
        so rejected calls (rate limit, bad signature) can still be tied to their media."""
        try:
            record["secret_id"] = parse_authorization(self.headers.get("Authorization")).secret_id
        except Tc3Error:
            pass
        try:
            params = self._params(query, body)
        except ApiError:
            return
        for field, name in (("video_md5", "VideoMd5"), ("image_md5", "ImageMd5")):
            value = params.get(name)
            record[field] = value.lower() if isinstance(value, str) and value else None
        liveness = params.get("LivenessType")
        record["liveness_type"] = liveness if isinstance(liveness, str) else None
        # Where the media were to be fetched from (host:port: which bucket's endpoint).
        record["media_hosts"] = sorted({
            urlsplit(url).netloc for url in (params.get("ImageUrl"), params.get("VideoUrl"))
            if isinstance(url, str) and url})

    def _gateway(self, query: str, body: bytes, arrival: float) -> dict[str, Any]:
        """Signature, token, action, version, region, account and rate checks; the params."""
        sim = self.sim
        auth = verify_tc3(
            method=self.command,
            path=urlsplit(self.path).path,
            query=query if self.command == "GET" else "",
            headers=self.headers,
            body=body,
            secrets=sim.secrets,
            now=sim.now(),
        )
        token = self.headers.get("X-TC-Token")
        if token is not None and not sim.token_accepted(token):
            raise ApiError("AuthFailure.TokenFailure", "The X-TC-Token is invalid or expired.")
        action = _require_header(self.headers, "X-TC-Action", "Action")
        if action != ACTION:
            raise ApiError("InvalidAction", f"The requested action `{action}` does not exist.")
        version = _require_header(self.headers, "X-TC-Version", "Version")
        if version != VERSION:
            raise ApiError("NoSuchVersion", f"The requested version `{version}` does not exist.")
        region = _require_header(self.headers, "X-TC-Region", "Region")
        if region not in REGIONS:
            raise ApiError(
                "UnsupportedRegion", f"The action does not support the region `{region}`."
            )
        account_error = sim.account_error_for(auth.secret_id)
        if account_error:
            raise ApiError(account_error)
        if not sim.admit(auth.secret_id, arrival):
            limit = sim.knob("rate_limit")
            raise ApiError(
                "RequestLimitExceeded",
                f"Your current request times exceeds the frequency limit `{limit}` for a second. "
                "Please reduce the frequency of calls.",
            )
        if not sim.admit_owner(auth.secret_id, arrival):
            raise ApiError("RequestLimitExceeded.UinLimitExceeded",
                           "The requests of this account exceed its frequency limit.")
        return self._params(query, body)

    def _params(self, query: str, body: bytes) -> dict[str, Any]:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if self.command == "GET":
            return dict(parse_qsl(query, keep_blank_values=True))
        if content_type != "application/json":
            raise ApiError("InvalidParameter", f"Content-Type `{content_type}` is not supported.")
        try:
            params = json.loads(body or b"{}")
        except (UnicodeDecodeError, ValueError):
            raise ApiError("InvalidParameter", "The request body is not valid JSON.") from None
        if not isinstance(params, dict):
            raise ApiError("InvalidParameter", "The request body must be a JSON object.")
        return params

    def _answer(self, record: dict[str, Any], outcome: Outcome) -> None:
        rid = record["request_id"]
        if outcome.channel == "error":
            response: dict[str, Any] = {
                "Error": {"Code": outcome.code, "Message": outcome.message},
                "RequestId": rid,
            }
        else:
            response = {
                "Result": outcome.code,
                "Description": outcome.message,
                "Sim": outcome.sim,
                "BestFrame": outcome.best_frame,
                "RequestId": rid,
            }
        record.update(
            code=outcome.code,
            channel=outcome.channel,
            sim=outcome.sim if outcome.channel == "result" else None,
            scripted=outcome.scripted,
            charged=outcome.charged,
            t_end=time.time(),
        )
        self.sim.record(record)
        self.send_json(200, {"Response": response})

    # --- control API ----------------------------------------------------------------------
    def _json_body(self) -> Any:
        raw = self.read_body(16 * 1024 * 1024)
        if raw is None:
            raise ValueError("control request body too large")
        return json.loads(raw or b"{}")

    def _control(self, path: str, query: str) -> None:
        sim, method = self.sim, self.command
        try:
            if path == "/_sim/health":
                self.send_json(200, sim.health())
            elif path == "/_sim/config" and method == "GET":
                self.send_json(200, sim.get_config())
            elif path == "/_sim/config" and method == "POST":
                changes = self._json_body()
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object of knobs")
                self.send_json(200, sim.configure(changes))
            elif path == "/_sim/script" and method == "POST":
                spec = self._json_body()
                if not isinstance(spec, dict):
                    raise ValueError('expected {"video_md5": ..., "responses": [...]}')
                self.send_json(200, sim.script(spec.get("video_md5"), spec.get("responses", [])))
            elif path == "/_sim/script" and method == "GET":
                self.send_json(200, sim.pending_scripts())
            elif path == "/_sim/calls" and method == "GET":
                since = int((parse_qs(query).get("since") or ["0"])[0])
                first, nxt = sim.calls_range()
                self.send_json(
                    200,
                    sim.calls(since),
                    {"X-Sim-Calls-First": str(first), "X-Sim-Calls-Next": str(nxt)},
                )
            elif path == "/_sim/reset" and method == "POST":
                self.send_json(200, sim.reset())
            elif path.startswith("/_sim/frames/") and method == "GET":
                self._frame(path.rsplit("/", 1)[-1])
            else:
                self.send_json(404, {"error": f"no control endpoint {method} {path}"})
        except (ValueError, TypeError, KeyError) as exc:
            self.send_json(400, {"error": str(exc)})

    def _frame(self, name: str) -> None:
        opened = self.sim.frames.open(name.split(".", 1)[0])
        if opened is None:
            self.send_json(404, {"error": "no such frame"})
            return
        fh, content_type, size = opened
        with fh:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            while chunk := fh.read(256 * 1024):
                self.wfile.write(chunk)


def make_api_server(sim: Simulator, host: str, port: int) -> SimHTTPServer:
    """A server bound to (host, port) answering the API and control endpoints for ``sim``."""
    handler = type("BoundFaceIdHandler", (FaceIdHandler,), {"sim": sim})
    return SimHTTPServer((host, port), handler)
