"""Standalone HTML view: one self-contained, interactive page (inline CSS and JavaScript, no network assets).

For every example the page shows the source and target tokens (hover or click a generated token to colour
the source and prefix tokens by its attributions; tokens the step cannot see are faded), a details panel
(step scores, the generation trace's probability, rank, entropy and top alternatives, the strongest
contributors), the heatmap matrix (click a column to select its step) and the trace table. Outputs of the
interaction methods (``integrated_hessians``, ``expected_hessians``) get an interactions block: click a token
to colour the others by their interaction with it on the selected step, its top partners listed.

The numbers travel as JSON inside the page (NaN, i.e. unseen, as ``null``); attributions with extra
dimensions are summed over them, as in the terminal view.

Example:
    >>> out.save_html(tmp / "attributions.html")
    >>> html = out[0].aggregate("word").to_html()
    >>> html.startswith("<!DOCTYPE html>")
    True
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

import torch

from seqattr.data.aggregation import unperturbed
from seqattr.data.attribution import AttributionOutput, SequenceAttribution
from seqattr.data.labels import CLASSIFICATION_TASKS
from seqattr.data.tokens import detect_scheme, token_labels
from seqattr.step_functions import MULTI_LABEL_THRESHOLD
from seqattr.viz.entities import label_colours, text_pieces
from seqattr.viz.html_assets import CSS, JS

_INFO_KEYS = ("method", "model", "attributed_fn", "engine", "aggregations")


def _number(value: float) -> float | None:
    """JSON has no NaN or infinity: unseen (NaN) and non-finite scores travel as null."""
    return value if math.isfinite(value) else None


def _values(tensor: torch.Tensor | None) -> list[list[float | None]] | None:
    if tensor is None:
        return None
    if tensor.dim() > 2:
        tensor = tensor.reshape(*tensor.shape[:2], -1).sum(-1)
    return [[_number(v) for v in row] for row in tensor.float().tolist()]


def _trace(seq: SequenceAttribution) -> dict[str, Any] | None:
    trace = seq.trace
    if trace is None:
        return None
    scheme = detect_scheme([*seq.source, *seq.target, *trace.tokens])
    return {
        "tokens": token_labels(trace.tokens, scheme),
        "probabilities": trace.probabilities.float().tolist(),
        "ranks": trace.ranks.tolist(),
        "entropy": trace.entropy.float().tolist(),
        "top_tokens": [token_labels(row, scheme) for row in trace.top_tokens],
        "top_probabilities": trace.top_probabilities.float().tolist(),
        "context_reliance": None
        if trace.context_reliance is None
        else [_number(v) for v in trace.context_reliance.double().tolist()],
    }


def example_payload(seq: SequenceAttribution) -> dict[str, Any]:
    """What the page's script reads for one example (labels, scores, step scores, trace, colour scale)."""
    scheme = detect_scheme([*seq.source, *seq.target])
    scores = {"source": _values(seq.source_attributions), "target": _values(seq.target_attributions)}
    for side, rows in scores.items():  # tokens no perturbation feature held: a stored 0, not a measurement
        for position in unperturbed(seq, side):
            rows[position] = [None] * len(rows[position])
    masked = {"source": list(seq.masked_source), "target": list(seq.masked_target)}
    values = [
        v
        for side, rows in scores.items()
        if rows is not None
        for pos, row in enumerate(rows)
        if pos not in masked[side]
        for v in row
        if v is not None
    ]
    payload = {
        "tokens": {"source": [str(t) for t in seq.source], "target": [str(t) for t in seq.target]},
        "labels": {"source": token_labels(seq.source, scheme), "target": token_labels(seq.target, scheme)},
        "start": seq.attr_pos_start,
        "end": seq.attr_pos_end,
        "scores": scores,
        "masked": masked,
        "scale": max((abs(v) for v in values), default=0.0),
        "unsigned": all(v >= 0 for v in values),
        "step_scores": {
            name: [_number(v) for v in s.float().tolist()] for name, s in seq.step_scores.items()
        },
        "trace": _trace(seq),
    }
    if seq.interactions is not None:
        payload["interactions"] = _interactions(seq)
    return payload


def _interactions(seq: SequenceAttribution) -> dict[str, Any]:
    """The interaction matrix for the page: its features as ``[side, position]`` (the source tokens, then the
    target tokens, as `SequenceAttribution.interactions`), the values ``[feature][partner][step]`` (null where
    unseen) and their scale."""
    features = [["source", i] for i in range(len(seq.source)) if seq.source_attributions is not None]
    features += [["target", i] for i in range(len(seq.target)) if seq.target_attributions is not None]
    values = seq.interactions.float()
    finite = values[values.isfinite()]
    return {
        "features": features[: values.shape[0]],
        "values": [[[_number(v) for v in partner] for partner in row] for row in values.tolist()],
        "scale": float(finite.abs().max()) if finite.numel() else 0.0,
    }


def entities_block(seq: SequenceAttribution) -> str:
    """A token classifier's example's entity block (`seqattr.viz.entities`): its text with each predicted
    entity as a clickable span (``<mark class="entity" data-entity="k">``) followed by its label, and a strip
    of input tokens the script colours by the selected entity's attribution.

    Example:
        >>> "data-entity" in entities_block(tagged[0])          # doctest: +SKIP
        True
    """
    found = seq.entities()
    colours = label_colours(found)
    pieces = []
    for text, k in text_pieces(seq, found):
        if k is None:
            pieces.append(html.escape(text))
            continue
        entity = found[k]
        pieces.append(
            f'<mark class="entity" data-entity="{k}" data-label="{html.escape(entity.label)}" '
            f'style="border-color: {colours[entity.label]}" title="{html.escape(entity.label)}: '
            f'{html.escape(entity.text)}">{html.escape(text)}<span class="entity-label" '
            f'style="background: {colours[entity.label]}">{html.escape(entity.label)}</span></mark>'
        )
    hint = "click an entity to colour the input by its attribution" if found else "no entity"
    return f"""
  <div class="entities-block"><h3>entities</h3>
    <p class="entity-text">{"".join(pieces)}</p>
    <div class="strip entity-scores"><span class="strip-label">entity</span></div>
    <div class="muted">{hint} (the mean of its tags' steps; faded: unseen by its steps)</div>
  </div>"""


