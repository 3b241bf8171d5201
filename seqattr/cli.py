"""Command line: ``seqattr attribute -m MODEL -a METHOD -i TEXT [-o out.json]``.

Example:
    $ seqattr attribute -a saliency -i "The capital of France is" --max-new-tokens 8
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

from seqattr.methods import list_methods
from seqattr.step_functions import list_step_functions


def _option_value(text: str):
    """Method options arrive as ``name=value``; values are JSON where they parse (numbers, booleans, null)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _import_plugin(name: str) -> None:
    """Import a module (dotted name) or a ``.py`` file, so that its ``register_step_function`` calls run."""
    if name.endswith(".py") or Path(name).is_file():
        spec = importlib.util.spec_from_file_location(Path(name).stem, name)
        if spec is None or spec.loader is None:
            raise ValueError(f"--import: cannot load {name!r} as a Python file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        importlib.import_module(name)


def _add_import_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import a module or .py file first (e.g. one that registers step functions), repeatable",
    )


def _pairs(items: list[str], flag: str) -> dict:
    """``NAME=VALUE`` items as a dict; values are JSON where they parse (numbers, booleans, null)."""
    parsed = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{flag} takes NAME=VALUE, got {item!r}")
        parsed[name] = _option_value(value)
    return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqattr", description="Explain generative language models token by token."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    attribute = commands.add_parser(
        "attribute", help="attribute a generation (or a forced output) to its inputs"
    )
    attribute.add_argument(
        "-m", "--model", default=None, help="hub id, folder or .gguf file (default: SmolLM2-135M-Instruct)"
    )
    attribute.add_argument(
        "-a", "--method", default="saliency", help="attribution method (see `seqattr methods`)"
    )
    attribute.add_argument("-i", "--input-texts", nargs="+", required=True, help="input text(s)")
    attribute.add_argument("-g", "--generated-texts", nargs="+", default=None, help="forced output text(s)")
    attribute.add_argument("-o", "--output", default=None, help="save the output to this JSON file")
    attribute.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate (default 20)")
    attribute.add_argument(
        "--step-scores", nargs="+", default=[], help="step functions to score at every step"
    )
    attribute.add_argument(
        "--attributed-fn", default=None, help="step function to attribute (default probability)"
    )
    attribute.add_argument(
        "--step-scores-args",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="options of the step scores, e.g. top_p=0.8",
    )
    attribute.add_argument(
        "--attributed-fn-args",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="options of the attributed function",
    )
    attribute.add_argument(
        "--contrast-targets",
        nargs="+",
        default=None,
        help="alternative output text(s) for contrastive step functions",
    )
    attribute.add_argument(
        "--contrast-sources",
        nargs="+",
        default=None,
        help="alternative input text(s) for contrastive step functions",
    )
    attribute.add_argument(
        "--contrast-alignments",
        default=None,
        help="'auto' or JSON pairs of continuation indices, e.g. '[[0,0],[1,2]]'",
    )
    attribute.add_argument(
        "--trace-top-k", type=int, default=5, help="alternatives per step in the trace (default 5)"
    )
    attribute.add_argument(
        "--attribute-target", action="store_true", help="also attribute to the target prefix"
    )
    attribute.add_argument("--attr-pos-start", type=int, default=None)
    attribute.add_argument("--attr-pos-end", type=int, default=None)
    attribute.add_argument("--batch-size", type=int, default=None)
    attribute.add_argument("--device", default=None)
    attribute.add_argument("--dtype", default=None)
    attribute.add_argument(
        "--stepwise", action="store_true", help="run the stepwise reference instead of the fused engine"
    )
    attribute.add_argument(
        "--option", action="append", default=[], metavar="NAME=VALUE", help="a method option, repeatable"
    )
    attribute.add_argument("--no-show", action="store_true", help="do not print the heatmap")
    _add_import_argument(attribute)

    commands.add_parser("methods", help="list attribution methods")
    _add_import_argument(commands.add_parser("step-functions", help="list step functions"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "methods":
        for name, description in list_methods().items():
            print(f"{name:40s} {description}")
        return 0
    try:
        for plugin in args.imports:
            _import_plugin(plugin)
    except (ImportError, OSError, ValueError) as err:
        print(f"seqattr: error: --import failed: {err}", file=sys.stderr)
        return 2
    if args.command == "step-functions":
        for name, description in list_step_functions().items():
            print(f"{name:30s} {description}")
        return 0

    import seqattr

    method_options = {}
    for item in args.option:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"seqattr: --option takes NAME=VALUE, got {item!r}", file=sys.stderr)
            return 2
        method_options[name] = _option_value(value)
    try:
        alignments = args.contrast_alignments
        if alignments is not None and alignments != "auto":
            try:
                alignments = json.loads(alignments)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"--contrast-alignments takes 'auto' or JSON pairs like '[[0,0],[1,2]]': {err}"
                ) from err
        step_scores_args = _pairs(args.step_scores_args, "--step-scores-args")
        attributed_fn_args = _pairs(args.attributed_fn_args, "--attributed-fn-args")
        model = seqattr.load_model(
            args.model, args.method, device=args.device, dtype=args.dtype, **method_options
        )
        generation_args = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
        out = model.attribute(
            args.input_texts,
            args.generated_texts,
            generation_args=generation_args,
            step_scores=args.step_scores,
            attributed_fn=args.attributed_fn,
            step_scores_args=step_scores_args,
            attributed_fn_args=attributed_fn_args,
            contrast_targets=args.contrast_targets,
            contrast_sources=args.contrast_sources,
            contrast_targets_alignments=alignments,
            trace_top_k=args.trace_top_k,
            attribute_target=args.attribute_target,
            attr_pos_start=args.attr_pos_start,
            attr_pos_end=args.attr_pos_end,
            batch_size=args.batch_size,
            fused=not args.stepwise,
        )
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"seqattr: error: {err}", file=sys.stderr)
        return 2
    if not args.no_show:
        out.show()
    if args.output:
        out.save(args.output)
        print(f"saved to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
