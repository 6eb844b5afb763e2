"""Small server-side SVG charts for the admin pages: pure functions that return SVG strings.

Every text (labels, titles, tooltips) goes through html.escape; colours are CSS colour values
(``#1a7f37``, ``rgb(...)``, ``var(--pass)``) and anything else in their place is replaced by
``currentColor``. Each chart is ``role="img"`` with an ``aria-label`` and a ``<title>``; its
parts carry ``<title>`` tooltips. Text is drawn in ``currentColor``, so the charts follow the
page's colour scheme.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from html import escape
from typing import NamedTuple

# Defaults a page may restyle by setting the CSS variables --pass, --fail, --muted, --accent
# and --bg (the page background, around the marks of a timeline).
PASS = "var(--pass, #1a7f37)"
FAIL = "var(--fail, #c62828)"
MUTED = "var(--muted, #8a8f98)"
ACCENT = "var(--accent, #2f6fd0)"
BACKGROUND = "var(--bg, #ffffff)"
# Series colours of line_chart, in order.
PALETTE = ("#2f6fd0", "#e07b00", "#1a9e77", "#c2185b", "#7b5cc4", "#8c6d1f", "#00838f",
           "#5f6b7a")

_COLOUR = re.compile(r"^[#\w\s(),.%+-]{1,64}$")
FONT = "font-family='system-ui,sans-serif' font-size='11'"


class Mark(NamedTuple):
    """One point of a timeline: where (same unit as the timeline's start and end), its
    colour, and its tooltip. A plain ``(at, colour, title)`` tuple works as well."""

    at: float
    colour: str
    title: str


def text(value: object) -> str:
    """A value as SVG/XML text or attribute content."""
    return escape(str(value), quote=True)


def colour(value: str) -> str:
    """A CSS colour value fit for an attribute; ``currentColor`` for anything else."""
    value = value.strip()
    return value if _COLOUR.match(value) else "currentColor"


def paint(fill: str | None = None, stroke: str | None = None) -> str:
    """A ``style`` attribute setting fill and stroke (a style, not the presentation
    attributes, so that ``var(--name, fallback)`` colours work)."""
    rules = [f"{name}:{colour(value)}" for name, value in (("fill", fill), ("stroke", stroke))
             if value is not None]
    return f"style='{';'.join(rules)}'"


def num(value: float) -> str:
    """A coordinate: at most one decimal, no trailing zero."""
    if not math.isfinite(value):
        value = 0.0
    out = f"{value:.1f}"
    return out[:-2] if out.endswith(".0") else out


def label(value: float) -> str:
    """A compact axis or tooltip number: 12, 0.25, 1.5k, 2.5M."""
    if not math.isfinite(value):
        return "∞" if value > 0 else "-∞" if value < 0 else "-"
    size = abs(value)
    if size >= 1e6:
        return f"{value / 1e6:.3g}M"
    if size >= 1e4:
        return f"{value / 1e3:.3g}k"
    if value == int(value):
        return str(int(value))
    return f"{value:.3g}"


def scale(value: float, lo: float, hi: float, x0: float, x1: float) -> float:
    """``value`` of ``[lo, hi]`` mapped onto ``[x0, x1]``, clamped to it."""
    if hi <= lo:
        return (x0 + x1) / 2
    share = min(1.0, max(0.0, (value - lo) / (hi - lo)))
    return x0 + share * (x1 - x0)


def ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(1, count)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out: list[float] = []
    value = first
    while value <= hi + step * 1e-9:
        out.append(round(value, 12))
        value += step
    return out


def ceiling(value: float) -> float:
    """The smallest round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten)
    at or above ``value``; 1 for anything not above 0."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(round(m * power, 12) for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10)
                if m * power >= value * (1 - 1e-12))


def _svg(width: float, height: float, title: str, body: str, css_class: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' class='{text(css_class)}' role='img' "
            f"aria-label='{text(title)}' width='{num(width)}' height='{num(height)}' "
            f"viewBox='0 0 {num(width)} {num(height)}' {FONT}>"
            f"<title>{text(title)}</title>{body}</svg>")


