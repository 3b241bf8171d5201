"""`seqattr report DIR -o report.html`: one self-contained HTML page of a dataset run's statistics.

The page holds the statistics of `seqattr.analysis.statistics` as inline SVG charts and tables (source share,
token types and diagonality by step position, the offset histogram, the step scores' quantiles), then the
examples with the lowest and the highest mean step score (probability by default), each linked to its own
interactive view (`seqattr.viz.html`) embedded in the page (an ``iframe`` whose document is inline). No
network, no external script: the file can be mailed or archived alone.

Example:
    >>> path = write_report(out, tmp / "report.html")
    >>> page = path.read_text()
    >>> page.startswith("<!DOCTYPE html>") and "Source share" in page
    True
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from seqattr.analysis.charts import histogram_chart, line_chart
from seqattr.analysis.statistics import TOKEN_TYPES, DatasetSummary, examples_of, summarize
from seqattr.data.attribution import AttributionOutput
from seqattr.dataset_runs.shards import DatasetOutput, load_dataset_output
from seqattr.viz.html import page

_CSS = """
:root { --fg: #1d1d1f; --bg: #ffffff; --muted: #6e6e73; --line: #d2d2d7; --panel: #f5f5f7;
        --accent: #0a66c2; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e8e8ed; --bg: #161618; --muted: #a1a1a6; --line: #3a3a3c; --panel: #222225;
          --accent: #4ea1ff; }
}
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; padding: 16px 24px; }
h1 { font-size: 18px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 22px 0 6px; }
.info { color: var(--muted); font-size: 12px; } .info span { margin-right: 14px; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; } figcaption { font-size: 12px; color: var(--muted); max-width: 560px; }
svg.chart { background: var(--panel); border-radius: 6px; }
svg.chart .axis { stroke: var(--muted); } svg.chart .grid { stroke: var(--line); stroke-dasharray: 2 3; }
svg.chart text { fill: var(--muted); font-size: 11px; } svg.chart text.legend { fill: var(--fg); }
svg.chart .band { fill: var(--accent); opacity: .18; } svg.chart .bar { fill: var(--accent); }
table.stats { border-collapse: collapse; font-size: 12px; margin: 6px 0; }
table.stats th, table.stats td { border: 1px solid var(--line); padding: 2px 8px; text-align: right; }
table.stats th:first-child, table.stats td:first-child { text-align: left; }
a { color: var(--accent); }
section.example { border-top: 1px solid var(--line); margin-top: 14px; }
iframe.view { width: 100%; height: 560px; border: 1px solid var(--line); border-radius: 6px; }
"""


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="stats"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _overview(summary: DatasetSummary) -> str:
    o = summary.overall
    rows = [
        [f"{summary.source_side} share (vs {summary.prefix_side})", _cell(o.get("source_share"))],
        *[[f"{kind} share", _cell(o.get(f"{kind}_share"))] for kind in TOKEN_TYPES],
        ["diagonal deviation (mean |offset|)", _cell(o.get("diagonal_deviation"))],
        *[[f"mean {name}", _cell(o.get(name))] for name in summary.score_quantiles],
    ]
    return _table(["statistic (mean over steps)", "value"], rows)


def _charts(summary: DatasetSummary) -> str:
    steps = summary.by_step["step"]
    # (series, title, y label, caption) of each share-like chart, drawn on [0, 1].
    shares = []
    if any(v is not None for v in summary.by_step["source_share"]):
        shares.append(
            (
                {"source share": summary.by_step["source_share"]},
                "Source share",
                "share",
                f"Source share: the share of each step's absolute attribution on the {summary.source_side} "
                f"against the {summary.prefix_side} (Voita et al. 2021), mean per step position.",
            )
        )
    shares.append(
        (
            {kind: summary.by_step[f"{kind}_share"] for kind in TOKEN_TYPES},
            "Token types",
            "share",
            "Share of each step's absolute attribution on special tokens, punctuation and content tokens.",
        )
    )
    shares.append(
        (
            {"diagonal deviation": summary.by_step["diagonal_deviation"]},
            "Diagonality",
            "mean |offset|",
            "Mean |relative position of the argmax source token − relative step position|: 0 on the "
            "diagonal.",
        )
    )
    figures = [
        _figure(line_chart(steps, series, title=title, y_label=y_label, y_range=(0.0, 1.0)), caption)
        for series, title, y_label, caption in shares
    ]
    histogram = summary.offset_histogram
    figures.append(
        _figure(
            histogram_chart(histogram["edges"], histogram["counts"], title="Offsets", x_label="offset"),
            "Offsets of the argmax source token from the diagonal (relative positions), over every step.",
        )
    )
    for name in summary.score_quantiles:
        labels = sorted(k for k in summary.by_step if k.startswith(f"{name}_q"))
        band = (summary.by_step[labels[0]], summary.by_step[labels[-1]]) if len(labels) > 1 else None
        series = {"mean": summary.by_step[name]}
        if f"{name}_q50" in summary.by_step:
            series["median"] = summary.by_step[f"{name}_q50"]
        caption = f"{name} per step position: mean and median"
        if band is not None:
            caption += f", band from {labels[0]} to {labels[-1]}"
        figures.append(_figure(line_chart(steps, series, title=name, y_label=name, band=band), caption + "."))
    return '<div class="charts">' + "".join(figures) + "</div>"


def _quantile_table(summary: DatasetSummary) -> str:
    if not summary.score_quantiles:
        return "<p class='info'>No step scores: attribute with step_scores=['probability'] to see them.</p>"
    quantiles = list(next(iter(summary.score_quantiles.values())))
    rows = [
        [html.escape(name), *[_cell(values[q]) for q in quantiles]]
        for name, values in summary.score_quantiles.items()
    ]
    return _table(["step score", *[f"q{q:g}" for q in quantiles]], rows)


def _rank_column(summary: DatasetSummary, rank_by: str | None) -> str | None:
    if rank_by is None:
        names = list(summary.score_quantiles)
        if not names:
            return None
        rank_by = "probability" if "probability" in names else names[0]
    column = rank_by if rank_by in summary.examples else f"mean_{rank_by}"
    if column not in summary.examples:
        options = sorted(summary.score_quantiles) + ["source_share", "diagonal_deviation"]
        raise ValueError(
            f"rank_by={rank_by!r} is no step score or statistic of these examples; use one of {options}"
        )
    return column


def _chosen(summary: DatasetSummary, column: str, count: int) -> tuple[list[int], list[int]]:
    """Rows with the lowest and the highest values of ``column`` (examples without one left out)."""
    ranked = sorted(
        (value, row)
        for row, value in zip(summary.examples["row"], summary.examples[column], strict=True)
        if value is not None
    )
    lowest = [row for _, row in ranked[:count]]
    highest = [row for _, row in reversed(ranked[-count:])] if count else []
    return lowest, highest


def _example_rows(summary: DatasetSummary, rows: list[int], column: str) -> list[list[str]]:
    index = {row: i for i, row in enumerate(summary.examples["row"])}
    return [
        [
            f'<a href="#row-{row}">row {row}</a>',
            _cell(summary.examples["steps"][index[row]]),
            _cell(summary.examples[column][index[row]]),
            _cell(summary.examples["source_share"][index[row]]),
        ]
        for row in rows
    ]


def _info_line(info: dict[str, Any], errors: int | None) -> str:
    parts = [
        f"<span><b>{key}</b>: {html.escape(str(info[key]))}</span>"
        for key in ("method", "model", "attributed_fn")
        if info.get(key)
    ]
    if errors:
        parts.append(f"<span><b>rows skipped</b>: {errors} (errors.jsonl)</span>")
    return "".join(parts)


def report_html(
    data: Any,
    *,
    title: str | None = None,
    examples: int = 5,
    rank_by: str | None = None,
    summary: DatasetSummary | None = None,
) -> str:
    """The report page of a dataset run (its folder, `seqattr.load_dataset_output`'s result) or of an
    `AttributionOutput`, as a string.

    Args:
        data: what to report on; read twice, lazily (the statistics, then the chosen examples).
        title: the page title (default: "seqattr report · METHOD").
        examples: how many examples to show at each end of the ranking (0: none).
        rank_by: a step score (default ``probability``, else the first step score) or ``"source_share"``
            or ``"diagonal_deviation"``: examples are ranked by its mean over their steps.
        summary: `summarize`'s result, when already computed.

    Example:
        >>> page = report_html(out, examples=1)
        >>> 'href="#row-0"' in page and "<iframe" in page        # the one example, linked and embedded
        True
    """
    if not isinstance(examples, int) or isinstance(examples, bool) or examples < 0:
        raise ValueError(f"examples must be a non-negative integer, got {examples!r}")
    if isinstance(data, (str, os.PathLike)):
        data = load_dataset_output(data)
    summary = summary or summarize(data)
    column = _rank_column(summary, rank_by)
    title = title or f"seqattr report · {summary.info.get('method', 'attributions')}"
    errors = len(data.errors) if isinstance(data, DatasetOutput) else None
    lowest, highest = _chosen(summary, column, examples) if column else ([], [])
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<div class="info">{_info_line(summary.info, errors)}</div>',
        f"<p>{summary.num_examples} examples, {summary.num_steps} explained steps; "
        f"source: {html.escape(summary.source_side)}, prefix: {html.escape(summary.prefix_side)}.</p>",
        "<h2>Overall</h2>",
        _overview(summary),
        "<h2>By step position</h2>",
        _charts(summary),
        "<h2>Step score quantiles</h2>",
        _quantile_table(summary),
    ]
    if column is None:
        body.append(
            "<p class='info'>No step score to rank examples by: attribute with "
            "step_scores=['probability'].</p>"
        )
    elif examples:
        label = column.removeprefix("mean_")
        header = ["example", "steps", f"mean {label}", "source share"]
        body += [
            f"<h2>Lowest mean {html.escape(label)}</h2>",
            _table(header, _example_rows(summary, lowest, column)),
            f"<h2>Highest mean {html.escape(label)}</h2>",
            _table(header, _example_rows(summary, highest, column)),
        ]
        body += _embedded_views(data, summary, [*lowest, *[r for r in highest if r not in lowest]], column)
    return page(title, _CSS, "".join(body) + "\n")


def _embedded_views(data: Any, summary: DatasetSummary, rows: list[int], column: str) -> list[str]:
    """Each chosen example's own page (`SequenceAttribution.to_html`) in an iframe: its script and styles
    stay apart from the report's and from each other's."""
    wanted = set(rows)
    pages = {}
    pairs, info = examples_of(data)
    for row, seq in pairs:
        if row in wanted:
            pages[row] = AttributionOutput([seq], info).to_html(title=f"row {row}")
    index = {row: i for i, row in enumerate(summary.examples["row"])}
    label = column.removeprefix("mean_")
    sections = []
    for row in rows:
        value = _cell(summary.examples[column][index[row]])
        sections.append(
            f'<section class="example" id="row-{row}"><h2>Row {row} · mean {html.escape(label)} {value}</h2>'
            f'<iframe class="view" title="row {row}" srcdoc="{html.escape(pages[row], quote=True)}">'
            "</iframe></section>"
        )
    return sections


def write_report(data: Any, path: str | os.PathLike, **options: Any) -> Path:
    """Write `report_html`'s page to ``path`` (options as `report_html`'s) and return the path.

    Example:
        >>> write_report(out, tmp / "report.html", examples=2).name
        'report.html'
    """
    target = Path(path).expanduser()
    target.write_text(report_html(data, **options), encoding="utf-8")
    return target
