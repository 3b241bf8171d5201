"""Contrastive attribution: alignment, contrastive step scores against direct forwards of the contrast text,
and gradients of the contrast term against autograd on hand-built shared embeddings."""

from __future__ import annotations

import pytest
import torch

from seqattr.contrast import align_steps, align_tokens, shared_positions
from seqattr.testing import ARCHITECTURES, ENCODER_DECODER, tiny_model
from tests.conftest import attribution_model

# architecture: (input, original output, contrast with one token substituted, contrast with an insertion)
CASES = {
    "gpt2": (
        "The cat sat on the mat",
        "The cat sat on the mat and the cat ran",
        "The cat sat on the mat and the mat ran",
        "The cat sat on the mat and the big cat ran",
    ),
    "t5": (
        "The cat sat on the mat.",
        "The cat is on the table.",
        "The dog is on the table.",
        "The big cat is on the table.",
    ),
}
CONTRASTIVE = [
    "contrast_prob",
    "contrast_logits",
    "contrast_logprob",
    "contrast_prob_diff",
    "contrast_logits_diff",
    "pcxmi",
    "kl_divergence",
]


# --- alignment --------------------------------------------------------------------------------------


def test_align_tokens_cases():
    assert align_tokens([1, 2, 3], [1, 2, 3]) == [(0, 0), (1, 1), (2, 2)]
    assert align_tokens([1, 2, 3], [1, 9, 3]) == [(0, 0), (1, 1), (2, 2)]  # substitution
    assert align_tokens([1, 2, 3], [1, 7, 8, 2, 3]) == [(0, 0), (1, 3), (2, 4)]  # insertion
    assert align_tokens([1, 2, 3, 4], [1, 4]) == [(0, 0), (3, 1)]  # deletion
    assert align_tokens([], [1]) == [] and align_tokens([1], []) == []
    assert shared_positions([1, 2, 3], [1, 7, 2, 9]) == [0, -1, 1, -1]


def test_align_steps_cases():
    assert align_steps([1, 2, 3], [4, 5, 6], None, range(3), "e") == {0: 0, 1: 1, 2: 2}  # equal lengths
    assert align_steps([1, 2, 3], [1, 7, 2, 3], None, range(3), "e") == {0: 0, 1: 2, 2: 3}  # auto insertion
    assert align_steps([1, 2, 3], [1, 3], "auto", range(3), "e") == {0: 0, 1: 1, 2: 1}  # 2 faces 3
    assert align_steps([1, 2, 3], [4, 5, 6], [(0, 2), (1, 1), (2, 0)], range(3), "e") == {0: 2, 1: 1, 2: 0}
    assert align_steps([1, 2, 3], [1, 2], [(1, 1)], range(1, 2), "e") == {1: 1}  # only explained
    with pytest.raises(ValueError, match="no counterpart.*explicit"):
        align_steps([1, 2, 3], [1, 2], "auto", range(3), "example 0")
    with pytest.raises(ValueError, match="out of range"):
        align_steps([1, 2, 3], [1, 2], [(0, 0), (1, 1), (2, 5)], range(3), "e")
    with pytest.raises(ValueError, match=r"token\(s\) \[2\] have no pair"):
        align_steps([1, 2, 3], [1, 2, 3], [(0, 0), (1, 1)], range(3), "e")
    with pytest.raises(ValueError, match="nothing to compare"):
        align_steps([1], [], "auto", range(1), "e")


# --- independent computations -----------------------------------------------------------------------


def encode(architecture: str, source: str, target: str) -> tuple[list[int], list[int], int]:
    """``(source_ids, target_ids, continuation start)`` as a user would tokenize them by hand."""
    model, tok = tiny_model(architecture)
    if model.config.is_encoder_decoder:
        return (
            tok(source)["input_ids"],
            [model.config.decoder_start_token_id, *tok(text_target=target)["input_ids"]],
            1,
        )
    return [], tok(target)["input_ids"], len(tok(source)["input_ids"])


