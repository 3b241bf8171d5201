"""The tiny offline models of seqattr.testing: they build, generate, and look like their real families."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from seqattr.testing import (
    ARCHITECTURES,
    CORPUS,
    DECODER_ONLY,
    ENCODER_DECODER,
    MAX_POSITIONS,
    tiny_model,
    tiny_tokenizer,
)

SENTENCES = [
    "The cat sat on the mat.",
    "The capital of France is Paris.",
    "I don't think that's a good idea.",
    "In 2024, the team won the final match 3 to 1.",
    "the dog and the cat are in the garden",  # corpus words in a new sentence
]
UNSEEN = "Zebras quizzically juggle xylophones ©"

# Per family: (space marker, bos prepended, eos appended), the conventions of the real tokenizers.
STYLE = {
    "gpt2": ("Ġ", False, False),
    "llama": ("▁", True, False),
    "qwen2": ("Ġ", False, False),
    "t5": ("▁", False, True),
    "bart": ("Ġ", True, True),
    "marian": ("▁", False, True),
}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def transformers_warnings():
    """Warnings logged by transformers (its logger does not propagate to pytest's caplog)."""
    handler = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def test_architecture_lists():
    assert ARCHITECTURES == DECODER_ONLY + ENCODER_DECODER
    assert set(ARCHITECTURES) == set(STYLE)


def test_unknown_architecture_lists_valid_ones():
    with pytest.raises(ValueError, match="gpt2.*marian"):
        tiny_model("bert")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_builds_tiny_float32_eval_and_cached(arch):
    model, tok = tiny_model(arch)
    assert tiny_model(arch) == (model, tok)  # cached per process
    assert tiny_tokenizer(arch) is tok
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.vocab_size == len(tok) == model.get_input_embeddings().num_embeddings
    assert 300 <= len(tok) <= 600
    assert sum(p.numel() for p in model.parameters()) < 500_000
    assert model.config.is_encoder_decoder == (arch in ENCODER_DECODER)
    assert tok.model_max_length == MAX_POSITIONS


@pytest.mark.parametrize("arch", DECODER_ONLY)
def test_decoder_only_context_length(arch):
    model, _ = tiny_model(arch)
    n_positions = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    assert n_positions == MAX_POSITIONS
    if arch != "gpt2":  # grouped-query attention, as in the real Llama / Qwen2
        assert model.config.num_key_value_heads < model.config.num_attention_heads


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_generate_quietly(arch, transformers_warnings):
    model, tok = tiny_model(arch)
    enc = tok("some text", return_tensors="pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert not [r.getMessage() for r in transformers_warnings]
    new = out[0] if arch in ENCODER_DECODER else out[0, enc["input_ids"].shape[1] :]
    assert 1 <= len(new) <= 9
    if arch in ENCODER_DECODER:
        assert new[0].item() == model.generation_config.decoder_start_token_id
    # greedy generation from a random model must not be one token repeated
    longer = model.generate(**tok(SENTENCES[0], return_tensors="pt"), max_new_tokens=10, do_sample=False)
    assert len(set(longer[0, -8:].tolist())) >= 3


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logits_peaked_and_gradients_nonzero(arch):
    model, tok = tiny_model(arch)
    enc = tok(SENTENCES[1], return_tensors="pt")
    embeds = model.get_input_embeddings()(enc["input_ids"]).detach().requires_grad_(True)
    kwargs = {"inputs_embeds": embeds, "attention_mask": enc["attention_mask"]}
    if arch in ENCODER_DECODER:
        kwargs["decoder_input_ids"] = torch.tensor([[model.config.decoder_start_token_id, 5, 6, 7]])
    logits = model(**kwargs).logits[0]
    probs = logits.softmax(-1)
    assert probs.max(-1).values.mean() > 10 / len(tok)  # far from uniform
    probs.max(-1).values.sum().backward(inputs=[embeds])  # no .grad on the shared model's parameters
    assert embeds.grad.abs().sum(-1).gt(0).all()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_round_trip_markers_and_special_layout(arch):
    _, tok = tiny_model(arch)
    marker, bos_prepended, eos_appended = STYLE[arch]
    for text in SENTENCES + list(CORPUS[:10]):
        ids = tok(text)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert (ids[0] == tok.bos_token_id) == bos_prepended
        assert (ids[-1] == tok.eos_token_id) == eos_appended
    tokens = tok.convert_ids_to_tokens(tok("the cat sat on the mat")["input_ids"])
    assert any(t.startswith(marker) and len(t) > 1 for t in tokens)
    other = "▁" if marker == "Ġ" else "Ġ"
    assert not any(other in t for t in tokens)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_unseen_words_still_tokenize(arch):
    _, tok = tiny_model(arch)
    ids = tok(UNSEEN)["input_ids"]
    assert all(0 <= i < len(tok) for i in ids)
    text = tok.decode(ids, skip_special_tokens=True)
    if arch in ("t5", "marian"):  # unigram without byte fallback: unknown characters become <unk>
        assert tok.unk_token_id in ids and text.startswith("Zebras quizzically juggle")
    else:  # byte-level BPE and Llama's byte fallback lose nothing
        assert text == UNSEEN
    if arch == "llama":
        assert "<0xC2>" in tok.convert_ids_to_tokens(ids)


def fresh_tokenizer(arch: str):
    """A newly built tokenizer: the cached one is shared, and load_model gives it a pad token in place
    (docs/usage.md), so its pad token depends on which tests ran before."""
    return tiny_tokenizer.__wrapped__(arch)


def test_special_tokens_per_family():
    gpt2 = fresh_tokenizer("gpt2")
    assert gpt2.bos_token == gpt2.eos_token == gpt2.unk_token == "<|endoftext|>"
    assert gpt2.pad_token is None and gpt2.eos_token_id == len(gpt2) - 1

    llama = fresh_tokenizer("llama")
    assert (llama.unk_token_id, llama.bos_token_id, llama.eos_token_id) == (0, 1, 2)
    assert (llama.unk_token, llama.bos_token, llama.eos_token) == ("<unk>", "<s>", "</s>")
    assert llama.pad_token is None

    qwen2 = tiny_tokenizer("qwen2")
    assert qwen2.bos_token is None
    assert qwen2.eos_token == qwen2.pad_token == "<|endoftext|>"
    assert {"<|im_start|>", "<|im_end|>"} <= set(qwen2.all_special_tokens)
    assert "<|im_start|>assistant" in qwen2.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )

    t5 = tiny_tokenizer("t5")
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert (t5.pad_token, t5.eos_token, t5.unk_token) == ("<pad>", "</s>", "<unk>")
    assert t5.bos_token is None

    bart = tiny_tokenizer("bart")
    assert [bart.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert (bart.bos_token_id, bart.pad_token_id, bart.eos_token_id, bart.unk_token_id) == (0, 1, 2, 3)
    assert bart.mask_token == "<mask>" and bart.mask_token_id == len(bart) - 1

    marian = tiny_tokenizer("marian")
    assert type(marian).__name__ == "MarianTokenizer"
    assert (marian.eos_token_id, marian.unk_token_id) == (0, 1)
    assert marian.pad_token == "<pad>" and marian.pad_token_id == len(marian) - 1
    assert marian.bos_token is None


@pytest.mark.parametrize("arch", ENCODER_DECODER)
def test_text_target_gives_labels_ending_in_eos(arch):
    _, tok = tiny_model(arch)
    batch = tok("The house is wonderful.", text_target="Das Haus ist wunderbar.")
    labels = batch["labels"]
    assert labels[-1] == tok.eos_token_id
    assert tok.decode(labels, skip_special_tokens=True) == "Das Haus ist wunderbar."
    assert tok(text_target="Das Haus ist wunderbar.")["input_ids"] == labels


EXPECTED_DECODER_START = {"t5": "pad", "bart": "eos", "marian": "pad"}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_config_ids_match_tokenizer(arch):
    model, tok = tiny_model(arch)[0], fresh_tokenizer(arch)
    config, generation = model.config, model.generation_config
    # transformers 5 configs are strict: T5Config has no bos_token_id attribute at all
    assert config.eos_token_id == generation.eos_token_id == tok.eos_token_id
    assert getattr(config, "bos_token_id", None) == generation.bos_token_id == tok.bos_token_id
    assert config.pad_token_id == tok.pad_token_id
    # tokenizers without pad (gpt2, llama) still generate quietly: eos pads, as generate() would pick
    assert generation.pad_token_id == (tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        value = getattr(config, name, None)
        assert value is None or 0 <= value < len(tok)
    if arch in ENCODER_DECODER:
        start = getattr(tok, f"{EXPECTED_DECODER_START[arch]}_token_id")
        assert config.decoder_start_token_id == generation.decoder_start_token_id == start


def test_seed_gives_other_weights_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, _ = tiny_model("gpt2", seed=0)
    b, _ = tiny_model("gpt2", seed=1)
    assert torch.equal(torch.rand(3), expected)
    wa, wb = a.get_input_embeddings().weight, b.get_input_embeddings().weight
    assert not torch.equal(wa, wb)
