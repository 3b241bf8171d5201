"""What a new user met first (issue 18): one word segmentation for perturbation features and aggregation,
feature-level scores counted once, byte-fallback pieces decoded, prompts ending inside a word, and views that
say what they show.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import attribution_model
from seqattr import SequenceAttribution
from seqattr.data.aggregation import unperturbed
from seqattr.data.tokens import token_labels, token_texts
from seqattr.testing import ARCHITECTURES, ENCODER_DECODER, tiny_tokenizer

NAN = float("nan")
# Line breaks after punctuation, a double space (a lone "Ġ"/"▁" piece), a character split into byte pieces.
SOURCE = "The naïve  capital is Paris.\n\nThe river is long!\nYes."
PROMPT = "The naïve  capital is Paris.\n\nThe river"
CONTINUATION = " is long!\nYes. It"
TRANSLATION = "Die  Hauptstadt ist Paris.\n\nJa."


def spans_of(ids: list) -> list[tuple[int, int]]:
    """Token spans of a merged side, from the number of ids each merged token holds."""
    spans, start = [], 0
    for entry in ids:
        width = len(entry) if isinstance(entry, list) else 1
        spans.append((start, start + width))
        start += width
    return spans


def perturbation_run(architecture: str, granularity: str):
    model = attribution_model(architecture, "feature_ablation", granularity=granularity, baseline="unk")
    if architecture in ENCODER_DECODER:
        out = model.attribute(SOURCE, TRANSLATION, attribute_target=True, show_progress=False)
    else:
        out = model.attribute(PROMPT, PROMPT + CONTINUATION, show_progress=False)
    return model, out


@pytest.mark.parametrize("granularity", ["word", "sentence"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_perturbation_features_are_the_aggregated_units(architecture, granularity):
    """GPT-2/Qwen/Bart byte-level BPE, Llama/T5 SentencePiece, Marian: the same spans on both sides."""
    model, out = perturbation_run(architecture, granularity)
    seq = out[0]
    features = out.info["method_info"]["examples"][0]["features"]
    assert seq.features == features  # the example records that its scores are per feature
    merged = out.aggregate(granularity)[0]
    special = set(model.tokenizer.all_special_ids)
    for side, ids, merged_ids in [
        ("source", seq.source_ids, merged.source_ids),
        ("target", seq.target_ids, merged.target_ids),
    ]:
        units = [(a, b) for a, b in spans_of(merged_ids) if not (b - a == 1 and ids[a] in special)]
        if side == "target":  # tokens from the last predicted one on are no feature: no step sees them
            units = [(a, b) for a, b in units if a < seq.attr_pos_end - 1]
        if side == "source" and architecture not in ENCODER_DECODER:
            continue
        expected = [tuple(span) for span in features[side]]
        if side == "target":  # aggregation splits a unit at the prompt/step boundary (a sentence here)
            start = seq.attr_pos_start
            expected = [
                p for a, b in expected for p in ([(a, start), (start, b)] if a < start < b else [(a, b)])
            ]
        assert expected == units
    # The text has multi-token words and a line break: the segmentation is not trivially one token each.
    assert any(b - a > 1 for a, b in features["source" if architecture in ENCODER_DECODER else "target"])


def test_one_rule_for_line_breaks_lone_spaces_and_punctuation():
    # GPT-2's pieces of "It is  Paris.\n\nThe river" (a double space gives a lone "Ġ").
    tokens = ["It", "Ġis", "Ġ", "ĠParis", ".", "Ċ", "Ċ", "The", "Ġr", "iv", "er"]
    seq = decoder_only(tokens, prompt_len=1)
    words = [t.strip(" ") for t in token_texts(seq.aggregate("word").target)]
    # The lone "Ġ" leads into the next word; the line breaks end the word before them.
    assert words == ["It", "is", "Paris.\n\n", "The", "river"]
    assert seq.aggregate("words").target == seq.aggregate("word").target  # the plural is an alias


def decoder_only(tokens: list[str], prompt_len: int, seed: int = 0) -> SequenceAttribution:
    g = torch.Generator().manual_seed(seed)
    steps = len(tokens) - prompt_len
    values = torch.randn(len(tokens), steps, generator=g)
    for t in range(steps):
        values[prompt_len + t :, t] = NAN
    return SequenceAttribution(
        source=[],
        target=list(tokens),
        source_ids=[],
        target_ids=list(range(100, 100 + len(tokens))),
        source_attributions=None,
        target_attributions=values,
        step_scores={"probability": torch.rand(steps, generator=g)},
        attr_pos_start=prompt_len,
        attr_pos_end=len(tokens),
    )


@pytest.mark.parametrize("architecture", ["gpt2", "llama", "marian"])
def test_summing_word_features_gives_each_feature_once(architecture):
    _, out = perturbation_run(architecture, "word")
    seq = out[0]
    side = "source" if architecture in ENCODER_DECODER else "target"
    values = getattr(seq, f"{side}_attributions")
    words = out.aggregate("word", fn="sum")[0]
    merged = getattr(words, f"{side}_attributions")
    step_spans = [spans_of(words.target_ids)[words.attr_pos_start + h] for h in range(words.num_steps)]
    checked = 0
    for row, (a, b) in enumerate(spans_of(getattr(words, f"{side}_ids"))):
        if [a, b] not in seq.features[side] or b - a < 2:
            continue
        for h, (sa, sb) in enumerate(step_spans):
            if math.isnan(float(merged[row, h])):
                continue
            steps = range(sa - seq.attr_pos_start, sb - seq.attr_pos_start)
            expected = sum(float(values[a, s]) for s in steps)  # the feature's score, once per step
            assert float(merged[row, h]) == pytest.approx(expected, rel=1e-5, abs=1e-7)
            checked += float(values[a, steps[0]]) != 0
    assert checked  # some multi-token word with a non-zero score was compared
    # normalize counts each feature once: per step, one row per feature plus the other rows sum to 1.
    normalized = seq.normalize()
    for step in range(seq.num_steps):
        total = 0.0
        for name in ("source", "target"):
            rows = getattr(normalized, f"{name}_attributions")
            if rows is None:
                continue
            repeats = {i for a, b in seq.features[name] for i in range(a + 1, b)}
            total += sum(
                abs(v) for i, v in enumerate(rows[:, step].tolist()) if i not in repeats and not math.isnan(v)
            )
        assert total == pytest.approx(1.0, rel=1e-5) or total == 0.0


def test_byte_fallback_pieces_are_decoded_in_views_and_words():
    tokens = tiny_tokenizer("llama").tokenize("The naïve cat")
    assert "<0xC3>" in tokens and "<0xAF>" in tokens
    seq = decoder_only(["<s>", *tokens], prompt_len=2)
    labels = token_labels(seq.target)
    assert not any("<0x" in label for label in labels)
    assert labels[tokens.index("<0xC3>") + 1] == "ï"  # shown on the piece holding its first byte
    assert "".join(token_texts(seq.target)) == "<s> The naïve cat"
    words = seq.aggregate("word")
    assert [t.strip() for t in token_texts(words.target)] == ["<s>", "The", "naïve", "cat"]
    assert "naïve" in token_labels(words.target)


def test_prompt_ending_inside_a_word_keeps_its_row_and_steps_of_generated_pieces():
    tokens = ["The", "Ġcapital", "Ġof", "ĠFra", "nce", "Ġis", "ĠParis"]
    seq = decoder_only(tokens, prompt_len=4)  # the prompt is "The capital of Fra"
    words = seq.aggregate("word")
    assert words.steps == ["nce", "Ġis", "ĠParis"]  # generated pieces only
    assert words.target[:4] == ["The", "Ġcapital", "Ġof", "ĠFra"]
    first_step = words.target_attributions[:, 0]
    assert not math.isnan(float(first_step[3]))  # the prompt's "Fra" row is seen by the first step
    assert float(first_step[3]) == pytest.approx(float(seq.target_attributions[3, 0]))


def record(renderable, width: int = 100) -> str:
    from rich.console import Console

    console = Console(record=True, width=width, force_terminal=True, color_system="truecolor")
    console.print(renderable)
    return console.export_text()


def test_terminal_title_states_units_and_keeps_the_aggregation_history():
    from seqattr import AttributionOutput

    seq = decoder_only(["The", "Ġ[/b]", "Ġ[red]", "Ġcat", "Ġsat"], prompt_len=3)
    out = AttributionOutput([seq], {"method": "saliency", "attributed_fn": "probability"})
    text = record(out.mask_special().aggregate("word").normalize().__rich__())
    assert (
        "#0 saliency of probability, normalised per step (L1 = 1) [mask_special, aggregate(word), normalize]"
        in (text)
    )
    assert "[/b]" in text and "[red]" in text  # token text is text, not markup
    assert "raw scores" in record(out.__rich__())
    # Split tables: the title is one line of its own, not wrapped to a narrow table's width.
    long = decoder_only(["The", *[f"Ġw{i}" for i in range(30)]], prompt_len=1)
    text = record(AttributionOutput([long], {"method": "saliency"}).__rich__(), width=60)
    assert "#0 saliency, raw scores" in text.splitlines()[0]
    assert record(long.__rich__()).splitlines()[0].startswith("sequence of 31 tokens, 30 steps")


def test_unsigned_scores_and_unperturbed_tokens_are_shown_as_such():
    model = attribution_model("llama", "occlusion", granularity="word")
    out = model.attribute("The cat sat", "The cat sat on the mat", show_progress=False)
    seq = out[0]
    assert seq.target[0] == "<s>" and 0 in unperturbed(seq, "target")
    text = record(out.__rich__())
    bos_row = next(line for line in text.splitlines() if line.startswith("│ <s>"))
    assert "–" in bos_row and "0.000" not in bos_row  # not a measured zero
    saliency = attribution_model("gpt2", "saliency").attribute("The cat sat", show_progress=False)
    assert "colour scale: 0 to" in record(saliency.__rich__())  # norms: no negative score
    page = saliency.to_html()
    assert 'class="ramp unsigned"' in page
    figure = saliency[0].plot()
    assert figure.axes[0].images[0].get_cmap().name.startswith("Reds")
    assert figure.axes[0].images[0].norm.vmin == 0.0
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert len(labels) == len(saliency[0].target) - 1  # the last token, seen by no step, has no empty row


def test_generation_args_record_the_default_max_new_tokens():
    from seqattr.request import DEFAULT_MAX_NEW_TOKENS

    out = attribution_model("gpt2").attribute("The cat", show_progress=False)
    assert out.info["generation_args"] == {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS}


@pytest.mark.slow
def test_quickstart_shows_what_its_comments_say(monkeypatch, tmp_path, capsys):
    import runpy
    import sys
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["quickstart.py"])
    monkeypatch.setenv("COLUMNS", "200")
    runpy.run_path(str(Path(__file__).parent.parent / "examples" / "quickstart.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert printed.count("generation trace") == 1  # below the token-level heatmap
    assert "raw scores" in printed and "normalised per step (L1 = 1)" in printed
