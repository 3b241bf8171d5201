"""Value zeroing (Mohebbi et al. 2023): how much a layer's output at each step's query changes when one
token's value vectors are zeroed in that layer.

For decoder layer ``l`` and token ``j``, the layer runs on its original input with ``j``'s value vector
(every head) set to zero; step ``t``'s score is the cosine distance ``1 - cos(h, h')`` between the original
and the new output of the layer at query ``p_t - 1``. Decoder-only models: target token ``j`` zeroed in the
self-attention. Encoder-decoder models: source token ``j`` zeroed in the decoder's cross-attention (source
attributions) and target token ``j`` in the decoder's self-attention (target attributions). Attributions
are ``[positions, steps, layers]`` (``layers=`` selects, ``aggregate_layers=`` takes the mean or max).

Cost: every layer is evaluated on its original input (a hook puts the clean input back at each layer), so one
pass over a copy of the sequence zeroing token ``j`` in every layer at once gives all layers' scores for
``j``: one clean pass plus one copy per attributed token, for all steps and layers together, the whole padded
batch at once (the model's own mask keeps float64 left padding finite). Works with any attention
implementation (values are zeroed before the attention kernel). The stepwise reference does the same on each
step's own prefix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput, output_dtype
from seqattr.methods.internals import (
    aggregate,
    check_aggregation,
    check_selection,
    each_example,
    select_indices,
)
from seqattr.methods.options import MethodOptions
from seqattr.models.architecture import DecoderLayer, decoder_layers
from seqattr.typing import Int, Tensor

_CHUNK_ROWS = 64


@dataclass
class ValueZeroingOptions(MethodOptions):
    layers: int | list[int] | None = None
    """Layers to report (an index, a list, negative from the end; None = all)."""
    aggregate_layers: str | None = None
    """``mean`` or ``max`` over the selected layers (None keeps a layers dimension)."""

    def validate(self) -> None:
        super().validate()
        check_selection("layers", self.layers)
        check_aggregation("aggregate_layers", self.aggregate_layers)


class _Hooks:
    """Records clean layer inputs/outputs, or puts clean inputs back and zeroes one token's values per row."""

    def __init__(self, layers: list[DecoderLayer]) -> None:
        self.layers = layers
        self.mode = "record"
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []
        self.rows: Tensor | None = None  # batch example of each copy
        self.zero: Tensor | None = None  # position zeroed in each copy
        self.side = "target"

    @contextlib.contextmanager
    def attached(self) -> Iterator[_Hooks]:
        handles = []
        try:
            for index, entry in enumerate(self.layers):
                handles.append(entry.layer.register_forward_pre_hook(self._pre_hook(index), with_kwargs=True))
                handles.append(entry.layer.register_forward_hook(self._post_hook(index)))
                handles.append(
                    entry.self_values.register_forward_hook(self._value_hook("target", entry.fused_qkv))
                )
                if entry.cross_values is not None:
                    handles.append(
                        entry.cross_values.register_forward_hook(self._value_hook("source", False))
                    )
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _pre_hook(self, index: int):
        def hook(module, args, kwargs):
            if self.mode == "record":
                hidden = args[0] if args else kwargs["hidden_states"]
                self.inputs.append(hidden.detach())
                return None
            clean = self.inputs[index][self.rows]
            if args:
                return (clean, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": clean}

        return hook

    def _post_hook(self, index: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            self.outputs.append(hidden.detach())

        return hook

    def _value_hook(self, side: str, fused: bool):
        def hook(module, args, output):
            if self.mode == "record" or self.side != side:
                return None
            width = output.shape[-1]
            start = 2 * width // 3 if fused else 0  # a fused q/k/v projection holds the values last
            output = output.clone()
            copies = torch.arange(output.shape[0], device=output.device)
            output[copies, self.zero, start:] = 0
            return output

        return hook


class ValueZeroing(AttributionMethod):
    """Cosine distance of each layer's output at the step's query when one token's values are zeroed."""

    name = "value_zeroing"
    attributes_function = False  # reads the model's internals, not the attributed function
    Options = ValueZeroingOptions

    def _scores(
        self, inputs: MethodInputs, target_embeds: Tensor, queries: Int[Tensor, " q"], last_seen: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        """Distances ``[batch, positions, queries, layers]`` for source and target tokens (float64)."""
        batch, model = inputs.batch, self.model
        all_rows = torch.arange(batch.size, device=batch.target_ids.device)
        hooks = _Hooks(decoder_layers(model.model))
        results: dict[str, Tensor | None] = {"source": None, "target": None}
        with torch.no_grad(), hooks.attached():
            model.forward(batch, all_rows, inputs.source_embeds, target_embeds)
            clean = [o[:, queries].double() for o in hooks.outputs]
            hooks.mode = "zero"
            sides = []
            if inputs.attribute_source:
                sides.append(("source", batch.source_mask.bool()))
            if inputs.attribute_target:
                positions = torch.arange(target_embeds.shape[1], device=all_rows.device)
                sides.append(
                    (
                        "target",
                        batch.target_mask[:, : target_embeds.shape[1]].bool() & (positions < last_seen),
                    )
                )
            for side, real in sides:
                copies = real.nonzero()  # (example, token) pairs to zero
                scores = torch.zeros(
                    batch.size, real.shape[1], len(queries), len(hooks.layers), dtype=torch.float64
                )
                hooks.side = side
                for start in range(0, copies.shape[0], _CHUNK_ROWS):
                    chunk = copies[start : start + _CHUNK_ROWS]
                    hooks.rows, hooks.zero, hooks.outputs = chunk[:, 0], chunk[:, 1], []
                    source = None if inputs.source_embeds is None else inputs.source_embeds[hooks.rows]
                    model.forward(batch, hooks.rows, source, target_embeds[hooks.rows])
                    for layer, output in enumerate(hooks.outputs):
                        perturbed = output[:, queries].double()
                        similarity = nn.functional.cosine_similarity(
                            perturbed, clean[layer][hooks.rows], dim=-1
                        )
                        scores[chunk[:, 0].cpu(), chunk[:, 1].cpu(), :, layer] = (1 - similarity).cpu()
                results[side] = scores
        return results["source"], results["target"]

    def _finish(self, scores: Tensor | None, options: ValueZeroingOptions, info: dict) -> Tensor | None:
        if scores is None:
            return None
        layers = select_indices("layers", options.layers, scores.shape[-1])
        info["layers"] = layers
        info["extra_dims"] = [] if options.aggregate_layers else ["layer"]
        # Computed in float64; returned in the precision of the model's other outputs (float64 or float32).
        return aggregate(scores[..., layers], -1, options.aggregate_layers).to(output_dtype(self.model.dtype))

    def _output(self, inputs: MethodInputs, source, target, options) -> MethodOutput:
        info = {"distance": "cosine"}
        target = target if inputs.attribute_target else None
        return MethodOutput(
            self._finish(source, options, info), self._finish(target, options, info), info=info
        )

    def attribute_fused(self, inputs: MethodInputs, options: ValueZeroingOptions) -> MethodOutput:
        return self._fused(inputs, options)

    def attribute_stepwise(self, inputs: MethodInputs, options: ValueZeroingOptions) -> MethodOutput:
        return each_example(self.model, inputs, lambda single: self._stepwise(single, options))

    def _fused(self, inputs: MethodInputs, options: ValueZeroingOptions) -> MethodOutput:
        batch = inputs.batch
        # Target tokens from the last predicted one on are seen by no step.
        last_seen = batch.step_positions.max()
        source, target = self._scores(inputs, inputs.target_embeds, batch.step_positions - 1, last_seen)
        return self._output(inputs, source, target, options)

    def _stepwise(self, inputs: MethodInputs, options: ValueZeroingOptions) -> MethodOutput:
        batch = inputs.batch
        target_len = batch.target_ids.shape[1]
        source_steps, target_steps = [], []
        for column in range(batch.num_steps):
            prefix = int(batch.step_positions[column])
            query = torch.tensor([prefix - 1], device=batch.target_ids.device)
            source, target = self._scores(
                inputs, inputs.target_embeds[:, :prefix], query, torch.tensor(prefix)
            )
            if source is not None:
                source_steps.append(source[:, :, 0])
            if target is not None:
                target_steps.append(nn.functional.pad(target[:, :, 0], (0, 0, 0, target_len - prefix)))
        source = torch.stack(source_steps, 2) if source_steps else None
        target = torch.stack(target_steps, 2) if target_steps else None
        return self._output(inputs, source, target, options)
