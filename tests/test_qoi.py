"""Quantities of interest (seqattr.qoi), internal cuts by name (seqattr.cuts), attribution to a cut."""

from __future__ import annotations

import copy

import pytest
import torch

import seqattr
from conftest import attribution_model
from exact import assert_close, exact_model, float64_model
from seqattr.cuts import attention_heads, resolve_module
from seqattr.testing import ARCHITECTURES, ENCODER_DECODER, tiny_model

RUN = {"show_progress": False}
PROMPT = "the cat sat"
FORCED = {"gpt2": " on the mat", "llama": " on the mat", "qwen2": " on the mat"}


def forced(architecture: str) -> str:
    """A forced output: decoder-only outputs start with the prompt."""
    return PROMPT + FORCED[architecture] if architecture in FORCED else "le chat dort"


# --- a QoI equals an autograd computation written here ---------------------------------------------------


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_neuron_qoi_equals_autograd_gradient_of_that_neuron_per_step(architecture):
    """input_x_gradient of neuron 5 of block 1's MLP output, per step, equals the gradient of that neuron's
    activation at the position computing the step, taken here directly with torch on the HF model."""
    hf_model, _ = float64_model(architecture)
    model = exact_model(architecture, "input_x_gradient")
    layer = {"gpt2": "transformer.h.1.mlp", "llama": "model.layers.1.mlp"}[architecture]
    out = model.attribute(PROMPT, forced(architecture), attributed_fn=seqattr.qoi.neuron(layer, 5), **RUN)
    seq = out[0]

    ids = torch.tensor([seq.target_ids])
    embeds = hf_model.get_input_embeddings()(ids).detach().requires_grad_()
    seen = []
    handle = hf_model.get_submodule(layer).register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        hf_model(inputs_embeds=embeds)
    finally:
        handle.remove()
    (activation,) = seen
    for step, position in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        (grad,) = torch.autograd.grad(activation[0, position - 1, 5], embeds, retain_graph=True)
        expected = (grad * embeds)[0, :position].sum(-1)
        got = seq.target_attributions[:position, step]
        assert_close(got, expected.detach(), what=f"step {step}")
        assert seq.target_attributions[position:, step].isnan().all()  # unseen: the step's own token on


def _linear_first_layer_llama():
    """A tiny Llama whose first q projection reads the input embeddings directly (its norm made an identity),
    with a known weight matrix: the projection's output at a position is ``W @ embedding``."""
    hf_model, tokenizer = tiny_model("llama")
    hf_model = copy.deepcopy(hf_model)
    block = hf_model.model.layers[0]
    block.input_layernorm = torch.nn.Identity()
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(block.self_attn.q_proj.weight.shape, generator=generator)
    with torch.no_grad():
        block.self_attn.q_proj.weight.copy_(weight)
    return seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer), weight


def test_qoi_on_a_linear_cut_gives_its_weights():
    """The q projection is linear in the embedding of its own position: the plain gradient of neuron i at the
    position computing each step is row i of the weight matrix there and zero elsewhere; a direction's is
    ``W.T @ v``."""
    model, weight = _linear_first_layer_llama()
    layer = "model.layers.0.self_attn.q_proj"
    vector = torch.randn(weight.shape[0], generator=torch.Generator().manual_seed(2))
    for qoi, expected_row in [
        (seqattr.qoi.neuron(layer, 3), weight[3]),
        (seqattr.qoi.neurons(layer, [3, 7]), weight[3] + weight[7]),
        (seqattr.qoi.direction(layer, vector), weight.T @ vector),
    ]:
        out = model.attribute(
            PROMPT, forced("llama"), attributed_fn=qoi, abs=False, hidden_reduction=None, **RUN
        )
        seq = out[0]
        for step, position in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
            grads = seq.target_attributions[:position, step]  # [positions, hidden]
            torch.testing.assert_close(grads[position - 1], expected_row, rtol=1e-5, atol=1e-5)
            assert grads[: position - 1].abs().max() == 0, qoi


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_qoi_fused_equals_captum_stepwise_on_every_family(architecture):
    """Each kind of QoI, fused over steps, equals Captum's integrated gradients run on each step's prefix."""
    model = exact_model(architecture, "integrated_gradients", n_steps=6)
    hidden = tiny_model(architecture)[0].get_input_embeddings().weight.shape[1]
    quantities = [
        seqattr.qoi.neuron("decoder.1.mlp", 2),
        seqattr.qoi.head("decoder.0.attention", 1, reduce="l2"),
        seqattr.qoi.direction(-1, torch.linspace(-1, 1, hidden, dtype=torch.float64)),
        seqattr.qoi.activation("decoder.0", lambda values: values.square().mean(-1)),
    ]
    if architecture in ENCODER_DECODER:
        quantities.append(seqattr.qoi.head("decoder.1.cross_attention", 0))
    target = {"attribute_target": True} if architecture in ENCODER_DECODER else {}
    for qoi in quantities:
        runs = [
            model.attribute(PROMPT, forced(architecture), attributed_fn=qoi, fused=fused, **target, **RUN)
            for fused in (True, False)
        ]
        for side in ("source_attributions", "target_attributions"):
            fused, stepwise = (getattr(run[0], side) for run in runs)
            if fused is not None:
                assert_close(fused, stepwise, what=repr(qoi))
        assert runs[0].info["attributed_fn"] == repr(qoi)


