"""Perturbation methods: the cost of occlusion in model rows, tokens a step cannot see, seeds, and the pieces
of mathematics of our own (the linear surrogate, KernelSHAP's weights, Sobol estimators) against independent
formulas. Fused (each perturbed sequence run once for all steps) == the stepwise reference (Captum's
Occlusion / FeatureAblation / Lime on each step's prefix; our own loop for Sobol), and batched == single, are
rows of the invariants table (tests/test_invariants.py), source-only attribution included.

Exactness runs on float64 copies of the tiny models (tests/exact.py) and attributes ``probability64``.
"""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion

import seqattr
from exact import (
    assert_close,
    assert_sequences_close,
    exact_model,
    float64_model,
    probability64,
)
from seqattr.methods import perturbation
from seqattr.methods.kernel_shap import shapley_size_distribution
from seqattr.methods.lime import fit_linear
from seqattr.methods.occlusion import Occlusion, window_count
from seqattr.methods.sobol import sobol_design, total_indices
from seqattr.testing import tiny_model

PROMPTS = ["The cat sat on the mat.", "Paris is a city"]
CONTINUATIONS = [" The dog ran", " in France"]
TRANSLATIONS = ["Die Katze sitzt.", "Das Haus"]


def attribute(model: seqattr.AttributionModel, architecture: str, fused: bool, **kwargs):
    if model.is_encoder_decoder:
        generated = TRANSLATIONS
    else:
        generated = [p + c for p, c in zip(PROMPTS, CONTINUATIONS, strict=True)]
    return model.attribute(
        PROMPTS,
        generated,
        attribute_target=True,
        show_progress=False,
        fused=fused,
        attributed_fn=probability64,
        **kwargs,
    )


def test_occlusion_costs_one_row_per_feature_plus_one(monkeypatch):
    """Counted: rows (sequences) through the Hugging Face model's forward while the method runs (the engine's
    separate step-score pass is not the method's). L features cost L + 1 rows for all steps together."""
    model = exact_model("gpt2", "occlusion")
    hf_model = model.model
    counting = {"on": False, "rows": 0, "calls": 0}

    def count(module, args, kwargs):
        if counting["on"]:
            counting["rows"] += kwargs["inputs_embeds"].shape[0]
            counting["calls"] += 1

    original = Occlusion.attribute_fused

    def counted(self, inputs, options):
        counting["on"] = True
        try:
            return original(self, inputs, options)
        finally:
            counting["on"] = False

    monkeypatch.setattr(Occlusion, "attribute_fused", counted)
    handle = hf_model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        out = attribute(model, "gpt2", fused=True)
    finally:
        handle.remove()
    features = [len(example["features"]["target"]) for example in out.info["method_info"]["examples"]]
    steps = [seq.num_steps for seq in out]
    assert min(steps) >= 2 and min(features) >= 5
    assert counting["rows"] == sum(n + 1 for n in features)
    # One call for the clean rows (their key/value cache), then one per first occluded position: prefix
    # reuse runs a call from its rows' first perturbed position on (tests/test_prefix_reuse.py).
    assert counting["calls"] <= 1 + max(features)
    # The stepwise loop runs each step's occlusions on its own: far more rows.
    counting.update(on=False, rows=0)


CHUNK_CASES = [
    # (architecture, method, options, contrast): decoder-only models chunk rows and steps (the forward keeps
    # only the steps' logits), encoder-decoder models chunk rows; a contrast doubles the logits per call.
    ("gpt2", "occlusion", {}, False),
    ("llama", "lime", {"n_samples": 12, "seed": 1}, False),
    ("gpt2", "sobol", {"n_designs": 4, "seed": 3}, True),
    ("bart", "occlusion", {"window": 2}, False),
    ("t5", "kernel_shap", {"n_samples": 12, "seed": 2}, False),
]