def bar(value: float | None, threshold: float | None, lo: float = 0.0, hi: float = 100.0, *,
        passed: bool | None = None, width: int = 260, height: int = 30, title: str = "Sim",
        css_class: str = "bar") -> str:
    """A horizontal bar of ``value`` on ``[lo, hi]`` with ``threshold`` marked.

    The bar is in the pass colour when ``passed`` (default: value ≥ threshold), else the fail
    colour; the threshold is a vertical line (class ``threshold``), the value the bar's end
    (class ``value``, its x in ``data-x``).
    """
    pad = 4.0
    x0, x1 = pad, width - pad
    track_y, track_h = 4.0, height - 16.0
    ok = passed if passed is not None else (
        value is not None and threshold is not None and value >= threshold)
    fill = PASS if ok else FAIL
    parts = [f"<rect class='track' x='{num(x0)}' y='{num(track_y)}' width='{num(x1 - x0)}' "
             f"height='{num(track_h)}' rx='3' {paint(MUTED)} fill-opacity='0.2'/>"]
    described = [f"{title}: " + ("no value" if value is None else label(value))]
    if value is not None and math.isfinite(value):
        vx = scale(value, lo, hi, x0, x1)
        parts.append(
            f"<rect class='value' data-x='{num(vx)}' x='{num(x0)}' y='{num(track_y)}' "
            f"width='{num(vx - x0)}' height='{num(track_h)}' rx='3' {paint(fill)}>"
            f"<title>{text(title)} {text(label(value))}</title></rect>")
    else:
        parts.append(f"<text x='{num(width / 2)}' y='{num(track_y + track_h - 5)}' "
                     f"text-anchor='middle' fill='currentColor'>no value</text>")
    if threshold is not None and math.isfinite(threshold):
        tx = scale(threshold, lo, hi, x0, x1)
        described.append(f"threshold {label(threshold)}")
        parts.append(
            f"<line class='threshold' data-x='{num(tx)}' x1='{num(tx)}' x2='{num(tx)}' "
            f"y1='1' y2='{num(track_y + track_h + 3)}' stroke='currentColor' stroke-width='2'>"
            f"<title>threshold {text(label(threshold))}</title></line>")
    base = height - 2
    parts.append(f"<text x='{num(x0)}' y='{num(base)}' fill='currentColor'>{text(label(lo))}"
                 f"</text><text x='{num(x1)}' y='{num(base)}' text-anchor='end' "
                 f"fill='currentColor'>{text(label(hi))}</text>")
    if value is not None:
        described.append("pass" if ok else "fail")
    return _svg(width, height, ", ".join(described), "".join(parts), css_class)


def timeline(points: Sequence[tuple[float, str, str]], start: float, end: float, *,
             width: int = 640, height: int = 54, start_label: str = "", end_label: str = "",
             title: str = "timeline", css_class: str = "timeline") -> str:
    """Marks (``(at, colour, tooltip)``, see Mark) along a line from ``start`` to ``end``.

    Each mark is a circle in a ``<g class='mark'>`` with its tooltip; marks outside the span
    sit at its ends. ``start_label`` and ``end_label`` are written under the ends.
    """
    pad = 10.0
    x0, x1 = pad, width - pad
    y = 20.0
    hi = end if end > start else start + 1.0
    parts = [f"<line class='axis' x1='{num(x0)}' x2='{num(x1)}' y1='{num(y)}' y2='{num(y)}' "
             f"stroke='currentColor' stroke-opacity='0.5' stroke-width='2'/>",
             f"<line x1='{num(x0)}' x2='{num(x0)}' y1='{num(y - 6)}' y2='{num(y + 6)}' "
             f"stroke='currentColor' stroke-opacity='0.5'/>",
             f"<line x1='{num(x1)}' x2='{num(x1)}' y1='{num(y - 6)}' y2='{num(y + 6)}' "
             f"stroke='currentColor' stroke-opacity='0.5'/>"]
    for at, fill, tip in points:
        x = scale(at, start, hi, x0, x1)
        parts.append(f"<g class='mark'><title>{text(tip)}</title><circle cx='{num(x)}' "
                     f"cy='{num(y)}' r='6' {paint(fill, BACKGROUND)} "
                     f"stroke-width='1.5'/></g>")
    base = height - 6
    if start_label:
        parts.append(f"<text x='{num(x0)}' y='{num(base)}' fill='currentColor'>"
                     f"{text(start_label)}</text>")
    if end_label:
        parts.append(f"<text x='{num(x1)}' y='{num(base)}' text-anchor='end' "
                     f"fill='currentColor'>{text(end_label)}</text>")
    return _svg(width, height, f"{title}: {len(points)} marks", "".join(parts), css_class)


