"""Interactions (issue 12): integrated and expected Hessians, token x token per step.

Fused == stepwise, batched == single, NaN where unseen and save/load run from the rows of
tests/test_invariants.py; here: completeness (rows add up to integrated gradients), symmetry, agreement with
path-explain's own PyTorch explainer, the ``max_features`` refusal, the output's field and its views.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import seqattr
import seqattr.methods.integrated_hessians as integrated_hessians
from browser import browser_page, chromium_or_skip
from exact import assert_close, exact_model, float64_model, probability64


def both_sides(seq: seqattr.SequenceAttribution) -> torch.Tensor:
    """Source then target attributions, the interactions' feature axis."""
    return torch.cat([x for x in (seq.source_attributions, seq.target_attributions) if x is not None])


def test_rows_add_up_to_integrated_gradients():
    # BART in float64 (LayerNorm computed in the model's precision), both sides attributed: 8 x 8 = 64
    # Gauss-Legendre pairs against integrated gradients with the same 8-point rule.
    texts = (["The cat sat."], ["Die Katze."])
    kwargs = {"attributed_fn": probability64, "attribute_target": True, "show_progress": False}
    ih = exact_model("bart", "integrated_hessians", n_steps=8).attribute(*texts, **kwargs)[0]
    ig = exact_model("bart", "integrated_gradients", n_steps=8).attribute(*texts, **kwargs)[0]
    rows = ih.interactions.nansum(1)
    expected = both_sides(ig)
    seen = ~expected.isnan()
    assert (rows[seen] - expected[seen]).abs().max() < 1e-4
    assert expected.nan_to_num().abs().max() > 1e-3  # not a comparison of zeros
    assert_close(both_sides(ih), rows.masked_fill(~seen, float("nan")), what="attributions = row sums")


def test_expected_hessians_rows_add_up_to_expected_gradients():
    # The same draws (seed, n_baselines) and the same 4-point rule per baseline on both sides.
    texts = (["The cat sat."], ["Die Katze."])
    kwargs = {"attributed_fn": probability64, "attribute_target": True, "show_progress": False}
    options = {"n_steps": 4, "n_baselines": 2, "seed": 1}
    eh = exact_model("bart", "expected_hessians", **options).attribute(*texts, **kwargs)[0]
    eg = exact_model("bart", "expected_gradients", **options).attribute(*texts, **kwargs)[0]
    expected = both_sides(eg)
    seen = ~expected.isnan()
    assert (eh.interactions.nansum(1)[seen] - expected[seen]).abs().max() < 1e-4
    assert expected.nan_to_num().abs().max() > 1e-3


def test_interactions_are_symmetric_with_main_effects_on_the_diagonal():
    # GPT-2 in float64 (LayerNorm in the model's precision; Llama's RMSNorm computes in float32).
    model = exact_model("gpt2", "integrated_hessians", n_steps=3)
    seq = model.attribute("The cat sat on", "The cat sat on the mat", attributed_fn=probability64)[0]
    interactions = seq.interactions
    assert interactions.shape == (len(seq.target), len(seq.target), seq.num_steps)
    assert_close(interactions, interactions.transpose(0, 1), rtol=1e-10, what="symmetry")
    off_diagonal = interactions.nan_to_num() * (1 - torch.eye(len(seq.target)))[:, :, None]
    assert off_diagonal.abs().max() > 1e-3 * interactions.nan_to_num().abs().max()  # pairs do interact
    # NaN exactly where a step cannot see one of the two tokens.
    visible = torch.arange(len(seq.target))[:, None] < seq.attr_pos_start + torch.arange(seq.num_steps)
    seen = visible[:, None, :] & visible[None, :, :]
    assert interactions[seen].isfinite().all() and interactions[~seen].isnan().all()


