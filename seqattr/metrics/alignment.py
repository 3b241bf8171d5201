"""Plausibility of attributions as word alignments: alignment error rate and alignment accuracy.

Both compare predicted links (`seqattr.data.alignment.Alignment`, e.g. ``out.alignments()``) with gold links
(`seqattr.metrics.gold.GoldAlignment`, e.g. ``read_gold("test.talp")``), sentence by sentence, pooled over
the corpus. Indices follow `seqattr.data.alignment`: 0-based, special tokens not counted, words after
``aggregate("words")``; a gold link outside a prediction's tokens is refused, since it means that the two
count positions differently.

- `alignment_error_rate` (Och & Ney 2003), with A the predicted links, S the sure and P the possible gold
  links (S ⊆ P), summed over sentences::

      AER = 1 - (|A ∩ S| + |A ∩ P|) / (|A| + |S|)

- `alignment_accuracy`: the share of gold steps (target indices with at least one gold link) whose
  prediction is right. A step's gold positions are its source indices linked sure or possible (as in AER,
  a predicted possible link is no error); the step is right when it has at least one predicted link and
  every predicted link of it is a gold position. With the default argmax alignment (one link per step) this
  is the share of steps whose gold positions contain the predicted one. Compare AER, which also charges
  missed sure links, to see how often a method settles on a merely possible link.

Example:
    >>> from seqattr.data.alignment import Alignment
    >>> predicted = [Alignment(["a", "b"], ["x", "y"], frozenset({(0, 0), (0, 1)}))]
    >>> gold = read_gold(["1-1 2-2"])
    >>> alignment_error_rate(predicted, gold), alignment_accuracy(predicted, gold)
    (0.5, 0.5)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from seqattr.data.alignment import Alignment
from seqattr.data.attribution import AttributionOutput, SequenceAttribution
from seqattr.metrics.gold import GoldAlignment, read_gold

Predictions = AttributionOutput | SequenceAttribution | Alignment | Sequence[Alignment]
Gold = str | os.PathLike | Iterable[str] | GoldAlignment | Sequence[GoldAlignment]


def _pairs(predicted: Predictions, gold: Gold) -> list[tuple[Alignment, GoldAlignment]]:
    if isinstance(predicted, (AttributionOutput, SequenceAttribution)):
        predicted = predicted.alignments()
    predictions = [predicted] if isinstance(predicted, Alignment) else list(predicted)
    if not all(isinstance(p, Alignment) for p in predictions):
        raise TypeError(
            "predictions are an AttributionOutput, a SequenceAttribution, or Alignment objects "
            "(out.alignments(...))"
        )
    if isinstance(gold, GoldAlignment):
        golds = [gold]
    elif isinstance(gold, (str, os.PathLike)):
        golds = read_gold(gold)
    else:
        gold = list(gold)
        golds = gold if all(isinstance(g, GoldAlignment) for g in gold) else read_gold(gold)
    if len(predictions) != len(golds):
        raise ValueError(
            f"{len(predictions)} predicted alignment(s) but {len(golds)} gold alignment(s): "
            "one gold line per example is needed"
        )
    for number, (p, g) in enumerate(zip(predictions, golds, strict=True)):
        outside = sorted((i, j) for i, j in g.possible if i >= len(p.source) or j >= len(p.target))
        if outside:
            i, j = outside[0]
            raise ValueError(
                f"example {number}: the gold link {i + 1}-{j + 1} (1-based) lies outside the prediction's "
                f"{len(p.source)} source and {len(p.target)} target positions; predictions count positions "
                "without special tokens, and words only after out.aggregate('words')"
            )
    return list(zip(predictions, golds, strict=True))


def alignment_error_rate(predicted: Predictions, gold: Gold) -> float:
    """The corpus alignment error rate of ``predicted`` against ``gold`` (0 is perfect, 1 the worst).

    ``predicted``: an `AttributionOutput` (its default argmax ``alignments()``), a `SequenceAttribution`, or
    `Alignment` objects; ``gold``: a gold file's path, its lines, or `GoldAlignment` objects, one per example.
    Refused when there is nothing to score (no predicted and no sure link in the whole corpus).

    Example:
        >>> from seqattr.data.alignment import Alignment
        >>> predicted = Alignment(["a", "b"], ["x", "y"], frozenset({(0, 0), (1, 0)}))
        >>> alignment_error_rate(predicted, read_gold(["1-1 2-1-P 2-2"]))   # 1 - (1 + 2) / (2 + 2)
        0.25
    """
    hits_sure = hits_possible = n_predicted = n_sure = 0
    for p, g in _pairs(predicted, gold):
        hits_sure += len(p.links & g.sure)
        hits_possible += len(p.links & g.possible)
        n_predicted += len(p.links)
        n_sure += len(g.sure)
    if n_predicted + n_sure == 0:
        raise ValueError(
            "the alignment error rate is undefined here: no predicted link and no sure gold link in the "
            "whole corpus"
        )
    return 1.0 - (hits_sure + hits_possible) / (n_predicted + n_sure)


def alignment_accuracy(predicted: Predictions, gold: Gold) -> float:
    """The share of gold steps whose predicted links all lie on their gold positions (see the module
    docstring for the exact definition). Refused when no step has a gold link.

    Example:
        >>> from seqattr.data.alignment import Alignment
        >>> predicted = Alignment(["a", "b"], ["x", "y"], frozenset({(1, 0), (0, 1)}))
        >>> alignment_accuracy(predicted, read_gold(["2-1 2-2-P"]))     # step 2 may link to source 2 only
        0.5
    """
    right = total = 0
    for p, g in _pairs(predicted, gold):
        for j, positions in g.steps().items():
            linked = {i for i, t in p.links if t == j}
            right += bool(linked) and linked <= positions
            total += 1
    if total == 0:
        raise ValueError("alignment accuracy is undefined here: no step of the gold alignments has a link")
    return right / total