def _y_axis(lo: float, hi: float, x0: float, x1: float, y0: float, y1: float,
            fmt: Callable[[float], str]) -> list[str]:
    out = []
    for t in ticks(lo, hi, 4):
        y = scale(t, lo, hi, y0, y1)
        out.append(f"<line class='grid' x1='{num(x0)}' x2='{num(x1)}' y1='{num(y)}' "
                   f"y2='{num(y)}' stroke='currentColor' stroke-opacity='0.12'/>"
                   f"<text x='{num(x0 - 4)}' y='{num(y + 4)}' text-anchor='end' "
                   f"fill='currentColor'>{text(fmt(t))}</text>")
    return out


def _x_axis(lo: float, hi: float, x0: float, x1: float, y: float,
            fmt: Callable[[float], str], count: int) -> list[str]:
    out = [f"<line class='axis' x1='{num(x0)}' x2='{num(x1)}' y1='{num(y)}' y2='{num(y)}' "
           f"stroke='currentColor' stroke-opacity='0.5'/>"]
    for t in ticks(lo, hi, count):
        x = scale(t, lo, hi, x0, x1)
        out.append(f"<line x1='{num(x)}' x2='{num(x)}' y1='{num(y)}' y2='{num(y + 4)}' "
                   f"stroke='currentColor' stroke-opacity='0.5'/><text class='tick' "
                   f"x='{num(x)}' y='{num(y + 15)}' text-anchor='middle' "
                   f"fill='currentColor'>{text(fmt(t))}</text>")
    return out


def _hline(value: float, note: str, lo: float, hi: float, x0: float, x1: float, y0: float,
           y1: float) -> str:
    y = scale(value, lo, hi, y0, y1)
    tip = f"{note} {label(value)}".strip()
    return (f"<g class='hline'><title>{text(tip)}</title><line x1='{num(x0)}' x2='{num(x1)}' "
            f"y1='{num(y)}' y2='{num(y)}' {paint(stroke=FAIL)} stroke-width='1.5' "
            f"stroke-dasharray='6 4'/><text x='{num(x1)}' y='{num(y - 4)}' text-anchor='end' "
            f"{paint(FAIL)}>{text(tip)}</text></g>")


