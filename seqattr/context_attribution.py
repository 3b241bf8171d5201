"""Which part of the context made the model say this? The PECoRe framework (Sarti et al. 2024,
"Quantifying the Plausibility of Context Reliance in Neural Machine Translation"), as Inseq's
``attribute-context`` runs it.

Two steps over one output generated (or forced) with the context:

1. **Context-sensitive token identification (CTI).** Every token of the current output is scored by a
   contrastive step function (default ``kl_divergence``) between the model's next-token distribution with
   the context and without it, the same output prefix forced in both. Tokens whose ``|score|`` reaches
   ``mean + n * std`` of the scores (``context_sensitivity_std_threshold``, the unbiased std; with one score
   or ``n = 0`` the mean) are selected, most sensitive first, optionally only the ``context_sensitivity_topk``
   first.
2. **Contextual cue imputation (CCI).** Each selected token is attributed (any seqattr method, default the
   model's) with a contrastive attributed function (default ``contrast_prob_diff``: p(token | with context) -
   p(token | without context)); its scores over the context tokens are its cues, selected the same way
   (``attribution_std_threshold``, ``attribution_topk``).

Both steps come from ONE attribution call (seqattr explains every step of a sequence in one pass): the
contrast is the contextless input (``contrast_sources``) continued with the same output tokens, the CTI metric
is a step score and the CCI function the attributed function; a token's cues are its column of the
attributions, read at the context positions.

Inputs. Decoder-only: the prompt is ``input_template`` (default ``"{context} {current}"``) filled with the
input context and current text, then ``decoder_input_output_separator`` and the output, itself
``output_template`` (default ``"{context} {current}"`` with an output context, ``"{current}"`` without); the
contextless prompt is ``contextless_input_current_text`` (default ``"{current}"``) and
``contextless_output_current_text`` (default ``"{current}"``). Encoder-decoder: the encoder reads the filled
input template (contextless: the contextless input), the decoder the filled output template (an output context
is a forced target prefix, attributed with ``attribute_target``).

Example:
    >>> result = seqattr.attribute_context(model, "the cat sat on the", "a dog ran home",
    ...                                    output_current_text="mat and the dog sat")
    >>> result.output_current_tokens
    ['Ġmat', 'Ġand', 'Ġthe', 'Ġd', 'og', 'Ġs', 'at']
    >>> [t.token for t in result.sensitive_tokens]         # KL with/without context above mean + 1 std
    ['Ġd']
    >>> [cue.token for cue in result.sensitive_tokens[0].cues]
    ['ran', 'om']
"""

from __future__ import annotations

import dataclasses
import json
import math
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from seqattr.step_functions import get_step_function, is_contrastive, step_function_name

if TYPE_CHECKING:
    from seqattr.models.attribution_model import AttributionModel

FORMAT = "seqattr-context-attribution"
FORMAT_VERSION = 1


@dataclass
class Cue:
    """One context token's score for a context-sensitive token: ``side`` is ``"input"`` (input context) or
    ``"output"`` (output context); ``position`` its index among that context's tokens."""

    token: str
    score: float
    side: str
    position: int


@dataclass
class SensitiveToken:
    """A context-sensitive output token: its index among the current output's tokens, its CTI score, the
    scores of every context token for it (``input_context_scores``, ``output_context_scores``: one per token
    of ``input_context_tokens`` / ``output_context_tokens``, None without that context), the threshold its
    cues passed and the cues, strongest first."""

    index: int
    token: str
    score: float
    input_context_scores: list[float] | None
    output_context_scores: list[float] | None
    cue_threshold: float
    cues: list[Cue] = field(default_factory=list)


