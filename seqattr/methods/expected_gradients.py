"""Expected gradients (Erion et al. 2021, with IG's quadrature): IG averaged over random baselines.

Each of ``n_baselines`` baselines is a sequence whose vector at every position is drawn independently and
uniformly from a reference pool: the input vocabulary's embeddings (default), the tokens of user-given
``references`` texts, or user-given vectors. The attribution is the mean over the drawn baselines of
integrated gradients from that baseline (``n_steps`` points of Captum's ``integration_method``). Unlike
``gradient_shap`` (one random alpha per sample), every baseline gets a full quadrature.

Fused: every (baseline, alpha) point of the whole sequence is evaluated once for all steps, in blocks of at
most ``internal_batch_size`` rows, each block within one baseline. The draws depend only on ``seed`` and
the padded batch shape, and a step's prefix uses the first positions of the sequence's draws, so fused and
stepwise see the same baselines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from seqattr.methods.adaptive_integration import AdaptiveSteps
from seqattr.methods.base import MethodInputs
from seqattr.methods.integrated_gradients import IntegratedGradients
from seqattr.methods.options import ConvergenceDelta, MethodOptions, Seed, check_positive_int
from seqattr.methods.path_base import Baselines, IntegrationOptions
from seqattr.typing import Tensor


@dataclass
class References(MethodOptions):
    """The baseline distribution of the expected-value methods (``expected_gradients``,
    ``expected_hessians``)."""

    references: Sequence[str] | Tensor | None = None
    """The baseline distribution: None = every token of the input vocabulary; a list of texts = their tokens;
    a float tensor ``[n, hidden]`` = those vectors. Each position of each baseline draws one uniformly."""
    n_baselines: int = 8
    """Baselines drawn per example."""

    def validate(self) -> None:
        super().validate()
        check_positive_int("n_baselines", self.n_baselines)
        references = self.references
        if isinstance(references, Tensor):
            if not references.is_floating_point() or references.dim() != 2 or references.shape[0] == 0:
                raise ValueError(
                    f"references as a tensor must be float vectors [n, hidden], got {references.dtype} "
                    f"of shape {list(references.shape)}"
                )
        elif references is not None:
            if (
                isinstance(references, str)
                or not isinstance(references, Sequence)
                or not references
                or not all(isinstance(text, str) and text.strip() for text in references)
            ):
                raise ValueError(
                    "references must be None, a non-empty list of non-empty texts, or a float tensor"
                )


@dataclass
class ExpectedGradientsOptions(AdaptiveSteps, Seed, ConvergenceDelta, References, IntegrationOptions):
    n_steps: int | Literal["auto"] = 20
    """Integration points per baseline (fewer than IG's 50: the average over baselines smooths the rest), or
    ``"auto"``: every baseline's path on the same nested midpoint grid, refined per step until the mean over
    baselines adds up to ``f(input) - mean f(baseline)`` within ``tolerance``."""


def _reference_pool(model, options: References, hidden: int) -> tuple[Tensor | None, Tensor | None]:
    """``(token ids, None)`` or ``(None, vectors)``: what baseline positions are drawn from."""
    references = options.references
    if references is None:
        return torch.arange(model.model.get_input_embeddings().num_embeddings), None
    if isinstance(references, Tensor):
        if references.shape[1] != hidden:
            raise ValueError(
                f"reference vectors have {references.shape[1]} dimensions, the embeddings {hidden}"
            )
        return None, references
    ids = [i for text in references for i in model.tokenizer(text, add_special_tokens=False)["input_ids"]]
    if not ids:
        raise ValueError("the reference texts tokenize to no tokens")
    return torch.tensor(ids), None


def draw_baselines(model, inputs: MethodInputs, options) -> list[Baselines]:
    """``n_baselines`` full-size baselines; each attributed position draws a reference uniformly (on CPU)."""
    ids, vectors = _reference_pool(model, options, inputs.target_embeds.shape[-1])
    pool_size = len(ids) if ids is not None else len(vectors)
    generator = torch.Generator().manual_seed(options.resolved_seed())
    drawn = {}
    for role, embeds, attributed in (
        ("source", inputs.source_embeds, inputs.attribute_source),
        ("target", inputs.target_embeds, inputs.attribute_target),
    ):
        if embeds is None or not attributed:
            drawn[role] = None
            continue
        index = torch.randint(pool_size, (options.n_baselines, *embeds.shape[:2]), generator=generator)
        with torch.no_grad():
            values = model.embed(ids[index].to(embeds.device)) if ids is not None else vectors[index]
        drawn[role] = values.to(embeds)
    # Prompt-only attribution holds the generated prefix: its baseline is the input (drawn all the same, so
    # the prompt's draws are those of a whole-target run).
    return [
        Baselines(*(None if drawn[r] is None else drawn[r][b] for r in ("source", "target"))).holding(
            inputs.held_target, inputs.target_embeds
        )
        for b in range(options.n_baselines)
    ]


class ExpectedGradients(IntegratedGradients):
    """Integrated gradients averaged over baselines drawn from a reference distribution."""

    name = "expected_gradients"
    Options = ExpectedGradientsOptions

    def draw_baselines(self, inputs: MethodInputs, options: ExpectedGradientsOptions) -> list[Baselines]:
        return draw_baselines(self.model, inputs, options)
