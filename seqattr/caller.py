"""Where a warning should point: the user's line that called into seqattr, however deep the call went.

A fixed ``stacklevel`` is right only for one call depth; warnings raised deep inside an ``attribute()`` call
(or under wrappers that instrument seqattr, such as jaxtyping's run-time checks in the test suite) would
point into the library instead. `user_stacklevel` walks out of the stack to the first frame that is neither
seqattr's nor such a wrapper's (a module that sets ``__seqattr_wrapper__ = True``, or jaxtyping's).
"""

from __future__ import annotations

import sys
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent)


def _wrapper(frame) -> bool:
    module = frame.f_globals.get("__name__", "")
    return module.split(".")[0] == "jaxtyping" or bool(frame.f_globals.get("__seqattr_wrapper__"))


def _internal(frame) -> bool:
    return frame.f_code.co_filename.startswith(_PACKAGE) or _wrapper(frame)


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` called by the caller of this function that makes the
    warning point at the first frame outside seqattr.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warnings.warn("from here", stacklevel=user_stacklevel())
        >>> caught[0].filename.startswith("<doctest")        # called from outside seqattr: right here
        True
    """
    frame = sys._getframe(1)
    while frame.f_back is not None and _wrapper(frame):
        frame = frame.f_back  # wrappers around this function itself: the frame after them calls warn
    level = 1  # the frame calling warnings.warn is level 1
    while frame.f_back is not None and _internal(frame):
        frame, level = frame.f_back, level + 1
    return level
