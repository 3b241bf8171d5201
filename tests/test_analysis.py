"""Dataset-level analysis (issue 16): every statistic equals its hand computation on small outputs built by
hand; a dataset run's folder is read lazily and gives the same numbers as the same examples in memory; the
report is one self-contained page (it opens in headless Chromium without console errors); `seqattr report`."""

from __future__ import annotations

import math
import re

import datasets
import numpy as np
import pytest
import torch

import seqattr
from browser import browser_page, chromium_or_skip
from seqattr import AttributionOutput, SequenceAttribution
from seqattr.analysis import report_html, step_table, summarize, write_report
from seqattr.analysis.statistics import token_type
from seqattr.cli import main
from seqattr.testing import tiny_model

NAN = float("nan")


def prompt_example() -> SequenceAttribution:
    """Decoder-only: prompt "<s> The cat", then three steps "," " sat" " down"."""
    values = torch.tensor(
        [  # rows: <s>, The, cat, ",", sat, down; columns: the three steps
            [0.1, 0.2, 0.0],
            [-0.2, 0.3, 0.5],
            [0.3, -0.1, 0.1],
            [NAN, 0.4, 0.2],
            [NAN, NAN, -0.2],
            [NAN, NAN, NAN],
        ],
        dtype=torch.float64,
    )
    return SequenceAttribution(
        source=[],
        target=["<s>", "The", "Ġcat", ",", "Ġsat", "Ġdown"],
        source_ids=[],
        target_ids=[1, 10, 11, 12, 13, 14],
        source_attributions=None,
        target_attributions=values,
        step_scores={"probability": torch.tensor([0.5, 0.2, 0.8])},
        attr_pos_start=3,
        attr_pos_end=6,
    )


def short_example() -> SequenceAttribution:
    """Decoder-only: prompt "A dog", one step "."."""
    return SequenceAttribution(
        source=[],
        target=["A", "Ġdog", "."],
        source_ids=[],
        target_ids=[20, 21, 22],
        source_attributions=None,
        target_attributions=torch.tensor([[0.3], [-0.1], [NAN]], dtype=torch.float64),
        step_scores={"probability": torch.tensor([0.9])},
        attr_pos_start=2,
        attr_pos_end=3,
    )


def translation_example() -> SequenceAttribution:
    """Encoder-decoder with the target side attributed: "▁Le ▁chat </s>" -> "<pad> ▁The ▁cat"."""
    return SequenceAttribution(
        source=["▁Le", "▁chat", "</s>"],
        target=["<pad>", "▁The", "▁cat"],
        source_ids=[5, 6, 2],
        target_ids=[0, 7, 8],
        source_attributions=torch.tensor([[0.4, -0.1], [0.2, 0.5], [0.1, 0.1]], dtype=torch.float64),
        target_attributions=torch.tensor([[0.3, 0.1], [NAN, -0.3], [NAN, NAN]], dtype=torch.float64),
        step_scores={"probability": torch.tensor([0.7, 0.4])},
        attr_pos_start=1,
        attr_pos_end=3,
    )


def test_step_table_of_a_decoder_only_example_equals_the_hand_computation():
    table = step_table(prompt_example())
    # source share = |prompt| / (|prompt| + |generated prefix|), per step
    assert table["source_share"] == pytest.approx([0.6 / 0.6, 0.6 / 1.0, 0.6 / 1.0])
    # <s> is special, "," punctuation, the rest content; shares of each step's total |score|
    assert table["special_share"] == pytest.approx([0.1 / 0.6, 0.2 / 1.0, 0.0 / 1.0])
    assert table["punctuation_share"] == pytest.approx([0.0, 0.4 / 1.0, 0.2 / 1.0])
    assert table["content_share"] == pytest.approx([0.5 / 0.6, 0.4 / 1.0, 0.8 / 1.0])
    # argmax over the prompt without <s> (["The", "cat"], n=2): cat, The, The; steps j of m=3
    assert table["relative_source"] == pytest.approx([1.5 / 2, 0.5 / 2, 0.5 / 2])
    assert table["relative_step"] == pytest.approx([0.5 / 3, 1.5 / 3, 2.5 / 3])
    assert table["offset"] == pytest.approx([0.75 - 1 / 6, 0.25 - 0.5, 0.25 - 2.5 / 3])
    assert table["probability"] == pytest.approx([0.5, 0.2, 0.8])


def test_step_table_of_an_encoder_decoder_example_equals_the_hand_computation():
    table = step_table(translation_example())
    # step 0 sees the source and <pad>; step 1 the source, <pad> and ▁The
    assert table["source_share"] == pytest.approx([0.7 / 1.0, 0.7 / 1.1])
    assert table["special_share"] == pytest.approx([(0.1 + 0.3) / 1.0, (0.1 + 0.1) / 1.1])
    assert table["content_share"] == pytest.approx([0.6 / 1.0, 0.9 / 1.1])
    assert table["punctuation_share"] == pytest.approx([0.0, 0.0])
    # </s> is not counted: source ["▁Le", "▁chat"]; a monotone alignment of equal lengths is on the diagonal
    assert table["relative_source"] == pytest.approx([0.25, 0.75])
    assert table["offset"] == pytest.approx([0.0, 0.0])


