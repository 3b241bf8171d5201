"""Notebook views: ``_repr_html_`` (the interactive page) and treescope renderings with labelled heatmaps.

- ``_repr_html_`` embeds the standalone page (`seqattr.viz.html`) in an ``<iframe srcdoc>``: its script and
  styles run isolated from the notebook's, in Jupyter, VS Code and Colab alike.
- ``__treescope_repr__`` renders outputs as their constructor (fields foldable, tensors through treescope's
  own torch support) and, when expanded, a labelled treescope heatmap of every attribution tensor: tokens and
  steps on the axes, any extra dimension (hidden, layers, heads) on a slider, so raw multi-dimensional
  attributions can be browsed without reducing them first.

Nothing here is imported by ``import seqattr``: the output classes import this module on first display.

Example:
    >>> import treescope; treescope.basic_interactive_setup()     # doctest: +SKIP
    >>> out                                                       # rendered by treescope in a notebook
    AttributionOutput(1 sequence(s), method='saliency', model='GPT2LMHeadModel')
    >>> figure = array_figure(out[0], "target")                   # the labelled heatmap alone
    >>> type(figure).__name__
    'TreescopeFigure'
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import numpy as np

from seqattr.data.tokens import detect_scheme, token_labels

if TYPE_CHECKING:
    from seqattr.data.attribution import AttributionOutput, SequenceAttribution

MAX_IFRAME_HEIGHT = 900


def _estimated_height(attributions: AttributionOutput | SequenceAttribution) -> int:
    from seqattr.data.attribution import SequenceAttribution

    sequences = [attributions] if isinstance(attributions, SequenceAttribution) else list(attributions)
    height = 80
    for seq in sequences:
        rows = len(seq.source) + len(seq.target) + len(seq.step_scores)
        height += 260 + 22 * rows + (28 * seq.num_steps + 40 if seq.trace is not None else 0)
    return min(height, MAX_IFRAME_HEIGHT)


def repr_html(attributions: AttributionOutput | SequenceAttribution) -> str:
    """The interactive page inside an iframe, for Jupyter's rich display."""
    from seqattr.viz.html import to_html

    page = html.escape(to_html(attributions), quote=True)
    return (
        f'<iframe srcdoc="{page}" style="width: 100%; height: {_estimated_height(attributions)}px; '
        'border: 1px solid #ccc; border-radius: 4px" sandbox="allow-scripts"></iframe>'
    )


def array_figure(seq: SequenceAttribution, side: str = "target"):
    """A treescope heatmap of one side's attribution tensor, labelled with tokens and steps.

    Extra dimensions (raw hidden vectors, layers, heads) become sliders. Unseen cells are shown as invalid.

    Example:
        >>> type(array_figure(out[0], "target")).__name__       # displayed as a heatmap in a notebook
        'TreescopeFigure'
    """
    import treescope

    if side not in ("source", "target"):
        raise ValueError(f"side must be 'source' or 'target', not {side!r}")
    values = seq.source_attributions if side == "source" else seq.target_attributions
    if values is None:
        raise ValueError(f"this sequence has no {side} attributions")
    tokens = seq.source if side == "source" else seq.target
    scheme = detect_scheme([*seq.source, *seq.target])
    values = values.detach().float().cpu().numpy()
    extra = {2 + k: f"extra {k}" for k in range(values.ndim - 2)}
    return treescope.render_array(
        values,
        valid_mask=~np.isnan(values),
        rows=[0],
        columns=[1],
        sliders=list(extra),
        around_zero=True,
        truncate=True,
        axis_item_labels={0: token_labels(tokens, scheme), 1: token_labels(seq.steps, scheme)},
        axis_labels={0: f"{side} tokens", 1: "steps", **extra},
    )


class _AsConstructor:
    """Renders ``obj`` as its constructor with the given (treescope-safe) attribute values."""

    def __init__(self, obj: Any, attributes: dict[str, Any]) -> None:
        self.obj, self.attributes = obj, attributes

    def __treescope_repr__(self, path, subtree_renderer):
        from treescope import repr_lib

        return repr_lib.render_object_constructor(type(self.obj), self.attributes, path, subtree_renderer)


def _safe(value: Any) -> Any:
    """Tensors as numpy arrays, through dicts and dataclasses: treescope 0.1's torch support reads
    ``Tensor.names``, which recent torch no longer has, while its numpy support works everywhere."""
    import dataclasses

    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: _safe(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _AsConstructor(
            value, {f.name: _safe(getattr(value, f.name)) for f in dataclasses.fields(value)}
        )
    return value


def treescope_repr(attributions, path, subtree_renderer):
    """Treescope's rendering of an `AttributionOutput` or `SequenceAttribution` (see the module docstring)."""
    from treescope import figures, rendering_parts, repr_lib

    from seqattr.data.attribution import SequenceAttribution

    if not isinstance(attributions, SequenceAttribution):
        return repr_lib.render_object_constructor(
            type(attributions),
            {"sequence_attributions": attributions.sequence_attributions, "info": attributions.info},
            path,
            subtree_renderer,
        )
    constructor = _safe(attributions).__treescope_repr__(path, subtree_renderer)
    sides = [s for s in ("source", "target") if getattr(attributions, f"{s}_attributions") is not None]
    if not sides or attributions.num_steps == 0:
        return constructor
    heatmaps = [
        rendering_parts.siblings(
            rendering_parts.text(f"{side} attributions:"),
            figures.treescope_part_from_display_object(array_figure(attributions, side)),
        )
        for side in sides
    ]
    return rendering_parts.siblings_with_annotations(
        constructor,
        rendering_parts.fold_condition(
            expanded=rendering_parts.indented_children([rendering_parts.on_separate_lines(heatmaps)])
        ),
    )
