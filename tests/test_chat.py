"""Chat models: messages in, the tokenizer's chat template applied exactly, the reply explained.

The tiny Qwen2 of the zoo ships a ChatML template (``seqattr.testing``); a tiny Llama gets a Llama-2 style
Jinja template here (with ``{{ bos_token }}`` in the text: a BOS that must not be doubled). Checked: the
prompt is exactly ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``, the scaffolding is
marked (``seq.token_roles``), masked and never perturbed, the reply's tokens are the explained steps, and
bad conversations are refused.
"""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch

import seqattr
from exact import assert_close, exact_model, float64_model, probability64
from seqattr.cli import main
from seqattr.testing import tiny_model

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "the cat sat on the mat"},
    {"role": "assistant", "content": "It did."},
]
QUESTION = CONVERSATION[:2]
REPLY = " the dog"
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}<<SYS>> "
    "{{ message['content'] | trim }} <</SYS>>{% elif message['role'] == 'user' %}[INST] "
    "{{ message['content'] | trim }} [/INST]{% else %} {{ message['content'] | trim }} {{ eos_token }}"
    "{% endif %}{% endfor %}"
)


@functools.cache
def llama_chat() -> tuple:
    """The tiny Llama with a copy of its tokenizer given a Llama-2 style chat template (the cached one is
    left untouched)."""
    model, tokenizer = tiny_model("llama")
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = LLAMA_TEMPLATE
    return model, tokenizer


def chat_model(architecture: str = "qwen2", method: str = "saliency", **options) -> seqattr.AttributionModel:
    model, tokenizer = llama_chat() if architecture == "llama" else tiny_model(architecture)
    return seqattr.load_model(model, method, tokenizer=tokenizer, **options)


def template_ids(tokenizer, conversation) -> list[int]:
    return list(tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=False))


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
def test_prompt_is_exactly_the_chat_template_and_the_reply_is_explained(architecture):
    model = chat_model(architecture)
    out = model.attribute(messages=QUESTION, generated_texts=REPLY, show_progress=False)
    seq = out[0]
    prompt = template_ids(model.tokenizer, QUESTION)
    assert seq.target_ids[: len(prompt)] == prompt
    assert seq.attr_pos_start == len(prompt)
    # The steps are the reply's tokens, as the tokenizer makes them (no prompt, no special tokens added).
    assert (
        seq.target_ids[seq.attr_pos_start :] == model.tokenizer(REPLY, add_special_tokens=False)["input_ids"]
    )
    if architecture == "llama":  # the template writes <s> itself: one BOS, not two
        assert seq.target_ids[:2].count(model.tokenizer.bos_token_id) == 1


def test_generated_reply_is_what_generate_gives_after_the_template():
    model = chat_model()
    out = model.attribute(messages=QUESTION, generation_args={"max_new_tokens": 4}, show_progress=False)
    prompt = template_ids(model.tokenizer, QUESTION)
    expected = model.model.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False)[0].tolist()
    assert out[0].target_ids == expected[: len(out[0].target_ids)]
    assert out[0].attr_pos_start == len(prompt)


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
def test_scaffolding_is_marked_masked_and_left_out_of_normalisation(architecture):
    model = chat_model(architecture)
    seq = model.attribute(messages=CONVERSATION, generated_texts=REPLY, show_progress=False)[0]
    roles = seq.token_roles
    assert len(roles) == len(seq.target)
    # Each message's own tokens decode to its text; everything else of the prompt is template.
    for message in CONVERSATION:
        ids = [i for i, r in zip(seq.target_ids, roles, strict=True) if r == message["role"]]
        if message["role"] == "assistant":
            ids = ids[: -len(seq.steps)]  # the earlier assistant turn, then the reply's tokens
        assert model.tokenizer.decode(ids).strip() == message["content"]
    template = [p for p, r in enumerate(roles) if r == "template"]
    assert template and 0 in template  # role header (or BOS) first
    assert roles[seq.attr_pos_start :] == ["assistant"] * seq.num_steps
    assert list(seq.masked_target) == template
    # Normalised per step over the message tokens only: the scaffolding's gradients do not dilute them.
    normalized = seq.normalize().target_attributions
    kept = [p for p in range(len(roles)) if p not in template]
    for step in range(seq.num_steps):
        column = normalized[kept, step]
        assert torch.isclose(column.nan_to_num().abs().sum(), torch.tensor(1.0), atol=1e-5)
    shown = model.attribute(
        messages=CONVERSATION, generated_texts=REPLY, include_template=True, show_progress=False
    )
    assert shown[0].masked_target == () and shown[0].token_roles == roles
    assert shown.info["include_template"] is True