@dataclass
class ContextAttributionOutput:
    """The result of `attribute_context`: CTI scores of every current output token, the selected tokens
    and, for each, its contextual cues.

    Example:
        >>> result = seqattr.attribute_context(model, "the cat sat on the", "a dog ran home", "mat and")
        >>> result.output_current_tokens, [round(s, 2) for s in result.cti_scores]   # doctest: +SKIP
        (['Ġmat', 'Ġand'], [0.81, 0.35])
        >>> result.save(tmp / "pecore.json"); ContextAttributionOutput.load(tmp / "pecore.json") == result
        True
    """

    input_context: str | None
    input_current: str
    output_context: str | None
    output_current: str
    input_context_tokens: list[str] | None
    output_context_tokens: list[str] | None
    output_current_tokens: list[str]
    cti_metric: str
    cti_scores: list[float]
    cti_threshold: float
    sensitive_tokens: list[SensitiveToken]
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    def save(self, path: str | Path) -> None:
        """Write the result as JSON (`load` reads it back)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> ContextAttributionOutput:
        """Read a result written by `save`.

        Example:
            >>> ContextAttributionOutput.load("pecore.json").sensitive_tokens   # doctest: +SKIP
        """
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a saved attribute_context result (no format {FORMAT!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path} has format version {data.get('format_version')}; this seqattr reads {FORMAT_VERSION}"
            )
        data = {k: v for k, v in data.items() if k not in ("format", "format_version")}
        data["sensitive_tokens"] = [
            SensitiveToken(**{**t, "cues": [Cue(**c) for c in t["cues"]]}) for t in data["sensitive_tokens"]
        ]
        return cls(**data)

    def show(self, console: Any = None) -> None:
        """Print the CTI scores and each selected token's cues in the terminal."""
        from seqattr.viz.context_reliance import show_context_attribution

        show_context_attribution(self, console)

    def to_html(self) -> str:
        """A self-contained HTML page of the result (`save_html` writes it)."""
        from seqattr.viz.context_reliance import context_attribution_html

        return context_attribution_html(self)

    def save_html(self, path: str | Path) -> None:
        """Write `to_html` to ``path``."""
        Path(path).write_text(self.to_html(), encoding="utf-8")

    def __repr__(self) -> str:
        selected = ", ".join(f"{t.token!r}" for t in self.sensitive_tokens)
        return (
            f"ContextAttributionOutput({len(self.output_current_tokens)} output tokens, "
            f"{self.cti_metric} > {self.cti_threshold:.4g}: [{selected}])"
        )


@dataclass
class _Layout:
    """Where the parts of the texts sit in one attribution call's output (positions are unpadded)."""

    current_start: int
    """The target position of the current output's first token."""
    input_context: list[int]
    """Positions of the input context's tokens (``source``: encoder-decoder, ``target``: decoder-only)."""
    output_context: list[int]
    """Target positions of the output context's tokens."""
    input_side: str
    """``"source"`` or ``"target"``: which attributions hold the input context's scores."""
    generated_text: str


def score_threshold(scores: Sequence[float], std_threshold: float | None) -> float:
    """``mean + std_threshold * std`` of ``scores`` (unbiased std), as Inseq's PECoRe: the mean with one score
    or ``std_threshold == 0``; 0 (everything passes) with no scores or ``std_threshold=None``.

    Example:
        >>> round(score_threshold([1.0, 2.0, 3.0], 1.0), 6)
        3.0
    """
    if std_threshold is None or not scores:
        return 0.0
    values = torch.tensor(list(scores), dtype=torch.float64)
    if std_threshold == 0 or len(scores) == 1:
        return float(values.mean())
    return float(values.mean() + std_threshold * values.std())


def select_scores(
    scores: Sequence[float], std_threshold: float | None, topk: int | None
) -> tuple[list[int], float]:
    """Indices of the scores whose magnitude reaches `score_threshold`, largest magnitude first, at most
    ``topk`` of them; and the threshold.

    Example:
        >>> select_scores([0.1, 0.9, 0.2, 0.15], 1.0, None)[0]
        [1]
    """
    threshold = score_threshold(scores, std_threshold)
    ranked = sorted(range(len(scores)), key=lambda i: abs(scores[i]), reverse=True)
    chosen = [i for i in ranked if abs(scores[i]) >= threshold]
    return (chosen[:topk] if topk else chosen), threshold


def _fields(template: str, argument: str) -> set[str]:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(f"{argument}={template!r} is not a valid template: {err}") from None
    unknown = names - {"context", "current"}
    if unknown:
        raise ValueError(
            f"{argument}={template!r} has the placeholder(s) {sorted(unknown)}; a template knows only "
            "{context} and {current} (write a literal brace as {{ or }})"
        )
    return names


