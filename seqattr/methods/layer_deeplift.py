"""Layer DeepLIFT: Captum's DeepLIFT rescale rule attributing a layer's activations (Captum's LayerDeepLift).

Attributions are ``(activation - activation on the baseline inputs) * DeepLIFT multipliers`` at the layer.
Positions: see ``methods/layer_base.py``; the rules and their limits on transformers: see
``methods/deeplift.py``. Both paths come from `DeepLift`, run inside the layer's `LayerRun` with Captum's
layer class: fused by rows (``methods/step_rows.py``), a copy of the batch per step of a chunk, one Captum
call per chunk; exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from captum.attr import LayerDeepLift as CaptumLayerDeepLift

from seqattr.methods.deeplift import DeepLift, DeepLiftOptions, run_captum_deeplift
from seqattr.methods.layer_base import LayerMethod, LayerRun
from seqattr.methods.options import TargetLayer
from seqattr.methods.step_rows import RowsResult


@dataclass
class LayerDeepLiftOptions(TargetLayer, DeepLiftOptions):
    """Options of layer DeepLIFT."""


class LayerDeepLift(LayerMethod, DeepLift):
    """DeepLIFT (Captum's rescale rule) over the activations of a layer (default: the input embeddings)."""

    name = "layer_deeplift"
    Options = LayerDeepLiftOptions

    def captum_call(self, forward, attributed, additional, baselines, options, run: LayerRun) -> RowsResult:
        result = run_captum_deeplift(
            CaptumLayerDeepLift,
            run.wrap(forward, len(attributed)),
            attributed,
            additional,
            baselines,
            options,
            self.model.model,
            run.tap,
            layer=run.tap,
        )
        return RowsResult(run.per_role(result.attributions[0]), result.delta)
