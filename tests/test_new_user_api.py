"""What a new user runs into first (issue 18): option types, argument shapes, hooks left on the model,
IG convergence, progress over a method's passes, precision of the outputs, and errors that name the fix."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import seqattr
from exact import float64_model
from seqattr.methods import perturbation
from seqattr.methods.base import get_method_class, list_methods
from seqattr.models import prefix_reuse
from tests.conftest import attribution_model

PROMPT, FORCED = "a dog runs", "a dog runs fast and far"

# --- option types --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        (
            "integrated_gradients",
            {"return_convergence_delta": "false"},
            r"return_convergence_delta must be True or False, got 'false' \(str\); "
            r"pass return_convergence_delta=False",
        ),
        (
            "integrated_gradients",
            {"multiply_by_inputs": "no"},
            r"multiply_by_inputs must be True or False, got 'no' \(str\); pass multiply_by_inputs=False",
        ),
        ("saliency", {"abs": 1}, r"abs must be True or False, got 1 \(int\)"),
        ("occlusion", {"window": True}, r"window must be an integer, got True \(bool\); pass e.g. window=1"),
        (
            "integrated_gradients",
            {"n_steps": 8.0},
            r"n_steps must be an integer or 'auto', got 8.0 \(float\); pass n_steps=8",
        ),
        ("integrated_gradients", {"n_steps": "8"}, r"n_steps must be an integer or 'auto', got '8' \(str\)"),
        (
            "integrated_gradients",
            {"internal_batch_size": False},
            r"internal_batch_size must be an integer or None",
        ),
        ("lime", {"kernel_width": True}, r"kernel_width must be a number, got True \(bool\)"),
        ("lime", {"n_samples": 50.5}, r"n_samples must be an integer, got 50.5"),
        ("integrated_gradients", {"integration_method": 3}, r"integration_method must be a string"),
    ],
)
def test_options_of_the_wrong_type_are_refused_naming_option_value_and_fix(method, options, message):
    with pytest.raises(TypeError, match=rf"{method} option {message}"):
        get_method_class(method).parse_options(**options)


@pytest.mark.parametrize(("method", "seed"), [("lime", -3), ("kernel_shap", -1), ("sobol", -2)])
def test_a_negative_seed_is_refused(method, seed):
    with pytest.raises(ValueError, match=rf"seed must be a non-negative integer .*got {seed}"):
        get_method_class(method).parse_options(seed=seed)


def test_numpy_scalars_are_accepted_as_python_ones():
    options = get_method_class("integrated_gradients").parse_options(
        multiply_by_inputs=np.bool_(False), n_steps=np.int64(4)
    )
    assert options.multiply_by_inputs is False and type(options.n_steps) is int and options.n_steps == 4
    assert type(get_method_class("lime").parse_options(alpha=np.float32(0.5)).alpha) is float
    # ints where a float is declared are fine (alpha=1 means 1.0)
    assert get_method_class("lime").parse_options(alpha=1).alpha == 1


def test_every_registered_method_accepts_its_own_defaults():
    """The type check follows each dataclass's annotations: the declared defaults must pass it."""
    import dataclasses

    for name in list_methods():
        cls = get_method_class(name)
        defaults = {
            f.name: f.default for f in dataclasses.fields(cls.Options) if f.default is not dataclasses.MISSING
        }
        cls.parse_options(**defaults)


def test_a_wrong_option_type_fails_at_load_model_and_attribute():
    with pytest.raises(TypeError, match="return_convergence_delta must be True or False"):
        attribution_model("gpt2", "integrated_gradients", return_convergence_delta="false")
    model = attribution_model("gpt2", "integrated_gradients")
    with pytest.raises(TypeError, match="multiply_by_inputs must be True or False"):
        model.attribute("a dog runs", "a dog runs fast", multiply_by_inputs="no", show_progress=False)


# --- argument shapes -----------------------------------------------------------------------------------


