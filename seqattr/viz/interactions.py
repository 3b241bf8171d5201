"""Views of token x token interactions (``integrated_hessians``, ``expected_hessians``): one step at a time.

A step's matrix holds, for every pair of tokens the step can see, how much the two acted together on the
step's score; the diagonal holds each token's main effect, and each row adds up to the token's attribution.
Rows and columns are the source tokens, then the target tokens the step saw (unseen ones are left out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from seqattr.data.attribution import AttributionOutput, SequenceAttribution
from seqattr.data.frames import feature_labels
from seqattr.data.tokens import detect_scheme, token_labels

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console


def step_matrix(
    attributions: SequenceAttribution | AttributionOutput, step: int, example: int = 0
) -> tuple[SequenceAttribution, int, np.ndarray, list[str]]:
    """``(sequence, step index, matrix, labels)``: one step's interactions over the tokens it saw.

    Example:
        >>> seq, step, matrix, labels = step_matrix(ih_out, step=-1)   # doctest: +SKIP
        >>> matrix.shape == (len(labels), len(labels))                  # doctest: +SKIP
        True
    """
    seq = attributions if isinstance(attributions, SequenceAttribution) else attributions[example]
    if seq.interactions is None:
        raise ValueError(
            "these attributions hold no interactions; attribute with method='integrated_hessians' or "
            "'expected_hessians'"
        )
    if not -seq.num_steps <= step < seq.num_steps:
        raise IndexError(f"step={step} is out of range: this example has {seq.num_steps} step(s)")
    step %= seq.num_steps
    matrix = seq.interactions[:, :, step].double().numpy()
    seen = ~np.isnan(matrix).all(1)
    scheme = detect_scheme([*seq.source, *seq.target])
    labels = [
        f"{token_labels([token], scheme)[0]}" + ("ˢ" if side == "source" else "")
        for side, _, token in feature_labels(seq)
    ]
    return seq, step, matrix[seen][:, seen], [label for label, keep in zip(labels, seen, strict=True) if keep]


def show(
    attributions: SequenceAttribution | AttributionOutput,
    step: int = -1,
    console: Console | None = None,
    example: int = 0,
) -> None:
    """Print one step's interaction heatmap: a table whose cell (row, column) is the pair's interaction.

    Example:
        >>> ih_out.show_interactions(step=0)   # doctest: +SKIP
    """
    from rich.console import Console
    from rich.table import Table

    from seqattr.viz.console import cell_style, format_score

    seq, step, matrix, labels = step_matrix(attributions, step, example)
    token = token_labels([seq.steps[step]], detect_scheme([*seq.source, *seq.target]))[0]
    finite = matrix[np.isfinite(matrix)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    table = Table(title=f"step {step} ({token!r})", box=None)
    table.add_column("")
    for label in labels:
        table.add_column(label, justify="right")
    for label, row in zip(labels, matrix, strict=True):
        cells = [f"[{cell_style(v, scale)}]{format_score(v)}[/]" if cell_style(v, scale) else format_score(v)
                 for v in row]  # fmt: skip
        table.add_row(label, *cells)
    console = console or Console()
    console.print(table)
    console.print("the diagonal holds the main effects; each row adds up to the token's attribution")


def plot(
    attributions: SequenceAttribution | AttributionOutput,
    step: int = -1,
    example: int = 0,
    cell_size: float = 0.4,
    cmap: str = "RdBu_r",
) -> Figure:
    """A heatmap figure of one step's interactions (diverging colours around zero; not shown: save it).

    Example:
        >>> fig = ih_out.plot_interactions(step=0)   # doctest: +SKIP
        >>> fig.savefig(tmp / "pairs.png")          # doctest: +SKIP
    """
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    seq, step, matrix, labels = step_matrix(attributions, step, example)
    token = token_labels([seq.steps[step]], detect_scheme([*seq.source, *seq.target]))[0]
    size = cell_size * max(len(labels), 1)
    figure = Figure(figsize=(size + 2.5, size + 1.8))
    axes = figure.add_axes((1.4 / (size + 2.5), 1.2 / (size + 1.8), size / (size + 2.5), size / (size + 1.8)))
    finite = matrix[np.isfinite(matrix)]
    scale = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    image = axes.imshow(matrix, cmap=cmap, norm=Normalize(-scale, scale))
    axes.set_xticks(range(len(labels)), labels, rotation=90)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_title(f"interactions on step {step} ({token!r})")
    figure.colorbar(image, ax=axes, fraction=0.05)
    return figure
