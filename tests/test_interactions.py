"""Interactions (issue 12): integrated and expected Hessians, token x token per step.

Fused == stepwise, batched == single, NaN where unseen and save/load run from the rows of
tests/test_invariants.py; here: completeness (rows add up to integrated gradients), symmetry, agreement with
path-explain's own PyTorch explainer, the ``max_features`` refusal, the output's field and its views.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import seqattr
import seqattr.methods.integrated_hessians as integrated_hessians
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
    assert seq.aggregate("word").interactions is None  # token pairs are not merged into words


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
