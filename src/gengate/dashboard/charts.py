"""Server-side SVG charts: lines over time and horizontal bars. No scripts, no network, no chart library.

Each chart is a `<figure>` with a caption, an SVG marked `role="img"` with a text description, a legend that does
not rely on colour alone (names beside swatches), and the numbers as a table inside `<details>` for screen readers
and for anyone who wants the values.

Owns: chart geometry and markup. Must not: query or format domain objects beyond numbers and labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from gengate.dashboard.html import Html, esc, join, render, table

# Okabe–Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
_W, _H = 560, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 12, 12, 34


def _nice_max(value: float) -> float:
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = float(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return step * exponent
    return 10 * exponent


def _legend(names: Sequence[str]) -> Html:
    items = join(
        render('<li><span style="background:{c}" aria-hidden="true"></span>{n}</li>', c=PALETTE[i % len(PALETTE)], n=n)
        for i, n in enumerate(names)
    )
    return Html(f'<ul class="legend">{items}</ul>')


def line_chart(
    title: str, labels: Sequence[str], series: Mapping[str, Sequence[float | None]],
    *, fmt: Callable[[float], str] = lambda v: f"{v:,.0f}", chart_id: str = "",
) -> Html:  # fmt: skip
    """Lines over shared x labels (time buckets); None is a gap."""
    n = max(1, len(labels))
    top = _nice_max(max((v for s in series.values() for v in s if v is not None), default=0.0))
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(i: int) -> float:
        return _LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return _TOP + plot_h * (1 - v / top)

    parts: list[str] = []
    for k in range(5):
        value = top * k / 4
        parts.append(
            f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#d1d9e0"/>'
            f'<text x="{_LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{esc(fmt(value))}</text>'
        )
    step = max(1, math.ceil(n / 6))
    ticks = list(range(0, n, step))
    if n - 1 - ticks[-1] >= step / 2:  # the last bucket, unless it would overlap the previous label
        ticks.append(n - 1)
    for i in ticks:
        parts.append(
            f'<text x="{x(i):.1f}" y="{_H - 12}" text-anchor="middle">{esc(labels[i] if labels else "")}</text>'
        )
    for index, (name, values) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        runs: list[list[str]] = [[]]
        for i, v in enumerate(values):
            if v is None:
                runs.append([])
            else:
                runs[-1].append(f"{x(i):.1f},{y(v):.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>')
            elif run:
                dash = ' stroke-dasharray="5 3"' if index % 2 else ""
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{" ".join(run)}">'
                    f"<title>{esc(name)}</title></polyline>"
                )
    desc = f"{title}: " + "; ".join(
        f"{name} peak {fmt(max((v for v in vals if v is not None), default=0.0))}" for name, vals in series.items()
    )
    svg = (
        f'<svg viewBox="0 0 {_W} {_H}" width="100%" role="img" aria-label="{esc(desc)}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )
    data = table(
        ["time", *series.keys()],
        [[labels[i], *(("—" if s[i] is None else fmt(s[i] or 0.0)) for s in series.values())]
         for i in range(len(labels))],
        numeric=range(1, len(series) + 1),
    )  # fmt: skip
    return render(
        '<figure id="{id}"><figcaption>{title}</figcaption>{svg}{legend}'
        "<details><summary>Data</summary>{data}</details></figure>",
        id=chart_id or title.lower().replace(" ", "-"), title=title, svg=Html(svg), legend=_legend(list(series)),
        data=data,
    )  # fmt: skip


def bar_chart(
    title: str, bars: Sequence[tuple[str, float]], *, fmt: Callable[[float], str] = lambda v: f"{v:,.0f}"
) -> Html:
    """Horizontal bars, largest first as given."""
    if not bars:
        return render(
            '<figure><figcaption>{t}</figcaption><p class="muted">Nothing in this period.</p></figure>', t=title
        )
    row_h, label_w = 22, 220
    height = row_h * len(bars) + 8
    top = _nice_max(max(v for _, v in bars))
    width = _W - label_w - 60
    parts = []
    for i, (label, value) in enumerate(bars):
        y = 4 + i * row_h
        w = width * value / top
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{esc(label[:34])}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 7}" fill="{PALETTE[0]}"/>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + 15}">{esc(fmt(value))}</text>'
        )
    desc = f"{title}: " + "; ".join(f"{label} {fmt(value)}" for label, value in bars)
    svg = (
        f'<svg viewBox="0 0 {_W} {height}" width="100%" role="img" aria-label="{esc(desc)}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )
    return render("<figure><figcaption>{t}</figcaption>{svg}</figure>", t=title, svg=Html(svg))
