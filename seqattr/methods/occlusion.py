"""Occlusion (Zeiler & Fergus 2014): slide a window over the features, replace it by the baseline, and score
each feature by the mean drop of the step score over the windows that cover it (Captum's ``Occlusion``).

Windows slide separately over the source features and over the target features, with Captum's rule: on ``d``
features, windows start at ``0, stride, 2 * stride, ...`` while ``start <= d - window`` rounded up to the next
stride, the last one cut at the end. A step sees ``d_t`` target features, so on its own prefix Captum would
use only the windows that fit ``d_t``; the fused path runs every window of the whole sequence once and, for
each step, averages only over those windows (a window cut short by the step's prefix perturbs the same
visible features as the cut window Captum builds). Cost: one clean sequence plus one per window, i.e.
``L + 1`` sequences for ``L`` features with the default ``window=1``, for all steps together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from captum.attr import Occlusion as CaptumOcclusion

from seqattr.methods.base import AttributionMethod, CleanLogits, MethodInputs, MethodOutput, output_dtype
from seqattr.methods.options import int_option
from seqattr.methods.perturbation import (
    PerturbationOptions,
    StepPrefix,
    clean_scores,
    feature_output,
    run_rows,
    setup_perturbation,
    stepwise_feature_scores,
)
from seqattr.typing import Float, Tensor

PERTURBATIONS_PER_EVAL = 16  # perturbations Captum batches into one forward call in the stepwise reference


@dataclass
class OcclusionOptions(PerturbationOptions):
    window: int = int_option(1)
    """Features replaced together by one window (Captum's ``sliding_window_shapes`` along the sequence)."""
    stride: int = int_option(1, high="window")
    """Features the window moves by; at most ``window`` (Captum's ``strides``)."""


def window_count(num_features: int, window: int, stride: int) -> int:
    """Captum's number of window positions on ``num_features`` features (0 when there are none).

    Example:
        >>> window_count(5, 2, 2), window_count(1, 3, 1), window_count(0, 1, 1)
        (3, 1, 0)
    """
    if num_features <= 0:
        return 0
    return math.ceil(max(num_features - window, 0) / stride) + 1


class Occlusion(AttributionMethod):
    """Mean drop of each step's score when sliding windows of features are replaced by the baseline."""

    name = "occlusion"
    Options = OcclusionOptions
    keeps_clean_logits = True

    def _window(self, options) -> tuple[int, int]:
        return options.window, options.stride

    def attribute_fused(self, inputs: MethodInputs, options) -> MethodOutput:
        setup = setup_perturbation(self, inputs, options)
        window, stride = self._window(options)
        batch, features = setup.batch, setup.features
        device = batch.target_ids.device
        # Windows of every example and side: (example, first feature, number of features on that side).
        groups = []
        rows, gates = [], []
        for b in range(batch.size):
            sides = ((0, features.num_source[b]), (features.num_source[b], features.num_features[b]))
            for first, end in sides:
                count = window_count(end - first, window, stride)
                if count:
                    groups.append((b, first, end - first, len(rows), count))
                for k in range(count):
                    gate = torch.ones(max(features.max_features, 1), device=device)
                    gate[first + k * stride : min(first + k * stride + window, end)] = 0
                    rows.append(b)
                    gates.append(gate)
        dtype = output_dtype(inputs.target_embeds.dtype)
        scores = torch.zeros(batch.size, max(features.max_features, 1), batch.num_steps, dtype=dtype)
        clean = CleanLogits(batch)
        if rows:
            row_index = torch.tensor(rows, device=device)
            with clean.kept_by(inputs.objective):  # the clean rows' logits serve the step scores
                clean_rows = clean_scores(setup)
            effects = (clean_rows[row_index] - run_rows(setup, row_index, torch.stack(gates))).cpu()
            visible = features.visible.cpu()
            for b, first, size, row_start, count in groups:
                # Features of this side each step sees (source: all of them, in real steps).
                seen = (visible[b] - first).clamp(min=0, max=size)
                scores[b, first : first + size] = _window_means(
                    effects[row_start : row_start + count], seen, size, window, stride
                )
        output = feature_output(setup, scores)
        output.step_logits = clean.logits
        return output

    def attribute_stepwise(self, inputs: MethodInputs, options) -> MethodOutput:
        setup = setup_perturbation(self, inputs, options)
        window, stride = self._window(options)

        def explain(step: StepPrefix) -> Tensor:
            sizes = [step.num_source, step.num_visible - step.num_source]
            kept = [size for size in sizes if size > 0]  # Captum needs at least one feature per input

            def forward(*side_gates: Tensor) -> Tensor:
                return step(torch.cat(side_gates, dim=1))

            ones = tuple(torch.ones(1, size, device=setup.batch.target_ids.device) for size in kept)
            result = self._captum_step(forward, ones, [min(window, size) for size in kept], stride)
            return torch.cat([r[0] for r in result])

        return feature_output(setup, stepwise_feature_scores(setup, explain))

    @staticmethod
    def _captum_step(
        forward, ones: tuple[Tensor, ...], windows: list[int], stride: int
    ) -> tuple[Tensor, ...]:
        return CaptumOcclusion(forward).attribute(
            ones,
            baselines=tuple(torch.zeros_like(x) for x in ones),
            sliding_window_shapes=tuple((w,) for w in windows),
            strides=tuple((stride,) for _ in windows),
            perturbations_per_eval=PERTURBATIONS_PER_EVAL,
        )


def _window_means(
    effects: Float[Tensor, "windows steps"], seen: Tensor, size: int, window: int, stride: int
) -> Float[Tensor, "features steps"]:
    """Each feature's mean effect over the windows covering it that Captum would use on each step's prefix."""
    count = effects.shape[0]
    starts = torch.arange(count) * stride
    feature = torch.arange(size)
    inside = (feature[None, :] >= starts[:, None]) & (feature[None, :] < starts[:, None] + window)
    covers = inside.to(effects)  # [windows, features]
    step_windows = torch.tensor([window_count(int(s), window, stride) for s in seen])
    used = (torch.arange(count)[:, None] < step_windows[None, :]).to(effects)  # [windows, steps]
    total = covers.T @ (used * effects)
    number = covers.T @ used
    means = torch.where(number > 0, total / number.clamp(min=1), torch.zeros_like(total))
    return means.masked_fill(feature[:, None] >= seen[None, :], 0.0)
