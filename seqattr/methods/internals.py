"""Shared machinery of model-internals methods: attention weights and per-layer hooks, every step at once.

Step ``t`` predicts the target token at padded position ``p_t`` from the decoder's output at ``p_t - 1``, so
its row of any internal quantity (attention weights, a layer's output) is the row of query ``p_t - 1``. The
decoder is causal: one forward pass over the whole sequence gives every step's row, equal to the last row of
a pass over the step's own prefix (the stepwise reference).

Attention weights exist only in the eager attention implementation (SDPA and flash kernels never form them).
`eager_attention` switches a model to eager for the duration of a call and restores its own implementation
in ``finally``; the output's info says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence

import torch
from transformers import PreTrainedModel

from seqattr.methods.base import MethodInputs, MethodOutput
from seqattr.models.batch import AttributionBatch
from seqattr.reductions import LAYER_REDUCTIONS, get_reduction
from seqattr.typing import Float, Tensor


@contextlib.contextmanager
def eager_attention(model: PreTrainedModel) -> Iterator[str]:
    """Run the model with eager attention inside the block; yields a note for the output's info.

    Example:
        >>> inputs = hf_tokenizer("The cat", return_tensors="pt")
        >>> with eager_attention(hf_model) as note:
        ...     result = hf_model(**inputs, output_attentions=True)
        >>> len(result.attentions), result.attentions[0].shape      # layers; [batch, heads, len, len]
        (2, torch.Size([1, 4, 2, 2]))
        >>> note
        "eager (attention weights need it; the model's 'sdpa' was restored after the call)"
    """
    original = model.config._attn_implementation
    if original == "eager":
        yield "eager (the model's own)"
        return
    model.set_attn_implementation("eager")
    try:
        yield f"eager (attention weights need it; the model's {original!r} was restored after the call)"
    finally:
        model.set_attn_implementation(original)


def select_indices(name: str, selection: int | Sequence[int] | None, size: int) -> list[int]:
    """Resolve a ``layers=``/``heads=`` selection (an index, a list of indices, negative ones counting from
    the end, or None for all) against ``size``.

    Example:
        >>> select_indices("layers", -1, 4), select_indices("heads", None, 3)
        ([3], [0, 1, 2])
    """
    if selection is None:
        return list(range(size))
    values = [selection] if isinstance(selection, int) else list(selection)
    resolved = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not -size <= value < size:
            raise ValueError(
                f"{name}={selection!r}: the model has {size} {name} (indices 0..{size - 1}, or negative)"
            )
        resolved.append(value % size)
    if not resolved:
        raise ValueError(f"{name}={selection!r} selects nothing; give indices or None for all")
    return resolved


def check_selection(name: str, selection) -> None:
    """Refuse a selection of the wrong type when options are parsed (ranges are checked against the model)."""
    if selection is None or (isinstance(selection, int) and not isinstance(selection, bool)):
        return
    if isinstance(selection, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in selection
    ):
        return
    raise ValueError(f"{name} must be None (all), an index or a list of indices, got {selection!r}")


def check_aggregation(name: str, value: str | None) -> None:
    if value not in LAYER_REDUCTIONS:
        raise ValueError(f"{name} must be None (keep the dimension), 'mean' or 'max', got {value!r}")


def aggregate(values: Tensor, dim: int, how: str | None) -> Tensor:
    """Mean or max over ``dim`` (None keeps it): `seqattr.reductions`' names."""
    return values if how is None else get_reduction(how)(values, dim)


def query_rows(values: Float[Tensor, "n queries keys *extra"], batch: AttributionBatch) -> Tensor:
    """Each step's row (query ``p_t - 1``) as ``[n, keys, steps, *extra]``."""
    return values[:, batch.step_positions - 1].transpose(1, 2)


def prefix_rows(
    inputs: MethodInputs, rows: Callable[[Tensor], tuple[Tensor | None, Tensor | None]]
) -> tuple[Tensor | None, Tensor | None]:
    """The stepwise reference of the internals methods: ``rows(target_embeds)`` (per-query rows
    ``[n, queries, keys, *extra]`` of the source and the target side) on each step's prefix alone, each step's
    last query kept. Returns ``[n, keys, steps, *extra]`` per side; target keys beyond a step's prefix do not
    exist for it and are zeros (NaN in the final output)."""
    batch = inputs.batch
    target_len = batch.target_ids.shape[1]
    source_rows, target_rows = [], []
    for column in range(batch.num_steps):
        prefix = int(batch.step_positions[column])
        source, target = rows(inputs.target_embeds[:, :prefix])
        if source is not None:
            source_rows.append(source[:, prefix - 1])
        if target is not None:
            row = target[:, prefix - 1]
            target_rows.append(
                torch.cat([row, row.new_zeros(row.shape[0], target_len - prefix, *row.shape[2:])], 1)
            )
    return (
        torch.stack(source_rows, 2) if source_rows else None,
        torch.stack(target_rows, 2) if target_rows else None,
    )


def each_example(
    model, inputs: MethodInputs, explain: Callable[[MethodInputs], MethodOutput]
) -> MethodOutput:
    """``explain`` run on each example of the batch alone, unpadded, its results put back in padded positions.

    Why: a left-padded decoder-only batch has query rows (the padding) that may attend to nothing. Eager
    attention then softmaxes a row of masked scores; where the mask's minimum overflows to -inf (float64
    Llama/Qwen2 in transformers 5, measured) that row is NaN, and NaN keys reach real rows through weight-0
    products (0 * NaN). Alone, an example has no padding; one pass per example still serves all its steps.
    The single-example inputs keep the batch's objective, which internals methods do not use.
    """
    batch = inputs.batch
    parts = []
    for b, example in enumerate(batch.examples):
        single = AttributionBatch.from_examples(
            [example], model.pad_token_id, model.family, batch.target_ids.device
        )
        offset, length = int(batch.target_offsets[b]), len(example.target_ids)
        source = (
            None
            if inputs.source_embeds is None
            else inputs.source_embeds[b : b + 1, : len(example.source_ids)]
        )
        target = inputs.target_embeds[b : b + 1, offset : offset + length]
        held = None if inputs.held_target is None else single.generated_prefix()
        parts.append(
            explain(
                dataclasses.replace(
                    inputs, batch=single, source_embeds=source, target_embeds=target, held_target=held
                )
            )
        )
    info: dict = {}
    for part in parts:
        info.update(part.info)

    def merge(side: str, length: int) -> Tensor | None:
        pieces = [getattr(part, f"{side}_attributions") for part in parts]
        if pieces[0] is None:
            return None
        merged = pieces[0].new_zeros(batch.size, length, batch.num_steps, *pieces[0].shape[3:])
        for b, piece in enumerate(pieces):
            start = 0 if side == "source" else int(batch.target_offsets[b])
            merged[b, start : start + piece.shape[1], : piece.shape[2]] = piece[0]
        return merged

    step_logits = None
    if all(part.step_logits is not None for part in parts):  # each example's steps are its first columns
        first = parts[0].step_logits
        step_logits = first.new_zeros(batch.size, batch.num_steps, first.shape[-1])
        for b, part in enumerate(parts):
            step_logits[b, : part.step_logits.shape[1]] = part.step_logits[0]
    source_len = 0 if batch.source_ids is None else batch.source_ids.shape[1]
    return MethodOutput(
        merge("source", source_len),
        merge("target", batch.target_ids.shape[1]),
        info=info,
        step_logits=step_logits,
    )
