"""Command line: ``seqattr attribute -m MODEL -a METHOD -i TEXT [-o out.json]``.

Example:
    $ seqattr attribute -a saliency -i "The capital of France is" --max-new-tokens 8
"""

from __future__ import annotations

import argparse
import json
import sys

from seqattr.methods import list_methods
from seqattr.step_functions import list_step_functions


def _option_value(text: str):
    """Method options arrive as ``name=value``; values are JSON where they parse (numbers, booleans, null)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqattr", description="Explain generative language models token by token.")
    commands = parser.add_subparsers(dest="command", required=True)

    attribute = commands.add_parser("attribute", help="attribute a generation (or a forced output) to its inputs")
    attribute.add_argument("-m", "--model", default=None, help="hub id, folder or .gguf file (default: SmolLM2-135M-Instruct)")
    attribute.add_argument("-a", "--method", default="saliency", help="attribution method (see `seqattr methods`)")
    attribute.add_argument("-i", "--input-texts", nargs="+", required=True, help="input text(s)")
    attribute.add_argument("-g", "--generated-texts", nargs="+", default=None, help="forced output text(s)")
    attribute.add_argument("-o", "--output", default=None, help="save the output to this JSON file")
    attribute.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate (default 20)")
    attribute.add_argument("--step-scores", nargs="+", default=[], help="step functions to score at every step")
    attribute.add_argument("--attributed-fn", default=None, help="step function to attribute (default probability)")
    attribute.add_argument("--attribute-target", action="store_true", help="also attribute to the target prefix")
    attribute.add_argument("--attr-pos-start", type=int, default=None)
    attribute.add_argument("--attr-pos-end", type=int, default=None)
    attribute.add_argument("--batch-size", type=int, default=None)
    attribute.add_argument("--device", default=None)
    attribute.add_argument("--dtype", default=None)
    attribute.add_argument("--stepwise", action="store_true", help="run the stepwise reference instead of the fused engine")
    attribute.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", help="a method option, repeatable")
    attribute.add_argument("--no-show", action="store_true", help="do not print the heatmap")

    commands.add_parser("methods", help="list attribution methods")
    commands.add_parser("step-functions", help="list step functions")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "methods":
        for name, description in list_methods().items():
            print(f"{name:40s} {description}")
        return 0
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
        model = seqattr.load_model(args.model, args.method, device=args.device, dtype=args.dtype, **method_options)
        generation_args = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
        out = model.attribute(
            args.input_texts,
            args.generated_texts,
            generation_args=generation_args,
            step_scores=args.step_scores,
            attributed_fn=args.attributed_fn,
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
