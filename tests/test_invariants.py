"""Invariants every attribution method keeps, driven by one table of methods x model families.

To check a new method, add a row to `METHODS`: ``(name, options)``, the options passed to
``load_model(model, name, **options)``, and optionally the families it runs on (default `FAMILIES`: one
decoder-only and one encoder-decoder tiny model). Nothing else is needed. Each row is run for each of its
families (float64, attributing `probability64`: see tests/exact.py), on two examples of different lengths
with forced targets, and must show:

- fused == stepwise (the one-pass engine equals the step-by-step reference, Captum's own class where Captum
  has the method) within 1e-5; the per-example method info agrees;
- batched == single (padding changes nothing) within 1e-5;
- finite scores exactly where a step can see (NaN elsewhere), on the sides the row attributes, not all zero;
- save -> load round trip bit for bit;
- on the default families: no hook, module swap, weight change or mode change left on the model, after a
  normal run and after an exception raised inside the method's work (by the attributed function, or by the
  model's forward pass).

This table is the one place for fused == stepwise and batched == single across methods: the method files
(tests/test_gradient_methods.py, ...) keep only comparisons with independent references.

A family is an architecture of `seqattr.testing`; ``"t5:source"`` is an encoder-decoder that attributes its
source only (``attribute_target=False``). ``"tagger:qwen2"``, ``"reader:roberta"``,
``"classifier:deberta-v2"`` are classifiers (`CLASSIFIER_FAMILIES`: a head and an architecture of
`seqattr.testing.tiny_task_model` or `tiny_classifier`), which explain their own predictions on two inputs
and attribute to the input only. An option may differ by family: `by_family` (e.g. a layer name).
Randomised methods must be reproducible for these to hold: each call here runs after ``torch.manual_seed(0)``,
and a method's draws must not depend on the batch it is in (or the row must fix its seed option, or it is
listed by `draws_follow_the_batch`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
from typing import NamedTuple

import pytest
import torch

import seqattr
from exact import assert_identical, assert_sequences_close, exact_model, probability64
from seqattr.testing import ENCODER_DECODER, tiny_classifier, tiny_model, tiny_task_model

FAMILIES = ("llama", "t5")
"""The default families: one decoder-only and one encoder-decoder architecture (tests/test_batching.py
covers all six for saliency); the model-state check (no hook left) runs on these."""
GRADIENT_FAMILIES = ("gpt2", "llama", "t5", "t5:source", "bart")
"""The gradient methods' families: learned and rotary positions, an encoder-decoder on both sides and on its
source only."""
PERTURBATION_FAMILIES = ("gpt2", "llama", "t5", "bart")
INTERNALS_FAMILIES = ("gpt2", "llama", "qwen2", "t5", "bart", "marian")
ALTI_FAMILIES = ("gpt2", "llama", "qwen2", "t5", "t5:source")
SOURCE_ONLY = ":source"
CLASSIFIER_FAMILIES = (
    "tagger:distilbert",
    "tagger:roberta",
    "tagger:qwen2",
    "reader:distilbert",
    "reader:roberta",
    "reader:qwen2",
    "classifier:deberta-v2",
)
"""Classifier heads (issue 14) on the architectures their own test files do not cover (BERT's are in
tests/test_classifiers*.py): taggers and readers on two encoders and a causal decoder (whose tagger's steps
do not see the tokens after their own: NaN), a DeBERTa-v2 sequence classifier."""
CLASSIFIER_INPUTS = {
    "tagger": ["bob went to london.", "alice lives in new york."],
    "reader": [
        ("where does bob live?", "bob went to london."),
        ("who is in paris?", "alice lives in paris."),
    ],
    "classifier": ["the movie was wonderful.", "my day was sad and the music was boring."],
}
"""Each classifier head's two inputs (of different lengths), standing for `PROMPTS`."""


class by_family(dict):  # noqa: N801  (reads as a value in the table)
    """An option whose value depends on the family (e.g. a layer's dotted name)."""


