"""Attention rollout (Abnar & Zuidema 2020): attention propagated through the layers, residual included.

Each layer's attention, averaged over heads, is mixed with the identity for the residual connection,
``Â = (A + I) / 2``, and the layers are multiplied: ``R = Â_L ... Â_1``. Row ``p_t - 1`` of ``R`` is step
``t``'s attribution over the input tokens; rows sum to 1.

Encoder-decoder models (our definition, documented in docs/methods_perturbation.md): the encoder's rollout
``R_enc`` (source × source) says what each encoder output is made of. A decoder state is tracked over
[source tokens, target tokens], starting as its own target token; each decoder layer applies its
self-attention sublayer ``R ← Â_self R`` and then its cross-attention sublayer with residual
``R ← (R + A_cross [R_enc, 0]) / 2`` (``A_cross`` averaged over heads). The source part of row ``p_t - 1`` is
the source attribution, the target part the target attribution; together they sum to 1.

The decoder is causal and the rollout matrices are lower triangular on the target side, so one pass gives
every step's row (one pass for the whole batch), equal to a rollout on the step's own prefix (the stepwise
reference, each example alone: `each_example`).
"""

from __future__ import annotations

import torch

from seqattr.methods.attention import stacked
from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput, output_dtype
from seqattr.methods.internals import each_example, eager_attention, prefix_rows
from seqattr.typing import Float, Tensor


def rollout(attentions: Float[Tensor, "n queries keys layers heads"]) -> Float[Tensor, "n queries keys"]:
    """``Â_L ... Â_1`` with ``Â = (mean over heads + I) / 2``, in float64.

    Example:
        >>> uniform = torch.full((1, 2, 2, 1, 1), 0.5)
        >>> rollout(uniform)[0]
        tensor([[0.7500, 0.2500],
                [0.2500, 0.7500]], dtype=torch.float64)
    """
    mixed = _with_residual(attentions)
    result = torch.eye(mixed.shape[1], dtype=torch.float64).expand(mixed.shape[0], -1, -1)
    for layer in range(mixed.shape[-1]):
        result = mixed[..., layer] @ result
    return result


def _with_residual(attentions: Tensor) -> Float[Tensor, "n queries keys layers"]:
    mean = attentions.double().mean(-1)
    identity = torch.eye(mean.shape[1], dtype=torch.float64)[None, :, :, None]
    return (mean + identity) / 2


def encoder_decoder_rollout(
    encoder: Tensor, decoder: Tensor, cross: Tensor
) -> Float[Tensor, "n target_len source_plus_target"]:
    """Decoder states as mixtures of source and target tokens (see the module docstring), float64."""
    source_rollout = rollout(encoder)  # [n, S, S]
    self_mixed = _with_residual(decoder)  # [n, T, T, layers]
    cross_mean = cross.double().mean(-1)  # [n, T, S, layers]
    n, target_len, source_len = cross_mean.shape[:3]
    state = torch.cat(
        [
            torch.zeros(n, target_len, source_len, dtype=torch.float64),
            torch.eye(target_len, dtype=torch.float64).expand(n, -1, -1),
        ],
        dim=2,
    )
    for layer in range(self_mixed.shape[-1]):
        state = self_mixed[..., layer] @ state
        read = cross_mean[..., layer] @ source_rollout  # what the cross-attention reads, over source tokens
        state = (state + torch.nn.functional.pad(read, (0, target_len))) / 2
    return state


class AttentionRollout(AttributionMethod):
    """Attention propagated through all layers with the residual connection (Abnar & Zuidema 2020)."""

    name = "attention_rollout"
    attributes_function = False  # reads the model's internals, not the attributed function

    def _rows(self, inputs: MethodInputs, target_embeds: Tensor) -> tuple[Tensor | None, Tensor]:
        """Rollout rows ``[n, queries, keys]`` over the source (None for decoder-only) and the target."""
        batch = inputs.batch
        rows = torch.arange(batch.size, device=batch.target_ids.device)
        with torch.no_grad():
            out = self.model.forward(batch, rows, inputs.source_embeds, target_embeds, output_attentions=True)
        if not inputs.attribute_source:  # decoder-only
            return None, rollout(stacked(out.attentions).cpu())
        state = encoder_decoder_rollout(
            stacked(out.encoder_attentions).cpu(),
            stacked(out.decoder_attentions).cpu(),
            stacked(out.cross_attentions).cpu(),
        )
        source_len = inputs.source_embeds.shape[1]
        return state[..., :source_len], state[..., source_len:]

    def _output(self, inputs: MethodInputs, source: Tensor | None, target: Tensor, note: str) -> MethodOutput:
        """``[n, queries, steps]`` tensors ordered by step into a `MethodOutput`."""
        if not inputs.attribute_target:
            target = None
        # Computed in float64; returned in the precision of the model's other outputs (float64 or float32).
        dtype = output_dtype(self.model.dtype)
        return MethodOutput(
            None if source is None else source.to(dtype),
            None if target is None else target.to(dtype),
            info={"attention_implementation": note},
        )

    def attribute_fused(self, inputs: MethodInputs, options) -> MethodOutput:
        # The whole batch in one pass: padding keys get weight 0 from every real query, so padding rows never
        # reach a real row's product (and seqattr's own mask keeps float64 left padding free of NaN).
        return self._fused(inputs)

    def attribute_stepwise(self, inputs: MethodInputs, options) -> MethodOutput:
        return each_example(self.model, inputs, self._stepwise)

    def _fused(self, inputs: MethodInputs) -> MethodOutput:
        with eager_attention(self.model.model) as note:
            source, target = self._rows(inputs, inputs.target_embeds)
        queries = (inputs.batch.step_positions - 1).cpu()
        source = None if source is None else source[:, queries].transpose(1, 2)
        return self._output(inputs, source, target[:, queries].transpose(1, 2), note)

    def _stepwise(self, inputs: MethodInputs) -> MethodOutput:
        with eager_attention(self.model.model) as note:
            source, target = prefix_rows(inputs, lambda target_embeds: self._rows(inputs, target_embeds))
        return self._output(inputs, source, target, note)
