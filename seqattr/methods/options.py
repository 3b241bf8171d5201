"""Options shared by many methods, each declared and validated once.

Every method's ``Options`` is a dataclass deriving from `MethodOptions`; an option that several methods take
is a mixin here, so that its name, default, documentation and validation are the same everywhere:

- `Baseline`: what the inputs are compared with, or what a removed feature becomes;
- `Seed`: the seed of a method's random draws;
- `InternalBatch`: rows per forward pass;
- `ConvergenceDelta`: store each step's completeness error;
- `TargetLayer`: the layer a layer method attributes.

`AttributionMethod.parse_options` checks the declared type of every option (a string is never a bool);
``validate`` checks the rest, each class calling ``super().validate()``.

Example:
    >>> @dataclass
    ... class NoisyOptions(Seed, InternalBatch, MethodOptions):
    ...     n_samples: int = 10
    >>> NoisyOptions(seed=-1).validate()
    Traceback (most recent call last):
    ...
    ValueError: seed must be a non-negative integer or None (e.g. seed=0), got -1
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from seqattr.typing import Tensor

BASELINE_NAMES = ("zeros", "unk", "pad")
DEFAULT_BASELINE = "zeros"


def check_positive_int(name: str, value, allow_none: bool = False) -> None:
    """Refuse anything but an integer >= 1 (or None when ``allow_none``), naming the option."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}"
        )


def check_int_range(name: str, value, low: int, high: int | None = None, high_name: str = "") -> None:
    """Refuse anything but an integer from ``low`` to ``high`` (no upper bound when None), naming the option
    (and the bound's source, ``high_name``, e.g. another option).

    Example:
        >>> check_int_range("stride", 3, 1, 2, high_name="window=2")
        Traceback (most recent call last):
        ...
        ValueError: stride must be an integer between 1 and window=2, got 3
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        wanted = f">= {low}" if high is None else f"between {low} and {high_name or high}"
        raise ValueError(f"{name} must be an integer {wanted}, got {value!r}")


def check_baseline(baseline) -> None:
    """Refuse a baseline of the wrong kind when options are parsed (shapes are checked against the inputs)."""
    if isinstance(baseline, str):
        if baseline not in BASELINE_NAMES:
            raise ValueError(
                f"unknown baseline {baseline!r}; use one of {', '.join(map(repr, BASELINE_NAMES))}, "
                "a token id, or a tensor broadcastable to the embeddings (e.g. one [hidden] vector)"
            )
    elif isinstance(baseline, Tensor):
        if not baseline.is_floating_point():
            raise ValueError(
                f"a baseline tensor holds embeddings and must be floating point, got {baseline.dtype}"
            )
    elif isinstance(baseline, bool) or not isinstance(baseline, int) or baseline < 0:
        raise ValueError(
            f"baseline must be 'zeros', 'unk', 'pad', a token id (int >= 0) or a float tensor: {baseline!r}"
        )


INT_BOUNDS = "seqattr.int_bounds"
"""The field metadata key of `int_option`'s bounds."""


def int_option(default: int, low: int = 1, high: str | None = None) -> Any:
    """A dataclass field for an integer option from ``low`` up to the value of the option named ``high``
    (unbounded when None), checked by `MethodOptions.validate`: an option's bounds are declared with it,
    not in a ``validate`` of its own.

    Example:
        >>> @dataclass
        ... class WindowOptions(MethodOptions):
        ...     window: int = int_option(1)
        ...     stride: int = int_option(1, high="window")
        >>> WindowOptions(window=2, stride=3).validate()
        Traceback (most recent call last):
        ...
        ValueError: stride must be an integer between 1 and window=2, got 3
    """
    return dataclasses.field(default=default, metadata={INT_BOUNDS: (low, high)})


@dataclass
class MethodOptions:
    """The root of every method's options."""

    def validate(self) -> None:
        """Check the values beyond their declared types; subclasses extend it and call ``super()``. Here: the
        bounds of the options declared with `int_option`."""
        for option in dataclasses.fields(self):
            bounds = option.metadata.get(INT_BOUNDS)
            if bounds is None:
                continue
            low, high_option = bounds
            value = getattr(self, option.name)
            if high_option is None and low == 1:
                check_positive_int(option.name, value)
                continue
            high = None if high_option is None else getattr(self, high_option)
            check_int_range(option.name, value, low, high, high_name=f"{high_option}={high}")


@dataclass
class Baseline(MethodOptions):
    baseline: str | int | Tensor = DEFAULT_BASELINE
    """What the inputs are compared with (gradient methods) or what a removed feature becomes (perturbation
    methods): ``"zeros"`` (the zero embedding, Captum's default), ``"unk"`` / ``"pad"`` (that token's
    embedding at every position), a token id, or a float tensor broadcastable to the embeddings, typically
    one ``[hidden]`` vector."""

    def validate(self) -> None:
        super().validate()
        check_baseline(self.baseline)


@dataclass
class Seed(MethodOptions):
    seed: int | None = 0
    """Seed of the method's random draws: the same seed gives the same numbers. None draws a fresh seed from
    torch's global generator at each ``attribute()`` call (so ``torch.manual_seed`` still rules) and records
    it in the output's ``info["method_options"]["seed"]``."""

    def validate(self) -> None:
        super().validate()
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise ValueError(f"seed must be a non-negative integer or None (e.g. seed=0), got {self.seed!r}")

    def resolved_seed(self) -> int:
        """``seed``, or a fresh one drawn from torch's global generator when it is None."""
        return int(torch.randint(0, 2**31 - 1, ())) if self.seed is None else self.seed


@dataclass
class InternalBatch(MethodOptions):
    internal_batch_size: int | None = None
    """Rows per forward pass (whole copies of the batch, at least one); None = all at once. Results do not
    depend on it beyond float rounding."""

    def validate(self) -> None:
        super().validate()
        check_positive_int("internal_batch_size", self.internal_batch_size, allow_none=True)


@dataclass
class ConvergenceDelta(MethodOptions):
    return_convergence_delta: bool = False
    """Store each step's completeness error, ``sum of its attributions - (f(input) - f(baseline))``, as the
    step score ``convergence_delta``."""


@dataclass
class TargetLayer(MethodOptions):
    target_layer: str | int | nn.Module | None = None
    """The layer attributed: a module of the model, its dotted name, a block index or a short name such as
    ``"decoder.3.mlp"`` (`seqattr.cuts`); None = the input embeddings."""
    attribute_to_layer_input: bool = False
    """Attribute to the layer's input instead of its output (Captum's option of the same name), e.g. an MLP's
    hidden neurons as the input of its down projection."""

    def validate(self) -> None:
        super().validate()
        check_target_layer(self.target_layer)


def check_target_layer(target_layer) -> None:
    """Refuse a target layer that is neither a module, a name, a block index nor None."""
    if target_layer is not None and (
        isinstance(target_layer, bool) or not isinstance(target_layer, (str, int, nn.Module))
    ):
        raise TypeError(
            "target_layer must be a module, its dotted name, a block index, a short name such as "
            f"'decoder.0.mlp', or None; got {type(target_layer).__name__}"
        )
