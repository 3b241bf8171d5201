"""Half precision (bfloat16, float16) models on CPU: every method family runs, gives finite float32
attributions close to the same weights' float32 run, and sums what it must in float32.

One tiny GPT-2 is cast from the same float32 weights into each dtype (module-scoped, so the file stays fast);
the encoder-decoder row uses the tiny BART the same way. The tolerances are relative to the largest float32
attribution of the comparison (``|half - float32| <= tol * max|float32|``), a few times the error measured on
these models (in comments): the error is the model's own rounding (8 bits of mantissa in bfloat16, 11 in
float16), which no accumulation removes. docs/usage.md ("Half precision") has the same comparison on
SmolLM2-135M.
"""

from __future__ import annotations

import copy

import pytest
import torch

import seqattr
from seqattr.methods.base import get_method_class
from seqattr.methods.discretized_integrated_gradients import token_paths
from seqattr.methods.path_base import block_coefficients, integration_rule
from seqattr.testing import tiny_model

PROMPT = "the cat sat on the mat"
DECODER_TEXT = PROMPT + " and the dog ran"
ENCODER_DECODER_TEXT = "the dog ran away"
HALF = (torch.bfloat16, torch.float16)

# family -> (method, options, {dtype: tolerance}). Measured max error / max|float32| on the tiny GPT-2
# (bfloat16, float16): input_x_gradient 0.26, 0.005 (a signed sum over hidden units that cancels: the
# gradient's own rounding shows); integrated_gradients 0.03, 0.004; occlusion 0.09, 0.007; lime 0.03, 0.004;
# attention_rollout 0.02, 0.004; attnlrp 0.06, 0.002; alti_logit 0.014, 0.002; DIG 0.03, 0.004.
FAMILIES = {
    "gradient": ("input_x_gradient", {}, {torch.bfloat16: 0.5, torch.float16: 0.03}),
    "path": ("integrated_gradients", {"n_steps": 16}, {torch.bfloat16: 0.1, torch.float16: 0.02}),
    "discretized path": (
        "discretized_integrated_gradients",
        {"n_steps": 8},
        {torch.bfloat16: 0.1, torch.float16: 0.02},
    ),
    "perturbation": ("occlusion", {}, {torch.bfloat16: 0.25, torch.float16: 0.03}),
    "sampling/regression": ("lime", {"seed": 0}, {torch.bfloat16: 0.1, torch.float16: 0.02}),
    "attention/internals": ("attention_rollout", {}, {torch.bfloat16: 0.06, torch.float16: 0.02}),
    "lrp": ("attnlrp", {}, {torch.bfloat16: 0.2, torch.float16: 0.02}),
    "alti": ("alti_logit", {}, {torch.bfloat16: 0.05, torch.float16: 0.01}),
}


@pytest.fixture(scope="module")
def models():
    """``{(architecture, dtype): (hf_model, tokenizer)}``: the same float32 weights in each dtype."""
    copies = {}
    for architecture in ("gpt2", "bart"):
        model, tokenizer = tiny_model(architecture)
        for dtype in (torch.float32, *HALF):
            copies[architecture, dtype] = (copy.deepcopy(model).to(dtype), tokenizer)
    return copies


def attribute(models, architecture: str, dtype: torch.dtype, method: str, **options):
    model, tokenizer = models[architecture, dtype]
    text = DECODER_TEXT if architecture == "gpt2" else ENCODER_DECODER_TEXT
    explainer = seqattr.load_model(model, method, tokenizer=tokenizer)
    return explainer.attribute(PROMPT, text, show_progress=False, **options)[0]


def attributions(seq) -> torch.Tensor:
    """Source and target attributions of a sequence, stacked along positions (NaN where not defined)."""
    return torch.cat([x for x in (seq.source_attributions, seq.target_attributions) if x is not None])


def assert_near_float32(half: torch.Tensor, full: torch.Tensor, tolerance: float, what: str) -> None:
    assert half.dtype == torch.float32, f"{what}: attributions of a half-precision model are {half.dtype}"
    assert half.shape == full.shape, what
    assert torch.equal(half.isnan(), full.isnan()), f"{what}: NaN at other positions than in float32"
    defined = ~full.isnan()
    assert torch.isfinite(half[defined]).all(), f"{what}: inf in the half-precision attributions"
    error = float((half - full)[defined].abs().max() / full[defined].abs().max())
    assert error <= tolerance, f"{what}: max error {error:.3g} of max|float32| > {tolerance}"