def test_a_qoi_also_works_as_a_step_score():
    """As a step score, a neuron QoI gives the neuron's activation at each step's position."""
    hf_model, _ = tiny_model("gpt2")
    model = attribution_model("gpt2")
    qoi = seqattr.qoi.neuron("transformer.h.0.mlp", 4)
    seq = model.attribute(PROMPT, forced("gpt2"), step_scores=[qoi], **RUN)[0]
    seen = []
    handle = hf_model.transformer.h[0].mlp.register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        with torch.no_grad():
            hf_model(torch.tensor([seq.target_ids]))
    finally:
        handle.remove()
    positions = torch.arange(seq.attr_pos_start, seq.attr_pos_end) - 1
    torch.testing.assert_close(seq.step_scores[repr(qoi)], seen[0][0, positions, 4])


# --- cuts by name on every architecture ---------------------------------------------------------------------

EXPECTED_NAMES = {
    "gpt2": {-1: "transformer.h.1", "decoder.0.mlp": "transformer.h.0.mlp",
             "decoder.1.attention": "transformer.h.1.attn"},
    "llama": {0: "model.layers.0", "decoder.1.mlp": "model.layers.1.mlp",
              "decoder.0.attention": "model.layers.0.self_attn"},
    "qwen2": {1: "model.layers.1", "decoder.0.mlp": "model.layers.0.mlp",
              "decoder.1.attention": "model.layers.1.self_attn"},
    "t5": {
        -1: "decoder.block.1",
        "encoder.0": "encoder.block.0",
        "encoder.1.mlp": "encoder.block.1.layer.1.DenseReluDense",
        "encoder.0.attention": "encoder.block.0.layer.0.SelfAttention",
        "decoder.0.mlp": "decoder.block.0.layer.2.DenseReluDense",
        "decoder.1.cross_attention": "decoder.block.1.layer.1.EncDecAttention",
    },
    "bart": {
        "encoder.1": "model.encoder.layers.1",
        "encoder.0.mlp": "model.encoder.layers.0.fc2",
        "decoder.0.attention": "model.decoder.layers.0.self_attn",
        "decoder.1.cross_attention": "model.decoder.layers.1.encoder_attn",
    },
    "marian": {
        0: "model.decoder.layers.0",
        "decoder.1.mlp": "model.decoder.layers.1.fc2",
        "encoder.1.attention": "model.encoder.layers.1.self_attn",
        "decoder.0.cross_attention": "model.decoder.layers.0.encoder_attn",
    },
}  # fmt: skip


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_short_names_select_the_same_parts_on_every_architecture(architecture):
    hf_model, _ = tiny_model(architecture)
    for short, dotted in EXPECTED_NAMES[architecture].items():
        name, module = resolve_module(hf_model, short)
        assert (name, module) == (dotted, hf_model.get_submodule(dotted)), short
        assert resolve_module(hf_model, dotted) == (dotted, module)  # a dotted name is itself
    heads = attention_heads(hf_model, "decoder.0.attention")
    assert heads.num_heads == hf_model.config.num_attention_heads
    assert heads.projection.weight.shape[-1] % heads.num_heads == 0


