"""LIME (Ribeiro et al. 2016): a weighted linear model of each step's score over random on/off feature masks.

Each example draws ``n_samples`` masks over all its features once (Bernoulli 1/2, from ``seed``); each masked
sequence is run once and gives every step's score. For step ``t`` the masks are read on the features the step
sees (the first ``visible`` ones) and a ridge regression is fitted on them, with LIME's similarity weights
``exp(-d**2 / (2 * kernel_width**2))``, ``d`` the cosine distance between the step's mask and the all-on
mask (``kernel_width=0.25`` equals the original LIME text explainer's ``d * 100`` with width 25). The
coefficients are the attributions. Cost: ``n_samples`` sequences for all steps together.

The stepwise reference runs Captum's ``Lime`` on each step's prefix with the same masks (restricted to the
step's features), the same similarity and the same regression, so both paths fit identical data.
`KernelShap` is this method with the Shapley kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from captum._utils.models.model import Model
from captum.attr import Lime as CaptumLime

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput
from seqattr.methods.options import Seed, int_option
from seqattr.methods.perturbation import (
    PerturbationOptions,
    PerturbationSetup,
    StepPrefix,
    feature_output,
    run_rows,
    setup_perturbation,
    stepwise_feature_scores,
)
from seqattr.typing import Float, Real, Tensor


def fit_linear(
    masks: Float[Tensor, "n features"],
    targets: Float[Tensor, " n"],
    weights: Float[Tensor, " n"],
    alpha: float,
) -> tuple[Float[Tensor, " features"], Float[Tensor, ""]]:
    """Coefficients ``c`` and intercept ``b`` of ``argmin sum_i w_i (y_i - b - m_i . c)**2 + alpha * |c|**2``.

    Solved in float64 by least squares on the weighted, ridge-augmented system (minimum-norm when the masks do
    not determine every coefficient).

    Example:
        >>> m = torch.tensor([[1., 0.], [0., 1.], [1., 1.], [0., 0.]])
        >>> fit_linear(m, m @ torch.tensor([2., -1.]) + 3, torch.ones(4), 0.0)[0].round(decimals=4)
        tensor([ 2., -1.])
    """
    n, d = masks.shape
    root = weights.double().sqrt()[:, None]
    design = torch.cat([masks.double(), torch.ones(n, 1, dtype=torch.float64)], dim=1) * root
    rhs = targets.double()[:, None] * root
    if alpha > 0:
        penalty = torch.cat(
            [torch.eye(d, dtype=torch.float64) * math.sqrt(alpha), torch.zeros(d, 1, dtype=torch.float64)], 1
        )
        design, rhs = torch.cat([design, penalty]), torch.cat([rhs, torch.zeros(d, 1, dtype=torch.float64)])
    solution = torch.linalg.lstsq(design, rhs, driver="gelsd").solution
    return solution[:d, 0].float(), solution[d, 0].float()


class LinearSurrogate(Model):
    """`fit_linear` as a Captum interpretable model (for Captum's ``Lime`` in the stepwise reference)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.coefficients: Tensor | None = None
        self.intercept: Tensor | None = None

    def fit(self, train_data, **kwargs: Any) -> None:
        masks, targets, weights = (torch.cat(parts) for parts in zip(*train_data, strict=True))
        self.coefficients, self.intercept = fit_linear(masks, targets, weights, self.alpha)

    def __call__(self, masks: Tensor) -> Tensor:
        return masks.float() @ self.coefficients + self.intercept

    def representation(self) -> Tensor:
        return self.coefficients[None]


@dataclass
class SampledOptions(Seed, PerturbationOptions):
    """Options of methods that draw random masks."""

    n_samples: int = int_option(100, low=2)
    """Random masks per example; each is one sequence run through the model."""
    seed: int | None = None  # the masks are drawn afresh at each call unless seeded (see Seed)


@dataclass
class LimeOptions(SampledOptions):
    kernel_width: float = 0.25
    """Width of the exponential kernel over the cosine distance to the unperturbed input."""
    alpha: float = 1.0
    """Ridge penalty of the linear model (the original LIME's ``Ridge(alpha=1)``)."""

    def validate(self) -> None:
        super().validate()
        if not self.kernel_width > 0:
            raise ValueError(f"kernel_width must be positive, got {self.kernel_width!r}")
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha!r}")


