"""Integrated gradients (Sundararajan et al. 2017): gradients integrated on the straight path from a baseline.

Fused: the ``n_steps`` interpolations of the whole sequence are evaluated once each, in blocks of
``internal_batch_size`` rows, and every step's gradient comes from the batched backward. Exact, because a
step's score ignores the target positions at and after its own token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from captum.attr import IntegratedGradients as CaptumIntegratedGradients

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput
from seqattr.methods.convergence import CONVERGENCE_DELTA  # noqa: F401  (re-exported, as before)
from seqattr.methods.gradient import AttributionWriter, captum_stepwise, step_chunks
from seqattr.methods.options import ConvergenceDelta
from seqattr.methods.path_base import (
    Baselines,
    PathOptions,
    PointBlock,
    block_coefficients,
    completeness_gap,
    integration_rule,
    path_sums,
    point_blocks,
    resolve_baselines,
    with_completeness,
    write_sums,
)
from seqattr.progress import expect_passes
from seqattr.typing import Tensor


@dataclass
class IntegratedGradientsOptions(ConvergenceDelta, PathOptions):
    """Options of integrated gradients."""


def straight_path_blocks(inputs: MethodInputs, baselines: Baselines, options, alphas, weights):
    """Point blocks of the straight path ``baseline + alpha (x - baseline)`` for every attributed role."""
    batch = inputs.batch.size
    ends = {"source": inputs.source_embeds, "target": inputs.target_embeds}
    starts = {"source": baselines.source, "target": baselines.target}
    for block in point_blocks(len(alphas), batch, options.internal_batch_size):
        alpha, weight = block_coefficients(block, alphas, weights, batch, inputs.target_embeds)
        points, factors = {}, {}
        for role, end in ends.items():
            start = starts[role]
            copies = None if end is None else end.repeat(len(block), 1, 1)
            if start is None:  # not attributed: stays at the input
                points[role], factors[role] = copies, None
                continue
            difference = (end - start).repeat(len(block), 1, 1)
            points[role] = start.repeat(len(block), 1, 1) + alpha * difference
            factors[role] = weight * difference if options.multiply_by_inputs else weight
        yield PointBlock(points["source"], points["target"], factors["source"], factors["target"])


def run_captum_integrated_gradients(
    captum, attributed: tuple[Tensor, ...], baselines: Baselines, additional: tuple, options
) -> tuple[tuple[Tensor, ...], Tensor | None]:
    """One call of Captum's (layer) integrated gradients with the options' rule, points and row budget:
    ``(attributions, convergence delta or None)``, the delta only when ``return_convergence_delta``."""
    result = captum.attribute(
        attributed,
        baselines=baselines.for_step(attributed),
        additional_forward_args=additional,
        n_steps=options.n_steps,
        method=options.integration_method,
        internal_batch_size=options.internal_batch_size,
        return_convergence_delta=options.return_convergence_delta,
    )
    if options.return_convergence_delta:
        result, delta = result
        return result, delta.detach()
    return result, None


class IntegratedGradients(AttributionMethod):
    """Gradients integrated along the straight path from a baseline to the input embeddings."""

    name = "integrated_gradients"
    Options = IntegratedGradientsOptions

    def attribute_fused(self, inputs: MethodInputs, options: IntegratedGradientsOptions) -> MethodOutput:
        baselines = resolve_baselines(self.model, inputs, options.baseline)
        alphas, weights = integration_rule(options.n_steps, options.integration_method)
        rows = options.internal_batch_size or len(alphas) * inputs.batch.size
        writer = AttributionWriter(inputs)
        totals = []
        chunks = list(step_chunks(inputs, n_points=rows))
        blocks = len(list(point_blocks(len(alphas), inputs.batch.size, options.internal_batch_size)))
        expect_passes(inputs.objective, len(chunks) * blocks + 2)  # + the completeness check's two
        for steps in chunks:
            sums = path_sums(inputs, steps, straight_path_blocks(inputs, baselines, options, alphas, weights))
            totals.append(sums.total())
            write_sums(writer, steps, sums, options.hidden_reduction)
        # The completeness check costs two passes without gradients; it runs always, for the warning.
        gap = completeness_gap(inputs, [baselines])
        delta = torch.cat(totals, 1) - gap
        return with_completeness(writer.output(), inputs, options, [baselines], delta, gap)

    def attribute_stepwise(self, inputs: MethodInputs, options: IntegratedGradientsOptions) -> MethodOutput:
        baselines = resolve_baselines(self.model, inputs, options.baseline)
        deltas = []

        def attribute_step(forward, attributed, additional):
            captum = CaptumIntegratedGradients(forward, multiply_by_inputs=options.multiply_by_inputs)
            result, delta = run_captum_integrated_gradients(
                captum, attributed, baselines, additional, options
            )
            if delta is not None:
                deltas.append(delta)
            return result

        output = captum_stepwise(inputs, attribute_step, options.reduce)
        delta = torch.stack(deltas, 1) if deltas else None  # Captum computes it only when asked
        return with_completeness(output, inputs, options, [baselines], delta)
