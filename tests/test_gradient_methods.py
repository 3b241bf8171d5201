"""Gradient methods beyond saliency: IG and relatives, DeepLIFT, GradientSHAP, noise tunnels, layer methods.

What is checked, and against what (fused == stepwise, where the stepwise path runs Captum's own class on
each step's prefix, and batched == single are rows of the invariants table, tests/test_invariants.py, on
decoder-only and encoder-decoder models, source only and both sides, inner layers for the layer methods):
- Captum called directly on the Hugging Face model (no seqattr code) equals our per-step attributions;
- IG completeness on the test models, and exactness of the path methods on a model linear in the embeddings;
- results independent of ``internal_batch_size``, seeds reproduce, a layer keeps its own width, errors are
  clear.

Models are the float64 copies of tests/exact.py (float32 rounding of these random models reaches 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import (
    DeepLift,
    IntegratedGradients,
    LayerDeepLift,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    NoiseTunnel,
    Saliency,
)

import seqattr
from exact import assert_close, assert_sequences_close, exact_model, probability64

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor", "ignore:Setting forward, backward hooks")

PROMPTS = ["the cat sat on the mat", "Paris is a beautiful city"]
RUN = dict(generation_args={"max_new_tokens": 3}, attributed_fn=probability64, show_progress=False)

OPTIONS = {
    "integrated_gradients": dict(n_steps=5, return_convergence_delta=True),
    "deeplift": dict(return_convergence_delta=True),
    "gradient_shap": dict(n_samples=3, stdevs=0.05),
    "smooth_grad": dict(nt_samples=3, stdevs=0.05),
    "square_grad": dict(nt_samples=3, stdevs=0.05, base_method="input_x_gradient"),
    "var_grad": dict(nt_samples=3, stdevs=0.05),
    "layer_integrated_gradients": dict(n_steps=5, return_convergence_delta=True),
    "layer_gradient_x_activation": {},
    "layer_deeplift": dict(return_convergence_delta=True),
    "sequential_integrated_gradients": dict(n_steps=3),
    "discretized_integrated_gradients": dict(n_steps=5),
    "expected_gradients": dict(n_steps=3, n_baselines=2, return_convergence_delta=True),
}
# Captum rounds its quadrature weights to float32 (IntegratedGradients._attribute): 1e-4 for IG-based methods.
CAPTUM_QUADRATURE = {
    "integrated_gradients",
    "layer_integrated_gradients",
    "sequential_integrated_gradients",
    "expected_gradients",
}


def test_a_layer_keeps_its_own_width():
    """An MLP's inner Linear is attributed per unit of its own width, not of the hidden size."""
    layer = "model.decoder.layers.1.fc1"
    model = exact_model("bart", "layer_gradient_x_activation", target_layer=layer, hidden_reduction=None)
    seq = model.attribute(PROMPTS[0], attribute_target=True, **RUN)[0]
    assert seq.source_attributions is None
    assert seq.target_attributions.shape[-1] == model.model.get_submodule(layer).out_features != 64


# --- Captum on the Hugging Face model directly: no seqattr code in the reference ---------------------------


def direct_forward(hf_model, target_id: int):
    """Probability of ``target_id`` after the prefix: a plain function of Captum's inputs."""

    def forward(*embeds):
        if hf_model.config.is_encoder_decoder:
            logits = hf_model(
                inputs_embeds=embeds[0], decoder_inputs_embeds=embeds[1], use_cache=False
            ).logits
        else:
            logits = hf_model(inputs_embeds=embeds[0], use_cache=False).logits
        return torch.softmax(logits[:, -1], -1)[:, target_id]

    return forward


class AsModule(torch.nn.Module):
    def __init__(self, forward, model):
        super().__init__()
        self.model, self._forward = model, forward

    def forward(self, *args):
        return self._forward(*args)