def _fill(template: str, argument: str, current: str, context: str | None, needs_context: bool) -> str:
    """``template`` with its placeholders filled; its placeholders checked against what it must hold."""
    names = _fields(template, argument)
    if "current" not in names:
        raise ValueError(
            f"{argument}={template!r} has no {{current}} placeholder; add one, e.g. '{{current}}'"
        )
    if needs_context and "context" not in names:
        raise ValueError(
            f"{argument}={template!r} has no {{context}} placeholder, so the context would not be used; "
            "add one, e.g. '{context} {current}'"
        )
    if not needs_context and "context" in names:
        raise ValueError(
            f"{argument}={template!r} has a {{context}} placeholder but no context was given; pass the "
            "context or drop the placeholder"
        )
    return template.format(current=current, context=context)


def _span(template: str, current: str, context: str | None, name: str, offset: int) -> tuple[int, int]:
    """The character span ``[start, end)`` of the ``name`` field in the filled ``template`` (+ ``offset``)."""
    before = template.partition("{" + name + "}")[0].format(current=current, context=context)
    value = current if name == "current" else context
    return offset + len(before), offset + len(before) + len(value or "")


def _token_positions(
    model: AttributionModel, text: str, span: tuple[int, int], target: bool = False
) -> list[int]:
    """Positions of the tokens of ``tokenizer(text)`` whose characters overlap ``span`` (special tokens,
    which cover no characters, never do)."""
    if not getattr(model.tokenizer, "is_fast", False):
        raise ValueError(
            "attribute_context locates the context's tokens by character offsets, which needs a fast "
            "tokenizer; load the model with use_fast=True (transformers' AutoTokenizer default)"
        )
    offsets = (
        model.tokenizer(text_target=text, return_offsets_mapping=True)
        if target
        else model.tokenizer(text, return_offsets_mapping=True)
    )["offset_mapping"]
    start, end = span
    return [p for p, (a, b) in enumerate(offsets) if b > a and a < end and b > start]


def _check_text(value: Any, argument: str, required: bool) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{argument} must be a non-empty string, got {value!r}")


