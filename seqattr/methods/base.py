"""The registry of attribution methods and the contract every method fulfils.

A method subclasses `AttributionMethod` with a class-level ``name``; that joins the registry (a duplicate name
is refused). It receives `MethodInputs` (one padded batch, the embeddings to attribute and the `StepObjective`
that maps embeddings to every step's score) and returns a `MethodOutput` in padded coordinates; the engine
slices it per example and writes NaN where a step cannot see a token.

Two paths, held equal by the tests:
- ``attribute_fused``: as few model passes as exactness allows, all steps at once;
- ``attribute_stepwise``: the reference; step ``t`` is explained on its own prefix, as other tools do.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from seqattr.methods.options import MethodOptions
from seqattr.typing import Bool, Float, Int, Tensor

if TYPE_CHECKING:
    from seqattr.engine import StepObjective
    from seqattr.methods.convergence import Completeness
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
    held_target: Bool[Tensor, "batch target_len"] | None = None
    """Prompt-only attribution (``attribute_target=False`` on a decoder-only model): True at the generated
    prefix, held at its tokens: never moved along a path, noised or perturbed; the engine writes NaN in its
    rows. None: every attributed target position moves."""


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
    interactions: Tensor | None = None
    """Pairwise interactions ``[batch, features, features, steps]`` (interaction methods): the features are
    the attributed source positions, then the attributed target positions, both padded as the attributions."""
    completeness: Completeness | None = None
    """Each step's convergence delta and ``f(input) - f(baseline)``, from path methods: the engine warns
    where the attributions miss completeness (`seqattr.methods.convergence`)."""
    step_logits: Tensor | None = None
    """``[batch, steps, vocab]``: every real step's next-token logits on the unperturbed batch, when the
    method's own passes computed them (`CleanLogits`); the engine then scores the steps and builds the
    generation trace from them instead of running a pass of its own."""


class CleanLogits:
    """The step logits of a method's passes over the unperturbed batch, collected piece by piece.

    A method that evaluates its objective on the clean embeddings anyway (the clean row of occlusion, the one
    forward of saliency or attention) keeps those logits: the step scores and the trace then cost no extra
    pass. `logits` is None unless every real step (``batch.step_mask``) of every example was recorded.

    Example:
        >>> record = CleanLogits(batch)                                  # doctest: +SKIP
        >>> with record.kept_by(inputs.objective):                       # doctest: +SKIP
        ...     scores = inputs.objective(inputs.source_embeds, inputs.target_embeds)
        >>> record.logits.shape                       # [batch, steps, vocab]  # doctest: +SKIP
    """

    def __init__(self, batch: AttributionBatch) -> None:
        self.batch = batch
        self._values: Tensor | None = None
        self._covered = torch.zeros(batch.size, batch.num_steps, dtype=torch.bool)

    def add(self, rows: Int[Tensor, " n"], steps: slice, logits: Float[Tensor, "n steps vocab"]) -> None:
        """Record ``logits`` of the steps ``steps`` for the batch examples ``rows`` (clean copies)."""
        if self._values is None:
            self._values = logits.new_zeros(self.batch.size, self.batch.num_steps, logits.shape[-1])
        columns = torch.arange(self.batch.num_steps)[steps]
        index = rows.to(self._values.device)
        self._values[index[:, None], columns.to(self._values.device)[None, :]] = logits.detach()
        self._covered[rows.cpu()[:, None], columns[None, :]] = True

    @property
    def logits(self) -> Float[Tensor, "batch steps vocab"] | None:
        if self._values is None or not bool(self._covered[self.batch.step_mask.cpu()].all()):
            return None
        return self._values

    @contextlib.contextmanager
    def kept_by(self, objective: Any) -> Iterator[CleanLogits]:
        """Inside the block, ``objective``'s calls are on the clean embeddings: their logits are recorded."""
        previous = getattr(objective, "clean_logits", None)
        objective.clean_logits = self
        try:
            yield self
        finally:
            objective.clean_logits = previous


@dataclass
class NoOptions(MethodOptions):
    """Options of a method that has none."""


