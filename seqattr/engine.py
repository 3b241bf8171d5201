"""The engine: turns a batch into every step's objective, runs a method fused or stepwise, assembles outputs.

The central object is `StepObjective`: a function from input embeddings to the attributed score of every
explained step. Teacher forcing makes the target side causal, so one forward pass over a whole sequence gives
the logits of every step; methods evaluate the objective on perturbed, interpolated or noised embeddings once
for all steps (fused) or once per step on the step's prefix (stepwise reference).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from seqattr.data.attribution import SequenceAttribution
from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput
from seqattr.models.batch import AttributionBatch
from seqattr.step_functions import StepFunction, StepFunctionArgs, get_step_function
from seqattr.typing import Float, Int, Tensor

if TYPE_CHECKING:
    from seqattr.models.attribution_model import AttributionModel


class StepObjective:
    """Every explained step's attributed score as a function of the input embeddings.

    Called with ``n`` rows of embeddings (``n`` a multiple of the batch size: copies stacked block-wise, or
    any order given by ``rows``, the batch example of each row). ``target_embeds`` may be truncated to the
    longest prefix the selected ``steps`` need.

    Example:
        >>> scores = objective(source_embeds, target_embeds)        # [n, steps]  # doctest: +SKIP
        >>> first = objective(None, target_embeds[:, :p], slice(0, 1))   # step 0 alone on its prefix
    """

    def __init__(self, model: AttributionModel, batch: AttributionBatch, step_function: StepFunction) -> None:
        self.model = model
        self.batch = batch
        self.step_function = step_function

    def rows_for(self, n: int) -> Int[Tensor, " n"]:
        if n % self.batch.size:
            raise ValueError(f"{n} rows are not copies of a batch of {self.batch.size}; pass rows=")
        return torch.arange(n, device=self.batch.target_ids.device) % self.batch.size

    def __call__(
        self,
        source_embeds: Float[Tensor, "n source_len hidden"] | None,
        target_embeds: Float[Tensor, "n prefix_len hidden"],
        steps: slice = slice(None),
        rows: Int[Tensor, " n"] | None = None,
    ) -> Float[Tensor, "n steps"]:
        if rows is None:
            rows = self.rows_for(target_embeds.shape[0])
        positions = self.batch.step_positions[steps]
        logits = self.model.step_logits(self.batch, rows, source_embeds, target_embeds, positions)
        target_ids = self.batch.step_target_ids[rows][:, steps]
        return self.step_function(StepFunctionArgs(logits=logits, target_ids=target_ids))


def compute_step_scores(
    model: AttributionModel, batch: AttributionBatch, names: list[str]
) -> dict[str, Float[Tensor, "batch steps"]]:
    """All requested step scores from one forward pass over the batch (no gradients)."""
    if not names:
        return {}
    with torch.no_grad():
        source, target = model.embed_batch(batch)
        rows = torch.arange(batch.size, device=batch.target_ids.device)
        logits = model.step_logits(batch, rows, source, target, batch.step_positions)
        args = StepFunctionArgs(logits=logits, target_ids=batch.step_target_ids)
        return {name: get_step_function(name)(args).float().cpu() for name in names}


def run_batch(
    model: AttributionModel,
    method: AttributionMethod,
    options,
    batch: AttributionBatch,
    attributed_fn: str | StepFunction,
    attribute_target: bool,
    fused: bool,
) -> MethodOutput:
    source_embeds, target_embeds = model.embed_batch(batch)
    inputs = MethodInputs(
        batch=batch,
        objective=StepObjective(model, batch, get_step_function(attributed_fn)),
        source_embeds=source_embeds,
        target_embeds=target_embeds,
        attribute_source=model.is_encoder_decoder,
        attribute_target=attribute_target or not model.is_encoder_decoder,
    )
    with method.hooked():
        if fused and method.fusable:
            return method.attribute_fused(inputs, options)
        return method.attribute_stepwise(inputs, options)


def _nan_where_hidden(values: Tensor, visible: torch.Tensor) -> Tensor:
    """NaN where ``visible`` ([positions, steps]) is False, whatever extra dimensions ``values`` has."""
    values = values.detach().float().cpu().clone()
    mask = visible.cpu().reshape(*visible.shape, *([1] * (values.dim() - 2)))
    return values.masked_fill(~mask, float("nan"))


def assemble(
    model: AttributionModel,
    batch: AttributionBatch,
    output: MethodOutput,
    step_scores: dict[str, Tensor],
) -> list[SequenceAttribution]:
    """Slice a batch's padded results into one `SequenceAttribution` per example."""
    visible_target = batch.visible_target()
    sequences = []
    for i, example in enumerate(batch.examples):
        num_steps = example.attr_pos_end - example.attr_pos_start
        offset = int(batch.target_offsets[i])
        target_rows = slice(offset, offset + len(example.target_ids))
        source_attributions = target_attributions = None
        if output.source_attributions is not None:
            source = output.source_attributions[i, : len(example.source_ids), :num_steps]
            source_attributions = _nan_where_hidden(source, torch.ones(source.shape[:2], dtype=torch.bool))
        if output.target_attributions is not None:
            target = output.target_attributions[i, target_rows, :num_steps]
            target_attributions = _nan_where_hidden(target, visible_target[i, target_rows, :num_steps])
        scores = {**step_scores, **output.step_scores}
        sequences.append(
            SequenceAttribution(
                source=model.convert_ids_to_tokens(example.source_ids),
                target=model.convert_ids_to_tokens(example.target_ids),
                source_ids=list(example.source_ids),
                target_ids=list(example.target_ids),
                source_attributions=source_attributions,
                target_attributions=target_attributions,
                step_scores={name: s[i, :num_steps].detach().float().cpu() for name, s in scores.items()},
                attr_pos_start=example.attr_pos_start,
                attr_pos_end=example.attr_pos_end,
            )
        )
    return sequences
