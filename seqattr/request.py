"""`AttributionRequest`: one attribution call, its arguments checked once before any model work.

Like transformers' `GenerationConfig`, the request is a plain record that validates itself on creation, so
every caller builds the same thing the same way: `AttributionModel.attribute` from its keyword arguments,
the CLI from its flags (before the model loads: a typo costs no load). The engine (`seqattr.engine.attribute`)
then runs it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from seqattr.methods.base import get_method_class
from seqattr.methods.options import MethodOptions, Seed
from seqattr.qoi import quantities_in
from seqattr.step_functions import StepFunction, bind_step_functions, step_function_name
from seqattr.trace import DEFAULT_TOP_K, check_top_k

DEFAULT_MAX_NEW_TOKENS = 20


def as_text_list(texts: str | Sequence[str], argument: str) -> list[str]:
    """``texts`` as a non-empty list of non-blank strings, or an error naming ``argument``.

    Example:
        >>> as_text_list("Hello", "input_texts")
        ['Hello']
        >>> as_text_list(["Hello", " "], "input_texts")
        Traceback (most recent call last):
        ...
        ValueError: input_texts[1] is empty; give text for the model to read
    """
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or not texts:
        raise ValueError(f"{argument} must be a non-empty string or a non-empty list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{argument}[{i}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{argument}[{i}] is empty; give text for the model to read")
    return list(texts)


def as_input_list(texts: Any, argument: str = "input_texts") -> list[str | tuple[str, str]]:
    """``texts`` as a non-empty list of inputs: texts, or pairs of texts ``(text_a, text_b)`` (a classifier
    reading two segments, a question and its context); one text or one pair alone is a list of one.

    Example:
        >>> as_input_list(("A man sleeps.", "Nobody sleeps."))
        [('A man sleeps.', 'Nobody sleeps.')]
        >>> as_input_list([("A man sleeps.", "")])
        Traceback (most recent call last):
        ...
        ValueError: input_texts[0][1] is empty; give text for the model to read
    """

    def is_pair(value: Any) -> bool:
        return isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value)

    if isinstance(texts, str) or is_pair(texts):
        texts = [texts]
    if not isinstance(texts, Sequence) or not texts:
        raise ValueError(
            f"{argument} must be a non-empty string, a pair of strings (text_a, text_b), or a non-empty list "
            "of them"
        )
    inputs: list[str | tuple[str, str]] = []
    for i, text in enumerate(texts):
        if is_pair(text):
            for k, part in enumerate(text):
                if not part.strip():
                    raise ValueError(f"{argument}[{i}][{k}] is empty; give text for the model to read")
            inputs.append(tuple(text))
        elif isinstance(text, tuple):
            raise TypeError(
                f"{argument}[{i}] is a tuple of {len(text)} item(s); a pair of texts is a tuple of 2 strings"
            )
        elif not isinstance(text, str):
            raise TypeError(
                f"{argument}[{i}] must be a string or a pair of strings, got {type(text).__name__}"
            )
        elif not text.strip():
            raise ValueError(f"{argument}[{i}] is empty; give text for the model to read")
        else:
            inputs.append(text)
    return inputs


def _as_name_list(names: str | StepFunction | Sequence[str | StepFunction], argument: str) -> list:
    """A list of step functions given by name or as callables: a single one (``step_scores="entropy"``) is a
    one-element list, where iterating the string would give its letters."""
    if isinstance(names, str) or callable(names):
        return [names]
    if not isinstance(names, Iterable):
        raise TypeError(
            f"{argument} must be a step function name or a list of them, e.g. ['probability', 'entropy'];"
            f" got {type(names).__name__}"
        )
    return list(names)


@dataclass(frozen=True)
class AttributionRequest:
    """What to attribute and how: the arguments of `AttributionModel.attribute`, validated on creation.

    The fields are those arguments (see `AttributionModel.attribute` for each); ``method_options`` are the
    method's keyword options as given. Creating the request parses them into ``options`` (a fresh seed is
    drawn here, once, for a randomised method given none) and binds the step functions, so a mistake is
    refused before the model loads or generates.

    Example:
        >>> request = AttributionRequest(["Hello everyone"], method="integrated_gradients",
        ...                              method_options={"n_steps": 8}, step_scores="entropy")
        >>> request.options.n_steps, request.step_score_names, request.max_batch_size
        (8, ['entropy'], 1)
        >>> AttributionRequest(["Hello"], method="saliencyy")
        Traceback (most recent call last):
        ...
        ValueError: unknown attribution method 'saliencyy'; valid methods: alti_logit, attention, ...
    """

    input_texts: str | tuple[str, str] | Sequence[str | tuple[str, str]]
    generated_texts: str | Sequence[str] | None = None
    method: str = "saliency"
    method_options: Mapping[str, Any] = field(default_factory=dict)
    generation_args: Mapping[str, Any] | None = None
    attribute_target: bool | None = None
    attr_pos_start: int | None = None
    attr_pos_end: int | None = None
    step_scores: str | StepFunction | Sequence[str | StepFunction] = ()
    attributed_fn: str | StepFunction | None = None
    step_scores_args: Mapping[str, Any] | None = None
    attributed_fn_args: Mapping[str, Any] | None = None
    contrast_targets: str | Sequence[str] | None = None
    contrast_sources: str | Sequence[str] | None = None
    contrast_targets_alignments: str | Sequence[Any] | None = None
    trace_top_k: int = DEFAULT_TOP_K
    batch_size: int | None = None
    show_progress: bool = True
    fused: bool = True
    prompts: Sequence[Any] | None = None
    """The prompts' `seqattr.segments.PromptLayout` (chat messages, named segments), one per input text, or
    None for plain texts."""
    include_template: bool = False

    # Derived on creation.
    options: MethodOptions = field(init=False, repr=False)
    attributed: StepFunction = field(init=False, repr=False)
    step_functions: dict[str, StepFunction] = field(init=False, repr=False)
    part_granularity: str | None = field(init=False, repr=False)
    """``"message"`` or ``"segment"`` when the output's prompt rows are its parts (`seqattr.segments`)."""

    def __post_init__(self) -> None:
        texts = as_input_list(self.input_texts, "input_texts")
        self._set("input_texts", texts)
        if self.generated_texts is not None:
            forced = as_text_list(self.generated_texts, "generated_texts")
            if len(forced) != len(texts):
                raise ValueError(
                    f"got {len(texts)} input_texts but {len(forced)} generated_texts; give one per input"
                )
            self._set("generated_texts", forced)
        if self.batch_size is not None and (
            not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.attribute_target not in (True, False, None):
            raise TypeError(
                f"attribute_target must be True or False (or None: the model's default), got "
                f"{self.attribute_target!r}"
            )
        for name in ("fused", "show_progress", "include_template"):
            if getattr(self, name) not in (True, False):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("attr_pos_start", "attr_pos_end"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"{name} must be an integer target position (or None), got {value!r}")
        if self.generation_args is not None and not isinstance(self.generation_args, Mapping):
            raise TypeError(
                f"generation_args must be a dict of model.generate keyword arguments, e.g. "
                f"{{'max_new_tokens': 8}}; got {type(self.generation_args).__name__}"
            )
        self._set("generation_args", dict(self.generation_args or {}))
        if self.prompts is not None:  # the layouts carry the choice to the feature maps
            self._set(
                "prompts",
                [dataclasses.replace(p, include_template=self.include_template) for p in self.prompts],
            )
        self._set("step_scores_args", dict(self.step_scores_args or {}))
        self._set("attributed_fn_args", dict(self.attributed_fn_args or {}))

        method_options = self._part_options(texts)
        options = get_method_class(self.method).parse_options(**method_options)
        if isinstance(options, Seed) and options.seed is None:
            # One fresh seed for the whole call (every batch, fused or stepwise), recorded in info.
            options = dataclasses.replace(options, seed=options.resolved_seed())
        self._set("options", options)
        (attributed,) = bind_step_functions(
            [self.attributed_fn or "probability"], self.attributed_fn_args, "attributed_fn_args"
        )
        self._set("attributed", attributed)
        method_class = get_method_class(self.method)
        for quantity in quantities_in([attributed]):
            if not method_class.attributes_function:
                raise ValueError(
                    f"{self.method} reads the model's internals and does not attribute a function, so it "
                    f"cannot explain the quantity of interest {quantity!r}; use a gradient method (saliency, "
                    "input_x_gradient, integrated_gradients, ...), a perturbation or a layer method"
                )
        names = _as_name_list(self.step_scores, "step_scores")
        self._set("step_scores", names)
        bound = bind_step_functions(names, self.step_scores_args, "step_scores_args")
        self._set("step_functions", dict(zip(self.step_score_names, bound, strict=True)))
        check_top_k(self.trace_top_k)
        if self.contrast_targets_alignments is not None and not self.has_contrast:
            raise ValueError(
                "contrast_targets_alignments needs contrast_targets= (or contrast_sources=) to align with"
            )

    def _part_options(self, texts: list) -> dict[str, Any]:
        """The method's options with a part granularity (``granularity="message"``/``"segment"``) checked
        against the prompts and recorded in ``part_granularity``; a method without a ``granularity`` option
        (gradients, attention) does not take it: its token scores are summed into the parts afterwards."""
        from seqattr.segments import SEGMENT_GRANULARITIES

        options = dict(self.method_options)
        part = options.get("granularity")
        if part not in SEGMENT_GRANULARITIES:
            self._set("part_granularity", None)
            return options
        if self.prompts is None:
            needs = "messages=[...]" if part == "message" else "segments=[('name', 'text'), ...]"
            raise ValueError(f"granularity={part!r} needs the prompt's parts: pass {needs}")
        if len(self.prompts) != len(texts):
            raise ValueError(f"got {len(texts)} input_texts but {len(self.prompts)} prompt layouts")
        for layout in self.prompts:
            layout.parts(part)  # refuses a granularity the prompts have no parts for
        self._set("part_granularity", part)
        fields = {f.name for f in dataclasses.fields(get_method_class(self.method).Options)}
        if "granularity" not in fields:
            del options["granularity"]
        return options

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: only __post_init__ normalises its own fields

    @property
    def step_score_names(self) -> list[str]:
        return [step_function_name(name) for name in self.step_scores]

    @property
    def has_contrast(self) -> bool:
        return self.contrast_targets is not None or self.contrast_sources is not None

    @property
    def max_batch_size(self) -> int:
        """Examples per model call: ``batch_size``, or all of them at once."""
        return self.batch_size or len(self.input_texts)

    def window(self, i: int, length: int, default_start: int) -> tuple[int, int]:
        """Example ``i``'s target positions to explain, ``(start, end)``, for a ``length``-token target whose
        first generated token is at ``default_start``; negative ``attr_pos_*`` count from the end.

        Example:
            >>> AttributionRequest("Hi", attr_pos_start=-2).window(0, length=10, default_start=4)
            (8, 10)
        """
        start, end = self.attr_pos_start, self.attr_pos_end
        resolved_start = default_start if start is None else (start + length if start < 0 else start)
        resolved_end = length if end is None else (end + length if end < 0 else end)
        if not 1 <= resolved_start < resolved_end <= length:
            raise ValueError(
                f"example {i}: attr_pos_start={start!r}, attr_pos_end={end!r} select target positions "
                f"[{resolved_start}, {resolved_end}) of a {length}-token target; need "
                f"1 <= start < end <= {length} (position 0 has no prefix to explain it)"
            )
        return resolved_start, resolved_end

    @property
    def generate_args(self) -> dict[str, Any]:
        """The arguments ``model.generate`` runs with: ``generation_args`` plus the default length.

        Example:
            >>> AttributionRequest("Hi").generate_args
            {'max_new_tokens': 20}
        """
        if {"max_new_tokens", "max_length"} & set(self.generation_args):
            return dict(self.generation_args)
        return {**self.generation_args, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS}
