"""Input features of perturbation methods: which tokens are perturbed together, and what each step can see.

A *feature* is a group of tokens that a perturbation method replaces as one unit and scores with one number.
``granularity`` picks the groups:

- ``all_tokens``: every token, special tokens included (BOS, EOS, decoder start, chat scaffolding);
- ``token`` (the default): every token except special tokens, which are never perturbed;
- ``word``: whitespace-delimited words, ``sentence``: sentences, as `seqattr.data.segmentation` makes them
  (the same words and sentences as ``aggregate("word")`` / ``aggregate("sentence")``): subword pieces
  joined, punctuation stays with its word (``mat.`` is one word), a line break ends the word before it and
  lone spaces lead into the next word.

- ``message``: each message of a chat prompt, ``segment``: each named segment of a prompt and each stretch of
  text between them (`seqattr.segments`); the tokens after the prompt (the reply so far) are features one
  token each.

A prompt's scaffolding (chat template tokens, `seqattr.segments.PromptLayout`) is never part of a feature,
unless ``attribute(include_template=True)``.

Special tokens are never part of a word or sentence feature (they also end the word/sentence before them).
Features of one example are numbered source first, then target, each in token order; target features start
at their first token, so the features a step can see are always the first ``visible[b, step]`` ones: all
source features plus the target features that start before the predicted token. A word that a step sees
only in part is perturbed in the part the step sees (later tokens cannot influence it).

Scores come back per token: every token of a feature carries the feature's score, and tokens that belong to
no feature (special tokens under ``token``/``word``/``sentence``, target tokens no step can see) carry 0. The
spans are recorded in the output's ``info["method_info"]["examples"][i]["features"]`` and on each example
(``SequenceAttribution.features``), so that aggregation counts a feature's score once, not once per token.

Example:
    >>> word_groups([" The", " c", "at", " sat", ".", "\\n"], special=[False] * 6)
    [[0], [1, 2], [3, 4, 5]]
    >>> sentence_groups([" Hi", ".", " Bye", " now"], special=[False] * 4)
    [[0, 1], [2, 3]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from seqattr.data.segmentation import UNITS, segment
from seqattr.data.tokens import Scheme, detect_scheme, token_texts
from seqattr.typing import Int, Tensor

if TYPE_CHECKING:
    from seqattr.models.attribution_model import AttributionModel
    from seqattr.models.batch import AttributionBatch

GRANULARITIES = ("all_tokens", "token", "word", "sentence", "message", "segment")


def word_groups(texts: Sequence[str], special: Sequence[bool]) -> list[list[int]]:
    """Token indices of each word (`seqattr.data.segmentation`); special tokens belong to no word and end one.

    Example:
        >>> word_groups([" play", "ing", " now"], special=[False, False, False])
        [[0, 1], [2]]
    """
    return _unit_groups(texts, special, "word")


def sentence_groups(texts: Sequence[str], special: Sequence[bool]) -> list[list[int]]:
    """Token indices of each sentence (`seqattr.data.segmentation`); special tokens end a sentence.

    Example:
        >>> sentence_groups([" Yes", "!", " No", "\\n", " Maybe"], special=[False] * 5)
        [[0, 1], [2, 3], [4]]
    """
    return _unit_groups(texts, special, "sentence")


def _unit_groups(texts: Sequence[str], special: Sequence[bool], unit: str) -> list[list[int]]:
    alone = {i for i, is_special in enumerate(special) if is_special}
    return [list(range(a, b)) for a, b in segment(texts, alone, unit) if a not in alone]


def token_groups(
    tokens: Sequence[str], special: Sequence[bool], granularity: str, scheme: Scheme | None = None
) -> list[list[int]]:
    """Token indices of each feature of one sequence at ``granularity`` (see the module docstring).

    ``scheme`` (the tokenizer family, `seqattr.data.tokens.detect_scheme`) is detected when not given.
    """
    if granularity == "all_tokens":
        return [[i] for i in range(len(tokens))]
    if granularity == "token":
        return [[i] for i, is_special in enumerate(special) if not is_special]
    if granularity in UNITS:
        return _unit_groups(token_texts(list(tokens), scheme), special, granularity)
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
    prompt_only: bool = False,
) -> FeatureMap:
    """Group every example's tokens into features; target tokens no step can see are left out, and with
    ``prompt_only`` (``attribute_target=False`` on a decoder-only model) so is the generated prefix: it is
    never perturbed (a group that straddles the prompt's end keeps its prompt tokens).

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
        # One tokenizer family for both sides, detected as aggregation detects it (from all the tokens).
        scheme = detect_scheme(model.convert_ids_to_tokens([*example.source_ids, *example.target_ids]))
        source_groups: list[list[int]] = []
        if attribute_source and source_map is not None:
            source_groups = _source_groups(model, example, special_ids, granularity, scheme)
        target_groups: list[list[int]] = []
        if attribute_target:
            # Tokens from the last predicted one on are seen by no step: perturbing them changes nothing.
            last_seen = example.attr_pos_end - 1
            target_groups = [
                g
                for g in _target_groups(model, example, special_ids, granularity, scheme)
                if g[0] < last_seen
            ]
            if prompt_only:
                prompt_end = example.attr_pos_start if example.prompt_len is None else example.prompt_len
                target_groups = [[i for i in g if i < prompt_end] for g in target_groups if g[0] < prompt_end]
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
    model: AttributionModel, ids: list[int], special_ids: set[int], granularity: str, scheme: Scheme
) -> list[list[int]]:
    tokens = model.convert_ids_to_tokens(ids)
    return token_groups(tokens, [i in special_ids for i in ids], granularity, scheme)


