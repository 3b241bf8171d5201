"""Prefix reuse (`seqattr.models.prefix_reuse`): a decoder-only perturbed row's pass starts at its first
perturbed position, after the clean pass's key/value cache. It is an optimisation: every number is the one
the full forward gives (float64 tiny models, 1e-9), and the positions the model computes drop to about half
for single-token ablation (counted with a hook on the model's forward).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import pytest
import torch

import seqattr
from exact import exact_model, float64_model, probability64
from seqattr.methods import perturbation
from seqattr.methods.occlusion import Occlusion
from seqattr.models import prefix_reuse
from seqattr.testing import DECODER_ONLY, tiny_model

PROMPTS = ["The cat sat on the mat.", "Paris is a city"]
"""Prompts of different lengths: the batch is left-padded, so first perturbed positions are padded ones."""
CONTINUATIONS = [" The dog ran", " in France"]
TOLERANCE = 1e-9


def generated() -> list[str]:
    return [p + c for p, c in zip(PROMPTS, CONTINUATIONS, strict=True)]


@contextlib.contextmanager
def positions_counted(model: seqattr.AttributionModel) -> Iterator[dict[str, int]]:
    """Positions (rows x inputs) the Hugging Face model computes inside the block, every pass counted."""
    counted = {"positions": 0}

    def count(module, args, kwargs):
        counted["positions"] += kwargs["inputs_embeds"].shape[0] * kwargs["inputs_embeds"].shape[1]

    handle = model.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield counted
    finally:
        handle.remove()


def attribute(
    model: seqattr.AttributionModel, reuse: bool, monkeypatch, **kwargs
) -> seqattr.AttributionOutput:
    """``model.attribute`` on the padded batch with prefix reuse on or off; ``out.info["positions"]`` holds
    the positions it computed."""
    monkeypatch.setattr(prefix_reuse, "ENABLED", reuse)
    kwargs.setdefault("attributed_fn", probability64)
    with positions_counted(model) as counted:
        out = model.attribute(
            PROMPTS, generated(), show_progress=False, step_scores=["probability"], **kwargs
        )
    out.info["positions"] = counted["positions"]
    return out


def assert_same(reused: seqattr.AttributionOutput, full: seqattr.AttributionOutput) -> None:
    """Same attributions (NaN at the same places) and step scores, to ``TOLERANCE``; reuse did run (fewer
    positions computed)."""
    assert reused.info.pop("positions") < full.info.pop("positions")
    assert len(reused) == len(full)
    for a, b in zip(reused, full, strict=True):
        assert a.target_attributions.dtype == torch.float64
        assert torch.equal(a.target_attributions.isnan(), b.target_attributions.isnan())
        torch.testing.assert_close(
            a.target_attributions, b.target_attributions, rtol=0, atol=TOLERANCE, equal_nan=True
        )
        assert a.step_scores.keys() == b.step_scores.keys()
        for name in a.step_scores:
            torch.testing.assert_close(a.step_scores[name], b.step_scores[name], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("architecture", DECODER_ONLY)
@pytest.mark.parametrize("method", ["occlusion", "feature_ablation"])
@pytest.mark.parametrize("attribute_target", [None, False])
def test_perturbation_methods_give_the_same_numbers_with_and_without_reuse(
    monkeypatch, architecture, method, attribute_target
):
    """GPT-2 (absolute positions), Llama and Qwen2 (RoPE), a padded batch of two prompts; the whole target
    and prompt-only (``attribute_target=False``: only prompt tokens are perturbed)."""
    model = exact_model(architecture, method)
    reused = attribute(model, True, monkeypatch, attribute_target=attribute_target)
    full = attribute(model, False, monkeypatch, attribute_target=attribute_target)
    assert_same(reused, full)


def test_occlusion_windows_and_inference_mode_give_the_same_numbers(monkeypatch):
    model = exact_model("llama", "occlusion", window=3, stride=2, inference_mode="log_softmax")
    assert_same(attribute(model, True, monkeypatch), attribute(model, False, monkeypatch))


def test_contrast_gives_the_same_numbers(monkeypatch):
    """With a contrast the main pass reuses the prefix; the contrast's pass runs whole."""
    model = exact_model("gpt2", "occlusion")
    contrast = {
        "attributed_fn": "contrast_prob_diff",
        "contrast_targets": [p + " The cat ran" for p in PROMPTS],
    }
    assert_same(
        attribute(model, True, monkeypatch, **contrast), attribute(model, False, monkeypatch, **contrast)
    )


