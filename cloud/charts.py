"""Server-rendered SVG charts for the dashboard (no JavaScript). Each returns safe ``Markup``."""

from __future__ import annotations

from collections.abc import Callable

from markupsafe import Markup, escape

__all__ = ["bar_chart", "hbar_chart", "split_bar"]

ACCENT = "#b5562b"
MUTED = "#e7d7c9"
INK = "#3b2a20"


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() or v >= 100 else f"{v:,.1f}"


def bar_chart(labels: list[str], values: list[float], *, width: int = 560, height: int = 200,
              label_every: int = 1, title: str = "") -> Markup:
    """Vertical bars, one per label; the maximum value is printed; ``label_every`` thins x labels."""
    n = max(len(values), 1)
    top = max(values, default=0) or 1
    pad_b, pad_t = 22, 18
    plot_h = height - pad_b - pad_t
    bw = width / n
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
             f'<title>{escape(title)}</title>']
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = plot_h * v / top
        x = i * bw + bw * 0.12
        y = pad_t + plot_h - h
        color = ACCENT if v == top and v > 0 else "#d79a72"
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw * 0.76:.1f}" height="{max(h, 0.5):.1f}" rx="3" '
                     f'fill="{color}"><title>{escape(label)}: {_fmt(v)}</title></rect>')
        if v == top and v > 0:
            parts.append(f'<text x="{x + bw * 0.38:.1f}" y="{y - 4:.1f}" text-anchor="middle" class="val">{_fmt(v)}</text>')
        if i % label_every == 0:
            parts.append(f'<text x="{x + bw * 0.38:.1f}" y="{height - 6}" text-anchor="middle" class="lbl">'
                         f'{escape(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def hbar_chart(rows: list[tuple[str, float]], *, width: int = 560, row_h: int = 26, title: str = "") -> Markup:
    """Horizontal bars (label, value), e.g. top items; empty list → a short note."""
    if not rows:
        return Markup('<p class="empty">No data yet.</p>')
    top = max(v for _, v in rows) or 1
    label_w = 190
    height = row_h * len(rows) + 4
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
             f'<title>{escape(title)}</title>']
    for i, (label, v) in enumerate(rows):
        y = i * row_h + 2
        w = (width - label_w - 60) * v / top
        short = label if len(label) <= 26 else label[:25] + "…"
        parts.append(f'<text x="{label_w - 8}" y="{y + row_h * 0.62:.1f}" text-anchor="end" class="lbl">'
                     f'{escape(short)}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{max(w, 1):.1f}" height="{row_h - 8}" rx="3" '
                     f'fill="{ACCENT if i == 0 else "#d79a72"}"/>'
                     f'<text x="{label_w + w + 6:.1f}" y="{y + row_h * 0.62:.1f}" class="val">{_fmt(v)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def split_bar(parts: list[tuple[str, float, str]], *, width: int = 560, height: int = 46) -> Markup:
    """One stacked bar of shares, e.g. recognised vs unknown: ``[(label, value, colour)]``."""
    total = sum(v for _, v, _ in parts)
    if not total:
        return Markup('<p class="empty">No arrivals yet.</p>')
    x = 0.0
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img">']
    for label, v, colour in parts:
        w = width * v / total
        out.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="{height - 18}" fill="{colour}">'
                   f'<title>{escape(label)}: {_fmt(v)}</title></rect>')
        if w > 8 * (len(label) + 5) + 16:
            out.append(f'<text x="{x + 8:.1f}" y="{(height - 18) * 0.66:.1f}" class="inbar">{escape(label)} '
                       f'{100 * v / total:.0f}%</text>')
        x += w
    out.append("</svg>")
    out.append('<div class="legend">' + "".join(
        f'<span><i style="background:{colour}"></i>{escape(label)}: {_fmt(v)} ({100 * v / total:.0f}%)</span>'
        for label, v, colour in parts) + "</div>")
    return Markup("".join(out))


__all__ += ["heatmap", "trend_chart"]


def heatmap(rows: list[str], cols: list[str], values: list[list[float]], *, width: int = 620, title: str = "",
            col_label_every: int = 3) -> Markup:
    """A grid of cells shaded by value (e.g. weekday × hour); each cell has a tooltip with its value."""
    top = max((v for row in values for v in row), default=0) or 1
    label_w, head = 40, 18
    cw = (width - label_w) / max(len(cols), 1)
    ch = 22
    height = head + ch * len(rows) + 2
    parts = [f'<svg class="chart heat" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
             f'<title>{escape(title)}</title>']
    for j, col in enumerate(cols):
        if j % col_label_every == 0:
            parts.append(f'<text x="{label_w + j * cw + cw / 2:.1f}" y="12" text-anchor="middle" class="lbl">'
                         f'{escape(col)}</text>')
    for i, row in enumerate(rows):
        y = head + i * ch
        parts.append(f'<text x="{label_w - 6}" y="{y + ch * 0.68:.1f}" text-anchor="end" class="lbl">'
                     f'{escape(row)}</text>')
        for j, v in enumerate(values[i]):
            share = v / top
            fill = MUTED if v == 0 else ACCENT
            opacity = 0.35 if v == 0 else 0.15 + 0.85 * share
            parts.append(f'<rect x="{label_w + j * cw + 1:.1f}" y="{y + 1}" width="{cw - 2:.1f}" height="{ch - 2}" '
                         f'rx="2" fill="{fill}" fill-opacity="{opacity:.2f}"><title>{escape(row)} {escape(col)}: '
                         f'{_fmt(v)}</title></rect>')
    parts.append("</svg>")
    return Markup("".join(parts))


def trend_chart(labels: list[str], series: list[tuple[str, list[float], str]], *, width: int = 620,
                height: int = 200, title: str = "", value_label: Callable[[float], str] | None = None) -> Markup:
    """Lines over time, one per ``(name, values, colour)``, sharing the y axis from 0; a legend below.
    Fewer than two points → a short note.

    Args:
        value_label: writes a value of the y axis (its ``max`` label), e.g. as money in the store's currency
            (``₩13,500``); default: a plain number (``13,500``)."""
    if len(labels) < 2:
        return Markup('<p class="empty">Not enough days in this range for a trend.</p>')
    top = max((v for _, vals, _ in series for v in vals), default=0) or 1
    pad_l, pad_b, pad_t = 8, 22, 16
    plot_w, plot_h = width - 2 * pad_l, height - pad_b - pad_t
    step = plot_w / (len(labels) - 1)
    parts = [f'<svg class="chart trend" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
             f'<title>{escape(title)}</title>'
             f'<text x="{pad_l}" y="11" class="lbl">max {escape((value_label or _fmt)(top))}</text>']
    for name, vals, colour in series:
        points = " ".join(f"{pad_l + i * step:.1f},{pad_t + plot_h * (1 - v / top):.1f}" for i, v in enumerate(vals))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2">'
                     f'<title>{escape(name)}</title></polyline>')
    every = max(len(labels) // 6, 1)
    for i in range(0, len(labels), every):
        anchor = "start" if i == 0 else "end" if i >= len(labels) - every // 2 - 1 else "middle"
        parts.append(f'<text x="{pad_l + i * step:.1f}" y="{height - 6}" text-anchor="{anchor}" class="lbl">'
                     f'{escape(labels[i])}</text>')
    parts.append("</svg>")
    parts.append('<div class="legend">' + "".join(f'<span><i style="background:{c}"></i>{escape(n)}</span>'
                                                  for n, _, c in series) + "</div>")
    return Markup("".join(parts))
