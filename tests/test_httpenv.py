"""Sessions resolve proxies and the CA bundle from the environment once, per host."""

from __future__ import annotations

from faceid_batch.call.faceid_client import FaceIDClient
from faceid_batch.call.httpenv import environ_proxies, pinned_session
from faceid_batch.settings import load_settings
from faceid_batch.stage.storage import cos_endpoint, make_cos_client


def test_proxies_follow_no_proxy_and_are_read_once(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "faceid.internal")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/example-bundle.pem")
    assert environ_proxies("https://faceid.internal/") == {}
    session = pinned_session("https://cos.example.com/")
    assert session.proxies.get("https") == "http://proxy.example:3128"
    assert session.verify == "/etc/ssl/certs/example-bundle.pem"
    assert session.trust_env is False
    # Read when built: a later change of the environment does not reach the session.
    monkeypatch.setenv("HTTPS_PROXY", "http://other.example:8080")
    assert session.proxies.get("https") == "http://proxy.example:3128"


def test_clients_use_pinned_sessions(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    c = FaceIDClient(endpoint="https://faceid.tencentcloudapi.com", region="ap-singapore",
                     secret_id="AKIDfake", secret_key="fake")
    assert c.session.trust_env is False
    assert c.session.proxies.get("https") == "http://proxy.example:3128"
    settings = load_settings(cos_bucket="media-1250000000", cos_region="ap-singapore",
                             faceid_region="ap-singapore", cos_secret_id="AKIDfake",
                             cos_secret_key="fake")
    assert cos_endpoint(settings) == \
        "https://media-1250000000.cos.ap-singapore.myqcloud.com/"
    cos = make_cos_client(settings)
    assert cos._session.trust_env is False
    assert cos._conf._proxies == {"https": "http://proxy.example:3128"}
