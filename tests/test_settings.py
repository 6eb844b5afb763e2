"""Settings are validated at start with an error that names the variable."""

import pytest

from faceid_batch.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("FACEID_REGION", "COS_REGION", "FACEID_SECRET_ID", "FACEID_SECRET_KEY",
                 "COS_BUCKET", "FACEID_RATE_LIMIT", "PASS_THRESHOLD", "FACEID_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def test_defaults():
    s = load_settings()
    assert s.faceid_region == "ap-singapore" and s.cos_region == "ap-singapore"
    assert s.faceid_endpoint == "https://faceid.intl.tencentcloudapi.com"
    assert s.faceid_rate_limit == 20 and s.pass_threshold == 70


def test_bad_region_names_the_variable(monkeypatch):
    monkeypatch.setenv("FACEID_REGION", "ap-guangzhou")
    with pytest.raises(SettingsError, match="FACEID_REGION: must be one of ap-bangkok"):
        load_settings()


def test_cos_region_must_equal_faceid_region(monkeypatch):
    monkeypatch.setenv("FACEID_REGION", "ap-bangkok")
    monkeypatch.setenv("COS_REGION", "ap-hongkong")
    with pytest.raises(SettingsError, match="COS_REGION: must equal FACEID_REGION"):
        load_settings()


def test_bad_numbers_and_endpoint(monkeypatch):
    monkeypatch.setenv("FACEID_RATE_LIMIT", "0")
    with pytest.raises(SettingsError, match="FACEID_RATE_LIMIT"):
        load_settings()
    monkeypatch.setenv("FACEID_RATE_LIMIT", "20")
    monkeypatch.setenv("FACEID_ENDPOINT", "faceid.example")
    with pytest.raises(SettingsError, match="FACEID_ENDPOINT: must start with https://"):
        load_settings()


def test_missing_credentials_are_named(monkeypatch):
    monkeypatch.setenv("FACEID_SECRET_ID", "AKIDfake")
    with pytest.raises(SettingsError, match="FACEID_SECRET_KEY, COS_BUCKET"):
        load_settings().require_api()


def test_secret_never_echoed(monkeypatch):
    monkeypatch.setenv("FACEID_SECRET_KEY", "fakeSECRETvalue123")
    s = load_settings()
    assert "fakeSECRETvalue123" not in repr(s) and "fakeSECRETvalue123" not in str(s)


def test_every_setting_is_in_the_reference_with_its_default():
    """Each field of Settings has a row in the settings reference, docs/settings.md (what it
    trades off is for the reader; that the row exists, and names the default, is checked
    here; the docs build checks the rows too)."""
    import re
    from pathlib import Path

    from faceid_batch.settings import Settings

    reference = (Path(__file__).resolve().parents[1] / "docs" / "settings.md").read_text()
    rows: dict[str, str] = {}  # variable -> its default cell (a row may name several)
    for line in reference.splitlines():
        if line.startswith("| `"):
            cells = line.split("|")
            for name in re.findall(r"`([A-Z0-9_]+)`", cells[1]):
                rows[name] = cells[2]
    missing = [f.upper() for f in Settings.model_fields if f.upper() not in rows]
    assert missing == [], f"settings without a row in docs/settings.md: {missing}"
    for name in ("WORKER_LEASE_SECONDS", "BROKER_VISIBILITY_TIMEOUT", "STUCK_AFTER_SECONDS",
                 "SWEEP_INTERVAL_SECONDS", "FEED_INTERVAL_SECONDS", "BREAKER_PROBE_AFTER"):
        default = Settings.model_fields[name.lower()].default
        assert f"{default:g}" in rows[name], (name, default, rows[name])
