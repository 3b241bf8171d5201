"""How well an attribution method recovers a ground-truth task's gold links (alignment accuracy, AER)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from seqattr.ground_truth.task import Task
from seqattr.metrics.alignment import alignment_accuracy, alignment_error_rate


@dataclass(frozen=True)
class AlignmentScores:
    """The scores of one method on one task (see `seqattr.metrics.alignment` for the definitions)."""

    task: str
    method: str
    accuracy: float
    """Share of gold steps whose argmax source position is a gold one."""
    aer: float
    """Alignment error rate of the argmax links against the sure and possible gold links."""
    steps: int
    """How many steps have gold links."""


def alignment_scores(task: Task, method: str, **options: Any) -> AlignmentScores:
    """Attribute ``task``'s evaluation set with ``method`` and score the argmax alignments against the gold.

    ``options`` go to ``attribute`` (method options, e.g. ``n_steps=20``); attributions with extra dimensions
    (attention's layers and heads) are summed over them first.

    Example:
        >>> task = load_task("dictionary_translation")                         # doctest: +SKIP
        >>> alignment_scores(task, "saliency").accuracy >= 0.9                  # doctest: +SKIP
        True
    """
    out = task.attribute(method, **options).reduce("sum")
    predicted, gold = out.alignments(), task.gold
    steps = sum(len(g.steps()) for g in gold)
    return AlignmentScores(
        task.name, method, alignment_accuracy(predicted, gold), alignment_error_rate(predicted, gold), steps
    )
