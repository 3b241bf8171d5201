"""Saliency (Simonyan et al. 2014): the gradient of each step's score with respect to the input embeddings."""

from __future__ import annotations

from dataclasses import dataclass

from captum.attr import Saliency as CaptumSaliency

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


@dataclass
class SaliencyOptions(GradientOptions):
    abs: bool = True
    """Take the absolute value of the gradient (Captum's default)."""


class Saliency(PointwiseGradientMethod):
    """Gradient of each step's score w.r.t. the input embeddings (absolute by default)."""

    name = "saliency"
    Options = SaliencyOptions

    def attribute_fused(self, inputs: MethodInputs, options: SaliencyOptions) -> MethodOutput:
        writer = AttributionWriter(inputs)
        for steps in step_chunks(inputs, n_points=inputs.batch.size):
            grads = step_gradients(inputs, inputs.source_embeds, inputs.target_embeds, steps)
            writer.write(
                steps,
                *(None if g is None else self._finish(g, options) for g in (grads.source, grads.target)),
            )
        return writer.output()

    def attribute_stepwise(self, inputs: MethodInputs, options: SaliencyOptions) -> MethodOutput:
        def attribute_step(forward, attributed, additional):
            return CaptumSaliency(forward).attribute(
                attributed, additional_forward_args=additional, abs=options.abs
            )

        return captum_stepwise(inputs, attribute_step, lambda a: reduce_hidden(a, options.hidden_reduction))

    def point_attribution(self, gradient, points, options: SaliencyOptions):
        return gradient.abs() if options.abs else gradient

    def captum_method(self, forward, options: SaliencyOptions):
        return CaptumSaliency(forward), {"abs": options.abs}

    @staticmethod
    def _finish(gradient, options: SaliencyOptions):
        return reduce_hidden(gradient.abs() if options.abs else gradient, options.hidden_reduction)
