"""Classifier-shaped readings of a result: predicted labels and transformers-interpret's word attributions.

A classifier's result (``out.info["task"] == "sequence-classification"``) has one step per text whose "token"
is the explained label; the generation trace holds the labels ranked by probability, so its first choice is
the prediction. ``word_attributions`` lists ``(token, score)`` pairs of one step as transformers-interpret's
explainers return them: every input token (special tokens included, the ``Ġ`` space marker removed), the
scores divided by their L2 norm when ``normalize`` (as transformers-interpret always does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from seqattr.data.tokens import detect_scheme, token_texts
from seqattr.step_functions import MULTI_LABEL_THRESHOLD

if TYPE_CHECKING:
    from seqattr.data.attribution import AttributionOutput, SequenceAttribution

CLASSIFICATION_TASKS = ("sequence-classification", "token-classification", "question-answering")


def word_attributions(
    seq: SequenceAttribution, step: int = 0, normalize: bool = True
) -> list[tuple[str, float]]:
    """``(token, score)`` for every token step ``step`` saw: the source, then the visible target prefix.

    Example:
        >>> pairs = word_attributions(seq, step=0)          # the tiny GPT-2's first forced step
        >>> [token for token, _ in pairs]
        ['The', 'capit', 'al', 'of', 'France', 'is']
        >>> round(sum(score**2 for _, score in pairs), 6)   # normalised: unit L2 norm
        1.0
    """
    if not -seq.num_steps <= step < seq.num_steps:
        raise IndexError(f"step {step} is out of range: this sequence has {seq.num_steps} step(s)")
    if seq.extra_dims:
        raise ValueError(
            f"word_attributions() needs one score per token, but these attributions keep {seq.extra_dims} "
            "extra dimension(s); reduce them first, e.g. seq.reduce('sum')"
        )
    tokens: list[str] = []
    scores: list[torch.Tensor] = []
    if seq.source_attributions is not None:  # a causal tagger's step does not see the tokens after its own
        column = seq.source_attributions[:, step]
        seen = ~column.isnan()
        tokens += [token for token, keep in zip(seq.source, seen.tolist(), strict=True) if keep]
        scores.append(column[seen])
    if seq.target_attributions is not None:
        column = seq.target_attributions[:, step]
        seen = ~column.isnan()
        tokens += [token for token, keep in zip(seq.target, seen.tolist(), strict=True) if keep]
        scores.append(column[seen])
    values = torch.cat(scores).double()
    if normalize:
        norm = values.norm()
        values = values / norm if norm > 0 else values
    return [(str(token).replace("Ġ", ""), float(v)) for token, v in zip(tokens, values, strict=True)]


def predicted_labels(output: AttributionOutput) -> list[str] | list[list[str]]:
    """Each text's predicted label (a classifier's output): the trace's first choice at its first step; a
    multi-label classifier's (``info["multi_label"]``): the list of its labels whose probability,
    ``sigmoid(logit)``, passes 0.5, most probable first (the trace lists all of them).

    Example:
        >>> predicted_labels(out)                              # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: predicted labels belong to classifiers; this output explains generation ...
    """
    task = output.info.get("task", "generation")
    if task not in CLASSIFICATION_TASKS:
        raise ValueError(
            f"predicted labels belong to classifiers; this output explains {task} (task {task!r})"
        )
    labels = []
    for i, seq in enumerate(output.sequence_attributions):
        if seq.trace is None:
            raise ValueError(f"sequence {i} has no trace to read its prediction from")
        if task == "sequence-classification" and output.info.get("multi_label"):
            labels.append(multi_label_prediction(seq))
        elif task == "sequence-classification":
            labels.append(seq.trace.top_tokens[0][0])
        else:  # a tag per token; QA's start and end (each the most likely alone)
            labels.append([top[0] for top in seq.trace.top_tokens])
    return labels


def multi_label_prediction(seq: SequenceAttribution) -> list[str]:
    """A multi-label classifier's prediction for one text: the labels of its trace (the same at every step,
    the text's one forward pass) whose probability passes 0.5, most probable first."""
    return [
        label
        for label, p in zip(seq.trace.top_tokens[0], seq.trace.top_probabilities[0].tolist(), strict=True)
        if p > MULTI_LABEL_THRESHOLD
    ]


@dataclass
class Entity:
    """A span of tokens a tagger labelled as one entity, with the attributions of its tags.

    ``start``/``end`` are source token positions (``[start, end)``); ``steps`` the steps (columns) that
    explain its tokens' tags; ``attributions`` the mean of those steps' attributions, one score per source
    token (``[len(source)]``; for a causal decoder's tagger the mean over the steps that see the token, NaN
    after the entity's last token)."""

    label: str
    start: int
    end: int
    tokens: list[str]
    steps: list[int]
    attributions: torch.Tensor
    scheme: str | None = field(default=None, repr=False)
    """The subword scheme of the tokens' text (`seqattr.data.tokens.detect_scheme` of the whole input, which
    the entity's own few tokens may not show); None: detected from the entity's tokens."""

    @property
    def text(self) -> str:
        """The entity's tokens joined into words (WordPiece's ``##``, byte-level BPE's ``Ġ`` and
        SentencePiece's ``▁`` handled: a byte-level token without ``Ġ`` continues the word before it)."""
        scheme = self.scheme or detect_scheme(self.tokens)
        if scheme == "plain":  # no subword marker anywhere (e.g. WordPiece of whole words): words apart
            return " ".join(self.tokens)
        return "".join(token_texts(self.tokens, scheme)).strip()


def entities(seq: SequenceAttribution) -> list[Entity]:
    """The entities of a token classifier's example: consecutive tokens whose explained tags name one entity
    (``B-X`` starts one, ``I-X`` continues an ``X``; a tag without a prefix continues the same tag), ``O``
    and other outside tags ending them. Step ``j`` explains the tag of source token
    ``attr_pos_start - 1 + j``.

    Example:
        >>> [(e.label, e.text, e.start, e.end) for e in entities(tagged[0])]   # doctest: +SKIP
        [('PER', 'bob', 1, 2), ('LOC', 'london', 4, 6)]
    """
    if not seq.target or seq.target[0] != "<label>" or seq.source_attributions is None:
        raise ValueError(
            "entities() reads a token classifier's output (attribute() of a *ForTokenClassification model)"
        )
    first = seq.attr_pos_start - 1
    scheme = detect_scheme(seq.source)
    found: list[Entity] = []
    current: tuple[str, list[int]] | None = None

    def close() -> None:
        if current is not None:
            label, steps = current
            start, end = first + steps[0], first + steps[-1] + 1
            scores = seq.source_attributions[:, steps]
            scores = scores.reshape(*scores.shape[:2], -1).sum(-1) if scores.dim() > 2 else scores
            # Over the steps that see a token (a causal tagger's see none after their own: NaN if none does).
            found.append(Entity(label, start, end, seq.source[start:end], steps, scores.nanmean(1), scheme))

    for step, tag in enumerate(seq.steps):
        prefix, _, kind = tag.partition("-") if tag[:2] in ("B-", "I-") else ("", "", tag)
        outside = kind in ("O", "") or tag == "O"
        if outside:
            close()
            current = None
        elif current is not None and prefix != "B" and current[0] == kind:
            current[1].append(step)
        else:
            close()
            current = (kind, [step])
    close()
    return found
