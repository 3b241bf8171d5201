"""GradientSHAP (Lundberg & Lee 2017, Captum's form): random points between baseline and noisy input.

Each of ``n_samples`` samples adds Gaussian noise (``stdevs``) to the input, picks a random ``alpha`` in
[0, 1], and takes ``(noisy - baseline) * grad f(baseline + alpha (noisy - baseline))``; the samples are
averaged. Fused: every sample point of the whole sequence is evaluated once for all steps; the draws are
those of Captum's reference (see ``methods/noise.py``), so fused and stepwise agree for the same ``seed``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from captum.attr import GradientShap as CaptumGradientShap

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput, output_dtype
from seqattr.methods.gradient import (
    AttributionWriter,
    GradientOptions,
    captum_stepwise,
    step_chunks,
)
from seqattr.methods.noise import (
    attributed_embeds,
    check_stdevs,
    seeded_global_rng,
    tunnel_generators,
    tunnel_noise,
)
from seqattr.methods.options import Baseline, InternalBatch, Seed, check_positive_int
from seqattr.methods.path_base import (
    Baselines,
    PointBlock,
    path_sums,
    point_blocks,
    resolve_baselines,
    write_sums,
)


@dataclass
class GradientShapOptions(Baseline, InternalBatch, Seed, GradientOptions):
    n_samples: int = 5
    """Random samples (noise + alpha) per example."""
    stdevs: float = 0.0
    """Standard deviation of the Gaussian noise added to the input embeddings (Captum's default: none)."""
    multiply_by_inputs: bool = True
    """Multiply each gradient by ``noisy input - baseline``."""

    def validate(self) -> None:
        super().validate()
        check_positive_int("n_samples", self.n_samples)
        check_stdevs(self.stdevs)


def _shared_baselines(model, inputs: MethodInputs, options: GradientShapOptions) -> Baselines:
    # Checked before prompt-only attribution holds each example's generated prefix at its own input.
    baselines = resolve_baselines(model, dataclasses.replace(inputs, held_target=None), options.baseline)
    for baseline in (baselines.source, baselines.target):
        if baseline is not None and not torch.equal(baseline, baseline[:1].expand_as(baseline)):
            raise ValueError(
                "gradient_shap uses one baseline shared by all examples (Captum draws from a distribution): "
                "give a [hidden] vector, a token id or a named baseline, not one baseline per example"
            )
    return baselines.holding(inputs.held_target, inputs.target_embeds)


class GradientShap(AttributionMethod):
    """Expected gradients at random points between a baseline and the (optionally noised) inputs."""

    name = "gradient_shap"
    Options = GradientShapOptions

    def attribute_fused(self, inputs: MethodInputs, options: GradientShapOptions) -> MethodOutput:
        baselines = _shared_baselines(self.model, inputs, options)
        batch, samples = inputs.batch.size, options.n_samples
        device, dtype = inputs.target_embeds.device, inputs.target_embeds.dtype
        torch_generator, numpy_generator = tunnel_generators(options.seed, device)
        noises = tunnel_noise(inputs, options.stdevs, samples, torch_generator)
        # Captum draws the alphas after the noise, one per (example, sample) row, example-major.
        alphas = torch.tensor(numpy_generator.uniform(0.0, 1.0, batch * samples), dtype=dtype, device=device)
        alphas = alphas.view(batch, samples).T
        attributed = iter(zip(attributed_embeds(inputs), noises, strict=True))
        roles = {}
        for role, embeds, baseline in (
            ("source", inputs.source_embeds, baselines.source),
            ("target", inputs.target_embeds, baselines.target),
        ):
            roles[role] = (embeds, None, None) if baseline is None else (*next(attributed), baseline)

        def blocks():
            for block in point_blocks(samples, batch, options.internal_batch_size):
                alpha = alphas[block.start : block.stop].reshape(-1, 1, 1)
                points, factors = {}, {}
                for role, (embeds, noise, baseline) in roles.items():
                    if embeds is None or baseline is None:
                        points[role] = None if embeds is None else embeds.repeat(len(block), 1, 1)
                        factors[role] = None
                        continue
                    noisy = (embeds + noise[block.start : block.stop]).flatten(0, 1)
                    base = baseline.repeat(len(block), 1, 1)
                    points[role] = alpha * noisy + (1 - alpha) * base
                    # The points in the model's dtype (as Captum's); the factors, summed over the samples, in
                    # float32 for a half-precision model (`output_dtype`).
                    wide = output_dtype(noisy.dtype)
                    factors[role] = (
                        (noisy.to(wide) - base.to(wide)) / samples
                        if options.multiply_by_inputs
                        else torch.full_like(alpha, 1 / samples, dtype=wide)
                    )
                yield PointBlock(points["source"], points["target"], factors["source"], factors["target"])

        writer = AttributionWriter(inputs)
        rows = options.internal_batch_size or samples * batch
        for steps in step_chunks(inputs, n_points=rows):
            write_sums(writer, steps, path_sums(inputs, steps, blocks()), options.hidden_reduction)
        return writer.output()

    def attribute_stepwise(self, inputs: MethodInputs, options: GradientShapOptions) -> MethodOutput:
        baselines = _shared_baselines(self.model, inputs, options)
        held = inputs.held_target
        if held is not None and inputs.batch.size > 1:
            raise ValueError(
                "gradient_shap stepwise with attribute_target=False (prompt only) takes one example per "
                "batch: Captum's baseline distribution is shared by the batch, and each example holds its "
                "own generated prefix; use fused=True or batch_size=1"
            )

        def stdevs(count: int) -> float | tuple[float, ...]:
            if held is None:
                return float(options.stdevs)
            # One Captum input per token (decoder-only: the target prefix): the held prefix gets no noise.
            return tuple(0.0 if bool(held[0, p]) else float(options.stdevs) for p in range(count))

        def attribute_step(forward, attributed, additional):
            # One Captum input per token: one [1, hidden] baseline "distribution" per token.
            per_token = list(baselines.source[:1].unbind(1)) if baselines.source is not None else []
            if baselines.target is not None:
                per_token += list(baselines.target[:1, : len(attributed) - len(per_token)].unbind(1))
            with seeded_global_rng(options.seed, inputs.target_embeds.device):
                return CaptumGradientShap(forward, multiply_by_inputs=options.multiply_by_inputs).attribute(
                    attributed,
                    baselines=tuple(per_token),
                    n_samples=options.n_samples,
                    stdevs=stdevs(len(attributed)),
                    additional_forward_args=additional,
                )

        return captum_stepwise(inputs, attribute_step, options.reduce, split_positions=True)
