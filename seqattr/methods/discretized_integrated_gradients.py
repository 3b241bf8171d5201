"""Discretized integrated gradients (Sanyal & Ren 2021): gradients summed along monotonic paths through words.

Each token's embedding follows its own monotonic path ``p_0 = baseline, ..., p_n = x`` through the
vocabulary embeddings (``methods/monotonic_paths.py``) and the attribution is the Riemann sum over the
path's segments, the gradient taken at each segment's midpoint (``rule="midpoint"``, default)::

    DIG(x) = sum_{k < n} grad f((p_k + p_{k+1}) / 2) * (p_{k+1} - p_k)

or at its start (``rule="left"``, DIG's reference code). The left rule takes a gradient at the baseline
itself, and at the zero baseline the models with RMSNorm and no absolute position embeddings (T5, Llama,
Qwen, ...) have a near-singular gradient: their first norm sees a zero vector and scales by
``1 / sqrt(eps)`` (~1e3), layer after layer (measured on the tiny T5: |grad| 3e8 at 0, 0.09 at the input),
which gave attributions of 1e7-1e15 for a probability. The midpoint rule never evaluates the endpoints
(like IG's Gauss-Legendre rule) and is second order.

A token's path depends only on the token and its baseline, never on the step, so the fused form moves the
whole sequence along its paths: the ``n_steps`` path points are evaluated once each for all steps, in
blocks of ``internal_batch_size`` rows. The path sum holds the completeness axiom up to the Riemann error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput, output_dtype
from seqattr.methods.gradient import (
    AttributionWriter,
    GradientOptions,
    captum_stepwise,
    step_chunks,
)
from seqattr.methods.monotonic_paths import STRATEGIES, monotonic_paths
from seqattr.methods.options import Baseline, InternalBatch, check_positive_int
from seqattr.methods.path_base import (
    PointBlock,
    path_sums,
    point_blocks,
    resolve_baselines,
    write_sums,
)
from seqattr.typing import Float, Int, Tensor

RULES = ("midpoint", "left")


def segment_points(path: Tensor, start: int, stop: int, rule: str) -> Tensor:
    """Where the gradients of segments ``start:stop`` of ``path`` (``[points, ...]``) are taken."""
    if rule == "left":
        return path[start:stop]
    return (path[start:stop] + path[start + 1 : stop + 1]) / 2


@dataclass
class DiscretizedIntegratedGradientsOptions(Baseline, InternalBatch, GradientOptions):
    n_steps: int = 30
    """Path segments (gradient evaluations) per token; the paper's default."""
    strategy: str = "greedy"
    """Anchor choice: 'greedy' (closest to its monotonized point) or 'maxcount' (most monotonic dims)."""
    n_neighbors: int = 50
    """Nearest vocabulary words considered as the next anchor."""
    rule: str = "midpoint"
    """Where each segment's gradient is taken: 'midpoint' (default) or 'left' (its start, DIG's reference
    code; unusable with a zero baseline on RMSNorm models, see the module docstring)."""

    def validate(self) -> None:
        super().validate()
        check_positive_int("n_steps", self.n_steps)
        check_positive_int("n_neighbors", self.n_neighbors)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        if self.rule not in RULES:
            raise ValueError(f"unknown rule {self.rule!r}; valid: {', '.join(RULES)}")


def token_paths(
    model, ids: Int[Tensor, "batch positions"], baseline: Float[Tensor, "batch positions hidden"], options
) -> Float[Tensor, "points batch positions hidden"]:
    """The monotonic path of every token, computed once per distinct (token, baseline vector) pair.

    The paths are built in float32 for a half-precision model (`output_dtype`): in bfloat16 the steps
    ``current - (current - baseline) / n_steps`` and the neighbour distances round away. The keys are float64,
    which holds every token id exactly (bfloat16 holds integers exactly only up to 256, float16 up to 2048: a
    key in the model's dtype gave a rounded id, the path of another word).
    """
    hidden = baseline.shape[-1]
    keys = torch.cat([ids[..., None].double(), baseline.double()], -1).reshape(-1, hidden + 1)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    dtype = output_dtype(baseline.dtype)
    with torch.no_grad():
        vocabulary = model.embed(
            torch.arange(model.model.get_input_embeddings().num_embeddings, device=ids.device)
        )
        paths = monotonic_paths(
            vocabulary.to(dtype),
            unique[:, 0].long(),
            unique[:, 1:].to(dtype),
            options.n_steps,
            options.strategy,
            options.n_neighbors,
        )
    return paths[:, inverse].view(paths.shape[0], *baseline.shape)


