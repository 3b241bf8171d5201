"""Input x gradient (Shrikumar et al. 2016): embeddings times the gradient of each step's score."""

from __future__ import annotations

from captum.attr import InputXGradient as CaptumInputXGradient

from seqattr.methods.gradient import GradientOptions, PointwiseGradientMethod


class InputXGradient(PointwiseGradientMethod):
    """Input embeddings multiplied by the gradient of each step's score."""

    name = "input_x_gradient"
    keeps_clean_logits = True
    Options = GradientOptions

    def point_attribution(self, gradient, points, options: GradientOptions):
        return gradient * points

    def captum_method(self, forward, options: GradientOptions):
        return CaptumInputXGradient(forward), {}
