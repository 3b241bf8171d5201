"""AttnLRP and CP-LRP (seqattr/methods/lrp.py) against a hand implementation of the paper's rules.

The hand implementation below runs the forward pass of a Llama and of a T5 from their weights and then sends
each step's logit back layer by layer with the rules' formulas (Achtibat et al. 2024, eq. 7-13; Ali et al.
2022 for CP-LRP): relevance divided by the output and multiplied by the inputs' contributions, never a
gradient. The method gets its relevances from one batched backward through hooks on the model's own modules;
the two must agree. Fused == stepwise, batched == single and the model left as found on every family of the
zoo are rows of tests/test_invariants.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import transformers

import seqattr
from exact import assert_close
from seqattr.methods.lrp import SUPPORTED_ARCHITECTURES, lrp_rules
from seqattr.testing import tiny_model

VARIANTS = ("attnlrp", "cp_lrp")


# --------------------------------------------------------------------------------------------------------
# The rules, by hand (float64, no autograd)
# --------------------------------------------------------------------------------------------------------
def share(relevance: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``R / z`` with 0 where ``z`` is 0 (the relevance per unit of output)."""
    return torch.where(output != 0, relevance / torch.where(output != 0, output, 1.0), 0.0)


def linear_rule(
    x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, relevance: torch.Tensor
) -> torch.Tensor:
    """Epsilon rule (epsilon -> 0) of ``y = x W^T + b``: ``R_i = sum_j x_i W_ji R_j / y_j`` (b absorbs its
    share)."""
    return x * (share(relevance, y) @ weight)


