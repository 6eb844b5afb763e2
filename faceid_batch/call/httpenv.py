"""HTTP sessions that read the environment (proxies, CA bundle) once, not on every request.

With ``trust_env`` on (its default), requests scans ``os.environ`` for proxy settings and
looks for a ``.netrc`` file on every request it sends: about a tenth of a worker's Python
CPU per job (py-spy, ``bench.throughput``). The worker's hot calls go to fixed hosts (the
FaceID endpoint and the COS bucket), so the proxy each host needs is resolved when its
session is built, NO_PROXY included; ``.netrc`` is never used, every request is signed.
"""

from __future__ import annotations

import os

import requests
from requests.utils import get_environ_proxies


def environ_proxies(url: str) -> dict[str, str]:
    """The proxies the environment sets for ``url`` ({} when NO_PROXY covers its host)."""
    return {k: v for k, v in get_environ_proxies(url).items() if k != "no"}


def _environment_read_once(session: requests.Session) -> requests.Session:
    """Stop ``session`` reading the environment per request; take its CA bundle now."""
    session.trust_env = False
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    return session


def pinned_session(url: str, session: requests.Session | None = None) -> requests.Session:
    """``session`` (a new one by default) set up for ``url``'s host from the environment now."""
    session = _environment_read_once(session or requests.Session())
    session.proxies.update(environ_proxies(url))
    return session