def direct_logits(architecture: str, source_ids: list[int], target_ids: list[int]) -> torch.Tensor:
    model, _ = tiny_model(architecture)
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return model(
                input_ids=torch.tensor([source_ids]), decoder_input_ids=torch.tensor([target_ids])
            ).logits[0]
        return model(input_ids=torch.tensor([target_ids])).logits[0]


def expected_contrast_scores(architecture, seq, contrast, alignment, top_k=0):
    """Every contrastive score of ``seq`` from two plain forwards (original ids, contrast ids)."""
    (c_source, c_target, c_start), start = contrast, seq.attr_pos_start
    original = direct_logits(architecture, seq.source_ids, seq.target_ids)
    contrasted = direct_logits(architecture, c_source, c_target)
    scores = {name: [] for name in CONTRASTIVE}
    for step in range(seq.num_steps):
        position, c_position = start + step, c_start + alignment[step]
        logits, c_logits = original[position - 1], contrasted[c_position - 1]
        token, c_token = seq.target_ids[position], c_target[c_position]
        logprob, c_logprob = logits.log_softmax(-1)[token], c_logits.log_softmax(-1)[c_token]
        kept = logits.topk(top_k).indices if top_k else torch.arange(len(logits))
        p, q = logits[kept].log_softmax(-1), c_logits[kept].log_softmax(-1)
        values = {
            "contrast_prob": c_logprob.exp(),
            "contrast_logits": c_logits[c_token],
            "contrast_logprob": c_logprob,
            "contrast_prob_diff": logprob.exp() - c_logprob.exp(),
            "contrast_logits_diff": logits[token] - c_logits[c_token],
            "pcxmi": logprob - c_logprob,
            "kl_divergence": (p.exp() * (p - q)).sum(),
        }
        for name, value in values.items():
            scores[name].append(float(value))
    return {name: torch.tensor(values) for name, values in scores.items()}


def check_scores(seq, expected, atol=1e-5):
    for name, values in expected.items():
        torch.testing.assert_close(
            seq.step_scores[name], values, rtol=1e-4, atol=atol, msg=lambda m, name=name: f"{name}: {m}"
        )


# --- contrastive scores -------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_contrast_equal_to_target_gives_zero(architecture):
    prompt, output, _, _ = CASES["t5" if architecture in ENCODER_DECODER else "gpt2"]
    out = attribution_model(architecture, abs=False).attribute(
        prompt,
        output,
        contrast_targets=output,
        step_scores=CONTRASTIVE,
        attributed_fn="contrast_prob_diff",
        attribute_target=True,
        show_progress=False,
    )
    seq = out[0]
    for name in ("contrast_prob_diff", "contrast_logits_diff", "pcxmi", "kl_divergence"):
        torch.testing.assert_close(seq.step_scores[name], torch.zeros(seq.num_steps), atol=1e-5, rtol=0)
    # Every input is shared, so the contrast term's gradient cancels the original's exactly.
    for attributions in (seq.source_attributions, seq.target_attributions):
        if attributions is not None:
            assert attributions.nan_to_num().abs().max() < 1e-5


@pytest.mark.parametrize("architecture", sorted(CASES))
@pytest.mark.parametrize("which", ["substitution", "insertion"])
def test_contrast_target_scores_match_direct_forwards(architecture, which):
    prompt, output, substituted, inserted = CASES[architecture]
    contrast_text = substituted if which == "substitution" else inserted
    out = attribution_model(architecture).attribute(
        prompt,
        output,
        contrast_targets=contrast_text,
        step_scores=CONTRASTIVE,
        step_scores_args={"top_k": 5},
        show_progress=False,
    )
    seq = out[0]
    contrast = encode(architecture, prompt, contrast_text)
    original_cont, contrast_cont = seq.target_ids[seq.attr_pos_start :], contrast[1][contrast[2] :]
    if which == "substitution":
        assert len(original_cont) == len(contrast_cont)
        alignment = list(range(len(original_cont)))
    else:  # a clean insertion of k tokens at the first difference: later tokens shift by k
        k = len(contrast_cont) - len(original_cont)
        at = next(i for i, (a, b) in enumerate(zip(original_cont, contrast_cont, strict=False)) if a != b)
        assert contrast_cont[:at] + contrast_cont[at + k :] == original_cont and k > 0
        alignment = [i if i < at else i + k for i in range(len(original_cont))]
    assert out.info["contrast"]["alignments"] == [[[i, j] for i, j in enumerate(alignment)]]
    check_scores(seq, expected_contrast_scores(architecture, seq, contrast, alignment, top_k=5))


