"""A COS-compatible object store over HTTP, serving one bucket on a custom domain.

cos-python-sdk-v5 talks to it unmodified when configured with ``Scheme="http"`` and
``Domain="127.0.0.1:PORT"``: requests then arrive path-style as ``/<key>`` with no bucket in the
URL. Every request must carry a valid COS signature (header or presigned query). Control
endpoints under ``/_cos/`` (stats, knobs) need no signature; they shadow keys with that prefix.

This module holds the store's state; the HTTP handler is in ``cos_handler``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from faceid_sim.cos_objects import ObjectStore


@dataclass
class CosStoreConfig:
    """Runtime knobs of the store."""

    # Seconds to stall before answering a GET of an object (provokes download timeouts).
    get_delay_seconds: float = 0.0
    # Only delay keys containing this substring (None: every object GET).
    get_delay_key_contains: str | None = None


class CosStore:
    """State of the simulated bucket: objects on disk, credentials, knobs and counters."""

    def __init__(
        self,
        data_dir: Path,
        secrets: dict[str, str],
        *,
        token_ok: bool | Iterable[str] = False,
        bucket: str = "faceid-sim-1250000000",
        region: str = "ap-singapore",
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``token_ok``: True accepts any x-cos-security-token, an iterable accepts those.
        ``clock``: the store's time (its Date headers, its signature windows)."""
        self.now = clock
        self.objects = ObjectStore(Path(data_dir))
        self.secrets = dict(secrets)
        self._any_token = token_ok is True
        self._tokens = frozenset() if isinstance(token_ok, bool) else frozenset(token_ok)
        self.bucket = bucket
        self.region = region
        self.config = CosStoreConfig()
        self._lock = threading.Lock()
        self._by_method: Counter[str] = Counter()
        self._by_op: Counter[str] = Counter()
        self._auth_failures = 0
        self._bytes_in = 0
        self._bytes_out = 0

    def token_accepted(self, token: str) -> bool:
        """Whether a temporary-credential token is acceptable."""
        if self._any_token:
            return bool(token)
        return token in self._tokens

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Partially update the knobs (raises ValueError on a bad one); return them all."""
        with self._lock:
            for name, value in changes.items():
                if name == "get_delay_seconds":
                    value = float(value or 0.0)
                    if value < 0:
                        raise ValueError("get_delay_seconds must be >= 0")
                elif name == "get_delay_key_contains":
                    value = None if value in (None, "") else str(value)
                else:
                    raise ValueError(f"unknown COS store knob: {name}")
                setattr(self.config, name, value)
            return asdict(self.config)

    def get_delay_for(self, key: str) -> float:
        """Seconds to stall before serving a GET of ``key``."""
        cfg = self.config
        if cfg.get_delay_seconds > 0 and (
            cfg.get_delay_key_contains is None or cfg.get_delay_key_contains in key
        ):
            return cfg.get_delay_seconds
        return 0.0

    def count(self, method: str, op: str | None = None, *, auth_failed: bool = False) -> None:
        """Record one request for the stats."""
        with self._lock:
            self._by_method[method] += 1
            if op:
                self._by_op[op] += 1
            if auth_failed:
                self._auth_failures += 1

    def add_bytes(self, inbound: int = 0, outbound: int = 0) -> None:
        """Account transferred payload bytes."""
        with self._lock:
            self._bytes_in += inbound
            self._bytes_out += outbound

    def stats(self) -> dict[str, Any]:
        """Counters since start or the last reset."""
        with self._lock:
            return {
                "requests": dict(self._by_method),
                "operations": dict(self._by_op),
                "auth_failures": self._auth_failures,
                "bytes_in": self._bytes_in,
                "bytes_out": self._bytes_out,
            }

    def reset(self) -> None:
        """Zero the counters and restore default knobs (objects are kept)."""
        with self._lock:
            self._by_method.clear()
            self._by_op.clear()
            self._auth_failures = self._bytes_in = self._bytes_out = 0
            self.config = CosStoreConfig()
