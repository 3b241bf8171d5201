"""Internal influence (Leino et al. 2018, TruLens): each neuron's or head's influence on each step, at a cut.

The attribution *to* an internal cut at full resolution: ``[positions, steps, neurons]`` (or ``heads``),
with a distribution of interest (DoI) named as in TruLens:

- ``doi="point"``: the gradient at the activations (times the activations with ``multiply_by_inputs``, the
  default): `layer_gradient_x_activation` at the cut; at the input embeddings and without multiplying, the
  signed saliency;
- ``doi="linear"``: integrated gradients along the straight path from the activations on the baseline to the
  activations (`layer_integrated_gradients`);
- ``doi="gaussian"``: smooth grad at the cut: the mean over ``nt_samples`` copies of the activations with
  Gaussian noise of standard deviation ``stdevs`` added (times the noisy activations with
  ``multiply_by_inputs``).

``rebatch_size`` (TruLens' name) is accepted as ``internal_batch_size``. ``per_head=True`` with an
attention layer (``target_layer="decoder.2.attention"``) attributes to its heads: the cut is the input of the
attention's output projection (the heads' outputs side by side), each head's neurons summed. `top_units`
lists the neurons (or heads) that drove a step most.

Fused and stepwise: the point and linear DoIs are the layer methods' own two paths (the stepwise one is
Captum's layer class on each step's prefix). The Gaussian DoI draws its noise once for the whole sequence;
fused, every noisy copy is evaluated once for a chunk of steps; stepwise, each step alone on its prefix with
the same noise (Captum has no noise tunnel at a layer's activations).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from seqattr.cuts import attention_heads
from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput
from seqattr.methods.gradient import AttributionWriter, step_chunks
from seqattr.methods.layer_base import LayerRun
from seqattr.methods.layer_gradient_x_activation import LayerGradientXActivation
from seqattr.methods.layer_integrated_gradients import LayerIntegratedGradients
from seqattr.methods.noise import check_stdevs
from seqattr.methods.options import Seed, TargetLayer, check_positive_int
from seqattr.methods.path_base import IntegratedGradientsOptions

if TYPE_CHECKING:
    from seqattr.data.attribution import SequenceAttribution

DOIS = {
    "point": "layer_gradient_x_activation",
    "linear": "layer_integrated_gradients",
    "gaussian": "smooth grad at the cut",
}
"""The distributions of interest and what each computes."""


@dataclass
class InternalInfluenceOptions(TargetLayer, Seed, IntegratedGradientsOptions):
    """Options of internal influence."""

    hidden_reduction: str | None = None
    """How the neurons are reduced (default None: every neuron kept, ``[positions, steps, neurons]``)."""
    doi: str = "linear"
    """The distribution of interest: 'point' (gradient), 'linear' (integrated gradients) or 'gaussian'
    (smooth grad), each at the cut."""
    rebatch_size: int | None = None
    """TruLens' name of ``internal_batch_size``: rows per forward pass of the linear and Gaussian DoIs."""
    per_head: bool = False
    """Attribute to the heads of the attention ``target_layer`` (its output projection's input, each head's
    neurons summed) instead of its output's neurons."""
    nt_samples: int = 5
    """Noisy samples of the Gaussian DoI."""
    stdevs: float = 1.0
    """Standard deviation of the Gaussian DoI's noise, added to the activations at the cut."""

    def validate(self) -> None:
        super().validate()
        if self.doi not in DOIS:
            raise ValueError(f"unknown doi {self.doi!r}; valid: {', '.join(map(repr, DOIS))}")
        check_positive_int("rebatch_size", self.rebatch_size, allow_none=True)
        if None not in (self.rebatch_size, self.internal_batch_size) and (
            self.rebatch_size != self.internal_batch_size
        ):
            raise ValueError(
                f"rebatch_size={self.rebatch_size} and internal_batch_size={self.internal_batch_size} name "
                "the same thing; give one of them"
            )
        check_positive_int("nt_samples", self.nt_samples)
        check_stdevs(self.stdevs)
        if self.per_head and self.target_layer is None:
            raise ValueError(
                "per_head=True needs an attention layer as target_layer, e.g. 'decoder.0.attention'"
            )
        if self.per_head and self.attribute_to_layer_input:
            raise ValueError(
                "per_head=True already attributes to the input of the attention's output projection; "
                "leave attribute_to_layer_input=False"
            )

    @property
    def batch_rows(self) -> int | None:
        return self.rebatch_size or self.internal_batch_size