def attribute_context(
    model: AttributionModel,
    input_current_text: str | Sequence[str],
    input_context_text: str | Sequence[str] | None = None,
    output_current_text: str | Sequence[str] | None = None,
    output_context_text: str | Sequence[str] | None = None,
    *,
    input_template: str | None = None,
    output_template: str | None = None,
    contextless_input_current_text: str = "{current}",
    contextless_output_current_text: str = "{current}",
    decoder_input_output_separator: str = " ",
    method: str | None = None,
    attributed_fn: str = "contrast_prob_diff",
    attributed_fn_args: dict[str, Any] | None = None,
    context_sensitivity_metric: str = "kl_divergence",
    context_sensitivity_metric_args: dict[str, Any] | None = None,
    context_sensitivity_std_threshold: float | None = 1.0,
    context_sensitivity_topk: int | None = None,
    attribution_std_threshold: float | None = 1.0,
    attribution_topk: int | None = None,
    generation_args: dict[str, Any] | None = None,
    show_progress: bool = False,
    **method_kwargs: Any,
) -> ContextAttributionOutput | list[ContextAttributionOutput]:
    """Find the output tokens that depend on the context (CTI) and the context tokens they rely on (CCI).

    See the module docstring for the two steps and the templates. ``output_current_text`` forces the output
    (decoder-only: the continuation after the prompt, without the prompt); without it the model generates
    (``generation_args``, default ``max_new_tokens=20``). ``method`` and ``method_kwargs`` choose the CCI
    attribution method (default: the model's). Returns a `ContextAttributionOutput`.

    Several examples: give lists of texts (one per example; a single text, or None, is every example's) and
    get a list of results, equal to one call per example. The examples run in batches: one attribution call
    (with- and without-context passes, contrastive attribution) for all the examples that share the call's
    arguments: all forced or all generated, and on an encoder-decoder with an output context, the same first
    position of the current output.

    Example:
        >>> result = seqattr.attribute_context(model, "the cat sat on the", "a dog ran home",
        ...                                    output_current_text="mat and")
        >>> result.output_current_tokens, len(result.cti_scores)
        (['Ġmat', 'Ġand'], 2)
        >>> results = seqattr.attribute_context(model, ["the cat sat on the", "a bird"], "a dog ran home",
        ...                                     output_current_text=["mat and", "flew over"])
        >>> [r.output_current_tokens for r in results]
        [['Ġmat', 'Ġand'], ['Ġf', 'le', 'w', 'Ġo', 'v', 'er']]
    """
    several = any(
        isinstance(value, (list, tuple))
        for value in (input_current_text, input_context_text, output_current_text, output_context_text)
    )
    examples = _examples(input_current_text, input_context_text, output_current_text, output_context_text)
    for name, value in (
        ("context_sensitivity_std_threshold", context_sensitivity_std_threshold),
        ("attribution_std_threshold", attribution_std_threshold),
    ):
        if value is not None and (not isinstance(value, int | float) or not math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number (standard deviations) or None, got {value!r}")
    for name, value in (
        ("context_sensitivity_topk", context_sensitivity_topk),
        ("attribution_topk", attribution_topk),
    ):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    if not isinstance(decoder_input_output_separator, str):
        raise TypeError("decoder_input_output_separator must be a string (default ' ')")
    metric = get_step_function(context_sensitivity_metric)
    if not is_contrastive(metric):
        raise ValueError(
            f"context_sensitivity_metric={step_function_name(context_sensitivity_metric)!r} does not compare "
            "with and without the context; use a contrastive step function (kl_divergence, pcxmi, "
            "contrast_prob_diff, ...)"
        )
    if not model.family.generates:
        raise ValueError(f"attribute_context explains generated text; this is a {model.family} model")
    templates = _Templates(
        input_template,
        output_template,
        contextless_input_current_text,
        contextless_output_current_text,
        decoder_input_output_separator,
    )
    for argument, value in zip(
        (
            "input_template",
            "output_template",
            "contextless_input_current_text",
            "contextless_output_current_text",
        ),
        dataclasses.astuple(templates)[:4],
        strict=True,
    ):
        # The texts take one per example; a template is one for all (a list would reach str.format).
        if value is not None and not isinstance(value, str):
            raise TypeError(
                f"{argument} must be one string for every example (e.g. '{{current}}'), got "
                f"{type(value).__name__} {value!r}; the texts take one per example, the templates do not"
            )
    plans = [
        _plan(model, texts, templates, f"example {i}: " if several else "")
        for i, texts in enumerate(examples)
    ]
    name = step_function_name(context_sensitivity_metric)
    call = {
        "method": method,
        "attributed_fn": attributed_fn,
        "attributed_fn_args": attributed_fn_args,
        "step_scores": [context_sensitivity_metric],
        "step_scores_args": context_sensitivity_metric_args,
        "generation_args": generation_args,
        "show_progress": show_progress,
        **method_kwargs,
    }
    sequences = _attribute_plans(model, plans, call)
    thresholds = (
        context_sensitivity_std_threshold,
        context_sensitivity_topk,
        attribution_std_threshold,
        attribution_topk,
    )
    results = []
    for plan, seq in zip(plans, sequences, strict=True):
        result = _result(model, plan, seq, plan.finish(seq), name, thresholds)
        result.info.update(
            {
                "model": model.model_name,
                "method": method if method is not None else model.method_name,
                "attributed_fn": step_function_name(attributed_fn),
                "input_full_text": plan.input_text,
                "input_contextless_text": plan.contrast_source,
                "context_sensitivity_std_threshold": context_sensitivity_std_threshold,
                "context_sensitivity_topk": context_sensitivity_topk,
                "attribution_std_threshold": attribution_std_threshold,
                "attribution_topk": attribution_topk,
            }
        )
        results.append(result)
    return results if several else results[0]


def _examples(
    input_current: Any, input_context: Any, output_current: Any, output_context: Any
) -> list[tuple[Any, Any, Any, Any]]:
    """One ``(input current, input context, output current, output context)`` per example: a list gives one
    text per example, a single text (or None) is every example's."""
    values = {
        "input_current_text": input_current,
        "input_context_text": input_context,
        "output_current_text": output_current,
        "output_context_text": output_context,
    }
    lengths = {name: len(v) for name, v in values.items() if isinstance(v, (list, tuple))}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name}: {n}" for name, n in lengths.items())
        raise ValueError(f"the lists of texts have different lengths ({listed}); give one text per example")
    count = next(iter(lengths.values()), 1)
    if count == 0:
        raise ValueError("input_current_text is an empty list; give at least one example")
    return [
        tuple(v[i] if isinstance(v, (list, tuple)) else v for v in values.values())  # type: ignore[misc]
        for i in range(count)
    ]


