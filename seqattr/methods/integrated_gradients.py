"""Integrated gradients (Sundararajan et al. 2017): gradients integrated on the straight path from a baseline.

Fused: the ``n_steps`` interpolations of the whole sequence are evaluated once each, in blocks of
``internal_batch_size`` rows, and every step's gradient comes from the batched backward. Exact, because a
step's score ignores the target positions at and after its own token. Both paths, the completeness check and
the convergence delta come from `PathMethod` (``methods/path_base.py``): this module declares the straight
path (the base's default) and Captum's class.
"""

from __future__ import annotations

from captum.attr import IntegratedGradients as CaptumIntegratedGradients

from seqattr.methods.convergence import CONVERGENCE_DELTA  # noqa: F401  (re-exported, as before)
from seqattr.methods.path_base import (  # noqa: F401  (re-exported, as before)
    IntegratedGradientsOptions,
    PathMethod,
    run_captum_integrated_gradients,
    straight_path_blocks,
)


class IntegratedGradients(PathMethod):
    """Gradients integrated along the straight path from a baseline to the input embeddings."""

    name = "integrated_gradients"
    Options = IntegratedGradientsOptions

    def captum_method(self, forward, options: IntegratedGradientsOptions, layer=None):
        return CaptumIntegratedGradients(forward, multiply_by_inputs=options.multiply_by_inputs)
