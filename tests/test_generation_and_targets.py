"""What is explained: generated tokens equal ``model.generate`` with the same arguments, forced targets are
tokenized as documented, and step scores equal a direct forward pass (plain transformers, no seqattr)."""

from __future__ import annotations

import pytest
import torch

from conftest import attribution_model
from seqattr.testing import ARCHITECTURES, DECODER_ONLY, ENCODER_DECODER, tiny_model

PROMPTS = ["The cat sat on the mat.", "Paris is a beautiful city in the north of France.", "Why"]


def hf_generate(architecture: str, prompts: list[str], **generation_args) -> list[list[int]]:
    """``model.generate`` on the tokenizer's own batch (left padding for decoder-only models), cut after the
    first end-of-sequence token (what follows is padding of a sequence that ended early)."""
    model, tokenizer = tiny_model(architecture)
    padding_side = "right" if model.config.is_encoder_decoder else "left"
    if (
        tokenizer.pad_token is None
    ):  # load_model sets it too; do it here so the order of tests does not matter
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side=padding_side)
    with torch.no_grad():
        sequences = model.generate(**encoded, do_sample=False, **generation_args)
    eos = generation_args.get("eos_token_id", model.generation_config.eos_token_id)
    eos = set(eos if isinstance(eos, list) else [eos])
    results = []
    for prompt, sequence in zip(prompts, sequences.tolist(), strict=True):
        if model.config.is_encoder_decoder:
            head, generated = sequence[:1], sequence[1:]
        else:
            head, generated = tokenizer(prompt)["input_ids"], sequence[encoded["input_ids"].shape[1] :]
        ends = [i for i, token in enumerate(generated) if token in eos]
        results.append(head + (generated[: ends[0] + 1] if ends else generated))
    return results


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_generation_equals_model_generate(architecture):
    model = attribution_model(architecture)
    for prompts in ([PROMPTS[0]], PROMPTS):  # alone, and batched with padding
        out = model.attribute(prompts, generation_args={"max_new_tokens": 6}, show_progress=False)
        expected = hf_generate(architecture, prompts, max_new_tokens=6)
        assert [seq.target_ids for seq in out] == expected
    for seq, prompt in zip(out, PROMPTS, strict=True):
        tokenizer = model.tokenizer
        assert seq.target == tokenizer.convert_ids_to_tokens(seq.target_ids)
        if architecture in DECODER_ONLY:
            assert seq.source == [] and seq.source_ids == []
            assert seq.attr_pos_start == len(tokenizer(prompt)["input_ids"])
        else:
            assert seq.source_ids == tokenizer(prompt)["input_ids"]
            assert seq.target_ids[0] == model.model.generation_config.decoder_start_token_id
            assert seq.attr_pos_start == 1
        assert seq.attr_pos_end == len(seq.target_ids)


@pytest.mark.parametrize("architecture", ["qwen2", "marian"])
def test_generation_args_are_passed_to_generate(architecture):
    model = attribution_model(architecture)
    args = {"max_new_tokens": 5, "repetition_penalty": 3.0, "no_repeat_ngram_size": 2}
    out = model.attribute(PROMPTS[:2], generation_args=args, show_progress=False)
    assert [seq.target_ids for seq in out] == hf_generate(architecture, PROMPTS[:2], **args)
    assert out.info["generation_args"] == args
    # Without max_new_tokens or max_length, 20 new tokens at most (the documented default).
    out = model.attribute(PROMPTS[0], show_progress=False)
    assert [seq.target_ids for seq in out] == hf_generate(architecture, PROMPTS[:1], max_new_tokens=20)


@pytest.mark.parametrize("architecture", ["gpt2", "llama", "t5"])
def test_sequences_that_end_early_are_cut_after_eos(architecture):
    """A user ``eos_token_id`` ends one example early: its target ends there, without the batch's padding."""
    model = attribution_model(architecture)
    first = model.attribute(PROMPTS[:2], generation_args={"max_new_tokens": 6}, show_progress=False)
    generated = first[0].target_ids[first[0].attr_pos_start :]
    stop = next(i for i in range(1, len(generated)) if generated[i] not in generated[:i])  # first occurrence
    args = {"max_new_tokens": 6, "eos_token_id": generated[stop]}
    out = model.attribute(PROMPTS[:2], generation_args=args, show_progress=False)
    assert out[0].target_ids == first[0].target_ids[: first[0].attr_pos_start + stop + 1]
    assert [seq.target_ids for seq in out] == hf_generate(architecture, PROMPTS[:2], **args)


