"""The simulator's mutable state and control surface: knobs, scripts, call log, rate limiter.

Every ``/_sim/*`` HTTP endpoint maps onto a method here, so tests can drive the same controls
in-process through ``RunningSimulator.sim``.
"""

from __future__ import annotations

import bisect
import copy
import math
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faceid_sim.codes import is_failed_operation, looks_like_code
from faceid_sim.frames import FrameStore

CHANNELS = ("result", "error")
# The clock skew knob's bound: a week either way.
MAX_CLOCK_SKEW = 7 * 86_400.0
WILDCARD = "*"
Z99 = 2.326  # standard normal quantile of 0.99


@dataclass(frozen=True)
class ScriptItem:
    """One scripted answer for a call whose VideoMd5 matches."""

    code: str
    channel: str | None = None  # None: FailedOperation follows the global knob
    sim: float | None = None
    description: str | None = None
    latency: float | None = None  # overrides the latency knob for this call
    best_frame: bool = True


def _check_latency(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or len(value) != 1:
        raise ValueError('latency must be null, {"fixed": s} or {"lognormal": {...}}')
    if "fixed" in value:
        fixed = float(value["fixed"])
        if fixed < 0:
            raise ValueError("latency.fixed must be >= 0")
        return {"fixed": fixed}
    if "lognormal" in value:
        spec = value["lognormal"]
        median, p99 = float(spec["median"]), float(spec["p99"])
        if not 0 < median <= p99:
            raise ValueError("latency.lognormal needs 0 < median <= p99")
        return {"lognormal": {"median": median, "p99": p99}}
    raise ValueError("latency must have a 'fixed' or 'lognormal' key")


def _check_jitter(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 0.5:
        raise ValueError("arrival_jitter must be a number of seconds within [0, 0.5]")
    return float(value)


def _check_skew(value: Any) -> float:
    skew = float(value)
    if not math.isfinite(skew) or abs(skew) > MAX_CLOCK_SKEW:
        raise ValueError(f"clock_skew must be a number of seconds within ±{MAX_CLOCK_SKEW:.0f}")
    return skew


def _check_owner_limits(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > 100:
        raise ValueError("owner_limits must be a list of {secret_ids, limit}")
    out = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"secret_ids", "limit"}:
            raise ValueError("each owner limit is {\"secret_ids\": [...], \"limit\": n}")
        ids, limit = item["secret_ids"], item["limit"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError("secret_ids must be a list of SecretIds")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a whole number >= 1")
        out.append({"secret_ids": list(ids), "limit": limit})
    return out


def _check_code(code: Any) -> str:
    if not isinstance(code, str) or not looks_like_code(code):
        raise ValueError(f"not an error code: {code!r}")
    return code


def parse_script_item(raw: Any) -> ScriptItem:
    """A script entry from its JSON form: a code string or an object with ``code``."""
    if isinstance(raw, str):
        return ScriptItem(_check_code(raw))
    if not isinstance(raw, Mapping) or "code" not in raw:
        raise ValueError(f"script entry needs a code: {raw!r}")
    unknown = set(raw) - {"code", "channel", "sim", "description", "latency", "best_frame"}
    if unknown:
        raise ValueError(f"unknown script fields: {sorted(unknown)}")
    channel = raw.get("channel")
    if channel is not None and channel not in CHANNELS:
        raise ValueError(f"channel must be one of {CHANNELS}")
    sim = raw.get("sim")
    if sim is not None and not 0.0 <= float(sim) <= 100.0:
        raise ValueError("sim must be within [0, 100]")
    latency = raw.get("latency")
    return ScriptItem(
        code=_check_code(raw["code"]),
        channel=channel,
        sim=None if sim is None else float(sim),
        description=raw.get("description"),
        latency=None if latency is None else max(float(latency), 0.0),
        best_frame=bool(raw.get("best_frame", True)),
    )


class Simulator:
    """Knobs, scripts, the call log and the per-account rate limiter of one simulator."""

    def __init__(
        self,
        secrets: Mapping[str, str],
        *,
        frames_dir: Path,
        token_ok: bool | Iterable[str] = False,
        rate_limit: int = 20,
        latency: dict[str, Any] | None = None,
        download_timeout: float = 4.0,
        seed: int | None = None,
        max_frames: int = 5000,
        max_calls: int = 200_000,
        clock_skew: float = 0.0,
        arrival_jitter: float = 0.0,
    ) -> None:
        self.secrets = dict(secrets)
        self._any_token = token_ok is True
        self._tokens = frozenset() if isinstance(token_ok, bool) else frozenset(token_ok)
        self.frames = FrameStore(frames_dir, max_frames)
        self.frame_base_url = ""  # set once the API server knows its port
        self._seed = seed
        self._defaults: dict[str, Any] = {
            "rate_limit": int(rate_limit),
            "latency": _check_latency(latency),
            "error_rate": 0.0,
            "error_codes": ["InternalError"],
            "failed_operation_channel": "result",
            "account_error": None,
            # Per SecretId: {secret_id: code}, that account alone answers the code.
            "account_errors": {},
            # Account-wide caps: [{"secret_ids": [...], "limit": n}]; the admitted calls of
            # those SecretIds together in any sliding second stay within n, the others are
            # answered RequestLimitExceeded.UinLimitExceeded.
            "owner_limits": [],
            "download_timeout": float(download_timeout),
            "allow_remote_downloads": False,
            "max_calls": int(max_calls),
            # Seconds the simulated services' clock is ahead of the host's (negative:
            # behind): their Date headers, the TC3 timestamp check and COS signature windows.
            "clock_skew": _check_skew(clock_skew),
            # Each request reaches the rate-limit counter up to this many seconds after its
            # bytes arrived, at random: the jitter of a network's one-way delay, which the
            # caller's limiter cannot see.
            "arrival_jitter": _check_jitter(arrival_jitter),
        }
        self._lock = threading.Lock()
        self._reset_locked()

    def _reset_locked(self) -> None:
        self._knobs = copy.deepcopy(self._defaults)
        self._scripts: dict[str, deque[ScriptItem]] = defaultdict(deque)
        self._calls: list[dict[str, Any]] = []
        self._calls_base = 0
        self._windows: dict[str, deque[float]] = defaultdict(deque)
        self._owner_windows: dict[int, deque[float]] = defaultdict(deque)
        self._rng = random.Random(self._seed)

    # --- control API ----------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Liveness of the simulator."""
        return {"ok": True}

    def get_config(self) -> dict[str, Any]:
        """Current knobs."""
        with self._lock:
            return copy.deepcopy(self._knobs)

    def configure(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Partially update knobs (ValueError on an unknown or invalid one); return all knobs."""
        new = self.get_config()
        for name, value in changes.items():
            if name not in new:
                raise ValueError(f"unknown knob: {name}")
            if name == "latency":
                value = _check_latency(value)
            elif name in ("rate_limit", "max_calls"):
                value = int(value)
                if value < 0:
                    raise ValueError(f"{name} must be >= 0")
            elif name == "error_rate":
                value = float(value)
                if not 0.0 <= value <= 1.0:
                    raise ValueError("error_rate must be within [0, 1]")
            elif name == "error_codes":
                if not isinstance(value, list) or not value:
                    raise ValueError("error_codes must be a non-empty list")
                value = [_check_code(c) for c in value]
            elif name == "failed_operation_channel":
                if value not in CHANNELS:
                    raise ValueError(f"failed_operation_channel must be one of {CHANNELS}")
            elif name == "account_error":
                value = None if value is None else _check_code(value)
            elif name == "download_timeout":
                value = float(value)
                if value <= 0:
                    raise ValueError("download_timeout must be > 0")
            elif name == "account_errors":
                if not isinstance(value, dict) or len(value) > 1000:
                    raise ValueError("account_errors must be an object {secret_id: code}")
                value = {str(k): _check_code(v) for k, v in value.items()}
            elif name == "owner_limits":
                value = _check_owner_limits(value)
            elif name == "allow_remote_downloads":
                value = bool(value)
            elif name == "clock_skew":
                value = _check_skew(value)
            elif name == "arrival_jitter":
                value = _check_jitter(value)
            new[name] = value
        with self._lock:
            self._knobs = new
            return copy.deepcopy(new)

    def script(self, video_md5: str, responses: Iterable[Any]) -> dict[str, Any]:
        """Queue scripted answers for calls with this VideoMd5 (``"*"``: any call)."""
        if not isinstance(video_md5, str) or not video_md5:
            raise ValueError("video_md5 is required")
        if isinstance(responses, str | bytes) or not isinstance(responses, Iterable):
            raise ValueError("responses must be a list")
        items = [parse_script_item(r) for r in responses]
        key = video_md5 if video_md5 == WILDCARD else video_md5.lower()
        with self._lock:
            self._scripts[key].extend(items)
            return {"ok": True, "video_md5": key, "pending": len(self._scripts[key])}

    def pending_scripts(self) -> dict[str, int]:
        """Number of unconsumed scripted answers per VideoMd5."""
        with self._lock:
            return {k: len(v) for k, v in self._scripts.items() if v}

    def calls(self, since: int = 0) -> list[dict[str, Any]]:
        """Call records with sequence number >= ``since`` (oldest may have been trimmed)."""
        with self._lock:
            start = max(since - self._calls_base, 0)
            return [dict(c) for c in self._calls[start:]]

    def calls_range(self) -> tuple[int, int]:
        """(first retained seq, next seq) of the call log."""
        with self._lock:
            return self._calls_base, self._calls_base + len(self._calls)

    def reset(self) -> dict[str, Any]:
        """Clear calls, scripts, rate windows and frames; restore the startup knobs."""
        with self._lock:
            self._reset_locked()
        self.frames.clear()
        return {"ok": True}

    # --- used by the API handler ----------------------------------------------------------
    def token_accepted(self, token: str) -> bool:
        """Whether an X-TC-Token (temporary credentials) is acceptable."""
        return bool(token) if self._any_token else token in self._tokens

    def arrival_delay(self) -> float:
        """How much later than its arrival this request is counted (``arrival_jitter``)."""
        jitter = self.knob("arrival_jitter")
        if not jitter:
            return 0.0
        with self._lock:
            return float(self._rng.uniform(0.0, jitter))

    def now(self) -> float:
        """The simulated services' time: the host's plus the ``clock_skew`` knob."""
        return time.time() + self.knob("clock_skew")

    def knob(self, name: str) -> Any:
        """One knob's current value."""
        with self._lock:
            return self._knobs[name]

    def admit(self, secret_id: str, now: float) -> bool:
        """Sliding one-second window per account; only admitted calls occupy the window.

        ``now`` is the call's arrival (the kernel's receive time), and handler threads can
        reach here out of arrival order: the window is kept sorted, and a call is admitted
        only if every one-second window that would hold it stays within the limit.
        """
        with self._lock:
            limit = self._knobs["rate_limit"]
            if limit == 0:
                return True
            window = self._windows[secret_id]
            # Arrivals out of order are at most a few seconds apart: keep two windows.
            while window and window[0] <= window[-1] - 2.0:
                window.popleft()
            arrivals = sorted([*window, now])
            i = bisect.bisect_left(arrivals, now)
            for start in arrivals[bisect.bisect_right(arrivals, now - 1.0):i + 1]:
                if bisect.bisect_left(arrivals, start + 1.0) - arrivals.index(start) > limit:
                    return False
            bisect.insort(window, now)
            return True

    def account_error_for(self, secret_id: str) -> str | None:
        """The account error this SecretId answers (the global knob, else its own)."""
        with self._lock:
            return self._knobs["account_error"] or self._knobs["account_errors"].get(secret_id)

    def admit_owner(self, secret_id: str, now: float) -> bool:
        """The account-wide caps (``owner_limits``): whether a call of ``secret_id``
        arriving at ``now`` keeps every cap it falls under within its limit in the sliding
        second before it; an admitted call is counted under each."""
        with self._lock:
            groups = [(i, g) for i, g in enumerate(self._knobs["owner_limits"])
                      if secret_id in g["secret_ids"]]
            windows = []
            for i, group in groups:
                window = self._owner_windows[i]
                while window and window[0] <= now - 2.0:
                    window.popleft()
                if sum(1 for t in window if now - 1.0 < t <= now) >= group["limit"]:
                    return False
                windows.append(window)
            for window in windows:
                bisect.insort(window, now)
            return True

    def take_script(self, video_md5: str) -> ScriptItem | None:
        """Pop the next scripted answer for this VideoMd5 (specific scripts before ``*``)."""
        with self._lock:
            for key in (video_md5.lower(), WILDCARD):
                queue = self._scripts.get(key)
                if queue:
                    return queue.popleft()
            return None

    def draw_random_error(self) -> str | None:
        """A code from ``error_codes`` with probability ``error_rate``, else None."""
        with self._lock:
            rate = self._knobs["error_rate"]
            if rate <= 0 or self._rng.random() >= rate:
                return None
            return self._rng.choice(self._knobs["error_codes"])

    def sample_latency(self) -> float:
        """Seconds to add to a call according to the latency knob."""
        with self._lock:
            spec = self._knobs["latency"]
            if not spec:
                return 0.0
            if "fixed" in spec:
                return spec["fixed"]
            median, p99 = spec["lognormal"]["median"], spec["lognormal"]["p99"]
            sigma = math.log(p99 / median) / Z99
            return median * math.exp(sigma * self._rng.gauss(0.0, 1.0))

    def channel_for(self, code: str, requested: str | None = None) -> str:
        """Where ``code`` travels: Success in Result, FailedOperation per knob, rest as Error."""
        if code == "Success":
            return "result"
        if not is_failed_operation(code):
            return "error"
        return requested or self.knob("failed_operation_channel")

    def record(self, call: dict[str, Any]) -> None:
        """Append a call record (assigning its ``seq``), trimming the oldest past max_calls."""
        with self._lock:
            call["seq"] = self._calls_base + len(self._calls)
            self._calls.append(call)
            cap = max(self._knobs["max_calls"], 1)
            # Trim in batches: deleting the head of a long list on every call would be O(n).
            if len(self._calls) > cap + cap // 10:
                overflow = len(self._calls) - cap
                del self._calls[:overflow]
                self._calls_base += overflow
