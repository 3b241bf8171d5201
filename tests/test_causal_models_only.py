"""Non-causal models are refused, not explained wrongly (issue 18, item 1).

A BERT-style model runs its attention both ways: loaded as a causal LM it returns numbers, but a step's
probability depends on the tokens after it. These cases used to be accepted silently.
"""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertLMHeadModel, BertModel

import seqattr
from seqattr.models.causality import prefix_dependence
from seqattr.testing import ARCHITECTURES, tiny_model, tiny_tokenizer


def _bert_config(**kwargs) -> BertConfig:
    vocab = len(tiny_tokenizer("gpt2"))
    return BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **kwargs,
    )


def _bert(model_class, **kwargs):
    torch.manual_seed(0)
    return model_class(_bert_config(**kwargs)).eval()


def _saved(folder, model) -> str:
    model.save_pretrained(folder)
    tiny_tokenizer("gpt2").save_pretrained(folder)
    return str(folder)


def test_a_bidirectional_lm_head_model_object_is_refused():
    model = _bert(BertLMHeadModel, is_decoder=False)
    with pytest.raises(ValueError, match="not a causal language model.*attention runs both ways"):
        seqattr.load_model(model, "saliency", tokenizer=tiny_tokenizer("gpt2"))


def test_a_masked_lm_checkpoint_is_refused(tmp_path):
    # AutoModelForCausalLM loads it as a BertLMHeadModel with is_decoder=False: bidirectional, trained head.
    path = _saved(tmp_path, _bert(BertForMaskedLM))
    with pytest.raises(ValueError, match="BertLMHeadModel is not a causal language model"):
        seqattr.load_model(path, "saliency")


def test_a_checkpoint_without_a_language_modelling_head_is_refused(tmp_path):
    # A bare encoder: the head would be initialised at random at load.
    path = _saved(tmp_path, _bert(BertModel, is_decoder=True))
    with pytest.raises(ValueError, match="no trained language-modelling head.*cls.predictions"):
        seqattr.load_model(path, "saliency")


def test_a_bert_trained_as_decoder_is_accepted_and_fused_equals_stepwise():
    # is_decoder=True makes BERT's self-attention causal: then it is a generative model like any other.
    model = seqattr.load_model(
        _bert(BertLMHeadModel, is_decoder=True), "saliency", tokenizer=tiny_tokenizer("gpt2")
    )
    forced = ["the cat sat on the mat"]
    fused = model.attribute(["the cat"], forced, show_progress=False)[0]
    stepwise = model.attribute(["the cat"], forced, fused=False, show_progress=False)[0]
    torch.testing.assert_close(fused.target_attributions, stepwise.target_attributions, equal_nan=True)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_causal_test_model_shows_no_dependence_on_later_tokens(architecture, dtype):
    model = tiny_model(architecture)[0]
    if dtype != model.dtype:
        model = tiny_model(architecture)[0].__class__(model.config).to(dtype).eval()
    assert prefix_dependence(model) == 0.0


def test_the_cli_refuses_a_masked_lm_checkpoint_as_a_user_error(tmp_path, capsys):
    from seqattr.cli import main

    path = _saved(tmp_path, _bert(BertForMaskedLM))
    assert main(["attribute", "-m", path, "-i", "the cat", "--no-show"]) == 2
    assert "is not a causal language model" in capsys.readouterr().err
