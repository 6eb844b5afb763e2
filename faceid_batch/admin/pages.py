"""Server-rendered review pages; every value shown goes through html.escape.

The pages need no external asset: the stylesheet, the SVG charts (svg.py) and the keyboard
handling (a small script) are inline. Keys on the listing: j/k or the arrow keys move the
highlight, Enter opens the highlighted job, / focuses the filters, n/p change page; on a job:
u or Backspace go back to the listing the job was opened from.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from faceid_batch.admin import svg
from faceid_batch.admin.queries import Listing
from faceid_batch.models import JobState, Lane

STYLE = """:root{--bg:#fff;--fg:#1d2127;--muted:#6b7280;--line:#e3e6ea;--head:#f4f6f8;
--hi:#fff4c2;--accent:#2f6fd0;--pass:#1a7f37;--fail:#c62828;--pass-bg:#dcf5e3;
--fail-bg:#fde2e1;--none-bg:#eceff2;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--bg:#15181c;--fg:#e4e7eb;--muted:#9aa3ad;
--line:#2c3238;--head:#1f2328;--hi:#3b3413;--accent:#6ea2ff;--pass:#4cc46f;--fail:#ff6b63;
--pass-bg:#153a22;--fail-bg:#45191a;--none-bg:#2a2f35}}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:var(--bg);color:var(--fg)}
main{padding:0 1.5em 2em}a{color:var(--accent)}
header.top{display:flex;align-items:center;gap:1em;padding:.6em 1.5em;
border-bottom:1px solid var(--line);background:var(--head)}
header.top .brand{font-size:1.1em;font-weight:700;flex:1}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
button{font:inherit;padding:3px 12px;border:1px solid var(--line);border-radius:4px;
background:var(--bg);color:var(--fg);cursor:pointer}
button[type=submit]{background:var(--accent);border-color:var(--accent);color:#fff}
form.logout button{background:var(--bg);color:var(--fg);border-color:var(--line)}
form.filters{display:flex;flex-wrap:wrap;gap:6px 10px;align-items:flex-end;padding:.7em;
margin:1em 0;border:1px solid var(--line);border-radius:6px;background:var(--head)}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:var(--muted)}
form.filters input,form.filters select{font:inherit;padding:3px 6px;width:9.5em;
border:1px solid var(--line);border-radius:4px;background:var(--bg);color:var(--fg)}
form.filters .actions{display:flex;gap:8px;align-items:center}
table{border-collapse:collapse;width:100%}
td,th{padding:4px 10px;text-align:left;border-bottom:1px solid var(--line);white-space:nowrap}
th{position:sticky;top:0;background:var(--head);z-index:1;font-weight:600}
th a{color:inherit;text-decoration:none}th a:hover{text-decoration:underline}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.key{max-width:28em;overflow:hidden;text-overflow:ellipsis}
tr.job:hover{background:var(--head)}
tr.job.current{background:var(--hi);outline:2px solid var(--accent);outline-offset:-2px}
.badge{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;font-weight:600;
background:var(--none-bg);color:var(--muted)}
.badge.pass{background:var(--pass-bg);color:var(--pass)}
.badge.fail{background:var(--fail-bg);color:var(--fail)}
.badge.big{font-size:18px;padding:4px 18px;border-radius:16px;
letter-spacing:.05em}
.pass{color:var(--pass)}.fail{color:var(--fail)}.muted{color:var(--muted)}
.keys{color:var(--muted);font-size:12px}
kbd{font:11px ui-monospace,monospace;border:1px solid var(--line);border-bottom-width:2px;
border-radius:3px;padding:0 4px;background:var(--head);color:var(--fg)}
nav.pager{display:flex;gap:1em;align-items:center;margin:.8em 0}
.summary{display:flex;flex-wrap:wrap;gap:1.5em;align-items:center;margin:1em 0}
.summary dl{display:grid;grid-template-columns:auto auto;gap:2px 12px;margin:0}
.summary dt{color:var(--muted)}.summary dd{margin:0}
figure{margin:0}.faces{display:flex;gap:2em;flex-wrap:wrap}
.faces img{max-width:360px;max-height:360px;border:1px solid var(--line);border-radius:4px;
background:var(--head)}
figcaption{color:var(--muted);font-size:12px}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;color:var(--muted);
margin:2px 0 8px}.swatch{display:inline-block;width:10px;height:10px;border-radius:50%;
margin-right:4px;vertical-align:baseline}
svg{max-width:100%;height:auto}"""
# On each page behind the login. A form that POSTs, not a link: a GET changes nothing.
LOGOUT = ("<form class='logout' method='post' action='/logout'>"
          "<button type='submit' id='logout'>Log out</button></form>")

FILTERS = (("batch", "batch id"), ("lane", "lane"), ("state", "state"), ("code", "outcome code"),
           ("sim_min", "Sim ≥"), ("sim_max", "Sim ≤"), ("since", "created ≥ (ISO)"),
           ("until", "created < (ISO)"), ("key_prefix", "key prefix"), ("tenant", "tenant"))
# Suggestions (a <datalist>) for the filter fields with a closed set of values.
CHOICES = {"lane": tuple(lane.value for lane in Lane),
           "state": tuple(state.value for state in JobState)}

# Listing columns: (sort key or "" when the column does not sort, header, numeric).
COLUMNS = (("id", "id", True), ("key", "key", False), ("", "batch", True), ("", "lane", False),
           ("state", "state", False), ("attempts", "tries", True), ("code", "outcome", False),
           ("sim", "Sim", True), ("", "verdict", False), ("created", "created", False))

# Attempt kinds (attempts.kind: call/errors.py's Kind, and "final" in older rows) -> colour.
KIND_COLOURS = {
    "success": svg.PASS,
    "verdict": "#7b5cc4",
    "final": svg.ACCENT,
    "transient": "#e07b00",
    "throttled": "#c9a100",
    "request": svg.FAIL,
    "account": "#8c1d40",
}
OTHER_KIND = svg.MUTED

# The listing's keys. The script reads no value from the page but the rows and the pager's
# links, and stores the listing's address (this tab only) for the job page's "back".
LISTING_SCRIPT = """(function(){
var rows=Array.prototype.slice.call(document.querySelectorAll('tr.job')),at=-1;
try{sessionStorage.setItem('review-list',location.pathname+location.search)}catch(e){}
function mark(n){if(!rows.length)return;if(at>=0){rows[at].classList.remove('current');
rows[at].removeAttribute('aria-current')}at=Math.max(0,Math.min(rows.length-1,n));
rows[at].classList.add('current');rows[at].setAttribute('aria-current','true');
rows[at].scrollIntoView({block:'nearest'})}
function follow(id){var a=document.getElementById(id);if(a){location.href=a.href}}
rows.forEach(function(r,i){r.addEventListener('click',function(){mark(i)})});
document.addEventListener('keydown',function(e){
if(e.ctrlKey||e.metaKey||e.altKey)return;var t=e.target;
if(t&&(t.tagName==='INPUT'||t.tagName==='SELECT'||t.tagName==='TEXTAREA'||
t.isContentEditable)){if(e.key==='Escape'){t.blur()}return}
switch(e.key){
case'j':case'ArrowDown':mark(at+1);break;
case'k':case'ArrowUp':mark(at<0?0:at-1);break;
case'Enter':if(at<0||(t&&(t.tagName==='A'||t.tagName==='BUTTON')))return;
location.href=rows[at].dataset.href;break;
case'/':var f=document.querySelector('form.filters input');if(f){f.focus();f.select()}break;
case'n':follow('next');break;case'p':follow('prev');break;
default:return}
e.preventDefault()})})();"""

JOB_SCRIPT = """(function(){
var back='/review';try{back=sessionStorage.getItem('review-list')||back}catch(e){}
var up=document.getElementById('back');if(up){up.href=back}
document.addEventListener('keydown',function(e){
if(e.ctrlKey||e.metaKey||e.altKey)return;var t=e.target;
if(t&&(t.tagName==='INPUT'||t.tagName==='SELECT'||t.tagName==='TEXTAREA'||
t.isContentEditable))return;
if(e.key==='u'||e.key==='Backspace'){e.preventDefault();location.href=back}})})();"""


def _page(title: str, body: str, script: str = "", heading: str = "") -> str:
    top = (f"<header class='top'><span class='brand'>{escape(heading)}</span>{LOGOUT}</header>"
           if heading else "")
    tail = f"<script>{script}</script>" if script else ""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{escape(title)}</title>"
            f"<meta name='referrer' content='no-referrer'><style>{STYLE}</style></head>"
            f"<body>{top}<main>{body}</main>{tail}</body></html>")


def _e(value: Any) -> str:
    return "-" if value is None else escape(str(value))


def _verdict(passed: bool | None, big: bool = False, element_id: str = "") -> str:
    size = " big" if big else ""
    ident = f" id='{element_id}'" if element_id else ""
    if passed is None:
        return f"<span class='badge none{size}'{ident}>no verdict</span>"
    word = "pass" if passed else "fail"
    return f"<span class='badge {word}{size}'{ident}>{word}</span>"


def _when(value: Any) -> str:
    """A timestamp to the second, without its zone (all times are UTC)."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return _e(value)