DIRECT = {
    "integrated_gradients": (
        dict(n_steps=6, baseline="zeros"),
        lambda f, m, layer: IntegratedGradients(f),
        dict(n_steps=6),
    ),
    "deeplift": ({}, lambda f, m, layer: DeepLift(AsModule(f, m)), {}),
    "layer_integrated_gradients": (
        dict(n_steps=6),
        lambda f, m, layer: LayerIntegratedGradients(f, layer),
        dict(n_steps=6),
    ),
    "layer_gradient_x_activation": ({}, lambda f, m, layer: LayerGradientXActivation(f, layer), {}),
    "layer_deeplift": ({}, lambda f, m, layer: LayerDeepLift(AsModule(f, m), layer), {}),
}


@pytest.mark.parametrize(
    "architecture,layer", [("gpt2", "transformer.h.0.mlp"), ("t5", "decoder.block.0.layer.2")]
)
@pytest.mark.parametrize("method", sorted(DIRECT))
def test_equals_captum_on_the_model_itself(method, architecture, layer):
    """Captum's class on the real module (not our tap), the prefix given as embeddings, zeros as baseline."""
    options, make, kwargs = DIRECT[method]
    if method.startswith("layer"):
        options = {**options, "target_layer": layer}
    model = exact_model(architecture, method, hidden_reduction=None, **options)
    seq = model.attribute(PROMPTS[0], attribute_target=True, **RUN)[0]
    hf_model = model.model
    embed = hf_model.get_input_embeddings()
    for step in range(seq.num_steps):
        position = seq.attr_pos_start + step
        inputs = [embed(torch.tensor([seq.target_ids[:position]])).detach()]
        if hf_model.config.is_encoder_decoder:
            inputs.insert(0, embed(torch.tensor([seq.source_ids])).detach())
        forward = direct_forward(hf_model, seq.target_ids[position])
        captum = make(forward, hf_model, hf_model.get_submodule(layer))
        baselines = tuple(torch.zeros_like(x) for x in inputs)
        expected = (
            captum.attribute(tuple(inputs), baselines=baselines, **kwargs)
            if not method.startswith("layer_gradient")
            else captum.attribute(tuple(inputs))
        )
        rtol = 1e-4 if method in CAPTUM_QUADRATURE else 1e-5
        if method.startswith("layer"):
            assert_close(seq.target_attributions[:position, step], expected[0].detach(), rtol, f"step {step}")
            continue
        if hf_model.config.is_encoder_decoder:
            assert_close(
                seq.source_attributions[:, step], expected[0][0].detach(), rtol, f"step {step} source"
            )
        assert_close(
            seq.target_attributions[:position, step], expected[-1][0].detach(), rtol, f"step {step} target"
        )


def test_smooth_grad_equals_captum_noise_tunnel_with_the_same_seed():
    """Captum's NoiseTunnel, one input per token, global RNG seeded: the draws our fused path reproduces."""
    model = exact_model("gpt2", "smooth_grad", nt_samples=4, stdevs=0.1, seed=7, hidden_reduction=None)
    seq = model.attribute(PROMPTS[0], **RUN)[0]
    embed = model.model.get_input_embeddings()
    for step in range(seq.num_steps):
        position = seq.attr_pos_start + step
        tokens = embed(torch.tensor([seq.target_ids[:position]])).detach().unbind(1)
        forward = direct_forward(model.model, seq.target_ids[position])
        torch.manual_seed(7)
        np.random.seed(7)
        expected = NoiseTunnel(Saliency(lambda *t, f=forward: f(torch.stack(t, 1)))).attribute(
            tokens, nt_type="smoothgrad", nt_samples=4, stdevs=0.1
        )
        assert_close(seq.target_attributions[:position, step], torch.cat(expected), what=f"step {step}")


