"""Named segments as features: every method attributes to whole segments, and a segment's score is that of
perturbing it by hand.

Segments are ``(name, text)`` pieces: alone they make the prompt (joined), with a text or a conversation they
are found in it. Perturbation methods perturb a segment's tokens together (one score per segment and step);
the other methods' token scores are summed into it; the output has one row per segment, named.
"""

from __future__ import annotations

import pytest
import torch

from exact import assert_close, exact_model, float64_model, probability64
from seqattr.segments import PromptLayout, Segment
from seqattr.testing import tiny_model

DOC = "the cat sat on the mat."
QUESTION = " where is the cat?"
PIECES = [("doc", DOC), ("question", QUESTION)]
REPLY = " on the mat"


def probability(hf_model, ids: list[int], position: int) -> torch.Tensor:
    with torch.no_grad():
        logits = hf_model(input_ids=torch.tensor([ids[:position]])).logits
    return torch.softmax(logits[0, -1], -1)[ids[position]]


def hand_scores(
    architecture: str, ids: list[int], spans, start: int, steps: int, baseline: int
) -> torch.Tensor:
    """[spans, steps]: each step's probability minus that with the span's ids set to ``baseline``."""
    hf_model, _ = float64_model(architecture)
    scores = torch.zeros(len(spans), steps, dtype=torch.float64)
    for step in range(steps):
        clean = probability(hf_model, ids, start + step)
        for k, (a, b) in enumerate(spans):
            edited = list(ids)
            edited[a:b] = [baseline] * (b - a)
            scores[k, step] = clean - probability(hf_model, edited, start + step)
    return scores


@pytest.mark.parametrize("method", ["occlusion", "feature_ablation"])
@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_segment_score_equals_perturbing_the_segment_by_hand(architecture, method):
    _, tokenizer = float64_model(architecture)
    baseline = tokenizer.eos_token_id
    model = exact_model(architecture, method, baseline=baseline)
    prompt = DOC + QUESTION
    out = model.attribute(
        segments=PIECES,
        generated_texts=prompt + REPLY,
        granularity="segment",
        attributed_fn=probability64,
        show_progress=False,
    )
    seq = out[0]
    shown = [t for i, t in enumerate(seq.target[: seq.attr_pos_start]) if i not in seq.masked_target]
    assert shown == ["doc", "question"]  # llama's <s> is a masked row of its own
    ids = tokenizer(prompt + REPLY)["input_ids"]
    prompt_ids = tokenizer(prompt)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    segments = out.info["prompts"][0]["segments"]
    assert [s["name"] for s in segments] == ["doc", "question"]
    # The segments' tokens decode to their texts (llama's <s> is scaffolding, not part of "doc").
    for segment, (_, text) in zip(segments, PIECES, strict=True):
        assert tokenizer.decode(ids[segment["start"] : segment["end"]]).strip() == text.strip()
    assert seq.target_ids[seq.attr_pos_start :] == ids[len(prompt_ids) :]  # the reply, as one text gives it
    spans = [(s["start"], s["end"]) for s in segments]
    # The explained steps follow the prompt's tokens (the output's rows are merged: count in tokens).
    expected = hand_scores(architecture, ids, spans, len(prompt_ids), seq.num_steps, baseline)
    for k, name in enumerate(["doc", "question"]):
        row = seq.target.index(name)
        assert_close(seq.target_attributions[row], expected[k], scale=float(expected.abs().max()))


def test_gradient_scores_add_up_per_segment():
    model = exact_model("gpt2", "input_x_gradient")
    tokens = model.attribute(segments=PIECES, generated_texts=DOC + QUESTION + REPLY, show_progress=False)
    rows = model.attribute(
        segments=PIECES, generated_texts=DOC + QUESTION + REPLY, granularity="segment", show_progress=False
    )
    for segment in tokens.info["prompts"][0]["segments"]:
        expected = tokens[0].target_attributions[segment["start"] : segment["end"]].sum(0)
        assert_close(rows[0].target_attributions[rows[0].target.index(segment["name"])], expected)
    assert rows[0].steps == tokens[0].steps
    assert rows[0].token_roles[:2] == ["prompt", "prompt"]


def test_segments_found_in_a_prompt_and_the_text_between_them():
    """Segments in a given prompt: the text outside them is a feature of its own per stretch."""
    model = exact_model("gpt2", "feature_ablation")
    prompt = "Context: " + DOC + " Question:" + QUESTION
    out = model.attribute(prompt, prompt + REPLY, segments=PIECES, granularity="segment", show_progress=False)
    seq = out[0]
    spans = out.info["method_info"]["examples"][0]["features"]["target"]
    prompt_spans = [s for s in spans if s[1] <= seq_len(model, prompt)]
    assert len(prompt_spans) == 4  # "Context:", doc, " Question:", question
    assert "doc" in seq.target and "question" in seq.target
    assert seq.target[: seq.attr_pos_start].index("doc") == 1


def seq_len(model, text: str) -> int:
    return len(model.tokenizer(text)["input_ids"])


