"""Model-internals methods: attention (against the model's own ``output_attentions``), attention rollout and
value zeroing (against hand computations on layers with known behaviour); the attention implementation is
switched for the call only and always restored. Fused == stepwise and batched == single: rows of the
invariants table (tests/test_invariants.py) on all six architectures.

Exactness runs on float64 copies of the tiny models (tests/exact.py).
"""

from __future__ import annotations

import copy

import pytest
import torch

import seqattr
from exact import assert_close, exact_model, float64_model
from seqattr.methods.attention_rollout import rollout
from seqattr.models.architecture import decoder_layers
from seqattr.models.attribution_model import AttributionModel
from seqattr.testing import ARCHITECTURES, ENCODER_DECODER

PROMPTS = ["The cat sat on the mat.", "Paris is a city"]
CONTINUATIONS = [" The dog ran", " in France"]
TRANSLATIONS = ["Die Katze sitzt.", "Das Haus"]


def attribute(model: seqattr.AttributionModel, fused: bool = True, prompts=PROMPTS, **kwargs):
    if model.is_encoder_decoder:
        generated = TRANSLATIONS[: len(prompts)]
    else:
        generated = [p + c for p, c in zip(prompts, CONTINUATIONS, strict=False)]
    return model.attribute(
        prompts, generated, attribute_target=True, show_progress=False, fused=fused, **kwargs
    )


def eager_copy(architecture: str):
    model, _ = float64_model(architecture)
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    return model


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_attention_equals_the_models_own_attention_rows(architecture):
    model = exact_model(architecture, "attention")
    assert model.model.config._attn_implementation == "sdpa"
    out = attribute(model)
    assert model.model.config._attn_implementation == "sdpa"  # switched for the call only
    info = out.info["method_info"]
    assert "eager" in info["attention_implementation"] and "sdpa" in info["attention_implementation"]
    assert info["extra_dims"] == ["layer", "head"]
    reference_model = eager_copy(architecture)
    for seq in out:  # each example alone, unpadded, through the model's own forward
        with torch.no_grad():
            if architecture in ENCODER_DECODER:
                own = reference_model(
                    input_ids=torch.tensor([seq.source_ids]),
                    decoder_input_ids=torch.tensor([seq.target_ids]),
                    output_attentions=True,
                )
                self_attention, cross = own.decoder_attentions, own.cross_attentions
            else:
                own = reference_model(input_ids=torch.tensor([seq.target_ids]), output_attentions=True)
                self_attention, cross = own.attentions, None
        for step in range(seq.num_steps):
            query = seq.attr_pos_start + step - 1
            expected = torch.stack(
                [layer[0, :, query, : query + 1] for layer in self_attention]
            )  # [L, H, keys]
            assert_close(seq.target_attributions[: query + 1, step], expected.permute(2, 0, 1), what="self")
            assert seq.target_attributions[query + 1 :, step].isnan().all()
            if cross is not None:
                expected = torch.stack([layer[0, :, query] for layer in cross]).permute(2, 0, 1)
                assert_close(seq.source_attributions[:, step], expected, what="cross")


def test_attention_selection_and_aggregation():
    model = exact_model("qwen2", "attention")
    raw = attribute(model)[0].target_attributions  # [positions, steps, layers, heads]
    picked = attribute(model, layers=-1, heads=[0, 2], aggregate_heads="max")[0].target_attributions
    assert_close(picked, raw[:, :, [-1]][..., [0, 2]].amax(-1))  # one selected layer keeps its dimension
    both = attribute(model, aggregate_heads="mean", aggregate_layers="mean")
    assert_close(both[0].target_attributions, raw.mean(-1).mean(-1))
    assert both.info["method_info"]["extra_dims"] == []
    with pytest.raises(ValueError, match="the model has 2 layers"):
        attribute(model, layers=[0, 5])
    with pytest.raises(ValueError, match="aggregate_heads"):
        attribute(model, aggregate_heads="sum")


def test_attention_implementation_restored_after_an_error(monkeypatch):
    model = exact_model("llama", "attention")

    original = AttributionModel.forward

    def broken(self, *args, **kwargs):
        if not kwargs.get("output_attentions"):
            return original(self, *args, **kwargs)  # the engine's step-score pass
        assert model.model.config._attn_implementation == "eager"
        raise RuntimeError("boom")

    monkeypatch.setattr(AttributionModel, "forward", broken)
    with pytest.raises(RuntimeError, match="boom"):
        attribute(model, fused=True)
    assert model.model.config._attn_implementation == "sdpa"


def test_rollout_of_a_hand_example():
    # One layer, two tokens, causal attention [[1, 0], [0.5, 0.5]] in both heads: (A + I) / 2.
    attention = torch.tensor([[1.0, 0.0], [0.5, 0.5]])[None, :, :, None, None].expand(1, 2, 2, 1, 2)
    assert torch.allclose(
        rollout(attention)[0], torch.tensor([[1.0, 0.0], [0.25, 0.75]], dtype=torch.float64)
    )
    two_layers = torch.cat([attention, attention], dim=3)
    expected = torch.tensor([[1.0, 0.0], [0.25, 0.75]], dtype=torch.float64)
    assert torch.allclose(rollout(two_layers)[0], expected @ expected)


