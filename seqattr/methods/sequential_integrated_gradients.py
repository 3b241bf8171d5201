"""Sequential integrated gradients (Enguehard 2023): integrated gradients of one token at a time.

The attribution of token ``i`` is integrated gradients along the straight path from its baseline to its
embedding while every other token keeps its own embedding::

    SIG_i = (x_i - b_i) * sum_a w_a * d f(x_1, .., b_i + alpha_a (x_i - b_i), .., x_n) / d x_i

(the paper's baseline is the mask token: pass ``baseline=`` a token id or ``"unk"``; the shared default is
``"zeros"``). Every token needs its own path, so a step with ``n`` visible tokens costs ``n * n_steps``
points. Fused: for a chunk of steps, each (token, alpha) point of the whole sequence is evaluated once for
all steps of the chunk; tokens the chunk cannot see are skipped.
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients as CaptumIntegratedGradients

from seqattr.methods.base import MethodInputs, output_dtype
from seqattr.methods.path_base import (
    Baselines,
    PathMethod,
    PathOptions,
    PointBlock,
    expand_rows,
    point_blocks,
)


def attributed_tokens(
    inputs: MethodInputs, prefix_len: int, source: bool, target: bool
) -> list[tuple[int, int]]:
    """``(role, position)`` of every token a chunk moves (role 0 source, 1 target; only the roles asked for,
    the target cut to ``prefix_len``), in path order."""
    roles = [(inputs.source_embeds, source), (inputs.target_embeds[:, :prefix_len], target)]
    return [(r, i) for r, (embeds, moved) in enumerate(roles) if moved for i in range(embeds.shape[1])]


def _single_token_blocks(
    inputs: MethodInputs,
    baselines: Baselines,
    options: PathOptions,
    prefix_len: int,
    alphas: list[float],
    weights: list[float],
):
    """Blocks of points that each move one token along its path, the other tokens staying at the input."""
    batch = inputs.batch.size
    target = inputs.target_embeds[:, :prefix_len]
    roles = [("source", inputs.source_embeds, baselines.source), ("target", target, baselines.target)]
    tokens = attributed_tokens(inputs, prefix_len, baselines.source is not None, baselines.target is not None)
    # Points in the model's dtype; weights, differences and factors in the dtype the sums accumulate in
    # (float32 for a half-precision model, as `straight_path_blocks`).
    device, dtype, wide = target.device, target.dtype, output_dtype(target.dtype)
    for block in point_blocks(len(tokens) * len(alphas), batch, options.internal_batch_size):
        copies = len(block)
        points = [expand_rows(embeds, copies) for _, embeds, _ in roles]
        factors = [
            None if base is None else torch.zeros_like(p, dtype=wide)
            for p, (_, _, base) in zip(points, roles, strict=True)
        ]
        for r, (_, embeds, base) in enumerate(roles):
            chosen = [
                (k, tokens[q // len(alphas)][1], q % len(alphas))
                for k, q in enumerate(block)
                if tokens[q // len(alphas)][0] == r
            ]
            if not chosen:
                continue
            copy, position, alpha_index = (torch.tensor(v, device=device) for v in zip(*chosen, strict=True))
            alpha = torch.tensor(alphas, dtype=wide, device=device)[alpha_index][:, None, None]
            weight = torch.tensor(weights, dtype=wide, device=device)[alpha_index][:, None, None]
            # [chosen, batch, hidden]
            start = base[:, : embeds.shape[1]][:, position].transpose(0, 1).to(wide)
            difference = embeds[:, position].transpose(0, 1).to(wide) - start
            view = points[r].view(copies, batch, *embeds.shape[1:])
            view[copy, :, position] = (start + alpha * difference).to(dtype)
            factors[r].view(copies, batch, *embeds.shape[1:])[copy, :, position] = (
                weight * difference if options.multiply_by_inputs else (weight.expand_as(difference))
            )
        yield PointBlock(points[0], points[1], factors[0], factors[1])


class SequentialIntegratedGradients(PathMethod):
    """Integrated gradients of each token alone, the other tokens fixed at their embeddings."""

    name = "sequential_integrated_gradients"
    Options = PathOptions
    completeness = False  # each token's path is its own: the attributions add up to no single difference
    split_positions = True  # one Captum input per token

    def point_count(self, inputs: MethodInputs, steps: slice, num_alphas: int) -> int:
        prefix_len = int(inputs.batch.step_positions[steps].max())
        source = inputs.attribute_source and inputs.source_embeds is not None
        tokens = attributed_tokens(inputs, prefix_len, source, inputs.attribute_target)
        return len(tokens) * num_alphas

    def path_blocks(self, inputs, steps, space, start, options, alphas, weights):
        prefix_len = int(inputs.batch.step_positions[steps].max())
        return _single_token_blocks(inputs, start, options, prefix_len, alphas, weights)

    def captum_attribution(self, forward, attributed, additional, start, options, layer=None):
        # Captum's IG on token i alone (one Captum input per token), the others constant.
        token_baselines = list(start.source.unbind(1)) if start.source is not None else []
        if start.target is not None:
            token_baselines += list(start.target[:, : len(attributed) - len(token_baselines)].unbind(1))
        results = []
        for i, token in enumerate(attributed):
            others = tuple(x.detach() for j, x in enumerate(attributed) if j != i)

            def forward_one(x, *rest, _i=i, _others=len(others)):  # noqa: B008 (bound per token, on purpose)
                tokens = list(rest[:_others])
                tokens.insert(_i, x)
                return forward(*tokens, *rest[_others:])

            ig = CaptumIntegratedGradients(forward_one, multiply_by_inputs=options.multiply_by_inputs)
            results.append(
                ig.attribute(
                    token,
                    baselines=token_baselines[i],
                    additional_forward_args=(*others, *additional),
                    n_steps=options.n_steps,
                    method=options.integration_method,
                    internal_batch_size=options.internal_batch_size,
                )
            )
        return tuple(results), None
