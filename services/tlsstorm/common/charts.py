"""Small dependency-free SVG charts: the report pages load fast and work offline."""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#2b6cb0", "#c53030", "#2f855a", "#b7791f", "#6b46c1", "#319795")
_WIDTH, _HEIGHT = 640, 280
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 34, 46


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:.3g}"


def _frame(title: str, x_label: str, y_label: str, body: list[str],
           legend: list[str]) -> str:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {_HEIGHT}" '
        f'class="chart" role="img" aria-label="{escape(title)}">',
        f'<text x="{_WIDTH / 2}" y="18" text-anchor="middle" font-size="14" '
        f'font-weight="bold">{escape(title)}</text>',
        f'<text x="{_WIDTH / 2}" y="{_HEIGHT - 6}" text-anchor="middle" font-size="11">'
        f'{escape(x_label)}</text>',
        f'<text x="12" y="{_HEIGHT / 2}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 12 {_HEIGHT / 2})">{escape(y_label)}</text>',
        *body,
    ]
    for index, name in enumerate(legend):
        x = _LEFT + 8 + index * 135
        parts.append(f'<rect x="{x}" y="{_TOP - 4}" width="10" height="10" '
                     f'fill="{PALETTE[index % len(PALETTE)]}"/>')
        parts.append(f'<text x="{x + 14}" y="{_TOP + 5}" font-size="11">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _y_axis(y_max: float, plot_h: float) -> list[str]:
    lines = []
    for tick in range(5):
        value = y_max * tick / 4
        y = _TOP + 12 + plot_h * (1 - tick / 4)
        lines.append(f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#ddd"/>')
        lines.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" '
                     f'font-size="10">{_label(value)}</text>')
    return lines


def line_chart(title: str, series: dict[str, list[tuple[float, float | None]]], x_label: str,
               y_label: str, log_x: bool = False) -> str:
    """Lines over a shared x axis; log_x for latency distributions.

    A point whose y is None breaks its line (no value there), and a lone point is drawn as a
    dot, so nothing is drawn where there was nothing to measure.
    """
    points = [(x, y) for values in series.values() for x, y in values if y is not None]
    if not points:
        return _frame(title, x_label, y_label, ['<text x="50%" y="50%" text-anchor="middle">'
                                                 'no data yet</text>'], [])

    def fx(x: float) -> float:
        return math.log10(max(x, 1e-6)) if log_x else x

    xs = [fx(x) for x, _ in points]
    x_min, x_max = min(xs), max(xs)
    if x_max == x_min:
        x_min, x_max = x_min - 1, x_max + 1
    y_max = _nice_max(max(y for _, y in points))
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM - 12
    body = _y_axis(y_max, plot_h)
    for tick in range(6):
        value = x_min + (x_max - x_min) * tick / 5
        x = _LEFT + plot_w * tick / 5
        shown = 10 ** value if log_x else value
        body.append(f'<text x="{x:.1f}" y="{_HEIGHT - _BOTTOM + 14}" text-anchor="middle" '
                    f'font-size="10">{_label(shown)}</text>')
    for index, values in enumerate(series.values()):
        colour = PALETTE[index % len(PALETTE)]
        for segment in _segments(values):
            coordinates = [(_LEFT + plot_w * (fx(x) - x_min) / (x_max - x_min),
                            _TOP + 12 + plot_h * (1 - y / y_max)) for x, y in segment]
            if len(coordinates) == 1:
                (cx, cy), = coordinates
                body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{colour}"/>')
                continue
            joined = " ".join(f"{x:.1f},{y:.1f}" for x, y in coordinates)
            body.append(f'<polyline fill="none" stroke-width="2" stroke="{colour}" '
                        f'points="{joined}"/>')
    return _frame(title, x_label, y_label, body, list(series))


def _segments(values: list[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """Runs of consecutive points that have a value."""
    segments: list[list[tuple[float, float]]] = [[]]
    for x, y in values:
        if y is None:
            if segments[-1]:
                segments.append([])
        else:
            segments[-1].append((x, y))
    return [segment for segment in segments if segment]


def bar_chart(title: str, categories: list[str], series: dict[str, list[float]],
              y_label: str) -> str:
    """Grouped bars: one group per category, one bar per series."""
    values = [value for bars in series.values() for value in bars]
    if not values or not categories:
        return _frame(title, "", y_label, ['<text x="50%" y="50%" text-anchor="middle">'
                                           'no data yet</text>'], [])
    y_max = _nice_max(max(values))
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM - 12
    body = _y_axis(y_max, plot_h)
    group_w = plot_w / len(categories)
    bar_w = group_w * 0.7 / max(len(series), 1)
    for group, category in enumerate(categories):
        left = _LEFT + group * group_w + group_w * 0.15
        body.append(f'<text x="{_LEFT + (group + 0.5) * group_w:.1f}" '
                    f'y="{_HEIGHT - _BOTTOM + 14}" text-anchor="middle" font-size="11">'
                    f'{escape(category)}</text>')
        for index, bars in enumerate(series.values()):
            height = plot_h * bars[group] / y_max
            x = left + index * bar_w
            y = _TOP + 12 + plot_h - height
            body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" '
                        f'height="{height:.1f}" fill="{PALETTE[index % len(PALETTE)]}">'
                        f'<title>{escape(category)}: {bars[group]:,.0f}</title></rect>')
    return _frame(title, "", y_label, body, list(series))
