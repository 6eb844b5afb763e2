"""Start and stop a whole simulator (FaceID API + COS store) in-process."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceid_sim.control import Simulator
from faceid_sim.cos_handler import make_server
from faceid_sim.cos_store import CosStore
from faceid_sim.faceid_api import make_api_server
from faceid_sim.httpbase import SimHTTPServer, serve_in_thread, stop_server

ENV_SECRET_ID = "FACEID_SIM_SECRET_ID"
ENV_SECRET_KEY = "FACEID_SIM_SECRET_KEY"
DEFAULT_BUCKET = "faceid-sim-1250000000"
DEFAULT_REGION = "ap-singapore"


@dataclass
class RunningSimulator:
    """Handles to a started simulator. ``stop()`` (or leaving the ``with`` block) shuts it down."""

    api_url: str
    cos_domain: str
    control_url: str
    sim: Simulator
    cos: CosStore
    data_dir: Path
    secret_id: str
    bucket: str
    region: str
    # Every bucket's endpoint (host:port), the main one's included; the extra buckets' stores.
    cos_domains: dict[str, str] = field(default_factory=dict)
    extra_cos: dict[str, CosStore] = field(default_factory=dict)
    _servers: list[tuple[SimHTTPServer, threading.Thread]] = field(default_factory=list)
    _owned_dir: bool = False
    _stopped: bool = False

    def ready_info(self) -> dict[str, Any]:
        """The JSON object printed on the CLI's ready line."""
        return {
            "api_url": self.api_url,
            "cos_domain": self.cos_domain,
            "control_url": self.control_url,
            "cos_domains": dict(self.cos_domains),
        }

    def stop(self) -> None:
        """Stop both servers, cut open connections, remove a data dir we created."""
        if self._stopped:
            return
        self._stopped = True
        for server, thread in self._servers:
            stop_server(server, thread)
        if self._owned_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def resolve_credentials(secret_id: str | None, secret_key: str | None) -> tuple[str, str]:
    """Explicit credentials, else FACEID_SIM_SECRET_ID / FACEID_SIM_SECRET_KEY."""
    secret_id = secret_id or os.environ.get(ENV_SECRET_ID)
    secret_key = secret_key or os.environ.get(ENV_SECRET_KEY)
    if not secret_id or not secret_key:
        raise ValueError(
            f"a SecretId and SecretKey are required (arguments or {ENV_SECRET_ID}/{ENV_SECRET_KEY})"
        )
    return secret_id, secret_key


def start(
    *,
    host: str = "127.0.0.1",
    api_port: int = 0,
    cos_port: int = 0,
    secret_id: str | None = None,
    secret_key: str | None = None,
    extra_credentials: Mapping[str, str] | None = None,
    token_ok: bool = False,
    data_dir: str | os.PathLike[str] | None = None,
    rate_limit: int = 20,
    latency: dict[str, Any] | None = None,
    seed: int | None = None,
    download_timeout: float = 4.0,
    max_frames: int = 5000,
    bucket: str = DEFAULT_BUCKET,
    region: str = DEFAULT_REGION,
    clock_skew: float = 0.0,
    arrival_jitter: float = 0.0,
    extra_buckets: Mapping[str, str] | None = None,
) -> RunningSimulator:
    """Start the FaceID API and the COS store on ``host`` (port 0: any free port).

    Both servers accept the same credentials (``secret_id``/``secret_key`` plus any
    ``extra_credentials``). ``token_ok`` accepts any temporary-credential token on both.
    ``latency`` is ``{"fixed": s}`` or ``{"lognormal": {"median": s, "p99": s}}``.
    ``extra_buckets`` ({bucket: region}): more buckets, each a store on its own port
    (``cos_domains``: bucket -> host:port), so that which bucket holds an object is known.
    """
    sid, skey = resolve_credentials(secret_id, secret_key)
    secrets = {sid: skey, **(extra_credentials or {})}
    owned = data_dir is None
    root = Path(tempfile.mkdtemp(prefix="faceid-sim-") if data_dir is None else data_dir)
    root.mkdir(parents=True, exist_ok=True)
    sim = Simulator(
        secrets,
        frames_dir=root / "frames",
        token_ok=token_ok,
        rate_limit=rate_limit,
        latency=latency,
        download_timeout=download_timeout,
        seed=seed,
        max_frames=max_frames,
        clock_skew=clock_skew,
        arrival_jitter=arrival_jitter,
    )
    # One clock for both services (the clock_skew knob), as one provider's would be.
    cos = CosStore(root / "cos", secrets, token_ok=token_ok, bucket=bucket, region=region,
                   clock=sim.now)
    api_server = make_api_server(sim, host, api_port)
    try:
        cos_server = make_server(cos, host, cos_port)
    except OSError:
        api_server.server_close()
        raise
    url_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
    extra: dict[str, tuple[CosStore, SimHTTPServer]] = {}
    try:
        for name, where in (extra_buckets or {}).items():
            store = CosStore(root / f"cos-{name}", secrets, token_ok=token_ok, bucket=name,
                             region=where, clock=sim.now)
            extra[name] = (store, make_server(store, host, 0))
    except OSError:
        for _, server in extra.values():
            server.server_close()
        api_server.server_close()
        cos_server.server_close()
        raise
    api_url = f"http://{url_host}:{api_server.port}"
    sim.frame_base_url = api_url
    running = RunningSimulator(
        api_url=api_url,
        cos_domain=f"{url_host}:{cos_server.port}",
        control_url=f"{api_url}/_sim",
        sim=sim,
        cos=cos,
        data_dir=root,
        secret_id=sid,
        bucket=bucket,
        region=region,
        _owned_dir=owned,
        cos_domains={bucket: f"{url_host}:{cos_server.port}",
                     **{n: f"{url_host}:{srv.port}" for n, (_, srv) in extra.items()}},
        extra_cos={n: store for n, (store, _) in extra.items()},
    )
    running._servers = [
        (api_server, serve_in_thread(api_server, "faceid-sim-api")),
        (cos_server, serve_in_thread(cos_server, "faceid-sim-cos")),
        *((srv, serve_in_thread(srv, f"faceid-sim-cos-{n}")) for n, (_, srv) in extra.items()),
    ]
    return running