class Lime(AttributionMethod):
    """Weighted linear model of each step's score over random feature masks (LIME)."""

    name = "lime"
    Options = LimeOptions
    alpha_default: ClassVar[float | None] = None
    """Variants fix the regression's ridge penalty here (None: the ``alpha`` option)."""

    # --- what a variant changes ------------------------------------------------------------------

    def draw_masks(
        self, num_features: int, options, generator: torch.Generator
    ) -> Float[Tensor, "n features"]:
        """One example's masks over all its features (1 = feature kept)."""
        return torch.bernoulli(torch.full((options.n_samples, num_features), 0.5), generator=generator)

    def sample_weights(
        self, ones: Real[Tensor, " n"], visible: int, num_features: int, options
    ) -> Float[Tensor, " n"]:
        """Weight of each mask in a step's regression, from its count of kept features among ``visible``."""
        ones = ones.double()
        distance = 1 - (ones / visible).sqrt()  # cosine distance between the mask and the all-on mask
        return torch.exp(-(distance**2) / (2 * options.kernel_width**2))

    def _alpha(self, options) -> float:
        return options.alpha if self.alpha_default is None else self.alpha_default

    # --- the two paths ---------------------------------------------------------------------------

    def _masks(self, setup: PerturbationSetup, options) -> tuple[list[Tensor], int]:
        seed = options.resolved_seed()
        masks = []
        for b in range(setup.batch.size):
            # One generator per example: an example's masks do not depend on the rest of the batch.
            generator = torch.Generator().manual_seed(seed)
            masks.append(self.draw_masks(setup.features.num_features[b], options, generator).float())
        return masks, seed

    def attribute_fused(self, inputs: MethodInputs, options) -> MethodOutput:
        setup = setup_perturbation(self, inputs, options)
        masks, seed = self._masks(setup, options)
        batch, features = setup.batch, setup.features
        device = batch.target_ids.device
        rows = torch.cat([torch.full((m.shape[0],), b, dtype=torch.long) for b, m in enumerate(masks)]).to(
            device
        )
        width = max(features.max_features, 1)
        gates = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1]), value=1.0) for m in masks]).to(
            device
        )
        outputs = run_rows(setup, rows, gates).cpu()
        scores = torch.zeros(batch.size, width, batch.num_steps)
        start = 0
        for b, mask in enumerate(masks):
            example_outputs = outputs[start : start + mask.shape[0]]
            start += mask.shape[0]
            for column in range(batch.num_steps):
                visible = int(features.visible[b, column])
                if visible == 0:
                    continue
                seen = mask[:, :visible]
                weights = self.sample_weights(seen.sum(1), visible, mask.shape[1], options).float()
                # float32 targets and weights, as Captum's Lime hands them to its interpretable model.
                targets = example_outputs[:, column].float()
                coefficients, _ = fit_linear(seen, targets, weights, self._alpha(options))
                scores[b, :visible, column] = coefficients
        setup.info["seed"] = seed
        return feature_output(setup, scores)

    def attribute_stepwise(self, inputs: MethodInputs, options) -> MethodOutput:
        setup = setup_perturbation(self, inputs, options)
        masks, seed = self._masks(setup, options)

        def explain(step: StepPrefix) -> Tensor:
            visible, mask = step.num_visible, masks[step.b]
            seen = mask[:, :visible]

            rows = iter(seen)

            def perturb(original, **kwargs) -> Tensor:
                # Captum asks for one sample per call: our masks in order (a plain function rather than
                # a generator, which wrappers such as the test suite's shape checks would hide).
                return next(rows)[None].to(original.device)

            def similarity(original, perturbed, interpretable, **kwargs) -> float:
                ones = interpretable.sum().round().long().cpu()[None]
                return float(self.sample_weights(ones, visible, mask.shape[1], options)[0])

            lime = CaptumLime(
                step,
                interpretable_model=LinearSurrogate(self._alpha(options)),
                similarity_func=similarity,
                perturb_func=perturb,
            )
            ones = torch.ones(1, visible, device=setup.batch.target_ids.device)
            feature_mask = torch.arange(visible, device=ones.device)[None]
            return lime.attribute(
                ones,
                baselines=0.0,
                feature_mask=feature_mask,
                n_samples=seen.shape[0],
                perturbations_per_eval=seen.shape[0],  # Captum's batching: one forward per step
            )[0]

        # float32 in both paths, whatever the model: the linear fit runs in float32, as Captum's does.
        output = feature_output(setup, stepwise_feature_scores(setup, explain).float())
        output.info["seed"] = seed
        return output