def _source_groups(
    model: AttributionModel, example, special_ids: set[int], granularity: str, scheme: Scheme
) -> list[list[int]]:
    """An encoder-decoder's source features: with a prompt layout (named segments of the source), its
    scaffolding left out (unless included) and, at ``granularity="segment"``, one feature per part."""
    ids, layout = example.source_ids, example.layout
    if layout is None or model.family.prompt_side != "source":
        return _groups(model, ids, special_ids, granularity, scheme)
    fixed = layout.unperturbed()
    special = [i in special_ids or p in fixed for p, i in enumerate(ids)]
    if granularity in ("message", "segment"):
        return layout.groups(granularity, special)
    return token_groups(model.convert_ids_to_tokens(ids), special, granularity, scheme)


def _target_groups(
    model: AttributionModel, example, special_ids: set[int], granularity: str, scheme: Scheme
) -> list[list[int]]:
    """A decoder-only target's features: with a prompt layout, its scaffolding left out (unless included)
    and, at a part granularity, the prompt's parts followed by the reply's tokens one by one."""
    ids, layout = example.target_ids, example.layout
    if model.family.prompt_side == "source":  # the prompt is the source: the target's tokens one by one
        if granularity in ("message", "segment"):
            return [[p] for p, i in enumerate(ids) if i not in special_ids]
        return _groups(model, ids, special_ids, granularity, scheme)
    if layout is None:
        if granularity in ("message", "segment"):
            raise ValueError(
                f"granularity={granularity!r} needs the prompt's parts: pass messages= or segments= to "
                "attribute"
            )
        return _groups(model, ids, special_ids, granularity, scheme)
    fixed = layout.unperturbed()
    special = [i in special_ids or p in fixed for p, i in enumerate(ids)]
    if granularity not in ("message", "segment"):
        tokens = model.convert_ids_to_tokens(ids)
        return token_groups(tokens, special, granularity, scheme)
    prompt = len(layout.ids)
    reply = [[p] for p in range(prompt, len(ids)) if not special[p]]
    return layout.groups(granularity, special[:prompt]) + reply
