"""Adaptive integration, ``n_steps="auto"`` (seqattr/methods/adaptive_integration.py): every step refined on
the nested midpoint rule until its completeness error is within tolerance, each point evaluated once.

The reference for the attributions is an independent fixed run: Captum's ``riemann_middle`` on the same
``n = 3**k`` points.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import seqattr
from exact import assert_close, exact_model, probability64

PROMPTS = ["the cat sat on the mat", "Paris is a beautiful city"]
RUN = dict(generation_args={"max_new_tokens": 4}, attributed_fn=probability64, show_progress=False)
ARCHITECTURES = ["gpt2", "bart"]  # a decoder-only and an encoder-decoder model
TOLERANCE = {"gpt2": 1e-3, "bart": 3e-6}
"""Tolerances that make some steps refine further than others (the tiny Bart's integrand is far smoother)."""
METHODS = {
    "integrated_gradients": {},
    "layer_integrated_gradients": {},  # the input embeddings: a layer run through the tap
    "expected_gradients": dict(n_baselines=2),
}


def completeness_parts(seq) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of each step's attributions, f(x) - f(baseline))`` of one sequence."""
    total = sum(
        x.nan_to_num().sum(0) for x in (seq.source_attributions, seq.target_attributions) if x is not None
    )
    delta = seq.step_scores["convergence_delta"]
    return total, total - delta


def attributions(seq) -> list[torch.Tensor]:
    return [x for x in (seq.source_attributions, seq.target_attributions) if x is not None]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("method", list(METHODS))
def test_every_step_within_tolerance_and_equal_to_the_fixed_rule(architecture, method):
    """Every step's |sum of attributions - (f(x) - f(baseline))| <= tolerance, its points recorded; and its
    attributions are those of a fixed run of the same rule on that many points (computed independently)."""
    tolerance = TOLERANCE[architecture]
    options = dict(METHODS[method], return_convergence_delta=True)
    model = exact_model(architecture, method, n_steps="auto", tolerance=tolerance, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", seqattr.ConvergenceWarning)  # nothing reached the maximum here
        out = model.attribute(PROMPTS, **RUN)
    grids = {3**k for k in range(1, 6)}
    used = set()
    for seq in out:
        points = seq.step_scores["integration_points"]
        assert set(points.int().tolist()) <= grids, points
        used |= set(points.int().tolist())
        total, gap = completeness_parts(seq)
        delta = seq.step_scores["convergence_delta"]
        assert (delta.abs() <= tolerance).all(), (delta, points)
        assert_close(total, gap + delta)
    assert len(used) > 1, f"every step used the same grid {used}: the test would not see per-step refinement"
    for n in sorted(used):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", seqattr.ConvergenceWarning)  # the coarse grids miss 5%
            fixed = exact_model(
                architecture, method, n_steps=n, integration_method="riemann_middle", **options
            ).attribute(PROMPTS, **RUN)
        for seq, ref in zip(out, fixed, strict=True):
            steps = seq.step_scores["integration_points"] == n
            for mine, theirs in zip(attributions(seq), attributions(ref), strict=True):
                assert_close(mine[:, steps], theirs[:, steps], what=f"{n} points")


def gradient_rows(model, call) -> tuple[object, int]:
    """``(result of call(), rows of the HF model's forward passes with gradients)``."""
    rows = [0]

    def count(module, args, kwargs):
        if torch.is_grad_enabled():
            embeds = kwargs.get("inputs_embeds")
            rows[0] += embeds.shape[0]

    handle = model.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        result = call()
    finally:
        handle.remove()
    return result, rows[0]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_refinement_evaluates_each_point_once(architecture):
    """The forward rows with gradients are each example's final grid (the largest over its steps): the
    points of coarser grids are reused, not evaluated again (a restart would cost the sum of the grids)."""
    tolerance = TOLERANCE[architecture]
    model = exact_model(architecture, "integrated_gradients", n_steps="auto", tolerance=tolerance)
    out, with_grad = gradient_rows(model, lambda: model.attribute(PROMPTS, **RUN))
    finals = [int(seq.step_scores["integration_points"].max()) for seq in out]
    assert with_grad == sum(finals), (with_grad, finals)
    restarts = sum(sum(3**k for k in range(1, 6) if 3**k <= n) for n in finals)
    assert max(finals) > 3 and with_grad < restarts


def test_the_maximum_reached_is_warned_and_recorded():
    model = exact_model("gpt2", "integrated_gradients", n_steps="auto", tolerance=1e-12, max_n_steps=9)
    with pytest.warns(seqattr.ConvergenceWarning, match="reached max_n_steps"):
        out = model.attribute(PROMPTS, **RUN)
    for seq in out:
        assert (seq.step_scores["integration_points"] == 9).all()


def test_the_zero_baseline_on_an_rmsnorm_model_refines_to_finite_values():
    """The open rule never takes the gradient at the baseline, where RMSNorm scales a zero vector by
    1 / sqrt(eps) layer after layer: a closed rule's delta was NaN there, so no step refined and the warning
    could only say "nan". Here every delta is a number, and the steps that need more points get them (this
    random model's integrand is too steep near the baseline for 27)."""
    model = exact_model(
        "llama", "integrated_gradients", n_steps="auto", max_n_steps=27, return_convergence_delta=True
    )
    with pytest.warns(seqattr.ConvergenceWarning, match=r"reached max_n_steps.*\): delta -?\d"):
        out = model.attribute(PROMPTS, **RUN)
    for seq in out:
        assert seq.step_scores["convergence_delta"].isfinite().all()
        assert seq.target_attributions[~seq.target_attributions.isnan()].isfinite().all()
        assert seq.step_scores["integration_points"].max() == 27


def test_default_tolerance_is_the_warning_bound():
    """tolerance=None refines until the completeness warning's 5% bound holds: no warning."""
    model = exact_model("bart", "integrated_gradients", n_steps="auto", return_convergence_delta=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", seqattr.ConvergenceWarning)
        out = model.attribute(PROMPTS, **RUN)
    for seq in out:
        total, gap = completeness_parts(seq)
        delta = seq.step_scores["convergence_delta"]
        assert (delta.abs() <= 0.05 * gap.abs().clamp(min=1e-3)).all()
    assert out.info["method_info"]["integration"] == "midpoint"


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(n_steps="auto", tolerance=-0.1), "tolerance must be a positive number"),
        (dict(n_steps="auto", tolerance=float("nan")), "tolerance must be a positive number"),
        (dict(tolerance=0.01), "tolerance applies to adaptive integration only; pass n_steps='auto'"),
        (dict(n_steps=16, max_n_steps=27), "max_n_steps applies to adaptive integration only"),
        (dict(n_steps="auto", max_n_steps=50), r"max_n_steps must be a grid .*3\*\*k points \(3, 9, 27"),
        (dict(n_steps="auto", integration_method="riemann_left"), "integration_method='riemann_left' app"),
        (dict(n_steps="auto", multiply_by_inputs=False), "only with multiply_by_inputs=True"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        exact_model("gpt2", "integrated_gradients", **options)


def test_a_string_other_than_auto_is_refused():
    with pytest.raises(TypeError, match="n_steps must be an integer or 'auto', got 'fast' \\(str\\)"):
        exact_model("gpt2", "integrated_gradients", n_steps="fast")
    with pytest.raises(TypeError, match="n_steps must be an integer or 'auto', got 'auto ' \\(str\\)"):
        exact_model("gpt2", "expected_gradients", n_steps="auto ")


def test_stepwise_and_other_methods_refuse_auto():
    model = exact_model("gpt2", "integrated_gradients", n_steps="auto")
    with pytest.raises(ValueError, match="stepwise reference .* fixed n_steps"):
        model.attribute(PROMPTS, fused=False, **RUN)
    with pytest.raises(TypeError, match="n_steps must be an integer"):
        exact_model("gpt2", "integrated_hessians", n_steps="auto")


def test_a_converged_step_between_failing_ones_is_not_refined(monkeypatch):
    """A level refines the runs of failing steps, not the span from the first to the last: each step of a
    one-example run is in exactly as many refinement passes as its grid has levels (3 -> 1, 9 -> 2, ...).
    The fixture has a step that converged on 9 points between two that went on (27 and 81 points)."""
    from seqattr.methods import adaptive_integration

    passes: list[slice] = []
    path_sums = adaptive_integration.path_sums

    def spy(inputs, steps, *args, **kwargs):
        passes.append(steps)
        return path_sums(inputs, steps, *args, **kwargs)

    monkeypatch.setattr(adaptive_integration, "path_sums", spy)
    model = exact_model("gpt2", "integrated_gradients", n_steps="auto", tolerance=1e-3)
    run = dict(RUN, generation_args={"max_new_tokens": 5})
    (seq,) = model.attribute("Paris is a beautiful city", **run)
    levels = [round(math.log(n, 3)) for n in seq.step_scores["integration_points"].tolist()]
    assert any(levels[i - 1] > levels[i] < levels[i + 1] for i in range(1, len(levels) - 1)), levels
    refined = [sum(s.start <= step < s.stop for s in passes) for step in range(len(levels))]
    assert refined == levels
