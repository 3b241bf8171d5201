"""Integrated Hessians (Janizek, Sturmfels & Lee 2021): which pairs of tokens act together on each step.

For a step's score ``f`` and the straight path ``x' + s (x - x')`` from the baseline ``x'``, the interaction
of features ``i`` and ``j`` (``d = x - x'``) is

    Gamma_ij = d_i d_j  int_0^1 int_0^1 a b  d2f/dx_i dx_j (x' + a b d) da db              (i != j)
    Gamma_ii = the same with i = j, plus d_i int_0^1 int_0^1 df/dx_i (x' + a b d) da db      (the main effect)

and each row adds up to integrated gradients: ``sum_j Gamma_ij = IG_i`` (completeness). A feature is a
token: ``Gamma`` of two tokens sums the interactions of their hidden units (the hidden dimension reduced by
a sum, as the gradient methods reduce it), so the rows still add up to IG with ``hidden_reduction="sum"``.

Discretisation: the double integral uses Captum's 1-D rule ``integration_method`` with ``n_steps`` points on
each axis (``a_m, w_m``); every term depends on ``a b`` only, so the ``n_steps**2`` pairs collapse onto the
distinct products ``s = a_m a_n`` (``n_steps (n_steps + 1) / 2`` path points for a symmetric rule), each
weighted by the sum of its pairs' weights (`product_rule`). At a point ``s`` with weight ``w`` the
interactions gain ``w s d_i d_j H_ij(s)`` and the diagonal ``w d_i g_i(s)``.

Fused: each block of path points goes through the model once for every step of a chunk; one batched
backward (``create_graph``) gives every step's gradient ``g``; the directional derivatives ``g . d_j`` of
every step and position ``j`` are differentiated again in one more batched backward, which gives every
Hessian-vector product ``H d_j`` at once (one direction per feature). Stepwise (the reference): each step on
its own prefix, with its own forward and backward passes.

The second derivatives need attention kernels that have them: PyTorch's fused scaled-dot-product kernels
(flash, memory-efficient) do not, so the computation runs under the math kernel.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput, output_dtype
from seqattr.methods.gradient import AttributionWriter, step_chunks
from seqattr.methods.options import (
    Baseline,
    ConvergenceDelta,
    InternalBatch,
    MethodOptions,
    int_option,
)
from seqattr.methods.path_base import (
    Baselines,
    block_coefficients,
    check_integration,
    completeness_gap,
    integration_rule,
    point_blocks,
    resolve_baselines,
    with_completeness,
)
from seqattr.progress import expect_passes
from seqattr.typing import Float, Tensor


@dataclass
class HessianOptions(InternalBatch, MethodOptions):
    """Options of the interaction methods (the baselines come from their subclasses)."""

    n_steps: int = 8
    """Points per axis of the double integral (Captum's ``integration_method``); the ``n_steps**2`` pairs
    make ``n_steps (n_steps + 1) / 2`` distinct path points for a symmetric rule."""
    integration_method: str = "gausslegendre"
    """Captum's 1-D rule on each axis: gausslegendre, riemann_left, riemann_right, riemann_middle or
    riemann_trapezoid."""
    max_features: int = int_option(64)
    """The most tokens (attributed source + target) an example may have: the cost grows with their square
    (one Hessian-vector product per token, an interaction matrix per step); above it the call is refused."""

    multiply_by_inputs: ClassVar[bool] = True
    """Interactions are always multiplied by ``(x - x')``: their rows add up to ``f(x) - f(x')``."""

    def validate(self) -> None:
        super().validate()
        check_integration(self.n_steps, self.integration_method)


@dataclass
class IntegratedHessiansOptions(Baseline, ConvergenceDelta, HessianOptions):
    """Options of integrated Hessians."""


def product_rule(n_steps: int, method: str) -> tuple[list[float], list[float]]:
    """``(points, weights)`` of the double integral over ``[0, 1]^2`` of a function of ``a * b``: Captum's
    rule ``method`` with ``n_steps`` points on each axis, pairs of equal products merged (in order of first
    appearance).

    Example:
        >>> product_rule(2, "riemann_right")   # a, b in {0.5, 1}, weights 1/2 each: 0.5*1 == 1*0.5
        ([0.25, 0.5, 1.0], [0.25, 0.5, 0.25])
    """
    alphas, weights = integration_rule(n_steps, method)
    merged: dict[float, float] = {}
    for a, wa in zip(alphas, weights, strict=True):
        for b, wb in zip(alphas, weights, strict=True):
            merged[a * b] = merged.get(a * b, 0.0) + wa * wb
    return list(merged), list(merged.values())


@dataclass
class Features:
    """The attributed positions of a batch as one axis: the source's (when attributed), then the target's."""

    source: int
    """Attributed source positions (0 when the source is not attributed)."""
    target: int
    """Attributed target positions of the padded batch (0 when the target is not attributed)."""

    @classmethod
    def of(cls, inputs: MethodInputs) -> Features:
        source = inputs.source_embeds.shape[1] if inputs.attribute_source else 0
        return cls(source, inputs.target_embeds.shape[1] if inputs.attribute_target else 0)

    @property
    def count(self) -> int:
        return self.source + self.target


def check_feature_count(inputs: MethodInputs, options: HessianOptions, name: str, points: int) -> None:
    """Refuse a batch whose longest example has more than ``max_features`` attributed tokens, saying the
    cost."""
    batch = inputs.batch
    longest = max(
        (len(e.source_ids) if inputs.attribute_source else 0)
        + (len(e.target_ids) if inputs.attribute_target else 0)
        for e in batch.examples
    )
    if longest > options.max_features:
        raise ValueError(
            f"{name} on {longest} tokens (attributed source + target) exceeds max_features="
            f"{options.max_features}: it would compute a {longest} x {longest} interaction matrix per step, "
            f"{longest} Hessian-vector products at each of {points} path points per step "
            f"({longest * points * batch.num_steps} for the {batch.num_steps} steps); pass "
            f"max_features={longest} to run it anyway, or shorten the text (or attribute one side only)"
        )


class InteractionWriter(AttributionWriter):
    """An `AttributionWriter` that also collects interactions ``[batch, features, features, steps]`` (padded
    source positions, then padded target positions) and gives them to the `MethodOutput`."""

    def __init__(self, inputs: MethodInputs) -> None:
        super().__init__(inputs)
        self.features = Features.of(inputs)
        self.interactions: Tensor | None = None

    def write_interactions(self, steps: slice, values: Float[Tensor, "steps batch rows cols"]) -> None:
        """``values`` of a chunk, over the source positions and the chunk's target prefix (both axes)."""
        batch, count = self.inputs.batch, self.features.count
        if self.interactions is None:
            self.interactions = values.new_zeros(batch.size, count, count, batch.num_steps)
        # The chunk's features are the first ones: the source's, then the target prefix of its steps.
        width = values.shape[-1]
        self.interactions[:, :width, :width, steps] = values.permute(1, 2, 3, 0)

    def output(self) -> MethodOutput:
        output = super().output()
        output.interactions = self.interactions
        return output


def write_chunk(
    writer: InteractionWriter, steps: slice, interactions: Float[Tensor, "steps batch rows cols"]
) -> Float[Tensor, "batch steps"]:
    """Write a chunk's interactions and their row sums (the attributions); the chunk's total per step."""
    rows = interactions.sum(-1)  # [steps, batch, features]: IG of each feature (completeness)
    source_count = writer.features.source
    source = rows[..., :source_count] if writer.inputs.attribute_source else None
    target = rows[..., source_count:] if writer.inputs.attribute_target else None
    writer.write(steps, source, target)
    writer.write_interactions(steps, interactions)
    return rows.sum(-1).transpose(0, 1)


@dataclass
class PathPoints:
    """One block of path points of one baseline, ``k`` copies of the batch stacked block-wise."""

    source: Tensor | None
    target: Tensor
    difference: Float[Tensor, "n features hidden"]
    """``x - x'`` of every attributed position (source then target), per row."""
    position: Float[Tensor, " n"]
    """``s``: where on the path each row lies."""
    weight: Float[Tensor, " n"]


def path_points(
    inputs: MethodInputs, start: Baselines, points: list[float], weights: list[float], options
) -> Iterator[PathPoints]:
    """The blocks of points ``x' + s (x - x')`` of one baseline (``internal_batch_size`` rows at most)."""
    batch = inputs.batch.size
    ends = {"source": inputs.source_embeds, "target": inputs.target_embeds}
    starts = {"source": start.source, "target": start.target}
    for block in point_blocks(len(points), batch, options.internal_batch_size):
        s, w = block_coefficients(block, points, weights, batch, inputs.target_embeds)
        moved, differences = {}, []
        for role, end in ends.items():
            copies = None if end is None else end.repeat(len(block), 1, 1)
            if starts[role] is None:  # not attributed: stays at the input
                moved[role] = copies
                continue
            # As `straight_path_blocks`: the model runs at points in its dtype, the products and sums of
            # differences and weights are float32 for a half-precision model.
            wide = output_dtype(end.dtype)
            difference = (end.to(wide) - starts[role].to(wide)).repeat(len(block), 1, 1)
            moved[role] = (starts[role].to(wide).repeat(len(block), 1, 1) + s * difference).to(end.dtype)
            differences.append(difference)
        yield PathPoints(
            moved["source"], moved["target"], torch.cat(differences, 1), s.flatten(), w.flatten()
        )


def attributed_leaves(inputs: MethodInputs, source: Tensor | None, target: Tensor) -> tuple:
    """``(source, target, [attributed leaves])``: fresh leaves, the attributed ones requiring gradients."""
    if source is not None:
        source = source.detach().requires_grad_(inputs.attribute_source)
    target = target.detach().requires_grad_(inputs.attribute_target)
    wrt = [x for x, flag in ((source, inputs.attribute_source), (target, inputs.attribute_target)) if flag]
    return source, target, wrt


def fused_interactions(
    inputs: MethodInputs, steps: slice, block: PathPoints
) -> Float[Tensor, "steps batch features features"]:
    """The interactions a block of points adds for the steps of ``steps`` (summed over its copies), from one
    forward pass and two batched backward passes."""
    prefix = int(inputs.batch.step_positions[steps].max())
    features = Features.of(inputs)
    width = features.source + (prefix if inputs.attribute_target else 0)
    difference = block.difference[:, :width]
    source, target, wrt = attributed_leaves(inputs, block.source, block.target[:, :prefix])
    with torch.enable_grad():
        scores = inputs.objective(source, target, steps)  # [n, steps]
        num_steps, n = scores.shape[1], scores.shape[0]
        seeds = torch.eye(num_steps, dtype=scores.dtype, device=scores.device)[:, None, :].expand(
            num_steps, n, num_steps
        )
        grads = torch.autograd.grad(scores, wrt, seeds, is_grads_batched=True, create_graph=True)
        directional = (torch.cat(grads, 2) * difference).sum(-1)  # [steps, n, features]: g . d_j
        # One seed per (step, feature j): the batched backward gives every H d_j of every step at once.
        eye = torch.eye(num_steps * width, dtype=scores.dtype, device=scores.device)
        seeds = eye.reshape(num_steps * width, num_steps, 1, width).expand(-1, -1, n, -1)
        hessian = torch.autograd.grad(directional, wrt, seeds, is_grads_batched=True)
    products = (torch.cat(hessian, 2) * difference).sum(-1)  # [steps * j, n, i]: d_i H_ij d_j
    products = products.unflatten(0, (num_steps, width)).permute(0, 2, 3, 1)  # [steps, n, i, j]
    weighted = products * (block.weight * block.position)[:, None, None]
    weighted = weighted + torch.diag_embed(directional.detach() * block.weight[:, None])
    return weighted.unflatten(1, (-1, inputs.batch.size)).sum(1)


def stepwise_interactions(
    inputs: MethodInputs, column: int, block: PathPoints
) -> Float[Tensor, "1 batch features features"]:
    """The interactions a block of points adds for step ``column`` alone, on the step's own prefix, from its
    own forward pass: the reference of `fused_interactions` (which shares one forward among the steps of a
    chunk and batches its second backward over steps and features alike)."""
    prefix = int(inputs.batch.step_positions[column])
    features = Features.of(inputs)
    width = features.source + (prefix if inputs.attribute_target else 0)
    difference = block.difference[:, :width]
    source, target, wrt = attributed_leaves(inputs, block.source, block.target[:, :prefix])
    with torch.enable_grad():
        score = inputs.objective(source, target, slice(column, column + 1))[:, 0]
        gradient = torch.cat(torch.autograd.grad(score.sum(), wrt, create_graph=True), 1)
        directional = (gradient * difference).sum(-1)  # [n, features]
        seeds = torch.eye(width, dtype=score.dtype, device=score.device)[:, None, :].expand(
            -1, len(score), -1
        )
        hessian = torch.autograd.grad(directional, wrt, seeds, is_grads_batched=True)  # H d_j, one per j
    rows = (torch.cat(hessian, 2) * difference).sum(-1)  # [j, n, i]: d_i H_ij d_j
    products = rows.permute(1, 2, 0) * (block.weight * block.position)[:, None, None]
    products = products + torch.diag_embed(directional.detach() * block.weight[:, None])
    return products.unflatten(0, (-1, inputs.batch.size)).sum(0)[None]


class IntegratedHessians(AttributionMethod):
    """Token x token interactions per step (Janizek et al. 2021); rows add up to integrated gradients."""

    name = "integrated_hessians"
    Options: ClassVar[type] = IntegratedHessiansOptions

    def draw_baselines(self, inputs: MethodInputs, options) -> list[Baselines]:
        """The baselines whose interactions are averaged (here: the one of the ``baseline`` option)."""
        return [resolve_baselines(self.model, inputs, options.baseline)]

    def prepare(self, inputs: MethodInputs, options) -> tuple[list[Baselines], list[float], list[float]]:
        """Baselines, path points and weights (divided among the baselines: their mean); refuses a batch
        above ``max_features``."""
        points, weights = product_rule(options.n_steps, options.integration_method)
        check_feature_count(inputs, options, self.name, len(points))
        baselines = self.draw_baselines(inputs, options)
        return baselines, points, [w / len(baselines) for w in weights]

    def attribute_fused(self, inputs: MethodInputs, options) -> MethodOutput:
        baselines, points, weights = self.prepare(inputs, options)
        batch, rows = inputs.batch.size, options.internal_batch_size
        width = Features.of(inputs).count
        # Its own two backward passes run through the output head (no `HeadCut`).
        chunks = list(step_chunks(inputs, n_points=(rows or len(points) * batch) * width, head_cut=False))
        blocks = len(list(point_blocks(len(points), batch, rows)))
        expect_passes(inputs.objective, len(chunks) * blocks * len(baselines) + 1 + len(baselines))
        writer, totals = InteractionWriter(inputs), []
        with sdpa_kernel(SDPBackend.MATH):
            for steps in chunks:
                chunk = None
                for start in baselines:
                    for block in path_points(inputs, start, points, weights, options):
                        part = fused_interactions(inputs, steps, block)
                        chunk = part if chunk is None else chunk + part
                totals.append(write_chunk(writer, steps, chunk))
        return self.finish(writer, inputs, options, baselines, torch.cat(totals, 1))

    def attribute_stepwise(self, inputs: MethodInputs, options) -> MethodOutput:
        baselines, points, weights = self.prepare(inputs, options)
        blocks = len(list(point_blocks(len(points), inputs.batch.size, options.internal_batch_size)))
        num_steps = inputs.batch.num_steps
        expect_passes(inputs.objective, num_steps * blocks * len(baselines) + 1 + len(baselines))
        writer, totals = InteractionWriter(inputs), []
        with sdpa_kernel(SDPBackend.MATH):
            for column in range(num_steps):
                step = None
                for start in baselines:
                    for block in path_points(inputs, start, points, weights, options):
                        part = stepwise_interactions(inputs, column, block)
                        step = part if step is None else step + part
                totals.append(write_chunk(writer, slice(column, column + 1), step))
        return self.finish(writer, inputs, options, baselines, torch.cat(totals, 1))

    def finish(self, writer, inputs, options, baselines, totals: Tensor) -> MethodOutput:
        """The output with its completeness check (``sum of interactions - (f(x) - f(x'))`` per step)."""
        gap = completeness_gap(inputs, baselines)
        return with_completeness(writer.output(), inputs, options, baselines, totals - gap, gap)
