"""Prompts made of parts: which tokens belong to which message or named segment, and which are scaffolding.

A `PromptLayout` is a prompt's token ids with a role per token and its parts as token spans:

- ``roles``: ``"system"``, ``"user"``, ``"assistant"``, ``"tool"`` (a message's own text, `seqattr.chat`),
  ``"prompt"`` (a plain text prompt's text) or ``"template"``: the scaffolding a chat template or the
  tokenizer adds around the text (role headers, end-of-turn markers, BOS). Scaffolding is data, not signal:
  outputs mask it (hidden from normalisation and views) and perturbation methods never perturb it, unless
  ``include_template=True``;
- ``messages``: one `Segment` per message of a conversation (its content's tokens);
- ``named``: the user-named segments, given as ``(name, text)`` pieces (as Captum's ``TextTemplateInput``
  names the parts of a prompt): each text is found in the prompt, in order.

Granularities over the parts (``granularity="message"`` / ``"segment"``) make each part one feature:
perturbation methods perturb its tokens together (`seqattr.features`), and every method's output is
merged to one row per part, labelled by its name (`segment_rows`). Under ``"segment"`` the prompt text
outside the named segments is a feature too, one per stretch between them, so the features cover the
prompt.

Example:
    >>> doc = Segment("doc", "prompt", 1, 3)
    >>> layout = PromptLayout("ab", [7, 8, 9], ["template", "prompt", "prompt"], named=(doc,))
    >>> layout.groups("segment", special=[True, False, False])
    [[1, 2]]
    >>> layout.template_positions
    [0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from seqattr.data.attribution import SequenceAttribution

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TEMPLATE = "template"
"""The role of scaffolding tokens."""
SEGMENT_GRANULARITIES = ("message", "segment")
"""Granularities whose features are a prompt's parts: its messages, or its named segments."""


@dataclass(frozen=True)
class Segment:
    """A part of a prompt: its name, its role and its token span ``[start, end)`` in the prompt's ids."""

    name: str
    role: str
    start: int
    end: int


