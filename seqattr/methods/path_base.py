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

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from captum.attr._utils.approximation_methods import SUPPORTED_METHODS, approximation_parameters

from seqattr.methods.base import MethodInputs, MethodOutput
from seqattr.methods.convergence import CONVERGENCE_DELTA, Completeness
from seqattr.methods.gradient import AttributionWriter, GradientOptions, reduce_hidden, step_gradients
from seqattr.methods.options import Baseline, InternalBatch, check_positive_int
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
        check_positive_int("n_steps", self.n_steps)
        if self.integration_method not in INTEGRATION_METHODS:
            raise ValueError(
                f"unknown integration_method {self.integration_method!r}; "
                f"valid: {', '.join(INTEGRATION_METHODS)}"
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

    def for_roles(self, inputs: MethodInputs) -> tuple[Tensor | None, Tensor]:
        """Source and target embeddings with the attributed roles replaced by their baseline."""
        source = self.source if self.source is not None else inputs.source_embeds
        return source, self.target if self.target is not None else inputs.target_embeds

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
        return Baselines(**resolved)
    if baseline == "zeros":
        return Baselines(**{r: None if e is None else torch.zeros_like(e) for r, e in roles.items()})
    token_id = _token_baseline(model, baseline)
    with torch.no_grad():
        vector = model.embed(torch.tensor([[token_id]], device=inputs.target_embeds.device))
    return Baselines(**{r: None if e is None else vector.to(e).expand_as(e) for r, e in roles.items()})


def point_blocks(num_points: int, batch_size: int, internal_batch_size: int | None) -> Iterator[range]:
    """Ranges of point indices, each at most ``internal_batch_size`` rows (at least one copy of the batch)."""
    per_block = num_points if internal_batch_size is None else max(1, internal_batch_size // batch_size)
    for start in range(0, num_points, per_block):
        yield range(start, min(start + per_block, num_points))


def block_coefficients(
    block: range, alphas: list[float], weights: list[float], batch_size: int, like: Tensor
) -> tuple[Tensor, Tensor]:
    """The path positions ``alpha`` and quadrature weights of a block of points, one per row
    (``[len(block) * batch_size, 1, 1]``, copies of the batch stacked block-wise), in ``like``'s dtype and
    device.

    Example:
        >>> like = torch.ones(1, dtype=torch.float64)
        >>> alpha, weight = block_coefficients(range(1, 3), [0.1, 0.5, 0.9], [0.2, 0.6, 0.2], 2, like)
        >>> alpha.flatten().tolist(), weight.shape
        ([0.5, 0.5, 0.9, 0.9], torch.Size([4, 1, 1]))
    """

    def rows(values: list[float]) -> Tensor:
        chosen = torch.tensor([values[i] for i in block], dtype=like.dtype, device=like.device)
        return chosen.repeat_interleave(batch_size)[:, None, None]

    return rows(alphas), rows(weights)


@dataclass
class PointBlock:
    """``k`` copies of the batch (stacked block-wise) where gradients are taken, and each gradient's factor.

    Factors broadcast to the points (``[k * batch, 1, 1]`` for a weight, full size for ``x - baseline``);
    a role that is not attributed has None.
    """

    source_points: Float[Tensor, "n source_len hidden"] | None
    target_points: Float[Tensor, "n target_len hidden"]
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


def path_sums(inputs: MethodInputs, steps: slice, blocks: Iterator[PointBlock]) -> PathSums:
    """``sum over blocks and copies of factor * gradient`` for the steps of ``steps``, one forward per block.

    Example:
        >>> block = PointBlock(None, points, None, weights)  # doctest: +SKIP
        >>> sums = path_sums(inputs, slice(0, 4), iter([block]))  # doctest: +SKIP
    """
    batch = inputs.batch.size
    source_sum = target_sum = None
    for block in blocks:
        grads = step_gradients(inputs, block.source_points, block.target_points, steps)
        copies = grads.scores.shape[0] // batch
        if grads.source is not None:
            part = (grads.source * block.source_factor).unflatten(1, (copies, batch)).sum(1)
            source_sum = part if source_sum is None else source_sum + part
        if grads.target is not None:
            prefix = grads.target.shape[2]
            part = (grads.target * block.target_factor[:, :prefix]).unflatten(1, (copies, batch)).sum(1)
            target_sum = part if target_sum is None else target_sum + part
    return PathSums(source_sum, target_sum)


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


def completeness_gap(inputs: MethodInputs, baselines: list[Baselines]) -> Float[Tensor, "batch steps"]:
    """``f(input) - f(baseline)`` of every step (the mean over ``baselines`` of ``f(baseline)``): what the
    attributions of a path method add up to when its integral converged (2 passes without gradients, or
    ``1 + len(baselines)``)."""
    start = torch.stack([step_scores_at(inputs, *b.for_roles(inputs)) for b in baselines]).mean(0)
    return step_scores_at(inputs, inputs.source_embeds, inputs.target_embeds) - start


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