@pytest.mark.parametrize("architecture", ["gpt2", "t5"])
def test_rollout_rows_sum_to_one_and_match_a_direct_product(architecture):
    out = attribute(exact_model(architecture, "attention_rollout"), prompts=PROMPTS[:1])
    seq = out[0]
    reference_model = eager_copy(architecture)
    totals = seq.target_attributions.nan_to_num().sum(0)
    if seq.source_attributions is not None:
        totals = totals + seq.source_attributions.sum(0)
    assert_close(totals, torch.ones_like(totals))
    if architecture in ENCODER_DECODER:
        return
    with torch.no_grad():
        attentions = reference_model(
            input_ids=torch.tensor([seq.target_ids]), output_attentions=True
        ).attentions
    product = torch.eye(len(seq.target_ids), dtype=torch.float64)
    for layer in attentions:
        product = (
            0.5 * layer[0].mean(0) + 0.5 * torch.eye(len(seq.target_ids), dtype=torch.float64)
        ) @ product
    for step in range(seq.num_steps):
        query = seq.attr_pos_start + step - 1
        assert_close(seq.target_attributions[: query + 1, step], product[query, : query + 1])


def test_value_zeroing_on_an_identity_attention_layer():
    """GPT-2 layer 0 made analytic: uniform causal attention (zero queries and keys), identity value and
    output projections, no MLP. Its output at i is h_i + mean_{k<=i} x_k (x = ln_1(h)); zeroing token j's
    value removes x_j / (i + 1): the score is 1 - cos(out_i, out_i - x_j / (i + 1))."""
    hf_model, tokenizer = float64_model("gpt2")
    hf_model = copy.deepcopy(hf_model)
    block = hf_model.transformer.h[0]
    hidden = hf_model.config.n_embd
    with torch.no_grad():
        block.attn.c_attn.weight.zero_()
        block.attn.c_attn.weight[:, 2 * hidden :] = torch.eye(hidden)
        block.attn.c_attn.bias.zero_()
        block.attn.c_proj.weight.copy_(torch.eye(hidden))
        block.attn.c_proj.bias.zero_()
        block.mlp.c_proj.weight.zero_()
        block.mlp.c_proj.bias.zero_()
    model = seqattr.load_model(hf_model, "value_zeroing", tokenizer=tokenizer)
    seq = attribute(model, prompts=PROMPTS[:1])[0]
    ids = torch.tensor(seq.target_ids)
    with torch.no_grad():
        h = hf_model.transformer.wte(ids) + hf_model.transformer.wpe(torch.arange(len(ids)))
        x = block.ln_1(h)
    for step in range(seq.num_steps):
        i = seq.attr_pos_start + step - 1
        out = h[i] + x[: i + 1].mean(0)
        expected = torch.stack(
            [1 - torch.cosine_similarity(out, out - x[j] / (i + 1), dim=0) for j in range(i + 1)]
        )
        assert_close(seq.target_attributions[: i + 1, step, 0], expected, what=f"step {step}")
    assert seq.target_attributions[:, :, 1].nan_to_num().abs().max() > 0  # the untouched layer still reacts


def test_value_zeroing_is_zero_where_attention_output_is_cut():
    hf_model, tokenizer = float64_model("llama")
    hf_model = copy.deepcopy(hf_model)
    with torch.no_grad():
        hf_model.model.layers[1].self_attn.o_proj.weight.zero_()
    model = seqattr.load_model(hf_model, "value_zeroing", tokenizer=tokenizer)
    out = attribute(model, layers=[1, 0])
    assert out.info["method_info"]["layers"] == [1, 0]
    for seq in out:
        scores = seq.target_attributions.nan_to_num()
        assert scores[..., 0].abs().max() < 1e-12  # layer 1: values cannot reach the output
        assert scores[..., 1].abs().max() > 1e-3


def test_value_zeroing_refuses_an_unknown_architecture():
    with pytest.raises(ValueError, match="DECODER_LAYOUTS"):
        decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("method", ["value_zeroing", "alti_logit", "attention", "attention_rollout"])
def test_fused_internals_run_the_whole_padded_batch_in_one_pass(method):
    # They once ran each example alone (float64 eager attention turned left padding into NaN); the model's own
    # mask fixed that, and batched == single is checked in tests/test_invariants.py, float64 included.
    model = exact_model("llama", method)
    sizes = []
    handle = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True
    )
    try:
        out = attribute(model, generation_args={"max_new_tokens": 3})
    finally:
        handle.remove()
    assert len(out) == 2 and all(torch.isfinite(seq.target_attributions).any() for seq in out)
    assert min(sizes) == 2  # no pass over one example alone (value zeroing's zeroed rows: larger passes)