# --- axioms and analytic cases -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "architecture,baseline,n_steps",
    [("gpt2", "zeros", 200), ("llama", "unk", 300), ("bart", "zeros", 50), ("marian", "zeros", 50)],
)
def test_integrated_gradients_completeness(architecture, baseline, n_steps):
    """Sum of a step's attributions = f(input) - f(baseline) within 1%. (The tiny T5 and Qwen2 integrands
    oscillate so much that they need ~1000 points; the linear model below checks exactness.)"""
    model = exact_model(
        architecture,
        "integrated_gradients",
        n_steps=n_steps,
        baseline=baseline,
        return_convergence_delta=True,
    )
    out = model.attribute(PROMPTS, **RUN)
    for seq in out:
        total = sum(
            x.nan_to_num().sum(0) for x in (seq.source_attributions, seq.target_attributions) if x is not None
        )
        delta = seq.step_scores["convergence_delta"]
        gap = total - delta  # f(input) - f(baseline)
        assert (delta.abs() <= 0.01 * gap.abs()).all(), (delta, gap)
        assert_close(total, gap + delta)


class LinearObjective:
    """Step ``t`` scores ``sum_{p < position_t} <w_t, x_p>``: linear in the embeddings; causal."""

    def __init__(self, batch, hidden: int) -> None:
        self.batch = batch
        self.weights = torch.randn(
            batch.num_steps, hidden, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
        )

    def __call__(self, source, target, steps=slice(None), rows=None):
        positions = self.batch.step_positions[steps]
        visible = (torch.arange(target.shape[1])[None, :] < positions[:, None]).to(target.dtype)
        return torch.einsum("nph,kh,kp->nk", target, self.weights[steps], visible)


class VocabularyModel:
    """What the path methods ask of a model: embeddings of a vocabulary."""

    def __init__(self, vocabulary):
        self.vocabulary = vocabulary
        self.model = torch.nn.Embedding.from_pretrained(vocabulary)
        self.model.get_input_embeddings = lambda: self.model

    def embed(self, ids):
        return self.vocabulary[ids]