@dataclass(frozen=True)
class PromptLayout:
    """A prompt's text, ids, per-token roles and parts (see the module docstring)."""

    text: str
    ids: list[int]
    roles: list[str]
    messages: tuple[Segment, ...] = ()
    named: tuple[Segment, ...] = ()
    include_template: bool = False
    """Template tokens are features (perturbed) and shown; set from ``attribute(include_template=True)``."""
    context_parts: tuple[str, ...] = ()
    """The names of the parts that are the context (``attribute(context_parts=...)``): messages or named
    segments."""
    contextless_ids: tuple[int, ...] | None = None
    """The prompt's ids without its context parts (the text re-tokenized, or the conversation re-rendered
    without them): the trace's ``context_reliance`` compares each step with this prompt. None without
    ``context_parts``."""

    @property
    def template_positions(self) -> list[int]:
        """Positions of the scaffolding tokens."""
        return [i for i, role in enumerate(self.roles) if role == TEMPLATE]

    def parts(self, granularity: str) -> list[Segment]:
        """The prompt's parts at ``granularity`` (``"message"`` or ``"segment"``), in token order; under
        ``"segment"`` the text between named segments (scaffolding aside) fills the gaps, one part per
        stretch of one role, named by its text."""
        if granularity == "message":
            if not self.messages:
                raise ValueError(
                    "granularity='message' needs a conversation: pass "
                    "messages=[{'role': ..., 'content': ...}]"
                )
            return list(self.messages)
        if granularity != "segment":
            raise ValueError(f"unknown part granularity {granularity!r}; valid: {SEGMENT_GRANULARITIES}")
        if not self.named:
            raise ValueError(
                "granularity='segment' needs named segments: pass "
                "segments=[('name', 'text in the prompt'), ...]"
            )
        parts, position = [], 0
        for segment in [*self.named, Segment("", TEMPLATE, len(self.ids), len(self.ids))]:
            # Runs of one role between the named segments (a new run where the role changes).
            run_start = None
            for i in range(position, segment.start + 1):
                role = self.roles[i] if i < segment.start else None
                if run_start is not None and (role != self.roles[run_start]):
                    parts.append(Segment("", self.roles[run_start], run_start, i))
                    run_start = None
                if run_start is None and role is not None and role != TEMPLATE:
                    run_start = i
            if segment.end > segment.start:
                parts.append(segment)
            position = segment.end
        return parts

    def groups(self, granularity: str, special: Sequence[bool]) -> list[list[int]]:
        """Token indices of each feature of the prompt at a part granularity: a part's tokens minus its
        scaffolding and special tokens; with ``include_template`` also each run of (non-special) scaffolding.

        Example:
            >>> layout = PromptLayout("", [1, 2, 3, 4], ["template", "user", "user", "template"],
            ...                       (Segment("user", "user", 1, 3),))
            >>> layout.groups("message", [False] * 4)
            [[1, 2]]
            >>> dataclasses.replace(layout, include_template=True).groups("message", [False] * 4)
            [[0], [1, 2], [3]]
        """
        groups = []
        for part in self.parts(granularity):
            tokens = [i for i in range(part.start, part.end) if not special[i] and self.roles[i] != TEMPLATE]
            if tokens:
                groups.append(tokens)
        if self.include_template:
            runs: list[list[int]] = []
            for i in self.template_positions:
                if special[i]:
                    continue
                if runs and runs[-1][-1] == i - 1:
                    runs[-1].append(i)
                else:
                    runs.append([i])
            groups = sorted(groups + runs)
        return groups

    def unperturbed(self) -> set[int]:
        """Positions perturbation methods must leave alone: the scaffolding, unless ``include_template``."""
        return set() if self.include_template else set(self.template_positions)

    def describe(self) -> dict[str, Any]:
        """What an output's ``info["prompts"]`` records of the layout (JSON).

        Example:
            >>> PromptLayout("x", [5], ["user"], (Segment("user", "user", 0, 1),)).describe()["messages"]
            [{'name': 'user', 'role': 'user', 'start': 0, 'end': 1}]
        """
        described = {
            "messages": [dataclasses.asdict(s) for s in self.messages],
            "segments": [dataclasses.asdict(s) for s in self.named],
            "template": self.template_positions,
        }
        if self.context_parts:
            described["context_parts"] = list(self.context_parts)
            described["contextless_ids"] = list(self.contextless_ids or ())
        return described

    def part_names(self) -> list[str]:
        """The names a part of this prompt answers to: its messages' and its named segments'.

        Example:
            >>> PromptLayout("x", [5], ["user"], (Segment("user", "user", 0, 1),)).part_names()
            ['user']
        """
        return [s.name for s in (*self.messages, *self.named)]


