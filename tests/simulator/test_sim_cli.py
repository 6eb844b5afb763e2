"""``python -m faceid_sim``: ready line, ready file, clean exit on SIGTERM, no secret output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import requests

from .sim_helpers import SECRET_ID, SECRET_KEY


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEID_SIM_")}
    env.update(extra)
    return env


def test_cli_ready_line_serves_and_exits_cleanly(tmp_path):
    ready_file = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "faceid_sim",
            "--host",
            "127.0.0.1",
            "--api-port",
            "0",
            "--cos-port",
            "0",
            "--secret-id",
            SECRET_ID,
            "--data-dir",
            str(tmp_path / "data"),
            "--rate-limit",
            "7",
            "--latency-median",
            "0.01",
            "--latency-p99",
            "0.05",
            "--seed",
            "3",
            "--ready-file",
            str(ready_file),
            "--log-level",
            "DEBUG",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(FACEID_SIM_SECRET_KEY=SECRET_KEY),
    )
    try:
        line = proc.stdout.readline()
        info = json.loads(line)
        assert set(info) == {"api_url", "cos_domain", "control_url", "cos_domains"}
        assert list(info["cos_domains"].values()) == [info["cos_domain"]]  # one bucket
        assert info["api_url"].startswith("http://127.0.0.1:")
        assert info["control_url"] == info["api_url"] + "/_sim"
        assert json.loads(ready_file.read_text()) == info
        session = requests.Session()
        session.trust_env = False
        assert session.get(info["control_url"] + "/health", timeout=5).json() == {"ok": True}
        config = session.get(info["control_url"] + "/config", timeout=5).json()
        assert config["rate_limit"] == 7
        assert config["latency"] == {"lognormal": {"median": 0.01, "p99": 0.05}}
        anon = session.get(f"http://{info['cos_domain']}/anything", timeout=5)
        assert anon.status_code == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert SECRET_KEY not in line + out + err


def test_cli_without_secrets_fails_fast(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "faceid_sim", "--api-port", "0", "--cos-port", "0"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
    )
    assert proc.returncode == 2
    assert "SecretId" in proc.stderr and proc.stdout == ""
