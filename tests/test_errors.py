"""User mistakes raise an error that names what was wrong and how to fix it, before any model pass when it
can (never a crash deep inside torch)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMultipleChoice, BertModel, GPT2Config, GPT2Model

import seqattr
from conftest import attribution_model
from seqattr.testing import MAX_POSITIONS, tiny_model

PROMPT = "The cat sat on the mat."
LONG_TEXT = "The cat sat on the mat. " * 40  # well over the tiny models' 128 positions


@pytest.fixture(scope="module")
def gpt2():
    return attribution_model("gpt2")


@pytest.fixture(scope="module")
def bart():
    return attribution_model("bart")


def test_unknown_method_lists_the_valid_names(gpt2):
    model, tokenizer = tiny_model("gpt2")
    with pytest.raises(
        ValueError, match="unknown attribution method 'salency'; valid methods: .*input_x_gradient.*saliency"
    ):
        seqattr.load_model(model, "salency", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="unknown attribution method 'salency'; valid methods: .*saliency"):
        gpt2.attribute(PROMPT, method="salency", show_progress=False)


def test_unknown_option_lists_the_valid_ones(gpt2):
    model, tokenizer = tiny_model("gpt2")
    with pytest.raises(
        TypeError, match="saliency got unknown option.* n_steps; its options are: abs, hidden_reduction"
    ):
        seqattr.load_model(model, "saliency", tokenizer=tokenizer, n_steps=5)
    with pytest.raises(TypeError, match="input_x_gradient got unknown option.* abs"):
        gpt2.attribute(PROMPT, method="input_x_gradient", abs=True, show_progress=False)
    with pytest.raises(ValueError, match="unknown hidden_reduction 'max'; valid: 'sum', 'l2'"):
        gpt2.attribute(PROMPT, hidden_reduction="max", show_progress=False)


@pytest.mark.parametrize("texts", ["", "   ", [], [""], ["fine", " \n"]])
def test_empty_input_is_refused(gpt2, texts):
    with pytest.raises(ValueError, match="input_texts.*(non-empty|is empty)"):
        gpt2.attribute(texts, show_progress=False)


def test_no_input_is_refused(gpt2):
    with pytest.raises(TypeError, match=r"attribute\(\) needs input_texts \(or, for question answering"):
        gpt2.attribute(None, show_progress=False)


def test_input_that_is_not_text_is_refused(gpt2):
    with pytest.raises(TypeError, match=r"input_texts\[0\] must be a string or a pair of strings, got int"):
        gpt2.attribute([1], show_progress=False)


def test_forced_decoder_only_target_must_start_with_the_prompt(gpt2):
    with pytest.raises(
        ValueError, match=r"generated_texts\[0\] must start with its prompt.*Pass prompt \+ continuation"
    ):
        gpt2.attribute(PROMPT, " The dog ran away.", show_progress=False)
    with pytest.raises(ValueError, match="tokenizes differently from its prompt at the boundary"):
        gpt2.attribute("The cat sat on the ", "The cat sat on the mat.", show_progress=False)
    with pytest.raises(ValueError, match="adds no tokens to its prompt"):
        gpt2.attribute(PROMPT, PROMPT, show_progress=False)


def test_generated_texts_count_must_match(gpt2, bart):
    for model in (gpt2, bart):
        with pytest.raises(ValueError, match="got 2 input_texts but 1 generated_texts; give one per input"):
            model.attribute([PROMPT, "Why"], [PROMPT + " Yes."], show_progress=False)


@pytest.mark.parametrize("architecture", ["gpt2", "llama", "qwen2", "bart", "marian"])
def test_input_longer_than_the_context_is_refused(architecture):
    model = attribution_model(architecture)
    context = rf"longer than the model's context of {MAX_POSITIONS} tokens"
    with pytest.raises(ValueError, match=rf"input_texts\[0\] is \d+ tokens long, {context}"):
        model.attribute(LONG_TEXT, show_progress=False)
    with pytest.raises(
        ValueError, match=rf"input_texts\[0\] plus max_new_tokens=200 is \d+ tokens long, {context}"
    ):
        model.attribute(PROMPT, generation_args={"max_new_tokens": 200}, show_progress=False)
    with pytest.raises(ValueError, match=rf"max_length=300 is 300 tokens long, {context}"):
        model.attribute(PROMPT, generation_args={"max_length": 300}, show_progress=False)
    forced = LONG_TEXT if model.is_encoder_decoder else PROMPT + LONG_TEXT
    with pytest.raises(ValueError, match=rf"generated_texts\[0\] is \d+ tokens long, {context}"):
        model.attribute(PROMPT, forced, show_progress=False)


def test_a_context_limit_is_only_checked_where_the_model_has_one():
    """T5's relative positions have no limit: a long input is explained, not refused."""
    out = attribution_model("t5").attribute(
        LONG_TEXT, generation_args={"max_new_tokens": 2}, show_progress=False
    )
    assert len(out[0].source_ids) > MAX_POSITIONS


