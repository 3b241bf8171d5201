"""The per-step generation trace: greedy choices, ranks of forced tokens, save/load, terminal view, cost."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

import seqattr
from seqattr.methods.base import get_method_class
from seqattr.testing import tiny_model
from tests.conftest import attribution_model

GREEDY = {"max_new_tokens": 6, "do_sample": False}
PROMPTS = {
    "gpt2": "The cat sat on the mat",
    "llama": "The cat sat on the mat",
    "t5": "The cat sat on the mat.",
    "bart": "Why is the sky blue?",
}


@pytest.mark.parametrize("architecture", sorted(PROMPTS))
def test_trace_top1_is_the_greedy_token(architecture):
    out = attribution_model(architecture).attribute(
        PROMPTS[architecture],
        generation_args=GREEDY,
        step_scores=["probability", "entropy"],
        show_progress=False,
    )
    seq = out[0]
    trace = seq.trace
    assert len(trace) == seq.num_steps and trace.tokens == seq.steps
    assert trace.token_ids.tolist() == seq.target_ids[seq.attr_pos_start : seq.attr_pos_end]
    assert torch.equal(trace.top_ids[:, 0], trace.token_ids)
    assert (trace.ranks == 0).all() and trace.off_greedy_steps() == []
    assert trace.top_ids.shape == (seq.num_steps, 5)
    assert (trace.top_probabilities.sum(-1) <= 1 + 1e-6).all()
    assert (trace.top_probabilities.diff(dim=-1) <= 0).all()
    torch.testing.assert_close(trace.top_probabilities[:, 0], trace.probabilities)
    torch.testing.assert_close(trace.probabilities, seq.step_scores["probability"])
    torch.testing.assert_close(trace.entropy, seq.step_scores["entropy"])


def test_forced_tokens_have_their_rank_and_alternatives():
    model, tokenizer = tiny_model("gpt2")
    prompt, text = "The cat sat on the mat", "The cat sat on the mat and the dog ran"
    seq = attribution_model("gpt2").attribute(prompt, text, trace_top_k=3, show_progress=False)[0]
    ids = torch.tensor([seq.target_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, seq.attr_pos_start - 1 : seq.attr_pos_end - 1]
    targets = ids[0, seq.attr_pos_start : seq.attr_pos_end]
    ranks = [int((row > row[t]).sum()) for row, t in zip(logits, targets, strict=True)]
    assert seq.trace.ranks.tolist() == ranks and any(ranks)  # random weights: the forced text is not greedy
    assert seq.trace.off_greedy_steps() == [i for i, r in enumerate(ranks) if r > 0]
    probs = logits.softmax(-1)
    top = probs.topk(3)
    assert torch.equal(seq.trace.top_ids, top.indices)
    torch.testing.assert_close(seq.trace.top_probabilities, top.values)
    torch.testing.assert_close(seq.trace.probabilities, probs[torch.arange(len(targets)), targets])
    assert seq.trace.top_tokens == [tokenizer.convert_ids_to_tokens(row) for row in top.indices.tolist()]


def test_trace_survives_save_and_load_exactly(tmp_path):
    out = attribution_model("t5").attribute(
        ["The cat sat on the mat.", "Why is the sky blue?"], generation_args=GREEDY, show_progress=False
    )
    path = tmp_path / "out.json"
    out.save(path)
    loaded = seqattr.load(path)
    for mine, theirs in zip(out, loaded, strict=True):
        assert mine.allclose(theirs, rtol=0, atol=0)
        for name in ("token_ids", "probabilities", "ranks", "entropy", "top_ids", "top_probabilities"):
            assert torch.equal(getattr(mine.trace, name), getattr(theirs.trace, name)), name
        assert (mine.trace.tokens, mine.trace.top_tokens) == (theirs.trace.tokens, theirs.trace.top_tokens)
    # A file written before traces existed still loads.
    payload = json.loads(path.read_text())
    for sequence in payload["sequence_attributions"]:
        del sequence["trace"]
    path.write_text(json.dumps(payload))
    assert seqattr.load(path)[0].trace is None


def test_trace_is_shown_in_the_terminal():
    out = attribution_model("gpt2").attribute(
        "The cat sat on the mat", "The cat sat on the mat and the dog ran", show_progress=False
    )
    console = Console(file=io.StringIO(), width=200, color_system=None)
    out.show(console=console)
    text = console.file.getvalue()
    assert "generation trace" in text and "entropy" in text
    assert f"{float(out[0].trace.probabilities[0]):.3f}" in text


def test_trace_top_k_is_checked():
    with pytest.raises(ValueError, match="trace_top_k must be a positive integer"):
        attribution_model("gpt2").attribute("The cat", "The cat sat", trace_top_k=0)


def _count_passes(architecture: str, method: str, **kwargs) -> tuple[list[bool], seqattr.AttributionOutput]:
    model, _ = tiny_model(architecture)
    am = attribution_model(
        architecture, method
    )  # loading may run the model (e.g. to measure embedding scales)
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    try:
        out = am.attribute(
            ["The cat sat", "a dog"],
            ["The cat sat on the mat", "a dog runs"]
            if architecture == "gpt2"
            else ["Le chat", "un chien court"],
            show_progress=False,
            step_scores=["probability", "entropy", "rank"],
            **kwargs,
        )
    finally:
        handle.remove()
    return calls, out


def test_scores_and_trace_come_from_one_forward_pass():
    """A method without a clean pass of the model's own (AttnLRP's forward runs under its rules, with
    gradients) gets one no-grad pass that serves all step scores and the trace."""
    calls, _ = _count_passes("gpt2", "attnlrp")
    assert calls.count(False) == 1 and calls.count(True) >= 1


KEEPS_CLEAN_LOGITS = ["saliency", "input_x_gradient", "attention", "occlusion", "integrated_gradients"]


@pytest.mark.parametrize("architecture", ["gpt2", "bart"])
@pytest.mark.parametrize("method", KEEPS_CLEAN_LOGITS)
def test_methods_with_a_clean_pass_need_no_scoring_pass(architecture, method, monkeypatch):
    """The logits of a method's own pass over the clean batch (saliency's forward, attention's, occlusion's
    clean rows, the input end of integrated gradients' completeness check) serve the step scores and the
    trace: one pass fewer than with a scoring pass of its own, and the same values (1e-5: attention's pass
    runs eager attention, the scoring pass the model's own)."""
    calls, fused = _count_passes(architecture, method)
    monkeypatch.setattr(get_method_class(method), "keeps_clean_logits", False)
    calls_with_scoring_pass, reference = _count_passes(architecture, method)
    assert len(calls_with_scoring_pass) == len(calls) + 1
    for a, b in zip(fused, reference, strict=True):
        for name in ("probability", "entropy", "rank"):
            torch.testing.assert_close(a.step_scores[name], b.step_scores[name], atol=1e-5, rtol=1e-5)
        assert a.trace.allclose(b.trace, rtol=1e-5, atol=1e-5)
