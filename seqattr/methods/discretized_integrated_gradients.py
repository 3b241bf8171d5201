"""Discretized integrated gradients (Sanyal & Ren 2021): gradients summed along monotonic paths through words.

Each token's embedding follows its own monotonic path ``p_0 = baseline, ..., p_n = x`` through the
vocabulary embeddings (``methods/monotonic_paths.py``) and the attribution is the Riemann sum over the
path's segments, the gradient taken at each segment's start::

    DIG(x) = sum_{k < n} grad f(p_k) * (p_{k+1} - p_k)

A token's path depends only on the token and its baseline, never on the step, so the fused form moves the
whole sequence along its paths: the ``n_steps`` path points are evaluated once each for all steps, in
blocks of ``internal_batch_size`` rows. The path sum holds the completeness axiom up to the Riemann error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput
from seqattr.methods.gradient import (
    AttributionWriter,
    GradientOptions,
    captum_stepwise,
    reduce_hidden,
    step_chunks,
)
from seqattr.methods.monotonic_paths import STRATEGIES, monotonic_paths
from seqattr.methods.path_base import (
    DEFAULT_BASELINE,
    PointBlock,
    check_baseline,
    check_positive_int,
    path_sums,
    point_blocks,
    resolve_baselines,
    write_sums,
)
from seqattr.typing import Float, Int, Tensor


@dataclass
class DiscretizedIntegratedGradientsOptions(GradientOptions):
    n_steps: int = 30
    """Path segments (gradient evaluations) per token; the paper's default."""
    strategy: str = "greedy"
    """Anchor choice: 'greedy' (closest to its monotonized point) or 'maxcount' (most monotonic dims)."""
    n_neighbors: int = 50
    """Nearest vocabulary words considered as the next anchor."""
    baseline: str | int | Tensor = DEFAULT_BASELINE
    """Where paths end: 'zeros', 'unk', 'pad', a token id, or a float tensor (the paper uses 'pad')."""
    internal_batch_size: int | None = None
    """Rows per forward pass in the fused path (whole copies of the batch); None = all path points at once."""

    def validate(self) -> None:
        super().validate()
        check_positive_int("n_steps", self.n_steps)
        check_positive_int("n_neighbors", self.n_neighbors)
        check_positive_int("internal_batch_size", self.internal_batch_size, allow_none=True)
        check_baseline(self.baseline)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")


def token_paths(
    model, ids: Int[Tensor, "batch positions"], baseline: Float[Tensor, "batch positions hidden"], options
) -> Float[Tensor, "points batch positions hidden"]:
    """The monotonic path of every token, computed once per distinct (token, baseline vector) pair."""
    hidden = baseline.shape[-1]
    keys = torch.cat([ids[..., None].to(baseline.dtype), baseline], -1).reshape(-1, hidden + 1)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    with torch.no_grad():
        vocabulary = model.embed(
            torch.arange(model.model.get_input_embeddings().num_embeddings, device=ids.device)
        )
        paths = monotonic_paths(
            vocabulary.to(baseline.dtype),
            unique[:, 0].long(),
            unique[:, 1:],
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
                    points.append(starts.flatten(0, 1))
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
            totals = [torch.zeros_like(x) for x in attributed]
            for k in range(options.n_steps):
                points = [p[k].detach().requires_grad_() for p in paths]
                with torch.enable_grad():
                    grads = torch.autograd.grad(forward(*points, *additional).sum(), points)
                for total, grad, path in zip(totals, grads, paths, strict=True):
                    total += grad * (path[k + 1] - path[k])
            return tuple(totals)

        return captum_stepwise(inputs, attribute_step, lambda a: reduce_hidden(a, options.hidden_reduction))