def _bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda: BertModel(_bert_config()),
        lambda: BertForMultipleChoice(_bert_config()),
        lambda: GPT2Model(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2)),
    ],
    ids=["BertModel", "BertForMultipleChoice", "GPT2Model"],
)
def test_a_model_without_a_language_modelling_head_is_refused(build):
    model = build()
    with pytest.raises(TypeError, match=f"{type(model).__name__} is not a generative language model"):
        seqattr.load_model(model, tokenizer=tiny_model("gpt2")[1])


def test_a_saved_model_without_a_generative_class_is_refused(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    DistilBertModel(
        DistilBertConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    ).save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="DistilBertConfig.*not a generative language model"):
        seqattr.load_model(str(tmp_path))


def test_load_model_arguments_are_checked(tmp_path):
    model, tokenizer = tiny_model("gpt2")
    with pytest.raises(
        TypeError, match="model must be a hub id, a local path or a transformers PreTrainedModel, got int"
    ):
        seqattr.load_model(42)
    with pytest.raises(FileNotFoundError, match="no model folder or file at"):
        seqattr.load_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown dtype 'float31'"):
        seqattr.load_model(model, tokenizer=tokenizer, dtype="float31")


@pytest.mark.parametrize(
    ("window", "message"),
    [
        (dict(attr_pos_start=0), r"\[0, \d+\) of a \d+-token target; need 1 <= start < end"),
        (dict(attr_pos_start=5, attr_pos_end=4), r"\[5, 4\)"),
        (dict(attr_pos_end=500), r"attr_pos_end=500 select target positions"),
        (
            dict(attr_pos_start=-500),
            r"attr_pos_start=-500, attr_pos_end=None select target positions \[-\d+, ",
        ),
    ],
)
def test_bad_windows_are_refused(gpt2, bart, window, message):
    with pytest.raises(ValueError, match=message):
        gpt2.attribute(PROMPT, PROMPT + " The dog ran.", show_progress=False, **window)
    with pytest.raises(ValueError, match=message):
        bart.attribute(PROMPT, "Die Katze sitzt auf der Matte.", show_progress=False, **window)


@pytest.mark.parametrize(
    "window", [dict(attr_pos_start=1.5), dict(attr_pos_end="3"), dict(attr_pos_start=True)]
)
def test_windows_must_be_integers(gpt2, window):
    with pytest.raises(TypeError, match="must be an integer target position"):
        gpt2.attribute(PROMPT, show_progress=False, **window)


def test_other_arguments_are_checked(gpt2):
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        gpt2.attribute(PROMPT, batch_size=0, show_progress=False)
    with pytest.raises(TypeError, match="attribute_target must be True or False"):
        gpt2.attribute(PROMPT, attribute_target="yes", show_progress=False)
    with pytest.raises(TypeError, match="generation_args must be a dict of model.generate keyword arguments"):
        gpt2.attribute(PROMPT, generation_args=5, show_progress=False)
    with pytest.raises(ValueError, match="unknown step function 'nope'; valid names: .*probability"):
        gpt2.attribute(PROMPT, step_scores=["nope"], show_progress=False)
    with pytest.raises(ValueError, match="unknown step function 'nope'"):
        gpt2.attribute(PROMPT, attributed_fn="nope", show_progress=False)


def test_errors_leave_the_model_usable(gpt2):
    """A refused call changes nothing: the same model then explains normally (and is still in eval mode)."""
    with pytest.raises(ValueError):
        gpt2.attribute(LONG_TEXT, show_progress=False)
    out = gpt2.attribute(PROMPT, generation_args={"max_new_tokens": 2}, show_progress=False)
    assert out[0].num_steps == 2 and not gpt2.model.training
    assert all(p.grad is None for p in gpt2.model.parameters())
    assert torch.is_grad_enabled()


def test_a_loaded_model_and_tokenizer_are_used_in_place_as_documented():
    """docs/usage.md: no copy is made; eval mode, dtype and a missing pad token are set on the user's
    objects."""
    import copy

    model, tokenizer = (copy.deepcopy(obj) for obj in tiny_model("gpt2"))
    tokenizer.pad_token = None  # the shared tokenizer may have got one from an earlier load_model
    model.train()
    attribution = seqattr.load_model(model, tokenizer=tokenizer, dtype="float64")
    assert attribution.model is model and attribution.tokenizer is tokenizer
    assert not model.training and model.dtype == torch.float64
    assert tokenizer.pad_token == tokenizer.eos_token
