"""Saliency (Simonyan et al. 2014): the gradient of each step's score with respect to the input embeddings."""

from __future__ import annotations

from dataclasses import dataclass

from captum.attr import Saliency as CaptumSaliency

from seqattr.methods.gradient import GradientOptions, PointwiseGradientMethod


@dataclass
class SaliencyOptions(GradientOptions):
    abs: bool = True
    """Take the absolute value of the gradient (Captum's default)."""


class Saliency(PointwiseGradientMethod):
    """Gradient of each step's score w.r.t. the input embeddings (absolute by default)."""

    name = "saliency"
    keeps_clean_logits = True
    Options = SaliencyOptions

    def point_attribution(self, gradient, points, options: SaliencyOptions):
        return gradient.abs() if options.abs else gradient

    def captum_method(self, forward, options: SaliencyOptions):
        return CaptumSaliency(forward), {"abs": options.abs}