@pytest.mark.parametrize("architecture", ["gpt2", "t5"])
def test_layer_methods_take_short_names(architecture):
    """target_layer="decoder.1" (and a block index) selects the same layer as its dotted name."""
    dotted = EXPECTED_NAMES[architecture].get(-1) or "transformer.h.1"
    runs = [
        attribution_model(architecture, "layer_gradient_x_activation", target_layer=layer).attribute(
            PROMPT, forced(architecture), attribute_target=True, **RUN
        )[0]
        for layer in (dotted, "decoder.1", -1)
    ]
    for run in runs[1:]:
        torch.testing.assert_close(run.target_attributions, runs[0].target_attributions, equal_nan=True)


# --- bad input ----------------------------------------------------------------------------------------------


def _attribute(architecture, qoi, method="saliency"):
    return attribution_model(architecture, method).attribute(
        PROMPT, forced(architecture), attributed_fn=qoi, **RUN
    )


@pytest.mark.parametrize(
    ("architecture", "qoi", "message"),
    [
        ("gpt2", seqattr.qoi.neuron("transformer.h.0.mpl", 1),
         r"'transformer\.h\.0\.mpl'.*close names: transformer\.h\.0\.mlp.*short name: decoder\.0\.\.1"),
        ("llama", seqattr.qoi.neuron("decoder.9.mlp", 1), r"the decoder has 2 blocks \(indices 0\.\.1"),
        ("gpt2", seqattr.qoi.neuron("decoder.0.cross_attention", 1),
         r"has no 'cross_attention'; valid: decoder\.0\.\.1 \(or 0\.\.1\), decoder\.N\.mlp, "
         r"decoder\.N\.attention"),
        ("llama", seqattr.qoi.neuron("encoder.0", 1), "has no encoder .*decoder-only"),
        ("gpt2", seqattr.qoi.neuron("decoder.0.mlp", 64),
         r"neuron index 64 is out of range; the layer's output has 64 units \(indices 0\.\.63\)"),
        ("llama", seqattr.qoi.neurons("decoder.0.mlp", [1, -65]), "neuron index -65 is out of range"),
        ("gpt2", seqattr.qoi.head("decoder.0.attention", 4), r"head index 4 is out of range; .* has 4 heads"),
        ("gpt2", seqattr.qoi.head("decoder.0.mlp", 0), "is not an attention module"),
        ("gpt2", seqattr.qoi.activation("decoder.0", lambda values: values),
         r"returned \[1, 3, 64\]; a quantity of interest must give one number per row and step, \[1, 3\]"),
        ("gpt2", seqattr.qoi.activation("decoder.0", lambda values: 1.0), r"returned float"),
        ("gpt2", seqattr.qoi.direction("decoder.0", torch.ones(5)), "direction has 5 entries but .* has 64"),
        ("t5", seqattr.qoi.neuron("encoder.0.mlp", 1), "is in the encoder.*choose a decoder module"),
        ("bart", seqattr.qoi.head("encoder.1.attention", 0), "is in the encoder"),
    ],
)  # fmt: skip
def test_bad_quantities_are_refused_naming_what_is_wrong(architecture, qoi, message):
    with pytest.raises(ValueError, match=message):
        _attribute(architecture, qoi)


def test_methods_that_do_not_attribute_a_function_refuse_a_qoi_before_any_model_work():
    for method in ("attention", "attention_rollout", "value_zeroing"):
        with pytest.raises(ValueError, match=f"{method} reads the model's internals .* cannot explain"):
            seqattr.request.AttributionRequest("Hi", method=method, attributed_fn=seqattr.qoi.neuron(0, 1))


def test_a_qoi_is_refused_on_a_classifier():
    from seqattr.testing import tiny_classifier

    hf_model, tokenizer = tiny_classifier("bert")
    model = seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="sequence-classification model has no such positions"):
        model.attribute("a fine film", attributed_fn=seqattr.qoi.neuron("bert.encoder.layer.0", 1), **RUN)