def _seconds(value: datetime) -> float:
    """Epoch seconds; a time without a zone (SQLite) is UTC."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def login(message: str = "") -> str:
    note = f"<p class='fail'>{escape(message)}</p>" if message else ""
    return _page("Admin login", f"""<h1>faceid-batch admin</h1>{note}
<form method="post" action="/login"><label>Admin token
<input type="password" name="token" id="token" autocomplete="off" autofocus></label>
<button type="submit" id="login">Log in</button></form>""")


def _filters(out: Listing, params: dict[str, str]) -> str:
    fields = "".join(
        f"<label>{escape(label)} <input name='{name}' id='f-{name}' "
        f"value='{escape(params.get(name, ''), quote=True)}'"
        f"{_list_attr(name)}></label>" for name, label in FILTERS)
    lists = "".join(
        f"<datalist id='choices-{name}'>"
        + "".join(f"<option value='{escape(v, quote=True)}'>" for v in values) + "</datalist>"
        for name, values in CHOICES.items())
    verdict = params.get("verdict", "")
    options = "".join(f"<option value='{v}'{' selected' if v == verdict else ''}>{t}</option>"
                      for v, t in (("", "any"), ("pass", "pass"), ("fail", "fail")))
    return (f"<form class='filters' method='get' action='/review'>{fields}"
            f"<label>verdict <select name='verdict' id='f-verdict'>{options}</select></label>"
            f"<input type='hidden' name='sort' value='{escape(out.sort, quote=True)}'>"
            "<span class='actions'><button type='submit' id='apply'>Filter</button>"
            f"<a href='/review' id='clear'>clear</a></span>{lists}</form>")


def _list_attr(name: str) -> str:
    return f" list='choices-{name}'" if name in CHOICES else ""


def _header(out: Listing, params: dict[str, str]) -> str:
    cells = []
    for key, title, numeric in COLUMNS:
        css = " class='num'" if numeric else ""
        if not key:
            cells.append(f"<th{css}>{title}</th>")
            continue
        current = out.sort.lstrip("-") == key
        descending = out.sort.startswith("-")
        # A click on the sorted column turns its order around; on another, it sorts by it.
        target = (key if descending else f"-{key}") if current else (
            f"-{key}" if numeric or key == "created" else key)
        arrow = (" ▼" if descending else " ▲") if current else ""
        sort = " aria-sort='descending'" if current and descending else (
            " aria-sort='ascending'" if current else "")
        query = escape(urlencode({**params, "sort": target, "page": 1}))
        cells.append(f"<th{css}{sort}><a href='?{query}'>{title}{arrow}</a></th>")
    return "<thead><tr>" + "".join(cells) + "</tr></thead>"


def listing(out: Listing, params: dict[str, str]) -> str:
    rows = "".join(
        f"<tr class='job' data-href='/review/jobs/{r.id}'>"
        f"<td class='num'><a href='/review/jobs/{r.id}'>{r.id}</a></td>"
        f"<td class='key' title='{escape(r.key, quote=True)}'>{_e(r.key)}</td>"
        f"<td class='num'>{_e(r.batch_id)}</td><td>{_e(r.lane)}</td><td>{_e(r.state)}</td>"
        f"<td class='num'>{r.attempts}</td><td>{_e(r.code)}</td>"
        f"<td class='num'>{'-' if r.sim is None else f'{r.sim:.2f}'}</td>"
        f"<td>{_verdict(r.passed)}</td><td>{_when(r.created_at)}</td></tr>"
        for r in out.rows)
    if not out.rows:
        rows = f"<tr><td colspan='{len(COLUMNS)}' class='muted'>no job matches</td></tr>"
    nav = []
    if out.page > 1:
        nav.append(f"<a id='prev' href='?{escape(urlencode({**params, 'page': out.page - 1}))}'>"
                   "« previous</a>")
    if out.has_more:
        nav.append(f"<a id='next' href='?{escape(urlencode({**params, 'page': out.page + 1}))}'>"
                   "next »</a>")
    keys = ("<p class='keys' id='keys'><kbd>j</kbd>/<kbd>k</kbd> or <kbd>↓</kbd>/<kbd>↑</kbd> "
            "move · <kbd>Enter</kbd> open · <kbd>/</kbd> filter · <kbd>n</kbd>/<kbd>p</kbd> "
            "next/previous page</p>")
    return _page("Results", f"""{_filters(out, params)}{keys}
