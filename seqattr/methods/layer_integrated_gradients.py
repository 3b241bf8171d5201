"""Layer integrated gradients: IG over a layer's activations (Captum's LayerIntegratedGradients).

The layer's output is moved along the straight path from its value on the baseline inputs to its value on
the inputs, while the model runs on the real inputs. Positions: see ``methods/layer_base.py``. On the
default layer (the input embeddings) it equals ``integrated_gradients``.

Integrated gradients run in the layer's space (`LayerRun.path_space`): the layer's activations on the inputs
and on the baseline take one forward pass each; then every interpolation of the whole sequence's activations
is evaluated once for all steps (blocks of ``internal_batch_size`` rows; a decoder layer's activation at a
position depends only on earlier tokens, so cutting it to a chunk's prefix is exact).
"""

from __future__ import annotations

from dataclasses import dataclass

from captum.attr import LayerIntegratedGradients as CaptumLayerIntegratedGradients

from seqattr.methods.integrated_gradients import AdaptiveIntegratedGradientsOptions, IntegratedGradients
from seqattr.methods.layer_base import LayerMethod
from seqattr.methods.options import TargetLayer


@dataclass
class LayerIntegratedGradientsOptions(TargetLayer, AdaptiveIntegratedGradientsOptions):
    """Options of layer integrated gradients."""


class LayerIntegratedGradients(LayerMethod, IntegratedGradients):
    """Integrated gradients over the activations of a layer (default: the input embeddings)."""

    name = "layer_integrated_gradients"
    Options = LayerIntegratedGradientsOptions

    def captum_method(self, forward, options: LayerIntegratedGradientsOptions, layer=None):
        return CaptumLayerIntegratedGradients(forward, layer, multiply_by_inputs=options.multiply_by_inputs)
