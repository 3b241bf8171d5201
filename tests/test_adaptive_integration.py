"""Adaptive integration, ``n_steps="auto"`` (seqattr/methods/adaptive_integration.py): every step refined on
the midpoint rule until its completeness error is within tolerance, each point evaluated once.

Two ways to refine, two references. Whole grids (expected gradients, or a hidden reduction that is not
linear): an independent fixed run, Captum's ``riemann_middle`` on the same ``n = 3**k`` points. Single
intervals (integrated gradients and its layer variant with a linear reduction, the default): plain autograd
on the model at the recorded nodes, ``sum of weight * x * gradient at alpha * x``.
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
GRIDS = {  # whole grids: several baselines, or a reduction other than the sum over the hidden dimension
    "expected_gradients": dict(n_baselines=2),
    "integrated_gradients": dict(hidden_reduction="l2"),
    "layer_integrated_gradients": dict(hidden_reduction="mean"),
}
LOCAL = {
    "integrated_gradients": {},
    "layer_integrated_gradients": {},  # the input embeddings: a layer run through the tap
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
@pytest.mark.parametrize("method", list(GRIDS))
def test_whole_grids_within_tolerance_and_equal_to_the_fixed_rule(architecture, method):
    """Every step's |sum of attributions - (f(x) - f(baseline))| <= tolerance, its points recorded; and its
    attributions are those of a fixed run of the same rule on that many points (computed independently)."""
    tolerance = TOLERANCE[architecture]
    options = dict(GRIDS[method], return_convergence_delta=True)
    model = exact_model(architecture, method, n_steps="auto", tolerance=tolerance, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", seqattr.ConvergenceWarning)  # nothing reached the maximum here
        out = model.attribute(PROMPTS, **RUN)
    assert out.info["method_info"]["integration"] == "midpoint"
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


def embedding_layers(hf_model) -> list[torch.nn.Module]:
    """The input embedding layers, each once (T5's encoder and decoder hold their own, tied)."""
    layers = [hf_model.get_input_embeddings()]
    if hf_model.config.is_encoder_decoder:
        layers = [
            hf_model.get_encoder().get_input_embeddings(),
            hf_model.get_decoder().get_input_embeddings(),
        ]
    return list({id(layer): layer for layer in layers}.values())


def path_reference(hf_model, seq, position: int, nodes) -> tuple[torch.Tensor | None, ...]:
    """Integrated gradients of p(target[position] | prefix) from the zero baseline on ``nodes`` ((alpha,
    weight) pairs), by plain autograd: ``sum over nodes of weight * x * gradient at alpha * x``, hidden
    summed. The model runs on token ids; forward hooks scale its embedding layers' outputs ``x`` by
    alpha. Returns ``(source [len] or None, prefix [position] or None)``; an encoder-decoder's prefix is on
    the path only when the output attributes it (the encoder's call comes first)."""
    target = seq.target_attributions is not None
    totals = None
    for alpha, weight in nodes:
        points = []

        def scaled(module, args, output, alpha=alpha, points=points):
            if points and not target:  # the decoder's call: its prefix stays at the input
                return output
            point = (alpha * output.detach()).requires_grad_()
            points.append((point, output.detach()))
            return point

        hooks = [layer.register_forward_hook(scaled) for layer in embedding_layers(hf_model)]
        try:
            prefix_ids = torch.tensor([seq.target_ids[:position]])
            if hf_model.config.is_encoder_decoder:
                source_ids = torch.tensor([seq.source_ids])
                out = hf_model(input_ids=source_ids, decoder_input_ids=prefix_ids, use_cache=False)
            else:
                out = hf_model(input_ids=prefix_ids, use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()
        probability = torch.softmax(out.logits[0, -1], dim=-1)[seq.target_ids[position]]
        grads = torch.autograd.grad(probability, [point for point, _ in points])
        parts = [weight * (grad[0] * x[0]).sum(-1) for grad, (_, x) in zip(grads, points, strict=True)]
        totals = parts if totals is None else [a + b for a, b in zip(totals, parts, strict=True)]
    if not hf_model.config.is_encoder_decoder:
        return None, totals[0]
    return totals[0], totals[1] if target else None


@pytest.mark.parametrize("architecture, attribute_target", [("gpt2", None), ("bart", False), ("bart", True)])
@pytest.mark.parametrize("method", list(LOCAL))
def test_single_intervals_within_tolerance_and_equal_to_autograd_on_their_nodes(
    architecture, attribute_target, method
):
    """Each step's |delta| <= tolerance; its nodes (recorded per example and step) are midpoints of a
    partition of [0, 1] into thirds of thirds, as many as its integration points; its attributions are plain
    autograd's on those nodes; and the steps do not all use a grid of the nested rule (some refine only part
    of the path: the point of this rule)."""
    # With the target on the path too, Bart's last step needs a looser bound than 81 points reach.
    tolerance = 1e-5 if attribute_target else TOLERANCE[architecture]
    model = exact_model(
        architecture, method, n_steps="auto", tolerance=tolerance, return_convergence_delta=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", seqattr.ConvergenceWarning)
        out = model.attribute(PROMPTS, attribute_target=attribute_target, **RUN)
    assert out.info["method_info"]["integration"] == "midpoint, refined per interval"
    examples = out.info["method_info"]["examples"]
    counts = set()
    for i, seq in enumerate(out):
        points = seq.step_scores["integration_points"]
        delta = seq.step_scores["convergence_delta"]
        assert (delta.abs() <= tolerance).all(), (delta, points)
        total, gap = completeness_parts(seq)
        assert_close(total, gap + delta)
        for step in range(seq.num_steps):
            nodes = examples[i]["integration_nodes"][step]
            assert len(nodes) == int(points[step])
            counts.add(len(nodes))
            assert math.isclose(sum(weight for _, weight in nodes), 1.0)
            edges = sorted((alpha - weight / 2, alpha + weight / 2) for alpha, weight in nodes)
            assert edges[0][0] == pytest.approx(0) and edges[-1][1] == pytest.approx(1)
            assert all(a[1] == pytest.approx(b[0]) for a, b in zip(edges, edges[1:], strict=False))
            position = seq.attr_pos_start + step
            source, prefix = path_reference(model.model, seq, position, nodes)
            where = f"example {i} step {step}"
            if source is not None:
                assert_close(seq.source_attributions[:, step], source, what=f"{where} source")
            if prefix is not None:
                assert_close(seq.target_attributions[:position, step], prefix, what=f"{where} target")
    assert counts - {3**k for k in range(1, 6)}, (
        f"every step used a nested grid {counts}: no local refinement"
    )


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
    """Whole grids: the forward rows with gradients are each example's final grid (the largest over its
    steps): the points of coarser grids are reused, not evaluated again (a restart would cost the sum of the
    grids)."""
    tolerance = TOLERANCE[architecture]
    model = exact_model(
        architecture, "integrated_gradients", n_steps="auto", tolerance=tolerance, hidden_reduction="l2"
    )
    out, with_grad = gradient_rows(model, lambda: model.attribute(PROMPTS, **RUN))
    finals = [int(seq.step_scores["integration_points"].max()) for seq in out]
    assert with_grad == sum(finals), (with_grad, finals)
    restarts = sum(sum(3**k for k in range(1, 6) if 3**k <= n) for n in finals)
    assert max(finals) > 3 and with_grad < restarts


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_single_intervals_evaluate_each_point_once(architecture):
    """Single intervals: the first 3 points of every example in one pass, then each (example, step) its own
    new points only: the forward rows with gradients are 3 per example plus every step's points beyond 3."""
    tolerance = TOLERANCE[architecture]
    model = exact_model(architecture, "integrated_gradients", n_steps="auto", tolerance=tolerance)
    out, with_grad = gradient_rows(model, lambda: model.attribute(PROMPTS, **RUN))
    beyond = sum(int((seq.step_scores["integration_points"] - 3).sum()) for seq in out)
    assert beyond > 0 and with_grad == 3 * len(PROMPTS) + beyond, (with_grad, beyond)


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
    assert out.info["method_info"]["integration"] == "midpoint, refined per interval"


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
    model = exact_model(
        "gpt2", "integrated_gradients", n_steps="auto", tolerance=1e-3, hidden_reduction="l2"
    )  # l2: whole grids
    run = dict(RUN, generation_args={"max_new_tokens": 5})
    (seq,) = model.attribute("Paris is a beautiful city", **run)
    levels = [round(math.log(n, 3)) for n in seq.step_scores["integration_points"].tolist()]
    assert any(levels[i - 1] > levels[i] < levels[i + 1] for i in range(1, len(levels) - 1)), levels
    refined = [sum(s.start <= step < s.stop for s in passes) for step in range(len(levels))]
    assert refined == levels
