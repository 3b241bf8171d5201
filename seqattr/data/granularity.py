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

Grouping uses each token's text (`seqattr.data.tokens.token_texts`): a pattern (``\\S+`` for words) is
matched over the joined text and each token joins the match holding its first non-space character; tokens
that are only whitespace join the next group. Special and masked tokens always stay alone.

Example:
    >>> words = out[0].aggregate("words")         # "Ġc" "it" "y" (three steps) become "Ġcity"
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

from seqattr.data.aggregation import Reduction, _is_special, get_reduction
from seqattr.data.tokens import Scheme, detect_scheme, token_texts

if TYPE_CHECKING:
    from seqattr.data.attribution import SequenceAttribution

Span = tuple[int, int]

WORD_PATTERN = r"\S+"
# A sentence runs to the first . ! or ? followed by whitespace or the end, or to a line break.
SENTENCE_PATTERN = r"\S.*?(?:[.!?]+(?=\s|$)|(?=\n)|$)"
GRANULARITIES = ("words", "subwords", "sentences", "regex", "spans")

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
    """Contiguous spans of ``tokens`` following the matches of ``pattern`` over their text.

    Example:
        >>> pattern_groups(["ĠThe", "Ġcapit", "al", "."], r"\\S+", "bpe")
        [(0, 1), (1, 4)]
    """
    regex = re.compile(pattern)
    texts = token_texts(tokens, scheme)
    unit_of: list[object] = [None] * len(tokens)
    run: list[int] = []
    for i in [*range(len(tokens)), None]:
        if i is not None and i not in alone:
            run.append(i)
            continue
        if run:
            _assign_units(run, texts, regex, unit_of)
            run = []
        if i is not None:
            unit_of[i] = ("alone", i)
    spans: list[Span] = []
    for i, unit in enumerate(unit_of):
        if spans and unit_of[spans[-1][0]] == unit:
            spans[-1] = (spans[-1][0], i + 1)
        else:
            spans.append((i, i + 1))
    return spans


def _assign_units(run: list[int], texts: list[str], regex: re.Pattern, unit_of: list[object]) -> None:
    """Label each token of a run (no special token inside) with the pattern match it belongs to."""
    text, starts = "", []
    for i in run:
        starts.append(len(text))
        text += texts[i]
    matches = [(m.start(), m.end()) for m in regex.finditer(text) if m.end() > m.start()]
    labels: list[object] = []
    for i, start in zip(run, starts, strict=True):
        stripped = len(texts[i]) - len(texts[i].lstrip())
        if stripped == len(texts[i]):
            labels.append(None)  # only whitespace: decided below
            continue
        first = start + stripped
        match = next((k for k, (a, b) in enumerate(matches) if a <= first < b), None)
        labels.append(("match", match) if match is not None else ("unmatched", i))
    # Whitespace-only tokens lead into the next group (like a "Ġ" or "▁" prefix); at the end, they trail.
    following = None
    for k in range(len(labels) - 1, -1, -1):
        if labels[k] is None:
            labels[k] = following
        following = labels[k]
    preceding = ("whitespace", run[0])
    for k, i in enumerate(run):
        if labels[k] is None:
            labels[k] = preceding
        preceding = labels[k]
        unit_of[i] = labels[k]


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


def merge_groups(
    seq: SequenceAttribution,
    source_groups: Sequence[Span] | None,
    target_groups: Sequence[Span] | None,
    fn: str | Reduction = "sum",
    step_fn: str | Reduction = "sum",
    step_score_fns: dict[str, str | Reduction] | None = None,
    scheme: Scheme | None = None,
) -> SequenceAttribution:
    """Merge the given groups (contiguous spans covering a side in order; ``None`` keeps a side as it is)."""
    fn, step_fn = get_reduction(fn), get_reduction(step_fn)
    scheme = scheme or detect_scheme([*seq.source, *seq.target])
    source_groups = list(source_groups or [(i, i + 1) for i in range(len(seq.source))])
    target_groups = list(target_groups or [(i, i + 1) for i in range(len(seq.target))])
    start, end = seq.attr_pos_start, seq.attr_pos_end
    step_groups = [g for g in target_groups if g[1] > start and g[0] < end]
    step_spans = [(max(a, start) - start, min(b, end) - start) for a, b in step_groups]
    first_step = target_groups.index(step_groups[0])

    source_attributions = target_attributions = None
    if seq.source_attributions is not None:
        rows = _merge(seq.source_attributions.float(), source_groups, 0, fn)
        source_attributions = _merge(rows, step_spans, 1, step_fn)
    if seq.target_attributions is not None:
        rows = _merge(seq.target_attributions.float(), target_groups, 0, fn)
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
        **changes,
    )


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

    ``granularity``: ``"words"`` (alias ``"subwords"``, Inseq's name: subwords are merged into words),
    ``"sentences"``, ``"regex"`` (with ``pattern``: each match is one unit) or ``"spans"`` (with
    ``source_spans`` / ``target_spans``: half-open ``(start, end)`` token ranges; other tokens stay alone).
    ``scheme`` (``"bpe"``, ``"sentencepiece"``, ``"wordpiece"``, ``"plain"``) is detected from the tokens when
    not given. Tokens with an id in ``special_ids``, tokens shaped like special tokens and masked tokens stay
    alone.

    Example:
        >>> seq.aggregate("words").normalize().target
        ['The', 'Ġcapital', 'Ġof', 'ĠFrance', 'Ġis', 'Ġthe', 'Ġcity']
        >>> seq.aggregate("regex", pattern=r"capital of|\\w+").target   # a multi-word group of your own
        ['The', 'ĠcapitalĠof', 'ĠFrance', 'Ġis', 'Ġthe', 'Ġcity']
        >>> seq.aggregate("spans", target_spans=[(6, 8)], step_fn="mean").steps   # two steps become one
        ['ĠtheĠc', 'it', 'y']
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
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
        pattern = {"words": WORD_PATTERN, "subwords": WORD_PATTERN, "sentences": SENTENCE_PATTERN}.get(
            granularity, pattern
        )
        special = set(special_ids or ())

        def alone(tokens, ids, masked):
            return {i for i, t in enumerate(tokens) if i in masked or _is_special(t, ids[i], special)}

        source_groups = pattern_groups(
            seq.source, pattern, scheme, alone(seq.source, seq.source_ids, seq.masked_source)
        )
        target_groups = pattern_groups(
            seq.target, pattern, scheme, alone(seq.target, seq.target_ids, seq.masked_target)
        )
    return merge_groups(seq, source_groups, target_groups, fn, step_fn, step_score_fns, scheme)
