"""Plots (PNG/SVG files of the expected size whose cells have the right colours) and data frames (long
format that round-trips the numbers exactly, also through CSV; Inseq-like score dictionaries)."""

from __future__ import annotations

import io
import math

import pytest
import torch

from conftest import attribution_model
from seqattr import AttributionOutput, SequenceAttribution
from seqattr.data.frames import COLUMNS, scores_from_dataframe
from seqattr.viz import plots

pytest.importorskip("matplotlib")
pd = pytest.importorskip("pandas")
NAN = float("nan")


def example(steps: int = 4, seed: int = 0) -> SequenceAttribution:
    g = torch.Generator().manual_seed(seed)
    source = ["▁the", "▁cat", "▁the", "</s>"]  # a repeated token, to check keys stay apart
    target = ["<pad>"] + [f"▁w{i}" for i in range(steps)]
    target_values = torch.randn(len(target), steps, generator=g)
    for t in range(steps):
        target_values[1 + t :, t] = NAN
    return SequenceAttribution(
        source=source,
        target=target,
        source_ids=[5, 6, 5, 1],
        target_ids=list(range(len(target))),
        source_attributions=torch.randn(len(source), steps, generator=g),
        target_attributions=target_values,
        step_scores={
            "probability": torch.rand(steps, generator=g),
            "entropy": torch.rand(steps, generator=g),
        },
        attr_pos_start=1,
        attr_pos_end=len(target),
    )


# ---------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------


def test_png_has_the_expected_size_and_cell_colours(tmp_path):
    from PIL import Image

    seq = example(steps=5)
    seq.source_attributions[0, 0] = 10.0  # strongly positive: red
    seq.source_attributions[1, 0] = -10.0  # strongly negative: blue
    dpi, cell = 100, 0.5
    path = tmp_path / "heatmap.png"
    seq.save_plot(path, dpi=dpi, cell_size=cell, annotate=False, title="test")
    image = Image.open(path).convert("RGB")
    # The last target token is seen by no step: it gets no (empty) row.
    rows, scores = len(seq.source) + len(seq.target) - 1, len(seq.step_scores)
    width = plots.LEFT + plots.RIGHT + cell * seq.num_steps
    height = plots.TOP + plots.BOTTOM + cell * (rows + scores + 0.3)
    assert image.size == (round(width * dpi), round(height * dpi))

    def pixel(row: int, column: int) -> tuple[int, int, int]:
        x = (plots.LEFT + cell * (column + 0.5)) * dpi
        y = (plots.TOP + cell * (row + 0.5)) * dpi
        return image.getpixel((int(x), int(y)))

    r, g, b = pixel(0, 0)
    assert r > 100 and r > b + 50  # red
    r, g, b = pixel(1, 0)
    assert b > r + 50  # blue
    # Target row 4 (token "w2"... position 4) at step 0 is unseen: blank (white background).
    assert pixel(len(seq.source) + 4, 0) == (255, 255, 255)

    # One more step widens the picture by exactly one cell.
    wider = tmp_path / "wider.png"
    example(steps=6).save_plot(wider, dpi=dpi, cell_size=cell)
    assert Image.open(wider).size[0] - image.size[0] == round(cell * dpi)


def test_svg_and_masked_rows(tmp_path):
    seq = example().mask_special()
    path = tmp_path / "heatmap.svg"
    seq.save_plot(path)
    text = path.read_text()
    assert "<svg" in text
    figure = seq.plot()
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels == ["the", "cat", "the", "w0", "w1", "w2"]  # </s> and <pad> masked; w3: no step sees it
    raw = SequenceAttribution(**{**seq.__dict__, "source_attributions": torch.randn(4, 4, 3)})
    raw.plot()  # extra dimensions are summed, no error


# ---------------------------------------------------------------------------------------------------------
# Data frames
# ---------------------------------------------------------------------------------------------------------


def test_dataframe_long_format_round_trips_exactly():
    first, second = example(seed=0), example(steps=3, seed=1).mask_special()
    out = AttributionOutput([first, second], {"method": "saliency"})
    frame = out.to_dataframe()
    assert list(frame.columns) == [*COLUMNS, "probability", "entropy"]
    for index, seq in enumerate([first, second]):
        visible = int((~seq.source_attributions.isnan()).sum() + (~seq.target_attributions.isnan()).sum())
        assert (frame["example"] == index).sum() == visible
        rebuilt = scores_from_dataframe(frame, seq, example=index)
        assert torch.equal(rebuilt["source"], seq.source_attributions)
        assert torch.equal(rebuilt["target"].nan_to_num(7.0), seq.target_attributions.nan_to_num(7.0))
    # Every row carries its own numbers.
    row = frame[
        (frame.example == 0) & (frame.side == "target") & (frame.step == 2) & (frame.position == 1)
    ].iloc[0]
    assert row.score == first.target_attributions[1, 2].item()
    assert row.step_token == "▁w2" and row.step_position == 3 and row.token == "▁w0"
    assert row.probability == first.step_scores["probability"][2].item()
    assert frame[frame.example == 1].query("side == 'source' and position == 3").masked.all()
    # Through CSV and back: float32 numbers survive exactly.
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    buffer.seek(0)
    again = pd.read_csv(buffer, keep_default_na=False)
    rebuilt = scores_from_dataframe(again, first)
    assert torch.equal(rebuilt["source"], first.source_attributions)


def test_dataframe_refuses_extra_dimensions():
    seq = example()
    raw = SequenceAttribution(**{**seq.__dict__, "source_attributions": torch.randn(4, 4, 3)})
    with pytest.raises(ValueError, match="reduce them first"):
        raw.to_dataframe()
    assert len(raw.reduce("l2").to_dataframe()) == len(seq.to_dataframe())


def test_scores_dicts():
    seq = example()
    (scores,) = AttributionOutput([seq]).get_scores_dicts()
    assert set(scores) == {"source_attributions", "target_attributions", "step_scores"}
    key = (3, "▁w2")
    assert scores["source_attributions"][key][(0, "▁the")] == seq.source_attributions[0, 2].item()
    assert scores["source_attributions"][key][(2, "▁the")] == seq.source_attributions[2, 2].item()
    assert set(scores["target_attributions"][key]) == {(0, "<pad>"), (1, "▁w0"), (2, "▁w1")}
    assert scores["step_scores"][key]["entropy"] == pytest.approx(seq.step_scores["entropy"][2].item())
    assert len(scores["source_attributions"]) == seq.num_steps


def test_real_output_frame_matches_tensors():
    out = attribution_model("qwen2", "saliency").attribute(
        ["The capital of France is", "a dog"],
        generation_args={"max_new_tokens": 4},
        step_scores=["probability"],
        show_progress=False,
    )
    frame = out.to_dataframe()
    for index, seq in enumerate(out):
        part = frame[frame.example == index]
        assert part.step.nunique() == seq.num_steps and set(part.side) == {"target"}
        total = seq.target_attributions.nansum().item()
        assert part.score.astype("float64").sum() == pytest.approx(total, rel=1e-5)
        assert not any(math.isnan(v) for v in part.score)
