"""Helpers of the exactness tests: float64 copies of the tiny models, comparisons that treat NaN as a value.

Why float64: the tiny test models have large random weights (std 0.3), which makes them far more
ill-conditioned than trained models. In float32, two equally valid summation orders (a padded batch versus a
single example, one pass for all steps versus one pass per step) differ by ~1e-7 in the forward pass, and the
models amplify that to relative differences of up to ~1e-4 in gradients (measured: T5 input x gradient).
That is rounding, not a bug, but it would hide bugs at a 1e-5 tolerance. In float64 the same comparisons
agree to ~1e-12, so a 1e-5 tolerance separates rounding from real errors by seven orders of magnitude (a
wrong mask, position or step shows as an O(1) difference). Outputs of a float64 model are float64 too
(``tests/test_new_user_api.py`` holds them beyond float32 precision).

The exactness tests attribute `probability64`, the target's probability computed in the model's precision.
(The built-in step functions once computed the softmax in float32, capping a float64 model at 1e-7, which
input x gradient's cancellation amplifies; they now keep float64, so `probability` is equivalent.)
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math

import torch

import seqattr
from seqattr.data.attribution import SequenceAttribution
from seqattr.step_functions import StepFunctionArgs
from seqattr.testing import tiny_model

RTOL = 1e-5
"""Tolerance of every exactness check, relative to the compared tensor's largest magnitude."""


@functools.cache
def float64_model(architecture: str):
    """A float64 copy of the cached tiny model (the float32 original is shared and stays untouched)."""
    model, tokenizer = tiny_model(architecture)
    return copy.deepcopy(model).double(), tokenizer


def exact_model(architecture: str, method: str = "saliency", **options) -> seqattr.AttributionModel:
    model, tokenizer = float64_model(architecture)
    return seqattr.load_model(model, method, tokenizer=tokenizer, **options)


def probability64(args: StepFunctionArgs) -> torch.Tensor:
    """Probability of the target token, in the logits' own precision."""
    logprobs = torch.log_softmax(args.logits, dim=-1)
    return logprobs.gather(-1, args.target_ids[..., None])[..., 0].exp()


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    rtol: float = RTOL,
    what: str = "",
    scale: float | None = None,
) -> None:
    """Same shape, NaN exactly where ``expected`` has NaN, and ``|a - e| <= rtol * (|e| + scale)``, where
    ``scale`` defaults to ``max|e|`` (pass the inputs' scale when ``expected`` is a sum that cancels)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.double().cpu(), expected.double().cpu()
    assert torch.equal(actual.isnan(), expected.isnan()), f"{what}: NaN at different positions"
    finite = expected[~expected.isnan()]
    if scale is None:
        scale = float(finite.abs().max()) if finite.numel() else 0.0
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=rtol * scale, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


def assert_sequences_close(
    actual: SequenceAttribution, expected: SequenceAttribution, rtol: float = RTOL
) -> None:
    """Tokens, window, tensors (NaN pattern included) and step scores of two sequences agree."""
    assert actual.source_ids == expected.source_ids
    assert actual.target_ids == expected.target_ids
    assert (actual.attr_pos_start, actual.attr_pos_end) == (expected.attr_pos_start, expected.attr_pos_end)
    for name in ("source_attributions", "target_attributions", "interactions"):
        mine, theirs = getattr(actual, name), getattr(expected, name)
        assert (mine is None) == (theirs is None), f"{name}: one is None, the other is not"
        if mine is not None:
            assert_close(mine, theirs, rtol, name)
    assert actual.step_scores.keys() == expected.step_scores.keys()
    for name in actual.step_scores:
        scale = None
        if (
            name == "convergence_delta"
        ):  # a sum that cancels (to rounding, for DeepLIFT): the attributions' scale
            scale = max(
                float(x.nan_to_num().abs().sum(0).max())
                for x in (expected.source_attributions, expected.target_attributions)
                if x is not None
            )
        assert_close(
            actual.step_scores[name], expected.step_scores[name], rtol, f"step_scores[{name!r}]", scale
        )


_SAME_WIDTH_INT = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def assert_identical(actual, expected, where: str = "output") -> None:
    """Recursively equal; tensors equal bit for bit (so NaN == NaN, and -0.0 != 0.0)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), where
        as_int = _SAME_WIDTH_INT.get(expected.dtype)
        if as_int is not None:
            assert torch.equal(actual.view(as_int), expected.view(as_int)), f"{where}: bits differ"
        else:
            assert torch.equal(actual, expected), where
    elif dataclasses.is_dataclass(expected):
        assert type(actual) is type(expected), where
        for field in dataclasses.fields(expected):
            assert_identical(
                getattr(actual, field.name), getattr(expected, field.name), f"{where}.{field.name}"
            )
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            assert_identical(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_identical(a, e, f"{where}[{i}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual), where
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"
