"""One vocabulary of reductions, for every place that collapses a dimension: the hidden dimension of
gradient methods (``hidden_reduction=``), the layers and heads of attention methods (``aggregate_layers=``,
``aggregate_heads=``), and every ``fn`` of the output's aggregation (``reduce``, ``aggregate``).

A name means the same everywhere; each option accepts the names that make sense for it (a hidden
reduction must be one of `HIDDEN_REDUCTIONS`, say), and aggregation also takes a callable.

Example:
    >>> x = torch.tensor([[1.0, -3.0], [2.0, 0.5]])
    >>> get_reduction("absmax")(x, 1), get_reduction("l2")(x, 0)
    (tensor([-3.,  2.]), tensor([2.2361, 3.0414]))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from seqattr.registry import name_or_callable

Reduction = Callable[[Tensor, int], Tensor]
"""A reduction takes a tensor and a dimension and removes that dimension, e.g. ``lambda t, d: t.amax(d)``."""


def _absmax(tensor: Tensor, dim: int) -> Tensor:
    """The value of largest magnitude, sign kept (a strongly negative feature stays negative)."""
    index = tensor.abs().argmax(dim, keepdim=True)
    return tensor.gather(dim, index).squeeze(dim)


REDUCTIONS: dict[str, Reduction] = {
    "sum": lambda t, d: t.sum(d),
    "mean": lambda t, d: t.mean(d),
    "l2": lambda t, d: torch.linalg.vector_norm(t, dim=d),
    "absmax": _absmax,
    "max": lambda t, d: t.amax(d),
    "min": lambda t, d: t.amin(d),
    "prod": lambda t, d: t.prod(d),
}
"""Reductions by name."""

HIDDEN_REDUCTIONS = ("sum", "l2", "mean", "absmax", None)
"""What ``hidden_reduction=`` accepts (None keeps the hidden dimension)."""

LAYER_REDUCTIONS = ("mean", "max", None)
"""What ``aggregate_layers=`` / ``aggregate_heads=`` accept (None keeps the dimension)."""


def get_reduction(fn: str | Reduction) -> Reduction:
    """The reduction named ``fn`` (or ``fn`` itself when it is a callable ``(tensor, dim) -> tensor``)."""
    return name_or_callable(REDUCTIONS, fn, "reduction", ", or pass a callable (tensor, dim) -> tensor")