def line_chart(series: list[tuple[str, list[tuple[float, float]]]], *, width: int = 640,
               height: int = 240, y_max: float | None = None, hline: float | None = None,
               hline_label: str = "", title: str = "chart",
               x_format: Callable[[float], str] = label,
               y_format: Callable[[float], str] = label, max_dots: int = 120,
               colours: Sequence[str] = PALETTE, css_class: str = "line-chart") -> str:
    """Lines of ``(name, [(x, y), ...])`` on shared axes from y = 0, with round ticks.

    ``y_max`` fixes the top of the y axis (default: the largest value or ``hline``);
    ``hline`` draws a dashed horizontal reference line labelled ``hline_label`` (a budget, a
    limit). ``x_format``/``y_format`` write the tick labels (e.g. epoch seconds as clock
    time). Series take ``colours`` in turn. A series of at most ``max_dots`` points also gets
    a dot with a tooltip per point.
    """
    left, right, top, bottom = 46.0, 12.0, 22.0, 24.0
    x0, x1, y_top, y_bottom = left, width - right, top, height - bottom
    xs = [x for _, pts in series for x, y in pts if math.isfinite(x) and math.isfinite(y)]
    ys = [y for _, pts in series for x, y in pts if math.isfinite(x) and math.isfinite(y)]
    if not xs:
        body = (f"<text x='{num(width / 2)}' y='{num(height / 2)}' text-anchor='middle' "
                f"fill='currentColor'>no data</text>")
        return _svg(width, height, f"{title}: no data", body, css_class)
    x_lo, x_hi = min(xs), max(xs)
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo = min(0.0, min(ys))
    if y_max is not None:
        y_hi = y_max
    else:
        y_hi = ceiling(max([*ys, hline if hline is not None else 0.0]) * 1.05)
    if y_hi <= y_lo:
        y_hi = y_lo + 1
    parts = _y_axis(y_lo, y_hi, x0, x1, y_bottom, y_top, y_format)
    parts += _x_axis(x_lo, x_hi, x0, x1, y_bottom, x_format, max(2, int((x1 - x0) / 90)))
    legend_x = x0
    for i, (name, pts) in enumerate(series):
        stroke = colours[i % len(colours)] if colours else ACCENT
        ok = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
        coords = " ".join(f"{num(scale(x, x_lo, x_hi, x0, x1))},"
                          f"{num(scale(y, y_lo, y_hi, y_bottom, y_top))}" for x, y in ok)
        dots = "" if len(ok) > max_dots else "".join(
            f"<circle cx='{num(scale(x, x_lo, x_hi, x0, x1))}' "
            f"cy='{num(scale(y, y_lo, y_hi, y_bottom, y_top))}' r='2.5' {paint(stroke)}>"
            f"<title>{text(name)}: {text(x_format(x))} → {text(y_format(y))}</title></circle>"
            for x, y in ok)
        parts.append(f"<g class='series' data-name='{text(name)}'><title>{text(name)}</title>"
                     f"<polyline points='{coords}' {paint('none', stroke)} "
                     f"stroke-width='2' stroke-linejoin='round'/>{dots}</g>")
        parts.append(f"<rect x='{num(legend_x)}' y='6' width='10' height='10' "
                     f"{paint(stroke)}/><text x='{num(legend_x + 14)}' y='15' "
                     f"fill='currentColor'>{text(name)}</text>")
        legend_x += 26 + 6.5 * len(name)
    if hline is not None and math.isfinite(hline):
        parts.append(_hline(hline, hline_label, y_lo, y_hi, x0, x1, y_bottom, y_top))
    names = ", ".join(name for name, _ in series)
    return _svg(width, height, f"{title}: {names}", "".join(parts), css_class)


