"""KernelSHAP (Lundberg & Lee 2017): `Lime` with the Shapley kernel, giving Shapley-value estimates.

A named variant that only fixes LIME's parameters, as Captum's ``KernelShap`` does: masks drawn the KernelSHAP
way (the all-on and all-off masks first, then masks whose number of kept features ``k`` follows
``p(k) ∝ (M - 1) / (k (M - k))``, the kept features uniform among the ``M``), weights 1 with a large weight
(1e6, Captum's) on the all-on and all-off masks, and an unregularised linear regression. The attributions of
a step then sum to f(all kept) - f(all removed), up to the large-weight approximation.

One set of masks serves every step. A step that sees ``m < M`` features reads the masks on those features;
their number of kept features ``j`` no longer follows ``p`` for ``m``, so each mask is weighted by
``p_m(j) / P(j)``, ``P(j)`` the (hypergeometric) probability that a drawn mask keeps ``j`` of the step's
``m`` features: the weighted sample is again a KernelSHAP sample for the step, and for ``m = M`` the weights
are exactly 1 as in Captum. Masks that keep all or none of a step's features get the large weight.
"""

from __future__ import annotations

import torch

from seqattr.methods.lime import Lime, SampledOptions
from seqattr.typing import Float, Int, Tensor

ENDPOINT_WEIGHT = 1e6
"""Weight of the all-on and all-off masks (Captum's ``inf_weight``)."""


def shapley_size_distribution(num_features: int) -> Float[Tensor, " num_features_minus_1"]:
    """``p(k) ∝ (M - 1) / (k (M - k))`` for ``k = 1 .. M - 1`` (float64).

    Example:
        >>> shapley_size_distribution(4)
        tensor([0.3750, 0.2500, 0.3750], dtype=torch.float64)
    """
    k = torch.arange(1, num_features, dtype=torch.float64)
    weights = (num_features - 1) / (k * (num_features - k))
    return weights / weights.sum()


def _log_comb(n: Tensor, k: Tensor) -> Tensor:
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def kept_count_probability(num_features: int, visible: int) -> Float[Tensor, " visible_plus_1"]:
    """``P(j)``: probability that a random KernelSHAP mask over ``num_features`` keeps ``j`` of the first
    ``visible`` features, ``j = 0 .. visible`` (a mixture over ``k`` of hypergeometric laws).

    Example:
        >>> kept_count_probability(4, 4)[1:4]   # all features seen: P is p itself
        tensor([0.3750, 0.2500, 0.3750], dtype=torch.float64)
    """
    total = torch.tensor(float(num_features), dtype=torch.float64)
    seen = torch.tensor(float(visible), dtype=torch.float64)
    sizes = torch.arange(1, num_features, dtype=torch.float64)[:, None]
    j = torch.arange(visible + 1, dtype=torch.float64)[None, :]
    possible = (j <= sizes) & (seen - j <= total - sizes)
    # C(k, j) C(M - k, m - j) / C(M, m), zero where impossible (arguments clamped only to stay finite there).
    log_hyper = (
        _log_comb(sizes, torch.minimum(j, sizes))
        + _log_comb(total - sizes, (seen - j).clamp(min=0, max=None).minimum(total - sizes))
        - _log_comb(total, seen)
    )
    hyper = torch.where(possible, log_hyper.exp(), torch.zeros_like(log_hyper))
    return (shapley_size_distribution(num_features)[:, None] * hyper).sum(0)


class KernelShap(Lime):
    """Shapley-value estimates: LIME with the Shapley kernel and KernelSHAP's mask sampling."""

    name = "kernel_shap"
    Options = SampledOptions
    alpha_default = 0.0

    def draw_masks(
        self, num_features: int, options, generator: torch.Generator
    ) -> Float[Tensor, "n features"]:
        masks = torch.zeros(options.n_samples, num_features)
        masks[0] = 1  # all kept; masks[1] stays all removed
        if num_features < 2:
            masks[2::2] = 1  # no partial masks exist: alternate the two endpoints
            return masks
        sizes = (
            torch.multinomial(
                shapley_size_distribution(num_features), options.n_samples - 2, True, generator=generator
            )
            + 1
        )
        for row, size in enumerate(sizes.tolist(), start=2):
            masks[row, torch.randperm(num_features, generator=generator)[:size]] = 1
        return masks

    def sample_weights(
        self, ones: Int[Tensor, " n"], visible: int, num_features: int, options
    ) -> Float[Tensor, " n"]:
        ones = ones.long()
        weights = torch.full(ones.shape, ENDPOINT_WEIGHT, dtype=torch.float64)
        partial = (ones > 0) & (ones < visible)
        if visible >= 2 and bool(partial.any()):
            wanted = torch.cat([torch.zeros(1, dtype=torch.float64), shapley_size_distribution(visible)])
            drawn = kept_count_probability(num_features, visible)
            weights[partial] = wanted[ones[partial]] / drawn[ones[partial]]
        return weights