def test_template_tokens_are_not_perturbed_unless_asked():
    model = chat_model(method="occlusion")
    out = model.attribute(messages=QUESTION, generated_texts=REPLY, show_progress=False)
    seq, spans = out[0], out.info["method_info"]["examples"][0]["features"]["target"]
    template = {p for p, r in enumerate(seq.token_roles) if r == "template"}
    perturbed = {p for a, b in spans for p in range(a, b)}
    assert not perturbed & template
    assert perturbed >= {p for p, r in enumerate(seq.token_roles) if r in ("system", "user")}
    assert (seq.target_attributions[sorted(template)].nan_to_num() == 0).all()
    included = model.attribute(
        messages=QUESTION, generated_texts=REPLY, include_template=True, show_progress=False
    )
    spans = included.info["method_info"]["examples"][0]["features"]["target"]
    perturbed = {p for a, b in spans for p in range(a, b)}
    special = set(model.tokenizer.all_special_ids)
    assert {p for p in template if seq.target_ids[p] not in special} <= perturbed


def test_forced_full_text_is_cut_to_the_reply():
    """The plain prompts' convention (prompt + continuation) also works: the rendered prompt is dropped."""
    model = chat_model()
    rendered = model.tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    full = model.attribute(messages=QUESTION, generated_texts=rendered + REPLY, show_progress=False)
    reply = model.attribute(messages=QUESTION, generated_texts=REPLY, show_progress=False)
    assert full[0].target_ids == reply[0].target_ids


def test_several_conversations_batch_like_one_at_a_time():
    model = chat_model(method="saliency")
    other = [{"role": "user", "content": "a dog runs"}]
    both = model.attribute(messages=[QUESTION, other], generated_texts=[REPLY, " fast"], show_progress=False)
    alone = model.attribute(messages=other, generated_texts=" fast", show_progress=False)
    assert both[1].target_ids == alone[0].target_ids
    assert both[1].token_roles == alone[0].token_roles
    assert_close(both[1].target_attributions, alone[0].target_attributions, rtol=1e-4)


def test_message_granularity_gives_one_feature_per_message():
    """A 3-message conversation: 3 features for the first step (the reply's tokens follow as features of the
    later steps), one named row per message, each message's score that of perturbing it whole."""
    model = exact_model("qwen2", "feature_ablation", baseline=tiny_model("qwen2")[1].eos_token_id)
    out = model.attribute(
        messages=CONVERSATION,
        generated_texts=REPLY,
        granularity="message",
        attributed_fn=probability64,
        show_progress=False,
    )
    seq = out[0]
    spans = out.info["method_info"]["examples"][0]["features"]["target"]
    prompt_length = len(template_ids(model.tokenizer, CONVERSATION))
    prompt_spans = [s for s in spans if s[1] <= prompt_length]
    assert len(prompt_spans) == 3
    names = [seq.target[i] for i in range(len(seq.target)) if i not in seq.masked_target][:3]
    assert names == ["system", "user", "assistant"]
    assert len(seq.token_roles) == len(seq.target)
    hf_model, tokenizer = float64_model("qwen2")
    ids = template_ids(tokenizer, CONVERSATION) + tokenizer(REPLY, add_special_tokens=False)["input_ids"]
    row_of = {name: seq.target.index(name) for name in names}
    for (start, end), name in zip(prompt_spans, names, strict=True):
        for step in range(seq.num_steps):
            position = prompt_length + step
            edited = list(ids)
            edited[start:end] = [tokenizer.eos_token_id] * (end - start)
            expected = probability(hf_model, ids, position) - probability(hf_model, edited, position)
            assert_close(seq.target_attributions[row_of[name], step : step + 1], expected.reshape(1))


def probability(hf_model, ids: list[int], position: int) -> torch.Tensor:
    """The probability of ``ids[position]`` after ``ids[:position]``."""
    with torch.no_grad():
        logits = hf_model(input_ids=torch.tensor([ids[:position]])).logits
    return torch.softmax(logits[0, -1], -1)[ids[position]]


def test_message_granularity_sums_gradient_scores_per_message():
    model = chat_model(method="input_x_gradient")
    tokens = model.attribute(messages=CONVERSATION, generated_texts=REPLY, show_progress=False)[0]
    rows = model.attribute(
        messages=CONVERSATION, generated_texts=REPLY, granularity="message", show_progress=False
    )[0]
    for role in ("system", "user", "assistant"):
        positions = [p for p, r in enumerate(tokens.token_roles[: tokens.attr_pos_start]) if r == role]
        expected = tokens.target_attributions[positions].sum(0)
        assert_close(rows.target_attributions[rows.target.index(role)], expected, rtol=1e-5)
    assert rows.steps == tokens.steps


