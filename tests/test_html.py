"""Standalone HTML view: self-contained, loads in headless Chromium without console errors, and clicking or
hovering a generated token highlights exactly that step's scores over source and prefix.

The browser tests skip (with the reason) when chromium or websocket-client is missing; see tests/browser.py.
"""

from __future__ import annotations

import html as html_lib
import json
import math
import re

import pytest
import torch

from browser import browser_page, chromium_or_skip
from conftest import attribution_model
from seqattr import AttributionOutput, SequenceAttribution
from seqattr.trace import GenerationTrace
from seqattr.viz.html import example_payload

NAN = float("nan")


def translation_example() -> SequenceAttribution:
    """Encoder-decoder layout, 3 steps, a trace whose step 1 was not the greedy choice, </s> masked."""
    steps = 3
    source_values = torch.tensor([[0.5, -0.2, 0.1], [-0.9, 0.3, 0.05], [0.2, 0.8, -0.4], [0.3, 0.3, 0.3]])
    target_values = torch.tensor([[0.1, 0.2, -0.3], [NAN, 0.6, 0.2], [NAN, NAN, -0.7], [NAN, NAN, NAN]])
    trace = GenerationTrace(
        token_ids=torch.tensor([4, 5, 6]),
        tokens=["▁Paris", "▁est", "."],
        probabilities=torch.tensor([0.61, 0.12, 0.93]),
        ranks=torch.tensor([0, 2, 0]),
        entropy=torch.tensor([1.2, 2.7, 0.2]),
        top_ids=torch.zeros(steps, 2, dtype=torch.long),
        top_tokens=[["▁Paris", "▁Lyon"], ["▁a", "▁était"], [".", "!"]],
        top_probabilities=torch.tensor([[0.61, 0.2], [0.4, 0.3], [0.93, 0.03]]),
    )
    return SequenceAttribution(
        source=["▁The", "▁capital", "▁is", "</s>"],
        target=["<pad>", "▁Paris", "▁est", "."],
        source_ids=[10, 11, 12, 1],
        target_ids=[0, 4, 5, 6],
        source_attributions=source_values,
        target_attributions=target_values,
        step_scores={"probability": torch.tensor([0.61, 0.12, 0.93])},
        attr_pos_start=1,
        attr_pos_end=4,
        trace=trace,
    ).mask_special()


@pytest.fixture(scope="module")
def page():
    executable = chromium_or_skip()
    with browser_page(executable) as tab:
        yield tab


def open_page(page, tmp_path, output, name="page.html"):
    path = tmp_path / name
    output.save_html(path)
    page.events.clear()
    page.open(path)
    return path


def token_states(page, example: int = 0) -> list[dict]:
    return page.evaluate(
        f"""Array.from(document.querySelectorAll('#example-{example} .strips .tok')).map(e => ({{
            side: e.dataset.side, pos: Number(e.dataset.pos), score: e.dataset.score,
            cls: e.className, background: e.style.background }}))"""
    )


def rgb(background: str) -> tuple[int, int, int]:
    return tuple(int(v) for v in re.findall(r"\d+", background)[:3])