# Inner layers of each family: decoder blocks, an encoder block, an MLP and its inner Linear (its own width),
# tuple outputs (T5 blocks).
INNER_LAYER = by_family(
    {
        "gpt2": "transformer.h.0",
        "qwen2": "model.layers.1.mlp",
        "t5:source": "encoder.block.1",
        "t5": "decoder.block.0",
        "bart": "model.decoder.layers.1.fc1",
    }
)
INNER_LAYER_FAMILIES = tuple(INNER_LAYER)
RIEMANN = {"n_steps": 4, "integration_method": "riemann_left"}
"""Riemann-left weights (1/4) are exact in float32, which Captum rounds its quadrature weights to."""


class Row(NamedTuple):
    method: str
    options: dict
    families: tuple[str, ...] = FAMILIES


METHODS: list[Row] = [
    Row("saliency", {}, (*FAMILIES, *CLASSIFIER_FAMILIES)),
    Row("saliency", {"abs": False, "hidden_reduction": None}),
    Row("input_x_gradient", {}),
    Row("input_x_gradient", {"hidden_reduction": "l2"}),
    # Gradient methods of issue 3. Smooth/square grad also run without noise (stdevs=0: the mean of equal
    # samples) so that batched == single holds; with noise their draws depend on the batch, as var_grad's and
    # GradientSHAP's (`draws_follow_the_batch`): fused == stepwise still holds, since a step's prefix gets
    # exactly the first draws of the whole sequence.
    Row(
        "integrated_gradients",
        {**RIEMANN, "return_convergence_delta": True},
        (*GRADIENT_FAMILIES, *CLASSIFIER_FAMILIES),
    ),
    Row("integrated_gradients", {**RIEMANN, "baseline": "unk", "hidden_reduction": None}),
    Row("deeplift", {"return_convergence_delta": True}, GRADIENT_FAMILIES),
    Row("smooth_grad", {"stdevs": 0.0, "nt_samples": 2}),
    Row("smooth_grad", {"stdevs": 0.05, "nt_samples": 3}, GRADIENT_FAMILIES),
    Row("square_grad", {"stdevs": 0.0, "nt_samples": 2, "base_method": "input_x_gradient"}),
    Row(
        "square_grad", {"stdevs": 0.05, "nt_samples": 3, "base_method": "input_x_gradient"}, GRADIENT_FAMILIES
    ),
    Row("var_grad", {"stdevs": 0.1, "nt_samples": 2}, GRADIENT_FAMILIES),
    Row("gradient_shap", {"stdevs": 0.1, "n_samples": 2}, GRADIENT_FAMILIES),
    Row("layer_integrated_gradients", {**RIEMANN, "return_convergence_delta": True}, GRADIENT_FAMILIES),
    Row("layer_gradient_x_activation", {}, GRADIENT_FAMILIES),
    Row("layer_deeplift", {"baseline": "unk", "return_convergence_delta": True}, GRADIENT_FAMILIES),
    # Layer methods on inner layers, per-hidden (an MLP's inner layer keeps its own width).
    *(
        Row(method, {**options, "target_layer": INNER_LAYER, "hidden_reduction": None}, INNER_LAYER_FAMILIES)
        for method, options in (
            ("layer_integrated_gradients", {**RIEMANN, "return_convergence_delta": True}),
            ("layer_gradient_x_activation", {}),
            ("layer_deeplift", {"return_convergence_delta": True}),
        )
    ),
    # Internal influence (issue 12): every neuron (or head) of a cut, under each distribution of interest.
    Row("internal_influence", {**RIEMANN, "target_layer": INNER_LAYER}, INNER_LAYER_FAMILIES),
    Row("internal_influence", {"doi": "point", "target_layer": INNER_LAYER}, INNER_LAYER_FAMILIES),
    Row(
        "internal_influence",
        {"doi": "gaussian", "stdevs": 0.05, "nt_samples": 2, "target_layer": INNER_LAYER},
        INNER_LAYER_FAMILIES,
    ),
    Row(
        "internal_influence",
        {**RIEMANN, "per_head": True, "target_layer": "decoder.0.attention"},
        ("gpt2", "llama"),
    ),
    Row(
        "internal_influence",
        {"doi": "point", "per_head": True, "target_layer": "decoder.1.cross_attention"},
        ("t5", "bart"),
    ),
    Row("sequential_integrated_gradients", RIEMANN, GRADIENT_FAMILIES),
    Row("discretized_integrated_gradients", {"n_steps": 3}, GRADIENT_FAMILIES),
    Row(
        "expected_gradients",
        {
            **RIEMANN,
            "n_baselines": 2,
            "references": torch.full((1, 64), 0.1, dtype=torch.float64),  # one vector: the same draws batched
            "return_convergence_delta": True,
        },
        GRADIENT_FAMILIES,
    ),
    # Interactions of issue 12 (few points: the stepwise reference takes one double backward per token).
    Row("integrated_hessians", {"n_steps": 1, "return_convergence_delta": True}, GRADIENT_FAMILIES),
    Row(
        "expected_hessians",
        {"n_steps": 1, "n_baselines": 2, "references": torch.full((1, 64), 0.1, dtype=torch.float64)},
    ),
    # Relevance methods of issue 13: every family of the zoo (the rules' hooks differ by module layout).
    Row("attnlrp", {}, INTERNALS_FAMILIES),
    Row("cp_lrp", {"hidden_reduction": None}, INTERNALS_FAMILIES),
    Row("layer_attnlrp", {}, GRADIENT_FAMILIES),
    Row("layer_cp_lrp", {"target_layer": INNER_LAYER, "hidden_reduction": None}, INNER_LAYER_FAMILIES),
    # Perturbation and internals methods of issue 5 (few samples: these are invariants, not estimates; a
    # missing seed is drawn from torch's generator, which each call here seeds).
    Row("occlusion", {}, (*PERTURBATION_FAMILIES, "marian:source", *CLASSIFIER_FAMILIES)),
    Row("occlusion", {"window": 2, "granularity": "word", "baseline": "unk"}),
    Row("occlusion", {"window": 3, "stride": 2, "granularity": "all_tokens"}, PERTURBATION_FAMILIES),
    Row("feature_ablation", {"inference_mode": "logits"}),
    Row("feature_ablation", {"baseline": "unk"}, PERTURBATION_FAMILIES),
    Row("lime", {"n_samples": 8, "seed": 0}, (*PERTURBATION_FAMILIES, "marian:source")),
    # ContextCite: few ablations (held_out=0: the fit statistic needs 15); word features, so that the tiny
    # prompts have several context features to ablate.
    Row("context_cite", {"n_ablations": 8, "held_out": 0.0, "granularity": "word"}, PERTURBATION_FAMILIES),
    Row("context_cite", {"n_ablations": 15, "seed": 4, "alpha": 0.001}, ("llama", "t5", "t5:source")),
    Row("kernel_shap", {"n_samples": 8}),
    Row("kernel_shap", {"n_samples": 12, "seed": 2, "granularity": "word"}, PERTURBATION_FAMILIES),
    Row("sobol", {"n_designs": 4, "granularity": "sentence"}, (*PERTURBATION_FAMILIES, "marian:source")),
    Row(
        "sobol",
        {"n_designs": 4, "seed": 3, "estimator": "glen", "mask_type": "binary"},
        PERTURBATION_FAMILIES,
    ),
    Row("reagent", {"num_probes": 3, "max_probe_steps": 4}, (*PERTURBATION_FAMILIES, "marian:source")),
    Row(
        "reagent",
        {
            "num_probes": 2,
            "max_probe_steps": 3,
            "keep_top_n": 0,
            "keep_ratio": 0.5,
            "seed": 4,
            "invert_keep": True,
            "granularity": "word",
        },
    ),
    Row("attention", {}, INTERNALS_FAMILIES),
    Row("attention", {"layers": -1, "aggregate_heads": "mean"}, INTERNALS_FAMILIES),
    Row("attention_rollout", {}, INTERNALS_FAMILIES),
    Row("value_zeroing", {}, INTERNALS_FAMILIES),
    # ALTI-Logit of issue 13 on the pre-norm families it supports (BART and Marian are refused).
    Row("alti_logit", {}, ALTI_FAMILIES),
    Row("alti_logit", {"per_layer": True, "residual_terms": False}, ALTI_FAMILIES),
]