@pytest.mark.parametrize(
    "method,options",
    [
        (
            "integrated_gradients",
            dict(n_steps=3, integration_method="riemann_left", return_convergence_delta=True),
        ),
        ("integrated_gradients", dict(n_steps=1)),
        ("sequential_integrated_gradients", dict(n_steps=2)),
        ("discretized_integrated_gradients", dict(n_steps=4, n_neighbors=5)),
        ("discretized_integrated_gradients", dict(n_steps=4, n_neighbors=5, rule="left")),
        ("gradient_shap", dict(n_samples=2)),
        (
            "expected_gradients",
            dict(n_steps=2, n_baselines=3, references=torch.full((1, 8), 0.5, dtype=torch.float64)),
        ),
    ],
)
def test_path_methods_are_exact_on_a_linear_model(method, options):
    from seqattr.methods.base import MethodInputs, get_method_class
    from seqattr.models.batch import AttributionBatch, EncodedExample
    from seqattr.models.family import DECODER_ONLY

    vocabulary = torch.randn(30, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    examples = [EncodedExample([], [3, 4, 5, 6, 7, 8], 3, 6), EncodedExample([], [9, 10, 11, 12], 2, 4)]
    batch = AttributionBatch.from_examples(
        examples, pad_token_id=0, family=DECODER_ONLY, device=torch.device("cpu")
    )
    objective = LinearObjective(batch, 8)
    inputs = MethodInputs(
        batch, objective, None, vocabulary[batch.target_ids], attribute_source=False, attribute_target=True
    )
    baseline = options.get("references", torch.zeros(1, 8, dtype=torch.float64))[0]
    cls = get_method_class(method)
    output = cls(VocabularyModel(vocabulary)).attribute_fused(inputs, cls.parse_options(**options))
    expected = torch.einsum("bph,kh->bpk", inputs.target_embeds - baseline, objective.weights)
    visible = batch.visible_target()
    assert_close(output.target_attributions[visible], expected[visible], what=method)
    if "convergence_delta" in output.step_scores:
        assert output.step_scores["convergence_delta"][batch.step_mask].abs().max() < 1e-12


@pytest.mark.parametrize("architecture", ["t5", "llama"])
@pytest.mark.parametrize("fused", [True, False])
def test_discretized_integrated_gradients_is_bounded_at_a_zero_baseline(architecture, fused):
    """RMSNorm models without absolute positions have a near-singular gradient at the zero embedding (each
    norm scales a zero vector by 1/sqrt(eps)): the gradient at the baseline, taken by DIG's reference (left)
    rule, gave attributions of ~1e7 (Llama) to ~1e15 (T5) for a probability. The midpoint rule never
    evaluates there: attributions stay of the order of the probability, like IG's."""
    kwargs = dict(attribute_target=True, fused=fused, **RUN)
    dig = exact_model(architecture, "discretized_integrated_gradients", n_steps=8).attribute(
        PROMPTS, **kwargs
    )
    ig = exact_model(architecture, "integrated_gradients", n_steps=8).attribute(PROMPTS, **kwargs)

    def largest(out):
        return max(
            float(x.nan_to_num().abs().max())
            for seq in out
            for x in (seq.source_attributions, seq.target_attributions)
            if x is not None
        )

    assert largest(dig) < max(2.0, 20 * largest(ig)), (largest(dig), largest(ig))
    if fused:  # the reference rule still exists, and is what blows up
        left = exact_model(architecture, "discretized_integrated_gradients", n_steps=8, rule="left")
        assert largest(left.attribute(PROMPTS, **kwargs)) > 1e4


def test_monotonic_paths_run_from_the_baseline_to_the_word():
    from seqattr.methods.monotonic_paths import monotonic_paths

    vocabulary = torch.randn(40, 6, generator=torch.Generator().manual_seed(3))
    words, baselines = torch.tensor([1, 7, 7]), torch.stack([torch.zeros(6), torch.zeros(6), vocabulary[2]])
    for strategy in ("greedy", "maxcount"):
        paths = monotonic_paths(vocabulary, words, baselines, n_steps=8, strategy=strategy, n_neighbors=10)
        assert paths.shape == (9, 3, 6)
        assert torch.equal(paths[0], baselines) and torch.equal(paths[-1], vocabulary[words])
        steps = paths.diff(dim=0) * (vocabulary[words] - baselines).sign()
        assert (steps >= 0).all(), "every dimension moves monotonically from the baseline to the word"
        assert torch.isin(paths[1:-1], vocabulary).any(), "path points take anchor words' coordinates"


def test_expected_gradients_with_one_reference_is_integrated_gradients():
    vector = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = exact_model("gpt2", "integrated_gradients", n_steps=4, baseline=vector).attribute(
        PROMPTS, **RUN
    )
    pooled = exact_model("gpt2", "expected_gradients", n_steps=4, n_baselines=3, references=vector[None])
    for mine, reference in zip(pooled.attribute(PROMPTS, **RUN), expected, strict=True):
        assert_close(mine.target_attributions, reference.target_attributions)


def test_noise_tunnel_variants_fit_together():
    options = dict(nt_samples=4, stdevs=0.05, seed=3, hidden_reduction=None)
    smooth, square, var = (
        exact_model("bart", m, **options).attribute(PROMPTS[0], attribute_target=True, **RUN)[0]
        for m in ("smooth_grad", "square_grad", "var_grad")
    )
    for side in ("source_attributions", "target_attributions"):
        mean, mean_sq = getattr(smooth, side).double(), getattr(square, side).double()
        assert_close(
            getattr(var, side), mean_sq - mean * mean, what=side, scale=float(mean_sq.nan_to_num().max())
        )
    noiseless = exact_model("gpt2", "smooth_grad", stdevs=0.0, nt_samples=2).attribute(PROMPTS, **RUN)
    saliency = exact_model("gpt2", "saliency").attribute(PROMPTS, **RUN)
    for mine, reference in zip(noiseless, saliency, strict=True):
        assert_close(mine.target_attributions, reference.target_attributions)


# --- invariants: internal batch size, seeds ----------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        "integrated_gradients",
        "sequential_integrated_gradients",
        "expected_gradients",
        "gradient_shap",
        "smooth_grad",
        "discretized_integrated_gradients",
        "layer_integrated_gradients",
    ],
)
def test_internal_batch_size_does_not_change_results(method):
    model = exact_model("t5", method, **OPTIONS[method])
    whole = model.attribute(PROMPTS, attribute_target=True, **RUN)
    for size in (2, 5):  # one copy of the batch per block; an odd size rounds down to whole copies
        for mine, reference in zip(
            model.attribute(PROMPTS, attribute_target=True, internal_batch_size=size, **RUN),
            whole,
            strict=True,
        ):
            assert_sequences_close(mine, reference)