_METHODS: dict[str, type[AttributionMethod]] = {}

LOADING_KEYWORDS = frozenset(
    {
        "attn_implementation",
        "cache_dir",
        "device_map",
        "force_download",
        "gguf_file",
        "load_in_4bit",
        "load_in_8bit",
        "local_files_only",
        "low_cpu_mem_usage",
        "max_memory",
        "offload_folder",
        "quantization_config",
        "revision",
        "subfolder",
        "token",
        "torch_dtype",
        "trust_remote_code",
        "use_safetensors",
    }
)
"""Keywords of transformers' ``from_pretrained``: given to a method as options by mistake, the error says
they go in ``load_model(..., model_kwargs={...})``."""


def _default(option: dataclasses.Field) -> Any:
    return None if option.default is dataclasses.MISSING else option.default


_SPELLED_BOOLS = {
    **dict.fromkeys(("true", "yes", "on", "1"), True),
    **dict.fromkeys(("false", "no", "off", "0"), False),
}
"""Strings a user may mean as a bool (``"false"`` would be truthy): the error suggests the bool."""
_PLAIN_TYPES = {"bool": "True or False", "int": "an integer", "float": "a number", "str": "a string"}


def check_option_type(method: str, name: str, declared: str, value: Any, default: Any = None) -> Any:
    """``value`` of the option ``name`` declared as ``declared`` (the dataclass field's annotation string),
    refused with a TypeError that names the option, the value and the fix (``default`` as the example of a
    right value, when given) when its type is wrong.

    Only annotations made of plain types are checked (``bool``, ``int``, ``float``, ``str``, each possibly
    ``| None``, and ``Literal`` strings such as ``int | Literal["auto"]``); richer ones (tensors, modules,
    lists) are left to the options' ``validate``. A bool is never
    an int or a float here (``window=True`` is a mistake, not 1), a string never a bool (``"false"`` would
    be truthy), a float never an int (``n_steps=8.0``). NumPy scalars are accepted and made Python ones.

    Example:
        >>> check_option_type("occlusion", "window", "int", np.int64(3))
        3
        >>> check_option_type("occlusion", "window", "int", True, default=1)
        Traceback (most recent call last):
        ...
        TypeError: occlusion option window must be an integer, got True (bool); pass e.g. window=1
        >>> check_option_type("integrated_gradients", "n_steps", 'int | Literal["auto"]', "auto")
        'auto'
        >>> check_option_type("ig", "tolerance", "float | None", "0.01")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: ig option tolerance must be a number or None, got '0.01' (str); pass ..., tolerance=0.01
    """
    kinds = [part.strip() for part in declared.split("|")]
    optional = "None" in kinds
    kinds = [kind for kind in kinds if kind != "None"]
    spelled = [kind[len("Literal[") : -1] for kind in kinds if kind.startswith("Literal[")]
    literals = [value for inside in spelled for value in ast.literal_eval(f"[{inside}]")]
    kinds = [kind for kind in kinds if not kind.startswith("Literal[")]
    if not kinds or any(kind not in _PLAIN_TYPES for kind in kinds):
        return value
    if value is None and optional:
        return value
    if isinstance(value, str) and value in literals:
        return value
    if isinstance(value, np.generic) and not isinstance(value, np.str_):
        value = value.item()  # np.bool_ -> bool, np.int64 -> int, np.float32 -> float
    for kind in kinds:
        if kind == "bool" and isinstance(value, bool):
            return value
        if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if kind == "str" and isinstance(value, str):
            return value
    wanted = " or ".join([_PLAIN_TYPES[kind] for kind in kinds] + [repr(v) for v in literals])
    wanted += " or None" if optional else ""
    if kinds == ["bool"] and isinstance(value, str) and value.strip().lower() in _SPELLED_BOOLS:
        fix = f"pass {name}={_SPELLED_BOOLS[value.strip().lower()]}"
    elif kinds == ["bool"]:
        fix = f"pass {name}=True or {name}=False"
    elif kinds == ["int"] and isinstance(value, float) and value.is_integer():
        fix = f"pass {name}={int(value)}"
    elif isinstance(value, str) and value.strip().lower() in literals:
        fix = f"pass {name}={value.strip().lower()!r}"  # n_steps="Auto"
    elif isinstance(value, str) and (number := _spelled_number(value, kinds)) is not None:
        fix = f"pass the number, {name}={number!r}"  # tolerance="0.01", as read from a config file
    else:
        example = default if default is not None else {"int": 1, "float": 0.5, "str": "..."}[kinds[0]]
        fix = f"pass e.g. {name}={example!r}"
    raise TypeError(f"{method} option {name} must be {wanted}, got {value!r} ({type(value).__name__}); {fix}")