def test_segments_in_a_conversation():
    model, tokenizer = tiny_model("qwen2")
    import seqattr

    chat = seqattr.load_model(model, "occlusion", tokenizer=tokenizer)
    messages = [{"role": "user", "content": "Doc: " + DOC + " Q:" + QUESTION}]
    out = chat.attribute(
        messages=messages, generated_texts=REPLY, segments=PIECES, granularity="segment", show_progress=False
    )
    seq = out[0]
    shown = [t for i, t in enumerate(seq.target[: seq.attr_pos_start]) if i not in seq.masked_target]
    assert "doc" in shown and "question" in shown
    assert seq.token_roles[seq.target.index("doc")] == "user"
    with pytest.raises(ValueError, match="crosses the chat template's scaffolding"):
        chat.attribute(
            messages=[{"role": "system", "content": "A b."}, {"role": "user", "content": "C d."}],
            segments=[("both", "b.<|im_end|>")],
            show_progress=False,
        )


def test_views_label_segments_by_name():
    model = exact_model("gpt2", "feature_ablation")
    out = model.attribute(
        segments=PIECES, generated_texts=DOC + QUESTION + REPLY, granularity="segment", show_progress=False
    )
    html = out.to_html()
    assert "doc" in html and "question" in html
    frame = out.to_dataframe()
    assert {"doc", "question"} <= set(frame.iloc[:, :].astype(str).stack())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"segments": [("doc", "London")], "input_texts": DOC}, "segment 'doc' .* is not in the prompt"),
        ({"segments": [("doc", DOC), ("doc", QUESTION)]}, "the name 'doc' is given twice"),
        ({"segments": [("doc", "  ")]}, "has no text"),
        ({"segments": [("doc", DOC)], "input_texts": [DOC, DOC]}, "one list of pairs per prompt"),
        ({"segments": [("doc", DOC)], "input_texts": DOC, "granularity": "message"}, "needs a conversation"),
        ({"input_texts": DOC, "granularity": "segment"}, "needs the prompt's parts"),
    ],
)
def test_bad_segments_are_refused(kwargs, match):
    model = exact_model("gpt2", "occlusion")
    with pytest.raises((ValueError, TypeError), match=match):
        model.attribute(**kwargs, show_progress=False)


def test_several_prompts_take_a_list_of_segment_lists():
    model = exact_model("gpt2", "saliency")
    out = model.attribute(
        [DOC + QUESTION, QUESTION + DOC],
        segments=[PIECES, [("question", QUESTION), ("doc", DOC)]],
        granularity="segment",
        generation_args={"max_new_tokens": 2},
        show_progress=False,
    )
    assert out[0].target[:2] == ["doc", "question"]
    assert out[1].target[:2] == ["question", "doc"]


def test_layout_groups_cover_the_gaps_between_named_segments():
    layout = PromptLayout(
        "",
        [1, 2, 3, 4, 5, 6],
        ["template", "user", "user", "user", "user", "template"],
        named=(Segment("doc", "user", 2, 4),),
    )
    assert layout.groups("segment", [False] * 6) == [[1], [2, 3], [4]]


@pytest.mark.parametrize("method", ["occlusion", "feature_ablation"])
def test_fused_segment_features_equal_the_stepwise_reference(method):
    """Whole segments are perturbed once for all steps (fused); each step's own prefix gives the same."""
    model = exact_model("gpt2", method)
    kwargs = dict(segments=PIECES, generated_texts=DOC + QUESTION + REPLY, granularity="segment")
    fused = model.attribute(**kwargs, attributed_fn=probability64, show_progress=False)
    stepwise = model.attribute(**kwargs, attributed_fn=probability64, fused=False, show_progress=False)
    assert fused[0].target[:2] == ["doc", "question"]
    assert_close(fused[0].target_attributions, stepwise[0].target_attributions)


def test_a_template_with_named_fields_gives_the_prompt_and_its_segments():
    """`fill_template` (Captum's TextTemplateInput, with names): the filled prompt and one segment per field;
    attributing with them equals giving the same pieces by hand; bad templates and values are refused."""
    from seqattr.segments import fill_template

    prompt, segments = fill_template(
        "Facts: {anna} {tom}\nQuestion: {question}",
        anna="Anna lives in Paris.",
        tom="Tom lives in Berlin.",
        question="Where does Anna live?",
    )
    assert prompt == "Facts: Anna lives in Paris. Tom lives in Berlin.\nQuestion: Where does Anna live?"
    assert [name for name, _ in segments] == ["anna", "tom", "question"]
    model = exact_model("gpt2", "occlusion")
    run = {"granularity": "segment", "show_progress": False}
    filled = model.attribute(prompt, prompt + " Paris", segments=segments, **run)[0]
    by_hand = model.attribute(
        prompt,
        prompt + " Paris",
        segments=[("anna", "Anna lives in Paris."), ("tom", "Tom lives in Berlin."),
                  ("question", "Where does Anna live?")],
        **run,
    )[0]  # fmt: skip
    assert filled.target == by_hand.target and "anna" in filled.target
    torch.testing.assert_close(filled.target_attributions, by_hand.target_attributions, equal_nan=True)
    for template, values, message in [
        ("{doc} {question}", {"doc": "x"}, "field 'question' has no value; give it as question="),
        ("{doc}", {"doc": "x", "extra": "y"}, "'extra' is not a field of the template"),
        ("{doc} and {doc}", {"doc": "x"}, "uses the field 'doc' twice"),
        ("{} and {}", {}, "fields are plain names"),
        ("{doc:>10}", {"doc": "x"}, "fields are plain names"),
        ("no fields", {}, "the template has no field"),
        ("{doc}", {"doc": "  "}, "has no text"),
    ]:
        with pytest.raises(ValueError, match=message):
            fill_template(template, **values)