@dataclass(frozen=True)
class _Templates:
    input: str | None
    output: str | None
    contextless_input: str
    contextless_output: str
    separator: str


@dataclass
class _Plan:
    """One example's part of an attribution call, and how to read its result (`finish`)."""

    input_current: str
    input_context: str | None
    output_current: str | None
    output_context: str | None
    input_text: str
    """The prompt (decoder-only) or the encoder's input, with the context."""
    forced: str | None
    contrast_source: str
    """The input without the context: the contrast of the call."""
    contrast_target: str | None
    attribute_target: bool | None
    attr_pos_start: int | None
    finish: Any
    """``finish(seq) -> _Layout``: where the parts of the texts sit in the example's output."""

    @property
    def group(self) -> tuple:
        """Examples of one group share one call: the arguments that are the call's, not an example's."""
        return (self.forced is None, self.contrast_target is None, self.attribute_target, self.attr_pos_start)


def _plan(model: AttributionModel, texts: tuple, templates: _Templates, where: str) -> _Plan:
    """Check one example's texts against the templates and plan its part of the attribution call."""
    input_current, input_context, output_current, output_context = texts
    _check_text(input_current, f"{where}input_current_text", True)
    if input_context is None and output_context is None:
        raise ValueError(
            f"{where}attribute_context needs a context: pass input_context_text= (and/or "
            "output_context_text=); without one there is nothing to compare the output with"
        )
    _check_text(input_context, f"{where}input_context_text", False)
    _check_text(output_context, f"{where}output_context_text", False)
    _check_text(output_current, f"{where}output_current_text", False)
    has_input_context = input_context is not None
    has_output_context = output_context is not None
    input_template = templates.input
    output_template = templates.output
    if input_template is None:
        input_template = "{context} {current}" if has_input_context else "{current}"
    if output_template is None:
        output_template = "{context} {current}" if has_output_context else "{current}"
    input_full = _fill(input_template, "input_template", input_current, input_context, has_input_context)
    input_contextless = _fill(
        templates.contextless_input, "contextless_input_current_text", input_current, None, False
    )
    if has_output_context and output_current is None:
        raise ValueError(
            f"{where}an output_context_text needs the output_current_text it precedes (the output is "
            "forced): pass output_current_text=, or drop output_context_text to let the model generate"
        )
    # Checked only for their placeholders here; filled with the output when it is known.
    _fill(output_template, "output_template", "", output_context, has_output_context)
    _fill(templates.contextless_output, "contextless_output_current_text", "", None, False)
    if not all(t.rstrip().endswith("{current}") for t in (output_template, templates.contextless_output)):
        raise ValueError(
            "output_template and contextless_output_current_text must end with {current}: the current output "
            f"is what the model produces last (got {output_template!r}, {templates.contextless_output!r})"
        )
    templates = dataclasses.replace(templates, input=input_template, output=output_template)
    texts = (input_current, input_context, output_current, output_context)
    if model.family.attributes_source():  # a generating family with a source: encoder-decoder
        return _encoder_decoder_plan(model, texts, input_full, input_contextless, templates)
    return _decoder_only_plan(model, texts, input_full, input_contextless, templates)


