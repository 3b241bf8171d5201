"""Terminal view: a signed heatmap per example, rows = source and target-prefix tokens, columns = steps.

Colours are on a diverging red (positive) / blue (negative) scale normalised per table, readable on dark and
light terminals; cells a step cannot see are blank. Attributions with extra dimensions (raw hidden vectors,
layers/heads) are summed over them for display.
"""

from __future__ import annotations

import math

import torch
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from seqattr.data.attribution import AttributionOutput, SequenceAttribution


def display_token(token: str) -> str:
    """A readable form of a subword token: byte-level ``Ġ``/``Ċ`` and SentencePiece ``▁`` markers decoded."""
    return token.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\\n").replace("ĉ", "\\t")


def _cell(value: float, scale: float) -> Text:
    if math.isnan(value):
        return Text("")
    strength = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    level = int(round(strength * 255))
    # Blend towards saturated red/blue: white text on strong colours, default text on faint ones.
    colour = f"rgb({255},{255 - level},{255 - level})" if value >= 0 else f"rgb({255 - level},{255 - level},{255})"
    style = f"black on {colour}"
    return Text(f"{value:.3f}", style=style)


def _flatten(attributions: torch.Tensor) -> torch.Tensor:
    return attributions.reshape(*attributions.shape[:2], -1).sum(-1) if attributions.dim() > 2 else attributions


def render_sequence(seq: SequenceAttribution, title: str | None = None) -> Group:
    """A rich renderable of one example: the heatmap table and its step scores."""
    blocks = [t for t in (seq.source_attributions, seq.target_attributions) if t is not None]
    flat = [_flatten(t.float()) for t in blocks]
    finite = torch.cat([t[~t.isnan()] for t in flat]) if flat else torch.tensor([])
    scale = float(finite.abs().max()) if finite.numel() else 0.0

    table = Table(title=title, show_lines=False, header_style="bold")
    table.add_column("token", no_wrap=True)
    for step in seq.steps:
        table.add_column(display_token(step), justify="right", no_wrap=True)
    if seq.source_attributions is not None:
        source = _flatten(seq.source_attributions.float())
        for row, token in enumerate(seq.source):
            table.add_row(Text(display_token(token), style="cyan"), *(_cell(float(v), scale) for v in source[row]))
        if seq.target_attributions is not None:
            table.add_section()
    if seq.target_attributions is not None:
        target = _flatten(seq.target_attributions.float())
        for row, token in enumerate(seq.target):
            table.add_row(Text(display_token(token), style="magenta"), *(_cell(float(v), scale) for v in target[row]))
    if seq.step_scores:
        table.add_section()
        for name, scores in seq.step_scores.items():
            table.add_row(Text(name, style="bold"), *(Text(f"{float(v):.3f}") for v in scores))
    return Group(table)


def render_output(output: AttributionOutput) -> Group:
    method = output.info.get("method", "?")
    return Group(
        *(render_sequence(seq, title=f"#{i} {method}") for i, seq in enumerate(output.sequence_attributions))
    )


def show(output: AttributionOutput, console: Console | None = None) -> None:
    (console or Console()).print(render_output(output))
