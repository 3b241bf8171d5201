"""Batched == single and fused == stepwise, for every tiny architecture and the padding cases that break them.

A batch pads its examples (decoder-only: on the left, with explicit position ids, so that every example's
first explained step falls in the same column; encoder-decoder: on the right), so these tests use examples of
different lengths, forced targets of different lengths and windows (``attr_pos_start/end``) that resolve to
different positions per example. Exactness is checked in float64 within 1e-5 (tests/exact.py); float32 runs
check that left padding never leaks NaN (fully masked pad rows under SDPA) into what a step can see.
"""

from __future__ import annotations

import copy

import pytest
import torch

import seqattr
from exact import assert_sequences_close, exact_model, float64_model, probability64
from seqattr.testing import ARCHITECTURES, DECODER_ONLY, ENCODER_DECODER, tiny_model

# Lengths differ a lot (one prompt is a single word) so that pad rows are fully masked.
PROMPTS = ["The cat sat on the mat.", "Paris", "Paris is a beautiful city in the north of France."]
CONTINUATIONS = [" The dog ran away.", " is a city", " It is sunny today, but it will rain tomorrow."]
TRANSLATIONS = [
    "Die Katze sitzt auf der Matte.",
    "Das Haus",
    "Heute ist es sonnig, aber morgen wird es regnen.",
]

# name -> attribute() arguments other than the texts (generation_args when nothing is forced)
SCENARIOS = {
    "generate": dict(generation_args={"max_new_tokens": 4}),
    "forced": dict(forced=True),
    "window_from_end": dict(forced=True, attr_pos_start=-3),
    "window_middle": dict(forced=True, attr_pos_start=2, attr_pos_end=-1),
}


def forced_targets(architecture: str) -> list[str]:
    if architecture in ENCODER_DECODER:
        return TRANSLATIONS
    return [prompt + continuation for prompt, continuation in zip(PROMPTS, CONTINUATIONS, strict=True)]


def run(model: seqattr.AttributionModel, architecture: str, texts, scenario: str, **kwargs):
    arguments = dict(SCENARIOS[scenario])
    generated = None
    if arguments.pop("forced", False):
        targets = dict(zip(PROMPTS, forced_targets(architecture), strict=True))
        generated = [targets[text] for text in texts]
    return model.attribute(
        texts, generated, attribute_target=True, show_progress=False, **arguments, **kwargs
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_batched_equals_single_and_fused_equals_stepwise(architecture, scenario):
    model = exact_model(architecture, "saliency")
    batched = run(model, architecture, PROMPTS, scenario, attributed_fn=probability64)
    assert len(batched) == len(PROMPTS)
    for prompt, seq in zip(PROMPTS, batched, strict=True):
        single = run(model, architecture, [prompt], scenario, attributed_fn=probability64)[0]
        assert_sequences_close(seq, single)
    stepwise = run(model, architecture, PROMPTS, scenario, attributed_fn=probability64, fused=False)
    for seq, reference in zip(batched, stepwise, strict=True):
        assert_sequences_close(seq, reference)


@pytest.mark.parametrize("architecture", ["gpt2", "marian"])
def test_batch_size_chunks_equal_one_batch(architecture):
    model = exact_model(architecture, "input_x_gradient")
    whole = run(model, architecture, PROMPTS, "forced", attributed_fn=probability64)
    for batch_size in (1, 2):
        chunked = run(
            model, architecture, PROMPTS, "forced", attributed_fn=probability64, batch_size=batch_size
        )
        for a, b in zip(chunked, whole, strict=True):
            assert_sequences_close(a, b)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_windows_resolve_per_example(architecture):
    """Negative window bounds count from each example's own end (so they differ within a batch)."""
    model = exact_model(architecture, "saliency")
    out = run(model, architecture, PROMPTS, "window_middle", attributed_fn=probability64)
    for seq in out:
        assert (seq.attr_pos_start, seq.attr_pos_end) == (2, len(seq.target_ids) - 1)
        assert seq.steps == seq.target[2:-1]
        assert seq.target_attributions.shape[1] == len(seq.target_ids) - 3
    out = run(model, architecture, PROMPTS, "window_from_end", attributed_fn=probability64)
    for seq in out:
        assert (seq.attr_pos_start, seq.attr_pos_end) == (len(seq.target_ids) - 3, len(seq.target_ids))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_float32_left_padding_leaks_no_nan(architecture):
    """Float32 and the model's default attention (SDPA): a padded batch's scores are finite wherever a step
    can see, NaN elsewhere, and equal the single-example scores up to float32 rounding of the tiny models."""
    hf_model, tokenizer = tiny_model(architecture)
    model = seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer)
    batched = run(model, architecture, PROMPTS, "forced", step_scores=["probability"])
    for prompt, seq in zip(PROMPTS, batched, strict=True):
        position = torch.arange(len(seq.target_ids))[:, None]
        step = seq.attr_pos_start + torch.arange(seq.num_steps)[None, :]
        visible = position < step
        assert torch.equal(seq.target_attributions.isfinite(), visible)
        if seq.source_attributions is not None:
            assert seq.source_attributions.isfinite().all()
        assert seq.step_scores["probability"].isfinite().all()
        single = run(model, architecture, [prompt], "forced", step_scores=["probability"])[0]
        assert_sequences_close(seq, single, rtol=2e-3)


@pytest.mark.parametrize("architecture", DECODER_ONLY)
def test_eager_attention_in_float64_leaks_no_nan(architecture):
    """Eager attention (what attention methods switch to) in float64: transformers' own mask turns fully
    masked left-padding rows into NaN (its finfo(float64).min becomes -inf in the float32 softmax), which
    reaches real tokens through 0 x NaN; seqattr passes its own mask then, and batched == single holds."""
    hf_model, tokenizer = float64_model(architecture)
    eager = copy.deepcopy(hf_model)
    eager.set_attn_implementation("eager")
    model = seqattr.load_model(eager, "saliency", tokenizer=tokenizer)
    batched = run(model, architecture, PROMPTS, "forced", attributed_fn=probability64)
    reference = exact_model(architecture, "saliency")  # the same weights under SDPA
    for prompt, seq in zip(PROMPTS, batched, strict=True):
        assert_sequences_close(
            seq, run(model, architecture, [prompt], "forced", attributed_fn=probability64)[0]
        )
        assert_sequences_close(
            seq, run(reference, architecture, [prompt], "forced", attributed_fn=probability64)[0]
        )


def test_decoder_only_padding_is_on_the_left_with_real_positions():
    """The batch layout the exactness above relies on: shorter examples are shifted right, their position
    ids count real tokens from 0, and every example's first explained step is the same column."""
    from seqattr.models import family
    from seqattr.models.batch import AttributionBatch, EncodedExample

    examples = [EncodedExample([], [5, 6, 7, 8, 9], 3, 5), EncodedExample([], [5, 6, 7], 1, 3)]
    batch = AttributionBatch.from_examples(examples, pad_token_id=0, family=family.DECODER_ONLY, device="cpu")
    assert batch.target_ids.tolist() == [[5, 6, 7, 8, 9], [0, 0, 5, 6, 7]]
    assert batch.target_mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert batch.position_ids[1, 2:].tolist() == [0, 1, 2]
    assert batch.step_positions.tolist() == [3, 4]
    assert batch.step_target_ids.tolist() == [[8, 9], [6, 7]]
