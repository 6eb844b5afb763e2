"""docker-compose.yml checks. No Docker engine runs here, so the file itself is
checked: it parses, every service's command exists in the package, the settings it passes
are in the settings reference, Redis persists and refuses to evict, health checks and the one-shot
migration are there, workers can be scaled, only the producer API is published beyond the
host's loopback, and the databases sit on an internal network."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest

from faceid_batch.settings import Settings

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
# Variables that belong to a bundled image or tool, not to faceid-batch's settings.
FOREIGN_PREFIXES = ("POSTGRES_", "FLOWER_", "FACEID_SIM_")


@cache
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def documented_settings() -> set[str]:
    """The variables of the settings reference (docs/settings.md, every table)."""
    text = (ROOT / "docs" / "settings.md").read_text()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def cli_help(*words: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "faceid_batch.cli", *words, "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (words, proc.stderr)
    return proc.stdout


def _args(cmd) -> list[str]:  # type: ignore[no-untyped-def]
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def host_ip(port) -> str:  # type: ignore[no-untyped-def]
    """The host address a ``ports`` entry binds; "" is every interface."""
    if isinstance(port, dict):
        return str(port.get("host_ip") or "")
    parts = str(port).rsplit(":", 2)
    return parts[0] if len(parts) == 3 else ""


def networks_of(svc: dict) -> set[str]:
    # A list or a mapping of names; none given is compose's "default" network.
    return set(svc.get("networks") or ["default"])


def is_internal(network: str) -> bool:
    return bool(((compose().get("networks") or {}).get(network) or {}).get("internal"))


def test_file_parses_and_has_the_stack():
    assert {"redis", "postgres", "migrate", "worker", "beat", "api", "admin", "flower",
            "simulator"} <= set(services())
    for name, svc in services().items():
        assert "image" in svc or "build" in svc, name


def test_every_command_exists_in_the_cli():
    top = cli_help()
    for name, svc in services().items():
        if "build" not in svc or "entrypoint" in svc:
            continue
        args = _args(svc["command"])
        words = [a for a in args if not a.startswith("-")][:2]
        assert re.search(rf"^│ {re.escape(words[0])}\s", top, re.M), (name, words[0])
        if words[0] == "simulator":
            # Its arguments go to python -m faceid_sim.
            sim = subprocess.run([sys.executable, "-m", "faceid_sim", "--help"],
                                 capture_output=True, text=True, timeout=60).stdout
            assert all(o.split("=")[0] in sim for o in args if o.startswith("--")), name
            continue
        sub = words if words[0] == "db" else words[:1]
        help_text = cli_help(*sub)
        for option in (a.split("=")[0] for a in args if a.startswith("--")):
            assert option in help_text, (name, option)


def test_flower_runs_the_package_app():
    flower = services()["flower"]
    assert _args(flower["entrypoint"])[:4] == ["celery", "-A", "faceid_batch.worker", "flower"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(d.startswith("flower") for d in extras["deploy"])
    assert ".[deploy]" in (ROOT / "Dockerfile").read_text()


def test_environment_matches_the_settings_reference():
    documented = documented_settings()
    fields = {name.upper() for name in Settings.model_fields}
    assert documented, "no settings table in docs/settings.md"
    for name, svc in services().items():
        for var in svc.get("environment") or {}:
            if var.startswith(FOREIGN_PREFIXES):
                continue
            assert var in documented, f"{name}: {var} is not in docs/settings.md"
            assert var in fields, f"{name}: {var} is not a setting the package reads"


def test_redis_persists_refuses_eviction_and_is_checked():
    redis = services()["redis"]
    cmd = " ".join(_args(redis["command"]))
    assert "--appendonly yes" in cmd
    assert "--maxmemory-policy noeviction" in cmd
    assert redis["healthcheck"]["test"]
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_postgres_is_checked_and_migration_runs_once_first():
    assert "pg_isready" in " ".join(_args(services()["postgres"]["healthcheck"]["test"]))
    migrate = services()["migrate"]
    assert _args(migrate["command"])[:2] == ["db", "upgrade"]
    assert migrate["restart"] == "no"
    for name in ("worker", "beat"):
        assert services()[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"), name
    assert services()["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_workers_scale_and_stop_gracefully():
    worker = services()["worker"]
    # --scale N needs no fixed container name and no host port.
    assert "container_name" not in worker and "ports" not in worker
    assert "worker" in _args(worker["command"])
    assert worker["stop_grace_period"]  # time for Celery's warm shutdown
    assert "METRICS_PORT" in worker["environment"]


def test_admin_service_needs_its_token():
    admin = services()["admin"]
    assert _args(admin["command"])[0] == "admin"
    assert admin["environment"]["ADMIN_TOKEN"].startswith("${ADMIN_TOKEN:?")
    assert admin["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_simulator_is_a_profile():
    assert services()["simulator"]["profiles"] == ["simulator"]
    for name, svc in services().items():
        if name != "simulator":
            assert "profiles" not in svc, name


def test_only_the_api_is_published_beyond_the_hosts_loopback():
    # Admin shows face images, Flower controls tasks: operators reach them by an SSH tunnel
    # or a reverse proxy on the host, never on the host's other interfaces.
    for name, svc in services().items():
        for port in svc.get("ports") or []:
            assert name == "api" or host_ip(port) in ("127.0.0.1", "[::1]"), (name, port)
    assert services()["admin"]["ports"] and services()["flower"]["ports"]
    worker = services()["worker"]
    assert "ports" not in worker and worker["expose"] == ["9808"]  # metrics stay inside


def test_databases_are_on_the_internal_network_alone():
    assert is_internal("backend")
    for name in ("redis", "postgres"):
        svc = services()[name]
        assert networks_of(svc) == {"backend"}, name
        assert not svc.get("ports"), name
    for name in ("migrate", "worker", "beat", "admin", "api", "flower"):
        assert "backend" in networks_of(services()[name]), name
    assert "frontend" in networks_of(services()["api"])


def test_what_publishes_or_calls_out_has_a_network_that_is_not_internal():
    # Docker publishes no port of a container whose only network is internal, and such a
    # container reaches nothing outside: the worker must reach FaceID and COS, admin COS.
    for name, svc in services().items():
        if svc.get("ports") or name in ("worker", "admin", "api"):
            assert any(not is_internal(n) for n in networks_of(svc)), name
