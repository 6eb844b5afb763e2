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


def test_many_host_session_resolves_each_origin_once(monkeypatch):
    from faceid_batch.call import httpenv

    httpenv.origin_proxies.cache_clear()
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    seen = []

    def fake_send(self, request, **kwargs):  # what requests would send, and through what
        seen.append((request.url, kwargs.get("proxies")))
        raise RuntimeError("not sent")

    monkeypatch.setattr(httpenv.requests.Session, "send", fake_send)
    session = httpenv.ResolvedEnvSession()
    for url in ("http://127.0.0.1:9/frame.jpg", "http://media.example.com/a.mp4",
                "http://media.example.com/b.mp4"):
        try:
            session.get(url, timeout=1)
        except RuntimeError:
            pass
    assert seen[0][1] == {}
    assert seen[1][1] == seen[2][1] == {"http": "http://proxy.example:3128"}
    assert httpenv.origin_proxies.cache_info().misses == 2
