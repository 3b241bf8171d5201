"""Merge tokens into words, sentences, regex matches or explicit spans, on the source and the target side.

A group of tokens becomes one row: its rows are combined with ``fn`` (default ``sum``, so merged scores add
up like the scores they replace). On the target side a group is also one *step*: the step columns of its
tokens are combined with ``step_fn`` (default ``sum``: for additive methods this is the attribution of the
sum of the step objectives, e.g. of the word's log-probability when ``logprob`` is attributed).

Visibility follows whole groups: a merged step sees a merged target row only when the row's tokens all come
before the step's first token. A word therefore does not see itself (the contribution of a word's first piece
to its second is left out), and cells it cannot see are NaN as usual.

Step scores of a merged step are combined per score (`STEP_SCORE_MERGE`): probabilities multiply (the
probability of the word is the product of its pieces' conditional probabilities); log-probabilities,
logits, cross-entropies, KL divergences and pointwise CXMI add up (chain rule); entropies add up (the
entropy of each piece given the pieces before it, summed: the chain rule with the generated prefix in place
of an expectation); ranks take the worst (max); unknown names take the mean. Pass ``step_score_fns`` to
choose others.

Words and sentences are those of `seqattr.data.segmentation`, the segmentation perturbation features use
(``granularity="word"`` perturbs exactly the words ``aggregate("word")`` merges); ``regex`` groups follow a
pattern's matches with the same rules for whitespace-only and special tokens. Special and masked tokens
always stay alone.

On the target side, groups never cross the boundary between the prompt and the explained steps: a word that
the prompt ends inside (``"The capital of Fra"`` + ``"nce"``) stays two rows, its prompt part a row of the
prompt and its generated part a step, so every step is made of generated pieces only.

Feature-level scores (perturbation methods with ``granularity="word"``/``"sentence"``, where every token of a
feature carries the feature's one score; recorded in `SequenceAttribution.features`) are combined per
feature, not per token: a group holding a whole feature takes the feature's score once (``fn="sum"`` does
not multiply it by the feature's token count), a group of several features combines their scores.

Example:
    >>> words = out[0].aggregate("word")          # "Ġc" "it" "y" (three steps) become "Ġcity"
    >>> words.target
    ['The', 'Ġcapital', 'Ġof', 'ĠFrance', 'Ġis', 'Ġthe', 'Ġcity']
    >>> words.aggregate("spans", target_spans=[(0, 3)]).target   # merge target rows 0..2 into one
    ['TheĠcapitalĠof', 'ĠFrance', 'Ġis', 'Ġthe', 'Ġcity']
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from seqattr.data.aggregation import Reduction, get_reduction, is_special
from seqattr.data.segmentation import (
    GRANULARITY_ALIASES,
    Span,
    canonical_granularity,
    pattern_spans,
    segment,
)
from seqattr.data.tokens import Scheme, detect_scheme, token_texts

if TYPE_CHECKING:
    from seqattr.data.attribution import SequenceAttribution

GRANULARITIES = ("word", "sentence", "regex", "spans")
"""What `aggregate` merges into; the plural names of `GRANULARITY_ALIASES` are accepted too."""

STEP_SCORE_MERGE: dict[str, str] = {
    "probability": "prod",
    "mc_dropout_prob_avg": "prod",
    "contrast_prob": "prod",
    "logprob": "sum",
    "logit": "sum",
    "contrast_logits": "sum",
    "crossentropy": "sum",
    "perplexity": "prod",
    "entropy": "sum",
    "kl_divergence": "sum",
    "pcxmi": "sum",
    "contrast_prob_diff": "sum",
    "contrast_logits_diff": "sum",
    "rank": "max",
    "top_p_size": "max",
}
"""How each step score combines over the steps of a merged target group (anything else: ``mean``)."""


def pattern_groups(
    tokens: Sequence[str], pattern: str | re.Pattern, scheme: Scheme, alone: set[int] = frozenset()
) -> list[Span]:
    """Contiguous spans of ``tokens`` following the matches of ``pattern`` over their text
    (`seqattr.data.segmentation.pattern_spans` on the tokens' texts).

    Example:
        >>> pattern_groups(["ĠThe", "Ġcapit", "al", "."], r"\\S+", "bpe")
        [(0, 1), (1, 4)]
    """
    return pattern_spans(token_texts(tokens, scheme), pattern, alone)


def _check_spans(spans: Iterable[Span], length: int, side: str) -> list[Span]:
    """Explicit spans completed with single tokens, so that the groups cover the whole side in order."""
    spans = sorted((int(a), int(b)) for a, b in spans)
    for (a, b), following in zip(spans, [*spans[1:], None], strict=True):
        if not 0 <= a < b <= length:
            raise ValueError(f"{side} span ({a}, {b}) is not a non-empty range of the {length} {side} tokens")
        if following is not None and following[0] < b:
            raise ValueError(f"{side} spans ({a}, {b}) and {following} overlap; spans must be disjoint")
    groups, position = [], 0
    for a, b in spans:
        groups += [(i, i + 1) for i in range(position, a)] + [(a, b)]
        position = b
    return groups + [(i, i + 1) for i in range(position, length)]


def _join(tokens: Sequence[str], scheme: Scheme) -> str:
    """One token string for a group, in the same scheme, so its text reads as the pieces' joined text."""
    if scheme == "wordpiece":
        return tokens[0] + "".join(t[2:] if t.startswith("##") else " " + t for t in tokens[1:])
    return "".join(tokens)


def _merge(values: Tensor, groups: Sequence[Span], dim: int, fn: Reduction) -> Tensor:
    return torch.stack([fn(values.narrow(dim, a, b - a), dim) for a, b in groups], dim)


def _merge_rows(groups: Sequence[Span], features: Sequence[Sequence[int]]) -> list[list[int]]:
    """The rows each group combines: one row per feature in it (its first token there), every other token."""
    feature_of = {i: f for f, (a, b) in enumerate(features) for i in range(a, b)}
    rows = []
    for a, b in groups:
        seen: set[int] = set()
        kept = []
        for i in range(a, b):
            feature = feature_of.get(i)
            if feature is None or feature not in seen:
                kept.append(i)
                if feature is not None:
                    seen.add(feature)
        rows.append(kept)
    return rows


def _merged_features(features: Sequence[Sequence[int]], groups: Sequence[Span]) -> list[list[int]]:
    """Feature spans in merged rows (a feature inside one group is that row; rows outside every feature, such
    as special tokens, stay unperturbed: views show them as not measured)."""
    group_of = {i: g for g, (a, b) in enumerate(groups) for i in range(a, b)}
    spans: list[list[int]] = []
    for a, b in features:
        span = [group_of[a], group_of[b - 1] + 1]
        if not spans or spans[-1] != span:  # several features merged into one row: that row once
            spans.append(span)
    return spans


def _split_at(groups: Sequence[Span], cuts: Iterable[int]) -> list[Span]:
    """Groups split at the given positions (a group crossing a cut becomes two)."""
    result = []
    for a, b in groups:
        inner = sorted({c for c in cuts if a < c < b})
        result += list(zip([a, *inner], [*inner, b], strict=True))
    return result


def merge_groups(
    seq: SequenceAttribution,
    source_groups: Sequence[Span] | None,
    target_groups: Sequence[Span] | None,
    fn: str | Reduction = "sum",
    step_fn: str | Reduction = "sum",
    step_score_fns: dict[str, str | Reduction] | None = None,
    scheme: Scheme | None = None,
) -> SequenceAttribution:
    """Merge the given groups (contiguous spans covering a side in order; ``None`` keeps a side as it is).

    Target groups crossing the start or end of the explained steps are split there (see the module docstring).
    """
    fn, step_fn = get_reduction(fn), get_reduction(step_fn)
    scheme = scheme or detect_scheme([*seq.source, *seq.target])
    start, end = seq.attr_pos_start, seq.attr_pos_end
    source_groups = list(source_groups or [(i, i + 1) for i in range(len(seq.source))])
    target_groups = _split_at(target_groups or [(i, i + 1) for i in range(len(seq.target))], (start, end))
    step_groups = [g for g in target_groups if start <= g[0] and g[1] <= end]
    step_spans = [(a - start, b - start) for a, b in step_groups]
    first_step = target_groups.index(step_groups[0])
    features = seq.features or {}
    source_features = [tuple(f) for f in features.get("source", [])]
    target_features = [tuple(f) for f in features.get("target", [])]

    def merge_rows(values: Tensor, groups: Sequence[Span], side_features) -> Tensor:
        values = values.float()
        rows = _merge_rows(groups, side_features)
        return torch.stack([fn(values[torch.tensor(kept)], 0) for kept in rows], 0)

    source_attributions = target_attributions = None
    if seq.source_attributions is not None:
        rows = merge_rows(seq.source_attributions, source_groups, source_features)
        source_attributions = _merge(rows, step_spans, 1, step_fn)
    if seq.target_attributions is not None:
        rows = merge_rows(seq.target_attributions, target_groups, target_features)
        merged = _merge(rows, step_spans, 1, step_fn)
        row_ends = torch.tensor([b for _, b in target_groups])
        step_starts = torch.tensor([a for a, _ in step_groups])
        visible = row_ends[:, None] <= step_starts[None, :]
        target_attributions = merged.masked_fill(
            ~visible.reshape(*visible.shape, *[1] * (merged.dim() - 2)), float("nan")
        )

    fns = {**STEP_SCORE_MERGE, **(step_score_fns or {})}
    step_scores = {
        name: _merge(scores.float(), step_spans, 0, get_reduction(fns.get(name, "mean")))
        for name, scores in seq.step_scores.items()
    }

    def tokens_ids(tokens, ids, groups):
        merged_tokens = [tokens[a] if b - a == 1 else _join(tokens[a:b], scheme) for a, b in groups]
        merged_ids = [ids[a] if b - a == 1 else list(ids[a:b]) for a, b in groups]
        return merged_tokens, merged_ids

    def masked(groups, positions):
        return tuple(g for g, (a, b) in enumerate(groups) if all(p in positions for p in range(a, b)))

    merged_features = None
    if seq.features is not None:
        merged_features = {
            **seq.features,
            "source": _merged_features(source_features, source_groups),
            "target": _merged_features(target_features, target_groups),
        }

    source, source_ids = tokens_ids(seq.source, seq.source_ids, source_groups)
    target, target_ids = tokens_ids(seq.target, seq.target_ids, target_groups)
    trace = getattr(seq, "trace", None)
    changes = {"trace": None} if trace is not None and len(step_groups) != seq.num_steps else {}
    return dataclasses.replace(
        seq,
        source=source,
        target=target,
        source_ids=source_ids,
        target_ids=target_ids,
        source_attributions=source_attributions,
        target_attributions=target_attributions,
        step_scores=step_scores,
        attr_pos_start=first_step,
        attr_pos_end=first_step + len(step_groups),
        masked_source=masked(source_groups, set(seq.masked_source)),
        masked_target=masked(target_groups, set(seq.masked_target)),
        features=merged_features,
        # A group's role is its first token's (parts never mix roles; a merged word of scaffolding is one).
        token_roles=None if seq.token_roles is None else [seq.token_roles[a] for a, _ in target_groups],
        interactions=_merge_interactions(seq, source_groups, target_groups, step_groups, fn, step_fn),
        **changes,
    )


def _merge_interactions(
    seq: SequenceAttribution,
    source_groups: Sequence[Span],
    target_groups: Sequence[Span],
    step_groups: Sequence[Span],
    fn: Reduction,
    step_fn: Reduction,
) -> Tensor | None:
    """Group x group interactions ``[groups, groups, merged steps]``: each pair of groups holds ``fn`` over
    its token pairs (rows, then columns), the steps merged by ``step_fn`` as the attributions are. With
    ``sum`` (the default) two words' pair is the sum of their tokens' pairs, so each row still adds up to the
    merged attribution on every step of one token. NaN where the merged step does not see one of the two
    groups, as for the attributions: a step merged from several tokens (a generated word) hides its own
    earlier tokens, so its rows miss those partners' share.

    Example:
        >>> words = ih_out.aggregate("words")[0]                                   # doctest: +SKIP
        >>> words.interactions.shape[0] == len(words.source) + len(words.target)    # doctest: +SKIP
        True
    """
    if seq.interactions is None:
        return None
    num_source = len(seq.source) if seq.source_attributions is not None else 0
    source = list(source_groups) if num_source else []
    target = list(target_groups) if seq.target_attributions is not None else []
    groups = source + [(a + num_source, b + num_source) for a, b in target]
    filled = seq.interactions.float().nan_to_num(0.0)  # unseen pairs add nothing; NaN is put back below
    rows = torch.stack([fn(filled[a:b], 0) for a, b in groups], 0)
    pairs = torch.stack([fn(rows[:, a:b], 1) for a, b in groups], 1)
    start = seq.attr_pos_start
    merged = _merge(pairs, [(a - start, b - start) for a, b in step_groups], 2, step_fn)
    # Every merged step sees the source groups, and the target groups that end before its first token.
    target_ends = torch.tensor([b for _, b in target], dtype=torch.long)
    step_starts = torch.tensor([a for a, _ in step_groups], dtype=torch.long)
    seen = torch.cat(
        [
            torch.ones(len(source), len(step_groups), dtype=torch.bool),
            target_ends[:, None] <= step_starts[None, :],
        ]
    )
    return merged.masked_fill(~(seen[:, None, :] & seen[None, :, :]), float("nan"))


def aggregate(
    seq: SequenceAttribution,
    granularity: str,
    *,
    fn: str | Reduction = "sum",
    step_fn: str | Reduction = "sum",
    step_score_fns: dict[str, str | Reduction] | None = None,
    pattern: str | None = None,
    source_spans: Iterable[Span] | None = None,
    target_spans: Iterable[Span] | None = None,
    scheme: Scheme | None = None,
    special_ids: Iterable[int] | None = None,
) -> SequenceAttribution:
    """Merge tokens into coarser units on both sides; see the module docstring for the conventions.

    ``granularity``: ``"word"``, ``"sentence"`` (`seqattr.data.segmentation`; the plural names ``"words"``,
    ``"subwords"`` and ``"sentences"`` of earlier versions are accepted), ``"regex"`` (with ``pattern``: each
    match is one unit) or ``"spans"`` (with ``source_spans`` / ``target_spans``: half-open ``(start, end)``
    token ranges; other tokens stay alone). ``scheme`` (``"bpe"``, ``"sentencepiece"``, ``"wordpiece"``,
    ``"plain"``) is detected from the tokens when not given. Tokens with an id in ``special_ids``, tokens
    shaped like special tokens and masked tokens stay alone.

    Example:
        >>> seq.aggregate("word").normalize().target
        ['The', 'Ġcapital', 'Ġof', 'ĠFrance', 'Ġis', 'Ġthe', 'Ġcity']
        >>> seq.aggregate("regex", pattern=r"capital of|\\w+").target   # a multi-word group of your own
        ['The', 'ĠcapitalĠof', 'ĠFrance', 'Ġis', 'Ġthe', 'Ġcity']
        >>> seq.aggregate("spans", target_spans=[(6, 8)], step_fn="mean").steps   # two steps become one
        ['ĠtheĠc', 'it', 'y']
    """
    granularity = canonical_granularity(granularity)
    if granularity not in GRANULARITIES:
        aliases = ", ".join(f"{alias!r} (= {name!r})" for alias, name in GRANULARITY_ALIASES.items())
        raise ValueError(
            f"unknown granularity {granularity!r}; valid: {', '.join(map(repr, GRANULARITIES))}; "
            f"also accepted: {aliases}"
        )
    if (pattern is not None) != (granularity == "regex"):
        raise ValueError("pass pattern= with granularity 'regex' (and only then)")
    if granularity != "spans" and (source_spans is not None or target_spans is not None):
        raise ValueError("source_spans= and target_spans= go with granularity 'spans'")
    scheme = scheme or detect_scheme([*seq.source, *seq.target])
    if granularity == "spans":
        source_groups = (
            None if source_spans is None else _check_spans(source_spans, len(seq.source), "source")
        )
        target_groups = (
            None if target_spans is None else _check_spans(target_spans, len(seq.target), "target")
        )
    else:
        special = set(special_ids or ())

        def groups(tokens, ids, masked):
            alone = {i for i, t in enumerate(tokens) if i in masked or is_special(t, ids[i], special)}
            texts = token_texts(tokens, scheme)
            if granularity == "regex":
                return pattern_spans(texts, pattern, alone)
            return segment(texts, alone, granularity)

        source_groups = groups(seq.source, seq.source_ids, seq.masked_source)
        target_groups = groups(seq.target, seq.target_ids, seq.masked_target)
    return merge_groups(seq, source_groups, target_groups, fn, step_fn, step_score_fns, scheme)
