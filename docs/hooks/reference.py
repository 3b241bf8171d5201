"""MkDocs hook: the reference pages and the tutorial pages, generated from the code at every build (no drift).

- ``reference/api.md``: every name of ``seqattr.__all__`` (mkdocstrings renders each from its docstring);
  the output classes (and the generation trace) get their own page, ``reference/outputs.md``.
- ``reference/methods.md``: every registered attribution method (``seqattr.list_methods()``) with an options
  table read from its ``Options`` dataclass (names, types, defaults, the attribute docstrings), so a new
  method appears without editing the docs.
- ``reference/step_functions.md``: every registered step function, its options and its description.
- ``reference/cli.md``: the ``--help`` of ``seqattr`` and of each subcommand, from
  ``seqattr.cli.build_parser()``.
- ``tutorials/<name>.md``: each notebook ``docs/tutorials/<name>.ipynb`` as a page (markdown cells as they
  are, code cells as Python blocks; the notebooks are stored without outputs and executed by the tests).

Wired in ``mkdocs.yml`` (``hooks:``); this folder is excluded from the site (``exclude_docs``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import os
import sys
import textwrap
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the checkout's seqattr, whatever is installed

OUTPUT_CLASSES = ("AttributionOutput", "SequenceAttribution")
"""Names of ``seqattr.__all__`` documented on the output-classes page rather than the API page."""


def _cell(text: str) -> str:
    """A markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def attribute_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings (a string literal right after an annotated field) of ``cls`` and its bases,
    the subclass's winning: dataclass fields keep no docstring at runtime, the source does."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f"`{field.default_factory()!r}`"  # type: ignore[misc]
    return "required"


def options_table(options: type) -> str:
    """A markdown table of an options dataclass: name, type, default, description."""
    fields = dataclasses.fields(options)
    if not fields:
        return "This method has no options.\n"
    docs = attribute_docs(options)
    lines = ["| option | type | default | description |", "|---|---|---|---|"]
    for field in fields:
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        description = _cell(docs.get(field.name, ""))
        lines.append(f"| `{field.name}` | `{_cell(kind)}` | {_cell(_default(field))} | {description} |")
    return "\n".join(lines) + "\n"


def methods_page() -> str:
    from seqattr.methods import list_methods
    from seqattr.methods.base import get_method_class

    methods = list_methods()
    parts = [
        "# Attribution methods\n",
        "Every method registered in `seqattr` (`seqattr.list_methods()`), generated from the code: the",
        "options tables come from each method's `Options` dataclass. Pass options as keyword arguments of",
        '`seqattr.load_model(model, "name", **options)` (or of `attribute()`, for one call), or',
        "`--option name=value` on the command line. See [gradient methods](../methods_gradient.md)",
        "and [perturbation and internals methods](../methods_perturbation.md) for what each one computes.\n",
        "| method | description |",
        "|---|---|",
    ]
    parts += [f"| [`{name}`](#{name}) | {_cell(summary)} |" for name, summary in methods.items()]
    for name in methods:
        cls = get_method_class(name)
        doc = inspect.cleandoc(cls.__doc__ or "")
        parts += [
            f"\n## `{name}` {{#{name}}}\n",
            doc + "\n",
            f"Class `{cls.__module__}.{cls.__qualname__}`; options class "
            f"`{cls.Options.__qualname__}`.\n",
            options_table(cls.Options),
        ]
    return "\n".join(parts)


def step_functions_page() -> str:
    from seqattr.step_functions import _REGISTRY, is_contrastive

    parts = [
        "# Step functions\n",
        "What is attributed (`attributed_fn=`) and scored (`step_scores=`) at each step: every registered",
        "step function (`seqattr.list_step_functions()`), generated from the code. Options are the",
        "function's keyword-only parameters, set with `attributed_fn_args={...}` / `step_scores_args={...}`.",
        "Contrastive ones need `contrast_targets=` and/or `contrast_sources=`. See",
        "[step functions](../step_functions.md) for the guide.\n",
        "| name | options | contrastive | description |",
        "|---|---|---|---|",
    ]
    for name, entry in sorted(_REGISTRY.items()):
        signature = inspect.signature(entry.fn)
        options = ", ".join(
            f"`{p.name}={p.default!r}`"
            for p in signature.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        )
        contrastive = "yes" if is_contrastive(entry.fn) else ""
        parts.append(f"| `{name}` | {options or '—'} | {contrastive} | {_cell(entry.description)} |")
    parts += [
        "\nEach receives a [`StepFunctionArgs`](api.md#seqattr.StepFunctionArgs) and returns one number per",
        "sequence and step; add your own with",
        "[`register_step_function`](api.md#seqattr.register_step_function).\n",
    ]
    return "\n".join(parts)


