"""Terminal view: long outputs wrap into column chunks that fit the width, colours are signed and carry
their own contrast, byte-level tokens are decoded, masked tokens are hidden, the trace is shown.

The snapshot (tests/snapshots/console_small.txt) is rich's recorded plain text of a fixed example;
regenerate it with SEQATTR_UPDATE_SNAPSHOTS=1 after an intended change of the layout.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console

from conftest import attribution_model
from seqattr import AttributionOutput, SequenceAttribution
from seqattr.trace import GenerationTrace
from seqattr.viz.console import HeatmapView, cell_style

SNAPSHOTS = Path(__file__).parent / "snapshots"
NAN = float("nan")


def long_sequence(steps: int = 60) -> SequenceAttribution:
    prompt = ["<|endoftext|>", "The", "Ġcaf", "Ã©"]
    target = prompt + [f"Ġw{i}" for i in range(steps)]
    values = torch.sin(torch.arange(len(target) * steps, dtype=torch.float32)).reshape(len(target), steps)
    for t in range(steps):
        values[len(prompt) + t :, t] = NAN
    return SequenceAttribution(
        source=[],
        target=target,
        source_ids=[],
        target_ids=list(range(len(target))),
        source_attributions=None,
        target_attributions=values,
        step_scores={"probability": torch.linspace(0.1, 0.9, steps)},
        attr_pos_start=len(prompt),
        attr_pos_end=len(target),
    )


def record(renderable, width: int = 100) -> Console:
    console = Console(record=True, width=width, force_terminal=True, color_system="truecolor")
    console.print(renderable)
    return console


def test_sixty_steps_wrap_into_tables_that_fit():
    seq = long_sequence(60)
    console = record(seq.__rich__(), width=100)
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    chunks = HeatmapView(seq).chunks(100)
    assert len(chunks) > 1
    assert [s for chunk in chunks for s in chunk] == list(range(60))  # every step once, in order
    # Every step's header is printed, in order, and each table has its probability row.
    headers = re.findall(r"┃\s+(w\d+)\s", text)
    assert headers == [f"w{i}" for i in range(60)]
    assert text.count("probability") == len(chunks)
    assert text.count("(steps ") == len(chunks)
    # Byte-level tokens are decoded: "Ã©" reads "é", "Ġ" never shows.
    assert "é" in text and "Ã©" not in text and "Ġ" not in text


def test_narrow_console_still_shows_every_step():
    seq = long_sequence(12)
    text = record(seq.__rich__(), width=40).export_text()
    assert re.findall(r"┃\s+(w\d+)\s", text) == [f"w{i}" for i in range(12)]
    assert max(len(line) for line in text.splitlines()) <= 40


def test_colours_are_signed_and_self_contrasted():
    assert cell_style(NAN, 1.0) == ""
    assert cell_style(0.01, 1.0) == ""  # near zero: the terminal's own colours
    strong_positive, strong_negative = cell_style(1.0, 1.0), cell_style(-1.0, 1.0)
    weak_positive = cell_style(0.3, 1.0)
    for style in (strong_positive, strong_negative, weak_positive):
        assert " on #" in style  # every coloured cell sets both its text and its background
    red = lambda style: tuple(int(style.split("on #")[1][i : i + 2], 16) for i in (0, 2, 4))  # noqa: E731
    r, g, b = red(strong_positive)
    assert r > b and r > g
    r, g, b = red(strong_negative)
    assert b > r
    assert strong_positive.startswith("#ffffff") and weak_positive.startswith("#000000")
    # The rendered table uses them: the largest score's cell has the strongest red background.
    seq = long_sequence(6)
    console = record(seq.__rich__())
    html = console.export_html(inline_styles=True)
    assert "background-color: #b2182b" in html or "background-color: #b3182b" in html or "#b2182b" in html


def test_masked_tokens_hidden_and_counted():
    seq = long_sequence(5).mask_special()
    text = record(seq.__rich__()).export_text()
    assert "<|endoftext|>" not in text
    assert "1 masked token(s) not shown" in text
    unmasked = record(long_sequence(5).__rich__()).export_text()
    assert "<|endoftext|>" in unmasked


def test_extra_dimensions_are_summed_for_display():
    seq = long_sequence(4)
    raw = dataclasses.replace(seq, target_attributions=seq.target_attributions[..., None].repeat(1, 1, 3) / 3)
    text = record(raw.__rich__()).export_text()
    assert "summed over extra dimensions (3,)" in text
    plain = record(seq.__rich__()).export_text()
    assert (
        text.split("scores summed")[0].replace("\n", "").split("┓")[1][:200]
        == plain.split("colour scale")[0].replace("\n", "").split("┓")[1][:200]
    )


def test_trace_table_and_encoder_decoder_sections():
    steps = 3
    trace = GenerationTrace(
        token_ids=torch.arange(steps),
        tokens=["ĠParis", "Ġest", "."],
        probabilities=torch.tensor([0.5, 0.2, 0.9]),
        ranks=torch.tensor([0, 3, 0]),
        entropy=torch.tensor([1.0, 2.5, 0.3]),
        top_ids=torch.zeros(steps, 2, dtype=torch.long),
        top_tokens=[["ĠParis", "ĠLyon"], ["Ġa", "Ġest"], [".", "!"]],
        top_probabilities=torch.tensor([[0.5, 0.2], [0.4, 0.2], [0.9, 0.05]]),
    )
    seq = SequenceAttribution(
        source=["ĠThe", "Ġcapital", "</s>"],
        target=["<s>", "ĠParis", "Ġest", "."],
        source_ids=[1, 2, 3],
        target_ids=[0, 4, 5, 6],
        source_attributions=torch.randn(3, steps),
        target_attributions=torch.tensor(
            [[1.0, 2.0, 3.0], [NAN, 1.0, 2.0], [NAN, NAN, 1.0], [NAN, NAN, NAN]]
        ),
        step_scores={},
        attr_pos_start=1,
        attr_pos_end=4,
        trace=trace,
    )
    text = record(AttributionOutput([seq], {"method": "saliency"}).__rich__(), width=120).export_text()
    assert "generation trace" in text and "Lyon 0.20" in text
    trace_rows = [line for line in text.splitlines() if re.match(r"│\s+\d\s+│", line)]
    assert len(trace_rows) == 3 and "est" in trace_rows[1] and "│    3 │" in trace_rows[1]
    # Source rows, then a section line, then target rows.
    body = text.split("┡")[1]
    assert body.index("capital") < body.index("├") < body.index("Paris")


def test_snapshot_of_a_small_example():
    seq = long_sequence(5)
    text = record(AttributionOutput([seq], {"method": "saliency"}).__rich__(), width=80).export_text()
    path = SNAPSHOTS / "console_small.txt"
    if os.environ.get("SEQATTR_UPDATE_SNAPSHOTS"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


def test_real_output_renders_with_trace():
    model = attribution_model("gpt2", "saliency")
    out = model.attribute(
        ["The capital of France is", "a dog"],
        generation_args={"max_new_tokens": 30},
        step_scores=["probability", "entropy"],
        show_progress=False,
    )
    text = record(out.__rich__(), width=90).export_text()
    assert text.count("generation trace") == 2
    assert max(len(line) for line in text.splitlines()) <= 90
    assert "Ġ" not in text


def test_both_data_classes_have_the_same_views_from_one_registry(tmp_path):
    from seqattr.data.views import Views, registered_views, render

    out = attribution_model("gpt2").attribute("the cat", "the cat sat on", show_progress=False)
    for obj in (out, out[0]):
        assert isinstance(obj, Views)
        assert obj.to_html().startswith("<!DOCTYPE html>")
        obj.save_plot(tmp_path / "figure.png")
        assert (tmp_path / "figure.png").stat().st_size > 0
    assert {"terminal", "html", "plot", "notebook", "treescope", "rich"} <= set(registered_views())
    with pytest.raises(ValueError, match="unknown view 'heatmap'; registered views: entities_terminal, html"):
        render("heatmap", out)


def test_unitless_gradients_are_shown_normalised_by_default_and_raw_one_flag_away():
    console = Console(width=200, record=True, color_system=None)
    saliency = attribution_model("gpt2").attribute("the cat", "the cat sat on", show_progress=False)
    assert saliency.info["unitless_scores"] is True
    saliency.show(console=console)
    assert "saliency of probability, normalised per step (L1 = 1) [normalize]" in console.export_text()
    saliency.show(console=console, normalize=False)
    assert "saliency of probability, raw scores" in console.export_text()
    occlusion = attribution_model("gpt2", "occlusion").attribute(
        "the cat", "the cat sat on", show_progress=False
    )
    assert occlusion.info["unitless_scores"] is False
    occlusion.show(console=console)
    assert "occlusion of probability, raw scores" in console.export_text()


def test_cli_show_prints_normalised_gradients_and_raw_with_the_flag(tmp_path, capsys):
    from seqattr.cli import main

    path = tmp_path / "out.json"
    attribution_model("gpt2").attribute("the cat", "the cat sat on", show_progress=False).save(path)
    assert main(["show", str(path)]) == 0
    assert "normalised per step (L1 = 1)" in capsys.readouterr().out
    assert main(["show", str(path), "--raw"]) == 0
    assert "saliency of probability, raw scores" in capsys.readouterr().out