class DiscretizedIntegratedGradients(AttributionMethod):
    """Gradients summed along monotonic paths through the vocabulary embeddings (DIG)."""

    name = "discretized_integrated_gradients"
    Options = DiscretizedIntegratedGradientsOptions

    def _paths(self, inputs: MethodInputs, options, target_len: int | None = None) -> list[Tensor | None]:
        """Paths of the attributed roles (source, target), the target cut to ``target_len`` tokens."""
        baselines = resolve_baselines(self.model, inputs, options.baseline)
        batch = inputs.batch
        paths = []
        for ids, baseline in ((batch.source_ids, baselines.source), (batch.target_ids, baselines.target)):
            if baseline is None:
                paths.append(None)
                continue
            length = ids.shape[1] if ids is batch.source_ids or target_len is None else target_len
            paths.append(token_paths(self.model, ids[:, :length], baseline[:, :length], options))
        return paths

    def attribute_fused(
        self, inputs: MethodInputs, options: DiscretizedIntegratedGradientsOptions
    ) -> MethodOutput:
        paths = self._paths(inputs, options)
        embeds = (inputs.source_embeds, inputs.target_embeds)

        def blocks():
            for block in point_blocks(options.n_steps, inputs.batch.size, options.internal_batch_size):
                points, factors = [], []
                for path, embed in zip(paths, embeds, strict=True):
                    if path is None:
                        points.append(None if embed is None else embed.repeat(len(block), 1, 1))
                        factors.append(None)
                        continue
                    starts = path[block.start : block.stop]
                    # The model runs in its dtype; the factors (segment lengths) stay in the path's float32.
                    point = segment_points(path, block.start, block.stop, options.rule).to(embed.dtype)
                    points.append(point.flatten(0, 1))
                    factors.append((path[block.start + 1 : block.stop + 1] - starts).flatten(0, 1))
                yield PointBlock(points[0], points[1], factors[0], factors[1])

        writer = AttributionWriter(inputs)
        for steps in step_chunks(
            inputs, n_points=options.internal_batch_size or options.n_steps * inputs.batch.size
        ):
            write_sums(writer, steps, path_sums(inputs, steps, blocks()), options.hidden_reduction)
        return writer.output()

    def attribute_stepwise(
        self, inputs: MethodInputs, options: DiscretizedIntegratedGradientsOptions
    ) -> MethodOutput:
        def attribute_step(forward, attributed, additional):
            # The step's own paths (its prefix's tokens), then a plain Riemann loop, one path point at a time.
            prefix_len = attributed[-1].shape[1] if inputs.attribute_target else None
            paths = [p for p in self._paths(inputs, options, prefix_len) if p is not None]
            # Summed in float32 for a half-precision model, as the fused path's `path_sums`.
            totals = [torch.zeros_like(x, dtype=output_dtype(x.dtype)) for x in attributed]
            for k in range(options.n_steps):
                points = [
                    segment_points(p, k, k + 1, options.rule)[0].to(x.dtype).detach().requires_grad_()
                    for p, x in zip(paths, attributed, strict=True)
                ]
                with torch.enable_grad():
                    grads = torch.autograd.grad(forward(*points, *additional).sum(), points)
                for total, grad, path in zip(totals, grads, paths, strict=True):
                    total += grad * (path[k + 1] - path[k])
            return tuple(totals)

        return captum_stepwise(inputs, attribute_step, options.reduce)
