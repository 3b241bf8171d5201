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
from collections.abc import Iterator, Sequence

from transformers import PreTrainedModel

from seqattr.models.batch import AttributionBatch
from seqattr.typing import Float, Tensor

AGGREGATIONS = ("mean", "max")


@contextlib.contextmanager
def eager_attention(model: PreTrainedModel) -> Iterator[str]:
    """Run the model with eager attention inside the block; yields a note for the output's info.

    Example:
        >>> with eager_attention(hf_model) as note:        # doctest: +SKIP
        ...     out = hf_model(**inputs, output_attentions=True)
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
    if value is not None and value not in AGGREGATIONS:
        raise ValueError(f"{name} must be None (keep the dimension), 'mean' or 'max', got {value!r}")


def aggregate(values: Tensor, dim: int, how: str | None) -> Tensor:
    """Mean or max over ``dim`` (None keeps it)."""
    if how is None:
        return values
    return values.mean(dim) if how == "mean" else values.amax(dim)


def query_rows(values: Float[Tensor, "n queries keys *extra"], batch: AttributionBatch) -> Tensor:
    """Each step's row (query ``p_t - 1``) as ``[n, keys, steps, *extra]``."""
    return values[:, batch.step_positions - 1].transpose(1, 2)
