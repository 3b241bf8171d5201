"""Aggregation: reductions, normalisation, masking, differences, slicing, merging, and token grouping
(words on BPE, SentencePiece and WordPiece tokenizers; sentences; regex; spans), checked against hand
computations written independently of the code under test (explicit loops over known tensors)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import attribution_model
from seqattr import AttributionOutput, SequenceAttribution
from seqattr.data.tokens import detect_scheme, token_texts
from seqattr.testing import tiny_model
from seqattr.trace import GenerationTrace

NAN = float("nan")


def decoder_only_seq(tokens: list[str], prompt_len: int, extra: tuple[int, ...] = (), seed: int = 0):
    """A decoder-only layout with known random scores: steps explain tokens prompt_len..end."""
    g = torch.Generator().manual_seed(seed)
    length, steps = len(tokens), len(tokens) - prompt_len
    values = torch.randn(length, steps, *extra, generator=g)
    for t in range(steps):
        values[prompt_len + t :, t] = NAN
    return SequenceAttribution(
        source=[],
        target=tokens,
        source_ids=[],
        target_ids=list(range(100, 100 + length)),
        source_attributions=None,
        target_attributions=values,
        step_scores={
            "probability": torch.rand(steps, generator=g),
            "logprob": torch.randn(steps, generator=g),
            "entropy": torch.rand(steps, generator=g),
            "custom": torch.randn(steps, generator=g),
        },
        attr_pos_start=prompt_len,
        attr_pos_end=length,
    )


def encoder_decoder_seq(source: list[str], target: list[str], extra: tuple[int, ...] = (), seed: int = 1):
    """Encoder-decoder layout: target[0] is the decoder start, steps explain target[1:]."""
    g = torch.Generator().manual_seed(seed)
    steps = len(target) - 1
    target_values = torch.randn(len(target), steps, *extra, generator=g)
    for t in range(steps):
        target_values[1 + t :, t] = NAN
    return SequenceAttribution(
        source=source,
        target=target,
        source_ids=list(range(len(source))),
        target_ids=list(range(50, 50 + len(target))),
        source_attributions=torch.randn(len(source), steps, *extra, generator=g),
        target_attributions=target_values,
        step_scores={"probability": torch.rand(steps, generator=g)},
        attr_pos_start=1,
        attr_pos_end=len(target),
    )


# ---------------------------------------------------------------------------------------------------------
# Reductions over extra dimensions
# ---------------------------------------------------------------------------------------------------------


def test_reductions_over_hidden_equal_hand_computations():
    seq = encoder_decoder_seq(["a", "b", "c"], ["<s>", "x", "y", "z"], extra=(5,))
    raw = seq.source_attributions
    for name, expected in {
        "sum": lambda v: sum(v),
        "mean": lambda v: sum(v) / len(v),
        "l2": lambda v: math.sqrt(sum(x * x for x in v)),
        "max": max,
        "min": min,
        "absmax": lambda v: max(v, key=abs),
    }.items():
        reduced = seq.reduce(name).source_attributions
        assert reduced.shape == raw.shape[:2]
        for i in range(raw.shape[0]):
            for j in range(raw.shape[1]):
                assert float(reduced[i, j]) == pytest.approx(expected(raw[i, j].tolist()), rel=1e-5), name
    # Unseen target cells stay NaN after reduction; seen ones are finite.
    target = seq.reduce("l2").target_attributions
    assert torch.equal(target.isnan(), seq.target_attributions[..., 0].isnan())


def test_reduce_chosen_dimension_and_callable():
    seq = decoder_only_seq(["a", "b", "c", "d"], 2, extra=(3, 4))  # layers x heads
    raw = seq.target_attributions
    heads_mean = seq.reduce("mean", dim=1)
    assert heads_mean.attribution_shape == (4, 2, 3)
    torch.testing.assert_close(heads_mean.target_attributions, raw.mean(3), equal_nan=True)
    last_layer = heads_mean.reduce(lambda t, d: t.select(d, -1), dim=0)
    torch.testing.assert_close(last_layer.target_attributions, raw[:, :, -1].mean(-1), equal_nan=True)
    assert seq.reduce("sum").reduce("sum").extra_dims == 0  # reducing nothing is a no-op
    with pytest.raises(ValueError, match="extra dimension"):
        seq.reduce("sum", dim=2)
    with pytest.raises(ValueError, match="valid names"):
        seq.reduce("median")


# ---------------------------------------------------------------------------------------------------------
# Normalisation, rescaling, masking
# ---------------------------------------------------------------------------------------------------------


def test_normalize_divides_each_step_by_l1_of_unmasked_scores():
    seq = encoder_decoder_seq(["<s>", "a", "b", "</s>"], ["<pad>", "x", "y", "z"])
    masked = seq.mask_special()
    assert masked.masked_source == (0, 3) and masked.masked_target == (0,)
    out = masked.normalize()
    src, tgt = seq.source_attributions, seq.target_attributions
    for step in range(seq.num_steps):
        norm = sum(abs(float(src[i, step])) for i in (1, 2))
        norm += sum(abs(float(tgt[i, step])) for i in (1, 2, 3) if not math.isnan(float(tgt[i, step])))
        for i in range(4):
            assert float(out.source_attributions[i, step]) == pytest.approx(
                float(src[i, step]) / norm, rel=1e-5
            )
        kept = [abs(float(out.source_attributions[i, step])) for i in (1, 2)]
        kept += [abs(v) for v in out.target_attributions[1:, step].tolist() if not math.isnan(v)]
        assert sum(kept) == pytest.approx(1.0, rel=1e-5)
    # The data keep the masked tokens, and unmasking restores the plain L1 normalisation.
    assert out.source == seq.source and out.unmask().masked_source == ()
    with pytest.raises(ValueError, match="reduce them first"):
        encoder_decoder_seq(["a"], ["<s>", "x"], extra=(2,)).normalize()


def test_rescale_and_mask_by_token_id_position():
    seq = decoder_only_seq(["a", "b", "c", "d", "e"], 2)
    values = seq.target_attributions
    largest = values.abs().nan_to_num().max()
    torch.testing.assert_close(seq.rescale().target_attributions, values / largest, equal_nan=True)
    per_step = seq.rescale(per_step=True).target_attributions
    for step in range(seq.num_steps):
        assert per_step[:, step].abs().nan_to_num().max() == pytest.approx(1.0)
    masked = seq.mask(tokens=["a"], ids=[101], target_positions=[4])
    assert masked.masked_target == (0, 1, 4)
    largest_unmasked = values[2:4].abs().nan_to_num().max()
    torch.testing.assert_close(
        masked.rescale().target_attributions, values / largest_unmasked, equal_nan=True
    )
    with pytest.raises(ValueError, match="out of range"):
        seq.mask(target_positions=[9])


# ---------------------------------------------------------------------------------------------------------
# Differences, slicing, merging outputs
# ---------------------------------------------------------------------------------------------------------


def test_difference_slicing_and_merge():
    a = encoder_decoder_seq(["a", "b"], ["<s>", "x", "y", "z"], seed=1)
    b = encoder_decoder_seq(["a", "b"], ["<s>", "x", "y", "z"], seed=2)
    diff = a - b
    torch.testing.assert_close(diff.source_attributions, a.source_attributions - b.source_attributions)
    torch.testing.assert_close(
        diff.target_attributions, a.target_attributions - b.target_attributions, equal_nan=True
    )
    torch.testing.assert_close(
        diff.step_scores["probability"], a.step_scores["probability"] - b.step_scores["probability"]
    )
    out_diff = AttributionOutput([a], {"method": "m1"}) - AttributionOutput([b], {"method": "m2"})
    assert out_diff[0].allclose(diff)
    other = encoder_decoder_seq(["a", "c"], ["<s>", "x", "y", "z"])
    with pytest.raises(ValueError, match="different source tokens"):
        a - other

    part = a[1:3]
    assert part.steps == ["y", "z"] and part.attr_pos_start == 2
    torch.testing.assert_close(part.source_attributions, a.source_attributions[:, 1:3])
    torch.testing.assert_close(part.step_scores["probability"], a.step_scores["probability"][1:3])
    last = a[-1]
    assert last.steps == ["z"] and last.num_steps == 1
    first = a[:1]
    assert first.target == ["<s>", "x"] and first.target_attributions.shape == (2, 1)
    with pytest.raises(IndexError):
        a[5]

    merged = AttributionOutput.merge(
        [
            AttributionOutput([a], {"method": "saliency", "timing": 1}),
            AttributionOutput([b], {"method": "saliency", "timing": 2}),
        ]
    )
    assert len(merged) == 2 and merged[1] is b
    assert merged.info["method"] == "saliency" and "timing" not in merged.info
    assert [i["timing"] for i in merged.info["merged_from"]] == [1, 2]
    assert len(merged[1:]) == 1


def test_slicing_keeps_the_matching_trace_steps():
    seq = decoder_only_seq(["a", "b", "c", "d", "e"], 2)
    steps = seq.num_steps
    trace = GenerationTrace(
        token_ids=torch.arange(steps),
        tokens=seq.steps,
        probabilities=torch.rand(steps),
        ranks=torch.tensor([0, 2, 0]),
        entropy=torch.rand(steps),
        top_ids=torch.zeros(steps, 2, dtype=torch.long),
        top_tokens=[["p", "q"]] * steps,
        top_probabilities=torch.rand(steps, 2),
    )
    import dataclasses

    part = dataclasses.replace(seq, trace=trace)[1:]
    assert part.trace.tokens == ["d", "e"] and part.trace.ranks.tolist() == [2, 0]


# ---------------------------------------------------------------------------------------------------------
# Words, sentences, regex, spans
# ---------------------------------------------------------------------------------------------------------


def expected_merge(seq: SequenceAttribution, groups: list[tuple[int, int]]):
    """Merged target matrix by explicit loops: sum rows and steps; NaN unless the row group precedes."""
    start, end = seq.attr_pos_start, seq.attr_pos_end
    step_groups = [g for g in groups if g[1] > start and g[0] < end]
    values = seq.target_attributions
    result = torch.full((len(groups), len(step_groups)), NAN)
    for gi, (ra, rb) in enumerate(groups):
        for hi, (sa, sb) in enumerate(step_groups):
            if rb <= sa:
                result[gi, hi] = sum(
                    float(values[r, p - start])
                    for r in range(ra, rb)
                    for p in range(max(sa, start), min(sb, end))
                )
    return result, step_groups


def word_tokens(architecture: str, text: str) -> list[str]:
    _, tokenizer = tiny_model(architecture)
    return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_words_on_byte_level_bpe_merge_rows_steps_and_step_scores():
    tokens = word_tokens("gpt2", "The capital of France is Paris. Café")
    assert detect_scheme(tokens) == "bpe"
    seq = decoder_only_seq(tokens, prompt_len=2)
    words = seq.aggregate("words")
    # The prompt ends inside " capital" (tokens "Ġcapit" | "al"): the word is split at that boundary.
    texts = ["The", " capit", "al", " of", " France", " is", " Paris.", " Café"]
    assert token_texts(words.target) == texts
    groups, start = [], 0
    for text in texts:  # rebuild the groups from the expected words, independently of the grouping code
        end, joined = start, ""
        while joined != text:
            joined += token_texts(tokens)[end]
            end += 1
        groups.append((start, end))
        start = end
    expected, step_groups = expected_merge(seq, groups)
    torch.testing.assert_close(words.target_attributions, expected, equal_nan=True)
    assert words.attr_pos_start == 2 and words.steps == words.target[2:]
    scores = seq.step_scores
    for hi, (a, b) in enumerate(step_groups):
        steps = [p - seq.attr_pos_start for p in range(max(a, 2), b)]
        assert float(words.step_scores["probability"][hi]) == pytest.approx(
            math.prod(float(scores["probability"][s]) for s in steps), rel=1e-5
        )
        assert float(words.step_scores["logprob"][hi]) == pytest.approx(
            sum(float(scores["logprob"][s]) for s in steps), rel=1e-5, abs=1e-6
        )
        assert float(words.step_scores["entropy"][hi]) == pytest.approx(
            sum(float(scores["entropy"][s]) for s in steps), rel=1e-5
        )
        assert float(words.step_scores["custom"][hi]) == pytest.approx(
            sum(float(scores["custom"][s]) for s in steps) / len(steps), rel=1e-5, abs=1e-6
        )


def test_words_on_sentencepiece_encoder_decoder_and_special_tokens_stay_alone():
    for architecture in ("t5", "llama"):
        source = word_tokens(architecture, "The capital of France is Paris.") + ["</s>"]
        target = ["<pad>", *word_tokens(architecture, "Paris est la capitale."), "</s>"]
        assert detect_scheme(source + target) == "sentencepiece"
        seq = encoder_decoder_seq(source, target)
        words = seq.aggregate("words", fn="mean")
        assert [t.strip() for t in token_texts(words.source)] == [
            "The",
            "capital",
            "of",
            "France",
            "is",
            "Paris.",
            "</s>",
        ]
        assert [t.strip() for t in token_texts(words.target)] == [
            "<pad>",
            "Paris",
            "est",
            "la",
            "capitale.",
            "</s>",
        ]
        # Source rows: mean over each word's tokens, then summed over the steps of each target word.
        src_texts = token_texts(source)
        groups, current = [], []
        for i, text in enumerate(src_texts):
            if (text.startswith(" ") and current) or source[i] == "</s>":
                groups.append(current)
                current = []
            current.append(i)
        groups.append(current)
        _, step_groups = expected_merge(seq, _spans_of(words, seq))
        for gi, rows in enumerate(groups):
            for hi, (a, b) in enumerate(step_groups):
                expected = sum(
                    sum(float(seq.source_attributions[r, p - 1]) for r in rows) / len(rows)
                    for p in range(a, b)
                )
                assert float(words.source_attributions[gi, hi]) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def _spans_of(merged: SequenceAttribution, original: SequenceAttribution) -> list[tuple[int, int]]:
    """Target spans of a merged sequence, from the number of ids each merged token holds."""
    spans, start = [], 0
    for ids in merged.target_ids:
        width = len(ids) if isinstance(ids, list) else 1
        spans.append((start, start + width))
        start += width
    assert start == len(original.target)
    return spans


@pytest.fixture(scope="module")
def wordpiece_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "the",
        "cat",
        "play",
        "##ing",
        "##ed",
        "un",
        "##believ",
        "##able",
        ".",
        "dog",
        "##s",
    ]
    model = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    model.normalizer = normalizers.BertNormalizer(lowercase=True)
    model.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    model.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=model, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )


def test_words_on_wordpiece(wordpiece_tokenizer):
    tokens = ["[CLS]", *wordpiece_tokenizer.tokenize("The cat playing unbelievable dogs."), "[SEP]"]
    assert tokens == [
        "[CLS]",
        "the",
        "cat",
        "play",
        "##ing",
        "un",
        "##believ",
        "##able",
        "dog",
        "##s",
        ".",
        "[SEP]",
    ]
    seq = decoder_only_seq(tokens, prompt_len=3)
    words = seq.aggregate("words")
    assert words.target == ["[CLS]", "the", "cat", "playing", "unbelievable", "dogs", ".", "[SEP]"]
    groups = [(0, 1), (1, 2), (2, 3), (3, 5), (5, 8), (8, 10), (10, 11), (11, 12)]
    expected, _ = expected_merge(seq, groups)
    torch.testing.assert_close(words.target_attributions, expected, equal_nan=True)
    assert words.target_ids[3] == [103, 104]


def test_sentences_regex_and_spans():
    tokens = word_tokens("gpt2", "The cat sat. The dog ran away! Then")
    seq = decoder_only_seq(tokens, prompt_len=1)
    sentences = seq.aggregate("sentences")
    # The prompt ("The") ends inside the first sentence: the sentence is split at that boundary.
    assert token_texts(sentences.target) == ["The", " cat sat.", " The dog ran away!", " Then"]
    punctuation_apart = seq.aggregate("regex", pattern=r"\w+|[^\w\s]")
    assert token_texts(punctuation_apart.target)[:4] == ["The", " cat", " sat", "."]
    spans = seq.aggregate("spans", target_spans=[(1, 3)], step_fn="mean")
    assert spans.target[1] == tokens[1] + tokens[2] and len(spans.target) == len(tokens) - 1
    # Merged step = mean of the two step columns; rows before it summed over nothing but row 0.
    expected = (float(seq.target_attributions[0, 0]) + float(seq.target_attributions[0, 1])) / 2
    assert float(spans.target_attributions[0, 0]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="overlap"):
        seq.aggregate("spans", target_spans=[(1, 3), (2, 4)])
    with pytest.raises(ValueError, match="pattern"):
        seq.aggregate("regex")
    with pytest.raises(ValueError, match="valid"):
        seq.aggregate("paragraphs")


def test_special_and_masked_tokens_stay_alone():
    tokens = ["<|endoftext|>", "The", "Ġcat", "Ġsat", "<|endoftext|>"]
    seq = decoder_only_seq(tokens, prompt_len=1)
    assert seq.aggregate("sentences").target == ["<|endoftext|>", "TheĠcatĠsat", "<|endoftext|>"]
    masked = seq.mask(target_positions=[2])
    assert masked.aggregate("sentences").target == ["<|endoftext|>", "The", "Ġcat", "Ġsat", "<|endoftext|>"]


def test_byte_level_tokens_decode_to_text():
    assert token_texts(["Ġcaf", "Ã©", "Ċ", "Ã"]) == [" caf", "é", "\n", "\\xc3"]
    assert token_texts(["▁Par", "is", "<0x0A>", "<0xC3>"]) == [" Par", "is", "\n", "\\xc3"]


# ---------------------------------------------------------------------------------------------------------
# Real outputs of tiny models
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["gpt2", "t5"])
def test_real_output_words_normalize(architecture):
    model = attribution_model(architecture, "saliency")
    out = model.attribute(
        "The capital of France is",
        generation_args={"max_new_tokens": 6},
        step_scores=["probability"],
        show_progress=False,
    )
    words = out.mask_special().aggregate("words").normalize()
    # Recorded under the canonical (singular) name; "words" is an alias.
    assert words.info["aggregations"] == ["mask_special", "aggregate(word)", "normalize"]
    seq, word_seq = out[0], words[0]
    # The joined text is unchanged by merging.
    assert "".join(token_texts(word_seq.source)) == "".join(token_texts(seq.source))
    assert "".join(token_texts(word_seq.target)) == "".join(token_texts(seq.target))
    # Every step's unmasked scores have an L1 norm of 1.
    for step in range(word_seq.num_steps):
        total = 0.0
        for values, masked in [
            (word_seq.source_attributions, word_seq.masked_source),
            (word_seq.target_attributions, word_seq.masked_target),
        ]:
            if values is None:
                continue
            total += sum(
                abs(v)
                for i, v in enumerate(values[:, step].tolist())
                if i not in masked and not math.isnan(v)
            )
        assert total == pytest.approx(1.0, rel=1e-4)
    # Probabilities of merged steps multiply.
    product = math.prod(seq.step_scores["probability"].tolist())
    assert math.prod(word_seq.step_scores["probability"].tolist()) == pytest.approx(product, rel=1e-4)


def test_masks_survive_save_and_load(tmp_path):
    import seqattr

    seq = encoder_decoder_seq(["<s>", "a", "</s>"], ["<pad>", "x", "y"]).mask_special()
    AttributionOutput([seq]).save(tmp_path / "out.json")
    loaded = seqattr.load(tmp_path / "out.json")[0]
    assert (loaded.masked_source, loaded.masked_target) == ((0, 2), (0,))
    assert loaded.normalize().allclose(seq.normalize())


def test_one_vocabulary_of_reductions_for_hidden_layers_and_aggregation():
    """hidden_reduction, aggregate_layers/heads and aggregation's fn name the same functions."""
    from seqattr.methods.gradient import reduce_hidden
    from seqattr.methods.internals import aggregate as aggregate_layers
    from seqattr.reductions import HIDDEN_REDUCTIONS, LAYER_REDUCTIONS, REDUCTIONS, get_reduction

    assert set(HIDDEN_REDUCTIONS) | set(LAYER_REDUCTIONS) <= set(REDUCTIONS) | {None}
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    for name in filter(None, HIDDEN_REDUCTIONS):
        torch.testing.assert_close(reduce_hidden(x, name), get_reduction(name)(x, -1))
    for name in filter(None, LAYER_REDUCTIONS):
        torch.testing.assert_close(aggregate_layers(x, 1, name), get_reduction(name)(x, 1))
    assert torch.equal(get_reduction("absmax")(torch.tensor([[1.0, -3.0]]), 1), torch.tensor([-3.0]))
