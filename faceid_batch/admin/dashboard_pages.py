"""The batch pages of the admin service: the list of batches and one batch's dashboard,
server-rendered HTML with inline SVG charts (svg.py), no asset from elsewhere.

The dashboard's panels are one fragment (``panels``) that the page fetches again every few
seconds; every value shown goes through html.escape.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from html import escape
from typing import Any
from urllib.parse import urlencode

from faceid_batch.admin import svg
from faceid_batch.admin.dashboard import Dashboard
from faceid_batch.models import JobState

REFRESH_SECONDS = 5
STATE_COLOURS = {
    JobState.COMPLETED.value: "#1a7f37", JobState.FAILED.value: "#c62828",
    JobState.REFUSED.value: "#8c6d1f", JobState.RUNNING.value: "#2f6fd0",
    JobState.RETRYING.value: "#e07b00", JobState.QUEUED.value: "#8a8f98",
    JobState.PAUSED.value: "#7b5cc4",
}
STYLE = """:root{--pass:#1a7f37;--fail:#c62828;--muted:#8a8f98;--accent:#2f6fd0;--bg:#fff;
--fg:#1d2329;--card:#f6f8fa;--line:#d8dee4}
@media (prefers-color-scheme:dark){:root{--bg:#0f1419;--fg:#e6e8eb;--card:#1a2028;
--line:#2d3640;--pass:#3fb950;--fail:#f85149}}
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:var(--bg);color:var(--fg)}
header{display:flex;gap:1em;align-items:center;padding:.7em 1.5em;border-bottom:1px solid
var(--line)}header h1{font-size:18px;margin:0}header nav{margin-left:auto;display:flex;gap:1em;
align-items:center}a{color:var(--accent)}main{padding:1em 1.5em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1em}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.8em 1em}
.card h2{font-size:14px;margin:0 0 .5em;text-transform:uppercase;letter-spacing:.04em;
color:var(--muted)}.big{font-size:26px;font-weight:600}.muted{color:var(--muted)}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid var(--line);
padding:4px 8px;text-align:left}th{font-weight:600}td.n{text-align:right;
font-variant-numeric:tabular-nums}.badge{display:inline-block;padding:1px 8px;
border-radius:10px;font-size:12px;border:1px solid currentColor}
.state-active{color:var(--pass)}.state-paused{color:#7b5cc4}.state-cancelled{color:var(--fail)}
.actions{display:flex;flex-wrap:wrap;gap:.5em;margin:.8em 0}.actions form{display:inline}
button{font:inherit;padding:3px 12px;border-radius:6px;border:1px solid var(--line);
background:var(--card);color:var(--fg);cursor:pointer}button.danger{color:var(--fail)}
.flash{background:var(--card);border-left:4px solid var(--accent);padding:.5em 1em}
svg{max-width:100%;height:auto}code{font-size:12px}"""


def _e(value: Any) -> str:
    return "-" if value is None else escape(str(value))


def _page(title: str, body: str, *, script: str = "") -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<meta name='referrer' content='no-referrer'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><header><h1>faceid-batch</h1><nav>"
            f"<a href='/batches'>Batches</a><a href='/review'>Results</a>"
            f"<form method='post' action='/logout'><button type='submit' id='logout'>Log out"
            f"</button></form></nav></header><main>{body}</main>{script}</body></html>")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return str(timedelta(seconds=int(round(seconds))))


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%H:%M")


def batches_page(rows: list[dict[str, Any]], progress: dict[int, dict[str, int]]) -> str:
    """The list of batches, each with its progress bar by state."""
    out = []
    for b in rows:
        counts = progress.get(b["id"], {})
        total = sum(counts.values())
        done = sum(n for s, n in counts.items() if s in {x.value for x in JobState.final()})
        bar = svg.stacked_bar([(s, counts.get(s, 0), c) for s, c in STATE_COLOURS.items()
                               if counts.get(s, 0)], width=360, height=40,
                              title=f"batch {b['id']} by state")
        out.append(
            f"<tr class='batch'><td><a href='/batches/{b['id']}'>{b['id']}</a></td>"
            f"<td>{_e(b['name'])}</td><td><span class='badge state-{_e(b['state'])}'>"
            f"{_e(b['state'])}</span></td><td>{_e(b['lane'])}</td><td class='n'>"
            f"{b['weight']:g}</td><td class='n'>{done} / {total}</td><td>{bar}</td>"
            f"<td>{b['created_at']:%Y-%m-%d %H:%M}</td></tr>")
    table = ("<table id='batches'><tr><th>id</th><th>name</th><th>state</th><th>lane</th>"
             "<th>weight</th><th>done</th><th>progress</th><th>created</th></tr>"
             + "".join(out) + "</table>") if out else "<p>No batch yet.</p>"
    return _page("Batches", f"<h1>Batches</h1>{table}")


def dashboard_page(board: Dashboard, codes: list[str], flash: str = "",
                   actions_log: list[dict[str, Any]] | None = None) -> str:
    """One batch: its head, its actions, and the panels (refreshed in place)."""
    b = board
    note = f"<p class='flash' id='flash'>{escape(flash)}</p>" if flash else ""
    options = "".join(f"<option value='{escape(c, quote=True)}'>{escape(c)}</option>"
                      for c in codes)
    pause_or_resume = (
        _action(b.batch_id, "resume", "Resume") if b.state == "paused"
        else _action(b.batch_id, "pause", "Pause") if b.state == "active" else "")
    actions = "" if b.state == "cancelled" else (
        f"{pause_or_resume}{_action(b.batch_id, 'cancel', 'Cancel', danger=True)}"
        f"<form method='get' action='/batches/{b.batch_id}/weight'>"
        f"<input name='weight' id='weight' size='4' value='{b.weight:g}'>"
        f"<button type='submit'>Set weight</button></form>")
    actions += (
        f"<form method='get' action='/batches/{b.batch_id}/retry'>"
        f"<select name='code' id='retry-code'><option value=''>every failed job</option>"
        f"{options}</select><button type='submit' id='retry'>Retry…</button></form>"
        f"<form method='get' action='/batches/{b.batch_id}/resend'>"
        f"<button type='submit' id='resend'>Resend callbacks…</button></form>"
        f"<a id='report' href='/batches/{b.batch_id}/report.csv'>Download report (CSV)</a>"
        f"<a href='/batches/{b.batch_id}/summary.json'>summary (JSON)</a>"
        f"<a href='/review?{escape(urlencode({'batch': b.batch_id}))}'>its results</a>")
    script = (f"<script>setInterval(async()=>{{try{{const r=await fetch("
              f"'/batches/{b.batch_id}/panels',{{cache:'no-store',credentials:'same-origin'}});"
              f"if(r.ok){{document.getElementById('panels').innerHTML=await r.text();}}}}"
              f"catch(e){{}}}},{REFRESH_SECONDS * 1000});</script>")
    head = (f"<h1>Batch {b.batch_id} · {_e(b.name)} <span class='badge state-{_e(b.state)}'"
            f" id='batch-state'>{_e(b.state)}</span></h1>"
            f"<p class='muted'>lane {_e(b.lane)} · weight {b.weight:g} · created "
            f"{b.created_at:%Y-%m-%d %H:%M} UTC · manifest SHA-256 "
            f"<code>{_e(b.manifest_sha256)}</code></p>")
    log_rows = "".join(
        f"<tr><td>{a['at']:%Y-%m-%d %H:%M:%S}</td><td>{_e(a['actor'])}</td>"
        f"<td>{_e(a['surface'])}</td><td>{_e(a['action'])}</td><td>{_e(a['detail'])}</td></tr>"
        for a in actions_log or [])
    log = (f"<div class='card' id='actions-log'><h2>Actions on this batch</h2><table><tr>"
           f"<th>at (UTC)</th><th>who</th><th>from</th><th>action</th><th>what</th></tr>"
           f"{log_rows}</table></div>") if log_rows else ""
    return _page(f"Batch {b.batch_id}",
                 f"{head}{note}<div class='actions'>{actions}</div>"
                 f"<div id='panels'>{panels(board)}</div>{log}", script=script)


def _action(batch_id: int, action: str, label: str, danger: bool = False) -> str:
    css = " class='danger'" if danger else ""
    return (f"<form method='get' action='/batches/{batch_id}/{action}'>"
            f"<button type='submit' id='{action}'{css}>{label}…</button></form>")


def panels(b: Dashboard) -> str:
    """Every panel of one batch, as the fragment the page replaces in place."""
    states = svg.stacked_bar(
        [(s, b.by_state.get(s, 0), c) for s, c in STATE_COLOURS.items() if b.by_state.get(s)],
        title="jobs by state")
    share = b.share.calls_per_second
    progress = (
        f"<div class='card' id='progress'><h2>Progress</h2><div class='big'>{b.done:,} / "
        f"{b.total:,}</div>{states}<p>ETA <b id='eta'>{duration(b.eta_seconds)}</b> at its "
        f"share of the budget: <b>{share:.1f}</b> calls/s of {b.budget:g} (weight "
        f"{b.share.weight:g} of {b.share.weights:g} over {b.share.batches} batch(es) due; "
        f"onboarding {b.share.onboarding:.1f}/s), {b.calls_per_job:.2f} calls a job.</p></div>")

    points = b.per_second()
    xs = [t.timestamp() for t, _ in points]
    total = [(x, sum(codes.values())) for x, (_, codes) in zip(xs, points, strict=True)]
    errors = [(x, sum(v for c, v in codes.items() if c != "Success"))
              for x, (_, codes) in zip(xs, points, strict=True)]
    lines = [("calls/s", total), ("not Success", errors)]
    accounts = b.per_account()
    if len(accounts) > 1:  # one line per account that called for the batch
        lines += [(f"{name} ({b.budgets[name]:g}/s)" if name in b.budgets else name,
                   [(t.timestamp(), v) for t, v in points])
                  for name, points in accounts.items()]
    rate = svg.line_chart(lines, hline=b.budget, hline_label=f"budget {b.budget:g}/s",
                          title="calls per second", x_format=_clock)
    waited = svg.line_chart([("s waited a call", [(t.timestamp(), w)
                                                  for t, w in b.waited_per_call()])],
                            height=160, title="rate-limit wait per call", x_format=_clock)
    calls = (f"<div class='card' id='calls'><h2>Calls per second against the budget</h2>"
             f"{rate}<p class='muted'>{b.calls:,} calls, by minute.</p></div>"
             f"<div class='card' id='held'><h2>Held back</h2>{waited}<p>Mean wait for a "
             f"rate-limit slot per call, by minute. Minutes in which an account error "
             f"stopped the calls (the breaker): <b>{b.account_minutes()}</b>.</p></div>")

    o = b.outcomes
    mix = svg.stacked_bar([
        ("passed", o.passed, svg.PASS), ("failed verdict", sum(o.failed_verdict.values()),
                                         svg.FAIL),
        ("refused by preflight", o.refused, "#8c6d1f"),
        ("ended before a call", sum(o.local.values()), "#7b5cc4"),
        ("failed at FaceID", sum(o.failed.values()), "#e07b00"),
        ("cancelled", o.cancelled, svg.MUTED)], title="outcomes")
    rows = sorted([*(("verdict", c, n) for c, n in o.failed_verdict.items()),
                   *(("before a call", c, n) for c, n in o.local.items()),
                   *(("FaceID", c, n) for c, n in o.failed.items())], key=lambda r: -r[2])
    table = "".join(f"<tr><td>{escape(k)}</td><td><code>{escape(c)}</code></td>"
                    f"<td class='n'>{n:,}</td></tr>" for k, c, n in rows[:12])
    outcomes = (f"<div class='card' id='outcomes'><h2>Outcomes</h2>{mix}<table>"
                f"<tr><th>ended</th><th>code</th><th>jobs</th></tr>{table}</table></div>")

    by_code: dict[str, list[tuple[float, float]]] = {}
    for t, codes in points:
        for c, v in codes.items():
            if c != "Success":
                by_code.setdefault(c, []).append((t.timestamp(), v * 60))
    top = sorted(by_code, key=lambda c: -sum(v for _, v in by_code[c]))[:6]
    errors_chart = svg.line_chart([(c, by_code[c]) for c in top], height=200,
                                  title="answers other than Success per minute",
                                  x_format=_clock)
    codes_card = (f"<div class='card' id='codes'><h2>Error codes over time</h2>"
                  f"{errors_chart}</div>")

    hist = svg.histogram(b.sim_histogram, marker=b.threshold,
                         marker_label="pass threshold", title="Sim of the verdicts")
    attempts = svg.histogram([(float(k) - 0.5, float(k) + 0.5, n)
                              for k, n in sorted(b.attempts.items())], height=160,
                             title="attempts per ended job")
    sims = (f"<div class='card' id='sim'><h2>Sim against the pass threshold</h2>{hist}</div>"
            f"<div class='card' id='attempts'><h2>Attempts per job</h2>{attempts}</div>")

    money = "amount not estimated (FACEID_PRICE_PER_CALL is 0)" if not b.price else (
        f"<b id='cost'>{b.cost:.2f}</b> {escape(b.currency)} so far, "
        f"<b id='projected'>{b.projected_cost:.2f}</b> {escape(b.currency)} projected")
    cost = (f"<div class='card' id='money'><h2>Billable calls and cost</h2><div class='big'>"
            f"{b.billable_calls:,}</div><p>billable calls of {b.calls:,}; {money}.</p></div>")
    read = (f"<p class='muted' id='read-at' data-read-at='{b.read_at.timestamp():.3f}'>"
            f"read {b.read_at:%H:%M:%S} UTC; refreshed every {REFRESH_SECONDS} s</p>")
    return (f"<div class='grid'>{progress}{cost}{calls}{outcomes}{codes_card}{sims}</div>"
            f"{read}")


def confirm_page(batch_id: int, action: str, title: str, lines: list[str],
                 hidden: dict[str, str], button: str, *, danger: bool = False) -> str:
    """A dry run's page: what the action will do (``lines``, plain text), and the one button
    that does it."""
    fields = "".join(f"<input type='hidden' name='{escape(k, quote=True)}' "
                     f"value='{escape(v, quote=True)}'>" for k, v in hidden.items())
    items = "".join(f"<li>{escape(line)}</li>" for line in lines)
    css = " class='danger'" if danger else ""
    return _page(title, f"<p><a href='/batches/{batch_id}'>« batch {batch_id}</a></p>"
                        f"<h1 id='title'>{escape(title)}</h1><ul id='plan'>{items}</ul>"
                        f"<form method='post' action='/batches/{batch_id}/{action}'>{fields}"
                        f"<button type='submit' id='confirm'{css}>{escape(button)}</button> "
                        f"<a href='/batches/{batch_id}'>Back</a></form>")


def refused_page(batch_id: int, why: str) -> str:
    """An action that was not taken, and why (nothing was changed)."""
    return _page("Not done", f"<p><a href='/batches/{batch_id}'>« batch {batch_id}</a></p>"
                             f"<h1 id='title'>Nothing was done</h1>"
                             f"<p class='flash' id='refused'>{escape(why)}</p>")