def test_bad_qoi_arguments_are_refused_when_made():
    with pytest.raises(ValueError, match="at must be 'output' or 'input'"):
        seqattr.qoi.neuron(0, 1, at="inside")
    with pytest.raises(TypeError, match="neuron indices must be integers"):
        seqattr.qoi.neurons(0, [1.5])
    with pytest.raises(ValueError, match="head reduce must be 'sum' or 'l2'"):
        seqattr.qoi.head(0, 1, reduce="max")
    with pytest.raises(ValueError, match="1-d float vector"):
        seqattr.qoi.direction(0, torch.ones(2, 2))


# --- attribution to a cut at full resolution: internal influence ------------------------------------------


def _attribute_exact(architecture, method, **options):
    target = {"attribute_target": True} if architecture in ENCODER_DECODER else {}
    if options.pop("source_only", False):
        target = {}
    model = exact_model(architecture, method, **options)
    return model.attribute(PROMPT, forced(architecture), **target, **RUN)[0]


@pytest.mark.parametrize(
    ("architecture", "layer", "doi", "layer_method"),
    [
        ("gpt2", "decoder.1.mlp", "linear", "layer_integrated_gradients"),
        ("llama", "decoder.0", "point", "layer_gradient_x_activation"),
        ("t5", "encoder.1", "linear", "layer_integrated_gradients"),
        ("bart", "decoder.0.cross_attention", "point", "layer_gradient_x_activation"),
    ],
)
def test_internal_influence_per_neuron_sums_to_the_layer_attribution(architecture, layer, doi, layer_method):
    source_only = layer.startswith("encoder")
    steps = {"n_steps": 8} if doi == "linear" else {}
    per_neuron = _attribute_exact(
        architecture, "internal_influence", target_layer=layer, doi=doi, source_only=source_only, **steps
    )
    summed = _attribute_exact(
        architecture, layer_method, target_layer=layer, source_only=source_only, **steps
    )
    side = "source_attributions" if source_only else "target_attributions"
    neurons = getattr(per_neuron, side)
    hidden = tiny_model(architecture)[0].get_input_embeddings().weight.shape[1]
    assert neurons.dim() == 3 and neurons.shape[-1] == hidden  # [positions, steps, neurons]
    assert_close(neurons.sum(-1), getattr(summed, side))


def test_internal_influence_per_head_groups_the_output_projection_input():
    """per_head: each head's influence is the sum of its neurons at the input of the attention's output
    projection; all heads together are the layer attribution there."""
    per_head = _attribute_exact(
        "llama", "internal_influence", target_layer="decoder.1.attention", per_head=True
    )
    projection = "model.layers.1.self_attn.o_proj"
    per_neuron = _attribute_exact(
        "llama", "internal_influence", target_layer=projection, attribute_to_layer_input=True
    )
    layer = _attribute_exact(
        "llama", "layer_integrated_gradients", target_layer=projection, attribute_to_layer_input=True
    )
    num_heads = tiny_model("llama")[0].config.num_attention_heads
    assert per_head.target_attributions.shape[-1] == num_heads
    grouped = per_neuron.target_attributions.unflatten(-1, (num_heads, -1)).sum(-1)
    assert_close(per_head.target_attributions, grouped)
    assert_close(per_head.target_attributions.sum(-1), layer.target_attributions)


def test_layer_attribution_to_a_layer_input_equals_autograd():
    """attribute_to_layer_input: gradient x activation of the MLP's hidden neurons (the input of its output
    projection, 4x the hidden width), each step, equals torch's gradient of the step's probability there."""
    hf_model, _ = float64_model("gpt2")
    seq = _attribute_exact(
        "gpt2",
        "layer_gradient_x_activation",
        target_layer="transformer.h.1.mlp.c_proj",
        attribute_to_layer_input=True,
        hidden_reduction=None,
    )
    ids = torch.tensor([seq.target_ids])
    for step, position in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        leaves = []

        def replace(module, args, _leaves=leaves):
            _leaves.append(args[0].detach().requires_grad_())
            return (_leaves[-1],)

        handle = hf_model.transformer.h[1].mlp.c_proj.register_forward_pre_hook(replace)
        try:
            logits = hf_model(ids).logits
        finally:
            handle.remove()
        probability = torch.softmax(logits[0, position - 1], -1)[ids[0, position]]
        (grad,) = torch.autograd.grad(probability, leaves)
        expected = (grad * leaves[0])[0, :position]
        assert expected.shape[-1] == 4 * 64
        assert_close(seq.target_attributions[:position, step], expected.detach(), what=f"step {step}")


