"""Input x gradient (Shrikumar et al. 2016): embeddings times the gradient of each step's score."""

from __future__ import annotations

from captum.attr import InputXGradient as CaptumInputXGradient

from seqattr.methods.base import MethodInputs, MethodOutput
from seqattr.methods.gradient import (
    AttributionWriter,
    GradientOptions,
    PointwiseGradientMethod,
    captum_stepwise,
    reduce_hidden,
    step_chunks,
    step_gradients,
)


class InputXGradient(PointwiseGradientMethod):
    """Input embeddings multiplied by the gradient of each step's score."""

    name = "input_x_gradient"
    Options = GradientOptions

    def attribute_fused(self, inputs: MethodInputs, options: GradientOptions) -> MethodOutput:
        writer = AttributionWriter(inputs)
        for steps in step_chunks(inputs, n_points=inputs.batch.size):
            grads = step_gradients(inputs, inputs.source_embeds, inputs.target_embeds, steps)
            source = target = None
            if grads.source is not None:
                source = reduce_hidden(grads.source * inputs.source_embeds, options.hidden_reduction)
            if grads.target is not None:
                prefix = inputs.target_embeds[:, : grads.target.shape[2]]
                target = reduce_hidden(grads.target * prefix, options.hidden_reduction)
            writer.write(steps, source, target)
        return writer.output()

    def point_attribution(self, gradient, points, options: GradientOptions):
        return gradient * points

    def captum_method(self, forward, options: GradientOptions):
        return CaptumInputXGradient(forward), {}

    def attribute_stepwise(self, inputs: MethodInputs, options: GradientOptions) -> MethodOutput:
        def attribute_step(forward, attributed, additional):
            return CaptumInputXGradient(forward).attribute(attributed, additional_forward_args=additional)

        return captum_stepwise(inputs, attribute_step, lambda a: reduce_hidden(a, options.hidden_reduction))