def draws_follow_the_batch(row: Row) -> bool:
    """Whether the row's random draws are made per row of the batch, so one example alone gets other draws."""
    noisy_tunnel = row.method in {"smooth_grad", "square_grad"} and row.options.get("stdevs", 1.0) > 0
    noisy_cut = row.method == "internal_influence" and row.options.get("doi") == "gaussian"  # drawn per batch
    return row.method in {"var_grad", "gradient_shap"} or noisy_tunnel or noisy_cut


PROMPTS = ["The cat sat on the mat.", "Why"]
CONTINUATIONS = {
    "decoder-only": [" The dog ran.", " is the sky blue?"],
    "encoder-decoder": ["Die Katze sitzt.", "Warum ist es blau?"],
}


def architecture(family: str) -> str:
    return family.removesuffix(SOURCE_ONLY)


def is_classifier(family: str) -> bool:
    return family in CLASSIFIER_FAMILIES


@functools.cache
def float64_classifier(family: str):
    """A float64 copy of a classifier family's cached tiny model, and its tokenizer."""
    head, name = family.split(":")
    if head == "classifier":
        model, tokenizer = tiny_classifier(name)
    else:
        model, tokenizer = tiny_task_model(
            {"tagger": "token-classification", "reader": "question-answering"}[head], name
        )
    return copy.deepcopy(model).double(), tokenizer