def test_top_units_lists_the_units_that_drove_a_step():
    seq = _attribute_exact("gpt2", "internal_influence", target_layer="decoder.1.mlp", n_steps=4)
    for step in (0, -1):
        per_unit = seq.target_attributions[:, step].nansum(0)
        top = seqattr.methods.internal_influence.top_units(seq, step, k=5)
        assert [i for i, _ in top] == per_unit.abs().argsort(descending=True)[:5].tolist()
        assert [v for _, v in top] == pytest.approx(per_unit[[i for i, _ in top]].tolist())
    top_units = seqattr.methods.internal_influence.top_units
    with pytest.raises(ValueError, match=r"step=9: this sequence has 3 steps"):
        top_units(seq, 9)
    with pytest.raises(ValueError, match="needs per-unit scores"):
        top_units(_attribute_exact("gpt2", "saliency"), 0)


# --- distributions of interest by name ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doi_options", "method", "options"),
    [
        ({"doi": "point", "multiply_by_inputs": False}, "saliency", {"abs": False}),
        ({"doi": "point"}, "input_x_gradient", {}),
        ({"doi": "linear", "n_steps": 6}, "integrated_gradients", {"n_steps": 6}),
        ({"doi": "linear", "n_steps": 6, "rebatch_size": 2}, "integrated_gradients", {"n_steps": 6}),
        ({"doi": "gaussian", "stdevs": 0.0, "nt_samples": 2}, "input_x_gradient", {}),
        ({"doi": "gaussian", "stdevs": 0.0, "multiply_by_inputs": False}, "saliency", {"abs": False}),
    ],
)
@pytest.mark.parametrize("architecture", ["llama", "t5"])
def test_distributions_of_interest_at_the_inputs_are_the_gradient_methods(
    architecture, doi_options, method, options
):
    """At the input embeddings (no target_layer), the point DoI is saliency / input x gradient, the linear
    DoI integrated gradients (rebatch_size only batches it), the Gaussian DoI without noise the point DoI."""
    doi = _attribute_exact(architecture, "internal_influence", hidden_reduction="sum", **doi_options)
    reference = _attribute_exact(architecture, method, **options)
    for side in ("source_attributions", "target_attributions"):
        if getattr(reference, side) is not None:
            assert_close(getattr(doi, side), getattr(reference, side), what=side)


def test_the_gaussian_doi_draws_its_noise_from_its_seed():
    runs = [
        _attribute_exact(
            "gpt2", "internal_influence", target_layer="decoder.0", doi="gaussian", stdevs=0.5, seed=seed
        )
        for seed in (1, 1, 2)
    ]
    point = _attribute_exact("gpt2", "internal_influence", target_layer="decoder.0", doi="point")
    torch.testing.assert_close(runs[0].target_attributions, runs[1].target_attributions, equal_nan=True)
    for other in (runs[2], point):
        assert not torch.allclose(
            runs[0].target_attributions.nan_to_num(), other.target_attributions.nan_to_num()
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"doi": "uniform"}, r"unknown doi 'uniform'; valid: 'point', 'linear', 'gaussian'"),
        ({"rebatch_size": 2, "internal_batch_size": 4}, "name the same thing; give one of them"),
        ({"rebatch_size": 0}, "rebatch_size"),
        ({"per_head": True}, "per_head=True needs an attention layer as target_layer"),
        (
            {"per_head": True, "target_layer": "decoder.0.attention", "attribute_to_layer_input": True},
            "leave attribute_to_layer_input=False",
        ),
    ],
)
def test_bad_internal_influence_options_are_refused_at_load(options, message):
    with pytest.raises(ValueError, match=message):
        attribution_model("gpt2", "internal_influence", **options)