@pytest.mark.parametrize(("architecture", "method", "options", "contrast"), CHUNK_CASES)
def test_fused_scores_are_chunked_within_the_byte_budget(
    monkeypatch, architecture, method, options, contrast
):
    """With a tiny ``_CHUNK_BYTES`` the fused run scores one row of 2 steps (decoder-only) or 2 rows of all
    steps (encoder-decoder) per forward call: the step function never sees more logits than the budget
    allows, and the results are those of the unchunked run up to float64 rounding."""
    model = exact_model(architecture, method, **options)
    seen = []

    def step_function(args):
        seen.append(tuple(args.logits.shape))
        score = probability64(args)
        return score - args.contrast_logits.softmax(-1).amax(-1) if contrast else score

    kwargs = {"attributed_fn": step_function}
    if contrast:
        kwargs["contrast_targets"] = [p + " The cat ran" for p in PROMPTS]
    if model.is_encoder_decoder:
        generated = TRANSLATIONS
    else:
        generated = [p + c for p, c in zip(PROMPTS, CONTINUATIONS, strict=True)]

    def run():
        seen.clear()
        out = model.attribute(PROMPTS, generated, attribute_target=True, show_progress=False, **kwargs)
        return out, list(seen)

    monkeypatch.setattr(perturbation, "_CHUNK_BYTES", 2**40)
    whole, whole_calls = run()

    budgets = []
    original = perturbation.score_chunks

    def tiny_budget(setup, steps=slice(None), cached=False):
        batch, embeds = setup.batch, setup.inputs.target_embeds
        source_len = batch.source_ids.shape[1] if batch.source_ids is not None else 0
        per_row = (batch.target_ids.shape[1] + source_len) * embeds.shape[-1] * embeds.element_size()
        vocab = model.model.get_output_embeddings().weight.shape[0]
        per_logits = vocab * embeds.element_size() * (2 if contrast else 1)
        if model.is_encoder_decoder:  # logits at every target position of the prefix, for 2 rows
            vectors = int(batch.step_positions.max())
            budget = 2 * (per_row + vectors * per_logits)
        else:  # one row's embeddings and the logits of 2 steps
            vectors = 2
            budget = per_row + vectors * per_logits
        monkeypatch.setattr(perturbation, "_CHUNK_BYTES", budget)
        budgets.append((budget, per_row, per_logits, vectors, batch.num_steps))
        return original(setup, steps, cached)

    monkeypatch.setattr(perturbation, "score_chunks", tiny_budget)
    chunked, chunked_calls = run()
    budget, per_row, per_logits, vectors, num_steps = budgets[0]
    assert all(steps == num_steps for _, steps, _ in whole_calls)
    rows_run = sum(rows for rows, _, _ in whole_calls)
    assert sum(rows * steps for rows, steps, _ in chunked_calls) == rows_run * num_steps  # each score once
    assert len(chunked_calls) > len(whole_calls)
    for rows, steps, _ in chunked_calls:
        if model.is_encoder_decoder:
            assert rows <= 2 and steps == num_steps
        else:
            assert rows == 1 and steps <= 2
            vectors = steps
        assert rows * (per_row + vectors * per_logits) <= budget
    # Equal up to float64 rounding: rows batched differently round differently in the last bits (a float64
    # model's outputs are float64, so these bits are no longer rounded away by a float32 output).
    for a, b in zip(chunked, whole, strict=True):
        assert_sequences_close(a, b, rtol=1e-12)
    assert chunked.info["method_info"] == whole.info["method_info"]


def test_occluding_a_token_after_the_step_gives_zero():
    """Captum's Occlusion over the whole sequence, scoring one step: tokens at or after the predicted one
    change nothing (exactly 0), and the earlier ones equal the fused result."""
    model = exact_model("llama", "occlusion", granularity="all_tokens")
    hf_model, _ = float64_model("llama")
    seq = attribute(model, "llama", fused=True)[1]
    ids = torch.tensor([seq.target_ids])
    embeds = hf_model.get_input_embeddings()(ids).detach()
    for step in range(seq.num_steps):
        position = seq.attr_pos_start + step

        def forward(x, position=position):
            logits = hf_model(inputs_embeds=x).logits[:, position - 1]
            return torch.softmax(logits, -1)[:, seq.target_ids[position]]

        captum = CaptumOcclusion(forward).attribute(embeds, sliding_window_shapes=(1, embeds.shape[-1]))
        per_token = captum[0].sum(-1) / embeds.shape[-1]
        assert torch.equal(per_token[position:], torch.zeros_like(per_token[position:]))
        assert_close(seq.target_attributions[:position, step], per_token[:position], what=f"step {step}")


@pytest.mark.parametrize("method", ["lime", "kernel_shap", "sobol"])
def test_same_seed_same_numbers(method):
    options = {"n_designs": 4} if method == "sobol" else {"n_samples": 10}
    model = exact_model("gpt2", method, **options)
    first = attribute(model, "gpt2", fused=True, seed=7)
    again = attribute(model, "gpt2", fused=True, seed=7)
    other = attribute(model, "gpt2", fused=True, seed=8)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.target_attributions.nan_to_num(), b.target_attributions.nan_to_num())
    assert not torch.equal(
        first[0].target_attributions.nan_to_num(), other[0].target_attributions.nan_to_num()
    )
    # Without a seed one is drawn and recorded: passing it back reproduces the run.
    drawn = attribute(model, "gpt2", fused=True)
    seed = drawn.info["method_info"]["seed"]
    replay = attribute(model, "gpt2", fused=True, seed=seed)
    assert torch.equal(drawn[0].target_attributions.nan_to_num(), replay[0].target_attributions.nan_to_num())


