"""Feature ablation: each feature replaced by the baseline on its own; its score is the step score's drop.

A named variant of `Occlusion` with one-feature windows (``window=1, stride=1``); its stepwise reference is
Captum's own ``FeatureAblation``. Cost: ``L + 1`` sequences for ``L`` features, for all steps together.
"""

from __future__ import annotations

import torch
from captum.attr import FeatureAblation as CaptumFeatureAblation

from seqattr.methods.occlusion import PERTURBATIONS_PER_EVAL, Occlusion
from seqattr.methods.perturbation import PerturbationOptions
from seqattr.typing import Tensor


class FeatureAblation(Occlusion):
    """Drop of each step's score when one feature (token, word or sentence) is replaced by the baseline."""

    name = "feature_ablation"
    Options = PerturbationOptions

    def _window(self, options) -> tuple[int, int]:
        return 1, 1

    @staticmethod
    def _captum_step(
        forward, ones: tuple[Tensor, ...], windows: list[int], stride: int
    ) -> tuple[Tensor, ...]:
        baselines = tuple(torch.zeros_like(x) for x in ones)
        return CaptumFeatureAblation(forward).attribute(
            ones, baselines=baselines, perturbations_per_eval=PERTURBATIONS_PER_EVAL
        )