def test_explicit_alignment_is_used():
    prompt, output, substituted, _ = CASES["gpt2"]
    seq = attribution_model("gpt2").attribute(prompt, output, show_progress=False)[0]
    n = seq.num_steps
    pairs = [(i, max(i - 1, 0)) for i in range(n)]  # each step faces the contrast's previous token
    out = attribution_model("gpt2").attribute(
        prompt,
        output,
        contrast_targets=substituted,
        contrast_targets_alignments=pairs,
        step_scores=CONTRASTIVE,
        show_progress=False,
    )
    expected = expected_contrast_scores(
        "gpt2", out[0], encode("gpt2", prompt, substituted), [j for _, j in pairs]
    )
    check_scores(out[0], expected)


def test_contrast_sources_pcxmi_decoder_only():
    prompt, context_free = "Paris is a city. The capital of France is", "The capital of France is"
    output = prompt + " Paris"
    seq = attribution_model("gpt2").attribute(
        prompt, output, contrast_sources=context_free, step_scores=CONTRASTIVE, show_progress=False
    )[0]
    _, tok = tiny_model("gpt2")
    c_prompt = tok(context_free)["input_ids"]
    contrast = (
        [],
        c_prompt + seq.target_ids[seq.attr_pos_start :],
        len(c_prompt),
    )  # same continuation tokens
    check_scores(seq, expected_contrast_scores("gpt2", seq, contrast, list(range(seq.num_steps))))


def test_contrast_sources_encoder_decoder():
    _, output, _, _ = CASES["t5"]
    seq = attribution_model("t5").attribute(
        "The dog sat on the mat.",
        output,
        contrast_sources="Why is the sky blue?",
        step_scores=CONTRASTIVE,
        show_progress=False,
    )[0]
    _, tok = tiny_model("t5")
    contrast = (tok("Why is the sky blue?")["input_ids"], seq.target_ids, 1)
    check_scores(seq, expected_contrast_scores("t5", seq, contrast, list(range(seq.num_steps))), atol=1e-4)


def test_batched_contrast_equals_single_examples():
    prompt, output, substituted, inserted = CASES["gpt2"]
    prompts, outputs = [prompt, "a dog"], [output, "a dog runs in the garden"]
    contrasts = [inserted, "a dog is in the garden"]
    kwargs = dict(step_scores=CONTRASTIVE, attributed_fn="contrast_logits_diff", show_progress=False)
    batched = attribution_model("gpt2").attribute(prompts, outputs, contrast_targets=contrasts, **kwargs)
    for i in range(2):
        single = attribution_model("gpt2").attribute(
            prompts[i], outputs[i], contrast_targets=contrasts[i], **kwargs
        )
        assert batched[i].allclose(single[0], rtol=1e-4, atol=1e-3)  # attributions are ~100


