"""Server-rendered review pages; every value shown goes through html.escape."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import urlencode

from faceid_batch.admin.queries import Listing

STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse}
td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}.pass{color:#070}
.fail{color:#a00}form.filters input,form.filters select{margin:0 6px 6px 0}
.faces{display:flex;gap:2em}.faces figure{margin:0}.faces img{max-width:360px;max-height:360px;
border:1px solid #ccc}form.logout{float:right}"""
# On each page behind the login. A form that POSTs, not a link: a GET changes nothing.
LOGOUT = ("<form class='logout' method='post' action='/logout'>"
          "<button type='submit' id='logout'>Log out</button></form>")

FILTERS = (("batch", "batch id"), ("lane", "lane"), ("state", "state"), ("code", "outcome code"),
           ("sim_min", "Sim ≥"), ("sim_max", "Sim ≤"), ("since", "created ≥ (ISO)"),
           ("until", "created < (ISO)"), ("key_prefix", "key prefix"))


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<meta name='referrer' content='no-referrer'><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>")


def _e(value: Any) -> str:
    return "-" if value is None else escape(str(value))


def _verdict(passed: bool | None) -> str:
    return {True: "<span class='pass'>pass</span>", False: "<span class='fail'>fail</span>",
            None: "-"}[passed]


def login(message: str = "") -> str:
    note = f"<p class='fail'>{escape(message)}</p>" if message else ""
    return _page("Admin login", f"""<h1>faceid-batch admin</h1>{note}
<form method="post" action="/login"><label>Admin token
<input type="password" name="token" id="token" autocomplete="off"></label>
<button type="submit" id="login">Log in</button></form>""")


def listing(out: Listing, params: dict[str, str]) -> str:
    fields = "".join(
        f"<label>{escape(label)} <input name='{name}' id='f-{name}' size='12' "
        f"value='{escape(params.get(name, ''), quote=True)}'></label>"
        for name, label in FILTERS)
    verdict = params.get("verdict", "")
    options = "".join(f"<option value='{v}'{' selected' if v == verdict else ''}>{t}</option>"
                      for v, t in (("", "any verdict"), ("pass", "pass"), ("fail", "fail")))
    form = (f"<form class='filters' method='get' action='/review'>{fields}"
            f"<select name='verdict' id='f-verdict'>{options}</select>"
            f"<input type='hidden' name='sort' value='{escape(out.sort, quote=True)}'>"
            "<button type='submit' id='apply'>Filter</button></form>")
    rows = "".join(
        f"<tr class='job'><td><a href='/review/jobs/{r.id}'>{r.id}</a></td><td>{_e(r.key)}</td>"
        f"<td>{_e(r.batch_id)}</td><td>{_e(r.lane)}</td><td>{_e(r.state)}</td>"
        f"<td>{r.attempts}</td><td>{_e(r.code)}</td>"
        f"<td>{'-' if r.sim is None else f'{r.sim:.2f}'}</td><td>{_verdict(r.passed)}</td>"
        f"<td>{_e(r.created_at)}</td></tr>"
        for r in out.rows)
    sorts = "".join(f"<th><a href='?{escape(urlencode({**params, 'sort': s, 'page': 1}))}'>"
                    f"{t}</a></th>" for s, t in (
                        ("-id", "id"), ("key", "key"), ("", "batch"), ("", "lane"),
                        ("state", "state"), ("-attempts", "tries"), ("code", "outcome"),
                        ("-sim", "Sim"), ("", "verdict"), ("-created", "created")))
    nav = []
    if out.page > 1:
        nav.append(f"<a id='prev' href='?{escape(urlencode({**params, 'page': out.page - 1}))}'>"
                   "« previous</a>")
    if out.has_more:
        nav.append(f"<a id='next' href='?{escape(urlencode({**params, 'page': out.page + 1}))}'>"
                   "next »</a>")
    return _page("Results", f"""{LOGOUT}<h1>Results</h1>{form}
<table id='results'><tr>{sorts}</tr>{rows}</table>
<p>page {out.page} · {len(out.rows)} rows {' · '.join(nav)}</p>""")


def job(shown: dict[str, Any]) -> str:
    j, result, frame, images = shown["job"], shown["result"], shown["best_frame"], shown["images"]
    sim = "-" if not result or result["sim"] is None else f"{result['sim']:.2f}"
    attempts = "".join(
        f"<tr><td>{a['number']}</td><td>{_e(a['started_at'])}</td><td>{_e(a['code'])}</td>"
        f"<td>{_e(a['kind'])}</td><td>{_e(a['request_id'])}</td><td>{_e(a['http_status'])}</td>"
        f"<td>{a['latency_ms']}</td></tr>" for a in shown["attempts"])
    frame_note = "" if frame else "<p>no best frame stored</p>"
    return _page(f"Job {j['id']}", f"""{LOGOUT}<p><a href='/review'>« results</a></p>
<h1>Job {j['id']} · {_e(j['key'])}</h1>
<p id='verdict'>verdict: {_verdict(j['passed'])} · outcome {_e(j['code'])} · Sim
<b id='sim'>{sim}</b> · threshold {_e(result and result['threshold'])} · attempts
{j['attempts']} · state {_e(j['state'])} · lane {_e(j['lane'])} · batch {_e(j['batch_id'])}</p>
<p>{_e(result and result['description'])} {_e(j['error'])}</p>
<div class='faces'>
<figure><img id='id-photo' alt='ID photo' src='{escape(images['id_photo'], quote=True)}'>
<figcaption>ID photo</figcaption></figure>
<figure><img id='best-frame' alt='best frame' src='{escape(images['best_frame'], quote=True)}'>
<figcaption>best frame{frame_note}</figcaption></figure></div>
<h2>Attempts</h2><table id='attempts'><tr><th>#</th><th>started</th><th>code</th><th>kind</th>
<th>RequestId</th><th>HTTP</th><th>ms</th></tr>{attempts}</table>""")