def test_eager_float64_padding_mask_gives_the_same_numbers(monkeypatch):
    """Eager attention in float64 with left padding takes seqattr's own 4D mask (`additive_causal_mask`):
    the cached pass gets its rows from the first perturbed position on."""
    hf_model, tokenizer = float64_model("llama")
    hf_model = copy.deepcopy(hf_model)
    hf_model.set_attn_implementation("eager")
    model = seqattr.load_model(hf_model, "occlusion", tokenizer=tokenizer)
    assert model._needs_own_mask(torch.tensor([[0, 1], [1, 1]]))
    assert_same(attribute(model, True, monkeypatch), attribute(model, False, monkeypatch))


def test_chunked_rows_and_steps_give_the_same_numbers(monkeypatch):
    """A budget of one row and two steps per call: chunks of rows, of steps (each on its steps' prefix) and
    the rows' reordering by first perturbed position."""
    model = exact_model("qwen2", "feature_ablation")
    monkeypatch.setattr(perturbation, "_CHUNK_BYTES", 1)
    assert_same(attribute(model, True, monkeypatch), attribute(model, False, monkeypatch))


@pytest.mark.parametrize("removal", ["replace", "delete"])
def test_evaluation_curves_give_the_same_numbers(monkeypatch, removal):
    """Comprehensiveness, sufficiency and the deletion / insertion curves: the removal rows (``replace``) run
    through the engine's rows, reusing the clean prefix (whatever it spares: removal rows often start at an
    early token, below `MIN_SAVED_POSITIONS`); ``delete`` rows are scored as plain sequences."""
    monkeypatch.setattr(perturbation, "MIN_SAVED_POSITIONS", 0.0)
    model = exact_model("llama", "feature_ablation")
    out = attribute(model, True, monkeypatch, attributed_fn="probability")
    metrics = ["comprehensiveness", "sufficiency", "deletion_auc", "insertion_auc"]
    results, positions = [], []
    for reuse in (True, False):
        monkeypatch.setattr(prefix_reuse, "ENABLED", reuse)
        with positions_counted(model) as counted:
            results.append(model.evaluate(out, metrics=metrics, removal=removal))
        positions.append(counted["positions"])
    if removal == "replace":  # deleted rows are other sequences: each runs whole, the count is the same
        assert positions[0] < positions[1]
    for reused, full in zip(
        results[0].per_step + results[0].random_per_step,
        results[1].per_step + results[1].random_per_step,
        strict=True,
    ):
        for metric in metrics:
            assert not bool(full[metric].isnan().all())
            torch.testing.assert_close(reused[metric], full[metric], rtol=0, atol=TOLERANCE, equal_nan=True)


def count_positions(
    model: seqattr.AttributionModel, method_class, run
) -> tuple[int, seqattr.AttributionOutput]:
    """Positions (rows x inputs) the Hugging Face model computes while the method's fused path runs."""
    counted = {"on": False, "positions": 0}

    def count(module, args, kwargs):
        if counted["on"]:
            counted["positions"] += kwargs["inputs_embeds"].shape[0] * kwargs["inputs_embeds"].shape[1]

    original = method_class.attribute_fused

    def counting(self, inputs, options):
        counted["on"] = True
        try:
            return original(self, inputs, options)
        finally:
            counted["on"] = False

    handle = model.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(method_class, "attribute_fused", counting)
            out = run()
    finally:
        handle.remove()
    return counted["positions"], out


