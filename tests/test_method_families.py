"""Method families (issue 10): a family base owns both paths, a layer method wraps an input method.

The path methods declare their points and Captum's class and get the fused path, the stepwise reference, the
completeness check and the progress bar's count from `PathMethod`; their numbers are held by the
invariants table (tests/test_invariants.py) and by tests/test_gradient_methods.py.
"""

from __future__ import annotations

import pytest
from test_new_user_api import FORCED, PROMPT, recorded_bars

from conftest import attribution_model
from seqattr.methods.deeplift import DeepLift
from seqattr.methods.expected_gradients import ExpectedGradients
from seqattr.methods.integrated_gradients import IntegratedGradients
from seqattr.methods.layer_base import LayerMethod
from seqattr.methods.layer_deeplift import LayerDeepLift
from seqattr.methods.layer_integrated_gradients import LayerIntegratedGradients
from seqattr.methods.path_base import PathMethod
from seqattr.methods.sequential_integrated_gradients import SequentialIntegratedGradients


@pytest.mark.parametrize(
    "method",
    [IntegratedGradients, LayerIntegratedGradients, SequentialIntegratedGradients, ExpectedGradients],
)
def test_path_methods_take_both_paths_from_their_family_base(method):
    assert issubclass(method, PathMethod)
    # IntegratedGradients (so also its layer variant and expected gradients) only routes n_steps="auto" to
    # seqattr.methods.adaptive_integration; any other call goes on to PathMethod's two paths.
    own = {} if method is IntegratedGradients else vars(method)
    assert "attribute_fused" not in own and "attribute_stepwise" not in own


@pytest.mark.parametrize(
    ("layer", "inner"), [(LayerIntegratedGradients, IntegratedGradients), (LayerDeepLift, DeepLift)]
)
def test_layer_methods_wrap_their_input_method(layer, inner):
    assert issubclass(layer, LayerMethod) and issubclass(layer, inner)
    assert "attribute_fused" not in vars(layer) and "attribute_stepwise" not in vars(layer)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("sequential_integrated_gradients", {"n_steps": 2, "internal_batch_size": 3}),
        ("expected_gradients", {"n_steps": 2, "n_baselines": 2}),
        (
            "layer_integrated_gradients",
            {"n_steps": 4, "internal_batch_size": 2, "target_layer": "transformer.h.0"},
        ),
    ],
)
def test_every_path_method_announces_its_passes(monkeypatch, method, options):
    """The family base counts the passes of every path method (blocks of points per chunk of steps and
    baseline, the layer's activations, the completeness check): the bar's total is what ran."""
    model = attribution_model("gpt2", method, **options)
    bars = recorded_bars(monkeypatch)
    model.attribute(PROMPT, FORCED, show_progress=True)
    (bar,) = bars
    assert bar.done > 2
    assert bar.total == bar.done