class InternalInfluence(AttributionMethod):
    """Each neuron's (or head's) influence on every step at a layer, under a point, linear or Gaussian DoI."""

    name = "internal_influence"
    Options = InternalInfluenceOptions

    def attribute_fused(self, inputs: MethodInputs, options: InternalInfluenceOptions) -> MethodOutput:
        return self._run(inputs, options, fused=True)

    def attribute_stepwise(self, inputs: MethodInputs, options: InternalInfluenceOptions) -> MethodOutput:
        return self._run(inputs, options, fused=False)

    def _run(self, inputs: MethodInputs, options: InternalInfluenceOptions, fused: bool) -> MethodOutput:
        layer, to_input, num_heads = options.target_layer, options.attribute_to_layer_input, None
        if options.per_head:
            heads = attention_heads(self.model.model, options.target_layer)
            layer, to_input, num_heads = heads.projection, True, heads.num_heads
        if options.doi == "gaussian":
            output = self._gaussian(inputs, options, LayerRun(self.model, inputs, layer, to_input), fused)
        else:
            method = (LayerGradientXActivation if options.doi == "point" else LayerIntegratedGradients)(
                self.model
            )
            output = self._delegate(method, inputs, options, layer, to_input, fused)
        for side in ("source_attributions", "target_attributions"):
            values = getattr(output, side)
            if values is None:
                continue
            if num_heads is not None:  # [..., heads * head_dim] -> each head's neurons summed
                values = values.unflatten(-1, (num_heads, values.shape[-1] // num_heads)).sum(-1)
            setattr(output, side, options.reduce(values))
        output.info["internal_influence"] = {"doi": options.doi, "units": "heads" if num_heads else "neurons"}
        return output

    @staticmethod
    def _delegate(method, inputs, options, layer, to_input: bool, fused: bool) -> MethodOutput:
        """The point and linear DoIs: the layer method's own paths, every neuron kept."""
        declared = {f.name for f in dataclasses.fields(method.Options)}
        shared = {
            f.name: getattr(options, f.name)
            for f in dataclasses.fields(options)
            if f.name in declared and f.name != "hidden_reduction"
        }
        inner = method.parse_options(
            **{
                **shared,
                "target_layer": layer,
                "attribute_to_layer_input": to_input,
                "hidden_reduction": None,
                **({"internal_batch_size": options.batch_rows} if "internal_batch_size" in declared else {}),
            }
        )
        return method.attribute_fused(inputs, inner) if fused else method.attribute_stepwise(inputs, inner)

    @staticmethod
    def _gaussian(inputs, options, run: LayerRun, fused: bool) -> MethodOutput:
        """Smooth grad at the cut: the activations plus noise drawn once; every step's gradient at each."""
        batch = inputs.batch
        writer = AttributionWriter(inputs)
        with run:
            activations = run.activations(inputs.source_embeds, inputs.target_embeds)
            generator = torch.Generator(device=activations.device).manual_seed(options.resolved_seed())
            noise = [
                torch.randn(
                    activations.shape, generator=generator, device=activations.device, dtype=activations.dtype
                )
                * options.stdevs
                for _ in range(options.nt_samples)
            ]
            per_block = max(1, (options.batch_rows or batch.size * options.nt_samples) // batch.size)
            chunks = (
                step_chunks(run.inputs, n_points=batch.size * min(per_block, options.nt_samples))
                if fused
                else (slice(t, t + 1) for t in range(batch.num_steps))
            )
            for steps in chunks:
                prefix_len = int(batch.step_positions[steps].max())
                total = None
                for start in range(0, options.nt_samples, per_block):
                    copies = [
                        run.truncate(activations + eps, prefix_len)
                        for eps in noise[start : start + per_block]
                    ]
                    values = torch.cat(copies)  # block-wise copies of the batch
                    gradient = run.step_gradients(values, steps)
                    attribution = gradient * values if options.multiply_by_inputs else gradient
                    summed = attribution.unflatten(1, (len(copies), batch.size)).sum(1)
                    total = summed if total is None else total + summed
                source, target = run.split(total / options.nt_samples, 2)
                writer.write(steps, source, target)
        return writer.output()


def top_units(seq: SequenceAttribution, step: int, k: int = 10) -> list[tuple[int, float]]:
    """The ``k`` neurons (or heads) that drove ``step`` most: ``(index, influence)`` summed over the positions
    (source and target), largest magnitude first. Needs per-unit scores: `internal_influence` keeps them, a
    layer method with ``hidden_reduction=None`` too.

    Example:
        >>> am = seqattr.load_model(hf_model, "internal_influence", tokenizer=tokenizer,
        ...                         target_layer="decoder.1.mlp", n_steps=4)
        >>> seq = am.attribute("The cat", "The cat sat on", show_progress=False)[0]
        >>> [index for index, _ in top_units(seq, step=0, k=3)]  # doctest: +SKIP
        [17, 3, 42]
        >>> len(top_units(seq, step=-1, k=3))
        3
    """
    parts = [x for x in (seq.source_attributions, seq.target_attributions) if x is not None]
    if not parts or any(x.dim() != 3 for x in parts):
        raise ValueError(
            "top_units needs per-unit scores [positions, steps, units]: attribute with internal_influence, "
            "or a layer method with hidden_reduction=None"
        )
    if isinstance(step, bool) or not isinstance(step, int) or not -seq.num_steps <= step < seq.num_steps:
        raise ValueError(f"step={step!r}: this sequence has {seq.num_steps} steps (0..{seq.num_steps - 1})")
    per_unit = sum(x[:, step].nansum(0) for x in parts)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    order = per_unit.abs().argsort(descending=True)[:k]
    return [(int(i), float(per_unit[i])) for i in order]