# --- gradients of the contrast term -------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
def test_saliency_of_contrast_logits_diff_decoder_only(fused):
    """Against autograd: the contrast reads the attributed embedding where its token equals the original's."""
    model, _ = tiny_model("gpt2")
    prompt, output, substituted, _ = CASES["gpt2"]
    seq = attribution_model("gpt2", abs=False).attribute(
        prompt,
        output,
        contrast_targets=substituted,
        attributed_fn="contrast_logits_diff",
        fused=fused,
        show_progress=False,
    )[0]
    _, c_ids, _ = encode("gpt2", prompt, substituted)
    ids = seq.target_ids
    assert len(c_ids) == len(ids) and sum(a != b for a, b in zip(ids, c_ids, strict=True)) == 1
    embed = model.get_input_embeddings()
    for step in range(seq.num_steps):
        position = seq.attr_pos_start + step
        embeds = embed(torch.tensor([ids[:position]])).detach().requires_grad_()
        own = embed(torch.tensor([c_ids[:position]])).detach()
        same = torch.tensor([a == b for a, b in zip(ids[:position], c_ids[:position], strict=True)])[
            None, :, None
        ]
        c_embeds = torch.where(same, embeds, own)
        diff = (
            model(inputs_embeds=embeds).logits[0, -1, ids[position]]
            - model(inputs_embeds=c_embeds).logits[0, -1, c_ids[position]]
        )
        (grad,) = torch.autograd.grad(diff, embeds)
        torch.testing.assert_close(
            seq.target_attributions[:position, step], grad[0].sum(-1), rtol=1e-4, atol=1e-5
        )
    assert torch.isnan(seq.target_attributions[seq.attr_pos_start :, 0]).all()


def test_saliency_of_contrast_logits_diff_encoder_decoder():
    model, _ = tiny_model("t5")
    prompt, output, substituted, _ = CASES["t5"]
    seq = attribution_model("t5", abs=False).attribute(
        prompt,
        output,
        contrast_targets=substituted,
        attributed_fn="contrast_logits_diff",
        attribute_target=True,
        show_progress=False,
    )[0]
    _, c_ids, _ = encode("t5", prompt, substituted)
    ids, embed = seq.target_ids, model.get_input_embeddings()
    for step in range(seq.num_steps):
        position = seq.attr_pos_start + step
        source = embed(torch.tensor([seq.source_ids])).detach().requires_grad_()
        target = embed(torch.tensor([ids[:position]])).detach().requires_grad_()
        same = torch.tensor([a == b for a, b in zip(ids[:position], c_ids[:position], strict=True)])[
            None, :, None
        ]
        c_target = torch.where(same, target, embed(torch.tensor([c_ids[:position]])).detach())
        diff = (
            model(inputs_embeds=source, decoder_inputs_embeds=target).logits[0, -1, ids[position]]
            - model(inputs_embeds=source, decoder_inputs_embeds=c_target).logits[0, -1, c_ids[position]]
        )
        source_grad, target_grad = torch.autograd.grad(diff, (source, target))
        torch.testing.assert_close(
            seq.source_attributions[:, step], source_grad[0].sum(-1), rtol=1e-4, atol=1e-4
        )
        torch.testing.assert_close(
            seq.target_attributions[:position, step], target_grad[0].sum(-1), rtol=1e-4, atol=1e-4
        )


# --- errors ------------------------------------------------------------------------------------------------


def test_contrast_errors_are_clear():
    am = attribution_model("gpt2")
    prompt, output, substituted, _ = CASES["gpt2"]
    with pytest.raises(ValueError, match="needs a contrast: pass contrast_targets="):
        am.attribute(prompt, output, step_scores=["contrast_prob"], show_progress=False)
    with pytest.raises(ValueError, match="needs a contrast"):
        am.attribute(prompt, output, attributed_fn="contrast_prob_diff", show_progress=False)
    with pytest.raises(ValueError, match="contrast_targets_alignments needs contrast_targets"):
        am.attribute(prompt, output, contrast_targets_alignments="auto")
    with pytest.raises(ValueError, match=r"contrast_targets\[0\] must start with its prompt"):
        am.attribute(prompt, output, contrast_targets="A dog ran", step_scores=["contrast_prob"])
    with pytest.raises(ValueError, match="got 1 input_texts but 2 contrast_targets"):
        am.attribute(prompt, output, contrast_targets=[substituted, substituted])
    with pytest.raises(ValueError, match="no counterpart in the contrast target"):
        am.attribute(prompt, output, contrast_targets=prompt + " and", contrast_targets_alignments="auto")
    with pytest.raises(ValueError, match="out of range"):
        am.attribute(prompt, output, contrast_targets=substituted, contrast_targets_alignments=[(0, 99)])
    with pytest.raises(ValueError, match="attr_pos_start=2 is inside the prompt"):
        am.attribute(prompt, output, contrast_targets=substituted, attr_pos_start=2)