def test_a_single_step_score_name_is_a_one_element_list():
    model = attribution_model("gpt2")
    single = model.attribute("a dog runs", "a dog runs fast", step_scores="entropy", show_progress=False)
    listed = model.attribute("a dog runs", "a dog runs fast", step_scores=["entropy"], show_progress=False)
    assert list(single[0].step_scores) == ["entropy"] == single.info["step_scores"]
    torch.testing.assert_close(single[0].step_scores["entropy"], listed[0].step_scores["entropy"])


def test_step_scores_of_another_type_are_refused():
    model = attribution_model("gpt2")
    with pytest.raises(TypeError, match="step_scores must be a step function name or a list of them"):
        model.attribute("a dog runs", "a dog runs fast", step_scores=3, show_progress=False)


# --- loading keywords ----------------------------------------------------------------------------------


@pytest.mark.parametrize("keyword", ["torch_dtype", "attn_implementation", "trust_remote_code"])
def test_a_loading_keyword_given_as_a_method_option_points_to_model_kwargs(keyword):
    with pytest.raises(
        TypeError, match=rf"saliency got unknown option\(s\) {keyword}.*model_kwargs=\{{'{keyword}'"
    ):
        attribution_model("gpt2", "saliency", **{keyword: "cpu"})


def test_device_map_of_a_loaded_model_points_to_dispatching_it():
    with pytest.raises(
        ValueError, match=r"device_map= dispatches a model as it loads; this model is already"
    ):
        attribution_model("gpt2", "saliency", device_map="cpu")


# --- precision -----------------------------------------------------------------------------------------


def test_a_float64_model_returns_float64_attributions_beyond_float32_precision(tmp_path):
    hf_model, tokenizer = float64_model("gpt2")
    # The hidden dimension kept: GPT-2's LayerNorm makes each gradient sum to ~0 over it (only rounding left).
    model = seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer, abs=False, hidden_reduction=None)
    out = model.attribute(
        "the cat sat", "the cat sat on the mat", step_scores=["probability"], show_progress=False
    )
    seq = out[0]
    assert out.info["dtype"] == "float64"
    assert seq.target_attributions.dtype == torch.float64 == seq.step_scores["probability"].dtype
    ids = torch.tensor([seq.target_ids])
    for step in range(seq.num_steps):
        position = seq.attr_pos_start + step
        embeds = hf_model.get_input_embeddings()(ids[:, :position]).detach().requires_grad_()
        probability = hf_model(inputs_embeds=embeds).logits[0, -1].softmax(-1)[ids[0, position]]
        (grad,) = torch.autograd.grad(probability, embeds)
        expected, actual = grad[0], seq.target_attributions[:position, step]
        # float32 would be off by ~6e-8 of the largest value; float64 agrees to rounding of the sum order
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))
        assert not torch.equal(actual, actual.float().double()), "the values were rounded to float32"
        assert float(seq.step_scores["probability"][step]) == pytest.approx(probability.item(), rel=1e-12)
    out.save(tmp_path / "out.json")
    again = seqattr.load(tmp_path / "out.json")[0]
    assert again.target_attributions.dtype == torch.float64
    assert torch.equal(again.target_attributions.nan_to_num(), seq.target_attributions.nan_to_num())


# --- convergence ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "stepwise"])
def test_integrated_gradients_warns_naming_the_steps_that_do_not_converge(fused):
    hf_model, tokenizer = float64_model("gpt2")
    prompt, forced = "the cat sat", "the cat sat on the mat"
    # stepwise computes the delta (Captum's) only when asked
    model = seqattr.load_model(
        hf_model, "integrated_gradients", tokenizer=tokenizer, return_convergence_delta=not fused
    )
    with pytest.warns(seqattr.ConvergenceWarning) as record:
        coarse = model.attribute(prompt, forced, n_steps=2, fused=fused, show_progress=False)
    assert len(record) == 1, "one warning per call"
    message = str(record[0].message)
    assert "integrated_gradients" in message and "n_steps (now 2)" in message
    assert "example 0 step 0 ('Ġon')" in message and "within 5%" in message
    assert record[0].filename == __file__, "the warning points at the caller's line"

    with warnings.catch_warnings():
        warnings.simplefilter("error", seqattr.ConvergenceWarning)
        fine = model.attribute(
            prompt, forced, n_steps=128, return_convergence_delta=True, fused=fused, show_progress=False
        )[0]
    # the check matches its definition: every |delta| within 5% of |f(x) - f(baseline)|
    gap = fine.target_attributions.nansum(0) - fine.step_scores["convergence_delta"]
    assert (fine.step_scores["convergence_delta"].abs() <= 0.05 * gap.abs().clamp(min=1e-3)).all()
    assert coarse[0].num_steps == fine.num_steps == 3


