"""Granularity of perturbation methods: words and sentences perturbed as one feature, one score per feature.

The grouping is checked on every tokenizer family (byte-level BPE, SentencePiece, Marian's), and the scores
against perturbing the span by hand: the span's token ids replaced by the unknown token and the model run on
ids (not through seqattr's embeddings), the drop in the step's probability compared with every token of the
span.
"""

from __future__ import annotations

import pytest
import torch

from exact import assert_close, exact_model, float64_model, probability64
from seqattr.features import sentence_groups, token_groups, word_groups
from seqattr.testing import ARCHITECTURES, ENCODER_DECODER

TEXT = "The cat sat on the mat. It is sunny today!"
CONTINUATION = " The dog ran away."
TRANSLATION = "Die Katze sitzt auf der Matte."


def test_word_and_sentence_groups():
    texts = [" The", " c", "at", " sat", ".", "\n", "Yes", "!", " no"]
    special = [False] * len(texts)
    assert word_groups(texts, special) == [[0], [1, 2], [3, 4, 5], [6, 7], [8]]
    assert sentence_groups(texts, special) == [[0, 1, 2, 3, 4, 5], [6, 7], [8]]
    # Special tokens belong to no group and end the word / sentence before them.
    texts = ["<s>", " a", "b", "</s>", "c", " d"]
    special = [True, False, False, True, False, False]
    assert word_groups(texts, special) == [[1, 2], [4], [5]]
    assert sentence_groups(texts, special) == [[1, 2], [4, 5]]
    assert token_groups(["<s>", "▁a"], [True, False], "token") == [[1]]
    assert token_groups(["<s>", "▁a"], [True, False], "all_tokens") == [[0], [1]]


def run(architecture: str, granularity: str, **options):
    model = exact_model(architecture, "feature_ablation", granularity=granularity, baseline="unk", **options)
    generated = TRANSLATION if architecture in ENCODER_DECODER else TEXT + CONTINUATION
    out = model.attribute(
        TEXT, generated, attribute_target=True, show_progress=False, attributed_fn=probability64
    )
    return out[0], out.info["method_info"]["examples"][0]["features"]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_word_spans_are_the_words_of_the_text(architecture):
    seq, spans = run(architecture, "word")
    _, tokenizer = float64_model(architecture)
    side, ids = ("source", seq.source_ids) if architecture in ENCODER_DECODER else ("target", seq.target_ids)
    words = [tokenizer.decode(ids[start:end]).strip() for start, end in spans[side]]
    expected = TEXT.split() if side == "source" else (TEXT + CONTINUATION).split()[: len(words)]
    assert words == expected
    assert len(words) >= len(TEXT.split())
    special = set(tokenizer.all_special_ids)
    for start, end in spans[side]:
        assert not special & set(ids[start:end])
    assert spans["granularity"] == "word"


def hand_scores(architecture: str, seq, side: str, spans) -> torch.Tensor:
    """[features, steps]: the step's probability minus its probability with the span's ids set to unk."""
    hf_model, tokenizer = float64_model(architecture)
    unk = tokenizer.unk_token_id
    scores = torch.zeros(len(spans), seq.num_steps, dtype=torch.float64)

    def probability(source_ids, target_ids, position):
        with torch.no_grad():
            if architecture in ENCODER_DECODER:
                logits = hf_model(
                    input_ids=torch.tensor([source_ids]),
                    decoder_input_ids=torch.tensor([target_ids[:position]]),
                ).logits
            else:
                logits = hf_model(input_ids=torch.tensor([target_ids[:position]])).logits
        return torch.softmax(logits[0, -1], -1)[seq.target_ids[position]]  # the token the step produced

    for step in range(seq.num_steps):
        position = seq.attr_pos_start + step
        clean = probability(seq.source_ids, seq.target_ids, position)
        for feature, (start, end) in enumerate(spans):
            source, target = list(seq.source_ids), list(seq.target_ids)
            edited = source if side == "source" else target
            edited[start:end] = [unk] * (end - start)
            scores[feature, step] = clean - probability(source, target, position)
    return scores


@pytest.mark.parametrize("granularity", ["word", "sentence"])
@pytest.mark.parametrize("architecture", ["gpt2", "llama", "t5", "marian"])
def test_one_score_per_span_equals_perturbing_the_span_by_hand(architecture, granularity):
    seq, spans = run(architecture, granularity)
    side = "source" if architecture in ENCODER_DECODER else "target"
    attributions = seq.source_attributions if side == "source" else seq.target_attributions
    expected = hand_scores(architecture, seq, side, spans[side])
    if granularity == "sentence":  # "The cat sat on the mat.", "It is sunny today!" (+ " The dog ran away.")
        assert len(spans[side]) == (2 if side == "source" else 3)
    for feature, (start, end) in enumerate(spans[side]):
        for step in range(seq.num_steps):
            values = attributions[start:end, step]
            visible = values[~values.isnan()]
            if side == "target" and start >= seq.attr_pos_start + step:
                assert visible.numel() == 0  # a feature the step cannot see is NaN, as any hidden token
                continue
            assert torch.equal(visible, visible[:1].expand_as(visible))  # one score for the whole span
            assert_close(
                visible[:1], expected[feature, step : step + 1].float(), scale=float(expected.abs().max())
            )


def test_all_tokens_perturbs_special_tokens_and_token_does_not():
    seq, spans = run("llama", "token")
    assert spans["target"][0] == [1, 2]  # <s> at 0 is left alone
    assert (seq.target_attributions[0].nan_to_num() == 0).all()
    seq, spans = run("llama", "all_tokens")
    assert spans["target"][0] == [0, 1]
    assert seq.target_attributions[0].nan_to_num().abs().max() > 0
