"""What a new user runs into first (issue 18): option types, argument shapes, hooks left on the model,
IG convergence, progress over a method's passes, precision of the outputs, and errors that name the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqattr.methods.base import get_method_class, list_methods
from tests.conftest import attribution_model

# --- option types --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        (
            "integrated_gradients",
            {"return_convergence_delta": "false"},
            r"return_convergence_delta must be True or False, got 'false' \(str\); "
            r"pass return_convergence_delta=False",
        ),
        (
            "integrated_gradients",
            {"multiply_by_inputs": "no"},
            r"multiply_by_inputs must be True or False, got 'no' \(str\); pass multiply_by_inputs=False",
        ),
        ("saliency", {"abs": 1}, r"abs must be True or False, got 1 \(int\)"),
        ("occlusion", {"window": True}, r"window must be an integer, got True \(bool\); pass e.g. window=1"),
        (
            "integrated_gradients",
            {"n_steps": 8.0},
            r"n_steps must be an integer, got 8.0 \(float\); pass n_steps=8",
        ),
        ("integrated_gradients", {"n_steps": "8"}, r"n_steps must be an integer, got '8' \(str\)"),
        (
            "integrated_gradients",
            {"internal_batch_size": False},
            r"internal_batch_size must be an integer or None",
        ),
        ("lime", {"kernel_width": True}, r"kernel_width must be a number, got True \(bool\)"),
        ("lime", {"n_samples": 50.5}, r"n_samples must be an integer, got 50.5"),
        ("integrated_gradients", {"integration_method": 3}, r"integration_method must be a string"),
    ],
)
def test_options_of_the_wrong_type_are_refused_naming_option_value_and_fix(method, options, message):
    with pytest.raises(TypeError, match=rf"{method} option {message}"):
        get_method_class(method).parse_options(**options)


@pytest.mark.parametrize(("method", "seed"), [("lime", -3), ("kernel_shap", -1), ("sobol", -2)])
def test_a_negative_seed_is_refused(method, seed):
    with pytest.raises(ValueError, match=rf"seed must be a non-negative integer .*got {seed}"):
        get_method_class(method).parse_options(seed=seed)


def test_numpy_scalars_are_accepted_as_python_ones():
    options = get_method_class("integrated_gradients").parse_options(
        multiply_by_inputs=np.bool_(False), n_steps=np.int64(4)
    )
    assert options.multiply_by_inputs is False and type(options.n_steps) is int and options.n_steps == 4
    assert type(get_method_class("lime").parse_options(alpha=np.float32(0.5)).alpha) is float
    # ints where a float is declared are fine (alpha=1 means 1.0)
    assert get_method_class("lime").parse_options(alpha=1).alpha == 1


def test_every_registered_method_accepts_its_own_defaults():
    """The type check follows each dataclass's annotations: the declared defaults must pass it."""
    import dataclasses

    for name in list_methods():
        cls = get_method_class(name)
        defaults = {
            f.name: f.default for f in dataclasses.fields(cls.Options) if f.default is not dataclasses.MISSING
        }
        cls.parse_options(**defaults)


def test_a_wrong_option_type_fails_at_load_model_and_attribute():
    with pytest.raises(TypeError, match="return_convergence_delta must be True or False"):
        attribution_model("gpt2", "integrated_gradients", return_convergence_delta="false")
    model = attribution_model("gpt2", "integrated_gradients")
    with pytest.raises(TypeError, match="multiply_by_inputs must be True or False"):
        model.attribute("a dog runs", "a dog runs fast", multiply_by_inputs="no", show_progress=False)


# --- argument shapes -----------------------------------------------------------------------------------


def test_a_single_step_score_name_is_a_one_element_list():
    model = attribution_model("gpt2")
    single = model.attribute("a dog runs", "a dog runs fast", step_scores="entropy", show_progress=False)
    listed = model.attribute("a dog runs", "a dog runs fast", step_scores=["entropy"], show_progress=False)
    assert list(single[0].step_scores) == ["entropy"] == single.info["step_scores"]
    torch.testing.assert_close(single[0].step_scores["entropy"], listed[0].step_scores["entropy"])


def test_step_scores_of_another_type_are_refused():
    model = attribution_model("gpt2")
    with pytest.raises(TypeError, match="step_scores must be a step function name or a list of them"):
        model.attribute("a dog runs", "a dog runs fast", step_scores=3, show_progress=False)


# --- loading keywords ----------------------------------------------------------------------------------


@pytest.mark.parametrize("keyword", ["device_map", "torch_dtype", "attn_implementation", "trust_remote_code"])
def test_a_loading_keyword_given_as_a_method_option_points_to_model_kwargs(keyword):
    with pytest.raises(
        TypeError, match=rf"saliency got unknown option\(s\) {keyword}.*model_kwargs=\{{'{keyword}'"
    ):
        attribution_model("gpt2", "saliency", **{keyword: "cpu"})