<table id='results'>{_header(out, params)}<tbody>{rows}</tbody></table>
<nav class='pager'><span>page {out.page} · {len(out.rows)} rows</span>{' '.join(nav)}</nav>""",
                 LISTING_SCRIPT, heading="faceid-batch · results")


def kind_colour(kind: Any) -> str:
    """The colour of an attempt kind on the timeline and in its legend."""
    return KIND_COLOURS.get(str(kind), OTHER_KIND)


def _timeline(j: dict[str, Any], attempts: list[dict[str, Any]]) -> str:
    """Each attempt as a mark at its start along the job's life, created to finished."""
    times = [a["started_at"] for a in attempts if isinstance(a.get("started_at"), datetime)]
    created = j.get("created_at") if isinstance(j.get("created_at"), datetime) else None
    finished = j.get("finished_at") if isinstance(j.get("finished_at"), datetime) else None
    if created is None and not times:
        return "<p class='muted'>no times recorded</p>"
    start = _seconds(created) if created else min(_seconds(t) for t in times)
    ends = [_seconds(t) + (a.get("latency_ms") or 0) / 1000 for a in attempts
            for t in [a.get("started_at")] if isinstance(t, datetime)]
    end = _seconds(finished) if finished else max([start, *ends])
    marks = []
    for a in attempts:
        at = a.get("started_at")
        if not isinstance(at, datetime):
            continue
        offset = _seconds(at) - start
        tip = (f"attempt {a['number']} · {a.get('kind')} · {a.get('code')} · "
               f"+{offset:.1f} s · {a.get('latency_ms')} ms · HTTP {a.get('http_status')}")
        marks.append(svg.Mark(_seconds(at), kind_colour(a.get("kind")), tip))
    start_label = f"created {_when(created)}" if created else ""
    end_label = (f"finished {_when(finished)} (+{end - start:.1f} s)" if finished
                 else f"not finished (+{end - start:.1f} s so far)")
    chart = svg.timeline(marks, start, end, width=720, start_label=start_label,
                         end_label=end_label, title="attempts over the job's life")
    kinds = sorted({str(a.get("kind")) for a in attempts})
    legend = "".join(
        f"<span><span class='swatch' style='background:{svg.colour(kind_colour(k))}'></span>"
        f"{escape(k)}</span>" for k in kinds)
    return f"<figure id='timeline'>{chart}<div class='legend'>{legend}</div></figure>"


