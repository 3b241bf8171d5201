"""Integrated gradients (Sundararajan et al. 2017): gradients integrated on the straight path from a baseline.

Fused: the ``n_steps`` interpolations of the whole sequence are evaluated once each, in blocks of
``internal_batch_size`` rows, and every step's gradient comes from the batched backward. Exact, because a
step's score ignores the target positions at and after its own token. Both paths, the completeness check and
the convergence delta come from `PathMethod` (``methods/path_base.py``): this module declares the straight
path (the base's default) and Captum's class. ``n_steps="auto"`` refines a nested rule per step until
completeness holds (``methods/adaptive_integration.py``; fused only), for this method, its layer variant and
expected gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

from captum.attr import IntegratedGradients as CaptumIntegratedGradients

from seqattr.methods.adaptive_integration import (
    AdaptiveSteps,
    attribute_adaptive,
    is_adaptive,
    refuse_stepwise,
)
from seqattr.methods.base import MethodInputs, MethodOutput
from seqattr.methods.convergence import CONVERGENCE_DELTA  # noqa: F401  (re-exported, as before)
from seqattr.methods.path_base import (  # noqa: F401  (re-exported, as before)
    IntegratedGradientsOptions,
    PathMethod,
    run_captum_integrated_gradients,
    straight_path_blocks,
)


@dataclass
class AdaptiveIntegratedGradientsOptions(AdaptiveSteps, IntegratedGradientsOptions):
    """Options of integrated gradients: those of the path methods, and ``n_steps="auto"``."""


class IntegratedGradients(PathMethod):
    """Gradients integrated along the straight path from a baseline to the input embeddings."""

    name = "integrated_gradients"
    Options = AdaptiveIntegratedGradientsOptions

    def captum_method(self, forward, options: IntegratedGradientsOptions, layer=None):
        return CaptumIntegratedGradients(forward, multiply_by_inputs=options.multiply_by_inputs)

    def attribute_fused(self, inputs: MethodInputs, options) -> MethodOutput:
        if is_adaptive(options):
            return attribute_adaptive(self, inputs, options)
        return super().attribute_fused(inputs, options)

    def attribute_stepwise(self, inputs: MethodInputs, options) -> MethodOutput:
        refuse_stepwise(self.name, options)
        return super().attribute_stepwise(inputs, options)
