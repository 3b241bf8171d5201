"""A new user's chat and context-attribution calls, from docs/chat.md and docs/context_attribution.md as
written: the mistakes such a user plausibly makes are refused with the problem and its fix named (never a
crash deep in a library, never a silently wrong result). Tiny random-weight models of the test zoo.
"""

from __future__ import annotations

import re

import pytest

import seqattr
from seqattr.testing import tiny_model

QUESTION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Anna lives in Paris. Tom lives in Berlin. Where does Anna live?"},
]


def chat_model(method: str = "saliency") -> seqattr.AttributionModel:
    model, tokenizer = tiny_model("qwen2")  # ships a ChatML template
    return seqattr.load_model(model, method, tokenizer=tokenizer)


@pytest.mark.parametrize(
    "reply",
    [
        "Paris<|im_end|>\n",  # the rendered assistant turn, copied with its newline
        "Paris<|im_end|>\n<|im_start|>user\nThanks",  # the next turn too
        "<|im_start|>assistant\nParis",  # the role header the prompt already ends with
    ],
)
def test_a_forced_reply_with_template_tokens_inside_is_refused(reply):
    model = chat_model()
    with pytest.raises(ValueError, match=r"generated_texts\[0\].*special token.*reply's text only"):
        model.attribute(messages=QUESTION, generated_texts=reply, show_progress=False)


def test_a_forced_reply_may_end_with_the_end_of_turn_token():
    # As a generated reply ends: its end-of-turn token is the last step, explained like the others.
    model = chat_model()
    seq = model.attribute(messages=QUESTION, generated_texts="Paris<|im_end|>", show_progress=False)[0]
    assert seq.steps == ["Paris", "<|im_end|>"]


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ({"role": "user"}, "has no 'content' key (its keys: 'role')"),
        ({"role": "user", "text": "Hi"}, "has no 'content' key (its keys: 'role', 'text')"),
        ({"content": "Hi"}, "has no 'role' key (its keys: 'content')"),
    ],
)
def test_a_message_without_its_role_or_content_key_names_the_missing_key(message, named):
    model = chat_model()
    with pytest.raises(TypeError, match=r"messages\[1\] " + re.escape(named)):
        model.attribute(messages=[QUESTION[0], message], generated_texts="Paris", show_progress=False)


@pytest.mark.parametrize(
    "templates",
    [
        {"contextless_input_current_text": ["{current}", "{current}"]},
        {"input_template": ["{context} {current}"] * 2},
    ],
)
def test_attribute_context_refuses_a_template_given_per_example(templates):
    # docs/context_attribution.md: the texts take one per example; a user may try the same for a template.
    hf_model, tokenizer = tiny_model("gpt2")
    model = seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer)
    argument = next(iter(templates))
    with pytest.raises(TypeError, match=rf"{argument} must be one string for every example.*got list"):
        model.attribute_context(
            ["the cat sat on the", "a bird"], "a dog ran home", ["mat and", "flew over"], **templates
        )


def test_whitespace_tokens_with_empty_offsets_belong_to_their_segment():
    # BART's tokenizer trims offsets: a lone space token ('Ġ' before "Paris") gets the empty span (23, 23).
    # It was scaffolding (masked, never perturbed) although it lies inside the "doc" segment, so occluding
    # "doc" left a piece of it in place. Only the special tokens are scaffolding here.
    hf_model, tokenizer = tiny_model("bart")
    model = seqattr.load_model(hf_model, "occlusion", tokenizer=tokenizer)
    text = "Context: Anna lives in Paris. Question: Where does Anna live?"
    segments = [("doc", "Anna lives in Paris."), ("question", " Where does Anna live?")]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    assert "Ġ" in tokens  # the case under test: whitespace-only tokens
    out = model.attribute(text, "Paris", segments=segments, show_progress=False)
    assert out.info["prompts"][0]["template"] == [0, len(tokens) - 1]  # <s> and </s>
    parts = model.attribute(text, "Paris", segments=segments, granularity="segment", show_progress=False)
    assert parts[0].source == ["<s>", "Context:Ġ", "doc", "ĠQuestion:", "question", "</s>"]