def test_inference_mode_measures_the_chosen_quantity():
    model = exact_model("t5", "feature_ablation")
    by_mode = attribute(model, "t5", fused=True, inference_mode="logits")
    direct = model.attribute(
        PROMPTS, TRANSLATIONS, attribute_target=True, show_progress=False, attributed_fn="logit"
    )
    for a, b in zip(by_mode, direct, strict=True):
        assert_close(a.source_attributions, b.source_attributions)
    assert by_mode.info["method_info"]["measured_step_function"] == "logit"


def test_kernel_shap_attributions_sum_to_the_full_effect():
    """Efficiency: a step's Shapley values add up to f(all kept) - f(all removed) (here: zero embeddings)."""
    model = exact_model("gpt2", "kernel_shap", n_samples=60, seed=0)
    hf_model, _ = float64_model("gpt2")
    seq = attribute(model, "gpt2", fused=True)[0]
    ids = torch.tensor([seq.target_ids])
    embeds = hf_model.get_input_embeddings()(ids).detach()
    for step in range(seq.num_steps):
        position = seq.attr_pos_start + step
        target = seq.target_ids[position]
        with torch.no_grad():
            kept = torch.softmax(hf_model(inputs_embeds=embeds[:, :position]).logits[0, -1], -1)[target]
            zeros = torch.zeros_like(embeds[:, :position])
            removed = torch.softmax(hf_model(inputs_embeds=zeros).logits[0, -1], -1)[target]
        total = float(seq.target_attributions[:position, step].sum())
        assert abs(total - float(kept - removed)) <= 1e-4 * abs(float(kept - removed)) + 1e-8


def test_linear_surrogate_is_weighted_ridge_regression():
    generator = torch.Generator().manual_seed(0)
    masks = torch.bernoulli(torch.full((40, 5), 0.5), generator=generator)
    targets = (
        masks @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.7 + 0.01 * torch.randn(40, generator=generator)
    )
    weights = torch.rand(40, generator=generator) + 0.1
    for alpha in (0.0, 1.0):
        coefficients, intercept = fit_linear(masks, targets, weights, alpha)
        # Closed form: centre by the weighted means (free intercept), then solve the ridge normal equations.
        x, y, w = masks.double().numpy(), targets.double().numpy(), weights.double().numpy()
        x_mean, y_mean = (w @ x) / w.sum(), (w @ y) / w.sum()
        xc, yc = x - x_mean, y - y_mean
        expected = np.linalg.solve(xc.T @ (w[:, None] * xc) + alpha * np.eye(5), xc.T @ (w * yc))
        np.testing.assert_allclose(coefficients.numpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(intercept), y_mean - x_mean @ expected, rtol=1e-5, atol=1e-6)


def test_kernel_shap_masks_read_on_fewer_features_are_kernel_shap_masks():
    """Why every step may use Captum's weights (1, endpoints large): masks drawn over M features and read on
    the first m follow, for 0 < j < m kept features, the KernelSHAP law for m (exact enumeration)."""
    for total in range(3, 16):
        law = shapley_size_distribution(total)
        for seen in range(2, total + 1):
            kept = [
                sum(
                    float(law[k - 1]) * comb(k, j) * comb(total - k, seen - j) / comb(total, seen)
                    for k in range(1, total)
                )
                for j in range(1, seen)
            ]
            kept = torch.tensor(kept, dtype=torch.float64)
            assert torch.allclose(kept / kept.sum(), shapley_size_distribution(seen), atol=1e-12)
    # p(k) for M = 5 by hand: (M - 1) / (k (M - k)) = 1, 2/3, 2/3, 1, normalised.
    assert torch.allclose(
        shapley_size_distribution(5), torch.tensor([1, 2 / 3, 2 / 3, 1], dtype=torch.float64) * 0.3
    )
    # The sampler follows that law, and the weights are Captum's.
    method_class = seqattr.methods.get_method_class("kernel_shap")
    options, method = method_class.parse_options(n_samples=4000), method_class(None)
    masks = method.draw_masks(8, options, torch.Generator().manual_seed(0))
    assert masks[0].all() and not masks[1].any()
    counts = torch.bincount(masks[2:].sum(1).long(), minlength=9)[1:8].double()
    assert torch.allclose(counts / counts.sum(), shapley_size_distribution(8), atol=0.03)
    weights = method.sample_weights(torch.tensor([0, 1, 2, 3]), 3, 8, options)
    assert weights.tolist() == [1e6, 1.0, 1.0, 1e6]