def row_id(row: Row) -> str:
    def value(v):
        if isinstance(v, torch.Tensor):
            return f"tensor{list(v.shape)}"
        return "inner" if isinstance(v, by_family) else v

    options = ",".join(f"{k}={value(v)}" for k, v in sorted(row.options.items()))
    return row.method + (f"[{options}]" if options else "")


CASES = [
    pytest.param(row, family, id=f"{row_id(row)}-{family}") for row in METHODS for family in row.families
]
DEFAULT_CASES = [case for case in CASES if case.values[1] in FAMILIES]


def targets(family: str, prompts: list[str]) -> list[str]:
    encoder_decoder = architecture(family) in ENCODER_DECODER
    continuations = CONTINUATIONS["encoder-decoder" if encoder_decoder else "decoder-only"]
    forced = dict(zip(PROMPTS, continuations, strict=True))
    if encoder_decoder:
        return [forced[prompt] for prompt in prompts]
    return [prompt + forced[prompt] for prompt in prompts]


def options_for(row: Row, family: str) -> dict:
    return {k: v[family] if isinstance(v, by_family) else v for k, v in row.options.items()}


def attribute(family: str, row: Row, prompts: list[str], model=None, **kwargs) -> seqattr.AttributionOutput:
    """``row``'s method on the shared float64 model of ``family``, or on ``model`` (a Hugging Face one)."""
    options = options_for(row, family)
    if is_classifier(family):  # its own predictions on the inputs standing for the prompts
        hf_model, tokenizer = float64_classifier(family)
        inputs = CLASSIFIER_INPUTS[family.split(":")[0]]
        torch.manual_seed(0)
        return seqattr.load_model(hf_model, row.method, tokenizer=tokenizer, **options).attribute(
            [inputs[PROMPTS.index(prompt)] for prompt in prompts],
            attributed_fn=kwargs.pop("attributed_fn", probability64),
            show_progress=False,
            **kwargs,
        )
    if model is None:
        model = exact_model(architecture(family), row.method, **options)
    else:
        model = seqattr.load_model(
            model, row.method, tokenizer=tiny_model(architecture(family))[1], **options
        )
    torch.manual_seed(0)
    return model.attribute(
        prompts,
        targets(family, prompts),
        attribute_target=not family.endswith(SOURCE_ONLY),
        attributed_fn=kwargs.pop("attributed_fn", probability64),
        show_progress=False,
        **kwargs,
    )