def test_part_rows_are_recorded_as_an_aggregation_and_evaluate_asks_for_tokens():
    model = chat_model()
    rows = model.attribute(
        messages=QUESTION, generated_texts=REPLY, granularity="message", show_progress=False
    )
    assert rows.info["aggregations"] == ["aggregate(message)"]
    with pytest.raises(ValueError, match="was aggregated"):
        model.evaluate(rows, metrics=["comprehensiveness"])
    tokens = model.attribute(messages=QUESTION, generated_texts=REPLY, show_progress=False)
    words = tokens.aggregate("word")  # roles follow the merged rows; the scaffolding stays masked
    assert len(words[0].token_roles) == len(words[0].target)
    assert all(words[0].token_roles[p] == "template" for p in words[0].masked_target)


def test_save_and_load_keep_the_roles(tmp_path):
    out = chat_model().attribute(messages=QUESTION, generated_texts=REPLY, show_progress=False)
    out.save(tmp_path / "chat.json")
    loaded = seqattr.load(tmp_path / "chat.json")
    assert loaded[0].token_roles == out[0].token_roles
    assert loaded[0].masked_target == out[0].masked_target


@pytest.mark.parametrize(
    ("messages", "error", "match"),
    [
        ([{"role": "robot", "content": "hi"}], ValueError, "unknown role 'robot'"),
        ([], ValueError, "empty conversation"),
        ([[{"role": "user", "content": "hi"}], []], ValueError, r"messages\[1\] is an empty conversation"),
        ([{"role": "user", "content": "  "}], ValueError, "has no text content"),
        ([{"content": "hi"}], TypeError, "must be a dict with 'role' and 'content'"),
        ("hello", TypeError, "must be a list of messages"),
    ],
)
def test_bad_conversations_are_refused(messages, error, match):
    with pytest.raises(error, match=match):
        chat_model().attribute(messages=messages, show_progress=False)


def test_a_model_without_a_chat_template_is_refused():
    model = chat_model("gpt2")
    with pytest.raises(ValueError, match="has no chat template"):
        model.attribute(messages=QUESTION, show_progress=False)


def test_other_mistakes_are_refused():
    model = chat_model()
    with pytest.raises(ValueError, match="give the prompt once"):
        model.attribute("the cat", messages=QUESTION, show_progress=False)
    with pytest.raises(ValueError, match="granularity='message' needs the prompt's parts"):
        model.attribute("the cat", method="occlusion", granularity="message", show_progress=False)
    with pytest.raises(ValueError, match="granularity='segment' needs named segments"):
        model.attribute(messages=QUESTION, generated_texts=REPLY, granularity="segment", show_progress=False)
    t5, t5_tokenizer = tiny_model("t5")
    seq2seq = seqattr.load_model(t5, "saliency", tokenizer=t5_tokenizer)
    with pytest.raises(ValueError, match="for decoder-only chat models"):
        seq2seq.attribute(messages=QUESTION, show_progress=False)


def test_cli_messages_file(tmp_path, capsys):
    model, tokenizer = tiny_model("qwen2")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps(QUESTION))
    saved = tmp_path / "out.json"
    code = main(
        ["attribute", "-m", str(folder), "--messages", str(chat), "-g", REPLY, "-o", str(saved), "--no-show"]
    )
    assert code == 0
    out = seqattr.load(saved)
    assert out[0].target_ids[: out[0].attr_pos_start] == template_ids(tokenizer, QUESTION)
    assert "template" in out[0].token_roles
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"role": "robot", "content": "x"}]))
    assert main(["attribute", "--messages", str(bad)]) == 2
    assert "unknown role 'robot'" in capsys.readouterr().err


@pytest.mark.slow
def test_default_instruct_model_template_is_applied_exactly():
    model = seqattr.load_model()
    out = model.attribute(messages=QUESTION, generated_texts=" Yes.", show_progress=False)
    seq = out[0]
    prompt = template_ids(model.tokenizer, QUESTION)
    assert seq.target_ids[: seq.attr_pos_start] == prompt
    assert seq.steps == model.convert_ids_to_tokens(
        model.tokenizer(" Yes.", add_special_tokens=False)["input_ids"]
    )
    template = [p for p, r in enumerate(seq.token_roles) if r == "template"]
    assert list(seq.masked_target) == template
    assert [model.tokenizer.convert_ids_to_tokens(seq.target_ids[p]) for p in template].count(
        "<|im_start|>"
    ) == 3
    # Without a system message SmolLM2's template writes its own default one: scaffolding, not a message.
    user_only = model.attribute(messages=QUESTION[1:], generated_texts=" Yes.", show_progress=False)[0]
    assert "system" not in user_only.token_roles
    assert user_only.target_ids[: user_only.attr_pos_start] == template_ids(model.tokenizer, QUESTION[1:])