# Few path points keep the file fast; their completeness warning is not what these tests are about.
@pytest.mark.filterwarnings("ignore::seqattr.ConvergenceWarning")
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_runs_in_half_precision_close_to_float32(models, family, dtype):
    method, options, tolerances = FAMILIES[family]
    full = attributions(attribute(models, "gpt2", torch.float32, method, **options))
    half = attributions(attribute(models, "gpt2", dtype, method, **options))
    assert_near_float32(half, full, tolerances[dtype], f"{method} {dtype}")


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("method", ["integrated_gradients", "attnlrp", "attention_rollout"])
def test_encoder_decoder_in_half_precision_close_to_float32(models, method, dtype):
    # Measured on the tiny BART (bfloat16): IG 0.004, attnlrp 0.006, attention_rollout 0.001.
    full = attribute(models, "bart", torch.float32, method, attribute_target=True)
    half = attribute(models, "bart", dtype, method, attribute_target=True)
    assert_near_float32(attributions(half), attributions(full), 0.05, f"bart {method} {dtype}")


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_sobol_keeps_real_effects_in_half_precision(models, dtype):
    # Its constant-step tolerance was 32 eps of the model's dtype: 25% of the largest score in bfloat16, which
    # zeroed every step of this model. Measured now (n_designs=32): 0.021 (bfloat16), 0.018 (float16).
    options = {"n_designs": 32, "seed": 0}
    full = attributions(attribute(models, "gpt2", torch.float32, "sobol", **options))
    half = attributions(attribute(models, "gpt2", dtype, "sobol", **options))
    assert (half.nan_to_num().abs().sum(0) > 0).all(), "a step's indices all 0"
    assert_near_float32(half, full, 0.1, f"sobol {dtype}")


PATH_SUMS = {
    "integrated_gradients": {"n_steps": 16},
    "expected_gradients": {"n_steps": 4, "n_baselines": 4},
    "layer_integrated_gradients": {"n_steps": 16},
    "gradient_shap": {"n_samples": 16},
    "sequential_integrated_gradients": {"n_steps": 4},
}


@pytest.mark.filterwarnings("ignore::seqattr.ConvergenceWarning")
@pytest.mark.parametrize("method", PATH_SUMS)
def test_path_sums_accumulate_in_float32_whatever_the_blocks(models, method):
    """The sum over path points does not depend on how the points are split into blocks: each block's terms
    are added to a float32 total. Accumulated in bfloat16 (before), one point per block rounded the running
    total at every point: 0.5-1% of the largest attribution apart (measured), against ~1e-7 now."""
    options = PATH_SUMS[method]
    one_block = attribute(models, "gpt2", torch.bfloat16, method, **options)
    point_by_point = attribute(models, "gpt2", torch.bfloat16, method, internal_batch_size=1, **options)
    a, b = attributions(one_block), attributions(point_by_point)
    defined = ~a.isnan()
    error = float((a - b)[defined].abs().max() / a[defined].abs().max())
    assert error < 1e-4, f"{method}: blocks change the bfloat16 sum by {error:.3g} of its largest value"


def test_path_weights_are_float32_for_a_half_precision_model():
    """Gauss-Legendre weights rounded to bfloat16 no longer add up to 1 (the integral's scale drifts)."""
    alphas, weights = integration_rule(8, "gausslegendre")
    like = torch.zeros(1, dtype=torch.bfloat16)
    _, weight = block_coefficients(range(8), alphas, weights, 1, like)
    assert weight.dtype == torch.float32
    assert abs(float(weight.double().sum()) - 1.0) < 1e-6, "the weights' rounding moved their sum off 1"


def test_discretized_paths_end_at_the_right_words_in_half_precision(models):
    """DIG keyed its paths by the token id in the model's dtype: bfloat16 holds integers exactly only up to
    256, so a word with a larger id got the path of another word (its error against float32 was 99%)."""
    model, tokenizer = models["gpt2", torch.bfloat16]
    explainer = seqattr.load_model(model, "discretized_integrated_gradients", tokenizer=tokenizer)
    ids = torch.tensor([tokenizer(" cat dog mat")["input_ids"]])
    assert int(ids.max()) > 256, "the test needs a token id that bfloat16 cannot hold"
    options = get_method_class("discretized_integrated_gradients").parse_options(n_steps=4)
    baseline = torch.zeros(*ids.shape, model.config.n_embd, dtype=torch.bfloat16)
    paths = token_paths(explainer, ids, baseline, options)
    words = explainer.embed(ids)
    assert torch.equal(paths[-1], words.float()), "a path ends at another word's embedding"