def job(shown: dict[str, Any]) -> str:
    j, result, frame, images = shown["job"], shown["result"], shown["best_frame"], shown["images"]
    sim_value = None if not result else result["sim"]
    threshold = None if not result else result["threshold"]
    sim = "-" if sim_value is None else f"{sim_value:.2f}"
    bar = svg.bar(sim_value, threshold, passed=None if not result else result["passed"],
                  width=320, title="Sim")
    created = j.get("created_at")
    attempts = "".join(
        f"<tr><td class='num'>{a['number']}</td><td>{_when(a['started_at'])}</td>"
        f"<td class='num'>{_offset(a['started_at'], created)}</td><td>{_e(a['code'])}</td>"
        f"<td><span class='swatch' style='background:{svg.colour(kind_colour(a['kind']))}'>"
        f"</span>{_e(a['kind'])}</td><td>{_e(a['request_id'])}</td>"
        f"<td class='num'>{_e(a['http_status'])}</td><td class='num'>{a['latency_ms']}</td>"
        f"</tr>" for a in shown["attempts"])
    frame_note = "" if frame else " · <span class='muted'>no best frame stored</span>"
    note = " ".join(_e(v) for v in (result and result["description"], j["error"])
                    if v is not None)
    keys = "<p class='keys'><kbd>u</kbd> or <kbd>Backspace</kbd> back to the results</p>"
    return _page(f"Job {j['id']}", f"""<p><a href='/review' id='back'>« results</a></p>
<h1>Job {j['id']} · {_e(j['key'])}</h1>
<div class='summary'>{_verdict(j['passed'], big=True, element_id='verdict')}
<figure id='sim-bar'>{bar}<figcaption>Sim <b id='sim'>{sim}</b> against the threshold
{_e(threshold)}</figcaption></figure>
<dl><dt>outcome</dt><dd>{_e(j['code'])}</dd><dt>state</dt><dd>{_e(j['state'])}</dd>
<dt>attempts</dt><dd>{j['attempts']}</dd><dt>lane</dt><dd>{_e(j['lane'])}</dd>
<dt>batch</dt><dd>{_e(j['batch_id'])}</dd></dl></div>
{f"<p class='muted'>{note}</p>" if note else ""}
<div class='faces'>
<figure><img id='id-photo' alt='ID photo' src='{escape(images['id_photo'], quote=True)}'>
<figcaption>ID photo</figcaption></figure>
<figure><img id='best-frame' alt='best frame' src='{escape(images['best_frame'], quote=True)}'>
<figcaption>best frame{frame_note}</figcaption></figure></div>
<h2>Attempts</h2>{_timeline(j, shown['attempts'])}
<table id='attempts'><thead><tr><th class='num'>#</th><th>started</th><th class='num'>+s</th>
<th>code</th><th>kind</th><th>RequestId</th><th class='num'>HTTP</th><th class='num'>ms</th>
</tr></thead><tbody>{attempts}</tbody></table>{keys}""", JOB_SCRIPT,
                 heading="faceid-batch · job")


def _offset(at: Any, created: Any) -> str:
    """Seconds from the job's creation to ``at``."""
    if isinstance(at, datetime) and isinstance(created, datetime):
        return f"{_seconds(at) - _seconds(created):.1f}"
    return "-"
