"""Prompt-only attribution on decoder-only models (``attribute_target=False``, Captum's convention).

The generated prefix is held at its tokens: its rows are NaN, it is never a perturbation feature, and a path
method's baseline there is the input itself. Checked against Captum's own LLM attribution (feature ablation in
both forward modes, layer integrated gradients on the input embeddings), against the completeness identity
``sum(prompt attributions) = f(x) - f(prompt at baseline, generated prefix as is)`` computed by transformers
directly, fused against stepwise, and the default (whole target) left as it was.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from captum.attr import (
    FeatureAblation,
    LayerIntegratedGradients,
    LLMAttribution,
    LLMGradientAttribution,
    TextTokenInput,
)

import seqattr
from conftest import attribution_model
from exact import assert_close, exact_model, float64_model
from seqattr.cli import build_parser
from seqattr.testing import tiny_model

PROMPT = "the cat sat on the mat"
FULL = PROMPT + " and the dog"
PROMPTS = [PROMPT, "a dog runs"]
FORCED = [FULL, "a dog runs in the park"]


def prompt_and_target(tokenizer) -> tuple[list[int], torch.Tensor]:
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    return prompt_ids, torch.tensor(tokenizer(FULL)["input_ids"][len(prompt_ids) :])


def check_prefix_held(seq: seqattr.SequenceAttribution, prompt_len: int) -> None:
    """The generated prefix's rows are NaN at every step; the prompt's rows are numbers."""
    assert seq.target_attributions[prompt_len:].isnan().all()
    assert not seq.target_attributions[:prompt_len].isnan().any()


@pytest.mark.parametrize("forward_in_tokens", [False, True], ids=["by_seq", "by_tokens"])
@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_feature_ablation_equals_captum_llm_attribution(architecture, forward_in_tokens):
    """Captum ablates each prompt token to its baseline token (id 0) and measures every target token's
    log-probability; seqattr's prompt-only feature ablation of ``logprob`` with ``baseline=0`` is that,
    number by number. Llama's BOS is special: never a feature in seqattr, skipped for Captum."""
    hf_model, tokenizer = tiny_model(architecture)
    prompt_ids, target = prompt_and_target(tokenizer)
    model = attribution_model(architecture, "feature_ablation")
    out = model.attribute(
        PROMPT, FULL, attribute_target=False, attributed_fn="logprob", baseline=0, show_progress=False
    )
    seq = out[0]
    assert out.info["attribute_target"] is False and out.info["prompt_only"] is True
    check_prefix_held(seq, len(prompt_ids))
    special = [i for i in prompt_ids if i in tokenizer.all_special_ids]
    features = [p for p, i in enumerate(prompt_ids) if i not in special]
    # Captum 0.9.0's cached token-by-token loop (its default use_cached_outputs=True) gives other numbers
    # than a full forward from the second target token on, with transformers 5; without the cache its
    # by-token forward is the exact one.
    captum = LLMAttribution(FeatureAblation(hf_model), tokenizer).attribute(
        TextTokenInput(PROMPT, tokenizer, skip_tokens=special),
        target=target,
        forward_in_tokens=forward_in_tokens,
        use_cached_outputs=False,
    )
    ours = seq.target_attributions[features].T  # [target tokens, prompt features]
    assert_close(ours, captum.token_attr.cpu().to(ours.dtype), 1e-5, "feature_ablation vs Captum")


@pytest.mark.parametrize("method", ["integrated_gradients", "layer_integrated_gradients"])
@pytest.mark.parametrize("architecture", ["gpt2", "qwen2"])
def test_integrated_gradients_equal_captum_llm_gradient_attribution(architecture, method):
    """Captum's layer IG on the input embeddings interpolates the prompt from its baseline token (id 0)
    while the generated prefix, identical in the input and the baseline, stays put; per target token."""
    hf_model, tokenizer = tiny_model(architecture)
    prompt_ids, target = prompt_and_target(tokenizer)
    options = {"target_layer": hf_model.get_input_embeddings()} if method.startswith("layer") else {}
    model = attribution_model(architecture, method, hidden_reduction="sum", baseline=0, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 50 points on a random model: completeness is not the point here
        seq = model.attribute(
            PROMPT, FULL, attribute_target=False, attributed_fn="logprob", show_progress=False
        )[0]
    check_prefix_held(seq, len(prompt_ids))
    captum = LLMGradientAttribution(
        LayerIntegratedGradients(hf_model, hf_model.get_input_embeddings()), tokenizer
    ).attribute(TextTokenInput(PROMPT, tokenizer), target=target)
    ours = seq.target_attributions[: len(prompt_ids)].T
    assert_close(ours, captum.token_attr.cpu().to(ours.dtype), 1e-4, f"{method} vs Captum")


def step_logprobs(hf_model, embeds: torch.Tensor, target_ids: list[int], start: int) -> torch.Tensor:
    """log p(token t | embeddings before t) for every explained position t >= start, by transformers."""
    logits = hf_model(inputs_embeds=embeds[None]).logits[0].log_softmax(-1)
    return torch.stack([logits[t - 1, target_ids[t]] for t in range(start, len(target_ids))])


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "stepwise"])
@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_integrated_gradients_completeness_holds_the_prefix(architecture, fused):
    """sum over the prompt = f(x) - f(prompt at the baseline, generated prefix as is), for every step."""
    # A token baseline: a zero embedding sits at RMSNorm's singularity (llama), far from converging.
    model = exact_model(architecture, "integrated_gradients", n_steps=300, baseline=0)
    seq = model.attribute(
        PROMPT, FULL, attribute_target=False, attributed_fn="logprob", fused=fused, show_progress=False
    )[0]
    prompt_len = seq.attr_pos_start
    check_prefix_held(seq, prompt_len)
    hf_model = float64_model(architecture)[0]
    ids = torch.tensor(seq.target_ids)
    with torch.no_grad():
        embeds = hf_model.get_input_embeddings()(ids)
        held = embeds.clone()
        held[:prompt_len] = hf_model.get_input_embeddings()(torch.tensor(0))
        gap = step_logprobs(hf_model, embeds, seq.target_ids, prompt_len) - step_logprobs(
            hf_model, held, seq.target_ids, prompt_len
        )
    totals = seq.target_attributions[:prompt_len].sum(0)
    assert_close(totals, gap, 1e-4, "prompt-only completeness")
    # Not the whole-target identity: moving the generated prefix too changes the numbers.
    whole = model.attribute(PROMPT, FULL, attributed_fn="logprob", fused=fused, show_progress=False)[0]
    assert not torch.allclose(whole.target_attributions[:prompt_len], seq.target_attributions[:prompt_len])