def test_sobol_estimators_follow_the_reference_formulas():
    """Total indices against a loop transcription of Fel et al.'s reference estimators (xplique)."""
    generator = torch.Generator().manual_seed(0)
    n, d = 16, 3
    a = torch.randn(n, generator=generator).double().numpy()
    c = torch.randn(d, n, generator=generator).double().numpy()
    var = np.sum((a - a.mean()) ** 2) / (n - 1)
    reference = {
        "jansen": [np.sum((a - c[i]) ** 2) / (2 * n * var) for i in range(d)],
        "homma": [(var - np.sum(a * c[i]) / n + a.mean() ** 2) / var for i in range(d)],
        "janon": [
            1
            - (np.sum(a * c[i]) / n - (np.sum(a + c[i]) / n / 2) ** 2)
            / (np.sum(a**2 + c[i] ** 2) / (n - 1) / 2 - (np.sum(a + c[i]) / n / 2) ** 2)
            for i in range(d)
        ],
        "glen": [
            1 - np.sum((a - a.mean()) * (c[i] - c[i].mean())) / (n - 1) / np.sqrt(np.var(a) * np.var(c[i]))
            for i in range(d)
        ],
    }
    for estimator, expected in reference.items():
        got = total_indices(torch.from_numpy(a), torch.from_numpy(c), estimator)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, err_msg=estimator)
    # A score that depends on feature 0 only: feature 1's total index is exactly 0.
    design_a, design_c = sobol_design(2, 64, seed=0)
    score = lambda x: x[..., 0] ** 2  # noqa: E731
    indices = total_indices(score(design_a), score(design_c), "jansen")
    assert abs(float(indices[0]) - 1) < 0.2 and indices[1] == 0  # analytically 1 and 0


@pytest.mark.parametrize("estimator", ["jansen", "homma", "janon", "glen"])
def test_sobol_indices_of_a_constant_step_are_zero(estimator):
    """A score constant up to rounding (relative spread ~eps) used to give indices of pure noise (up to
    ~2); a small real effect next to it (relative spread 1e-4, in float32) keeps its indices."""
    design_a, design_c = sobol_design(3, 32, seed=0)
    generator = torch.Generator().manual_seed(0)

    def rounding(shape):  # ~1 float32 eps of relative noise around 0.7
        return 0.7 * (1 + torch.finfo(torch.float32).eps * torch.randn(shape, generator=generator))

    real = lambda x: 0.7 * (1 + 1e-4 * (x[..., 0] + x[..., 1] * x[..., 2]))  # noqa: E731
    a = torch.stack([rounding(32), real(design_a)], -1).float()  # [n, steps]: a constant and a real step
    c = torch.stack([rounding((3, 32)), real(design_c)], -1).float()
    indices = total_indices(a, c, estimator)
    assert indices[:, 0].abs().max() == 0
    unguarded = total_indices(a[:, 1:], c[..., 1:], estimator)[:, 0]
    assert unguarded.abs().max() > 0.1
    torch.testing.assert_close(indices[:, 1], unguarded, rtol=1e-12, atol=0)
    # The same noise in float64 is a real spread (700 million eps): not treated as a constant.
    assert total_indices(a.double(), c.double(), estimator)[:, 0].abs().max() > 0.01
    # A model's epsilon coarser than the scores' dtype (float16 model, float32 scores) widens the guard.
    half = torch.finfo(torch.float16).eps
    assert total_indices(a, c, estimator, eps=half)[:, 1].abs().max() == 0


def total_probability(args):
    """sum(softmax(logits)) = 1 whatever the input: only rounding varies between perturbed sequences."""
    return args.logits.softmax(-1).sum(-1)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("exact", [False, True])
def test_sobol_of_a_constant_objective_is_zero(fused, exact):
    """Before: indices up to ~1.9 (float32) and ~1.4 (float64) from dividing rounding by rounding."""
    if exact:
        model = exact_model("t5", "sobol", n_designs=8, seed=0)
    else:
        hf_model, tokenizer = tiny_model("t5")
        model = seqattr.load_model(hf_model, "sobol", tokenizer=tokenizer, n_designs=8, seed=0)
    seq = model.attribute(
        "The cat sat on the mat.",
        "Le chat est sur la table.",
        attributed_fn=total_probability,
        attribute_target=True,
        fused=fused,
        show_progress=False,
    )[0]
    for attributions in (seq.source_attributions, seq.target_attributions):
        assert attributions.nan_to_num().abs().max() == 0


def test_window_count_follows_captum():
    assert [window_count(d, 3, 2) for d in range(0, 8)] == [0, 1, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("occlusion", {"granularity": "paragraph"}, "unknown granularity"),
        ("occlusion", {"window": 2, "stride": 3}, "stride must be"),
        ("feature_ablation", {"window": 2}, "unknown option"),
        ("lime", {"inference_mode": "probits"}, "unknown inference_mode"),
        ("kernel_shap", {"alpha": 1.0}, "unknown option"),
        ("sobol", {"n_designs": 10}, "power of two"),
        ("sobol", {"estimator": "saltelli"}, "unknown estimator"),
        ("occlusion", {"baseline": "mask"}, "unknown baseline"),
    ],
)
def test_wrong_options_are_refused(method, options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        exact_model("gpt2", method, **options)