@functools.cache
def fused_batch(family: str, row_index: int) -> seqattr.AttributionOutput:
    """The batched fused output of a row, shared by the tests below (computed once per session)."""
    return attribute(family, METHODS[row_index], PROMPTS)


def row_index(row) -> int:
    return METHODS.index(row)


def examples_info(out: seqattr.AttributionOutput):
    return out.info.get("method_info", {}).get("examples")


@pytest.mark.parametrize(("row", "family"), CASES)
def test_fused_equals_stepwise(row, family):
    fused = fused_batch(family, row_index(row))
    stepwise = attribute(family, row, PROMPTS, fused=False)
    assert stepwise.info["engine"] == "stepwise"
    for a, b in zip(fused, stepwise, strict=True):
        assert_sequences_close(a, b)
    assert examples_info(fused) == examples_info(stepwise)  # e.g. the perturbation features


@pytest.mark.parametrize(("row", "family"), CASES)
def test_batched_equals_single(row, family):
    if draws_follow_the_batch(row):
        pytest.skip(f"{row_id(row)} draws its random numbers per row of the batch")
    batched = fused_batch(family, row_index(row))
    for prompt, seq in zip(PROMPTS, batched, strict=True):
        assert_sequences_close(seq, attribute(family, row, [prompt])[0])


def attributed_sides(row: Row, family: str) -> tuple[bool, bool]:
    """Whether the row attributes source and target positions on ``family`` (a layer has its own side)."""
    if is_classifier(family):
        return True, False  # the input text (or pair), never the label
    encoder_decoder = architecture(family) in ENCODER_DECODER
    source, target = encoder_decoder, not family.endswith(SOURCE_ONLY)
    layer = options_for(row, family).get("target_layer")
    if layer is not None:
        in_encoder = layer.startswith("encoder")
        source, target = source and in_encoder, target and not in_encoder
    return source, target


@pytest.mark.parametrize(("row", "family"), CASES)
def test_scores_are_finite_exactly_where_a_step_can_see(row, family):
    has_source, has_target = attributed_sides(row, family)
    for seq in fused_batch(family, row_index(row)):
        assert seq.num_steps >= (1 if family.startswith("classifier:") else 2)
        assert (seq.source_attributions is not None) == has_source
        assert (seq.target_attributions is not None) == has_target
        if has_source:
            source = seq.source_attributions
            assert source.shape[:2] == (len(seq.source_ids), seq.num_steps)
            visible = torch.ones(source.shape[:2], dtype=torch.bool)
            if family == "tagger:qwen2":  # step j tags token j, from tokens 0..j only
                visible = torch.arange(len(seq.source_ids))[:, None] <= torch.arange(seq.num_steps)[None, :]
            assert source[visible].isfinite().all(), "a visible score is not finite"
            assert source[~visible].isnan().all(), "a score a step cannot see is not NaN"
        if has_target:
            target = seq.target_attributions
            assert target.shape[:2] == (len(seq.target_ids), seq.num_steps)
            visible = torch.arange(len(seq.target_ids))[:, None] < seq.attr_pos_start + torch.arange(
                seq.num_steps
            )
            visible = visible.reshape(*visible.shape, *[1] * (target.dim() - 2)).expand_as(target)
            assert target[visible].isfinite().all(), "a visible score is not finite"
            assert target[~visible].isnan().all(), "a score a step cannot see is not NaN"
        present = [x for x in (seq.source_attributions, seq.target_attributions) if x is not None]
        assert any(x.nan_to_num().abs().max() > 0 for x in present), "all scores are zero"
        for name, scores in seq.step_scores.items():
            assert scores.shape[0] == seq.num_steps and scores.isfinite().all(), name


