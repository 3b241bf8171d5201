"""KernelSHAP (Lundberg & Lee 2017): `Lime` with the Shapley kernel, giving Shapley-value estimates.

A named variant that only fixes LIME's parameters, as Captum's ``KernelShap`` does: masks drawn the KernelSHAP
way (the all-on and all-off masks first, then masks whose number of kept features ``k`` follows
``p(k) ∝ (M - 1) / (k (M - k))``, the kept features uniform among the ``M``), weights 1 with a large weight
(1e6, Captum's) on the all-on and all-off masks, and an unregularised linear regression. The attributions of
a step then sum to f(all kept) - f(all removed), up to the large-weight approximation.

One set of masks serves every step. A step that sees ``m < M`` features reads the masks on those features,
and that is again a KernelSHAP sample for ``m`` features: the law of the number of kept features ``j`` among
the ``m``, a mixture over ``k`` of hypergeometric laws, is proportional to ``(m - 1) / (j (m - j))`` for
``0 < j < m`` (checked exactly in the tests), and given ``j`` the kept features are uniform. Weights are
therefore Captum's for every step: 1, and the large weight for masks keeping all or none of the step's
features (some partial masks of the whole sequence become such endpoints for early steps).
"""

from __future__ import annotations

import torch

from seqattr.methods.lime import Lime, SampledOptions
from seqattr.typing import Float, Real, Tensor

ENDPOINT_WEIGHT = 1e6
"""Weight of the all-on and all-off masks (Captum's ``inf_weight``)."""


def shapley_size_distribution(num_features: int) -> Float[Tensor, " num_features_minus_1"]:
    """``p(k) ∝ (M - 1) / (k (M - k))`` for ``k = 1 .. M - 1`` (float64).

    Example:
        >>> shapley_size_distribution(4)
        tensor([0.3636, 0.2727, 0.3636], dtype=torch.float64)
    """
    k = torch.arange(1, num_features, dtype=torch.float64)
    weights = (num_features - 1) / (k * (num_features - k))
    return weights / weights.sum()


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
        self, ones: Real[Tensor, " n"], visible: int, num_features: int, options
    ) -> Float[Tensor, " n"]:
        ones = ones.long()
        endpoint = (ones == 0) | (ones == visible)
        return torch.where(endpoint, ENDPOINT_WEIGHT, 1.0).double()
