"""Attention weights as attributions: each step's attention row, per layer and head.

Step ``t``'s scores are the attention weights of query ``p_t - 1`` (the position whose output predicts the
token): decoder-only models give target attributions from self-attention; encoder-decoder models give
source attributions from the decoder's cross-attention and target attributions from the decoder's
self-attention. Attributions are ``[positions, steps, layers, heads]`` for the selected ``layers`` and
``heads``; ``aggregate_heads`` / ``aggregate_layers`` (``mean`` or ``max``) remove those dimensions (heads
first). The step function is not used. One forward pass over the whole batch (eager attention, see
`eager_attention`) gives every example's steps, and its logits serve the step scores and the trace
(`CleanLogits`); the stepwise reference runs one pass per step on its prefix (each example alone, see
`each_example`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput
from seqattr.methods.internals import (
    aggregate,
    check_aggregation,
    check_selection,
    each_example,
    eager_attention,
    prefix_rows,
    query_rows,
    select_indices,
)
from seqattr.methods.options import MethodOptions
from seqattr.typing import Float, Tensor


@dataclass
class AttentionOptions(MethodOptions):
    layers: int | list[int] | None = None
    """Layers to report (an index, a list, negative from the end; None = all)."""
    heads: int | list[int] | None = None
    """Heads to report (as ``layers``)."""
    aggregate_layers: str | None = None
    """``mean`` or ``max`` over the selected layers (None keeps a layers dimension)."""
    aggregate_heads: str | None = None
    """``mean`` or ``max`` over the selected heads (None keeps a heads dimension)."""

    def validate(self) -> None:
        super().validate()
        check_selection("layers", self.layers)
        check_selection("heads", self.heads)
        check_aggregation("aggregate_layers", self.aggregate_layers)
        check_aggregation("aggregate_heads", self.aggregate_heads)


def stacked(attentions: Sequence[Tensor]) -> Float[Tensor, "n queries keys layers heads"]:
    """Hugging Face's per-layer ``[n, heads, queries, keys]`` weights as one tensor."""
    if not attentions or attentions[0] is None:
        raise RuntimeError(
            "the model returned no attention weights; its architecture may not support output_attentions"
        )
    return torch.stack(list(attentions)).permute(1, 3, 4, 0, 2)


class Attention(AttributionMethod):
    """Attention weights of each step's query, per layer and head (selectable, aggregatable)."""

    name = "attention"
    attributes_function = False  # reads the model's internals, not the attributed function
    Options = AttentionOptions
    keeps_clean_logits = True

    def _finish(self, weights: Tensor, options: AttentionOptions, info: dict) -> Tensor:
        """Select and aggregate ``[..., layers, heads]``."""
        layers = select_indices("layers", options.layers, weights.shape[-2])
        heads = select_indices("heads", options.heads, weights.shape[-1])
        info.update(layers=layers, heads=heads)
        if layers != list(range(weights.shape[-2])):  # a selection copies the weights: only when one is made
            weights = weights[..., layers, :]
        if heads != list(range(weights.shape[-1])):
            weights = weights[..., heads]
        weights = aggregate(weights, -1, options.aggregate_heads)
        dims = ["layer"] + ([] if options.aggregate_heads else ["head"])
        if options.aggregate_layers:
            weights = aggregate(
                weights, -2 if options.aggregate_heads is None else -1, options.aggregate_layers
            )
            dims.remove("layer")
        info["extra_dims"] = dims
        return weights

    def _pass(
        self, inputs: MethodInputs, target_embeds: Tensor, with_logits: bool = False
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Per-query weights ``[n, queries, keys, layers, heads]`` of the source (cross) and target (self)
        side, and with ``with_logits`` the same pass's step logits (`CleanLogits`: no scoring pass)."""
        batch = inputs.batch
        rows = torch.arange(batch.size, device=batch.target_ids.device)
        logits = None
        with torch.no_grad():
            if with_logits:
                logits, out = self.model.step_output(
                    batch,
                    rows,
                    inputs.source_embeds,
                    target_embeds,
                    batch.step_positions,
                    output_attentions=True,
                )
            else:
                out = self.model.forward(
                    batch, rows, inputs.source_embeds, target_embeds, output_attentions=True
                )
        if inputs.attribute_source:  # encoder-decoder: cross-attention to the source
            target = stacked(out.decoder_attentions) if inputs.attribute_target else None
            return stacked(out.cross_attentions), target, logits
        return None, stacked(out.attentions), logits

    def attribute_fused(self, inputs: MethodInputs, options: AttentionOptions) -> MethodOutput:
        # The whole batch in one pass: left padding cannot turn into NaN (a padding query attends to itself,
        # `AttributionModel.forward`), and padding keys get weight 0 from every real query.
        return self._fused(inputs, options)

    def attribute_stepwise(self, inputs: MethodInputs, options: AttentionOptions) -> MethodOutput:
        return each_example(self.model, inputs, lambda single: self._stepwise(single, options))

    def _fused(self, inputs: MethodInputs, options: AttentionOptions) -> MethodOutput:
        info: dict = {}
        with eager_attention(self.model.model) as note:
            source, target, logits = self._pass(inputs, inputs.target_embeds, with_logits=True)
        info["attention_implementation"] = note
        batch = inputs.batch
        source = None if source is None else self._finish(query_rows(source, batch), options, info)
        target = None if target is None else self._finish(query_rows(target, batch), options, info)
        return MethodOutput(source, target, info=info, step_logits=logits)

    def _stepwise(self, inputs: MethodInputs, options: AttentionOptions) -> MethodOutput:
        info: dict = {}
        with eager_attention(self.model.model) as note:
            source, target = prefix_rows(inputs, lambda target_embeds: self._pass(inputs, target_embeds)[:2])
        info["attention_implementation"] = note
        source = None if source is None else self._finish(source, options, info)
        target = None if target is None else self._finish(target, options, info)
        return MethodOutput(source, target, info=info)
