"""Fusing by rows, for methods whose backward cannot be batched over steps.

Captum's DeepLIFT rewrites gradients in module backward hooks (its rescale multipliers), which a batched
backward (``is_grads_batched``, a vmap) does not run reliably. Such methods are fused by rows instead: for a
chunk of ``k`` steps, the batch is replicated ``k`` times, copy ``j`` returns only step ``j``'s score, and
ONE Captum call (one forward over all rows, one ordinary backward) gives every step of the chunk its
attribution. Copies do not interact, so each row computes exactly what the step would on its own prefix
(positions after a step's token do not affect its score); the cost per step is a row, not a model call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from seqattr.methods.base import MethodInputs, MethodOutput
from seqattr.methods.gradient import AttributionWriter, CaptumRoles, step_chunks
from seqattr.typing import Tensor


class ForwardModule(nn.Module):
    """A forward function as an ``nn.Module`` (Captum's DeepLIFT hooks a module), with the model (and any
    layer tap) as children so that their nonlinearities are hooked too."""

    def __init__(self, forward: Callable[..., Tensor], *children: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleList(children)
        self._forward = forward

    def forward(self, *args: Tensor) -> Tensor:
        return self._forward(*args)


@dataclass
class RowsResult:
    """One Captum call's attributions, one per Captum input (None for a role without scores), and its
    per-row convergence delta when asked for."""

    attributions: tuple[Tensor | None, ...]
    delta: Tensor | None = None


RowsCall = Callable[[Callable[..., Tensor], tuple[Tensor, ...], tuple], RowsResult]
"""``(forward, attributed inputs, additional_forward_args) -> RowsResult`` for one chunk of steps."""


def captum_step_rows(
    inputs: MethodInputs,
    attribute_rows: RowsCall,
    reduce: Callable[[Tensor], Tensor],
    rows_per_step: int,
    delta_name: str = "convergence_delta",
) -> MethodOutput:
    """All steps, a chunk at a time, each step of a chunk on its own copy of the batch.

    Like `captum_stepwise`, the attributed embeddings are Captum's inputs and the constant ones, each row's
    example index and each row's step column travel in ``additional_forward_args``. ``rows_per_step`` (rows
    one step costs, e.g. 2 x batch for DeepLIFT's input and baseline halves) sizes the chunks.

    Example:
        >>> call = lambda forward, attributed, extra: RowsResult(tuple(attributed))
        >>> out = captum_step_rows(inputs, call, reduce, 2)  # doctest: +SKIP
    """
    batch, objective = inputs.batch, inputs.objective
    writer = AttributionWriter(inputs)
    device = batch.target_ids.device
    for steps in step_chunks(inputs, n_points=rows_per_step):
        copies = steps.stop - steps.start
        prefix = inputs.target_embeds[:, : int(batch.step_positions[steps].max())]
        rows = torch.arange(batch.size, device=device).repeat(copies)
        columns = torch.arange(copies, device=device).repeat_interleave(batch.size)
        source = None if inputs.source_embeds is None else inputs.source_embeds.repeat(copies, 1, 1)
        packed = CaptumRoles(inputs, source, prefix.repeat(copies, 1, 1))

        def forward(*args: Tensor, _packed=packed, _steps=steps) -> Tensor:
            embeds, (row_ids, row_steps) = _packed.embeds(args)
            scores = objective(embeds.get("source"), embeds["target"], _steps, row_ids)
            return scores.gather(1, row_steps[:, None])[:, 0]  # each row: its own step's score

        with torch.enable_grad():
            result = attribute_rows(forward, packed.attributed, (*packed.constant, rows, columns))
        results = list(result.attributions)
        source = results.pop(0) if inputs.attribute_source else None
        target = results.pop(0) if inputs.attribute_target else None
        writer.write(
            steps,
            *(
                None if r is None else reduce(r.detach().unflatten(0, (copies, batch.size)))
                for r in (source, target)
            ),
        )
        if result.delta is not None:
            writer.write_step_score(delta_name, steps, result.delta.detach().view(copies, batch.size).T)
    return writer.output()
