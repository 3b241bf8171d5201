"""Shared machinery of baseline and path methods: baselines, integration rules, point blocks, path sums.

Integrated gradients and its relatives attribute ``sum_k factor_k * grad f(point_k)`` over a set of points
(interpolations, noised or shuffled inputs). The fused form evaluates every point ONCE for all steps: the
points of the whole sequence go through the model in blocks of ``internal_batch_size`` rows, the batched
backward of `step_gradients` gives each step's gradient, and each block's gradients are multiplied by their
factor (weight, ``x - baseline``) and summed before the next block; hidden dimensions are reduced per step
chunk, after the sum. A step's score does not depend on target positions at or after its own token, so
moving the whole sequence along the path is exact for every step.

Baselines (``baseline=`` option, documented once in docs/methods_gradient.md): ``"zeros"`` (the default, as
in Captum), ``"unk"``, ``"pad"``, a token id (that token's embedding at every position), or a float tensor
broadcastable to the embeddings, typically one ``[hidden]`` vector.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from captum.attr._utils.approximation_methods import SUPPORTED_METHODS, approximation_parameters

from seqattr.methods.base import AttributionMethod, CleanLogits, MethodInputs, MethodOutput, output_dtype
from seqattr.methods.convergence import CONVERGENCE_DELTA, Completeness
from seqattr.methods.gradient import (
    AttributionWriter,
    GradientOptions,
    captum_stepwise,
    reduce_hidden,
    step_chunks,
    step_gradients,
)
from seqattr.methods.options import Baseline, ConvergenceDelta, InternalBatch, check_positive_int
from seqattr.progress import expect_passes
from seqattr.typing import Float, Tensor

INTEGRATION_METHODS = tuple(SUPPORTED_METHODS)


@dataclass
class IntegrationOptions(InternalBatch, GradientOptions):
    """Options of methods that integrate gradients with a quadrature rule."""

    n_steps: int = 50
    """Integration points per path."""
    integration_method: str = "gausslegendre"
    """Captum's ``method`` (renamed: ``method=`` already names the attribution method in ``attribute``):
    gausslegendre, riemann_left, riemann_right, riemann_middle or riemann_trapezoid."""
    multiply_by_inputs: bool = True
    """Multiply the integrated gradient by ``input - baseline`` (Captum's default: global attribution)."""

    def validate(self) -> None:
        super().validate()
        self.check_points()

    def check_points(self) -> None:
        """Check ``n_steps`` and ``integration_method`` (adaptive integration extends it for ``"auto"``)."""
        check_integration(self.n_steps, self.integration_method)


def check_integration(n_steps: int, integration_method: str) -> None:
    """Refuse a quadrature the rules cannot make: ``n_steps`` not a positive integer, an unknown method.

    Example:
        >>> check_integration(8, "simpson")
        Traceback (most recent call last):
        ...
        ValueError: unknown integration_method 'simpson'; valid: riemann_left, riemann_right, ...
    """
    check_positive_int("n_steps", n_steps)
    if integration_method not in INTEGRATION_METHODS:
        raise ValueError(
            f"unknown integration_method {integration_method!r}; valid: {', '.join(INTEGRATION_METHODS)}"
        )


@dataclass
class PathOptions(Baseline, IntegrationOptions):
    """Options of methods integrating from one baseline."""


def integration_rule(n_steps: int, method: str) -> tuple[list[float], list[float]]:
    """``(alphas, weights)`` of Captum's rule ``method`` with ``n_steps`` points on [0, 1]."""
    step_sizes, alphas = approximation_parameters(method)
    return list(alphas(n_steps)), list(step_sizes(n_steps))


@dataclass
class Baselines:
    """Baseline embeddings of the attributed roles (None for a role that is not attributed)."""

    source: Float[Tensor, "batch source_len hidden"] | None
    target: Float[Tensor, "batch target_len hidden"] | None

    def rows(self, examples: Tensor) -> Baselines:
        """These baselines for the batch examples ``examples`` (indices) only."""
        return Baselines(*(None if x is None else x[examples] for x in (self.source, self.target)))

    def for_roles(self, inputs: MethodInputs) -> tuple[Tensor | None, Tensor]:
        """Source and target embeddings with the attributed roles replaced by their baseline."""
        source = self.source if self.source is not None else inputs.source_embeds
        return source, self.target if self.target is not None else inputs.target_embeds

    def holding(self, held: Tensor | None, target: Tensor) -> Baselines:
        """These baselines with the ``held`` target positions (``[batch, target_len]``, prompt-only
        attribution's generated prefix) at ``target``, the input itself: they do not move along the path.

        Example:
            >>> held = torch.tensor([[False, True]])
            >>> Baselines(None, torch.zeros(1, 2, 1)).holding(held, torch.ones(1, 2, 1)).target.flatten()
            tensor([0., 1.])
        """
        if held is None or self.target is None:
            return self
        return Baselines(self.source, torch.where(held[..., None], target, self.target))

    def for_step(self, attributed: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Baselines matching Captum's inputs of one step (the target cut to the step's prefix), repeated
        block-wise when the inputs hold several copies of the batch (one per step, see ``step_rows``)."""
        present = [b for b in (self.source, self.target) if b is not None]
        return tuple(
            b[:, : x.shape[1]].repeat(x.shape[0] // b.shape[0], 1, 1)
            for b, x in zip(present, attributed, strict=True)
        )


def _token_baseline(model, baseline: str | int) -> int:
    if isinstance(baseline, int):
        vocab = model.model.get_input_embeddings().num_embeddings
        if baseline >= vocab:
            raise ValueError(f"baseline token id {baseline} is outside the vocabulary (size {vocab})")
        return baseline
    token_id = model.tokenizer.unk_token_id if baseline == "unk" else model.tokenizer.pad_token_id
    if token_id is None:
        raise ValueError(
            f"baseline={baseline!r}: the tokenizer has no {baseline} token; "
            "use 'zeros', another token id, or a tensor"
        )
    return token_id


def resolve_baselines(model, inputs: MethodInputs, baseline: str | int | Tensor) -> Baselines:
    """Full-size baseline embeddings for the attributed roles; an impossible tensor shape is refused here.
    Prompt-only attribution's generated prefix (``inputs.held_target``) has the input as its baseline.

    Example:
        >>> baselines = resolve_baselines(model, inputs, "pad")   # doctest: +SKIP
        >>> baselines.target.shape == inputs.target_embeds.shape  # doctest: +SKIP
        True
    """
    roles = {
        "source": inputs.source_embeds if inputs.attribute_source else None,
        "target": inputs.target_embeds if inputs.attribute_target else None,
    }
    if isinstance(baseline, Tensor):
        resolved = {}
        for role, embeds in roles.items():
            if embeds is None:
                resolved[role] = None
                continue
            try:
                shape = torch.broadcast_shapes(baseline.shape, embeds.shape)
            except RuntimeError:
                shape = None
            if shape != embeds.shape:
                raise ValueError(
                    f"baseline tensor of shape {list(baseline.shape)} does not broadcast to the {role} "
                    f"embeddings of shape [batch={embeds.shape[0]}, positions={embeds.shape[1]}, "
                    f"hidden={embeds.shape[2]}]; "
                    f"give one [{embeds.shape[2]}] vector (used at every position) or a token baseline"
                )
            resolved[role] = baseline.to(embeds).expand_as(embeds)
        baselines = Baselines(**resolved)
    elif baseline == "zeros":
        baselines = Baselines(**{r: None if e is None else torch.zeros_like(e) for r, e in roles.items()})
    else:
        token_id = _token_baseline(model, baseline)
        with torch.no_grad():
            vector = model.embed(torch.tensor([[token_id]], device=inputs.target_embeds.device))
        baselines = Baselines(
            **{r: None if e is None else vector.to(e).expand_as(e) for r, e in roles.items()}
        )
    return baselines.holding(inputs.held_target, inputs.target_embeds)


def point_blocks(num_points: int, batch_size: int, internal_batch_size: int | None) -> Iterator[range]:
    """Ranges of point indices, each at most ``internal_batch_size`` rows (at least one copy of the batch)."""
    per_block = num_points if internal_batch_size is None else max(1, internal_batch_size // batch_size)
    for start in range(0, num_points, per_block):
        yield range(start, min(start + per_block, num_points))


def block_coefficients(
    block: range, alphas: list[float], weights: list[float], batch_size: int, like: Tensor
) -> tuple[Tensor, Tensor]:
    """The path positions ``alpha`` and quadrature weights of a block of points, one per row
    (``[len(block) * batch_size, 1, 1]``, copies of the batch stacked block-wise), on ``like``'s device, in
    the dtype the path's sums accumulate in (`output_dtype` of ``like``'s: float32 for a half-precision
    model, whose 8 or 11 bits of mantissa would round the Gauss-Legendre weights off their sum of 1).

    Example:
        >>> like = torch.ones(1, dtype=torch.bfloat16)
        >>> alpha, weight = block_coefficients(range(1, 3), [0.1, 0.5, 0.9], [0.2, 0.6, 0.2], 2, like)
        >>> alpha.flatten().tolist(), weight.shape, weight.dtype
        ([0.5, 0.5, 0.8999999761581421, 0.8999999761581421], torch.Size([4, 1, 1]), torch.float32)
    """

    def rows(values: list[float]) -> Tensor:
        chosen = [values[i] for i in block]
        chosen = torch.tensor(chosen, dtype=output_dtype(like.dtype), device=like.device)
        return chosen.repeat_interleave(batch_size)[:, None, None]

    return rows(alphas), rows(weights)


@dataclass
class PointBlock:
    """``k`` copies of the batch (stacked block-wise) where gradients are taken, and each gradient's factor.

    Factors broadcast to the points (``[k * batch, 1, 1]`` for a weight, full size for ``x - baseline``);
    a role that is not attributed has None.
    """

    source_points: Float[Tensor, "n source_len hidden"] | None
    target_points: Float[Tensor, "n target_len hidden"] | None
    """None where the space has no target positions (a layer method's encoder layer)."""
    source_factor: Tensor | None
    target_factor: Tensor | None


@dataclass
class PathSums:
    """Per-hidden sums of a chunk of steps: ``[steps, batch, positions, hidden]`` per attributed role."""

    source: Tensor | None
    target: Tensor | None

    def __add__(self, other: PathSums) -> PathSums:
        return PathSums(
            *(
                None if a is None else a + b
                for a, b in ((self.source, other.source), (self.target, other.target))
            )
        )

    def total(self) -> Float[Tensor, "batch steps"]:
        """Sum over positions and hidden units: what completeness compares with ``f(x) - f(baseline)``."""
        parts = [x.sum((2, 3)) for x in (self.source, self.target) if x is not None]
        return sum(parts).transpose(0, 1)


RoleGradients = Callable[..., tuple[Tensor | None, Tensor | None]]
"""``(source points, target points, steps, rows=None) -> (source gradients, target gradients)``: each step's
gradient ``[steps, n, positions, dims]`` at ``n`` points (copies of the batch, or of the batch examples
``rows`` names, one per point), None for a role not attributed."""


@dataclass
class PathSpace:
    """Where the points of a path method lie: the input embeddings (`input_space`), or a layer's activations
    for a layer method (`LayerRun.path_space`). ``source`` and ``target`` are the paths' ends (the inputs, or
    the layer's activations on them; None where the space has no such positions); ``gradients`` takes each
    step's gradient at points of the space."""

    source: Tensor | None
    target: Tensor | None
    gradients: RoleGradients

    def rows(self, examples: Tensor) -> PathSpace:
        """This space's ends for the batch examples ``examples`` (indices) only; the same gradients."""
        return PathSpace(
            *(None if x is None else x[examples] for x in (self.source, self.target)), self.gradients
        )


def input_space(inputs: MethodInputs) -> PathSpace:
    """The input embeddings as a path space: gradients from `step_gradients` (one forward, batched backward).

    Example:
        >>> space = input_space(inputs)  # doctest: +SKIP
        >>> space.target is inputs.target_embeds  # doctest: +SKIP
        True
    """

    def gradients(source: Tensor | None, target: Tensor | None, steps: slice, rows: Tensor | None = None):
        grads = step_gradients(inputs, source, target, steps, rows)
        return grads.source, grads.target

    return PathSpace(inputs.source_embeds, inputs.target_embeds, gradients)


def path_sums(
    inputs: MethodInputs,
    steps: slice,
    blocks: Iterator[PointBlock],
    space: PathSpace | None = None,
    examples: Tensor | None = None,
) -> PathSums:
    """``sum over blocks and copies of factor * gradient`` for the steps of ``steps``, one forward per block;
    gradients in ``space`` (default: the input embeddings). The blocks hold copies of the whole batch, or of
    the batch examples ``examples`` (indices) alone, whose sums are then ``[steps, len(examples), ...]``.

    Example:
        >>> block = PointBlock(None, points, None, weights)  # doctest: +SKIP
        >>> sums = path_sums(inputs, slice(0, 4), iter([block]))  # doctest: +SKIP
    """
    batch = inputs.batch.size if examples is None else len(examples)
    source_sum = target_sum = None
    for source, target in factored_gradients(inputs, steps, blocks, space, examples):
        if source is not None:
            part = source.unflatten(1, (-1, batch)).sum(1)
            source_sum = part if source_sum is None else source_sum + part
        if target is not None:
            part = target.unflatten(1, (-1, batch)).sum(1)
            target_sum = part if target_sum is None else target_sum + part
    return PathSums(source_sum, target_sum)


def factored_gradients(
    inputs: MethodInputs,
    steps: slice,
    blocks: Iterator[PointBlock],
    space: PathSpace | None = None,
    examples: Tensor | None = None,
) -> Iterator[tuple[Tensor | None, Tensor | None]]:
    """Per block, every point's ``factor * gradient`` for the steps of ``steps`` (``[steps, rows, positions,
    hidden]`` per role, None where not attributed; the target cut to the chunk's prefix), one forward per
    block: what `path_sums` adds up, and adaptive integration keeps point by point. ``examples`` as in
    `path_sums`."""
    gradients = (space or input_space(inputs)).gradients
    batch = inputs.batch.size if examples is None else len(examples)
    for block in blocks:
        points = block.target_points if block.target_points is not None else block.source_points
        rows = None if examples is None else examples.repeat(points.shape[0] // batch)
        source, target = gradients(block.source_points, block.target_points, steps, rows)
        yield (
            None if source is None else source * block.source_factor,
            None if target is None else target * block.target_factor[:, : target.shape[2]],
        )


def write_sums(writer: AttributionWriter, steps: slice, sums: PathSums, hidden_reduction: str | None) -> None:
    writer.write(
        steps,
        *(None if x is None else reduce_hidden(x, hidden_reduction) for x in (sums.source, sums.target)),
    )


def step_scores_at(
    inputs: MethodInputs, source: Tensor | None, target: Tensor
) -> Float[Tensor, "batch steps"]:
    """Every step's score at one point (no gradient), for completeness checks."""
    with torch.no_grad():
        return inputs.objective(source, target).detach()


def completeness_gap(
    inputs: MethodInputs, baselines: list[Baselines], clean: CleanLogits | None = None
) -> Float[Tensor, "batch steps"]:
    """``f(input) - f(baseline)`` of every step (the mean over ``baselines`` of ``f(baseline)``): what the
    attributions of a path method add up to when its integral converged (2 passes without gradients, or
    ``1 + len(baselines)``). ``clean`` records the ``f(input)`` pass's logits (`CleanLogits`)."""
    start = torch.stack([step_scores_at(inputs, *b.for_roles(inputs)) for b in baselines]).mean(0)
    with clean.kept_by(inputs.objective) if clean is not None else contextlib.nullcontext():
        end = step_scores_at(inputs, inputs.source_embeds, inputs.target_embeds)
    return end - start


def with_completeness(
    output: MethodOutput,
    inputs: MethodInputs,
    options,
    baselines: list[Baselines],
    delta: Tensor | None,
    gap: Tensor | None = None,
) -> MethodOutput:
    """``output`` with its `Completeness` for the engine's convergence warning (`methods/convergence.py`),
    and with ``delta`` as the step score ``convergence_delta`` when the options ask for it; ``gap`` is
    computed when not given. Without ``multiply_by_inputs`` the attributions are not meant to add up to
    anything: no check."""
    if delta is None:
        return output
    delta = delta.detach()
    if options.return_convergence_delta:
        output.step_scores[CONVERGENCE_DELTA] = delta.cpu()
    if options.multiply_by_inputs:
        gap = completeness_gap(inputs, baselines) if gap is None else gap
        output.completeness = Completeness(delta.cpu(), gap.detach().cpu())
    return output


def expand_rows(x: Tensor | None, copies: int) -> Tensor | None:
    """``copies`` copies of a batch tensor stacked block-wise (the layout `StepObjective` expects)."""
    return None if x is None else x.repeat(copies, *([1] * (x.dim() - 1)))


def straight_path_blocks(
    space: PathSpace, start: Baselines, options, alphas: list[float], weights: list[float], batch: int
) -> Iterator[PointBlock]:
    """Point blocks of the straight path ``start + alpha (end - start)`` for every role of ``space`` (a role
    whose start is None is not attributed: its points stay at the end, the input)."""
    ends = {"source": space.source, "target": space.target}
    starts = {"source": start.source, "target": start.target}
    like = space.target if space.target is not None else space.source
    for block in point_blocks(len(alphas), batch, options.internal_batch_size):
        alpha, weight = block_coefficients(block, alphas, weights, batch, like)
        points, factors = {}, {}
        for role, end in ends.items():
            begin = starts[role]
            copies = None if end is None else end.repeat(len(block), 1, 1)
            if begin is None:  # not attributed: stays at the input
                points[role], factors[role] = copies, None
                continue
            # The points are where the model runs (its dtype); the factors are summed (float32 at least).
            wide = output_dtype(end.dtype)
            difference = (end.to(wide) - begin.to(wide)).repeat(len(block), 1, 1)
            points[role] = (begin.to(wide).repeat(len(block), 1, 1) + alpha * difference).to(end.dtype)
            factors[role] = weight * difference if options.multiply_by_inputs else weight
        yield PointBlock(points["source"], points["target"], factors["source"], factors["target"])


def run_captum_integrated_gradients(
    captum, attributed: tuple[Tensor, ...], baselines: Baselines, additional: tuple, options
) -> tuple[tuple[Tensor, ...], Tensor | None]:
    """One call of Captum's (layer) integrated gradients with the options' rule, points and row budget:
    ``(attributions, convergence delta or None)``, the delta only when ``return_convergence_delta``."""
    asked = getattr(options, "return_convergence_delta", False)
    result = captum.attribute(
        attributed,
        baselines=baselines.for_step(attributed),
        additional_forward_args=additional,
        n_steps=options.n_steps,
        method=options.integration_method,
        internal_batch_size=options.internal_batch_size,
        return_convergence_delta=asked,
    )
    if asked:
        result, delta = result
        return result, delta.detach()
    return result, None


@dataclass
class IntegratedGradientsOptions(ConvergenceDelta, PathOptions):
    """Options of integrated gradients."""


class PathMethod(AttributionMethod):
    """Family base of integrated gradients and its relatives: both paths and the completeness check.

    A subclass declares its points and its Captum class; the base runs the rest:

    - `path_blocks`: the points of one baseline's paths and each gradient's factor, block by block (default:
      the straight path from the baseline to the input, in the method's space). Fused, each block is
      evaluated once for every step of a chunk (`path_sums`);
    - `captum_method`: Captum's class of the same method on one step's forward function, the stepwise
      reference (`captum_stepwise`); `captum_attribution` when one Captum call per step does not suffice;
    - `draw_baselines` when the baselines are not the ``baseline=`` option (several are averaged);
    - `layer_run` for a layer method: the paths then run over the layer's activations (`LayerRun`), the same
      points and factors as the input method it wraps.

    With ``completeness`` the convergence delta (``return_convergence_delta=``) and the engine's
    completeness warning come from the base, on both paths.
    """

    Options: ClassVar[type] = IntegratedGradientsOptions
    completeness: ClassVar[bool] = True
    keeps_clean_logits: ClassVar[bool] = True  # from the completeness check's pass (none without it)
    """Whether the attributions of a step add up to ``f(input) - f(baseline)`` (checked, and warned about)."""
    split_positions: ClassVar[bool] = False
    """Whether the stepwise reference passes each token to Captum as its own input (see `captum_stepwise`)."""

    # --- what a method declares -----------------------------------------------------------------------

    def draw_baselines(self, inputs: MethodInputs, options) -> list[Baselines]:
        """The baselines whose paths are averaged (default: the one of the ``baseline`` option)."""
        return [resolve_baselines(self.model, inputs, options.baseline)]

    def point_count(self, inputs: MethodInputs, steps: slice, num_alphas: int) -> int:
        """Points per example on one baseline's paths for the chunk ``steps`` (one per alpha by default)."""
        return num_alphas

    def path_blocks(
        self,
        inputs: MethodInputs,
        steps: slice,
        space: PathSpace,
        start: Baselines,
        options,
        alphas: list[float],
        weights: list[float],
    ) -> Iterator[PointBlock]:
        """The blocks of points of the paths from ``start`` for the chunk ``steps`` (default: straight)."""
        return straight_path_blocks(space, start, options, alphas, weights, inputs.batch.size)

    def captum_method(self, forward: Callable[..., Tensor], options, layer=None) -> Any:
        """Captum's class of the method on ``forward`` (``layer``: the tap of a layer method)."""
        raise NotImplementedError

    def captum_attribution(
        self,
        forward,
        attributed: tuple[Tensor, ...],
        additional: tuple,
        start: Baselines,
        options,
        layer=None,
    ) -> tuple[tuple[Tensor, ...], Tensor | None]:
        """One step's Captum attributions from ``start`` and the convergence delta (None when not asked)."""
        captum = self.captum_method(forward, options, layer)
        return run_captum_integrated_gradients(captum, attributed, start, additional, options)

    def layer_run(self, inputs: MethodInputs, options) -> contextlib.AbstractContextManager:
        """A context giving the `LayerRun` of a layer method, or None for an input method."""
        return contextlib.nullcontext()

    # --- the two paths --------------------------------------------------------------------------------

    def attribute_fused(self, inputs: MethodInputs, options) -> MethodOutput:
        baselines = self.draw_baselines(inputs, options)
        alphas, weights = integration_rule(options.n_steps, options.integration_method)
        weights = [w / len(baselines) for w in weights]  # the mean over baselines
        batch, rows = inputs.batch.size, options.internal_batch_size
        chunks = list(step_chunks(inputs, n_points=rows or len(alphas) * batch))
        blocks = sum(
            len(list(point_blocks(self.point_count(inputs, steps, len(alphas)), batch, rows)))
            for steps in chunks
        )
        checks = 1 + len(baselines) if self.completeness else 0  # passes without gradients
        with self.layer_run(inputs, options) as run:
            if run is not None:
                run.refuse_held_prefix(self.name, "use target_layer=None (the input embeddings)")
            layer_passes = 0 if run is None else 1 + len(baselines)  # the layer's activations
            expect_passes(inputs.objective, blocks * len(baselines) + checks + layer_passes)
            if run is None:
                space, starts = input_space(inputs), baselines
            else:
                space, starts = run.path_space(baselines)
            writer, totals = AttributionWriter(inputs), []
            for steps in chunks:
                sums = None
                for start in starts:  # blocks hold one baseline's points
                    blocks_of = self.path_blocks(inputs, steps, space, start, options, alphas, weights)
                    part = path_sums(inputs, steps, blocks_of, space)
                    sums = part if sums is None else sums + part
                totals.append(sums.total())
                write_sums(writer, steps, sums, options.hidden_reduction)
        if not self.completeness:
            return writer.output()
        # The completeness check costs passes without gradients; it runs always, for the warning. Its pass on
        # the input also gives the step scores and the trace (`CleanLogits`).
        clean = CleanLogits(inputs.batch)
        gap = completeness_gap(inputs, baselines, clean)
        output = with_completeness(
            writer.output(), inputs, options, baselines, torch.cat(totals, 1) - gap, gap
        )
        output.step_logits = clean.logits
        return output

    def attribute_stepwise(self, inputs: MethodInputs, options) -> MethodOutput:
        baselines = self.draw_baselines(inputs, options)
        deltas = []
        with self.layer_run(inputs, options) as run:
            if run is not None:
                run.refuse_held_prefix(self.name, "use target_layer=None (the input embeddings)")

            def attribute_step(forward, attributed, additional):
                if run is not None:
                    forward = run.wrap(forward, len(attributed))
                total, delta = None, None
                for start in baselines:  # Captum from each baseline, then the mean
                    result, step_delta = self.captum_attribution(
                        forward, attributed, additional, start, options, None if run is None else run.tap
                    )
                    if run is not None:
                        result = run.per_role(result)
                    if step_delta is not None:
                        part = step_delta / len(baselines)
                        delta = part if delta is None else delta + part
                    total = (
                        result if total is None else tuple(t + r for t, r in zip(total, result, strict=True))
                    )
                if delta is not None:
                    deltas.append(delta)
                if len(baselines) == 1:
                    return total
                return tuple(None if t is None else t / len(baselines) for t in total)

            step_inputs = inputs if run is None else run.inputs
            output = captum_stepwise(
                step_inputs, attribute_step, options.reduce, split_positions=self.split_positions
            )
        delta = torch.stack(deltas, 1) if deltas else None  # Captum computes it only when asked
        return with_completeness(output, inputs, options, baselines, delta)
