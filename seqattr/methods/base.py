"""The registry of attribution methods and the contract every method fulfils.

A method subclasses `AttributionMethod` with a class-level ``name``; that joins the registry (a duplicate name
is refused). It receives `MethodInputs` (one padded batch, the embeddings to attribute and the `StepObjective`
that maps embeddings to every step's score) and returns a `MethodOutput` in padded coordinates; the engine
slices it per example and writes NaN where a step cannot see a token.

Two paths, held equal by the tests:
- ``attribute_fused``: as few model passes as exactness allows, all steps at once (DESIGN.md §2);
- ``attribute_stepwise``: the reference; step ``t`` is explained on its own prefix, as other tools do.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from seqattr.typing import Float, Tensor

if TYPE_CHECKING:
    from seqattr.engine import StepObjective
    from seqattr.models.attribution_model import AttributionModel
    from seqattr.models.batch import AttributionBatch


@dataclass
class MethodInputs:
    """What a method attributes: one batch, its embeddings and the per-step objective."""

    batch: AttributionBatch
    objective: StepObjective
    source_embeds: Float[Tensor, "batch source_len hidden"] | None
    """Encoder input embeddings (None for decoder-only models); attributed when ``attribute_source``."""
    target_embeds: Float[Tensor, "batch target_len hidden"]
    """Decoder input embeddings; attributed when ``attribute_target``."""
    attribute_source: bool
    attribute_target: bool


@dataclass
class MethodOutput:
    """A batch's attributions in padded coordinates; entries a step cannot see may hold anything."""

    source_attributions: Tensor | None  # [batch, source_len, steps, *extra]
    target_attributions: Tensor | None  # [batch, target_len, steps, *extra]
    step_scores: dict[str, Tensor] = field(default_factory=dict)  # [batch, steps], e.g. convergence deltas
    info: dict[str, Any] = field(default_factory=dict)
    """How the method ran (e.g. the attention implementation used); recorded in the output's
    ``info["method_info"]``, later batches updating earlier ones."""
    example_info: list[dict[str, Any]] | None = None
    """One JSON-able dict per example of the batch (e.g. feature spans): ``info["method_info"]["examples"]``.
    """


@dataclass
class NoOptions:
    """Options of a method that has none."""


_METHODS: dict[str, type[AttributionMethod]] = {}


class AttributionMethod:
    """Base class of attribution methods. Subclasses set ``name`` and implement the two paths."""

    name: ClassVar[str]
    fusable: ClassVar[bool] = True
    """False when the method cannot be fused exactly: the engine then runs it stepwise and says so in info."""
    unitless: ClassVar[bool] = False
    """True when the raw scores have no unit a reader can interpret (plain gradients, whose size depends on
    the embedding scale); the terminal view then shows them normalised per step unless asked for raw."""
    Options: ClassVar[type] = NoOptions
    """A dataclass of the method's keyword options, with their defaults."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:  # an abstract family base
            return
        if cls.name in _METHODS:
            raise ValueError(
                f"an attribution method named {cls.name!r} exists already ({_METHODS[cls.name].__qualname__})"
            )
        _METHODS[cls.name] = cls

    def __init__(self, model: AttributionModel) -> None:
        self.model = model

    @classmethod
    def parse_options(cls, **kwargs: Any):
        """The method's options from keyword arguments; an unknown one is refused with the valid names."""
        valid = {f.name for f in dataclasses.fields(cls.Options)}
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            listed = ", ".join(sorted(valid)) or "none"
            raise TypeError(
                f"{cls.name} got unknown option(s) {', '.join(unknown)}; its options are: {listed}"
            )
        options = cls.Options(**kwargs)
        validate = getattr(options, "validate", None)
        if validate is not None:
            validate()
        return options

    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        """Context in which the method's hooks are attached to the model; they are removed on exit, always."""
        yield

    def attribute_fused(self, inputs: MethodInputs, options) -> MethodOutput:
        raise NotImplementedError(f"{self.name} has no fused path")

    def attribute_stepwise(self, inputs: MethodInputs, options) -> MethodOutput:
        raise NotImplementedError(f"{self.name} has no stepwise path")


def describe_options(options, model=None) -> dict[str, Any]:
    """A method's options as plain data for an output's ``info``: a tensor becomes a short description and a
    module its dotted name in ``model`` (never a copy of it).

    Example:
        >>> from seqattr.methods.integrated_gradients import IntegratedGradients
        >>> options = IntegratedGradients.parse_options(baseline=torch.zeros(64))
        >>> describe_options(options)["baseline"]
        'tensor(shape=[64], dtype=float32)'
    """
    import torch

    names = {id(module): name for name, module in model.named_modules()} if model is not None else {}

    def plain(value):
        if isinstance(value, torch.nn.Module):
            return names.get(id(value), type(value).__name__)
        if isinstance(value, Tensor):
            return f"tensor(shape={list(value.shape)}, dtype={str(value.dtype).removeprefix('torch.')})"
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {f.name: plain(getattr(options, f.name)) for f in dataclasses.fields(options)}


def get_method_class(name: str) -> type[AttributionMethod]:
    """The method class registered under ``name``; an unknown name lists the valid ones."""
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(f"unknown attribution method {name!r}; valid methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> dict[str, str]:
    """Registered attribution methods with a one-line description each.

    Example:
        >>> "saliency" in seqattr.list_methods()
        True
    """
    return {name: (cls.__doc__ or "").strip().splitlines()[0] for name, cls in sorted(_METHODS.items())}


def refuse_contrast(inputs: MethodInputs, why: str, fix: str) -> MethodInputs:
    """``inputs`` for a method that cannot attribute a contrastive function: raises a ValueError saying
    ``why`` and ``fix`` before any model work when the attributed function is a built-in contrastive one,
    and returns inputs whose objective raises the same error where a custom function reads the contrast's
    logits (before the contrast's forward pass runs). Step scores are computed elsewhere: contrastive
    ``step_scores=`` still work.
    """
    from seqattr.step_functions import is_contrastive, step_function_name

    objective = inputs.objective
    if objective.contrast is None:
        return inputs
    step_function = objective.step_function
    name = step_function_name(getattr(step_function, "func", step_function))
    message = (
        f"{why}: attributed_fn={name!r} reads the contrast sequence, which runs the model a second time in "
        f"each forward pass; {fix} (contrastive step_scores= still work with this method)"
    )
    if is_contrastive(step_function):
        raise ValueError(message)

    def refuse() -> Tensor:
        raise ValueError(message)

    def guarded(args):
        args.contrast_forward = refuse
        return step_function(args)

    guarded_objective = copy.copy(objective)  # the same objective with the guarded step function
    guarded_objective.step_function = guarded
    return dataclasses.replace(inputs, objective=guarded_objective)
