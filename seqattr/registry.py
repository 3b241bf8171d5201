"""Looking a thing up by name in a table of named ones, or taking the callable a user passes instead.

Reductions (``seqattr.reductions``) and step functions (``seqattr.step_functions``) are both given as a name
or as a function; `name_or_callable` is their one lookup, so an unknown name is refused the same way, with
the valid names and how to pass one's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def name_or_callable(table: Mapping[str, Any], key: Any, kind: str, own: str, sort: bool = False) -> Any:
    """``key`` itself when it is callable, else ``table[key]``; an unknown name raises a ValueError naming
    the ``kind``, the valid names (in the table's order, or sorted) and ``own``, how to pass one's own.

    Example:
        >>> table = {"double": lambda x: 2 * x}
        >>> name_or_callable(table, "double", "operation", ", or pass a callable")(3)
        6
        >>> name_or_callable(table, "triple", "operation", ", or pass a callable")
        Traceback (most recent call last):
        ...
        ValueError: unknown operation 'triple'; valid names: double, or pass a callable
    """
    if callable(key):
        return key
    if key not in table:
        names = sorted(table) if sort else list(table)
        raise ValueError(f"unknown {kind} {key!r}; valid names: {', '.join(names)}{own}")
    return table[key]