def test_per_head_needs_an_attention_layer():
    model = attribution_model("gpt2", "internal_influence", per_head=True, target_layer="decoder.0.mlp")
    with pytest.raises(ValueError, match="is not an attention module"):
        model.attribute(PROMPT, forced("gpt2"), **RUN)


def test_misplaced_qoi_and_doi_arguments_say_where_they_go():
    model = attribution_model("gpt2", "saliency")
    with pytest.raises(TypeError, match=r"quantity of interest is the attributed function: attributed_fn="):
        model.attribute(PROMPT, forced("gpt2"), qoi=seqattr.qoi.neuron(0, 1), **RUN)
    with pytest.raises(TypeError, match=r"doi= and rebatch_size= are options of method='internal_influence'"):
        model.attribute(PROMPT, forced("gpt2"), doi="linear", **RUN)


def test_a_failing_qoi_leaves_no_hook_on_the_model():
    hf_model, _ = tiny_model("gpt2")
    mlp = hf_model.transformer.h[0].mlp
    with pytest.raises(ValueError, match="out of range"):
        _attribute("gpt2", seqattr.qoi.neuron("decoder.0.mlp", 99))
    with pytest.raises(ValueError, match="returned"):
        _attribute(
            "gpt2", seqattr.qoi.activation("decoder.0.mlp", lambda values: values), "integrated_gradients"
        )
    assert not mlp._forward_hooks and not mlp._forward_pre_hooks


# --- comparative quantities: the original minus the contrast -----------------------------------------------


def test_contrastive_qoi_is_the_neurons_difference_at_aligned_steps():
    """``contrastive(q)`` at each step is q on the original minus q on the contrast sequence at the aligned
    step, each read by hand from the Hugging Face model's own pass; with the contrast equal to the original
    it is 0 and so are its attributions (every input shared, the gradients cancel); without a contrast it is
    refused with the fix."""
    hf_model, tokenizer = tiny_model("gpt2")
    model = attribution_model("gpt2", abs=False)
    q = seqattr.qoi.neuron("decoder.1.mlp", 5)
    original, contrast = "the cat sat on the mat", "the cat sat in the mat"
    seq = model.attribute(
        PROMPT,
        original,
        contrast_targets=contrast,
        attributed_fn=seqattr.qoi.contrastive(q),
        step_scores=[seqattr.qoi.contrastive(q)],
        **RUN,
    )[0]

    def neuron_values(text: str) -> torch.Tensor:
        seen = []
        handle = hf_model.transformer.h[1].mlp.register_forward_hook(lambda m, a, o: seen.append(o))
        try:
            with torch.no_grad():
                hf_model(torch.tensor([tokenizer(text)["input_ids"]]))
        finally:
            handle.remove()
        return seen[0][0, :, 5]

    prompt_len = len(tokenizer(PROMPT)["input_ids"])
    steps = torch.arange(seq.num_steps)
    # Both continuations have as many tokens here, so step t of each is at the same position.
    assert len(tokenizer(contrast)["input_ids"]) == len(tokenizer(original)["input_ids"])
    expected = (
        neuron_values(original)[prompt_len - 1 + steps] - neuron_values(contrast)[prompt_len - 1 + steps]
    )
    torch.testing.assert_close(seq.step_scores["contrastive(neuron('decoder.1.mlp', 5))"], expected)
    assert float(expected[0]) == 0.0 and float(expected[1:].abs().max()) > 0  # shared prefix, then not

    same = model.attribute(
        PROMPT, original, contrast_targets=original, attributed_fn=seqattr.qoi.contrastive(q), **RUN
    )[0]
    assert float(same.target_attributions.nan_to_num().abs().max()) == 0.0
    with pytest.raises(ValueError, match="pass contrast_targets="):
        model.attribute(PROMPT, original, attributed_fn=seqattr.qoi.contrastive(q), **RUN)
    with pytest.raises(TypeError, match="takes a quantity of interest"):
        seqattr.qoi.contrastive("probability")