def cli_page() -> str:
    from seqattr.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal's width: a fixed one for a stable page
    try:
        parser = build_parser()
        parts = [
            "# Command line\n",
            "The `--help` of `seqattr` and of each subcommand, generated from `seqattr.cli.build_parser()`",
            "when the site is built. See the [usage guide](../usage.md) for examples.\n",
            "## `seqattr`\n",
            "```text\n" + parser.format_help().rstrip() + "\n```\n",
        ]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, subparser in action.choices.items():
                    parts += [
                        f"## `seqattr {name}` {{#{name}}}\n",
                        "```text\n" + subparser.format_help().rstrip() + "\n```\n",
                    ]
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(parts)


def api_page() -> str:
    import seqattr

    parts = [
        "# API reference\n",
        "Every public name of `seqattr` (`seqattr.__all__`); the output classes are on",
        "[their own page](outputs.md).\n",
    ]
    for name in seqattr.__all__:
        if name in OUTPUT_CLASSES:
            parts.append(f"- [`seqattr.{name}`](outputs.md#seqattr.{name})")
    parts.append("")
    for name in seqattr.__all__:
        if name not in OUTPUT_CLASSES:
            parts.append(f"::: seqattr.{name}\n")
    import seqattr.analysis

    # Imported on its own (`import seqattr.analysis`): the dataset-level statistics and report.
    parts.append("## Dataset analysis\n")
    parts += [f"::: seqattr.analysis.{name}\n" for name in seqattr.analysis.__all__]
    # Quantities of interest and attribution to internal cuts (docs/interactions_and_internals.md).
    parts.append("## Quantities of interest and internal cuts\n")
    quantities = ("neuron", "neurons", "head", "direction", "activation")
    parts += [f"::: seqattr.qoi.{name}\n" for name in quantities]
    parts += ["::: seqattr.methods.internal_influence.top_units\n", "::: seqattr.cuts.resolve_module\n"]
    return "\n".join(parts)


def outputs_page() -> str:
    parts = [
        "# Output classes\n",
        "What `attribute()` returns: an `AttributionOutput` holding one `SequenceAttribution` per example,",
        "each with its per-step `GenerationTrace`. See [views and aggregation](../views_and_aggregation.md)",
        "for the guide.\n",
    ]
    # The view methods (show, to_html, plot, ...) are inherited from seqattr.data.views.Views.
    parts += [f"::: seqattr.{name}\n    options:\n      inherited_members: true\n" for name in OUTPUT_CLASSES]
    parts.append("::: seqattr.trace.GenerationTrace\n")
    return "\n".join(parts)


def notebook_page(path: Path) -> str:
    """A notebook as markdown: its markdown cells, its code cells as Python blocks, a note on running it."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    parts = []
    for index, cell in enumerate(notebook["cells"]):
        source = "".join(cell["source"]).rstrip()
        if cell["cell_type"] == "markdown":
            parts.append(source + "\n")
            if index == 0:
                parts.append(
                    f"!!! note\n    This page is the notebook `docs/tutorials/{path.name}`: run it in "
                    "Jupyter to see the outputs. The test suite executes it (`tests/test_tutorials.py`).\n"
                )
        elif cell["cell_type"] == "code" and source:
            parts.append(f"```python\n{source}\n```\n")
    return "\n".join(parts)


GENERATED = {
    "reference/api.md": api_page,
    "reference/outputs.md": outputs_page,
    "reference/methods.md": methods_page,
    "reference/step_functions.md": step_functions_page,
    "reference/cli.md": cli_page,
}


def on_files(files, config):
    for path, page in GENERATED.items():
        files.append(File.generated(config, path, content=page()))
    for notebook in sorted((Path(config["docs_dir"]) / "tutorials").glob("*.ipynb")):
        files.append(File.generated(config, f"tutorials/{notebook.stem}.md", content=notebook_page(notebook)))
    return files