def sum_rule(part: torch.Tensor, total: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Epsilon rule of a sum (a residual connection): each summand's share ``part / total``."""
    return part * share(relevance, total)


class Attention:
    """One attention of ``heads``: forward from queries, keys, values; the rules backward."""

    def __init__(self, q, k, v, scale: float, bias, visible) -> None:
        # q [heads, T, d], k, v [heads, S, d] (already repeated for grouped queries), bias [heads, T, S]
        self.q, self.k, self.v, self.scale, self.visible = q, k, v, scale, visible
        self.qk = scale * q @ k.transpose(-1, -2)
        self.z = self.qk + (0 if bias is None else bias)
        self.s = torch.softmax(self.z.masked_fill(~visible, -math.inf), -1)
        self.o = self.s @ v
        self.softmax_leak = 0.0

    def backward(self, relevance: torch.Tensor, variant: str):
        """``R_q, R_k, R_v`` from the relevance of the output ``[heads, T, d]``."""
        ratio = share(relevance, self.o)
        # o_id = sum_j s_ij v_jd: each product s_ij v_jd gets its share of R_o; AttnLRP splits it half and
        # half between s and v (uniform rule); CP-LRP keeps the weights constant: all of it goes to v.
        contributions = self.s[..., None] * self.v[:, None] * ratio[:, :, None]  # [heads, T, S, d]
        if variant == "cp_lrp":
            return torch.zeros_like(self.q), torch.zeros_like(self.k), contributions.sum(1)
        r_v = contributions.sum(1) / 2
        r_s = contributions.sum(-1) / 2
        # Softmax rule: R_z_ij = z_ij (R_s_ij - s_ij sum_j' R_s_ij').
        z = torch.where(self.visible, self.z, 0.0)
        r_z = z * (r_s - self.s * r_s.sum(-1, keepdim=True))
        self.softmax_leak += float(r_s.sum() - r_z.sum())
        # z = qk + bias: the bias absorbs its share; qk_ij = scale sum_d q_id k_jd: uniform rule on q and k.
        r_qk = sum_rule(torch.where(self.visible, self.qk, 0.0), z, r_z)
        unit = share(r_qk, self.qk) * self.scale / 2
        r_q = self.q * (unit @ self.k)
        r_k = self.k * (unit.transpose(-1, -2) @ self.q)
        return r_q, r_k, r_v


def rms_norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    eps = getattr(norm, "variance_epsilon", None) or norm.eps
    return norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def heads(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.view(x.shape[0], n, -1).transpose(0, 1)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(0, 1).reshape(x.shape[1], -1)


class Projected:
    """``y = x W^T`` remembered for the backward rule."""

    def __init__(self, x: torch.Tensor, linear: torch.nn.Linear) -> None:
        self.x, self.weight = x, linear.weight
        self.y = torch.nn.functional.linear(x, linear.weight, linear.bias)

    def back(self, relevance: torch.Tensor) -> torch.Tensor:
        return linear_rule(self.x, self.weight, self.y, relevance)


# --------------------------------------------------------------------------------------------------------
# Llama by hand: RMSNorm (identity), RoPE (a linear map per position), grouped queries, SwiGLU
# --------------------------------------------------------------------------------------------------------
def rope_matrices(model, length: int, dim: int) -> torch.Tensor:
    """``[T, d, d]``: RoPE at each position as a matrix (q_rot = A q), from the model's own cos and sin."""
    positions = torch.arange(length)[None]
    cos, sin = model.model.rotary_emb(torch.zeros(1, length, dim, dtype=torch.float64), positions)
    half = dim // 2
    rotate_half = torch.zeros(dim, dim, dtype=torch.float64)  # rotate_half(q) = [-q2, q1]
    rotate_half[:half, half:] = -torch.eye(half)
    rotate_half[half:, :half] = torch.eye(half)
    return torch.diag_embed(cos[0]) + torch.diag_embed(sin[0]) @ rotate_half


def rope_rule(x: torch.Tensor, matrices: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Epsilon rule of the linear map RoPE, per head ``[heads, T, d]``."""
    y = torch.einsum("tde,hte->htd", matrices, x)
    return x * torch.einsum("htd,tde->hte", share(relevance, y), matrices)


@torch.no_grad()
def llama_relevance(model, ids: list[int], queries: list[int], tokens: list[int], variant: str):
    """Input relevance ``[T, steps]`` of each step's logit (query position, token), each step's softmax
    leak (AttnLRP's softmax rule is not conservative) and the relevance at each layer's output
    ``[layers, T, steps]``, by the rules' formulas."""
    config = model.config
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    dim = config.hidden_size // n_heads
    embeds = model.model.embed_tokens.weight[ids]
    length = len(ids)
    rope = rope_matrices(model, length, dim)
    visible = torch.ones(length, length, dtype=torch.bool).tril()
    layers, h = [], embeds
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        n1 = rms_norm(h, layer.input_layernorm)
        q, k, v = Projected(n1, attn.q_proj), Projected(n1, attn.k_proj), Projected(n1, attn.v_proj)
        q_heads, k_heads = heads(q.y, n_heads), heads(k.y, n_kv)
        q_rot = torch.einsum("tde,hte->htd", rope, q_heads)
        k_rot = torch.einsum("tde,hte->htd", rope, k_heads)
        group = n_heads // n_kv
        att = Attention(
            q_rot,
            k_rot.repeat_interleave(group, 0),
            heads(v.y, n_kv).repeat_interleave(group, 0),
            dim**-0.5,
            None,
            visible,
        )
        out = Projected(merge_heads(att.o), attn.o_proj)
        h2 = h + out.y
        n2 = rms_norm(h2, layer.post_attention_layernorm)
        gate, up = Projected(n2, mlp.gate_proj), Projected(n2, mlp.up_proj)
        down = Projected(torch.nn.functional.silu(gate.y) * up.y, mlp.down_proj)
        h3 = h2 + down.y
        layers.append((h, q, k, v, q_heads, k_heads, att, out, h2, gate, up, down, h3))
        h = h3
    head = Projected(rms_norm(h, model.model.norm), model.lm_head)

    columns, leaks, at_layers = [], [], []
    for query, token in zip(queries, tokens, strict=True):
        relevance = torch.zeros_like(head.y)
        relevance[query, token] = head.y[query, token]
        r_h = head.back(relevance)  # final norm: identity rule
        leak, outputs = 0.0, []
        for h, q, k, v, q_heads, k_heads, att, out, h2, gate, up, down, h3 in reversed(layers):
            outputs.insert(0, r_h.sum(-1))
            r_h2, r_down = sum_rule(h2, h3, r_h), sum_rule(down.y, h3, r_h)
            r_product = down.back(r_down)
            if variant == "cp_lrp":  # the gate is a constant: the product is linear in up
                r_n2 = up.back(r_product)
            else:  # uniform rule on act(gate) * up; identity rule on the activation
                r_n2 = gate.back(r_product / 2) + up.back(r_product / 2)
            r_h2 = r_h2 + r_n2  # post-attention norm: identity rule
            r_h, r_attn = sum_rule(h, h2, r_h2), sum_rule(out.y, h2, r_h2)
            att.softmax_leak = 0.0
            r_q, r_k, r_v = att.backward(heads(out.back(r_attn), n_heads), variant)
            leak += att.softmax_leak
            group = n_heads // n_kv
            r_k = r_k.view(n_kv, group, *r_k.shape[1:]).sum(1)
            r_v = r_v.view(n_kv, group, *r_v.shape[1:]).sum(1)
            r_q, r_k = rope_rule(q_heads, rope, r_q), rope_rule(k_heads, rope, r_k)
            r_n1 = q.back(merge_heads(r_q)) + k.back(merge_heads(r_k)) + v.back(merge_heads(r_v))
            r_h = r_h + r_n1  # input norm: identity rule
        columns.append(r_h.sum(-1))
        leaks.append(leak)
        at_layers.append(torch.stack(outputs))
    return torch.stack(columns, 1), torch.tensor(leaks, dtype=torch.float64), torch.stack(at_layers, -1)


# --------------------------------------------------------------------------------------------------------
# T5 by hand: RMS norms (identity), relative attention bias (a bias: it absorbs its share), cross-attention,
# ReLU MLP (identity rule), decoder output scaled before the tied head
# --------------------------------------------------------------------------------------------------------
class T5Attention:
    """One T5 attention (no score scaling) remembered for the backward rule."""

    def __init__(self, module, queries_from, keys_from, bias, visible) -> None:
        n = module.n_heads
        self.q, self.k, self.v = (
            Projected(x, p)
            for x, p in ((queries_from, module.q), (keys_from, module.k), (keys_from, module.v))
        )
        self.att = Attention(heads(self.q.y, n), heads(self.k.y, n), heads(self.v.y, n), 1.0, bias, visible)
        self.out = Projected(merge_heads(self.att.o), module.o)
        self.n = n

    def backward(self, relevance: torch.Tensor, variant: str):
        """Relevance of the queries' and the keys' inputs (the same tensor in a self-attention)."""
        r_q, r_k, r_v = self.att.backward(heads(self.out.back(relevance), self.n), variant)
        r_queries = self.q.back(merge_heads(r_q))
        return r_queries, self.k.back(merge_heads(r_k)) + self.v.back(merge_heads(r_v))


class T5Stack:
    """An encoder or decoder stack of T5 by hand: forward, then the rules backward."""

    def __init__(self, stack, embeds, causal: bool, encoded=None) -> None:
        length = embeds.shape[0]
        self.stack, self.encoded = stack, encoded
        visible = torch.ones(length, length, dtype=torch.bool)
        visible = visible.tril() if causal else visible
        bias = stack.block[0].layer[0].SelfAttention.compute_bias(length, length)[0].double()
        self.blocks, h = [], embeds
        for block in stack.block:
            steps = []
            normed = rms_norm(
                h, block.layer[0].layer_norm
            )  # a self-attention's keys come from its queries' input
            self_attention = T5Attention(block.layer[0].SelfAttention, normed, normed, bias, visible)
            steps.append(("self", self_attention, h, h + self_attention.out.y))
            h = h + self_attention.out.y
            if encoded is not None:
                cross_visible = torch.ones(length, encoded.shape[0], dtype=torch.bool)
                cross = T5Attention(
                    block.layer[1].EncDecAttention,
                    rms_norm(h, block.layer[1].layer_norm),
                    encoded,
                    None,
                    cross_visible,
                )
                steps.append(("cross", cross, h, h + cross.out.y))
                h = h + cross.out.y
            ff = block.layer[-1].DenseReluDense
            inner = Projected(rms_norm(h, block.layer[-1].layer_norm), ff.wi)
            outer = Projected(torch.relu(inner.y), ff.wo)
            steps.append(("ff", (inner, outer), h, h + outer.y))
            h = h + outer.y
            self.blocks.append(steps)
        self.output = rms_norm(h, stack.final_layer_norm)

    def backward(self, relevance: torch.Tensor, variant: str):
        """Relevance of the embeddings and (decoder) of the encoder's output, from the stack output's."""
        r_h, r_encoded = relevance, 0.0  # final norm: identity rule
        for steps in reversed(self.blocks):
            for kind, part, before, after in reversed(steps):
                r_before, r_part = sum_rule(before, after, r_h), sum_rule(after - before, after, r_h)
                if kind == "ff":
                    inner, outer = part
                    r_h = r_before + inner.back(outer.back(r_part))  # ReLU and norm: identity rules
                elif kind == "cross":
                    r_queries, r_keys = part.backward(r_part, variant)
                    r_h, r_encoded = r_before + r_queries, r_encoded + r_keys
                else:
                    r_queries, r_keys = part.backward(r_part, variant)
                    r_h = r_before + r_queries + r_keys
        return r_h, r_encoded


@torch.no_grad()
def t5_relevance(model, source: list[int], target: list[int], queries, tokens, variant: str):
    """Source ``[S, steps]`` and target ``[T, steps]`` relevance of each step's logit, by the rules."""
    shared = model.shared.weight
    encoder = T5Stack(model.encoder, shared[source], causal=False)
    decoder = T5Stack(model.decoder, shared[target], causal=True, encoded=encoder.output)
    head = Projected(
        decoder.output * model.model_dim**-0.5, model.lm_head
    )  # the scaling is linear: R unchanged
    sources, targets = [], []
    for query, token in zip(queries, tokens, strict=True):
        relevance = torch.zeros_like(head.y)
        relevance[query, token] = head.y[query, token]
        r_target, r_encoded = decoder.backward(head.back(relevance), variant)
        r_source, _ = encoder.backward(r_encoded, variant)
        sources.append(r_source.sum(-1))
        targets.append(r_target.sum(-1))
    return torch.stack(sources, 1), torch.stack(targets, 1)


# --------------------------------------------------------------------------------------------------------
# Models and runs
# --------------------------------------------------------------------------------------------------------
def sized_model(architecture: str, layers: int, zero_biases: bool = False, seed: int = 0, **config_changes):
    """A float64 model of the zoo's ``architecture`` with ``layers`` layers (encoder and decoder alike)."""
    base, tokenizer = tiny_model(architecture)
    config = copy.deepcopy(base.config)
    for name, value in config_changes.items():
        setattr(config, name, value)
    for name in ("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers"):
        if hasattr(config, name):
            setattr(config, name, layers)
    for name in ("encoder_layers", "decoder_layers"):
        if hasattr(config, name):
            setattr(config, name, layers)
    torch.manual_seed(seed)
    model = type(base)(config).double().eval()
    model.generation_config = copy.deepcopy(base.generation_config)
    if zero_biases:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("bias") or "wpe" in name or "embed_positions" in name:
                    parameter.zero_()
    return model, tokenizer


def attribute(model, tokenizer, method: str, prompt: str, target: str, **kwargs):
    attribution_model = seqattr.load_model(model, method, tokenizer=tokenizer)
    return attribution_model.attribute(
        prompt, target, attributed_fn="logit", step_scores=["logit"], show_progress=False, **kwargs
    )[0]


PROMPT, TARGET = "the cat sat", "the cat sat on the mat"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layers", [1, 2])
def test_llama_relevance_equals_the_rules_by_hand(variant, layers):
    model, tokenizer = sized_model("llama", layers)
    out = attribute(model, tokenizer, variant, PROMPT, TARGET)
    ids, start = out.target_ids, out.attr_pos_start
    steps = range(start, len(ids))
    expected, _, _ = llama_relevance(model, ids, [p - 1 for p in steps], [ids[p] for p in steps], variant)
    actual = out.target_attributions
    visible = ~actual.isnan()
    assert visible.any() and torch.equal(visible, torch.ones_like(expected, dtype=torch.bool).triu(1 - start))
    assert_close(actual[visible], expected[visible], rtol=1e-5, what=f"{variant}, {layers} layers")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layer", [0, 1])
def test_layer_relevance_equals_the_rules_by_hand(variant, layer):
    """``layer_attnlrp`` / ``layer_cp_lrp``: the relevance at a decoder layer's output, by hand too."""
    model, tokenizer = sized_model("llama", 2)
    out = seqattr.load_model(
        model, f"layer_{variant}", tokenizer=tokenizer, target_layer=f"model.layers.{layer}"
    )
    out = out.attribute(PROMPT, TARGET, attributed_fn="logit", show_progress=False)[0]
    ids, start = out.target_ids, out.attr_pos_start
    steps = range(start, len(ids))
    _, _, at_layers = llama_relevance(model, ids, [p - 1 for p in steps], [ids[p] for p in steps], variant)
    visible = ~out.target_attributions.isnan()
    assert_close(
        out.target_attributions[visible], at_layers[layer][visible], what=f"layer {layer}, {variant}"
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layers", [1, 2])
def test_t5_relevance_equals_the_rules_by_hand(variant, layers):
    model, tokenizer = sized_model("t5", layers)
    out = attribute(model, tokenizer, variant, PROMPT, TARGET, attribute_target=True)
    ids, start = out.target_ids, out.attr_pos_start
    steps = range(start, len(ids))
    source, target = t5_relevance(
        model, out.source_ids, ids, [p - 1 for p in steps], [ids[p] for p in steps], variant
    )
    assert_close(out.source_attributions, source, rtol=1e-5, what=f"source, {variant}, {layers} layers")
    visible = ~out.target_attributions.isnan()
    assert torch.equal(visible, torch.ones_like(target, dtype=torch.bool).triu(1 - start))
    assert_close(
        out.target_attributions[visible],
        target[visible],
        rtol=1e-5,
        what=f"target, {variant}, {layers} layers",
    )


def test_the_two_variants_differ_and_differ_from_input_x_gradient():
    """The rules change the numbers: neither variant is plain input x gradient, and they differ."""
    model, tokenizer = sized_model("llama", 2)
    results = [
        attribute(model, tokenizer, method, PROMPT, TARGET).target_attributions.nan_to_num()
        for method in ("attnlrp", "cp_lrp", "input_x_gradient")
    ]
    for i in range(3):
        for j in range(i + 1, 3):
            assert (results[i] - results[j]).abs().max() > 1e-3 * results[i].abs().max()


# --------------------------------------------------------------------------------------------------------
# Conservation
# --------------------------------------------------------------------------------------------------------
def relevance_sums(out) -> torch.Tensor:
    total = out.target_attributions.nan_to_num().sum(0)
    if out.source_attributions is not None:
        total = total + out.source_attributions.nan_to_num().sum(0)
    return total


GATED_T5 = {"is_gated_act": True, "dense_act_fn": "gelu_new", "feed_forward_proj": "gated-gelu"}
"""T5 v1.1 / Flan-T5's gated MLP (``wi_0``, ``wi_1``, ``wo``)."""


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2", "t5", "t5:gated", "bart", "marian"])
def test_cp_lrp_conserves_each_steps_logit_without_biases(architecture):
    """CP-LRP: with no bias (linear and norm biases, position embeddings zeroed) each step's relevances add up
    to its logit exactly (Llama-like norms compute in float32: to float32 rounding). T5's relative attention
    bias reaches only the detached scores; a gated MLP's gate is detached."""
    gated = architecture.endswith(":gated")
    architecture = architecture.removesuffix(":gated")
    model, tokenizer = sized_model(architecture, 2, zero_biases=True, **(GATED_T5 if gated else {}))
    if gated:
        assert type(model.decoder.block[0].layer[-1].DenseReluDense).__name__ == "T5DenseGatedActDense"
    kwargs = {"attribute_target": True} if model.config.is_encoder_decoder else {}
    out = attribute(model, tokenizer, "cp_lrp", PROMPT, TARGET, **kwargs)
    logits = out.step_scores["logit"]
    torch.testing.assert_close(relevance_sums(out), logits, rtol=1e-6, atol=1e-6 * float(logits.abs().max()))


def test_attnlrp_conserves_each_steps_logit_less_the_softmax_terms():
    """AttnLRP on a model without biases: each step's relevances add up to its logit less what the softmax
    rule does not pass on (computed by the hand implementation), and that term is not negligible."""
    model, tokenizer = sized_model("llama", 2)
    out = attribute(model, tokenizer, "attnlrp", PROMPT, TARGET)
    ids, start = out.target_ids, out.attr_pos_start
    steps = range(start, len(ids))
    _, leaks, _ = llama_relevance(model, ids, [p - 1 for p in steps], [ids[p] for p in steps], "attnlrp")
    logits = out.step_scores["logit"].double()
    torch.testing.assert_close(relevance_sums(out).double() + leaks, logits, rtol=1e-6, atol=1e-6)
    assert leaks.abs().max() > 1e-3 * logits.abs().max()


# --------------------------------------------------------------------------------------------------------
# Attention implementations, unsupported architectures, the model left as found
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ["llama", "gpt2", "bart"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_eager_and_sdpa_give_the_same_relevance(architecture, variant):
    model, tokenizer = sized_model(architecture, 2)
    kwargs = {"attribute_target": True} if model.config.is_encoder_decoder else {}
    results = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        out = attribute(model, tokenizer, variant, PROMPT, TARGET, **kwargs)
        assert model.config._attn_implementation == implementation  # kept, not switched
        results[implementation] = relevance_sums(out), out.target_attributions
    # Llama's eager attention takes its softmax in float32 (SDPA keeps float64): equal to float32 rounding.
    for eager, sdpa in zip(results["eager"], results["sdpa"], strict=True):
        assert_close(sdpa, eager, rtol=1e-6, what=f"{architecture} {variant}")


def test_an_unsupported_architecture_is_refused_with_the_supported_ones():
    """An architecture whose modules the rules were not checked on (OPT here) is refused before any work."""
    _, tokenizer = tiny_model("gpt2")
    config = transformers.OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        ffn_dim=64,
        num_attention_heads=2,
        word_embed_proj_dim=32,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.OPTForCausalLM(config).eval()
    attribution_model = seqattr.load_model(model, "attnlrp", tokenizer=tokenizer)
    with pytest.raises(
        ValueError, match=r"attnlrp does not support OPTForCausalLM \(model_type 'opt'\)"
    ) as error:
        attribution_model.attribute("a dog", "a dog runs", show_progress=False)
    for name in SUPPORTED_ARCHITECTURES.values():
        assert name in str(error.value)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_an_unknown_norm_is_refused_and_the_hooks_are_removed():
    """A norm whose formula the identity rule does not reproduce (its weight used as 1 + w, as Gemma does) is
    refused at its first call; the exception leaves no hook behind."""
    model, tokenizer = sized_model("llama", 1)
    ids = torch.tensor([tokenizer("a dog runs").input_ids])
    norm = model.model.norm
    handle = norm.register_forward_hook(lambda module, args, output: output * 2)  # no RMSNorm any more
    try:
        with pytest.raises(ValueError, match="LlamaRMSNorm computes no LayerNorm or RMSNorm"):
            with lrp_rules(model, "attnlrp"):
                model(ids)
    finally:
        handle.remove()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_the_model_is_left_as_found_after_an_exception_inside_the_rules():
    model, tokenizer = sized_model("gpt2", 1)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([tokenizer("a dog runs").input_ids])
    before = model(ids).logits
    with pytest.raises(RuntimeError, match="inside"):
        with lrp_rules(model, "cp_lrp"):
            model(ids)
            raise RuntimeError("inside")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert model.config._attn_implementation == "sdpa"
    # Gradients are plain again.
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    logit = model(inputs_embeds=embeds).logits[0, -1, 3]
    plain = torch.autograd.grad(logit, embeds)[0]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before)
    with lrp_rules(model, "cp_lrp"):
        logit = model(inputs_embeds=embeds).logits[0, -1, 3]
        modified = torch.autograd.grad(logit, embeds)[0]
    assert (plain - modified).abs().max() > 1e-6


def test_the_benchmark_reports_attnlrp_against_fused_saliency():
    """benchmarks/report.py: the issue's target, AttnLRP's fused time within 1.5x of fused saliency's."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import cases
    import report

    assert "attnlrp" in cases.HEADLINE_METHODS and cases.method_spec("attnlrp").cheap

    def row(method: str, seconds: float) -> dict:
        return {
            "model": "smollm2",
            "method": method,
            "steps": report.TARGET_STEPS,
            "batch": 1,
            "scenario": "speed",
            "category": "gradient",
            "engines": {"fused": {"median_s": seconds, "overhead": 0.01}},
        }

    (target,) = [
        t for t in report._targets([row("saliency", 2.0), row("attnlrp", 2.6)]) if "attnlrp" in t["target"]
    ]
    assert target["measured"] == pytest.approx(1.3) and target["met"]
    (target,) = [
        t for t in report._targets([row("saliency", 2.0), row("attnlrp", 3.2)]) if "attnlrp" in t["target"]
    ]
    assert not target["met"]


@pytest.mark.parametrize("architecture", ["gpt2", "bart", "llama"])
def test_half_precision_models_get_the_float32_relevance_to_rounding(architecture):
    """The norm rules hold in bfloat16 (LayerNorm's statistics in float32, as torch's kernel takes them)."""
    model, tokenizer = tiny_model(architecture)
    kwargs = {"attribute_target": True} if model.config.is_encoder_decoder else {}
    reference = attribute(model, tokenizer, "attnlrp", PROMPT, TARGET, **kwargs).target_attributions
    half = attribute(copy.deepcopy(model).bfloat16(), tokenizer, "attnlrp", PROMPT, TARGET, **kwargs)
    assert_close(half.target_attributions, reference, rtol=0.1, what=f"{architecture} bfloat16")
