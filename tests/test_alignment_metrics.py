"""Hard alignments (`out.alignments()`), the gold-file reader, AER and alignment accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from seqattr import AttributionOutput, SequenceAttribution
from seqattr.data.alignment import Alignment
from seqattr.metrics import (
    GoldAlignment,
    alignment_accuracy,
    alignment_error_rate,
    parse_gold_line,
    read_gold,
)

NAN = math.nan


def _alignment(links, n_source=4, n_target=4) -> Alignment:
    return Alignment([f"s{i}" for i in range(n_source)], [f"t{j}" for j in range(n_target)], frozenset(links))


# --- AER, hand-computed -----------------------------------------------------------------------------------


def test_aer_sure_only():
    # A = {0-0, 1-1, 2-1}, S = P = {0-0, 1-1, 2-2}: |A∩S| = |A∩P| = 2, so AER = 1 - 4 / (3 + 3) = 1/3.
    predicted = _alignment({(0, 0), (1, 1), (2, 1)})
    assert alignment_error_rate(predicted, read_gold(["1-1 2-2 3-3"])) == pytest.approx(1 / 3)
    assert alignment_error_rate(_alignment({(0, 0), (1, 1), (2, 2)}), read_gold(["1-1 2-2 3-3"])) == 0.0


def test_aer_sure_and_possible():
    # S = {0-0}, P = {0-0, 1-0, 2-1}; A = {0-0, 1-0, 3-1}: |A∩S| = 1, |A∩P| = 2, AER = 1 - 3 / (3 + 1) = 0.25.
    gold = read_gold(["1-1 2-1-P 3-2p"])
    assert alignment_error_rate(_alignment({(0, 0), (1, 0), (3, 1)}), gold) == pytest.approx(0.25)
    # Predicting only possible links is not penalised for precision, but the missed sure link counts:
    # A = {1-0}: 1 - (0 + 1) / (1 + 1) = 0.5.
    assert alignment_error_rate(_alignment({(1, 0)}), gold) == pytest.approx(0.5)


def test_aer_pools_the_corpus_and_handles_empty_sentences():
    # Sentence 1: A = {0-0}, S = {0-0}. Sentence 2: gold empty, A = {1-1} (a wrong link).
    # Sentence 3: A empty, S = {0-0, 1-1} (two missed sure links).
    predicted = [_alignment({(0, 0)}), _alignment({(1, 1)}), _alignment(set())]
    gold = read_gold(["1-1", "", "1-1 2-2"])
    # |A∩S| = |A∩P| = 1, |A| = 2, |S| = 3: AER = 1 - 2 / 5 = 0.6.
    assert alignment_error_rate(predicted, gold) == pytest.approx(0.6)
    # Nothing predicted against an empty gold sentence, with a nonempty prediction elsewhere: AER 1.
    assert alignment_error_rate([_alignment({(0, 1)}), _alignment(set())], read_gold(["", ""])) == 1.0
    with pytest.raises(ValueError, match="undefined"):
        alignment_error_rate([_alignment(set())], read_gold([""]))


def test_alignment_accuracy_counts_steps_with_gold_links():
    # Step 0: gold {0}; predicted 0 -> right. Step 1: gold {1 (sure), 2 (possible)}; predicted 2 -> right.
    # Step 2: gold {3}; predicted 0 -> wrong. Step 3: no gold link -> not counted.
    predicted = _alignment({(0, 0), (2, 1), (0, 2), (1, 3)})
    assert alignment_accuracy(predicted, read_gold(["1-1 2-2 3-2-P 4-3"])) == pytest.approx(2 / 3)
    # Several predicted links of one step: right only when all are gold; a step without a link is wrong.
    assert alignment_accuracy(_alignment({(0, 0), (1, 0)}), read_gold(["1-1 2-1-P"])) == 1.0
    assert alignment_accuracy(_alignment({(0, 0), (3, 0)}), read_gold(["1-1"])) == 0.0
    assert alignment_accuracy(_alignment(set()), read_gold(["1-1"])) == 0.0
    with pytest.raises(ValueError, match="no step"):
        alignment_accuracy(_alignment({(0, 0)}), read_gold([""]))


# --- gold files ---------------------------------------------------------------------------------------------


def test_read_gold_file_formats(tmp_path):
    path = tmp_path / "gold.talp"
    path.write_text("1-1 2-3 3-2-P\n\n4-4-S 1p2 2-1P\n", encoding="utf-8")
    first, empty, third = read_gold(path)
    assert first.sure == {(0, 0), (1, 2)} and first.possible == {(0, 0), (1, 2), (2, 1)}
    assert empty.sure == empty.possible == frozenset()
    assert third.sure == {(3, 3)} and third.possible == {(3, 3), (0, 1), (1, 0)}
    assert third.to_text() == "1-2-P 2-1-P 4-4"
    assert parse_gold_line(third.to_text()) == third
    assert read_gold(["0-0 1-1"], one_based=False)[0].sure == {(0, 0), (1, 1)}


@pytest.mark.parametrize(
    ("line", "match"),
    [("1-1 2:2", r"line 1: cannot read the link '2:2'"), ("0-1", "counted from 1"), ("1-1-X", "cannot read")],
)
def test_read_gold_refuses_bad_links(line, match):
    with pytest.raises(ValueError, match=match):
        read_gold([line])


def test_gold_alignment_keeps_sure_inside_possible_and_checks_links():
    assert GoldAlignment(frozenset({(0, 0)}), frozenset({(1, 0)})).possible == {(0, 0), (1, 0)}
    with pytest.raises(ValueError, match="pair of integers"):
        GoldAlignment(frozenset({(0, -1)}))
    with pytest.raises(FileNotFoundError, match="no gold alignment file"):
        read_gold("/nonexistent/gold.txt")


def test_metrics_refuse_mismatched_inputs():
    with pytest.raises(ValueError, match="2 predicted alignment.*1 gold"):
        alignment_error_rate([_alignment({(0, 0)}), _alignment({(0, 0)})], read_gold(["1-1"]))
    # A gold link beyond the prediction's positions: the two count positions differently.
    with pytest.raises(ValueError, match="gold link 5-1 .* outside"):
        alignment_error_rate(_alignment({(0, 0)}), read_gold(["5-1"]))


# --- extraction from attributions ---------------------------------------------------------------------------


def _encoder_decoder_seq() -> SequenceAttribution:
    """Source ``a b c </s>``; target ``</s> x y </s>`` (start token, two words, eos): steps x, y, </s>."""
    source_scores = torch.tensor(
        [
            [0.1, 0.7, 0.2],  # a
            [-0.8, 0.1, 0.3],  # b  (a large negative score: the argmax is by absolute value)
            [0.1, 0.3, 0.1],  # c
            [0.9, 0.9, 0.9],  # </s>: special, never linked even where its score is largest
        ]
    )
    return SequenceAttribution(
        source=["a", "b", "c", "</s>"],
        target=["</s>", "x", "y", "</s>"],
        source_ids=[5, 6, 7, 2],
        target_ids=[2, 8, 9, 2],
        source_attributions=source_scores,
        target_attributions=None,
        attr_pos_start=1,
        attr_pos_end=4,
    )


def test_alignments_argmax_skip_special_tokens_and_count_from_zero():
    alignment = _encoder_decoder_seq().alignments()
    assert alignment.source == ["a", "b", "c"] and alignment.target == ["x", "y"]  # no </s> on either side
    assert alignment.links == {(1, 0), (0, 1)}
    assert alignment.to_text() == "1-2 2-1"
    assert alignment.pairs() == [("b", "x"), ("a", "y")]
    signed = _encoder_decoder_seq().alignments(signed=True)
    assert signed.links == {(0, 0), (0, 1)}  # by signed score, step x's best is a (0.1 > -0.8)


def test_alignments_threshold_and_top_k():
    seq = _encoder_decoder_seq()
    # Step x: shares over a, b, c = 0.1/1.0, 0.8/1.0, 0.1/1.0; step y: 0.7/1.1, 0.1/1.1, 0.3/1.1.
    assert seq.alignments(0.25).links == {(1, 0), (0, 1), (2, 1)}
    assert seq.alignments(0.9).links == set()
    assert seq.alignments(top_k=2).links == {(1, 0), (0, 0), (0, 1), (2, 1)}
    with pytest.raises(ValueError, match="either threshold= or top_k="):
        seq.alignments(0.5, top_k=1)
    with pytest.raises(ValueError, match=r"share of the step's total in \[0, 1\]"):
        seq.alignments(5)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        seq.alignments(top_k=0)


def test_alignments_need_one_score_per_token():
    seq = _encoder_decoder_seq()
    raw = SequenceAttribution(**{**seq.__dict__, "source_attributions": torch.ones(4, 3, 5)})
    with pytest.raises(ValueError, match=r"reduce them first"):
        raw.alignments()


def test_alignments_of_a_decoder_only_model_link_steps_to_the_prompt():
    # Prompt "<s> a b" (BOS special), steps "c d": prefix rows (c for step d) never take part.
    target_scores = torch.tensor(
        [
            [5.0, 5.0],  # <s>
            [0.2, 0.9],  # a
            [0.6, 0.1],  # b
            [NAN, 3.0],  # c: the first step, a score of step d -- not a source position
            [NAN, NAN],  # d
        ]
    )
    seq = SequenceAttribution(
        source=[],
        target=["<s>", "a", "b", "c", "d"],
        source_ids=[],
        target_ids=[1, 5, 6, 7, 8],
        source_attributions=None,
        target_attributions=target_scores,
        attr_pos_start=3,
        attr_pos_end=5,
    )
    alignment = seq.alignments()
    assert alignment.source == ["a", "b"] and alignment.target == ["c", "d"]
    assert alignment.links == {(1, 0), (0, 1)}
    # Masked positions are left out and the others renumbered, like special tokens.
    assert seq.mask(target_positions=[2]).alignments().links == {(0, 0), (0, 1)}
    # An output passes the special ids recorded at attribution time; here BOS has id 1 and looks special.
    out = AttributionOutput([seq], {"special_token_ids": [6]})
    assert out.alignments()[0].source == ["a"]


def test_alignments_on_words_after_aggregation():
    # Source pieces "▁Hel lo ▁world </s>": two words; step pieces "▁Hal lo ▁Welt </s>": two target words.
    source_scores = torch.tensor(
        [[0.5, 0.4, 0.0, 0.1], [0.3, 0.4, 0.1, 0.0], [0.1, 0.0, 0.9, 0.8], [0.0, 0.0, 0.0, 5.0]]
    )
    seq = SequenceAttribution(
        source=["▁Hel", "lo", "▁world", "</s>"],
        target=["<pad>", "▁Hal", "lo", "▁Welt", "</s>"],
        source_ids=[10, 11, 12, 1],
        target_ids=[0, 13, 11, 14, 1],
        source_attributions=source_scores,
        target_attributions=None,
        attr_pos_start=1,
        attr_pos_end=5,
    )
    words = AttributionOutput([seq], {"special_token_ids": [0, 1]}).aggregate("words")
    alignment = words.alignments()[0]
    assert [len(alignment.source), len(alignment.target)] == [2, 2]
    assert alignment.links == {(0, 0), (1, 1)}
    assert alignment_error_rate(words, read_gold(["1-1 2-2"])) == 0.0
