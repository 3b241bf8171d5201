"""Sobol attribution (Fel et al. 2021): total Sobol indices of the features for each step's score.

Each feature gets a mask value in [0, 1]; a masked sequence mixes every feature with the baseline
(``mask * embedding + (1 - mask) * baseline``, the paper's inpainting; ``mask_type="binary"`` instead keeps
a feature where its mask is >= 0.5 and replaces it otherwise). Masks come from a scrambled Sobol sequence
(scipy's ``qmc.Sobol``, seeded) in ``2 M`` dimensions for ``M`` features: ``n_designs`` points split into
the designs ``A`` and ``B``, and ``C_i`` = ``A`` with column ``i`` taken from ``B``. The total index of
feature ``i`` compares the scores of ``A`` and ``C_i``: with ``jansen`` (default, recommended by the paper)
``ST_i = sum((f(A) - f(C_i))**2) / (2 n Var f(A))``; ``homma``, ``janon`` and ``glen`` are the other
estimators of Fel et al.'s reference implementation (xplique). An index is 0 where its variance is 0, and
every index of a step is 0 where the step's score is constant up to rounding (`CONSTANT_TOLERANCE`).

No estimator reads ``f(B)``, so it is not run: the cost is ``n_designs * (M + 1)`` sequences per example,
for all steps together. A step that sees ``m`` features uses the design's first ``m`` columns and ``C_i`` for
``i < m``: its indices are those of the same design run on its own prefix (the stepwise reference, our own
loop: Captum has no Sobol method).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from scipy.stats import qmc

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput, output_dtype
from seqattr.methods.options import Seed
from seqattr.methods.perturbation import (
    PerturbationOptions,
    StepPrefix,
    feature_output,
    run_rows,
    setup_perturbation,
    stepwise_feature_scores,
)
from seqattr.typing import Float, Tensor

ESTIMATORS = ("jansen", "homma", "janon", "glen")
MASK_TYPES = ("continuous", "binary")


@dataclass
class SobolOptions(Seed, PerturbationOptions):
    n_designs: int = 32
    """Points of the design ``A`` (a power of two, for the balance of Sobol sequences)."""
    estimator: str = "jansen"
    """Total-index estimator: jansen, homma, janon or glen."""
    mask_type: str = "continuous"
    """``continuous``: mix each feature with the baseline by its mask value; ``binary``: keep/replace it."""
    seed: int | None = None  # the Sobol sequence is scrambled afresh at each call unless seeded (see Seed)

    def validate(self) -> None:
        super().validate()
        n = self.n_designs
        if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n & (n - 1):
            raise ValueError(f"n_designs must be a power of two >= 2 (e.g. 32), got {n!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; valid: {', '.join(ESTIMATORS)}")
        if self.mask_type not in MASK_TYPES:
            raise ValueError(f"unknown mask_type {self.mask_type!r}; valid: {', '.join(MASK_TYPES)}")


CONSTANT_TOLERANCE = 32
"""A step's scores are constant, and all its indices 0, where their standard deviation over the design's
sequences (``A`` and every ``C_i``) is at most ``CONSTANT_TOLERANCE * eps * max |score|``, ``eps`` the
machine epsilon of the computation (the model's dtype, or the scores' if coarser). Rounding makes a constant
score vary by about one ``eps`` of its magnitude (measured: ``softmax(logits).sum()`` on the tiny test
models, 0.6-1 eps in float32 and float64); dividing by that variance gave indices of pure noise (up to 2.3).
A real effect 32 times the rounding is already hard to resolve (rounding is ~0.1% of its variance)."""

HALF_CONSTANT_TOLERANCE = 2
"""The tolerance in bfloat16 and float16 (``eps >= 1e-4``), where 32 eps would be 25% of the largest score in
bfloat16 and zeroed real effects (every step of the tiny test GPT-2); below 2 eps a step's indices are
dominated by rounding (a quarter of its variance or more). A warning counts the steps zeroed there."""


def sobol_design(num_features: int, n_designs: int, seed: int) -> tuple[Tensor, Tensor]:
    """Designs ``A`` [n, M] and ``C`` [M, n, M] (``C[i]`` = ``A`` with column ``i`` from ``B``), float64.

    Example:
        >>> a, c = sobol_design(3, 8, seed=0)
        >>> bool((c[1][:, [0, 2]] == a[:, [0, 2]]).all()), bool((c[1][:, 1] != a[:, 1]).any())
        (True, True)
    """
    points = torch.from_numpy(qmc.Sobol(2 * num_features, scramble=True, rng=seed).random(n_designs))
    a, b = points[:, :num_features], points[:, num_features:]
    c = a[None].repeat(num_features, 1, 1)
    index = torch.arange(num_features)
    c[index, :, index] = b.T
    return a, c


def total_indices(
    a: Float[Tensor, "n ..."], c: Float[Tensor, "features n ..."], estimator: str, eps: float | None = None
) -> Tensor:
    """Total Sobol index of each feature (``[features, *rest]``) from the scores of ``A`` and each ``C_i``.

    ``eps``: the machine epsilon of the computation that gave the scores (their dtype's where that is
    coarser); where the scores are constant up to rounding (see `CONSTANT_TOLERANCE`) every index is 0.

    Example:
        >>> a = torch.tensor([0., 1., 2., 3.])            # f depends on feature 0 only
        >>> c = torch.stack([torch.tensor([3., 2., 1., 0.]), a])
        >>> total_indices(a, c, "jansen")
        tensor([1.5000, 0.0000], dtype=torch.float64)
        >>> total_indices(1 + 1e-9 * a, 1 + 1e-9 * c, "jansen")     # constant in float32 terms: no noise
        tensor([0., 0.], dtype=torch.float64)
    """
    if a.dtype.is_floating_point:
        eps = max(eps or 0.0, torch.finfo(a.dtype).eps)
    indices = _total_indices(a.double(), c.double(), estimator)
    values = torch.cat([a[None].double(), c.double()])  # [1 + features, n, ...]
    spread = values.flatten(0, 1).std(0)
    half = eps >= 1e-4
    tolerance = HALF_CONSTANT_TOLERANCE if half else CONSTANT_TOLERANCE
    constant = spread <= tolerance * eps * values.abs().flatten(0, 1).amax(0)
    if half and constant.any():
        warnings.warn(
            f"sobol: {int(constant.sum())} of {constant.numel()} step score(s) vary by less than "
            f"{HALF_CONSTANT_TOLERANCE} rounding units of the model's half-precision dtype over the designs; "
            "their indices are set to 0. Load the model in float32 to resolve effects that small.",
            stacklevel=2,
        )
    return indices.masked_fill(constant, 0.0)


def _total_indices(a: Tensor, c: Tensor, estimator: str) -> Tensor:
    n = a.shape[0]
    mean_a = a.mean(0)

    def ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
        return torch.where(denominator != 0, numerator / torch.where(denominator != 0, denominator, 1), 0.0)

    if estimator == "jansen":
        return ratio(((a - c) ** 2).sum(1) / (2 * n), a.var(0))
    if estimator == "homma":
        variance = a.var(0)
        return ratio(variance - (a * c).mean(1) + mean_a**2, variance)
    if estimator == "janon":
        mean_ac = (a + c).sum(1) / (2 * n)
        variance = (a**2 + c**2).sum(1) / (2 * (n - 1)) - mean_ac**2
        return torch.where(variance != 0, 1 - ratio((a * c).mean(1) - mean_ac**2, variance), 0.0)
    if estimator == "glen":
        covariance = ((a - mean_a) * (c - c.mean(1, keepdim=True))).sum(1) / (n - 1)
        scale = (a.var(0, unbiased=False) * c.var(1, unbiased=False)).sqrt()
        return torch.where(scale != 0, 1 - ratio(covariance, scale), 0.0)
    raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")


def computation_eps(inputs: MethodInputs) -> float:
    """The machine epsilon of the model's computation (its embeddings' dtype)."""
    return torch.finfo(inputs.target_embeds.dtype).eps


class Sobol(AttributionMethod):
    """Total Sobol indices of the features for each step's score (Fel et al. 2021)."""

    name = "sobol"
    Options = SobolOptions

    @staticmethod
    def _designs(setup, options, seed: int) -> list[tuple[Tensor, Tensor] | None]:
        designs = []
        for b in range(setup.batch.size):
            count = setup.features.num_features[b]
            if count == 0:
                designs.append(None)
                continue
            a, c = sobol_design(count, options.n_designs, seed)  # per example: independent of the batch
            if options.mask_type == "binary":
                a, c = (a >= 0.5).double(), (c >= 0.5).double()
            designs.append((a.float(), c.float()))
        return designs

    def attribute_fused(self, inputs: MethodInputs, options: SobolOptions) -> MethodOutput:
        setup = setup_perturbation(self, inputs, options)
        seed = options.resolved_seed()
        batch, width = setup.batch, max(setup.features.max_features, 1)
        device = batch.target_ids.device
        eps = computation_eps(inputs)
        scores = torch.zeros(
            batch.size, width, batch.num_steps, dtype=output_dtype(inputs.target_embeds.dtype)
        )
        for b, design in enumerate(self._designs(setup, options, seed)):
            if design is None:
                continue
            a, c = design
            count = a.shape[1]
            gates = torch.nn.functional.pad(
                torch.cat([a, c.reshape(-1, count)]), (0, width - count), value=1.0
            )
            rows = torch.full((gates.shape[0],), b, dtype=torch.long, device=device)
            outputs = run_rows(setup, rows, gates.to(device)).cpu()
            n = a.shape[0]
            # Features a step cannot see are zeroed by feature_output; the others need only A and C_i.
            scores[b, :count] = total_indices(
                outputs[:n], outputs[n:].reshape(count, n, -1), options.estimator, eps
            ).to(scores.dtype)
        setup.info["seed"] = seed
        return feature_output(setup, scores)

    def attribute_stepwise(self, inputs: MethodInputs, options: SobolOptions) -> MethodOutput:
        setup = setup_perturbation(self, inputs, options)
        seed = options.resolved_seed()
        designs = self._designs(setup, options, seed)
        eps = computation_eps(inputs)

        def explain(step: StepPrefix) -> Tensor:
            a, c = designs[step.b]
            visible = step.num_visible
            n = a.shape[0]
            outputs = step(torch.cat([a[:, :visible], c[:visible, :, :visible].reshape(-1, visible)]))
            return total_indices(outputs[:n], outputs[n:].reshape(visible, n), options.estimator, eps)

        output = feature_output(setup, stepwise_feature_scores(setup, explain))
        output.info["seed"] = seed
        return output