def path_explainer():
    """path-explain's PyTorch explainer, loaded by file path: its package imports TensorFlow."""
    spec = importlib.util.find_spec("path_explain")
    if spec is None:
        pytest.skip("path-explain is not installed (make install: pip install --no-deps path-explain==0.0.7)")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "explainers" / "path_explainer_torch.py"
    module_spec = importlib.util.spec_from_file_location("path_explainer_torch", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.PathExplainerTorch


def test_integrated_hessians_equal_path_explain(monkeypatch):
    """Per step, path-explain's interactions of the step's probability as a function of the flattened
    embeddings of its prefix, summed over the hidden units of each token pair, equal seqattr's."""
    k = 3  # path-explain: k x k samples, a and b on linspace(0, 1, k), every pair weighted 1 / k**2
    monkeypatch.setattr(
        integrated_hessians,
        "integration_rule",
        lambda n_steps, method: (torch.linspace(0, 1, n_steps).tolist(), [1 / n_steps] * n_steps),
    )
    model = exact_model("gpt2", "integrated_hessians", n_steps=k)
    seq = model.attribute("The cat", "The cat sat", attributed_fn=probability64, show_progress=False)[0]
    assert seq.num_steps == 2
    hf_model = float64_model("gpt2")[0]
    embeddings = hf_model.get_input_embeddings()(torch.tensor([seq.target_ids])).detach()
    explainer_class = path_explainer()
    for step in range(seq.num_steps):
        position = seq.attr_pos_start + step
        prefix = embeddings[:, :position]
        hidden = prefix.shape[-1]
        token = seq.target_ids[position]

        def probability(flat, _position=position, _token=token, _hidden=hidden):
            logits = hf_model(inputs_embeds=flat.reshape(flat.shape[0], _position, _hidden)).logits
            return logits[:, -1].softmax(-1)[:, _token : _token + 1]

        flat = prefix.reshape(1, -1).clone().requires_grad_()
        with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no second derivative
            reference = explainer_class(probability).interactions(
                flat, torch.zeros_like(flat), num_samples=k * k, use_expectation=False, verbose=False
            )
        per_token = reference[0].reshape(position, hidden, position, hidden).sum((1, 3))
        ours = seq.interactions[:position, :position, step]
        assert_close(ours, per_token.double(), rtol=1e-5, what=f"step {step}")


def test_max_features_refuses_with_the_cost():
    model = exact_model("gpt2", "integrated_hessians", n_steps=2, max_features=4)
    with pytest.raises(
        ValueError, match=r"integrated_hessians on 7 tokens .* exceeds max_features=4: .*7 x 7"
    ):
        model.attribute("The cat sat on", "The cat sat on the mat", show_progress=False)


def small_output() -> seqattr.AttributionOutput:
    model = exact_model("gpt2", "integrated_hessians", n_steps=2)
    return model.attribute(["The cat", "A dog"], ["The cat sat on", "A dog ran"], show_progress=False)


def test_interactions_survive_save_load_slicing_and_normalising(tmp_path):
    out = small_output()
    out.save(tmp_path / "out.json")
    loaded = seqattr.load(tmp_path / "out.json")
    for mine, theirs in zip(loaded, out, strict=True):
        assert torch.equal(mine.interactions.nan_to_num(7.0), theirs.interactions.nan_to_num(7.0))
    seq = out[0]
    first = seq[:1]  # the first step, the target tokens it saw and the one it predicts
    assert first.interactions.shape == (len(first.target), len(first.target), 1)
    assert_close(first.interactions, seq.interactions[: len(first.target), : len(first.target), :1])
    normalized = seq.normalize()  # rows still add up to the (normalised) attributions
    assert_close(normalized.interactions.nansum(1), normalized.target_attributions.nan_to_num())


def test_interactions_frame_views_and_plot(tmp_path):
    from rich.console import Console

    from seqattr.viz.console import format_score

    out = small_output()
    frame = out.to_dataframe(interactions=True)
    seen = sum(int((~seq.interactions.isnan()).sum()) for seq in out)
    assert len(frame) == seen
    row = frame[
        (frame.example == 0) & (frame.step == 0) & (frame.position == 1) & (frame.partner_position == 0)
    ]
    assert float(row.score.iloc[0]) == pytest.approx(float(out[0].interactions[1, 0, 0]))
    assert (row.token.iloc[0], row.partner_token.iloc[0]) == ("Ġcat", "The")
    with pytest.raises(ValueError, match="no interactions; attribute with method='integrated_hessians'"):
        exact_model("gpt2").attribute("The cat", "The cat sat").to_dataframe(interactions=True)

    console = Console(record=True, width=200)
    out.show_interactions(step=0, console=console)
    text = console.export_text()
    first_row = [format_score(float(v)) for v in out[0].interactions[:2, :2, 0].flatten()[:2]]
    assert "step 0" in text and f"The  {first_row[0]}  {first_row[1]}" in text  # a main effect, a pair
    figure = out[1].plot_interactions(step=-1)
    figure.savefig(tmp_path / "pairs.png")
    assert (tmp_path / "pairs.png").stat().st_size > 0
    with pytest.raises(IndexError, match="step=5 is out of range"):
        out.show_interactions(step=5, console=console)


@pytest.mark.filterwarnings("ignore::seqattr.ConvergenceWarning")
@pytest.mark.parametrize("architecture", ["gpt2", "bart"])
def test_word_pairs_sum_their_token_pairs(architecture):
    """``aggregate("word")`` merges token pairs into word pairs: each pair of words is the sum of its token
    pairs (checked on a merged word against the token matrix by hand), the rows still add up to the merged
    attributions, and NaN marks exactly the pairs a merged step does not see."""
    model = exact_model(architecture, "integrated_hessians", n_steps=2)
    target = "The cat sat on the mat" if architecture == "gpt2" else "Le chat sur"
    out = model.attribute("The cat sat on", target, show_progress=False, attribute_target=True)
    tokens, words = out[0], out.aggregate("word")[0]
    assert words.interactions.shape == (len(both_sides(words)), len(both_sides(words)), words.num_steps)
    # Rows add up to the merged attributions on the steps of one token each (a step merged from several
    # tokens also had its own earlier tokens as partners, which the merged step does not see).
    single = [k for k, step in enumerate(words.steps) if step in tokens.steps]
    assert (
        single and len(single) < words.num_steps if architecture == "bart" else len(single) == words.num_steps
    )
    assert_close(words.interactions[..., single].nansum(1), both_sides(words)[:, single].nan_to_num())
    seen = ~both_sides(words).isnan()  # [features, steps]: NaN exactly where either word is unseen
    assert torch.equal(~words.interactions.isnan(), seen[:, None, :] & seen[None, :, :])
    # "sat" is one word of two tokens ("Ġs", "at") in the prompt; "cat" one token before it.
    # The prompt is the source of Bart, the start of GPT-2's target: either way the first features.
    side_tokens, side_words = tokens.source or tokens.target, words.source or words.target
    s = side_tokens.index("Ġs")
    cat_token, sat_word, cat_word = (
        side_tokens.index("Ġcat"),
        side_words.index("Ġsat"),
        side_words.index("Ġcat"),
    )
    step = words.num_steps - 1  # the last step: a single generated token in both token and word views
    expected = tokens.interactions[[cat_token, cat_token], [s, s + 1], tokens.num_steps - 1].sum()
    assert_close(words.interactions[cat_word, sat_word, step], expected)
    expected = tokens.interactions[s : s + 2, s : s + 2, tokens.num_steps - 1].sum()
    assert_close(words.interactions[sat_word, sat_word, step], expected)
    console_text = _terminal_text(words)
    assert "Ġsat" in console_text or "sat" in console_text


def _terminal_text(seq) -> str:
    from rich.console import Console

    console = Console(record=True, width=300)
    seq.show_interactions(step=-1, console=console)
    return console.export_text()


@pytest.fixture(scope="module")
def page():
    executable = chromium_or_skip()
    with browser_page(executable) as tab:
        yield tab


def test_html_page_shows_a_tokens_partners_on_the_selected_step(page, tmp_path):
    """The page's interactions block: click a step, then a token; every token shows its interaction with the
    clicked one on that step (the numbers of ``seq.interactions``), unseen ones faded, the top partners
    listed; another step updates them."""
    out = small_output()
    seq = out[0]
    path = tmp_path / "pairs.html"
    out.save_html(path)
    page.events.clear()
    page.open(path)
    assert page.errors() == []
    page.mouse('#example-0 .strips .tok.step[data-step="1"]')
    page.mouse('#example-0 .interaction-scores .tok[data-feature="1"]')
    assert page.evaluate("document.getElementById('example-0').dataset.anchor") == "1"

    def states():
        return page.evaluate(
            """Array.from(document.querySelectorAll('#example-0 .interaction-scores .tok')).map(e => ({
                score: e.dataset.score, cls: e.className }))"""
        )

    for step in (1, 0):
        if step == 0:
            page.mouse('#example-0 .strips .tok.step[data-step="0"]')
        for partner, state in enumerate(states()):
            value = float(seq.interactions[1, partner, step])
            if math.isnan(value):
                assert state["score"] == "" and "unseen" in state["cls"]
            else:
                assert float(state["score"]) == pytest.approx(value, abs=1e-6)
            assert ("selected" in state["cls"]) == (partner == 1)
    listed = page.evaluate("document.querySelector('#example-0 table.partners').textContent")
    row = seq.interactions[1, :, 0].clone()
    row[1] = float("nan")
    strongest = int(row.nan_to_num(0).abs().argmax())
    assert seq.target[strongest] in listed
    assert page.errors() == []
    # A page without interactions has no such block.
    assert "interactions-block" not in exact_model("gpt2").attribute("The cat", "The cat sat").to_html()