def _attribute_plans(model: AttributionModel, plans: list[_Plan], call: dict[str, Any]) -> list:
    """Every plan's attributed sequence: the examples that share a call's arguments in one batched call (the
    with- and without-context passes and the contrastive attribution of all of them together)."""
    groups: dict[tuple, list[int]] = {}
    for k, plan in enumerate(plans):
        groups.setdefault(plan.group, []).append(k)
    sequences: list[Any] = [None] * len(plans)
    for members in groups.values():
        first = plans[members[0]]
        forced = None if first.forced is None else [plans[k].forced for k in members]
        contrast_targets = None
        if first.contrast_target is not None:
            contrast_targets = [plans[k].contrast_target for k in members]
        out = model.attribute(
            [plans[k].input_text for k in members],
            forced,
            contrast_sources=[plans[k].contrast_source for k in members],
            contrast_targets=contrast_targets,
            contrast_targets_alignments="auto" if contrast_targets is not None else None,
            attribute_target=first.attribute_target,
            attr_pos_start=first.attr_pos_start,
            **call,
        )
        for k, seq in zip(members, out, strict=True):
            sequences[k] = seq
    return sequences


def _result(
    model: AttributionModel, plan: _Plan, seq: Any, layout: _Layout, name: str, thresholds: tuple
) -> ContextAttributionOutput:
    """The CTI scores, the selected tokens and their cues of one example's attributed sequence."""
    context_std, context_topk, attribution_std, attribution_topk = thresholds
    has_input_context = plan.input_context is not None
    has_output_context = plan.output_context is not None
    special = set(model.tokenizer.all_special_ids)
    # CTI scores the current output's own tokens: not the output context's, not BOS/EOS/language tags.
    steps = [
        k
        for k in range(seq.num_steps)
        if seq.attr_pos_start + k >= layout.current_start
        and seq.target_ids[seq.attr_pos_start + k] not in special
    ]
    if not steps:
        raise ValueError(
            "the output has no tokens to score (empty generation, or only special tokens); force a non-empty "
            "output_current_text or raise max_new_tokens"
        )
    all_scores = seq.step_scores[name].tolist()
    cti_scores = [float(all_scores[k]) for k in steps]
    selected, threshold = select_scores(cti_scores, context_std, context_topk)
    input_positions, output_positions = layout.input_context, layout.output_context
    input_side_tokens = seq.source if layout.input_side == "source" else seq.target
    input_side_scores = seq.source_attributions if layout.input_side == "source" else seq.target_attributions
    input_tokens = [input_side_tokens[p] for p in input_positions] if has_input_context else None
    output_tokens = [seq.target[p] for p in output_positions] if has_output_context else None
    if seq.extra_dims:
        raise ValueError(
            f"the attribution method gives {seq.attribution_shape} scores per token; attribute_context needs "
            "one score per token and step: pick a method with one (saliency, integrated_gradients, ...) or "
            "its reduction option"
        )
    sensitive = []
    for index in selected:
        step = steps[index]
        column = []
        input_scores = output_scores = None
        if has_input_context:
            input_scores = [float(input_side_scores[p, step]) for p in input_positions]
            column += [
                Cue(t, s, "input", i) for i, (t, s) in enumerate(zip(input_tokens, input_scores, strict=True))
            ]
        if has_output_context:
            output_scores = [float(seq.target_attributions[p, step]) for p in output_positions]
            column += [
                Cue(t, s, "output", i)
                for i, (t, s) in enumerate(zip(output_tokens, output_scores, strict=True))
            ]
        chosen, cue_threshold = select_scores([c.score for c in column], attribution_std, attribution_topk)
        sensitive.append(
            SensitiveToken(
                index=index,
                token=seq.steps[step],
                score=cti_scores[index],
                input_context_scores=input_scores,
                output_context_scores=output_scores,
                cue_threshold=cue_threshold,
                cues=[column[i] for i in chosen],
            )
        )
    output_current = plan.output_current if plan.output_current is not None else layout.generated_text
    return ContextAttributionOutput(
        input_context=plan.input_context,
        input_current=plan.input_current,
        output_context=plan.output_context,
        output_current=output_current,
        input_context_tokens=input_tokens,
        output_context_tokens=output_tokens,
        output_current_tokens=[seq.steps[k] for k in steps],
        cti_metric=name,
        cti_scores=cti_scores,
        cti_threshold=threshold,
        sensitive_tokens=sensitive,
    )


