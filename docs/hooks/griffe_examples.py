"""Griffe extension for the API reference: seqattr's docstrings head their doctests ``Example:``, a section
name the Google-style parser reads as an admonition (its ``>>>`` lines then render as nested block quotes);
renamed ``Examples:`` they render as Python code with their outputs. Wired in ``mkdocs.yml``."""

from __future__ import annotations

import re
from typing import Any

import griffe

EXAMPLE_HEADER = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = EXAMPLE_HEADER.sub(r"\1Examples:", obj.docstring.value)