INTERACTIONS_BLOCK = """
      <div class="interactions-block"><h3>interactions</h3>
        <div class="strip interaction-scores"><span class="strip-label">partners of</span></div>
        <table class="partners"></table>
        <div class="muted">click a token to colour its partners by their interaction with it on the selected
          step (its own cell, outlined, is its main effect; faded: unseen by the step)</div>
      </div>"""


def _info_line(info: dict[str, Any]) -> str:
    parts = []
    for key in _INFO_KEYS:
        value = info.get(key)
        if value:
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            parts.append(f"<span><b>{html.escape(key)}</b>: {html.escape(text)}</span>")
    return "".join(parts)


_EXAMPLE = """
<section class="example" id="example-{index}">
  <h2>{heading}</h2>
  <div class="legend"><span>{low}</span><span class="{ramp}"></span><span>+{scale}</span>
    <span>· hover or click a generated (outlined) token</span></div>{entities}
  <div class="layout">
    <div class="main">
      <div class="strips"></div>{interactions}
      <h3>heatmap</h3>
      <div class="scroll"><table class="matrix"></table></div>
      <div class="trace-block"><h3>generation trace</h3>
        <div class="scroll"><table class="trace"></table></div></div>
    </div>
    <div class="details"></div>
  </div>
</section>
"""


def _heading(index: int, seq: SequenceAttribution, info: dict[str, Any]) -> str:
    """An example's heading; a classifier's names its predicted and its explained label."""
    if info.get("multi_label") and seq.trace is not None:  # every label above 0.5, with its sigmoid
        above = ", ".join(
            f"{label} ({p:.2f})"
            for label, p in zip(seq.trace.top_tokens[0], seq.trace.top_probabilities[0].tolist(), strict=True)
            if p > MULTI_LABEL_THRESHOLD
        )
        explained = ", ".join(seq.steps)
        return html.escape(f"Example {index} · predicted labels: {above or 'none'} · explained: {explained}")
    if info.get("task", "generation") in CLASSIFICATION_TASKS and seq.trace is not None:
        predicted = seq.trace.top_tokens[0][0]
        probability = float(seq.trace.top_probabilities[0][0])
        explained = ", ".join(seq.steps)
        return html.escape(
            f"Example {index} · predicted label: {predicted} ({probability:.2f}) · explained: {explained}"
        )
    return f"Example {index}" + (f" · {len(seq.steps)} steps" if seq.num_steps else "")


def to_html(attributions: AttributionOutput | SequenceAttribution, title: str | None = None) -> str:
    """The page for an output (every example) or for one example, as a string.

    Example:
        >>> page = out.to_html(title="Saliency on GPT-2")
        >>> "<title>Saliency on GPT-2</title>" in page
        True
        >>> n = (tmp / "page.html").write_text(page)
    """
    if isinstance(attributions, SequenceAttribution):
        output = AttributionOutput([attributions])
    else:
        output = attributions
    title = title or f"seqattr · {output.info.get('method', 'attributions')}"
    examples = [example_payload(seq) for seq in output.sequence_attributions]
    tagged = output.info.get("task") == "token-classification"
    if tagged:  # each entity's attribution over the input tokens, which the page shows on click
        for payload, seq in zip(examples, output.sequence_attributions, strict=True):
            payload["entities"] = [
                {"label": e.label, "text": e.text, "start": e.start, "end": e.end, "steps": e.steps,
                 "scores": [_number(v) for v in e.attributions.float().tolist()]}
                for e in seq.entities()
            ]  # fmt: skip
    sections = "".join(
        _EXAMPLE.format(
            index=i,
            heading=_heading(i, seq, output.info),
            scale=f"{examples[i]['scale']:.3g}",
            # No negative score: the scale runs from 0 in one hue (the diverging half would stay unused).
            low="0" if examples[i]["unsigned"] else f"−{examples[i]['scale']:.3g}",
            ramp="ramp unsigned" if examples[i]["unsigned"] else "ramp",
            entities=entities_block(seq) if tagged else "",
            interactions=INTERACTIONS_BLOCK if seq.interactions is not None else "",
        )
        for i, seq in enumerate(output.sequence_attributions)
    )
    # "</" inside a script element would end it early: escape it in the JSON payload.
    data = json.dumps({"examples": examples}, ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
    return page(
        title,
        CSS,
        f"""<h1>{html.escape(title)}</h1>
<div class="info">{_info_line(output.info)}</div>
{sections}
<script type="application/json" id="seqattr-data">{data}</script>
<script>{JS}</script>
""",
    )


def page(title: str, css: str, body: str) -> str:
    """A self-contained HTML document: ``title``, the ``css`` inline, then ``body``.

    Example:
        >>> document = page("t", "p { color: red }", "<p>hi</p>")
        >>> document.startswith("<!DOCTYPE"), "<title>t</title>" in document, "<p>hi</p></body>" in document
        (True, True, True)
    """
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{css}</style>
</head>
<body>
{body}</body>
</html>
"""
