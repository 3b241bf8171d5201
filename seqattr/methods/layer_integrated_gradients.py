"""Layer integrated gradients: IG over a layer's activations (Captum's LayerIntegratedGradients).

The layer's output is moved along the straight path from its value on the baseline inputs to its value on
the inputs, while the model runs on the real inputs. Positions: see ``methods/layer_base.py``. On the
default layer (the input embeddings) it equals ``integrated_gradients``.

Fused: the layer's activations on the inputs and on the baseline take one forward pass each; then every
interpolation of the whole sequence's activations is evaluated once for all steps (blocks of
``internal_batch_size`` rows; a decoder layer's activation at a position depends only on earlier tokens, so
cutting it to a chunk's prefix is exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from captum.attr import LayerIntegratedGradients as CaptumLayerIntegratedGradients

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput
from seqattr.methods.gradient import AttributionWriter, captum_stepwise, step_chunks
from seqattr.methods.integrated_gradients import run_captum_integrated_gradients
from seqattr.methods.layer_base import LayerRun
from seqattr.methods.options import ConvergenceDelta, TargetLayer
from seqattr.methods.path_base import (
    PathOptions,
    block_coefficients,
    completeness_gap,
    integration_rule,
    point_blocks,
    resolve_baselines,
    with_completeness,
)


@dataclass
class LayerIntegratedGradientsOptions(TargetLayer, ConvergenceDelta, PathOptions):
    """Options of layer integrated gradients."""


class LayerIntegratedGradients(AttributionMethod):
    """Integrated gradients over the activations of a layer (default: the input embeddings)."""

    name = "layer_integrated_gradients"
    Options = LayerIntegratedGradientsOptions

    def attribute_fused(self, inputs: MethodInputs, options: LayerIntegratedGradientsOptions) -> MethodOutput:
        baselines = resolve_baselines(self.model, inputs, options.baseline)
        alphas, weights = integration_rule(options.n_steps, options.integration_method)
        batch = inputs.batch.size
        writer = AttributionWriter(inputs)
        totals = []
        with LayerRun(self.model, inputs, options.target_layer) as run:
            actual = run.activations(inputs.source_embeds, inputs.target_embeds)
            reference = run.activations(*baselines.for_roles(inputs))
            for steps in step_chunks(inputs, n_points=options.internal_batch_size or len(alphas) * batch):
                prefix_len = int(inputs.batch.step_positions[steps].max())
                start = run.truncate(reference, prefix_len)
                difference = run.truncate(actual, prefix_len) - start
                total = 0
                for block in point_blocks(len(alphas), batch, options.internal_batch_size):
                    alpha, weight = block_coefficients(block, alphas, weights, batch, start)
                    copies = difference.repeat(len(block), 1, 1)
                    gradient = run.step_gradients(start.repeat(len(block), 1, 1) + alpha * copies, steps)
                    factor = weight * copies if options.multiply_by_inputs else weight
                    total = total + (gradient * factor).unflatten(1, (len(block), batch)).sum(1)
                totals.append(total.sum((2, 3)).T)
                source, target = run.split(total, 2)
                writer.write(
                    steps,
                    *(None if x is None else options.reduce(x) for x in (source, target)),
                )
        # The completeness check costs two passes without gradients; it runs always, for the warning.
        gap = completeness_gap(inputs, [baselines])
        delta = torch.cat(totals, 1) - gap
        return with_completeness(writer.output(), inputs, options, [baselines], delta, gap)

    def attribute_stepwise(
        self, inputs: MethodInputs, options: LayerIntegratedGradientsOptions
    ) -> MethodOutput:
        baselines = resolve_baselines(self.model, inputs, options.baseline)
        deltas = []
        with LayerRun(self.model, inputs, options.target_layer) as run:

            def attribute_step(forward, attributed, additional):
                captum = CaptumLayerIntegratedGradients(
                    run.wrap(forward, len(attributed)), run.tap, multiply_by_inputs=options.multiply_by_inputs
                )
                result, delta = run_captum_integrated_gradients(
                    captum, attributed, baselines, additional, options
                )
                if delta is not None:
                    deltas.append(delta)
                return run.per_role(result)

            output = captum_stepwise(run.inputs, attribute_step, options.reduce)
        delta = torch.stack(deltas, 1) if deltas else None  # Captum computes it only when asked
        return with_completeness(output, inputs, options, [baselines], delta)