@pytest.mark.parametrize("architecture", DECODER_ONLY)
def test_forced_decoder_only_target_is_prompt_plus_continuation(architecture):
    model = attribution_model(architecture)
    texts = [PROMPTS[0] + " The dog ran away.", PROMPTS[2] + " is the sky blue?"]
    out = model.attribute([PROMPTS[0], PROMPTS[2]], texts, show_progress=False)
    for seq, prompt, text in zip(out, [PROMPTS[0], PROMPTS[2]], texts, strict=True):
        assert seq.target_ids == model.tokenizer(text)["input_ids"]
        assert seq.attr_pos_start == len(model.tokenizer(prompt)["input_ids"])
        assert seq.attr_pos_end == len(seq.target_ids)
        assert seq.source_attributions is None
    assert out.info["forced_targets"] is True


@pytest.mark.parametrize("architecture", ENCODER_DECODER)
def test_forced_encoder_decoder_target_follows_the_start_token(architecture):
    model = attribution_model(architecture)
    texts = ["Die Katze sitzt auf der Matte.", "Warum ist der Himmel blau?"]
    out = model.attribute([PROMPTS[0], PROMPTS[2]], texts, show_progress=False)
    start = model.model.generation_config.decoder_start_token_id
    for seq, prompt, text in zip(out, [PROMPTS[0], PROMPTS[2]], texts, strict=True):
        assert seq.source_ids == model.tokenizer(prompt)["input_ids"]
        assert seq.target_ids == [start, *model.tokenizer(text_target=text)["input_ids"]]
        assert (seq.attr_pos_start, seq.attr_pos_end) == (1, len(seq.target_ids))
        assert seq.target_attributions is None  # attribute_target=False
    with_target = model.attribute(PROMPTS[0], texts[0], attribute_target=True, show_progress=False)[0]
    assert with_target.target_attributions.shape == (len(with_target.target_ids), with_target.num_steps)


def direct_probabilities(architecture: str, seq) -> torch.Tensor:
    """p(target[t] | prefix) for every explained position, from one plain forward pass on token ids."""
    model, _ = tiny_model(architecture)
    target = torch.tensor([seq.target_ids])
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            logits = model(input_ids=torch.tensor([seq.source_ids]), decoder_input_ids=target).logits[0]
        else:
            logits = model(input_ids=target).logits[0]
    positions = torch.arange(seq.attr_pos_start, seq.attr_pos_end)
    return torch.softmax(logits[positions - 1], dim=-1).gather(-1, target[0, positions, None])[:, 0]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_probability_step_score_equals_direct_forward(architecture):
    model = attribution_model(architecture)
    out = model.attribute(
        PROMPTS, generation_args={"max_new_tokens": 5}, step_scores=["probability"], show_progress=False
    )
    assert out.info["step_scores"] == ["probability"]
    for seq in out:
        scores = seq.step_scores["probability"]
        assert scores.shape == (seq.num_steps,)
        torch.testing.assert_close(scores, direct_probabilities(architecture, seq), rtol=1e-5, atol=1e-6)
        # Greedy decoding picks the most probable token, so each generated token has probability > 1/vocab.
        assert (scores > 1 / len(model.tokenizer)).all()


def test_window_step_scores_follow_the_window():
    model = attribution_model("llama")
    text = PROMPTS[0] + " The dog ran away."
    out = model.attribute(
        PROMPTS[0], text, attr_pos_start=2, attr_pos_end=6, step_scores=["probability"], show_progress=False
    )[0]
    assert out.steps == out.target[2:6]
    torch.testing.assert_close(
        out.step_scores["probability"], direct_probabilities("llama", out), rtol=1e-5, atol=1e-6
    )