@pytest.mark.parametrize(("row", "family"), CASES)
def test_save_load_round_trip(row, family, tmp_path):
    out = fused_batch(family, row_index(row))
    out.save(tmp_path / "out.json")
    assert_identical(seqattr.load(tmp_path / "out.json").sequence_attributions, out.sequence_attributions)


def model_state(model: torch.nn.Module) -> list:
    """Everything a method (or transformers, on its behalf) may attach or swap: modules, every hook dictionary
    of each (by hook id) and its mode, attributes such as transformers' ``_output_capturing_hooks_installed``,
    parameters, global hooks, the config (attention implementation and flags)."""
    from torch.nn.modules import module as module_globals

    state = []
    for name, module in model.named_modules():
        hooks = {
            attribute: list(value)
            for attribute, value in vars(module).items()
            if "hook" in attribute and isinstance(value, dict)
        }
        flags = {
            attribute: value
            for attribute, value in vars(module).items()
            if "hook" in attribute and not isinstance(value, dict)
        }
        state.append((name, type(module), id(module), module.training, hooks, flags))
    for name, parameter in model.named_parameters():
        state.append((name, id(parameter), parameter.requires_grad, len(parameter._backward_hooks or {})))
    for attribute in sorted(vars(module_globals)):
        if attribute.startswith("_global_") and isinstance(getattr(module_globals, attribute), dict):
            state.append((attribute, list(getattr(module_globals, attribute))))
    state.append(("attention implementation", model.config._attn_implementation))
    state.append(("config", model.config.to_json_string()))
    return state


class Injected(RuntimeError):
    """The error the tests raise inside a method's work."""


def raising_step_function(args):
    raise Injected("raised by the attributed function")


@contextlib.contextmanager
def forward_fails_at_call(module: torch.nn.Module, call: int):
    """``module``'s ``call``-th forward call raises (the first one, on forced targets, scores the steps)."""
    calls = []

    def hook(module, args):
        calls.append(1)
        if len(calls) == call:
            raise Injected(f"raised by forward call {call}")

    handle = module.register_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "stepwise"])
@pytest.mark.parametrize(("row", "family"), DEFAULT_CASES)
def test_no_hooks_left_after_a_run_or_an_exception(row, family, fused):
    # A model no test has run yet: transformers installs its output-capturing hooks once per model, on the
    # first pass that asks for attentions, so the shared model of the other tests would already carry them.
    model = tiny_model.__wrapped__(family)[0].double()
    before = model_state(model)
    weights = {key: value.clone() for key, value in model.state_dict().items()}

    attribute(family, row, PROMPTS, model, fused=fused)
    assert model_state(model) == before, "a normal run left the model changed"

    # Methods that read no step function (attention) do not call it, hence the suppress.
    with contextlib.suppress(Injected):
        attribute(family, row, PROMPTS, model, fused=fused, attributed_fn=raising_step_function)
    assert model_state(model) == before, "an exception in the attributed function left the model changed"

    for call in (2, 3):
        with forward_fails_at_call(model.get_output_embeddings(), call) as calls:
            with contextlib.suppress(Injected):
                attribute(family, row, PROMPTS, model, fused=fused)
        assert len(calls) >= 2, "the method never ran the model (the first call scores the steps)"
        assert model_state(model) == before, f"an exception in forward call {call} left the model changed"

    assert all(torch.equal(weights[key], value) for key, value in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())


def test_every_registered_method_has_a_row():
    """A built-in method joins the invariants by a row in METHODS; one without a row fails here. (Methods
    that tests register for themselves, outside seqattr.methods, are theirs to check.)"""
    from seqattr.methods.base import get_method_class

    built_in = {
        n for n in seqattr.list_methods() if get_method_class(n).__module__.startswith("seqattr.methods.")
    }
    missing = sorted(built_in - {row.method for row in METHODS})
    assert not missing, f"methods without a row in tests/test_invariants.py METHODS: {', '.join(missing)}"
