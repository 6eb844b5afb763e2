"""Start the real local parts the demo, the tests and the benchmarks run on.

redis-server (installed with apt when missing), the bundled simulator, and Celery worker
processes, each a child process on 127.0.0.1 that is stopped when the caller is done.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis


class ServiceError(RuntimeError):
    """A local service could not be installed or started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_redis_server() -> str:
    """Path of redis-server; installs Debian's package with apt when it is missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise ServiceError("redis-server is not installed and apt-get is not available")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print("redis-server not found: installing it with apt-get ...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["update", "-qq"], ["install", "-y", "-qq", "redis-server"]):
        proc = subprocess.run([*sudo, apt, *cmd], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ServiceError(f"apt-get {' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(found).exists():
        raise ServiceError("apt-get installed redis-server but the binary is not on PATH")
    return found


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - the service is still starting
            pass
        time.sleep(0.05)
    raise ServiceError(f"{what} did not become ready within {timeout:.0f}s")


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(5)


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)


@dataclass
class RedisServer:
    """A redis-server child process on a free loopback port."""

    workdir: Path
    port: int = 0
    appendonly: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = ensure_redis_server()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                str(self.workdir), "--save", "", "--daemonize", "no",
                "--maxmemory-policy", "noeviction", "--loglevel", "warning",
                "--appendonly", "yes" if self.appendonly else "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / "redis.log", "ab"))
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        _wait(client.ping, 10, "redis-server")
        return self

    def stop(self) -> None:
        _stop(self.proc)

    def kill(self) -> None:
        """SIGKILL: what the server had not yet written to its AOF is lost."""
        _kill(self.proc)

    def restart(self, hard: bool = False, down_for: float = 0.0) -> RedisServer:
        """Stop (SIGTERM, or SIGKILL when ``hard``) and start again on the same port and dir.

        With ``appendonly`` the new server reloads the data from the AOF; without it, it
        starts empty (``--save ""``: no RDB snapshot either).
        """
        if hard:
            self.kill()
        else:
            self.stop()
        if down_for > 0:
            time.sleep(down_for)
        return self.start()


@dataclass
class Simulator:
    """The bundled FaceID + COS simulator as a child process."""

    workdir: Path
    secret_id: str
    secret_key: str
    extra_args: list[str] = field(default_factory=list)
    # More environment for it (FACEID_SIM_EXTRA_CREDENTIALS: more fake accounts).
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def start(self) -> Simulator:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / "ready.json"
        ready.unlink(missing_ok=True)
        env = {**os.environ, "FACEID_SIM_SECRET_ID": self.secret_id,
               "FACEID_SIM_SECRET_KEY": self.secret_key, **self.extra_env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faceid_sim", "--host", "127.0.0.1", "--api-port", "0",
             "--cos-port", "0", "--data-dir", str(self.workdir / "store"),
             "--ready-file", str(ready), *self.extra_args],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.workdir / "sim.log", "ab"),
        )
        _wait(lambda: ready.exists() and ready.stat().st_size > 0, 20, "simulator")
        self.info = json.loads(ready.read_text())
        return self

    @property
    def api_url(self) -> str:
        return str(self.info["api_url"])

    @property
    def cos_domain(self) -> str:
        return str(self.info["cos_domain"])

    @property
    def control_url(self) -> str:
        return str(self.info["control_url"])

    @property
    def cos_domains(self) -> dict[str, str]:
        """Each bucket's endpoint (host:port): the main one and every --extra-bucket."""
        return dict(self.info.get("cos_domains") or {})

    def stop(self) -> None:
        _stop(self.proc)


@dataclass
class Worker:
    """A real Celery worker process (``celery -A faceid_batch.worker worker``)."""

    env: dict[str, str]
    logfile: Path
    pool: str = "threads"
    concurrency: int = 8
    queues: str = "onboarding,backfill"
    name: str = "w1"
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "faceid_batch.worker", "worker",
             "-P", self.pool, "-c", str(self.concurrency), "-Q", self.queues,
             "-n", f"{self.name}@%h", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--loglevel", "INFO", *self.extra_args],
            env={**os.environ, **self.env}, stdout=subprocess.DEVNULL,
            stderr=open(self.logfile, "ab"),
        )
        return self

    def stop(self, timeout: float = 20) -> None:
        _stop(self.proc, timeout)

    def kill(self) -> None:
        _kill(self.proc)
