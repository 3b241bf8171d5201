"""Noise tunnels (Smilkov et al. 2017; Adebayo et al. 2018): a gradient method averaged over noisy inputs.

`NoiseTunnel` composes a pointwise gradient method (``base_method``: saliency or input x gradient); it does
not inherit from it. Each of ``nt_samples`` samples adds Gaussian noise of standard deviation ``stdevs`` to
every attributed embedding; the base method's per-hidden attributions ``a_s`` are then combined:

- ``smooth_grad``: the mean of ``a_s``;
- ``square_grad``: the mean of ``a_s ** 2`` (Captum's ``smoothgrad_sq``);
- ``var_grad``: the variance ``mean(a_s ** 2) - mean(a_s) ** 2`` (Captum's ``vargrad``).

Fused: every noisy copy of the whole sequence is evaluated once for all steps; the noise is the one Captum's
``NoiseTunnel`` draws in the stepwise reference for the same ``seed`` (see ``methods/noise.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from captum.attr import NoiseTunnel as CaptumNoiseTunnel

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput, get_method_class
from seqattr.methods.gradient import (
    AttributionWriter,
    GradientOptions,
    PointwiseGradientMethod,
    captum_stepwise,
    step_chunks,
    step_gradients,
)
from seqattr.methods.noise import check_stdevs, seeded_global_rng, tunnel_generators, tunnel_noise
from seqattr.methods.options import InternalBatch, Seed, check_positive_int
from seqattr.methods.path_base import expand_rows, point_blocks

BASE_METHODS = ("saliency", "input_x_gradient")


@dataclass
class NoiseTunnelOptions(InternalBatch, Seed, GradientOptions):
    base_method: str = "saliency"
    """The method averaged: 'saliency' (absolute gradient, Captum's default) or 'input_x_gradient'."""
    nt_samples: int = 5
    """Noisy samples per example."""
    stdevs: float = 1.0
    """Standard deviation of the Gaussian noise added to the embeddings (Captum's default; scale it to your
    model's embeddings, e.g. 10-20% of their spread as Smilkov et al. suggest)."""

    def validate(self) -> None:
        super().validate()
        if self.base_method not in BASE_METHODS:
            raise ValueError(
                f"base_method must be one of {', '.join(map(repr, BASE_METHODS))}, got {self.base_method!r}"
            )
        check_positive_int("nt_samples", self.nt_samples)
        check_stdevs(self.stdevs)


class NoiseTunnel(AttributionMethod):
    """A gradient method combined over noisy copies of the inputs (abstract: the variants fix ``nt_type``)."""

    unitless = True
    nt_type: ClassVar[str]
    """Captum's name of the combination: smoothgrad, smoothgrad_sq or vargrad."""
    Options = NoiseTunnelOptions

    def _base(self, options: NoiseTunnelOptions) -> tuple[PointwiseGradientMethod, object]:
        base_class = get_method_class(options.base_method)
        assert issubclass(base_class, PointwiseGradientMethod)  # guaranteed by BASE_METHODS
        return base_class(self.model), base_class.Options()

    def _combine(self, total, total_sq, samples: int):
        mean = total / samples
        if self.nt_type == "smoothgrad":
            return mean
        if self.nt_type == "smoothgrad_sq":
            return total_sq / samples
        return total_sq / samples - mean * mean

    def attribute_fused(self, inputs: MethodInputs, options: NoiseTunnelOptions) -> MethodOutput:
        base, base_options = self._base(options)
        batch, samples = inputs.batch.size, options.nt_samples
        torch_generator, _ = tunnel_generators(options.seed, inputs.target_embeds.device)
        noises = iter(tunnel_noise(inputs, options.stdevs, samples, torch_generator))
        roles = [
            (inputs.source_embeds, inputs.attribute_source),
            (inputs.target_embeds, inputs.attribute_target),
        ]
        noise = [next(noises) if attributed and embeds is not None else None for embeds, attributed in roles]
        writer = AttributionWriter(inputs)
        for steps in step_chunks(inputs, n_points=options.internal_batch_size or samples * batch):
            sums: list = [None, None]
            squares: list = [None, None]
            for block in point_blocks(samples, batch, options.internal_batch_size):
                points = [
                    expand_rows(embeds, len(block))
                    if n is None
                    else (embeds + n[block.start : block.stop]).flatten(0, 1)
                    for (embeds, _), n in zip(roles, noise, strict=True)
                ]
                grads = step_gradients(inputs, points[0], points[1], steps)
                for i, gradient in enumerate((grads.source, grads.target)):
                    if gradient is None:
                        continue
                    at_points = points[i][:, : gradient.shape[2]]
                    attribution = base.point_attribution(gradient, at_points, base_options)
                    attribution = attribution.unflatten(1, (len(block), batch))
                    part, part_sq = attribution.sum(1), (attribution * attribution).sum(1)
                    sums[i] = part if sums[i] is None else sums[i] + part
                    squares[i] = part_sq if squares[i] is None else squares[i] + part_sq
            combined = [
                None if total is None else options.reduce(self._combine(total, total_sq, samples))
                for total, total_sq in zip(sums, squares, strict=True)
            ]
            writer.write(steps, *combined)
        return writer.output()

    def attribute_stepwise(self, inputs: MethodInputs, options: NoiseTunnelOptions) -> MethodOutput:
        base, base_options = self._base(options)
        held = inputs.held_target
        # Where each example's generated prefix starts (padded index); every real token after it is held.
        prefix_start = None if held is None else held.int().argmax(1)
        if prefix_start is not None and not bool((prefix_start == prefix_start[0]).all()):
            raise ValueError(
                f"{self.name} stepwise with attribute_target=False (prompt only) needs the examples of a "
                "batch to end their prompts at one padded position (the default window does); use "
                "fused=True, batch_size=1, or the default attr_pos_start"
            )

        def stdevs(count: int) -> float | tuple[float, ...]:
            if held is None:
                return float(options.stdevs)
            # One Captum input per token (decoder-only: the target prefix): the held prefix gets no noise.
            start = int(prefix_start[0])
            return tuple(0.0 if p >= start else float(options.stdevs) for p in range(count))

        def attribute_step(forward, attributed, additional):
            captum_base, kwargs = base.captum_method(forward, base_options)
            with seeded_global_rng(options.seed, inputs.target_embeds.device):
                return CaptumNoiseTunnel(captum_base).attribute(
                    attributed,
                    nt_type=self.nt_type,
                    nt_samples=options.nt_samples,
                    stdevs=stdevs(len(attributed)),
                    additional_forward_args=additional,
                    **kwargs,
                )

        return captum_stepwise(inputs, attribute_step, options.reduce, split_positions=True)


class SmoothGrad(NoiseTunnel):
    """Mean of a gradient method's attributions over noisy copies of the inputs (SmoothGrad)."""

    name = "smooth_grad"
    nt_type = "smoothgrad"


class SquareGrad(NoiseTunnel):
    """Mean of the squared attributions of a gradient method over noisy copies of the inputs."""

    name = "square_grad"
    nt_type = "smoothgrad_sq"


class VarGrad(NoiseTunnel):
    """Variance of a gradient method's attributions over noisy copies of the inputs (VarGrad)."""

    name = "var_grad"
    nt_type = "vargrad"
