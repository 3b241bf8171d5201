"""Input features of perturbation methods: which tokens are perturbed together, and what each step can see.

A *feature* is a group of tokens that a perturbation method replaces as one unit and scores with one number.
``granularity`` picks the groups:

- ``all_tokens``: every token, special tokens included (BOS, EOS, decoder start, chat scaffolding);
- ``token`` (the default): every token except special tokens, which are never perturbed;
- ``word``: whitespace-delimited words (subword pieces joined; punctuation stays with its word, so ``mat.``
  is one word; whitespace-only tokens such as a newline join the word before them);
- ``sentence``: runs of words ending with ``.``, ``!`` or ``?`` (closing quotes/brackets allowed after it)
  or with a line break.

Special tokens are never part of a word or sentence feature (they also end the word/sentence before them).
Features of one example are numbered source first, then target, each in token order; target features start
at their first token, so the features a step can see are always the first ``visible[b, step]`` ones: all
sourcefeatures plus the target features that start before the predicted token. A word that a step sees only in
part is perturbed in the part the step sees (later tokens cannot influence it).

Scores come back per token: every token of a feature carries the feature's score, and tokens that belong to
no feature (special tokens under ``token``/``word``/``sentence``, target tokens no step can see) carry 0. The
spans are recorded in the output's ``info["method_info"]["examples"][i]["features"]``.

Example:
    >>> word_groups([" The", " c", "at", " sat", ".", "\\n"], special=[False] * 6)
    [[0], [1, 2], [3, 4, 5]]
    >>> sentence_groups([" Hi", ".", " Bye", " now"], special=[False] * 4)
    [[0, 1], [2, 3]]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from seqattr.data.tokens import token_texts
from seqattr.typing import Int, Tensor

if TYPE_CHECKING:
    from seqattr.models.attribution_model import AttributionModel
    from seqattr.models.batch import AttributionBatch

GRANULARITIES = ("all_tokens", "token", "word", "sentence")
_SENTENCE_END = re.compile(r"[.!?][\"')\]»”’]*$")


def word_groups(texts: Sequence[str], special: Sequence[bool]) -> list[list[int]]:
    """Token indices of each whitespace-delimited word; special tokens belong to no word and end one.

    Example:
        >>> word_groups([" play", "ing", " now"], special=[False, False, False])
        [[0, 1], [2]]
    """
    groups: list[list[int]] = []
    current: list[int] | None = None
    for i, (text, is_special) in enumerate(zip(texts, special, strict=True)):
        if is_special:
            current = None
            continue
        if current is not None and not text.strip():
            current.append(i)  # trailing whitespace (a newline token) stays with its word
        elif current is None or text[:1].isspace() or texts[i - 1][-1:].isspace():
            current = [i]
            groups.append(current)
        else:
            current.append(i)
    return groups


def sentence_groups(texts: Sequence[str], special: Sequence[bool]) -> list[list[int]]:
    """Token indices of each sentence: words up to one ending with ``.``/``!``/``?`` or holding a line break.

    Example:
        >>> sentence_groups([" Yes", "!", " No", "\\n", " Maybe"], special=[False] * 5)
        [[0, 1], [2, 3], [4]]
    """
    groups: list[list[int]] = []
    current: list[int] = []
    previous_end = -1
    for word in word_groups(texts, special):
        if current and any(special[previous_end + 1 : word[0]]):
            groups.append(current)  # a special token between two words ends the sentence
            current = []
        current = current + word
        previous_end = word[-1]
        text = "".join(texts[i] for i in word)
        if _SENTENCE_END.search(text.strip()) or "\n" in text:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def token_groups(tokens: Sequence[str], special: Sequence[bool], granularity: str) -> list[list[int]]:
    """Token indices of each feature of one sequence at ``granularity`` (see the module docstring)."""
    if granularity == "all_tokens":
        return [[i] for i in range(len(tokens))]
    if granularity == "token":
        return [[i] for i, is_special in enumerate(special) if not is_special]
    texts = token_texts(list(tokens))
    if granularity == "word":
        return word_groups(texts, special)
    if granularity == "sentence":
        return sentence_groups(texts, special)
    raise ValueError(f"unknown granularity {granularity!r}; valid: {', '.join(map(repr, GRANULARITIES))}")


@dataclass
class FeatureMap:
    """The features of every example of a batch, in padded coordinates.

    ``source``/``target`` hold each token's feature index (-1: the token is not a feature); example ``b`` has
    ``num_features[b]`` features, the first ``num_source[b]`` of them on the source side.
    """

    source: Int[Tensor, "batch source_len"] | None
    target: Int[Tensor, "batch target_len"]
    num_source: list[int]
    num_features: list[int]
    visible: Int[Tensor, "batch steps"]
    """How many features each step can see (a prefix of the feature order); 0 in padded step columns."""
    spans: list[dict]
    """Per example: granularity and ``[start, end)`` token spans of the source and target features."""

    @property
    def max_features(self) -> int:
        return max(self.num_features, default=0)


def build_feature_map(
    model: AttributionModel,
    batch: AttributionBatch,
    granularity: str,
    attribute_source: bool,
    attribute_target: bool,
) -> FeatureMap:
    """Group every example's tokens into features; target tokens no step can see are left out.

    Example:
        >>> features = build_feature_map(model, batch, "word", False, True)   # doctest: +SKIP
        >>> features.spans[0]["target"]   # doctest: +SKIP
    """
    special_ids = set(model.tokenizer.all_special_ids)
    device = batch.target_ids.device
    source_map = None if batch.source_ids is None else torch.full_like(batch.source_ids, -1)
    target_map = torch.full_like(batch.target_ids, -1)
    num_source, num_features, spans = [], [], []
    visible = torch.zeros(batch.size, batch.num_steps, dtype=torch.long, device=device)
    for b, example in enumerate(batch.examples):
        source_groups: list[list[int]] = []
        if attribute_source and source_map is not None:
            source_groups = _groups(model, example.source_ids, special_ids, granularity)
        target_groups: list[list[int]] = []
        if attribute_target:
            # Tokens from the last predicted one on are seen by no step: perturbing them changes nothing.
            last_seen = example.attr_pos_end - 1
            target_groups = [
                g for g in _groups(model, example.target_ids, special_ids, granularity) if g[0] < last_seen
            ]
        for index, group in enumerate(source_groups):
            source_map[b, group] = index
        offset = int(batch.target_offsets[b])
        starts = []
        for index, group in enumerate(target_groups, start=len(source_groups)):
            target_map[b, [offset + i for i in group]] = index
            starts.append(offset + group[0])
        starts_tensor = torch.tensor(starts, dtype=torch.long, device=device)
        seen = (starts_tensor[None, :] < batch.step_positions[:, None]).sum(-1) + len(source_groups)
        visible[b] = torch.where(batch.step_mask[b], seen, torch.zeros_like(seen))
        num_source.append(len(source_groups))
        num_features.append(len(source_groups) + len(target_groups))
        spans.append(
            {
                "granularity": granularity,
                "source": [[g[0], g[-1] + 1] for g in source_groups],
                "target": [[g[0], g[-1] + 1] for g in target_groups],
            }
        )
    return FeatureMap(source_map, target_map, num_source, num_features, visible, spans)


def _groups(
    model: AttributionModel, ids: list[int], special_ids: set[int], granularity: str
) -> list[list[int]]:
    tokens = model.convert_ids_to_tokens(ids)
    return token_groups(tokens, [i in special_ids for i in ids], granularity)