@pytest.mark.parametrize("method", ["gradient_shap", "var_grad", "expected_gradients"])
def test_seeds_reproduce_and_leave_the_global_rng_alone(method):
    model = exact_model("gpt2", method, **OPTIONS[method])
    state = torch.random.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()
    first, again = (model.attribute(PROMPTS[0], fused=fused, seed=5, **RUN)[0] for fused in (True, False))
    assert_sequences_close(first, again)
    assert (
        torch.equal(torch.random.get_rng_state(), state) and (np.random.get_state()[1] == numpy_state).all()
    )
    other = model.attribute(PROMPTS[0], seed=6, **RUN)[0]
    assert not torch.allclose(other.target_attributions.nan_to_num(), first.target_attributions.nan_to_num())


# --- errors ------------------------------------------------------------------------------------------------

BASELINE_METHODS = [
    "integrated_gradients",
    "deeplift",
    "gradient_shap",
    "sequential_integrated_gradients",
    "discretized_integrated_gradients",
    "layer_integrated_gradients",
    "layer_deeplift",
]


@pytest.mark.parametrize("method", BASELINE_METHODS)
def test_impossible_baselines_are_refused(method):
    model = exact_model("t5", method)
    with pytest.raises(
        ValueError, match=r"baseline tensor of shape \[3, 5\] does not broadcast .* give one \[64\]"
    ):
        model.attribute(PROMPTS[0], baseline=torch.zeros(3, 5, dtype=torch.float64), **RUN)
    with pytest.raises(ValueError, match="unknown baseline 'mask'"):
        model.attribute(PROMPTS[0], baseline="mask", **RUN)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.attribute(PROMPTS[0], baseline=10**6, **RUN)


def test_layer_errors_are_clear_and_leave_no_hook():
    model = exact_model("gpt2", "layer_integrated_gradients", n_steps=2)
    with pytest.raises(
        ValueError, match=r"no layer named 'transformer\.h\.O\.mlp'; close names: .*transformer\.h\.0\.mlp"
    ):
        model.attribute(PROMPTS[0], target_layer="transformer.h.O.mlp", **RUN)
    with pytest.raises(ValueError, match="one vector per token"):
        model.attribute(PROMPTS[0], target_layer="lm_head", **RUN)
    assert not any(m._forward_hooks for m in model.model.modules()), "a hook was left on the model"
    t5 = exact_model("t5", "layer_gradient_x_activation")
    with pytest.raises(ValueError, match="in the decoder.*pass attribute_target=True"):
        t5.attribute(PROMPTS[0], target_layer="decoder.block.0", **RUN)
    with pytest.raises(ValueError, match="in the encoder.*source positions only"):
        t5.attribute(
            PROMPTS[0], target_layer=t5.model.get_submodule("encoder.block.0"), attribute_target=True, **RUN
        )
    with pytest.raises(ValueError, match="integration_method"):
        seqattr.load_model(
            model.model, "integrated_gradients", tokenizer=model.tokenizer, integration_method="simpson"
        )


def test_deeplift_without_hooked_nonlinearities_is_input_x_gradient():
    """GPT-2 has no module Captum's DeepLIFT rewrites (its GELU is a custom module): with the zero baseline
    the rescale rule leaves (x - 0) * gradient at x, input x gradient."""
    deeplift = exact_model("gpt2", "deeplift", hidden_reduction=None).attribute(PROMPTS, **RUN)
    reference = exact_model("gpt2", "input_x_gradient", hidden_reduction=None).attribute(PROMPTS, **RUN)
    for mine, expected in zip(deeplift, reference, strict=True):
        assert_close(mine.target_attributions, expected.target_attributions)