# --- methods that cannot attribute a contrastive function -----------------------------------------------


def contrast_margin(args):
    """A custom contrastive function: the registry cannot tell it reads the contrast until it runs."""
    return (
        args.logits.gather(-1, args.target_ids[..., None])[..., 0]
        - args.contrast_logits.gather(-1, args.contrast_target_ids[..., None])[..., 0]
    )


@pytest.mark.parametrize("method", ["deeplift", "layer_deeplift"])
@pytest.mark.parametrize("fused", [True, False])
def test_deeplift_refuses_a_contrastive_function(method, fused, monkeypatch):
    """Before: a raw Captum RuntimeError ("module is being used more than once") on T5's ReLU."""
    import seqattr.methods.deeplift as deeplift

    def no_captum(*args, **kwargs):
        raise AssertionError("Captum ran before the contrastive function was refused")

    monkeypatch.setattr(deeplift, "run_captum_deeplift", no_captum)
    monkeypatch.setattr("seqattr.methods.layer_deeplift.run_captum_deeplift", no_captum)
    prompt, output, substituted, _ = CASES["t5"]
    with pytest.raises(
        ValueError, match=rf"{method} cannot attribute a contrastive function.*integrated_gradients"
    ):
        attribution_model("t5", method).attribute(
            prompt,
            output,
            contrast_targets=substituted,
            attributed_fn="contrast_prob_diff",
            fused=fused,
            show_progress=False,
        )


def test_deeplift_refuses_a_custom_contrastive_function_and_keeps_contrastive_scores():
    """GPT-2 has no module Captum's rescale rule hooks, so a custom contrastive function used to run
    silently; it now meets the same refusal, while a plain attributed function with contrastive step scores
    works and gives the attributions of a run without contrast."""
    prompt, output, substituted, _ = CASES["gpt2"]
    am = attribution_model("gpt2", "deeplift")
    with pytest.raises(
        ValueError, match="deeplift cannot attribute a contrastive function.*'contrast_margin'"
    ):
        am.attribute(
            prompt, output, contrast_targets=substituted, attributed_fn=contrast_margin, show_progress=False
        )
    with_scores = am.attribute(
        prompt, output, contrast_targets=substituted, step_scores=["contrast_prob_diff"], show_progress=False
    )[0]
    plain = am.attribute(prompt, output, show_progress=False)[0]
    torch.testing.assert_close(with_scores.target_attributions, plain.target_attributions, equal_nan=True)
    assert with_scores.step_scores["contrast_prob_diff"].isfinite().all()


@pytest.mark.parametrize("fused", [True, False])
def test_layer_methods_refuse_a_contrastive_function_inside_the_model(fused):
    """Before: fused said "layer ran 2 times" without the cause; stepwise (Captum) ran silently."""
    prompt, output, substituted, _ = CASES["t5"]
    am = attribution_model("t5", "layer_integrated_gradients", target_layer="decoder.block.0", n_steps=2)
    kwargs = dict(contrast_targets=substituted, attribute_target=True, fused=fused, show_progress=False)
    for fn, name in (("contrast_prob_diff", "contrast_prob_diff"), (contrast_margin, "contrast_margin")):
        with pytest.raises(ValueError, match=rf"decoder.block.0.*contrastive.*'{name}'.*target_layer=None"):
            am.attribute(prompt, output, attributed_fn=fn, **kwargs)
