"""Views of an `attribute_context` result: the terminal (rich) and a self-contained HTML page.

Each current output token is shown with its context-sensitivity (CTI) score, the selected ones highlighted;
each selected token then lists its contextual cues, strongest first.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from seqattr.context_attribution import ContextAttributionOutput


def _clean(token: str) -> str:
    """A token as it reads: BPE's space and newline markers made visible characters."""
    return token.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\\n")


def show_context_attribution(result: ContextAttributionOutput, console: Any = None) -> None:
    """Print the CTI scores and each context-sensitive token's cues."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    selected = {t.index for t in result.sensitive_tokens}
    line = Text()
    for i, (token, score) in enumerate(zip(result.output_current_tokens, result.cti_scores, strict=True)):
        line.append(_clean(token), style="bold red" if i in selected else "")
        line.append(f"({score:.3g})", style="dim")
    console.print(Text(f"Context sensitivity ({result.cti_metric}, threshold {result.cti_threshold:.4g}):"))
    console.print(line)
    if not result.sensitive_tokens:
        console.print("No token passes the threshold: the output does not depend on the context this way.")
    for token in result.sensitive_tokens:
        table = Table(
            title=f"{_clean(token.token)!r} (#{token.index}, {token.score:.4g}): cues", title_justify="left"
        )
        for column in ("context", "token", "position", "score"):
            table.add_column(column)
        for cue in token.cues:
            table.add_row(cue.side, _clean(cue.token), str(cue.position), f"{cue.score:.4g}")
        console.print(table)


def _colour(score: float, scale: float) -> str:
    alpha = 0.0 if scale == 0 else min(1.0, abs(score) / scale)
    rgb = "220,50,47" if score >= 0 else "38,139,210"
    return f"rgba({rgb},{alpha:.3f})"


def _spans(tokens: list[str], scores: list[float]) -> str:
    scale = max((abs(s) for s in scores), default=0.0)
    return "".join(
        f'<span title="{s:.4g}" style="background:{_colour(s, scale)}">{html.escape(_clean(t))}</span>'
        for t, s in zip(tokens, scores, strict=True)
    )


def context_attribution_html(result: ContextAttributionOutput) -> str:
    """A self-contained HTML page: the output coloured by CTI score, then each selected token's context
    coloured by its cue scores (hover a token for its score)."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>seqattr attribute-context</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto} span{white-space:pre}"
        " .sel{outline:2px solid #d33}</style></head><body>",
        f"<h1>Context reliance ({html.escape(result.cti_metric)})</h1>",
        f"<p>Threshold {result.cti_threshold:.4g}; selected tokens are outlined.</p><p>",
    ]
    selected = {t.index for t in result.sensitive_tokens}
    scale = max((abs(s) for s in result.cti_scores), default=0.0)
    for i, (token, score) in enumerate(zip(result.output_current_tokens, result.cti_scores, strict=True)):
        cls = " class='sel'" if i in selected else ""
        parts.append(
            f'<span{cls} title="{score:.4g}" style="background:{_colour(score, scale)}">'
            f"{html.escape(_clean(token))}</span>"
        )
    parts.append("</p>")
    for token in result.sensitive_tokens:
        parts.append(
            f"<h2>{html.escape(_clean(token.token))!s} (#{token.index}, score {token.score:.4g})</h2>"
        )
        if token.input_context_scores is not None and result.input_context_tokens is not None:
            parts.append(
                "<p>Input context: " + _spans(result.input_context_tokens, token.input_context_scores)
            )
            parts.append("</p>")
        if token.output_context_scores is not None and result.output_context_tokens is not None:
            parts.append(
                "<p>Output context: " + _spans(result.output_context_tokens, token.output_context_scores)
            )
            parts.append("</p>")
        cues = ", ".join(f"{html.escape(_clean(c.token))} ({c.score:.4g})" for c in token.cues) or "none"
        parts.append(f"<p>Cues (threshold {token.cue_threshold:.4g}): {cues}</p>")
    parts.append("</body></html>")
    return "".join(parts)