def _spelled_number(text: str, kinds: list[str]) -> int | float | None:
    """The number ``text`` spells, as the first of ``kinds`` (``"int"``, ``"float"``) that reads it; None if
    none does."""
    for kind in kinds:
        try:
            return {"int": int, "float": float}[kind](text) if kind in ("int", "float") else None
        except ValueError:
            continue
    return None


class AttributionMethod:
    """Base class of attribution methods. Subclasses set ``name`` and implement the two paths."""

    name: ClassVar[str]
    unitless: ClassVar[bool] = False
    """True when the raw scores have no unit a reader can interpret (plain gradients, whose size depends on
    the embedding scale); the terminal view then shows them normalised per step unless asked for raw."""
    Options: ClassVar[type] = NoOptions
    """A dataclass of the method's keyword options, with their defaults."""
    keeps_clean_logits: ClassVar[bool] = False
    """True when the fused path runs the model on the clean batch anyway and returns those passes' logits
    (`MethodOutput.step_logits`); the engine then scores the steps from them after the method, not before."""
    attributes_function: ClassVar[bool] = True
    """The method explains the attributed function (``attributed_fn=``); False for methods that read the
    model's internals instead (attention weights, value zeroing), which cannot explain a quantity of
    interest (`seqattr.qoi`)."""

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
        """The method's options from keyword arguments: an unknown one is refused with the valid names, and
        one declared as a plain type (``bool``, ``int``, ``float``, ``str``, optionally ``| None``) must have
        that type (see `check_option_type`).

        Example:
            >>> from seqattr.methods.integrated_gradients import IntegratedGradients
            >>> IntegratedGradients.parse_options(n_steps=8).n_steps
            8
            >>> IntegratedGradients.parse_options(return_convergence_delta="false")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            TypeError: ... must be True or False, got 'false' (str); pass return_convergence_delta=False
        """
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        declared = {name: f.type for name, f in fields.items()}
        unknown = sorted(set(kwargs) - set(declared))
        if unknown:
            listed = ", ".join(sorted(declared)) or "none"
            message = f"{cls.name} got unknown option(s) {', '.join(unknown)}; its options are: {listed}"
            loading = [name for name in unknown if name in LOADING_KEYWORDS]
            if loading:
                passed = ", ".join(f"{name!r}: ..." for name in loading)
                what = "a loading keyword" if len(loading) == 1 else "loading keywords"
                message += (
                    f". {', '.join(loading)}: {what} of from_pretrained, not a method option; pass "
                    f"load_model(..., model_kwargs={{{passed}}})"
                )
            if "qoi" in unknown:
                message += ". A quantity of interest is the attributed function: attributed_fn=seqattr.qoi..."
            if {"doi", "rebatch_size"} & set(unknown) and cls.name != "internal_influence":
                message += ". doi= and rebatch_size= are options of method='internal_influence'"
            raise TypeError(message)
        kwargs = {
            name: check_option_type(cls.name, name, declared[name], value, _default(fields[name]))
            for name, value in kwargs.items()
        }
        options = cls.Options(**kwargs)
        validate = getattr(options, "validate", None)
        if validate is not None:
            validate()
        return options

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


def output_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the attributions of a computation in ``dtype``: float64 stays float64 (a float64 model's
    attributions keep their precision), any other becomes float32 (which holds float16 and bfloat16 exactly).

    Example:
        >>> output_dtype(torch.float64), output_dtype(torch.bfloat16)
        (torch.float64, torch.float32)
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


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