def token_spans(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """The token span ``[first, last + 1)`` of the tokens whose characters overlap ``[start, end)``.

    Example:
        >>> token_spans([(0, 3), (3, 4), (4, 9), (9, 10)], 3, 9)
        (1, 3)
    """
    inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
    if not inside:
        raise ValueError(f"no token covers characters [{start}, {end})")
    return inside[0], inside[-1] + 1


def offsets_of(tokenizer: PreTrainedTokenizerBase, text: str, ids: list[int], special: bool):
    """Each token's character span in ``text`` (``(0, 0)`` for tokens the tokenizer added), checked to be
    the tokens of ``ids``; needs a fast (Rust) tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"segments and chat messages need a fast tokenizer (one that maps tokens to characters); "
            f"{type(tokenizer).__name__} is not one: load it with "
            "AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    encoding = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    if list(encoding["input_ids"]) != list(ids):
        raise ValueError(
            "the prompt's tokens cannot be mapped back to its text (the template's token ids differ from the "
            "tokenization of its rendered text); pass the rendered prompt as input_texts instead"
        )
    offsets = [tuple(o) for o in encoding["offset_mapping"]]
    special_ids = set(tokenizer.all_special_ids)
    for i, ((a, b), token) in enumerate(zip(offsets, ids, strict=True)):
        # Byte-level tokenizers that trim offsets (BART, RoBERTa) give a whitespace-only token an empty span
        # (a, a): it would then belong to no part (scaffolding, never perturbed) even inside a segment. Its
        # characters are the whitespace just before a, checked against the text.
        if a == b and token not in special_ids:
            piece = tokenizer.decode([token])
            if piece and text[max(a - len(piece), 0) : a] == piece:
                offsets[i] = (a - len(piece), a)
    return offsets


def roles_from_offsets(
    offsets: Sequence[tuple[int, int]], role_spans: Sequence[tuple[str, int, int]]
) -> list[str]:
    """Each token's role: that of the first character span ``(role, start, end)`` it overlaps, else
    ``"template"``.

    Example:
        >>> roles_from_offsets([(0, 2), (2, 5), (5, 6)], [("user", 2, 5)])
        ['template', 'user', 'template']
    """
    roles = []
    for a, b in offsets:
        role = next((r for r, start, end in role_spans if b > a and a < end and b > start), TEMPLATE)
        roles.append(role)
    return roles


def as_pieces(segments: Any, argument: str = "segments") -> list[tuple[str, str]]:
    """``segments`` as a list of ``(name, text)`` pieces with distinct names and non-empty texts.

    Example:
        >>> as_pieces([("doc", "Alice lives in Paris."), ("question", " Where does Alice live?")])
        [('doc', 'Alice lives in Paris.'), ('question', ' Where does Alice live?')]
        >>> as_pieces([("doc", "x"), ("doc", "y")])
        Traceback (most recent call last):
        ...
        ValueError: segments: the name 'doc' is given twice; give each segment its own name
    """
    if isinstance(segments, dict):
        segments = list(segments.items())
    if not isinstance(segments, Sequence) or isinstance(segments, str) or not segments:
        raise ValueError(f"{argument} must be a non-empty list of (name, text) pairs")
    pieces, names = [], set()
    for k, piece in enumerate(segments):
        if not (
            isinstance(piece, (tuple, list)) and len(piece) == 2 and all(isinstance(p, str) for p in piece)
        ):
            raise TypeError(f"{argument}[{k}] must be a (name, text) pair of strings, got {piece!r}")
        name, text = piece
        if not text.strip():
            raise ValueError(f"{argument}[{k}] ({name!r}) has no text")
        if name in names:
            raise ValueError(f"{argument}: the name {name!r} is given twice; give each segment its own name")
        names.add(name)
        pieces.append((name, text))
    return pieces


def fill_template(template: str, **values: str) -> tuple[str, list[tuple[str, str]]]:
    """A prompt from a template with named fields, and its segments: ``(prompt, [(field, value), ...])``,
    ready for ``attribute(prompt, segments=segments, granularity="segment")`` (Captum's
    ``TextTemplateInput``, with names). The template's own text between the fields is prompt text, one
    feature per stretch under ``granularity="segment"``.

    Example:
        >>> prompt, segments = fill_template("Doc: {doc} Q: {question}", doc="Anna is here.", question="Who?")
        >>> prompt, segments
        ('Doc: Anna is here. Q: Who?', [('doc', 'Anna is here.'), ('question', 'Who?')])
        >>> fill_template("{doc} {question}", doc="x")
        Traceback (most recent call last):
        ...
        ValueError: the template's field 'question' has no value; give it as question=... (fields: ...)
    """
    import string

    if not isinstance(template, str):
        raise TypeError(f"template must be a string with named fields such as '{{doc}}', got {template!r}")
    parsed = list(string.Formatter().parse(template))
    fields = [name for _, name, _, _ in parsed if name is not None]
    for _, name, spec, conversion in parsed:
        if name is not None and (not name.isidentifier() or spec or conversion):
            shown = "{" + name + ("!" + conversion if conversion else "") + (":" + spec if spec else "") + "}"
            raise ValueError(
                f"template field {shown}: fields are plain names, e.g. '{{doc}}' (no positions, attributes, "
                "conversions or format specs)"
            )
    if not fields:
        raise ValueError(
            "the template has no field; name its parts, e.g. 'Context: {doc} Question: {question}'"
        )
    listed = ", ".join(fields)
    repeated = sorted({name for name in fields if fields.count(name) > 1})
    if repeated:
        raise ValueError(
            f"the template uses the field {repeated[0]!r} twice; a segment is one part ({listed})"
        )
    for name in fields:
        if name not in values:
            raise ValueError(
                f"the template's field {name!r} has no value; give it as {name}=... (fields: {listed})"
            )
    unused = [name for name in values if name not in fields]
    if unused:
        raise ValueError(f"{unused[0]!r} is not a field of the template (fields: {listed})")
    pieces = as_pieces([(name, values[name]) for name in fields], "template values")
    return template.format(**values), pieces


def locate(
    text: str, pieces: Sequence[tuple[str, str]], where: str, start: int = 0
) -> list[tuple[str, int, int]]:
    """Character spans ``(name, start, end)`` of each piece's text in ``text``, found in order from ``start``;
    a piece that is not there is refused.

    Example:
        >>> locate("Doc: Paris. Q: where?", [("doc", "Paris."), ("q", "where?")], "the prompt")
        [('doc', 5, 11), ('q', 15, 21)]
        >>> locate("Doc: Paris.", [("doc", "London")], "the prompt")
        Traceback (most recent call last):
        ...
        ValueError: segment 'doc' ('London') is not in the prompt (after the segments before it); ...
    """
    spans = []
    for name, piece in pieces:
        found = text.find(piece, start)
        if found < 0:
            raise ValueError(
                f"segment {name!r} ({piece[:60]!r}) is not in {where} (after the segments before it); give "
                "segments as exact pieces of the prompt's text, in the order they appear"
            )
        spans.append((name, found, found + len(piece)))
        start = found + len(piece)
    return spans


def as_part_names(context_parts: Any) -> tuple[str, ...]:
    """``context_parts`` (a name or a list of names of a prompt's parts) as a non-empty tuple of names.

    Example:
        >>> as_part_names("doc"), as_part_names(["doc", "system"])
        (('doc',), ('doc', 'system'))
        >>> as_part_names([])
        Traceback (most recent call last):
        ...
        ValueError: context_parts must name at least one part of the prompt (a segment's or a message's name)
    """
    names = (context_parts,) if isinstance(context_parts, str) else context_parts
    if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise TypeError(
            f"context_parts must be a name or a list of names of the prompt's parts, got {context_parts!r}"
        )
    if not names:
        raise ValueError(
            "context_parts must name at least one part of the prompt (a segment's or a message's name)"
        )
    return tuple(names)


def check_part_names(layout: PromptLayout, names: Sequence[str], where: str) -> None:
    """Refuse a context part that ``layout`` does not have, listing those it has."""
    known = layout.part_names()
    for name in names:
        if name not in known:
            listed = ", ".join(map(repr, known)) or "none (give segments=[(name, text), ...])"
            raise ValueError(
                f"context_parts: {where} has no part named {name!r}; its parts: {listed} (segments are named "
                "by segments=, messages by their role, numbered when it repeats: 'user 1', 'user 2')"
            )


def cut_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` without the characters of ``spans`` (``[start, end)``, in order, not overlapping).

    Example:
        >>> cut_spans("Doc: Paris. Q: where?", [(5, 12)])
        'Doc: Q: where?'
    """
    kept, position = [], 0
    for start, end in spans:
        kept.append(text[position:start])
        position = end
    return "".join(kept) + text[position:]


def contextless_text(text: str, pieces: Sequence[tuple[str, str]], names: Sequence[str]) -> str:
    """A plain prompt's text without the named segments ``names`` (found as `locate` finds them); refused
    when nothing is left.

    Example:
        >>> contextless_text("Doc: Paris. Q: where?", [("doc", "Doc: Paris."), ("q", " Q: where?")], ["doc"])
        ' Q: where?'
    """
    spans = [(a, b) for name, a, b in locate(text, pieces, "the prompt") if name in names]
    rest = cut_spans(text, spans)
    if not rest.strip():
        raise ValueError(
            f"context_parts={list(names)} cover the whole prompt: without them nothing is left to compare "
            "with; leave the question (or some text) out of the context"
        )
    return rest


def named_segments(
    offsets: Sequence[tuple[int, int]], roles: Sequence[str], spans: Sequence[tuple[str, int, int]]
) -> tuple[Segment, ...]:
    """`Segment` token spans of named character spans (the role of a segment: that of its first token)."""
    segments = []
    for name, start, end in spans:
        first, stop = token_spans(offsets, start, end)
        if segments and first < segments[-1].end:
            raise ValueError(
                f"segments {segments[-1].name!r} and {name!r} share a token; end a segment where a token ends"
            )
        segments.append(Segment(name, roles[first], first, stop))
    return tuple(segments)


def plain_layout(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    pieces: Sequence[tuple[str, str]],
    context_parts: Sequence[str] = (),
) -> PromptLayout:
    """The layout of a plain text prompt with named segments: the tokens the tokenizer adds (BOS) are
    scaffolding, the text's own tokens have the role ``"prompt"``.

    Example:
        >>> pieces = [("fact", "Paris is big."), ("q", " Where?")]
        >>> layout = plain_layout(tokenizer, "Paris is big. Where?", pieces)
        >>> [s.name for s in layout.named], layout.ids == tokenizer("Paris is big. Where?")["input_ids"]
        (['fact', 'q'], True)
    """
    ids = list(tokenizer(text)["input_ids"])
    offsets = offsets_of(tokenizer, text, ids, special=True)
    roles = roles_from_offsets(offsets, [("prompt", 0, len(text))])
    layout = PromptLayout(
        text, ids, roles, (), named_segments(offsets, roles, locate(text, pieces, "the prompt"))
    )
    if not context_parts:
        return layout
    check_part_names(layout, context_parts, "the prompt")
    rest = contextless_text(text, pieces, context_parts)
    return dataclasses.replace(
        layout, context_parts=tuple(context_parts), contextless_ids=tuple(tokenizer(rest)["input_ids"])
    )


def segment_rows(
    seq: SequenceAttribution, layout: PromptLayout, granularity: str, source: bool = False
) -> SequenceAttribution:
    """``seq`` (a decoder-only example explained after ``layout``'s prompt, or with ``source`` an
    encoder-decoder's whose source is ``layout``'s) with each prompt part merged into one row labelled by its
    name (`seqattr.data.granularity.merge_groups`: a perturbation feature's score counts once, token scores
    add up); scaffolding tokens stay rows of their own.

    Example:
        >>> pieces = [("fact", "Paris is big."), ("q", " Where?")]
        >>> layout = plain_layout(tokenizer, "Paris is big. Where?", pieces)
        >>> tokens = model.attribute(segments=pieces, generated_texts=" Here", show_progress=False)
        >>> segment_rows(tokens[0], layout, "segment").target
        ['fact', 'q', 'ĠH', 'er', 'e']
    """
    from seqattr.data.granularity import merge_groups

    special = [False] * len(layout.ids)
    groups = layout.groups(granularity, special)
    spans, position, names = [], 0, {}
    parts = layout.parts(granularity)
    for group in groups:
        a, b = group[0], group[-1] + 1
        spans += [(i, i + 1) for i in range(position, a)] + [(a, b)]
        part = next((p for p in parts if p.start <= a < p.end), None)
        if part is not None and part.name and layout.roles[a] != TEMPLATE:
            names[len(spans) - 1] = part.name
        position = b
    tokens = seq.source if source else seq.target
    spans += [(i, i + 1) for i in range(position, len(tokens))]
    if source:
        merged = merge_groups(seq, spans, None)
        return dataclasses.replace(
            merged, source=[names.get(i, token) for i, token in enumerate(merged.source)]
        )
    merged = merge_groups(seq, None, spans)
    target = [names.get(i, token) for i, token in enumerate(merged.target)]
    return dataclasses.replace(merged, target=target)


def reply_example(model, i: int, prompt: list[int], reply: str) -> tuple[list[int], list[int], int]:
    """``(source ids, target ids, first explained position)`` of a decoder-only example whose prompt (ids
    of a chat template or a segmented prompt) is followed by the forced ``reply``: the reply's text only
    (a text that repeats the rendered prompt first has it dropped), tokenized without special tokens.

    Example:
        >>> source, target, start = reply_example(model, 0, [5, 6], " the cat")
        >>> source, target[:start], model.convert_ids_to_tokens(target[start:])
        ([], [5, 6], ['Ġthe', 'Ġcat'])
    """
    ids = list(model.tokenizer(reply, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"generated_texts[{i}] has no tokens: give the reply to explain")
    # A special token written in the reply (an end-of-turn marker, a copied role header) is one token, as
    # the template writes it; a reply ends at its end-of-turn token, so text after one is not this reply
    # (a pasted rendered turn, the next turn): explaining it would explain tokens the model never replies.
    special = set(model.tokenizer.all_special_ids)
    inner = [k for k, token in enumerate(ids[:-1]) if token in special]
    if inner:
        marker = model.tokenizer.convert_ids_to_tokens(ids[inner[0]])
        raise ValueError(
            f"generated_texts[{i}] ({reply[:60]!r}) holds the special token {marker!r} before its end: give "
            "the reply's text only (the chat template's role header is already in the prompt; an end-of-turn "
            "token may only end the reply)"
        )
    model.check_length(len(prompt) + len(ids), f"the prompt plus generated_texts[{i}]")
    return [], prompt + ids, len(prompt)


def forced_replies(layouts: Sequence[PromptLayout], texts: Sequence[str]) -> list[str]:
    """The forced replies of prompts given as layouts: a text that starts with its rendered prompt (the
    convention of plain prompts) is cut to what follows it.

    Example:
        >>> layouts = [PromptLayout("Q: hi", [1], ["prompt"])] * 2
        >>> forced_replies(layouts, ["Q: hi there", " there"])
        [' there', ' there']
    """
    return [
        t[len(layout.text) :] if t.startswith(layout.text) else t
        for layout, t in zip(layouts, texts, strict=True)
    ]


def annotate(
    seq: SequenceAttribution, layout: PromptLayout, part_granularity: str | None, source: bool = False
) -> SequenceAttribution:
    """A decoder-only example explained after ``layout``'s prompt with its tokens' roles (the reply's:
    ``"assistant"``), its scaffolding masked (unless ``include_template``) and, at a part granularity, its
    prompt's parts merged into named rows (`segment_rows`). With ``source`` (an encoder-decoder, whose
    source is ``layout``'s prompt) the same on the source side; ``token_roles``, the target's, stay None.

    Example:
        >>> layout = plain_layout(tokenizer, "Paris is big.", [])
        >>> seq = model.attribute("Paris is big.", "Paris is big. Here", show_progress=False)[0]
        >>> annotate(seq, layout, None).token_roles[4:]                 # 6 prompt tokens, 3 of the reply
        ['prompt', 'prompt', 'assistant', 'assistant', 'assistant']
    """
    if source:
        masked_source = (
            () if layout.include_template else tuple(sorted({*seq.masked_source, *layout.template_positions}))
        )
        seq = dataclasses.replace(seq, masked_source=masked_source)
        return seq if part_granularity is None else segment_rows(seq, layout, part_granularity, source=True)
    roles = [*layout.roles, *["assistant"] * (len(seq.target) - len(layout.roles))]
    masked = (
        () if layout.include_template else tuple(sorted({*seq.masked_target, *layout.template_positions}))
    )
    seq = dataclasses.replace(seq, token_roles=roles, masked_target=masked)
    if part_granularity is not None:
        seq = segment_rows(seq, layout, part_granularity)
    return seq
