"""Layer DeepLIFT: Captum's DeepLIFT rescale rule attributing a layer's activations (Captum's LayerDeepLift).

Attributions are ``(activation - activation on the baseline inputs) * DeepLIFT multipliers`` at the layer.
Positions: see ``methods/layer_base.py``; the rules and their limits on transformers: see
``methods/deeplift.py``. Fused by rows like DeepLIFT (``methods/step_rows.py``): a copy of the batch per step
of a chunk, one Captum call per chunk; exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from captum.attr import LayerDeepLift as CaptumLayerDeepLift

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput
from seqattr.methods.deeplift import (
    DeepLiftOptions,
    refuse_deeplift_contrast,
    run_captum_deeplift,
    stepwise_with_deltas,
)
from seqattr.methods.layer_base import LayerRun
from seqattr.methods.options import TargetLayer
from seqattr.methods.path_base import resolve_baselines
from seqattr.methods.step_rows import RowsResult, captum_step_rows


@dataclass
class LayerDeepLiftOptions(TargetLayer, DeepLiftOptions):
    """Options of layer DeepLIFT."""


class LayerDeepLift(AttributionMethod):
    """DeepLIFT (Captum's rescale rule) over the activations of a layer (default: the input embeddings)."""

    name = "layer_deeplift"
    Options = LayerDeepLiftOptions

    def _runner(self, inputs: MethodInputs, options: LayerDeepLiftOptions, run: LayerRun):
        baselines = resolve_baselines(self.model, inputs, options.baseline)

        def call(forward, attributed, additional) -> RowsResult:
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

        return call

    def attribute_fused(self, inputs: MethodInputs, options: LayerDeepLiftOptions) -> MethodOutput:
        inputs = refuse_deeplift_contrast(inputs, self.name)
        with LayerRun(self.model, inputs, options.target_layer) as run:
            return captum_step_rows(
                run.inputs,
                self._runner(run.inputs, options, run),
                options.reduce,
                rows_per_step=2 * inputs.batch.size,
            )

    def attribute_stepwise(self, inputs: MethodInputs, options: LayerDeepLiftOptions) -> MethodOutput:
        inputs = refuse_deeplift_contrast(inputs, self.name)
        with LayerRun(self.model, inputs, options.target_layer) as run:
            return stepwise_with_deltas(
                run.inputs,
                self._runner(run.inputs, options, run),
                options.reduce,
            )