def test_convergence_is_not_checked_without_multiply_by_inputs():
    """Without ``multiply_by_inputs`` the attributions are not meant to add up to f(x) - f(baseline)."""
    hf_model, tokenizer = float64_model("gpt2")
    model = seqattr.load_model(
        hf_model, "integrated_gradients", tokenizer=tokenizer, multiply_by_inputs=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", seqattr.ConvergenceWarning)
        model.attribute("the cat sat", "the cat sat on the mat", n_steps=2, show_progress=False)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("layer_integrated_gradients", {"n_steps": 2}),
        ("expected_gradients", {"n_steps": 2, "n_baselines": 2}),
    ],
)
def test_other_path_methods_warn_too(method, options):
    hf_model, tokenizer = float64_model("gpt2")
    model = seqattr.load_model(hf_model, method, tokenizer=tokenizer, **options)
    with pytest.warns(seqattr.ConvergenceWarning, match=rf"^{method}: the attributions of \d+ step"):
        model.attribute("the cat sat", "the cat sat on the mat", show_progress=False)


# --- progress over passes ------------------------------------------------------------------------------


def recorded_bars(monkeypatch) -> list:
    """The progress bars created from now on, in order (each PassProgress records itself here)."""
    from seqattr import progress as progress_module

    bars = []
    original_init = progress_module.PassProgress.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        bars.append(self)

    monkeypatch.setattr(progress_module.PassProgress, "__init__", recording_init)
    return bars


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("integrated_gradients", {"n_steps": 8, "internal_batch_size": 2}),  # 4 blocks of 2 points
        ("kernel_shap", {"n_samples": 12, "seed": 0}),
    ],
)
def test_the_progress_bar_advances_once_per_model_pass(monkeypatch, method, options):
    """Every pass of the method's work advances the one bar (the engine's own scoring pass does not), the
    announced total matches, and showing progress changes no number."""
    from seqattr import progress as progress_module

    model = attribution_model("gpt2", method, **options)
    bars = recorded_bars(monkeypatch)
    monkeypatch.setattr(progress_module, "DELAY_S", 0.0)  # show at once, as a long run would
    monkeypatch.setattr(perturbation, "_CHUNK_BYTES", 1)  # perturbation rows one per pass: many passes
    # With prefix reuse a pass whose rows change nothing its steps see needs no model call, and the clean
    # cache is one more: the bar counts passes, this test counts them by the model's calls.
    monkeypatch.setattr(prefix_reuse, "ENABLED", False)
    forward_calls = []
    handle = model.model.register_forward_pre_hook(lambda module, args: forward_calls.append(1))
    try:
        shown = model.attribute(PROMPT, FORCED, show_progress=True)
    finally:
        handle.remove()
    (bar,) = bars
    # The no-grad pass for step scores and the trace is not the method's; integrated gradients has none (its
    # completeness check's pass on the input serves them, `CleanLogits`).
    scoring_passes = 0 if get_method_class(method).keeps_clean_logits else 1
    assert bar.done == len(forward_calls) - scoring_passes > 2
    assert bar.total == bar.done, "the methods announce their passes"
    assert bar.batch == 1 and bar._bar is None, "the bar is stopped when the call ends"
    hidden = model.attribute(PROMPT, FORCED, show_progress=False)
    torch.testing.assert_close(shown[0].target_attributions, hidden[0].target_attributions, equal_nan=True)