def test_single_token_occlusion_computes_about_half_the_positions():
    """Occluding token ``q`` of a sequence of ``L`` positions needs ``L - q`` of them after the clean pass's
    ``L``: ``L + sum_q (L - q)`` in all, against ``(features + 1) L`` for full forwards. Calls run from their
    rows' earliest perturbed position, and recompute at most `WASTED_POSITIONS` of their positions."""
    hf_model, tokenizer = tiny_model("llama")
    model = seqattr.load_model(hf_model, "occlusion", tokenizer=tokenizer)
    text = "The cat sat on the mat and the dog sat on the rug."
    positions, out = count_positions(
        model, Occlusion, lambda: model.attribute(text, text + " They slept all day", show_progress=False)
    )
    length = len(out[0].target_ids)
    spans = out.info["method_info"]["examples"][0]["features"]["target"]
    starts = [start for start, _ in spans]
    assert len(starts) >= 15
    needed = sum(length - q for q in starts)
    # A call's recomputed positions are at most WASTED_POSITIONS of its positions (needed + recomputed).
    assert needed <= positions - length <= needed / (1 - perturbation.WASTED_POSITIONS)
    full = (len(starts) + 1) * length
    assert positions < 0.6 * full


def test_reuse_runs_only_where_it_spares_enough_positions(monkeypatch):
    """Prompt-only attribution after a short prompt perturbs only early positions: below
    `MIN_SAVED_POSITIONS` the rows run whole (each row's cache copy costs more than it spares)."""
    model = exact_model("llama", "feature_ablation")
    text = "Hi there, the cat sat on the mat and the dog sat on the rug all day long"
    counts = []
    for minimum in (0.0, perturbation.MIN_SAVED_POSITIONS):
        monkeypatch.setattr(perturbation, "MIN_SAVED_POSITIONS", minimum)
        with positions_counted(model) as counted:
            out = model.attribute("Hi there", text, attribute_target=False, show_progress=False)
        counts.append(counted["positions"])
    length = len(out[0].target_ids)
    starts = [start for start, _ in out.info["method_info"]["examples"][0]["features"]["target"]]
    features = len(starts)
    spared = sum(starts) / (features * length)  # each row could skip its positions before its token
    assert 0 < spared < perturbation.MIN_SAVED_POSITIONS
    assert counts[0] < counts[1]  # reuse forced: fewer positions
    # Whole rows after the scoring pass's clean row; a row stops before the last token, which no step reads.
    assert counts[1] == length + features * (length - 1)


def test_reuse_is_off_where_it_does_not_apply(monkeypatch):
    """Encoder-decoder models and sliding-window models run whole rows; so does a batch whose clean cache
    exceeds the cap (then the count is that of full forwards)."""
    assert not prefix_reuse.applies_to(exact_model("t5", "occlusion"))
    assert prefix_reuse.applies_to(exact_model("gpt2", "occlusion"))
    hf_model, tokenizer = tiny_model("qwen2")
    sliding = copy.deepcopy(hf_model)
    sliding.config.use_sliding_window = True
    sliding.config.sliding_window = 4
    assert not prefix_reuse.applies_to(seqattr.load_model(sliding, "occlusion", tokenizer=tokenizer))

    model = seqattr.load_model(hf_model, "occlusion", tokenizer=tokenizer)
    monkeypatch.setattr(prefix_reuse, "PREFIX_CACHE_BYTES", 0)
    text = "The cat sat on the mat."
    positions, out = count_positions(
        model, Occlusion, lambda: model.attribute(text, text + " The dog", show_progress=False)
    )
    features = len(out.info["method_info"]["examples"][0]["features"]["target"])
    # Full forwards of the clean row and each occluded row, up to the last token (which no step reads).
    assert positions == (features + 1) * (len(out[0].target_ids) - 1)


def test_cache_cost_per_position_is_the_configs_formula():
    """``2 x layers x kv_heads x head_dim x bytes``: the tiny Llama has 2 layers, 2 key/value heads of 16."""
    hf_model, tokenizer = tiny_model("llama")
    assert (
        prefix_reuse.cache_bytes_per_position(seqattr.load_model(hf_model, tokenizer=tokenizer))
        == 2 * 2 * 2 * 16 * 4
    )
    model = exact_model("gpt2")  # 2 layers, 4 heads of 16, float64
    assert prefix_reuse.cache_bytes_per_position(model) == 2 * 2 * 4 * 16 * 8
