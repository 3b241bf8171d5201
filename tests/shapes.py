"""``check_shapes``: the typechecker jaxtyping's import hook runs seqattr under in the test suite.

pyproject's pytest options say ``--jaxtyping-packages=seqattr,shapes.check_shapes``: every function of
seqattr is wrapped so that its array annotations (``Float[Tensor, "n steps"]`` and the like: shape, dtype,
and dimension names that must agree across the arguments of one call) are checked at every call while the
tests run, so the annotations are checked, not decorative. Other hints are left to the functions' own
checks, whose errors for a user's mistake are the ones the tests expect. (This module lives outside the
package: the hook imports it while seqattr itself is being imported.)
"""

from __future__ import annotations

import functools
import inspect
import types
import typing

from jaxtyping import AbstractArray
from torch import Tensor

__seqattr_wrapper__ = True  # warnings raised inside seqattr point past these wrappers (seqattr/caller.py)


def check_shapes(function):
    """A typechecker for jaxtyping's import hook that checks the array annotations only (shape and dtype of
    every ``Float[Tensor, "..."]``-style parameter and return value), leaving other hints to the function's
    own checks, so that its errors for a user's mistake stay the ones users see.

    Under the hook a dimension name is bound once per call: ``"batch seq"`` on two parameters must agree.
    """

    def array_hint(annotation):
        """The annotation evaluated, if it is an array type or a union holding one (else None)."""
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, function.__globals__)  # noqa: S307 (the module's own annotations)
            except Exception:  # names imported only for type checking: not checked
                return None
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        members = typing.get_args(annotation) if union else (annotation,)
        if any(isinstance(m, type) and issubclass(m, AbstractArray) for m in members):
            return tuple(type(None) if m is None else m for m in members if isinstance(m, type) or m is None)
        return None

    if inspect.isgeneratorfunction(function) or inspect.iscoroutinefunction(function):
        return function  # a wrapper would hide what it is (Captum, for one, asks)
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
