"""DeepLIFT (Shrikumar et al. 2017), Captum's rescale rule: differences from a baseline propagated backwards.

Captum's DeepLIFT runs the model on the inputs and the baseline together and replaces the derivative of each
supported nonlinearity *module* (ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus, Softmax, MaxPool) by
``delta out / delta in``; every other operation keeps its ordinary gradient. Transformers compute GELU and
SiLU in modules Captum does not list and attention softmax as a function, so on most language models
DeepLIFT differs from ``(x - baseline) * gradient`` only where such modules exist (e.g. T5's ReLU).

Fused by rows (``methods/step_rows.py``): the rescale multipliers are computed in module backward hooks, which
the batched backward over steps does not run reliably, so each step of a chunk gets its own copy of the
batch and one Captum call serves the chunk. Exact; it saves model calls, not arithmetic.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
from captum.attr import DeepLift as CaptumDeepLift

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput, refuse_contrast
from seqattr.methods.gradient import GradientOptions, captum_stepwise
from seqattr.methods.options import Baseline, ConvergenceDelta
from seqattr.methods.path_base import Baselines, resolve_baselines
from seqattr.methods.step_rows import ForwardModule, RowsResult, captum_step_rows

CONVERGENCE_DELTA = "convergence_delta"


def refuse_deeplift_contrast(inputs: MethodInputs, name: str) -> MethodInputs:
    """Contrastive attributed functions are refused (see `refuse_contrast`): the contrast's forward pass runs
    every module a second time, and Captum's rescale rule keeps one input and output per module (it fails
    with "module is being used more than once"); on models without such modules it would silently be
    gradient x (input - baseline) of a function whose two passes need two references."""
    return refuse_contrast(
        inputs,
        f"{name} cannot attribute a contrastive function (Captum's DeepLIFT rescale rule needs each module "
        "to run once per forward pass)",
        "use saliency, input_x_gradient or integrated_gradients for contrastive attribution, or "
        "attributed_fn='probability'",
    )


@dataclass
class DeepLiftOptions(Baseline, ConvergenceDelta, GradientOptions):
    multiply_by_inputs: bool = True
    """Multiply the multipliers by ``input - baseline`` (Captum's default)."""


def run_captum_deeplift(
    captum_class, forward, attributed, additional, baselines: Baselines, options, *children, **init
) -> RowsResult:
    """One call of Captum's (layer) DeepLIFT class on ``forward`` wrapped as a module around ``children``."""
    module = ForwardModule(forward, *children)
    with warnings.catch_warnings():  # Captum warns at every call that it sets hooks (it removes them too)
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
        result = captum_class(module, multiply_by_inputs=options.multiply_by_inputs, **init).attribute(
            attributed,
            baselines=baselines.for_step(attributed),
            additional_forward_args=additional,
            return_convergence_delta=options.return_convergence_delta,
        )
    delta = None
    if options.return_convergence_delta:
        result, delta = result
    return RowsResult(tuple(result) if isinstance(result, tuple) else (result,), delta)


def stepwise_with_deltas(inputs: MethodInputs, run, reduce) -> MethodOutput:
    """`captum_stepwise` over a call returning a `RowsResult`, keeping its deltas as a step score."""
    deltas = []

    def attribute_step(forward, attributed, additional):
        result = run(forward, attributed, additional)
        if result.delta is not None:
            deltas.append(result.delta.detach())
        return result.attributions

    output = captum_stepwise(inputs, attribute_step, reduce)
    if deltas:
        output.step_scores[CONVERGENCE_DELTA] = torch.stack(deltas, 1).cpu()
    return output


class DeepLift(AttributionMethod):
    """Differences from a baseline propagated with Captum's DeepLIFT rescale rule (fused by rows)."""

    name = "deeplift"
    Options = DeepLiftOptions

    def layer_run(self, inputs: MethodInputs, options: DeepLiftOptions) -> contextlib.AbstractContextManager:
        """A context giving the `LayerRun` of a layer variant (``layer_deeplift``), or None."""
        return contextlib.nullcontext()

    def captum_call(self, forward, attributed, additional, baselines: Baselines, options, run) -> RowsResult:
        """One Captum call on ``forward`` (``run``: the variant's `LayerRun`, or None)."""
        return run_captum_deeplift(
            CaptumDeepLift, forward, attributed, additional, baselines, options, self.model.model
        )

    def run_path(self, inputs: MethodInputs, options: DeepLiftOptions, path) -> MethodOutput:
        """``path(inputs, call)`` (fused by rows, or stepwise) with one Captum call per step or row block."""
        inputs = refuse_deeplift_contrast(inputs, self.name)
        with self.layer_run(inputs, options) as run:
            if run is not None:  # both paths run Captum's layer DeepLIFT
                run.refuse_held_prefix(self.name, "use target_layer=None (the input embeddings)")
            seen = inputs if run is None else run.inputs
            baselines = resolve_baselines(self.model, seen, options.baseline)

            def call(forward, attributed, additional) -> RowsResult:
                return self.captum_call(forward, attributed, additional, baselines, options, run)

            return path(seen, call)

    def attribute_fused(self, inputs: MethodInputs, options: DeepLiftOptions) -> MethodOutput:
        rows = 2 * inputs.batch.size  # the inputs and the baseline, per step

        def by_rows(seen, call):
            return captum_step_rows(seen, call, options.reduce, rows_per_step=rows)

        return self.run_path(inputs, options, by_rows)

    def attribute_stepwise(self, inputs: MethodInputs, options: DeepLiftOptions) -> MethodOutput:
        return self.run_path(
            inputs, options, lambda seen, call: stepwise_with_deltas(seen, call, options.reduce)
        )
