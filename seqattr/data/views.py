"""The registry of views, and the view methods every attribution object has.

A view turns an `AttributionOutput` or a `SequenceAttribution` into something to look at: the terminal
heatmap, the standalone HTML page, a notebook cell, a matplotlib figure. Views live in `seqattr.viz`, above
this package: they are registered by name as ``"module:function"`` (`seqattr.viz` registers the built-in
ones when seqattr is imported) and imported only when first used, so matplotlib or treescope load only for
the views that need them. `Views` gives both data classes the same methods over the registry.

Adding a view = a function ``view(attributions, **options)`` in a module of `seqattr.viz`, one
`register_view` line in ``seqattr/viz/__init__.py``, and a method here if it deserves one.

Example:
    >>> sorted(registered_views())  # doctest: +NORMALIZE_WHITESPACE
    ['entities_terminal', 'html', 'interactions_plot', 'interactions_terminal', 'notebook', 'plot', 'rich',
     'terminal', 'treescope']
    >>> render("html", out[0], title="one example").startswith("<!DOCTYPE html>")
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

_VIEWS: dict[str, str | Callable[..., Any]] = {}


def register_view(name: str, view: str | Callable[..., Any]) -> None:
    """Register ``view`` (a function, or ``"module:function"`` imported on first use) under ``name``;
    a later registration of the same name replaces the earlier one."""
    if isinstance(view, str) and ":" not in view:
        raise ValueError(f"a view given by name is 'module:function', got {view!r}")
    _VIEWS[name] = view


def registered_views() -> list[str]:
    """The names of the registered views."""
    return list(_VIEWS)


def render(name: str, attributions, *args: Any, **options: Any) -> Any:
    """Run the view ``name`` on an `AttributionOutput` or a `SequenceAttribution`."""
    if name not in _VIEWS:
        raise ValueError(f"unknown view {name!r}; registered views: {', '.join(sorted(_VIEWS))}")
    view = _VIEWS[name]
    if isinstance(view, str):
        module, _, function = view.partition(":")
        view = _VIEWS[name] = getattr(importlib.import_module(module), function)
    return view(attributions, *args, **options)


class Views:
    """The view methods of `AttributionOutput` and `SequenceAttribution` (the same on both)."""

    def show(self, console=None, normalize: bool | None = None) -> None:
        """Print the heatmap (one per example, with its generation trace) in the terminal.

        ``normalize``: show each step's scores divided by their L1 norm; None (default) does so where raw
        scores have no unit a reader can interpret (plain gradients: ``info["unitless_scores"]``), and the
        title says which; False shows raw scores.
        """
        render("terminal", self, console=console, normalize=normalize)

    def to_html(self, title: str | None = None) -> str:
        """A self-contained interactive HTML page (`seqattr.viz.html`): no network needed to open it."""
        return render("html", self, title=title)

    def save_html(self, path: str | Path, title: str | None = None) -> None:
        """Write `to_html` to ``path``."""
        Path(path).write_text(self.to_html(title=title), encoding="utf-8")

    def plot(self, **options):
        """A matplotlib heatmap figure of one example (`seqattr.viz.plots.plot`; ``example=`` picks one of
        an output, default the first)."""
        return render("plot", self, **options)

    def save_plot(self, path: str | Path, *, dpi: int = 200, **options) -> None:
        """Save `plot`'s figure; the format follows the suffix (``.png``, ``.svg``, ``.pdf``)."""
        self.plot(**options).savefig(path, dpi=dpi)

    def show_interactions(self, step: int = -1, console=None, example: int = 0) -> None:
        """Print one step's token x token interaction heatmap in the terminal (interaction methods:
        ``integrated_hessians``, ``expected_hessians``); ``step`` counts explained steps (default the last),
        ``example`` picks one example of an output."""
        render("interactions_terminal", self, step=step, console=console, example=example)

    def plot_interactions(self, step: int = -1, example: int = 0):
        """A matplotlib heatmap of one step's token x token interactions (`seqattr.viz.interactions`)."""
        return render("interactions_plot", self, step=step, example=example)

    def show_entities(
        self, entity: int | str | None = None, console=None, example: int | None = None
    ) -> None:
        """Print a token classifier's entity-span view in the terminal (`seqattr.viz.entities`): the text with
        its predicted entities marked (``[london](LOC)``), then each entity's attribution over the input
        tokens; ``entity`` picks one (an index, its text or its label), ``example`` one example of an output.
        The HTML page (`to_html`) shows the same, an entity's attribution on click.

        Example:
            >>> tagged.show_entities(entity="london")          # a tagger's output  # doctest: +SKIP
            #0
            [bob](PER) went to [london](LOC) .
        """
        render("entities_terminal", self, entity=entity, console=console, example=example)

    def _repr_html_(self) -> str:
        return render("notebook", self)

    def __treescope_repr__(self, path, subtree_renderer):
        return render("treescope", self, path, subtree_renderer)

    def __rich__(self):
        return render("rich", self)
