"""Numeric aggregation of one example's attributions: every function returns a new `SequenceAttribution`.

- `reduce`: collapse the extra dimensions (``[hidden]`` of raw gradients, ``[layers, heads]`` of internals);
- `normalize`: per step, divide by the L1 norm over source + target prefix (masked tokens not counted);
- `rescale`: divide by the largest absolute score so that scores lie in [-1, 1];
- `mask` / `mask_special` / `unmask`: hide tokens (BOS/EOS/padding, chat scaffolding) from normalisation and
  display; their scores stay in the data;
- `subtract`: the difference of two attributions of the same tokens; `slice_steps`: a range of steps.

The methods of `SequenceAttribution` and `AttributionOutput` (``seq.reduce("l2").normalize()``) call these.

Example:
    >>> raw = model.attribute("The capital of France is", hidden_reduction=None)[0]   # keep [hidden]
    >>> raw.target_attributions.shape                     # [len(target), steps, hidden]
    torch.Size([26, 20, 64])
    >>> seq = raw.reduce("l2").normalize()
    >>> round(seq.target_attributions[:, 0].nansum().item(), 5)   # every step sums to 1 in absolute value
    1.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from seqattr.data.tokens import looks_special
from seqattr.reductions import Reduction, get_reduction

if TYPE_CHECKING:
    from seqattr.data.attribution import SequenceAttribution


def _replace_tensors(
    seq: SequenceAttribution, fn: Callable[[Tensor], Tensor], interactions: bool = False
) -> SequenceAttribution:
    """A copy with ``fn`` applied to the attribution tensors (step scores untouched), and to the interactions
    with ``interactions`` (a per-step scaling: their last dimension is the steps, as the attributions')."""
    changes = {}
    if interactions and seq.interactions is not None:
        changes["interactions"] = fn(seq.interactions)
    return dataclasses.replace(
        seq,
        source_attributions=None if seq.source_attributions is None else fn(seq.source_attributions),
        target_attributions=None if seq.target_attributions is None else fn(seq.target_attributions),
        **changes,
    )


def reduce(
    seq: SequenceAttribution, fn: str | Reduction = "sum", dim: int | None = None
) -> SequenceAttribution:
    """Collapse extra dimensions: all of them (``dim=None``) or the ``dim``-th one (0 = the first extra one).

    A sequence with no extra dimension is returned unchanged, so ``out.reduce()`` is safe on any output.
    To keep one slice instead (e.g. the last layer), pass a callable: ``fn=lambda t, d: t.select(d, -1)``.

    Example:
        >>> raw = model.attribute("The capital of France is", hidden_reduction=None)[0]
        >>> raw.reduce("l2").target_attributions.shape         # [len, steps, hidden] -> [len, steps]
        torch.Size([26, 20])
        >>> att = model.attribute("The capital of France is", method="attention")[0]
        >>> att.target_attributions.shape                      # [len, steps, layers, heads]
        torch.Size([26, 20, 2, 4])
        >>> att.reduce("mean", dim=1).reduce("max", dim=0).target_attributions.shape   # heads, then layers
        torch.Size([26, 20])
    """
    reduction = get_reduction(fn)
    extra = seq.extra_dims
    if dim is None:
        if extra == 0:
            return seq
        return _replace_tensors(seq, lambda t: reduction(t.reshape(*t.shape[:2], -1), 2))
    if not -extra <= dim < extra:
        raise ValueError(
            f"dim={dim} does not name an extra dimension: these attributions have {extra} "
            f"(shape {tuple(seq.attribution_shape)}); dim counts from 0 after the (tokens, steps) dimensions"
        )
    return _replace_tensors(seq, lambda t: reduction(t, 2 + dim % extra))


def _require_token_scores(seq: SequenceAttribution, what: str) -> None:
    if seq.extra_dims:
        raise ValueError(
            f"{what} needs one score per token and step, but these attributions have extra dimensions "
            f"{tuple(seq.attribution_shape[2:])}; reduce them first, e.g. .reduce('sum') or .reduce('l2')"
        )


def feature_repeats(seq: SequenceAttribution, side: str) -> set[int]:
    """Rows that repeat the score of a feature shown on an earlier row (all tokens of it but the first): a
    feature-level score counts once, on the feature's first row.

    Example:
        >>> feature_repeats(seq, "target")     # gradient scores: per token, nothing repeated
        set()
    """
    spans = (seq.features or {}).get(side, [])
    return {i for a, b in spans for i in range(a + 1, b)}


def unperturbed(seq: SequenceAttribution, side: str) -> set[int]:
    """Positions of ``side`` that no perturbation feature held (special tokens, under ``granularity="token"``,
    ``"word"`` or ``"sentence"``): their 0 is no measurement, and the views show them blank.

    Example:
        >>> unperturbed(seq, "target")        # gradient scores: every token has a measured score
        set()
    """
    tokens = seq.source if side == "source" else seq.target
    if seq.features is None or getattr(seq, f"{side}_attributions") is None:
        return set()
    covered = {i for a, b in seq.features.get(side, []) for i in range(a, b)}
    return set(range(len(tokens))) - covered


def _stacked(seq: SequenceAttribution) -> tuple[Tensor, Tensor]:
    """All rows (source then target) as one ``[rows, steps]`` tensor, and which rows count: not masked, and
    one row per feature for feature-level scores (a feature's score counts once, not once per token)."""
    blocks, keep = [], []
    if seq.source_attributions is not None:
        blocks.append(seq.source_attributions.float())
        repeats = feature_repeats(seq, "source")
        keep += [i not in seq.masked_source and i not in repeats for i in range(len(seq.source))]
    if seq.target_attributions is not None:
        blocks.append(seq.target_attributions.float())
        repeats = feature_repeats(seq, "target")
        keep += [i not in seq.masked_target and i not in repeats for i in range(len(seq.target))]
    if not blocks:
        raise ValueError("this sequence has no attributions (source and target are both None)")
    return torch.cat(blocks), torch.tensor(keep, dtype=torch.bool)


def normalize(seq: SequenceAttribution) -> SequenceAttribution:
    """Divide each step by the sum of absolute scores over its visible, unmasked source and prefix tokens.

    Afterwards the unmasked scores of every step have an L1 norm of 1 (a step whose scores are all 0 stays 0).
    Masked tokens are divided by the same norm but do not count in it, so they stay comparable. With
    feature-level scores (`SequenceAttribution.features`) each feature counts once in the norm.

    Example:
        >>> round(seq.normalize().target_attributions[:, 0].abs().nansum().item(), 5)
        1.0
    """
    _require_token_scores(seq, "normalize")
    rows, keep = _stacked(seq)
    norm = rows[keep].abs().nansum(0)
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    return _replace_tensors(seq, lambda t: t / norm.to(t.dtype), interactions=True)


def rescale(seq: SequenceAttribution, per_step: bool = False) -> SequenceAttribution:
    """Divide by the largest absolute unmasked score (of the sequence, or of each step with ``per_step``).

    Example:
        >>> seq.rescale().target_attributions.abs().nan_to_num().max()
        tensor(1.)
    """
    _require_token_scores(seq, "rescale")
    rows, keep = _stacked(seq)
    magnitudes = rows[keep].abs().nan_to_num(0.0)
    if per_step:
        scale = magnitudes.amax(0) if magnitudes.numel() else torch.ones(rows.shape[1])
    else:
        scale = magnitudes.max() if magnitudes.numel() else torch.tensor(1.0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return _replace_tensors(seq, lambda t: t / scale.to(t.dtype), interactions=True)


def mask(
    seq: SequenceAttribution,
    *,
    tokens: Iterable[str] = (),
    ids: Iterable[int] = (),
    source_positions: Iterable[int] = (),
    target_positions: Iterable[int] = (),
) -> SequenceAttribution:
    """Hide tokens from normalisation and display (added to those hidden already); their scores are kept.

    Tokens are chosen by text (``tokens``), id (``ids``) or position on either side.

    Example:
        >>> masked = seq.mask(tokens=["<|im_start|>", "Ġof"], target_positions=[1, 2]).normalize()
        >>> masked.target[3], masked.masked_target                # "Ġof" by text, 1 and 2 by position
        ('Ġof', (1, 2, 3))
    """
    tokens, ids = set(tokens), set(ids)

    def chosen(side_tokens, side_ids, positions, already, side) -> tuple[int, ...]:
        positions = set(positions)
        bad = sorted(p for p in positions if not 0 <= p < len(side_tokens))
        if bad:
            raise ValueError(
                f"{side} positions {bad} are out of range: the {side} has {len(side_tokens)} tokens"
            )
        picked = {
            i for i, (t, d) in enumerate(zip(side_tokens, side_ids, strict=True)) if t in tokens or d in ids
        }
        return tuple(sorted(set(already) | picked | positions))

    return dataclasses.replace(
        seq,
        masked_source=chosen(seq.source, seq.source_ids, source_positions, seq.masked_source, "source"),
        masked_target=chosen(seq.target, seq.target_ids, target_positions, seq.masked_target, "target"),
    )


def is_special(token: str, token_id, special_ids: set[int] | None) -> bool:
    """Whether a token is special: its id is in ``special_ids``, or its text is shaped like one (``<s>``).

    Example:
        >>> is_special("<s>", 1, None), is_special("Ġthe", 262, {50256})
        (True, False)
    """
    return looks_special(token) or (isinstance(token_id, int) and token_id in (special_ids or ()))


def mask_special(seq: SequenceAttribution, special_ids: Iterable[int] | None = None) -> SequenceAttribution:
    """Mask special tokens: ids in ``special_ids`` and tokens shaped like one (``<s>``, ``[CLS]``).

    Example:
        >>> seq.mask_special(tokenizer.all_special_ids).masked_target   # this tokenizer adds no BOS: none
        ()
    """
    special = set(special_ids or ())
    return mask(
        seq,
        source_positions=[i for i, t in enumerate(seq.source) if is_special(t, seq.source_ids[i], special)],
        target_positions=[i for i, t in enumerate(seq.target) if is_special(t, seq.target_ids[i], special)],
    )


def unmask(seq: SequenceAttribution) -> SequenceAttribution:
    """A copy with no token masked."""
    return dataclasses.replace(seq, masked_source=(), masked_target=())


def subtract(a: SequenceAttribution, b: SequenceAttribution) -> SequenceAttribution:
    """``a - b`` score by score, for two attributions of the same tokens (e.g. of two methods).

    Step scores present in both are subtracted too; masks are united.

    Example:
        >>> forced = ("The capital of France is", "The capital of France is Paris.")   # the same tokens
        >>> ig_out = model.attribute(*forced, method="integrated_gradients")
        >>> saliency_out = model.attribute(*forced)
        >>> diff = ig_out[0] - saliency_out[0]
        >>> diff.target_attributions.shape == ig_out[0].target_attributions.shape
        True
    """
    for what, mine, theirs in [
        ("source tokens", (a.source, a.source_ids), (b.source, b.source_ids)),
        ("target tokens", (a.target, a.target_ids), (b.target, b.target_ids)),
        (
            "explained steps (attr_pos_start, attr_pos_end)",
            (a.attr_pos_start, a.attr_pos_end),
            (b.attr_pos_start, b.attr_pos_end),
        ),
    ]:
        if mine != theirs:
            raise ValueError(
                f"cannot subtract attributions with different {what}: {mine} vs {theirs}; a difference needs "
                "the same input and output tokens (force the same target with generated_texts=)"
            )

    def difference(x: Tensor | None, y: Tensor | None, side: str) -> Tensor | None:
        if (x is None) != (y is None):
            raise ValueError(f"cannot subtract: only one of the two has {side} attributions")
        if x is None:
            return None
        if x.shape != y.shape:
            raise ValueError(
                f"cannot subtract {side} attributions of shapes {tuple(x.shape)} and {tuple(y.shape)}; "
                "reduce both to one score per token first (.reduce())"
            )
        return x.float() - y.float()

    return dataclasses.replace(
        a,
        source_attributions=difference(a.source_attributions, b.source_attributions, "source"),
        target_attributions=difference(a.target_attributions, b.target_attributions, "target"),
        step_scores={k: a.step_scores[k] - b.step_scores[k] for k in a.step_scores if k in b.step_scores},
        masked_source=tuple(sorted(set(a.masked_source) | set(b.masked_source))),
        masked_target=tuple(sorted(set(a.masked_target) | set(b.masked_target))),
        # Feature-level only when both are, over the same features: otherwise tokens of a feature differ.
        features=a.features if a.features == b.features else None,
        interactions=(
            None if a.interactions is None or b.interactions is None else a.interactions - b.interactions
        ),
    )


def slice_steps(seq: SequenceAttribution, index: int | slice) -> SequenceAttribution:
    """Keep a contiguous range of steps (``seq[2:5]``, ``seq[-1]``); target tokens after the last are dropped.

    Example:
        >>> first_three = seq[:3]
        >>> first_three.num_steps, first_three.steps == seq.steps[:3]
        (3, True)
    """
    if isinstance(index, int):
        position = index + seq.num_steps if index < 0 else index
        if not 0 <= position < seq.num_steps:
            raise IndexError(f"step {index} out of range for a sequence of {seq.num_steps} steps")
        index = slice(position, position + 1)
    if not isinstance(index, slice):
        raise TypeError(f"steps are selected with an int or a slice, not {type(index).__name__}")
    start, stop, stride = index.indices(seq.num_steps)
    if stride != 1 or stop <= start:
        raise IndexError(f"{index} selects no contiguous, non-empty range of the {seq.num_steps} steps")
    end = seq.attr_pos_start + stop
    steps = slice(start, stop)
    return dataclasses.replace(
        seq,
        target=seq.target[:end],
        target_ids=seq.target_ids[:end],
        source_attributions=None if seq.source_attributions is None else seq.source_attributions[:, steps],
        target_attributions=None if seq.target_attributions is None else seq.target_attributions[:end, steps],
        step_scores={name: scores[steps] for name, scores in seq.step_scores.items()},
        attr_pos_start=seq.attr_pos_start + start,
        attr_pos_end=end,
        masked_target=tuple(p for p in seq.masked_target if p < end),
        token_roles=None if seq.token_roles is None else seq.token_roles[:end],
        trace=None if seq.trace is None else _slice_trace(seq.trace, steps),
        features=None if seq.features is None else _slice_features(seq.features, end),
        interactions=_slice_interactions(seq, steps, end),
    )


def _slice_interactions(seq: SequenceAttribution, steps: slice, end: int) -> Tensor | None:
    """The interactions of the steps ``steps``, over the source and the target tokens before ``end``."""
    if seq.interactions is None:
        return None
    kept = len(seq.source) if seq.source_attributions is not None else 0
    kept += end if seq.target_attributions is not None else 0
    return seq.interactions[:kept, :kept, steps]


def _slice_features(features: dict, end: int) -> dict:
    """Feature spans of the kept target tokens (a feature cut at ``end`` keeps its first part)."""
    target = [[a, min(b, end)] for a, b in features.get("target", []) if a < end]
    return {**features, "target": target}


def _slice_trace(trace, steps: slice):
    """The trace of the kept steps: every field of a trace (tensor or list) has one entry per step."""
    return dataclasses.replace(
        trace,
        **{
            f.name: getattr(trace, f.name)[steps]
            for f in dataclasses.fields(trace)
            if getattr(trace, f.name) is not None  # optional columns (context reliance) absent
        },
    )