def histogram(buckets: list[tuple[float, float, int]], *, marker: float | None = None,
              marker_label: str = "", width: int = 640, height: int = 200,
              title: str = "histogram", fill: str = ACCENT,
              x_format: Callable[[float], str] = label,
              css_class: str = "histogram") -> str:
    """Bars of ``(lo, hi, count)`` buckets on a linear x axis, with an optional vertical
    ``marker`` (a threshold, a target) labelled ``marker_label``.

    A bucket whose ``hi`` is infinite (Prometheus' ``+Inf``) is drawn as wide as the one
    before it and labelled ``≥ lo``.
    """
    left, right, top, bottom = 40.0, 12.0, 16.0, 24.0
    x0, x1, y_top, y_bottom = left, width - right, top, height - bottom
    drawn: list[tuple[float, float, int, str]] = []
    for lo, hi, count in buckets:
        if not math.isfinite(lo):
            continue
        tip = f"{x_format(lo)}–{x_format(hi)}: {count}"
        if not math.isfinite(hi):
            prev = drawn[-1][1] - drawn[-1][0] if drawn else 1.0
            hi, tip = lo + prev, f"≥ {x_format(lo)}: {count}"
        drawn.append((lo, hi, count, tip))
    if not drawn:
        body = (f"<text x='{num(width / 2)}' y='{num(height / 2)}' text-anchor='middle' "
                f"fill='currentColor'>no data</text>")
        return _svg(width, height, f"{title}: no data", body, css_class)
    x_lo, x_hi = min(b[0] for b in drawn), max(b[1] for b in drawn)
    y_hi = ceiling(max(1, max(b[2] for b in drawn)))
    parts = _y_axis(0, y_hi, x0, x1, y_bottom, y_top, label)
    parts += _x_axis(x_lo, x_hi, x0, x1, y_bottom, x_format, max(2, int((x1 - x0) / 70)))
    for lo, hi, count, tip in drawn:
        bx0, bx1 = scale(lo, x_lo, x_hi, x0, x1), scale(hi, x_lo, x_hi, x0, x1)
        by = scale(count, 0, y_hi, y_bottom, y_top)
        parts.append(f"<rect class='bucket' x='{num(bx0 + 0.5)}' y='{num(by)}' "
                     f"width='{num(max(0.5, bx1 - bx0 - 1))}' height='{num(y_bottom - by)}' "
                     f"{paint(fill)}><title>{text(tip)}</title></rect>")
    if marker is not None and math.isfinite(marker):
        mx = scale(marker, x_lo, x_hi, x0, x1)
        tip = f"{marker_label} {x_format(marker)}".strip()
        parts.append(f"<g class='marker' data-x='{num(mx)}'><title>{text(tip)}</title>"
                     f"<line x1='{num(mx)}' x2='{num(mx)}' y1='{num(y_top - 4)}' "
                     f"y2='{num(y_bottom)}' {paint(stroke=FAIL)} stroke-width='2' "
                     f"stroke-dasharray='4 3'/><text x='{num(mx + 4)}' y='{num(y_top + 6)}' "
                     f"{paint(FAIL)}>{text(tip)}</text></g>")
    total = sum(b[2] for b in drawn)
    return _svg(width, height, f"{title}: {total} in {len(drawn)} buckets", "".join(parts),
                css_class)


def stacked_bar(parts: list[tuple[str, int, str]], *, width: int = 640, height: int = 44,
                title: str = "share", css_class: str = "stacked-bar") -> str:
    """One horizontal bar split into ``(label, count, css colour)`` parts by their share,
    each with a tooltip ``label: count (pct %)``, and a legend under it."""
    pad = 2.0
    x0, x1 = pad, width - pad
    bar_h = 18.0
    total = sum(max(0, n) for _, n, _ in parts)
    out = [f"<rect class='track' x='{num(x0)}' y='2' width='{num(x1 - x0)}' "
           f"height='{num(bar_h)}' rx='3' {paint(MUTED)} fill-opacity='0.2'/>"]
    x = x0
    legend_x = x0
    described = []
    for name, count, fill in parts:
        count = max(0, count)
        share = count / total if total else 0.0
        tip = f"{name}: {count} ({share * 100:.1f} %)"
        described.append(f"{name} {count}")
        w = share * (x1 - x0)
        if w > 0:
            out.append(f"<rect class='part' x='{num(x)}' y='2' width='{num(w)}' "
                       f"height='{num(bar_h)}' {paint(fill)}>"
                       f"<title>{text(tip)}</title></rect>")
        x += w
        out.append(f"<g class='legend'><title>{text(tip)}</title><rect x='{num(legend_x)}' "
                   f"y='{num(bar_h + 10)}' width='10' height='10' {paint(fill)}/>"
                   f"<text x='{num(legend_x + 14)}' y='{num(bar_h + 19)}' "
                   f"fill='currentColor'>{text(name)} {count}</text></g>")
        legend_x += 32 + 6.5 * (len(name) + len(str(count)))
    if not total:
        out.append(f"<text x='{num(width / 2)}' y='15' text-anchor='middle' "
                   f"fill='currentColor'>no data</text>")
    summary = ", ".join(described) if described else "no data"
    return _svg(width, height, f"{title}: {summary}", "".join(out), css_class)
