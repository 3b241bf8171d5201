"""What is attributed (``attributed_fn``) and scored (``step_scores``) at each generation step.

A step function maps the model's next-token logits at every explained step to one number per step. All steps
of a batch arrive together (``logits`` is ``[n, steps, vocab]``), so a score costs no extra forward pass.

Example:
    >>> import seqattr
    >>> def logit_margin(args):            # logit of the target minus the best other logit
    ...     target = args.logits.gather(-1, args.target_ids[..., None])[..., 0]
    ...     others = args.logits.scatter(-1, args.target_ids[..., None], float("-inf"))
    ...     return target - others.max(-1).values
    >>> seqattr.register_step_function(logit_margin, "logit_margin", description="target logit minus runner-up")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from seqattr.typing import Float, Int, StepScores, Tensor


@dataclass
class StepFunctionArgs:
    """Everything a step function may read, for ``n`` sequences and all their explained steps at once."""

    logits: Float[Tensor, "n steps vocab"]
    """Next-token logits at each explained step (the model's output just before the token is produced)."""
    target_ids: Int[Tensor, "n steps"]
    """The token each step produced (or was forced to produce)."""


StepFunction = Callable[[StepFunctionArgs], StepScores]


@dataclass(frozen=True)
class _Entry:
    fn: StepFunction
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_step_function(
    fn: StepFunction, name: str, *, description: str | None = None, overwrite: bool = False
) -> None:
    """Make ``fn`` usable by name as ``attributed_fn=`` or in ``step_scores=`` (and in the CLI).

    ``fn`` takes a `StepFunctionArgs` and returns a ``[n, steps]`` tensor. A name already taken is refused
    unless ``overwrite=True``.

    Example:
        >>> seqattr.register_step_function(lambda a: a.logits.amax(-1), "max_logit", description="top logit")
    """
    if not callable(fn):
        raise TypeError(f"register_step_function expects a callable, got {type(fn).__name__}")
    if not name or not isinstance(name, str):
        raise ValueError("a step function needs a non-empty string name")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a step function named {name!r} exists already; pass overwrite=True to replace it")
    if description is None:
        doc_lines = (fn.__doc__ or "").strip().splitlines()
        description = doc_lines[0] if doc_lines else ""
    _REGISTRY[name] = _Entry(fn, description)


def list_step_functions() -> dict[str, str]:
    """Names of the registered step functions with a one-line description each."""
    return {name: entry.description for name, entry in sorted(_REGISTRY.items())}


def get_step_function(name_or_fn: str | StepFunction) -> StepFunction:
    """The step function registered under ``name_or_fn`` (a callable is returned as it is)."""
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in _REGISTRY:
        raise ValueError(
            f"unknown step function {name_or_fn!r}; valid names: {', '.join(sorted(_REGISTRY))}. "
            "Add your own with seqattr.register_step_function(fn, name)."
        )
    return _REGISTRY[name_or_fn].fn


def step_function_name(name_or_fn: str | StepFunction) -> str:
    if isinstance(name_or_fn, str):
        return name_or_fn
    for name, entry in _REGISTRY.items():
        if entry.fn is name_or_fn:
            return name
    return getattr(name_or_fn, "__name__", repr(name_or_fn))


def _target_logprob(args: StepFunctionArgs) -> StepScores:
    return torch.log_softmax(args.logits.float(), dim=-1).gather(-1, args.target_ids[..., None])[..., 0]


def probability(args: StepFunctionArgs) -> StepScores:
    """Probability of the target token."""
    return _target_logprob(args).exp()


def logprob(args: StepFunctionArgs) -> StepScores:
    """Log-probability of the target token."""
    return _target_logprob(args)


def logit(args: StepFunctionArgs) -> StepScores:
    """Raw logit of the target token."""
    return args.logits.gather(-1, args.target_ids[..., None])[..., 0]


for _fn in (probability, logprob, logit):
    register_step_function(_fn, _fn.__name__)
