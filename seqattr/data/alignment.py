"""Hard alignments from attributions: which source position(s) each explained step is linked to.

This is the translation-analysis reading of attributions in the word-alignment literature (Ding et al.
2019; Kobayashi et al. 2020; Ferrando et al. 2022): every target step is linked to the source position it
relies on most. `seqattr.metrics` scores such links against gold alignments (AER, alignment accuracy).

Index convention (that of gold alignment files, where ``i-j`` links the i-th source word to the j-th target
word and special tokens are not counted):

- *source side*: the encoder input for encoder-decoder models; the prompt (the target positions before the
  first explained step) for decoder-only models. Target-prefix attributions never take part;
- *target side*: the explained steps;
- on both sides special tokens (``<s>``, ``</s>``, ``<pad>``, ids in ``special_ids``) and masked positions are
  left out, and the remaining positions are numbered from 0 in order. Indices are 0-based here;
  `Alignment.to_text` writes the 1-based ``i-j`` lines of gold files.

For word-level links, merge tokens first: ``out.aggregate("words").alignments()``.

Links per step (scores are compared by absolute value unless ``signed=True``; NaN scores never link):

- default: the argmax, one link per step (a step whose scores are all 0 or NaN gets none);
- ``top_k=k``: the ``k`` highest;
- ``threshold=x``: every position whose share of the step's total (absolute score over the sum of absolute
  scores of the step's candidate positions) is at least ``x``, so ``x`` means the same for every method.

Example:
    >>> from seqattr.data.alignment import Alignment
    >>> Alignment(source=["a", "b"], target=["x", "y"], links=frozenset({(1, 0), (0, 1)})).to_text()
    '1-2 2-1'
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from seqattr.data.aggregation import is_special

if TYPE_CHECKING:
    from seqattr.data.attribution import SequenceAttribution


@dataclass(frozen=True)
class Alignment:
    """The links of one example: ``(source index, target index)`` pairs, 0-based, special tokens not counted.

    ``source`` and ``target`` are the counted tokens (or words), so ``source[i]`` is linked to ``target[j]``.

    Example:
        >>> alignment = Alignment(["a", "b"], ["x"], frozenset({(1, 0)}))
        >>> alignment.pairs(), alignment.to_text()
        ([('b', 'x')], '2-1')
    """

    source: list[str]
    target: list[str]
    links: frozenset[tuple[int, int]]

    def pairs(self) -> list[tuple[str, str]]:
        """The linked ``(source token, target token)`` pairs, in target then source order."""
        return [(self.source[i], self.target[j]) for i, j in sorted(self.links, key=lambda link: link[::-1])]

    def to_text(self, one_based: bool = True) -> str:
        """The links as one line of a gold alignment file: ``"1-2 2-1"`` (sorted; 1-based by default)."""
        offset = 1 if one_based else 0
        return " ".join(f"{i + offset}-{j + offset}" for i, j in sorted(self.links))


def _kept_positions(tokens, ids, masked, special_ids) -> list[int]:
    return [
        p for p, token in enumerate(tokens) if p not in masked and not is_special(token, ids[p], special_ids)
    ]


def aligned_steps(seq: SequenceAttribution, special_ids: Iterable[int] | None = None) -> list[int]:
    """The steps an alignment counts, in order: every explained step but the masked and special ones
    (alignment target index ``j`` is step ``aligned_steps(seq)[j]``).

    Example:
        >>> aligned_steps(seq)                  # no special or masked step among "the city"
        [0, 1, 2, 3]
    """
    special = set(special_ids or ())
    masked = set(seq.masked_target)
    return [
        t
        for t, p in enumerate(range(seq.attr_pos_start, seq.attr_pos_end))
        if p not in masked and not is_special(seq.target[p], seq.target_ids[p], special)
    ]


def extract_alignment(
    seq: SequenceAttribution,
    threshold: float | None = None,
    *,
    top_k: int | None = None,
    signed: bool = False,
    special_ids: Iterable[int] | None = None,
) -> Alignment:
    """The hard alignment of one example (see the module docstring for the index convention).

    Example:
        >>> alignment = extract_alignment(seq)            # decoder-only: steps linked to prompt tokens
        >>> len(alignment.links) == len(alignment.target) and alignment.target == seq.steps
        True
    """
    if threshold is not None and top_k is not None:
        raise ValueError("give either threshold= or top_k=, not both (the default links each step's argmax)")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
        raise ValueError(f"threshold is a share of the step's total in [0, 1], got {threshold!r}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if seq.extra_dims:
        raise ValueError(
            "alignments need one score per token and step, but these attributions have extra dimensions "
            f"{tuple(seq.attribution_shape[2:])}; reduce them first, e.g. .reduce('sum') or .reduce('l2')"
        )
    special = set(special_ids or ())
    if seq.source_attributions is not None:
        scores = seq.source_attributions
        rows = _kept_positions(seq.source, seq.source_ids, set(seq.masked_source), special)
        row_tokens = seq.source
    elif seq.target_attributions is not None:
        start = seq.attr_pos_start
        scores = seq.target_attributions[:start]
        rows = _kept_positions(seq.target[:start], seq.target_ids[:start], set(seq.masked_target), special)
        row_tokens = seq.target
    else:
        raise ValueError("this sequence has no attributions to align (source and target are both None)")
    steps = aligned_steps(seq, special)
    links = set()
    if rows and steps:
        block = scores[rows][:, steps].float()
        block = block if signed else block.abs()
        for j in range(len(steps)):
            column = block[:, j]
            valid = ~column.isnan()
            if not valid.any():
                continue
            for i in _linked_rows(column.masked_fill(~valid, -math.inf), threshold, top_k, valid):
                links.add((i, j))
    source = [row_tokens[p] for p in rows]
    target = [seq.target[seq.attr_pos_start + t] for t in steps]
    return Alignment(source, target, frozenset(links))


def _linked_rows(column: torch.Tensor, threshold, top_k, valid) -> list[int]:
    if threshold is not None:
        total = column[valid].abs().sum()
        if total <= 0:
            return []
        share = column / total
        return [i for i in range(len(column)) if valid[i] and share[i] >= threshold]
    if (column[valid] == 0).all():
        return []  # an all-zero step gives no evidence for any position
    return torch.topk(column, min(top_k or 1, int(valid.sum()))).indices.tolist()