def _decoder_only_plan(
    model: AttributionModel, texts: tuple, input_full: str, input_contextless: str, templates: _Templates
) -> _Plan:
    """A decoder-only example: the prompt holds the input and any output context, the contrast prompt their
    contextless versions; both continue with the same current output tokens."""
    input_current, input_context, output_current, output_context = texts
    separator = templates.separator
    output_prefix = templates.output.partition("{current}")[0].format(context=output_context)
    contextless_prefix = templates.contextless_output.partition("{current}")[0]
    with_context = input_full + separator + output_prefix
    prompt = with_context.rstrip()
    contrast = (input_contextless + separator + contextless_prefix).rstrip()
    forced = None if output_current is None else with_context + output_current
    if forced is not None:
        prompt_ids = model.tokenizer(prompt)["input_ids"]
        if model.tokenizer(forced)["input_ids"][: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                f"output_current_text={output_current!r} does not fit after the prompt {prompt[-40:]!r}: "
                f"joined with decoder_input_output_separator={separator!r} it changes the prompt's last "
                "tokens, so the forced output would not continue the prompt the model reads. Start the "
                "output where a token starts (e.g. keep the separator ' ', or open output_current_text "
                "with a space)"
            )
    input_context_span = _span(templates.input, input_current, input_context, "context", 0)
    output_context_span = _span(
        templates.output, output_current, output_context, "context", len(input_full + separator)
    )

    def finish(seq) -> _Layout:
        return _Layout(
            current_start=seq.attr_pos_start,
            input_context=[]
            if input_context is None
            else _token_positions(model, prompt, input_context_span),
            output_context=[]
            if output_context is None
            else _token_positions(model, prompt, output_context_span),
            input_side="target",
            generated_text=model.tokenizer.decode(
                seq.target_ids[seq.attr_pos_start :], skip_special_tokens=True
            ).strip(),
        )

    return _Plan(
        *texts, input_text=prompt, forced=forced, contrast_source=contrast, contrast_target=None,
        attribute_target=None, attr_pos_start=None, finish=finish,
    )  # fmt: skip


def _encoder_decoder_plan(
    model: AttributionModel, texts: tuple, input_full: str, input_contextless: str, templates: _Templates
) -> _Plan:
    """An encoder-decoder example: the encoder reads the input with context, the contrast's the contextless
    input; an output context is a forced target prefix, absent from the contrast target."""
    input_current, input_context, output_current, output_context = texts
    output_template = templates.output
    forced = contrast_target = None
    current_start = shift = None
    if output_current is not None:
        forced = output_template.format(current=output_current, context=output_context)
        contrast_target = templates.contextless_output.format(current=output_current)
        source = model.tokenizer(input_full)["input_ids"]
        target = model.encode_forced(0, source, forced, input_full)[1]
        tokenized = model.tokenizer(text_target=forced)["input_ids"]
        # The family's target is the tokenized text after its decoder start token(s).
        shift = len(target) - len(tokenized)
        current = _token_positions(
            model, forced, _span(output_template, output_current, output_context, "current", 0), True
        )
        if not current:
            raise ValueError(f"output_current_text={output_current!r} tokenizes to no tokens")
        current_start = shift + current[0]
    has_output_context = output_context is not None
    input_context_span = _span(templates.input, input_current, input_context, "context", 0)

    def finish(seq) -> _Layout:
        positions = []
        if has_output_context:
            span = _span(output_template, output_current, output_context, "context", 0)
            positions = [shift + p for p in _token_positions(model, forced, span, True)]
        return _Layout(
            current_start=seq.attr_pos_start,
            input_context=[]
            if input_context is None
            else _token_positions(model, input_full, input_context_span),
            output_context=positions,
            input_side="source",
            generated_text=model.tokenizer.decode(seq.target_ids, skip_special_tokens=True).strip(),
        )

    return _Plan(
        *texts, input_text=input_full, forced=forced, contrast_source=input_contextless,
        contrast_target=contrast_target if has_output_context else None,
        attribute_target=has_output_context, attr_pos_start=current_start if has_output_context else None,
        finish=finish,
    )  # fmt: skip