METHODS = [
    ("saliency", {}),
    ("input_x_gradient", {}),
    ("integrated_gradients", {"n_steps": 8}),
    ("layer_integrated_gradients", {"n_steps": 8}),
    ("expected_gradients", {"n_steps": 4, "n_baselines": 2}),
    ("smooth_grad", {"nt_samples": 3}),
    ("feature_ablation", {}),
    ("occlusion", {}),
    ("kernel_shap", {"n_samples": 20}),
    ("attention", {}),
    ("value_zeroing", {}),
]


@pytest.mark.parametrize("method,options", METHODS, ids=[m for m, _ in METHODS])
def test_fused_equals_stepwise_and_prefix_is_not_attributed(method, options):
    """Two prompts of different lengths in one batch: fused == stepwise (float64), prefix rows NaN."""
    model = exact_model("gpt2", method, **options)
    outs = []
    for fused in (True, False):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outs.append(
                model.attribute(PROMPTS, FORCED, attribute_target=False, fused=fused, show_progress=False)
            )
    tokenizer = tiny_model("gpt2")[1]
    for prompt, fused_seq, stepwise_seq in zip(PROMPTS, *outs, strict=True):
        prompt_len = len(tokenizer(prompt)["input_ids"])
        check_prefix_held(fused_seq, prompt_len)
        rtol = 1e-3 if method == "kernel_shap" else 1e-5  # its linear solve differs by summation order
        assert_close(fused_seq.target_attributions, stepwise_seq.target_attributions, rtol, method)


@pytest.mark.parametrize("method", ["integrated_gradients", "feature_ablation", "kernel_shap"])
def test_prompt_only_moves_only_the_prompt(method):
    """Methods whose prompt numbers depend on the prefix moving differ between the conventions; a path
    method's and a coalition method's do. Single-token ablation does not (the prefix is never ablated
    together with a prompt token), so its prompt rows stay equal: only the prefix rows go."""
    model = attribution_model("gpt2", method)
    whole, prompt_only = (
        model.attribute(PROMPT, FULL, attribute_target=flag, show_progress=False)[0] for flag in (None, False)
    )
    prompt_len = whole.attr_pos_start
    same = torch.allclose(
        whole.target_attributions[:prompt_len], prompt_only.target_attributions[:prompt_len]
    )
    assert same == (method == "feature_ablation")


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency"])
def test_default_is_unchanged_and_means_the_whole_target(method):
    """attribute_target=None (the default) and True both move the whole target on a decoder-only model."""
    model = attribution_model("gpt2", method)
    default, explicit = (
        model.attribute(PROMPT, FULL, show_progress=False, **kwargs)
        for kwargs in ({}, {"attribute_target": True})
    )
    assert default.info["attribute_target"] is None and "prompt_only" not in default.info
    torch.testing.assert_close(
        default[0].target_attributions, explicit[0].target_attributions, equal_nan=True
    )
    assert not default[0].target_attributions[default[0].attr_pos_start :, -1].isnan().all()


def test_encoder_decoder_false_is_source_only_as_before():
    model = attribution_model("t5")
    out = model.attribute("Hello world", "Hallo Welt", attribute_target=False, show_progress=False)
    assert out[0].target_attributions is None and "prompt_only" not in out.info