def test_masked_tokens_and_the_prefix_side_left_out():
    masked = step_table(prompt_example().mask(target_positions=[3]))  # "," masked: out of every sum
    assert masked["source_share"] == pytest.approx([1.0, 1.0, 0.6 / 0.8])
    assert masked["punctuation_share"] == pytest.approx([0.0, 0.0, 0.0])
    no_prefix = translation_example()
    no_prefix.target_attributions = None  # attribute_target=False: the share is undefined
    table = step_table(no_prefix)
    assert all(math.isnan(v) for v in table["source_share"])
    assert table["special_share"] == pytest.approx([0.1 / 0.7, 0.1 / 0.7])


def test_prompt_only_attributions_have_no_source_share():
    held = prompt_example()
    held.target_attributions[held.attr_pos_start :] = NAN  # attribute_target=False: the prefix held fixed
    table = step_table(held)
    assert all(math.isnan(v) for v in table["source_share"])  # was 1.0: the NaN prefix counted as 0
    assert table["special_share"] == pytest.approx([0.1 / 0.6, 0.2 / 0.6, 0.0 / 0.6])
    assert step_table(short_example())["source_share"] == [1.0]  # one step: the prefix is unseen, not held


def test_summary_per_step_position_and_overall_equals_the_hand_computation():
    out = AttributionOutput([prompt_example(), short_example()], {"method": "saliency"})
    summary = summarize(out, bins=4, quantiles=(0.25, 0.5))
    offsets = [0.75 - 1 / 6, 0.25 - 0.5, 0.25 - 2.5 / 3, 0.25 - 0.5]  # the second example: (0.5/2 - 0.5/1)
    assert (summary.num_examples, summary.num_steps) == (2, 4)
    assert (summary.source_side, summary.prefix_side) == ("prompt", "generated prefix")
    assert summary.by_step["step"] == [0, 1, 2] and summary.by_step["examples"] == [2, 1, 1]
    assert summary.by_step["source_share"] == pytest.approx([(1.0 + 1.0) / 2, 0.6, 0.6])
    assert summary.by_step["special_share"] == pytest.approx([(0.1 / 0.6 + 0.0) / 2, 0.2, 0.0])
    assert summary.by_step["diagonal_deviation"] == pytest.approx(
        [(abs(offsets[0]) + abs(offsets[3])) / 2, abs(offsets[1]), abs(offsets[2])]
    )
    assert summary.overall["source_share"] == pytest.approx((1.0 + 0.6 + 0.6 + 1.0) / 4)
    assert summary.overall["content_share"] == pytest.approx((0.5 / 0.6 + 0.4 + 0.8 + 1.0) / 4)
    assert summary.overall["diagonal_deviation"] == pytest.approx(sum(map(abs, offsets)) / 4)
    # offsets over [-1, 1] in 4 bins: -0.58 | -0.25 -0.25 | - | 0.58
    assert summary.offset_histogram == {"edges": [-1.0, -0.5, 0.0, 0.5, 1.0], "counts": [1, 2, 0, 1]}
    # probabilities 0.5 0.2 0.8 0.9: sorted 0.2 0.5 0.8 0.9, linear interpolation between order statistics
    assert summary.score_quantiles["probability"] == pytest.approx({0.25: 0.2 + 0.75 * 0.3, 0.5: 0.65})
    assert summary.overall["probability"] == pytest.approx(0.6)
    assert summary.by_step["probability"] == pytest.approx([0.7, 0.2, 0.8])
    assert summary.by_step["probability_q50"] == pytest.approx([0.7, 0.2, 0.8])
    assert summary.examples["row"] == [0, 1] and summary.examples["steps"] == [3, 1]
    assert summary.examples["mean_probability"] == pytest.approx([0.5, 0.9])
    assert summary.examples["source_share"] == pytest.approx([2.2 / 3, 1.0])
    frame = summary.to_dataframe("by_step")
    assert frame.shape[0] == 3 and frame.source_share.tolist() == pytest.approx([1.0, 0.6, 0.6])
    assert summarize(translation_example()).source_side == "source"


def test_special_ids_recorded_at_attribution_time_count_as_special():
    out = AttributionOutput([short_example()], {"special_token_ids": [20]})  # "A" is special here
    assert summarize(out).overall["special_share"] == pytest.approx(0.3 / 0.4)
    assert summarize(out, special_ids=[]).overall["special_share"] == pytest.approx(0.0)


