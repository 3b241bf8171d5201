"""Layer gradient x activation: a layer's activations times the gradient of each step's score with respect to
them (Captum's LayerGradientXActivation; ``multiply_by_inputs=False`` leaves the plain layer gradient).

Positions: see ``methods/layer_base.py``. Fused: one forward pass reads the layer's activations, then each
chunk of steps takes one forward with the activations in place and one batched backward for all its steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from captum.attr import LayerGradientXActivation as CaptumLayerGradientXActivation

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput
from seqattr.methods.gradient import (
    AttributionWriter,
    GradientOptions,
    captum_stepwise,
    step_chunks,
)
from seqattr.methods.layer_base import LayerRun
from seqattr.methods.options import TargetLayer


@dataclass
class LayerGradientXActivationOptions(TargetLayer, GradientOptions):
    multiply_by_inputs: bool = True
    """Multiply the gradient by the activations (False: the layer gradient alone)."""


class LayerGradientXActivation(AttributionMethod):
    """A layer's activations times the gradient of each step's score (default layer: the input embeddings)."""

    name = "layer_gradient_x_activation"
    unitless = True
    Options = LayerGradientXActivationOptions

    def attribute_fused(self, inputs: MethodInputs, options: LayerGradientXActivationOptions) -> MethodOutput:
        writer = AttributionWriter(inputs)
        with LayerRun(self.model, inputs, options.target_layer, options.attribute_to_layer_input) as run:
            activations = run.activations(inputs.source_embeds, inputs.target_embeds)
            for steps in step_chunks(inputs, n_points=inputs.batch.size):
                values = run.truncate(activations, int(inputs.batch.step_positions[steps].max()))
                gradient = run.step_gradients(values, steps)
                attribution = gradient * values if options.multiply_by_inputs else gradient
                source, target = run.split(attribution, 2)
                writer.write(
                    steps,
                    *(None if x is None else options.reduce(x) for x in (source, target)),
                )
        return writer.output()

    def attribute_stepwise(
        self, inputs: MethodInputs, options: LayerGradientXActivationOptions
    ) -> MethodOutput:
        with LayerRun(self.model, inputs, options.target_layer, options.attribute_to_layer_input) as run:

            def attribute_step(forward, attributed, additional):
                captum = CaptumLayerGradientXActivation(
                    run.wrap(forward, len(attributed)), run.tap, multiply_by_inputs=options.multiply_by_inputs
                )
                return run.per_role(captum.attribute(attributed, additional_forward_args=additional))

            return captum_stepwise(run.inputs, attribute_step, options.reduce)
