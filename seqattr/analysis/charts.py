"""Inline SVG charts for the dataset report: lines over step positions (with an optional band) and a
histogram. Plain SVG text, no script and no network: the page stays self-contained.

Example:
    >>> svg = line_chart([0, 1, 2], {"source share": [0.9, 0.7, None]}, title="Source share")
    >>> svg.startswith("<svg") and svg.count("<circle") == 2       # None: no point
    True
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

WIDTH, HEIGHT = 560, 240
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 30, 36
COLOURS = ("#0a66c2", "#c2410c", "#15803d", "#9b2c8f", "#6e6e73")


def _number(value: float) -> str:
    return f"{value:.3g}"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def _valid(value) -> bool:
    return value is not None and math.isfinite(value)


class _Frame:
    """Maps data coordinates to the plot area and draws its axes."""

    def __init__(self, x_low: float, x_high: float, y_low: float, y_high: float) -> None:
        self.x_low, self.x_high, self.y_low, self.y_high = x_low, x_high, y_low, y_high

    def x(self, value: float) -> float:
        span = self.x_high - self.x_low
        inner = WIDTH - LEFT - RIGHT
        return LEFT + (inner / 2 if span <= 0 else (value - self.x_low) / span * inner)

    def y(self, value: float) -> float:
        span = self.y_high - self.y_low
        inner = HEIGHT - TOP - BOTTOM
        return TOP + inner - (inner / 2 if span <= 0 else (value - self.y_low) / span * inner)

    def axes(self, x_ticks: Sequence[float], x_label: str, y_label: str) -> list[str]:
        bottom = HEIGHT - BOTTOM
        parts = [
            f'<line class="axis" x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}"/>',
            f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}"/>',
        ]
        for tick in _ticks(self.y_low, self.y_high):
            y = self.y(tick)
            parts.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>')
            parts.append(
                f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(tick)}</text>'
            )
        for tick in x_ticks:
            x = self.x(tick)
            parts.append(
                f'<text class="tick" x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">'
                f"{_number(tick)}</text>"
            )
        parts.append(
            f'<text class="label" x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 4}" text-anchor="middle">'
            f"{html.escape(x_label)}</text>"
        )
        parts.append(
            f'<text class="label" x="12" y="{(TOP + HEIGHT - BOTTOM) / 2}" text-anchor="middle" '
            f'transform="rotate(-90 12 {(TOP + HEIGHT - BOTTOM) / 2})">{html.escape(y_label)}</text>'
        )
        return parts


def _svg(title: str, parts: list[str], legend: Sequence[tuple[str, str]] = ()) -> str:
    items = []
    x = LEFT
    for label, colour in legend:
        items.append(f'<rect x="{x}" y="{TOP - 16}" width="10" height="10" fill="{colour}"/>')
        items.append(f'<text class="legend" x="{x + 14}" y="{TOP - 7}">{html.escape(label)}</text>')
        x += 24 + 7 * len(label)
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img">'
        f"<title>{html.escape(title)}</title>" + "".join(parts) + "".join(items) + "</svg>"
    )


def _x_ticks(xs: Sequence[float]) -> list[float]:
    if not xs:
        return []
    stride = max(1, math.ceil(len(xs) / 10))
    return list(xs[::stride])


def line_chart(
    xs: Sequence[float],
    series: dict[str, Sequence[float | None]],
    *,
    title: str,
    x_label: str = "step position",
    y_label: str = "",
    y_range: tuple[float, float] | None = None,
    band: tuple[Sequence[float | None], Sequence[float | None]] | None = None,
) -> str:
    """One line per series over ``xs`` (None: a gap), and optionally a shaded band (low, high) behind them.

    Example:
        >>> "<path" in line_chart([0, 1], {"median": [0.2, 0.4]}, title="p", band=([0.1, 0.3], [0.3, 0.5]))
        True
    """
    values = [v for ys in series.values() for v in ys if _valid(v)]
    if band is not None:
        values += [v for ys in band for v in ys if _valid(v)]
    if y_range is None:
        y_range = (min([0.0, *values]), max([1e-12, *values]))
    frame = _Frame(min(xs, default=0), max(xs, default=0), *y_range)
    parts = frame.axes(_x_ticks(list(xs)), x_label, y_label)
    if band is not None:
        low, high = band
        kept = [(x, lo, hi) for x, lo, hi in zip(xs, low, high, strict=True) if _valid(lo) and _valid(hi)]
        if kept:
            upper = " ".join(f"{frame.x(x):.1f},{frame.y(hi):.1f}" for x, _, hi in kept)
            lower = " ".join(f"{frame.x(x):.1f},{frame.y(lo):.1f}" for x, lo, _ in reversed(kept))
            parts.append(f'<path class="band" d="M{upper} L{lower} Z"/>')
    legend = []
    for (name, ys), colour in zip(series.items(), COLOURS * 4, strict=False):
        legend.append((name, colour))
        segment: list[str] = []
        segments = [segment]
        for x, y in zip(xs, ys, strict=True):
            if _valid(y):
                segment.append(f"{frame.x(x):.1f},{frame.y(y):.1f}")
                parts.append(
                    f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="2.5" fill="{colour}">'
                    f"<title>{html.escape(name)} at {_number(x)}: {_number(y)}</title></circle>"
                )
            elif segment:
                segment = []
                segments.append(segment)
        for points in segments:
            if len(points) > 1:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                    f'points="{" ".join(points)}"/>'
                )
    return _svg(title, parts, legend if len(series) > 1 else ())


def histogram_chart(edges: Sequence[float], counts: Sequence[int], *, title: str, x_label: str) -> str:
    """Bars of ``counts`` over the bins between consecutive ``edges``.

    Example:
        >>> histogram_chart([-1, 0, 1], [3, 1], title="offsets", x_label="offset").count("<rect")
        2
    """
    frame = _Frame(edges[0], edges[-1], 0, max([1, *counts]))
    parts = frame.axes([edges[0], (edges[0] + edges[-1]) / 2, edges[-1]], x_label, "steps")
    for low, high, count in zip(edges[:-1], edges[1:], counts, strict=True):
        x, width = frame.x(low), frame.x(high) - frame.x(low)
        y = frame.y(count)
        parts.append(
            f'<rect class="bar" x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(width - 1, 0.5):.1f}" '
            f'height="{frame.y(0) - y:.1f}"><title>[{_number(low)}, {_number(high)}): {count}</title></rect>'
        )
    return _svg(title, parts)