def test_page_is_self_contained_and_escapes_tokens():
    seq = translation_example()
    page = AttributionOutput([seq], {"method": "saliency", "model": "t5-tiny"}).to_html()
    assert page.startswith("<!DOCTYPE html>") and page.count("<script") == 2
    assert not re.search(r"https?://", page)
    assert not re.search(r"<(link|img|iframe)\b", page)
    assert not re.search(r"\b(src|href)\s*=", page)
    # Numbers travel exactly (NaN as null), one payload per example.
    data = json.loads(
        re.search(r'id="seqattr-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</")
    )
    example = data["examples"][0]
    assert example["scores"]["target"][1] == [None, pytest.approx(0.6), pytest.approx(0.2)]
    assert example["masked"] == {"source": [3], "target": [0]}
    assert example["scale"] == pytest.approx(0.9)  # the masked </s> row (0.3) and <pad> row do not count
    assert example == json.loads(json.dumps(example_payload(seq)))


def test_click_and_hover_highlight_the_step(page, tmp_path):
    seq = translation_example()
    open_page(page, tmp_path, AttributionOutput([seq], {"method": "saliency"}))
    assert page.errors() == []
    assert page.evaluate("document.getElementById('example-0').dataset.selectedStep") == "0"

    page.mouse('#example-0 .strips .tok.step[data-step="2"]')
    assert page.evaluate("document.getElementById('example-0').dataset.selectedStep") == "2"
    states = token_states(page)
    for state in states:
        side, pos = state["side"], state["pos"]
        values = seq.source_attributions if side == "source" else seq.target_attributions
        value = float(values[pos, 2])
        if math.isnan(value):
            assert state["score"] == "" and "unseen" in state["cls"]
        else:
            assert float(state["score"]) == pytest.approx(value, abs=1e-6)
            assert "unseen" not in state["cls"]
        assert ("selected" in state["cls"]) == (side == "target" and pos == 3)
    by_key = {(s["side"], s["pos"]): s for s in states}
    assert by_key[("source", 3)]["background"] == ""  # masked </s>: score kept, not painted
    r, g, b = rgb(by_key[("source", 2)]["background"])  # -0.4: blue
    assert b > r
    r, g, b = rgb(by_key[("target", 2)]["background"])  # -0.7, the strongest: blue
    assert b > r
    r, g, b = rgb(by_key[("target", 1)]["background"])  # +0.2: pale red
    assert r > b

    # Hover previews another step; leaving returns to the clicked one.
    selected = "document.getElementById('example-0').dataset.selectedStep"
    page.mouse('#example-0 .strips .tok.step[data-step="0"]', action="hover")
    assert page.poll(selected, "0") == "0"
    assert float(token_states(page)[0]["score"]) == pytest.approx(0.5)
    page.mouse("h1", action="hover")
    assert page.poll(selected, "2") == "2"

    # The matrix: unmasked rows only, the selected column outlined.
    rows = page.evaluate("document.querySelectorAll('#example-0 table.matrix tbody tr:not(.score)').length")
    assert rows == 3 + 3  # source without </s>, target without <pad>
    outlined = page.evaluate("document.querySelectorAll('#example-0 table.matrix .sel-col').length")
    assert outlined == rows + 1
    # The details panel shows the trace of the selected step.
    details = page.evaluate("document.querySelector('#example-0 .details').textContent")
    assert "step 2 of 3" in details and "0.930" in details
    assert page.errors() == []


def test_trace_table_and_matrix_select_steps(page, tmp_path):
    open_page(page, tmp_path, AttributionOutput([translation_example()]))
    rows = page.evaluate(
        "Array.from(document.querySelectorAll('#example-0 table.trace tbody tr')).map(r => r.className)"
    )
    assert len(rows) == 3 and "off-greedy" in rows[1] and "off-greedy" not in rows[0]
    page.mouse("#example-0 table.trace tbody tr:nth-child(2)")
    assert page.evaluate("document.getElementById('example-0').dataset.selectedStep") == "1"
    details = page.evaluate("document.querySelector('#example-0 .details').textContent")
    assert "était" in details and "rank2" in details.replace(" ", "")
    page.mouse('#example-0 table.matrix thead th[data-step="2"]')
    assert page.evaluate("document.getElementById('example-0').dataset.selectedStep") == "2"
    assert page.errors() == []


def test_hostile_tokens_are_text(page, tmp_path):
    seq = translation_example()
    evil = "</script><img src=x onerror=console.error('xss')>"
    seq.source[0] = evil
    open_page(page, tmp_path, AttributionOutput([seq]))
    assert page.errors() == []
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    assert page.evaluate("document.querySelector('#example-0 .tok[data-side=source]').textContent") == evil


def test_real_outputs_of_tiny_models(page, tmp_path):
    decoder = attribution_model("gpt2", "saliency").attribute(
        ["The capital of France is", "a dog"],
        generation_args={"max_new_tokens": 8},
        step_scores=["probability"],
        show_progress=False,
    )
    open_page(page, tmp_path, decoder.aggregate("words"), "words.html")
    assert page.errors() == []
    assert page.evaluate("document.querySelectorAll('section.example').length") == 2
    before = token_states(page, 0)
    page.mouse('#example-1 .strips .tok.step[data-step="1"]')
    assert page.evaluate("document.getElementById('example-1').dataset.selectedStep") == "1"
    assert page.evaluate("document.getElementById('example-0').dataset.selectedStep") == "0"
    assert token_states(page, 0) == before

    encoder_decoder = attribution_model("bart", "saliency").attribute(
        "The capital of France is Paris.", generation_args={"max_new_tokens": 5}, show_progress=False
    )
    open_page(page, tmp_path, encoder_decoder, "bart.html")
    assert page.errors() == []
    seq = encoder_decoder[0]
    page.mouse(f'#example-0 .strips .tok.step[data-step="{seq.num_steps - 1}"]')
    sources = [s for s in token_states(page) if s["side"] == "source"]
    expected = seq.source_attributions[:, -1].tolist()
    assert [float(s["score"]) for s in sources] == pytest.approx(expected, abs=1e-6)


def test_notebook_repr_embeds_the_page():
    seq = translation_example()
    frame = seq._repr_html_()
    assert frame.startswith("<iframe srcdoc=") and 'sandbox="allow-scripts"' in frame
    srcdoc = re.match(r'<iframe srcdoc="(.*?)" style', frame, re.S).group(1)
    assert html_lib.unescape(srcdoc) == seq.to_html()
    assert AttributionOutput([seq])._repr_html_().startswith("<iframe")


def test_treescope_renders_outputs_and_raw_tensors():
    treescope = pytest.importorskip("treescope")
    import dataclasses

    from seqattr.viz.notebook import array_figure

    seq = translation_example()
    raw = dataclasses.replace(seq, source_attributions=torch.randn(4, 3, 6), target_attributions=None)
    for value in (seq, raw, AttributionOutput([seq, raw])):
        assert "SequenceAttribution" in treescope.render_to_text(value)
        assert len(treescope.render_to_html(value)) > 1000
    figure = array_figure(raw, "source")
    assert len(treescope.render_to_html(figure)) > 1000
    with pytest.raises(ValueError, match="no target attributions"):
        array_figure(raw, "target")