def test_views_aggregation_and_save_load_keep_the_held_rows(tmp_path):
    model = attribution_model("gpt2", "input_x_gradient")
    out = model.attribute(PROMPT, FULL, attribute_target=False, show_progress=False)
    path = tmp_path / "out.json"
    out.save(path)
    loaded = seqattr.load(path)
    assert loaded.info["prompt_only"] is True
    torch.testing.assert_close(loaded[0].target_attributions, out[0].target_attributions, equal_nan=True)
    words = out.aggregate("word")[0]
    assert words.target_attributions.shape[0] < out[0].target_attributions.shape[0]
    out.show()  # the console view renders the NaN rows as not attributed


def test_stepwise_noise_tunnel_refuses_prompts_ending_apart():
    """Captum's noise tunnel takes one stdev per input token for the whole batch: a batch whose prompts end
    at different padded positions (a custom window) cannot hold each one's prefix; the error says so."""
    model = attribution_model("gpt2", "smooth_grad", nt_samples=2)
    with pytest.raises(ValueError, match="prompt only.*use fused=True, batch_size=1"):
        model.attribute(
            PROMPTS, FORCED, attribute_target=False, attr_pos_start=-1, fused=False, show_progress=False
        )


def test_cli_flags():
    parser = build_parser()
    base = ["attribute", "--input-texts", "hello"]
    assert parser.parse_args(base).attribute_target is None
    assert parser.parse_args([*base, "--prompt-only"]).attribute_target is False
    assert parser.parse_args([*base, "--attribute-target"]).attribute_target is True
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--prompt-only", "--attribute-target"])


def test_gradient_shap_holds_the_prefix_fused_and_stepwise():
    """Noise and baseline leave the prefix alone on both paths; stepwise (Captum's shared baseline
    distribution) takes one example per batch, and says so for more."""
    model = exact_model("gpt2", "gradient_shap", stdevs=0.5, n_samples=3)
    fused, stepwise = (
        model.attribute(PROMPTS, FORCED, attribute_target=False, fused=f, batch_size=1, show_progress=False)
        for f in (True, False)
    )
    for seq, other in zip(fused, stepwise, strict=True):
        check_prefix_held(seq, seq.attr_pos_start)
        assert_close(seq.target_attributions, other.target_attributions, 1e-5, "gradient_shap")
    with pytest.raises(ValueError, match="one example per batch.*use fused=True or batch_size=1"):
        model.attribute(PROMPTS, FORCED, attribute_target=False, fused=False, show_progress=False)


def test_evaluation_removes_prompt_tokens_only():
    """A prompt-only output's faithfulness curves remove prompt tokens: its generated prefix has no scores
    and is never a feature (it was never a feature of the attribution either)."""
    from seqattr.evaluation.faithfulness import _SequenceRun, evaluated_step_function

    model = attribution_model("gpt2", "saliency")
    out = model.attribute(PROMPTS, FORCED, attribute_target=False, show_progress=False)
    assert out.info["prompt_lengths"] == [out[0].attr_pos_start, out[1].attr_pos_start]
    step_function = evaluated_step_function(out.info)[2]
    for seq, prompt_len in zip(out, out.info["prompt_lengths"], strict=True):
        run = _SequenceRun(model, seq, step_function, "zeros", prompt_len)
        assert [position for _, position in run.positions] == list(range(prompt_len))
        assert not run.scores.isnan().any()
    means = model.evaluate(out, metrics=["comprehensiveness", "sufficiency"]).means()
    assert all(value == value for value in means.values())  # no NaN


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "stepwise"])
@pytest.mark.parametrize("method", ["layer_integrated_gradients", "layer_deeplift"])
def test_layer_path_methods_inside_the_decoder_are_refused(method, fused):
    """Inside the decoder a layer's baseline activations move at the generated prefix too (it reads the
    prompt): the prefix would not be held, so prompt-only is refused there, naming the fix."""
    model = attribution_model("gpt2", method, target_layer="transformer.h.0")
    with pytest.raises(ValueError, match="prompt only.*transformer.h.0.*use target_layer=None"):
        model.attribute(PROMPT, FULL, attribute_target=False, fused=fused, show_progress=False)
    model.attribute(PROMPT, FULL, fused=fused, show_progress=False)  # the default convention runs there


@pytest.mark.filterwarnings("ignore")
def test_reagent_never_replaces_the_generated_prefix():
    """ReAGent builds its own features: prompt-only, they are prompt tokens only (the prefix is never
    replaced), and the prefix rows are not attributed."""
    model = exact_model("gpt2", "reagent", num_probes=2, max_probe_steps=4)
    tokenizer = tiny_model("gpt2")[1]
    seq = model.attribute(PROMPTS[0], FORCED[0], attribute_target=False, show_progress=False)[0]
    prompt_len = len(tokenizer(PROMPTS[0])["input_ids"])
    spans = seq.features["target"]
    assert spans and all(end <= prompt_len for _, end in spans)
    check_prefix_held(seq, prompt_len)
    whole = model.attribute(PROMPTS[0], FORCED[0], show_progress=False)[0]
    assert any(end > prompt_len for _, end in whole.features["target"])  # the default: the prefix too
