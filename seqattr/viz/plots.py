"""Heatmap figures for papers (matplotlib, imported only when a plot is asked for).

Rows are the unmasked source tokens, then the unmasked target tokens (a line separates them); columns are
the explained steps, labelled with the token each step produced; unseen cells, and tokens a perturbation
method did not perturb, are left blank, and target tokens no step sees get no row. The colour map is
diverging and symmetric around zero (``RdBu_r``: red positive, blue negative) for signed scores, and
sequential from zero (``Reds``) when no score is negative. Step scores, when present, are drawn as a strip
of numbers under the heatmap.

The figure's size follows from the table's: ``cell_size`` inches per cell plus fixed margins, so a saved PNG
is ``figure.get_size_inches() * dpi`` pixels (no tight cropping), predictable for a paper's layout.
Attributions with extra dimensions are summed over them, as in the other views.

Example:
    >>> fig = out[0].aggregate("word").plot(title="saliency, words")
    >>> out[0].save_plot(tmp / "heatmap.pdf", cell_size=0.35)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seqattr.data.aggregation import unperturbed
from seqattr.data.attribution import AttributionOutput, SequenceAttribution
from seqattr.data.tokens import detect_scheme, token_labels

if TYPE_CHECKING:
    from matplotlib.figure import Figure


LEFT, RIGHT, TOP, BOTTOM = 1.4, 1.0, 1.1, 0.3
"""Margins in inches: row labels, colour bar, column labels (and title), bottom edge."""


def _rows(seq: SequenceAttribution) -> tuple[np.ndarray, list[str], int]:
    """The displayed matrix, its row labels, and how many of the rows are source rows."""
    scheme = detect_scheme([*seq.source, *seq.target])
    blocks, labels, source_rows = [], [], 0
    for side, tokens, values, masked in [
        ("source", seq.source, seq.source_attributions, set(seq.masked_source)),
        ("target", seq.target, seq.target_attributions, set(seq.masked_target)),
    ]:
        if values is None:
            continue
        values = values.float()
        if values.dim() > 2:
            values = values.reshape(*values.shape[:2], -1).sum(-1)
        values = values.clone()
        values[sorted(unperturbed(seq, side))] = float("nan")  # a stored 0, not a measurement
        rows = values.numpy()
        keep = [i for i in range(len(tokens)) if i not in masked]
        if side == "target":  # tokens no step sees (the last one) would be an empty row
            keep = [i for i in keep if not np.isnan(rows[i]).all()]
        blocks.append(rows[keep])
        side_labels = token_labels(tokens, scheme)
        labels += [side_labels[i] for i in keep]
        if side == "source":
            source_rows = len(keep)
    matrix = np.concatenate(blocks) if blocks else np.zeros((0, seq.num_steps))
    return matrix, labels, source_rows


def plot(
    attributions: SequenceAttribution | AttributionOutput,
    *,
    example: int = 0,
    title: str | None = None,
    cell_size: float = 0.4,
    annotate: bool | None = None,
    cmap: str | None = None,
) -> Figure:
    """A heatmap figure of one example (not shown: save it, or let a notebook display it): ``attributions``
    itself, or example ``example`` of an output.

    ``annotate`` writes each score in its cell (default: when there are at most 400 cells). ``cmap``: any
    matplotlib colour map; by default ``RdBu_r`` around zero, or ``Reds`` from zero when no score is negative.

    Example:
        >>> fig = seq.plot(title="saliency")
        >>> fig.get_size_inches().round(2).tolist()       # cell_size inches per cell, plus margins
        [4.0, 5.52]
        >>> fig.savefig(tmp / "saliency.svg")
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    seq = attributions if isinstance(attributions, SequenceAttribution) else attributions[example]
    matrix, labels, source_rows = _rows(seq)
    steps = seq.num_steps
    scheme = detect_scheme([*seq.source, *seq.target])
    step_labels = token_labels(seq.target, scheme)[seq.attr_pos_start : seq.attr_pos_end]
    score_names = list(seq.step_scores)
    rows = matrix.shape[0]
    width = LEFT + RIGHT + cell_size * max(steps, 1)
    height = TOP + BOTTOM + cell_size * (max(rows, 1) + len(score_names) + (0.3 if score_names else 0))
    figure = Figure(figsize=(width, height))

    finite = matrix[np.isfinite(matrix)]
    unsigned = bool((finite >= 0).all())
    scale = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    cmap = cmap or ("Reds" if unsigned else "RdBu_r")
    colours = colormaps[cmap].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))  # unseen cells: transparent
    heat_height = cell_size * max(rows, 1)
    axes = figure.add_axes(
        (
            LEFT / width,
            1 - (TOP + heat_height) / height,
            cell_size * max(steps, 1) / width,
            heat_height / height,
        )
    )
    image = axes.imshow(
        np.ma.masked_invalid(matrix),
        cmap=colours,
        norm=Normalize(0.0 if unsigned else -scale, scale),
        aspect="auto",
        interpolation="nearest",
    )
    axes.set_xticks(range(steps), step_labels, rotation=60, ha="left", rotation_mode="anchor")
    axes.set_yticks(range(rows), labels)
    axes.xaxis.tick_top()
    axes.tick_params(length=0)
    if 0 < source_rows < rows:
        axes.axhline(source_rows - 0.5, color="black", linewidth=1.0)
    if annotate if annotate is not None else rows * steps <= 400:
        for (r, c), value in np.ndenumerate(matrix):
            if math.isfinite(value):
                shade = "white" if abs(value) / scale > 0.6 else "black"
                axes.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=6, color=shade)
    if title:
        figure.suptitle(title, y=1 - 0.12 / height, fontsize=10)

    bar = figure.add_axes(
        (
            (LEFT + cell_size * max(steps, 1) + 0.15) / width,
            1 - (TOP + heat_height) / height,
            0.15 / width,
            heat_height / height,
        )
    )
    figure.colorbar(image, cax=bar)
    bar.tick_params(labelsize=7)

    if score_names:
        strip = figure.add_axes(
            (
                LEFT / width,
                BOTTOM / height,
                cell_size * max(steps, 1) / width,
                cell_size * len(score_names) / height,
            )
        )
        strip.set_xlim(-0.5, steps - 0.5)
        strip.set_ylim(len(score_names) - 0.5, -0.5)
        strip.set_xticks([])
        strip.set_yticks(range(len(score_names)), score_names)
        strip.tick_params(length=0)
        for r, name in enumerate(score_names):
            for c, value in enumerate(seq.step_scores[name].float().tolist()):
                strip.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=6)
    return figure


def save_plot(
    attributions: SequenceAttribution | AttributionOutput, path: str | Path, *, dpi: int = 200, **options
) -> None:
    """Save `plot`'s figure; the format follows the suffix (``.png``, ``.svg``, ``.pdf``).

    Example:
        >>> save_plot(out[0], tmp / "heatmap.png", dpi=300, title="saliency")
    """
    plot(attributions, **options).savefig(path, dpi=dpi)