def test_token_types():
    assert [token_type(t, t) for t in ["<|endoftext|>", "...", "€", "\n", "", "dog", "3."]] == [
        "special",
        "punctuation",
        "punctuation",
        "punctuation",
        "content",
        "content",
        "content",
    ]
    assert token_type("Ġthe", " the", 262, {262}) == "special"


def test_mistakes_are_refused_with_the_fix():
    raw = prompt_example()
    raw.target_attributions = raw.target_attributions[..., None].repeat(1, 1, 4)
    with pytest.raises(ValueError, match="reduce them first"):
        summarize(AttributionOutput([raw]))
    with pytest.raises(TypeError, match="folder of a dataset run"):
        summarize([prompt_example()])
    with pytest.raises(ValueError, match="quantiles must be numbers in"):
        summarize(prompt_example(), quantiles=(50,))
    with pytest.raises(ValueError, match="rank_by='entropy' is no step score"):
        report_html(AttributionOutput([prompt_example()]), rank_by="entropy")


# --- a dataset run ------------------------------------------------------------------------------------------

ROWS = [
    {"text": "The sky", "target": "The sky is blue today"},
    {"text": "", "target": "x"},  # skipped: empty
    {"text": "A cat sat on", "target": "A cat sat on the mat, then"},
    {"text": "Hello there", "target": "Hello there my friend."},
    {"text": "We", "target": "We went home"},
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    hf_model, tokenizer = tiny_model("gpt2")
    model = seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer)
    folder = tmp_path_factory.mktemp("analysis") / "run"
    model.attribute_dataset(
        datasets.Dataset.from_list(ROWS),
        output_dir=folder,
        target_column="target",
        shard_size=2,
        show_progress=False,
        step_scores=["probability"],
    )
    return folder


def test_a_run_folder_gives_the_numbers_of_its_examples_in_memory(run_dir):
    run = seqattr.load_dataset_output(run_dir)
    pairs = list(run)
    from_folder = summarize(run_dir)
    in_memory = summarize(AttributionOutput([seq for _, seq in pairs], run.info))
    assert from_folder.examples["row"] == [0, 2, 3, 4]  # row 1 was skipped; rows keep their dataset index
    assert from_folder.overall == pytest.approx(in_memory.overall)
    assert from_folder.by_step["source_share"] == pytest.approx(in_memory.by_step["source_share"])
    probabilities = np.concatenate([seq.step_scores["probability"].double().numpy() for _, seq in pairs])
    assert from_folder.num_steps == len(probabilities)
    assert from_folder.score_quantiles["probability"][0.5] == pytest.approx(float(np.median(probabilities)))
    assert from_folder.examples["mean_probability"] == pytest.approx(
        [float(seq.step_scores["probability"].double().mean()) for _, seq in pairs]
    )


def test_report_is_self_contained_and_links_the_lowest_and_highest_examples(run_dir, tmp_path):
    summary = summarize(run_dir)
    means = dict(zip(summary.examples["row"], summary.examples["mean_probability"], strict=True))
    lowest, highest = min(means, key=means.get), max(means, key=means.get)
    page = write_report(run_dir, tmp_path / "report.html", examples=1).read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "http" not in page.split("<iframe")[0]
    headings = re.findall(r"<h2>(Lowest|Highest) mean probability</h2><table.*?href=\"#row-(\d+)\"", page)
    assert headings == [("Lowest", str(lowest)), ("Highest", str(highest))]
    for row in (lowest, highest):
        assert f'id="row-{row}"' in page
    assert page.count("<iframe") == 2 and "rows skipped</b>: 1" in page
    assert page.count("<svg") == 5  # source share, token types, diagonality, offsets, probability


def test_report_opens_in_chromium_without_console_errors(run_dir, tmp_path):
    executable = chromium_or_skip()
    path = write_report(run_dir, tmp_path / "report.html", examples=2)
    with browser_page(executable) as page:
        page.open(path)
        frames = page.poll(
            "Array.from(document.querySelectorAll('iframe.view')).map("
            "f => f.contentDocument && f.contentDocument.querySelectorAll('.tok').length > 0).join()",
            "true,true,true,true",
        )
        assert frames == "true,true,true,true"  # each embedded view drew its tokens
        assert page.evaluate("document.querySelectorAll('svg.chart').length") == 5
        assert page.errors() == []


def test_cli_report_writes_the_page_and_refuses_a_folder_that_is_no_run(run_dir, tmp_path, capsys):
    target = tmp_path / "page.html"
    assert main(["report", str(run_dir), "-o", str(target), "--examples", "1", "--title", "IG"]) == 0
    assert "<title>IG</title>" in target.read_text()
    assert main(["report", str(tmp_path)]) == 2
    assert "not the output folder of a dataset run" in capsys.readouterr().err
    assert main(["report", str(run_dir), "-o", str(target), "--rank-by", "entropyy"]) == 2
    assert "rank_by='entropyy'" in capsys.readouterr().err
