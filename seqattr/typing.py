"""Shape aliases for the tensors that cross module boundaries.

Dimension names used throughout seqattr:

- ``batch``: examples in one model call (``n`` when copies of a batch are stacked, e.g. IG's interpolations);
- ``source_len``: encoder tokens (encoder-decoder models only);
- ``target_len``: decoder tokens (for decoder-only models: prompt + generation);
- ``steps``: generated tokens being explained; step ``t`` predicts one target token;
- ``hidden``: embedding size; ``vocab``: vocabulary size.
"""

from __future__ import annotations

import typing

from jaxtyping import Bool, Float, Int
from torch import Tensor

TokenIds = Int[Tensor, "batch seq"]
AttentionMask = Int[Tensor, "batch seq"]
Embeddings = Float[Tensor, "n seq hidden"]
StepLogits = Float[Tensor, "n steps vocab"]
StepScores = Float[Tensor, "n steps"]
StepMask = Bool[Tensor, "batch steps"]

__all__ = [
    "AttentionMask",
    "Bool",
    "Embeddings",
    "Float",
    "Int",
    "StepLogits",
    "StepMask",
    "StepScores",
    "Tensor",
    "TokenIds",
    "check_shapes",
]


def check_shapes(function):
    """A typechecker for jaxtyping's import hook that checks the array annotations only (shape and dtype of
    every ``Float[Tensor, "..."]``-style parameter and return value), leaving other hints to the function's
    own checks, so that its errors for a user's mistake stay the ones users see.

    The test suite runs with it (``--jaxtyping-packages=seqattr,seqattr.typing.check_shapes`` in
    pyproject's pytest options), so the shape annotations are checked, not decorative. Under the hook, a
    dimension name is bound once per call: ``"batch seq"`` on two parameters must agree.

    Example:
        >>> from jaxtyping import jaxtyped
        >>> @jaxtyped(typechecker=check_shapes)
        ... def total(x: Float[Tensor, "n steps"], weights: Float[Tensor, " steps"]) -> Float[Tensor, " n"]:
        ...     return x @ weights
        >>> total(torch.ones(2, 3), torch.ones(4))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        jaxtyping.TypeCheckError: Type-check error whilst checking the parameters of ...total.
        The problem arose whilst typechecking parameter 'weights'.
        ...
    """
    import functools
    import inspect

    from jaxtyping import AbstractArray

    def array_hint(annotation):
        """The annotation evaluated, if it is an array type or a union holding one (else None)."""
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, function.__globals__)  # noqa: S307 (the module's own annotations)
            except Exception:  # names imported only for type checking: not checked
                return None
        members = typing.get_args(annotation) or (annotation,)
        if any(isinstance(m, type) and issubclass(m, AbstractArray) for m in members):
            return tuple(type(None) if m is None else m for m in members if isinstance(m, type) or m is None)
        return None

    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return function
    hints = {name: array_hint(p.annotation) for name, p in signature.parameters.items()}
    hints = {name: hint for name, hint in hints.items() if hint is not None}
    returned = array_hint(signature.return_annotation)
    if not hints and returned is None:
        return function

    def check(what: str, value, hint: tuple) -> None:
        if not any(isinstance(value, member) for member in hint):
            described = (
                f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
                if isinstance(value, Tensor)
                else type(value).__name__
            )
            expected = " | ".join(getattr(m, "__name__", str(m)) for m in hint)
            raise TypeError(
                f"{function.__qualname__}: {what} is {described}, not {expected} "
                "(or its dimensions disagree with another argument's)"
            )

    @functools.wraps(function)
    def checked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        for name, hint in hints.items():
            if name in bound.arguments:
                check(name, bound.arguments[name], hint)
        result = function(*args, **kwargs)
        if returned is not None:
            check("the return value", result, returned)
        return result

    return checked