def test_the_bar_writes_to_stderr_never_to_stdout(monkeypatch, capsys):
    """stdout is the output's: a CLI piped to a file, a notebook cell's text. The bar (and its closing line
    break) goes to stderr."""
    from seqattr import progress as progress_module

    monkeypatch.setattr(progress_module, "DELAY_S", 0.0)
    with progress_module.PassProgress("saliency", num_batches=1) as progress:
        progress.expect(3)
        for _ in range(3):
            progress.advance()
    assert capsys.readouterr().out == ""


def test_a_bar_counts_batches_and_passes_across_them(monkeypatch):

    bars = recorded_bars(monkeypatch)
    model = attribution_model("gpt2", "integrated_gradients", n_steps=4)
    model.attribute(
        ["a dog runs", "the cat sat"],
        ["a dog runs fast", "the cat sat down"],
        batch_size=1,
        show_progress=True,
    )
    (bar,) = bars
    assert (bar.batch, bar.num_batches) == (2, 2)
    assert bar.done == bar.total == 2 * (1 + 2)  # per batch: one pass at 4 points, two completeness passes


# --- documentation examples ----------------------------------------------------------------------------


def _doc_block(page: str, heading: str) -> str:
    """The first python code block after ``heading`` in docs/``page``."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / page).read_text()
    after = text[text.index(heading) :]
    start = after.index("```python\n") + len("```python\n")
    return after[start : after.index("```", start)]


def test_the_aggregate_example_of_the_views_doc_runs_on_a_decoder_only_output():
    block = _doc_block("views_and_aggregation.md", "## Tokens to words")
    assert 'aggregate("spans"' in block
    seq = attribution_model("gpt2").attribute(
        "The cat sat on the mat.", "The cat sat on the mat. It was happy.", show_progress=False
    )[0]
    assert len(seq.target) >= 8
    for line in block.strip().splitlines():
        result = eval(line.split("#")[0].strip(), {"seq": seq})
        assert result.num_steps >= 1, line


# --- contrast alignment --------------------------------------------------------------------------------


def test_a_much_shorter_encoder_decoder_contrast_is_refused_instead_of_comparing_steps_with_its_eos():
    model = attribution_model("t5")
    original, short = "Die Katze sitzt auf der Matte.", "Hund"
    kwargs = dict(attributed_fn="contrast_prob_diff", show_progress=False)
    with pytest.raises(
        ValueError, match=r"example 0: .* with the contrast's end-of-sequence token.*attr_pos_end="
    ):
        model.attribute("The cat sat on the mat.", original, contrast_targets=short, **kwargs)
    # what the message offers works: fewer steps, or explicit pairs
    out = model.attribute(
        "The cat sat on the mat.", original, contrast_targets=short, attr_pos_end=2, **kwargs
    )
    assert out.info["contrast"]["alignments"] == [[[0, 0]]]
    explicit = model.attribute(
        "The cat sat on the mat.",
        original,
        contrast_targets=short,
        contrast_targets_alignments=[(0, 0), (1, 0)],
        attr_pos_end=3,
        **kwargs,
    )
    assert explicit[0].num_steps == 2


@pytest.mark.parametrize("method", ["smooth_grad", "gradient_shap", "expected_gradients", "lime", "sobol"])
def test_seed_none_draws_one_recorded_seed_that_reproduces_the_numbers(method):
    model = attribution_model("gpt2", method)
    small = {"lime": {"n_samples": 8}, "sobol": {"n_designs": 4}}.get(method, {})
    torch.manual_seed(1)
    drawn = model.attribute(PROMPT, FORCED, seed=None, show_progress=False, **small)
    seed = drawn.info["method_options"]["seed"]
    assert isinstance(seed, int)
    again = model.attribute(PROMPT, FORCED, seed=seed, show_progress=False, **small)
    torch.testing.assert_close(drawn[0].target_attributions, again[0].target_attributions, equal_nan=True)
