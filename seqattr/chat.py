"""Chat models: conversations in, the tokenizer's chat template applied, the reply explained.

``attribute(messages=[{"role": "system", "content": ...}, {"role": "user", "content": ...}])`` renders the
conversation with ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``, exactly the ids that
call gives, and explains the assistant's reply: generated, or forced with ``generated_texts=`` (the reply's
text only, never the prompt). `render_chat` returns the prompt's `seqattr.segments.PromptLayout`: each
token's role (the message it belongs to, or ``"template"`` for the scaffolding the template adds) and each
message's token span, found from the tokens' character offsets in the rendered text.

Example:
    >>> from seqattr.testing import tiny_model
    >>> chat_tokenizer = tiny_model("qwen2")[1]                   # a tiny tokenizer with a ChatML template
    >>> conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the cat"}]
    >>> layout = render_chat(chat_tokenizer, conversation)
    >>> layout.ids == chat_tokenizer.apply_chat_template(conversation, add_generation_prompt=True,
    ...                                                  return_dict=False)
    True
    >>> [(m.name, m.role) for m in layout.messages]
    [('system', 'system'), ('user', 'user')]
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from seqattr.segments import (
    PromptLayout,
    Segment,
    as_part_names,
    as_pieces,
    check_part_names,
    cut_spans,
    locate,
    named_segments,
    offsets_of,
    plain_layout,
    roles_from_offsets,
    token_spans,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from seqattr.models.family import ModelFamily

ROLES = ("system", "user", "assistant", "tool")
"""The roles a message may have."""


def as_conversations(messages: Any, argument: str = "messages") -> list[list[dict[str, str]]]:
    """``messages`` as a non-empty list of conversations: one conversation (a list of ``{"role",
    "content"}`` dicts) is a list of one; unknown roles, empty conversations and empty contents are refused.

    Example:
        >>> as_conversations([{"role": "user", "content": "Hi"}])
        [[{'role': 'user', 'content': 'Hi'}]]
        >>> as_conversations([{"role": "robot", "content": "Hi"}])
        Traceback (most recent call last):
        ...
        ValueError: messages[0]: unknown role 'robot'; valid roles: 'system', 'user', 'assistant', 'tool'
        >>> as_conversations([])
        Traceback (most recent call last):
        ...
        ValueError: messages is an empty conversation; give at least one message, e.g. [{'role': 'user', ...
    """
    example = "[{'role': 'user', 'content': 'Hello'}]"
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise TypeError(f"{argument} must be a list of messages like {example} (or a list of such lists)")
    if not messages:
        raise ValueError(f"{argument} is an empty conversation; give at least one message, e.g. {example}")
    several = all(isinstance(m, Sequence) and not isinstance(m, (str, bytes)) for m in messages)
    conversations = list(messages) if several else [messages]
    checked = []
    for c, conversation in enumerate(conversations):
        where = f"{argument}[{c}]" if several else argument
        if not conversation:
            raise ValueError(f"{where} is an empty conversation; give at least one message, e.g. {example}")
        turns = []
        for k, message in enumerate(conversation):
            name = f"{where}[{k}]"
            if not isinstance(message, Mapping):
                raise TypeError(f"{name} must be a dict with 'role' and 'content', like {example[1:-1]}")
            missing = [key for key in ("role", "content") if key not in message]
            if missing:
                keys = ", ".join(map(repr, message)) or "none"
                raise TypeError(
                    f"{name} has no {' and no '.join(map(repr, missing))} key (its keys: {keys}); a message "
                    f"must be a dict with 'role' and 'content', like {example[1:-1]}"
                )
            role, content = message["role"], message["content"]
            if role not in ROLES:
                raise ValueError(f"{name}: unknown role {role!r}; valid roles: {', '.join(map(repr, ROLES))}")
            if not isinstance(content, str) or not content.strip():
                raise ValueError(
                    f"{name} ({role}) has no text content; give its 'content' as a non-empty string"
                )
            turns.append(dict(message))
        checked.append(turns)
    return checked


def message_names(conversation: Sequence[Mapping[str, str]]) -> list[str]:
    """A name per message: its role, numbered when the role occurs more than once.

    Example:
        >>> message_names([{"role": "user"}, {"role": "assistant"}, {"role": "user"}])
        ['user 1', 'assistant', 'user 2']
    """
    counts = Counter(m["role"] for m in conversation)
    seen: Counter = Counter()
    names = []
    for message in conversation:
        role = message["role"]
        seen[role] += 1
        names.append(role if counts[role] == 1 else f"{role} {seen[role]}")
    return names


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    conversation: Sequence[Mapping[str, str]],
    segments: Sequence[tuple[str, str]] = (),
    context_parts: Sequence[str] = (),
) -> PromptLayout:
    """The prompt of ``conversation`` as the tokenizer's chat template makes it (with the generation prompt),
    its tokens' roles and its messages' spans; ``segments`` (``(name, text)`` pieces) are found in the
    messages' texts, in order. ``context_parts`` (names of messages or segments) add the prompt rendered
    without them (`without_context`).

    Example:
        >>> from seqattr.testing import tiny_model
        >>> chat_tokenizer = tiny_model("qwen2")[1]
        >>> layout = render_chat(chat_tokenizer, [{"role": "user", "content": "Doc: Paris. Q: where?"}],
        ...                      segments=[("doc", "Doc: Paris."), ("question", "Q: where?")])
        >>> [(s.name, s.role) for s in layout.named]
        [('doc', 'user'), ('question', 'user')]
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"this model's tokenizer ({type(tokenizer).__name__}) has no chat template, so messages= cannot "
            "be turned into a prompt; use a chat (instruct) model, set tokenizer.chat_template to a Jinja "
            "template, or pass the prompt as text with input_texts="
        )
    conversation = [dict(m) for m in conversation]
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=False)
    offsets = offsets_of(tokenizer, text, list(ids), special=False)
    spans, cursor = [], 0
    for name, message in zip(message_names(conversation), conversation, strict=True):
        content = message["content"]
        found = text.find(content, cursor)
        if found < 0:  # templates that strip the content (Llama's, Gemma's)
            content = content.strip()
            found = text.find(content, cursor)
        if found < 0:
            raise ValueError(
                f"the chat template does not copy message {name!r} verbatim into the prompt, so its tokens "
                "cannot be found; pass the rendered prompt as input_texts instead"
            )
        spans.append((name, message["role"], found, found + len(content)))
        cursor = found + len(content)
    roles = roles_from_offsets(offsets, [(role, a, b) for _, role, a, b in spans])
    messages = tuple(Segment(name, role, *token_spans(offsets, a, b)) for name, role, a, b in spans)
    named = ()
    if segments:
        named = named_segments(offsets, roles, locate(text, segments, "the conversation's messages"))
        for segment in named:
            if any(roles[i] == "template" for i in range(segment.start, segment.end)):
                raise ValueError(
                    f"segment {segment.name!r} crosses the chat template's scaffolding between messages; a "
                    "segment must lie within one message's text"
                )
    layout = PromptLayout(text, list(ids), roles, messages, named)
    if not context_parts:
        return layout
    check_part_names(layout, context_parts, "the conversation")
    rest = without_context(conversation, segments, context_parts)
    contextless = tokenizer.apply_chat_template(rest, add_generation_prompt=True, return_dict=False)
    return dataclasses.replace(layout, context_parts=tuple(context_parts), contextless_ids=tuple(contextless))


def without_context(
    conversation: Sequence[Mapping[str, str]],
    segments: Sequence[tuple[str, str]],
    names: Sequence[str],
) -> list[dict[str, str]]:
    """``conversation`` without its context: the messages named in ``names`` dropped, the named segments in
    ``names`` cut out of their messages' texts (a message left without text is dropped too); refused when no
    message is left.

    Example:
        >>> chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Doc: x. Q: y?"}]
        >>> without_context(chat, [("doc", "Doc: x.")], ["system", "doc"])
        [{'role': 'user', 'content': ' Q: y?'}]
    """
    pending = list(segments)
    kept = []
    for name, message in zip(message_names(conversation), conversation, strict=True):
        content, cursor, cut = message["content"], 0, []
        # The segments lie within the messages' texts, in order (`render_chat` checked it).
        while pending and (found := content.find(pending[0][1], cursor)) >= 0:
            segment, piece = pending.pop(0)
            cursor = found + len(piece)
            if segment in names:
                cut.append((found, cursor))
        content = cut_spans(content, cut)
        if name not in names and content.strip():
            kept.append({**message, "content": content})
    if not kept:
        raise ValueError(
            f"context_parts={list(names)} cover the whole conversation: without them no message is left to "
            "compare with; leave the question out of the context"
        )
    return kept


def check_prompt_parts(family: ModelFamily, messages: Any) -> None:
    """Refuse prompt parts a model cannot read: segments are for generative models (a decoder-only prompt,
    an encoder-decoder's source), chat messages for decoder-only models.

    Example:
        >>> from seqattr.models.family import ENCODER_DECODER
        >>> check_prompt_parts(ENCODER_DECODER, [{"role": "user", "content": "Hi"}])
        Traceback (most recent call last):
        ...
        ValueError: messages= are for decoder-only chat models (the chat template makes the prompt ...
    """
    if family.prompt_side is None:
        raise ValueError(
            "messages= and segments= are for generative models (decoder-only or encoder-decoder); this is a "
            f"{family} model: pass its input as input_texts="
        )
    if messages is not None and not family.reads_chat:
        raise ValueError(
            "messages= are for decoder-only chat models (the chat template makes the prompt the reply "
            f"continues); this is an {family} model, whose input is its source text: pass input_texts= "
            "(with segments=[(name, text), ...] to name its parts)"
        )


def prompt_layouts(
    tokenizer: PreTrainedTokenizerBase,
    input_texts: Any,
    messages: Any,
    segments: Any,
    context_parts: Any = None,
) -> tuple[list[str], list[PromptLayout]]:
    """The prompts of an ``attribute`` call given as ``messages`` (conversations) and/or with named
    ``segments``: their texts and layouts. ``segments`` alone (no text, no messages) are the prompt's pieces,
    joined; with a text or a conversation they are found in it. One list of ``(name, text)`` pairs goes
    with one prompt; several prompts take a list of such lists. ``context_parts`` name the parts (messages,
    segments) that are every prompt's context: each layout then holds its prompt without them.

    Example:
        >>> pieces = [("fact", "Paris is big."), ("q", " Where?")]
        >>> texts, layouts = prompt_layouts(tokenizer, None, None, pieces)
        >>> texts, [s.name for s in layouts[0].named]
        (['Paris is big. Where?'], ['fact', 'q'])
    """
    if messages is not None and input_texts is not None:
        raise ValueError("give the prompt once: input_texts= (text) or messages= (a conversation), not both")
    names = () if context_parts is None else as_part_names(context_parts)
    conversations = None if messages is None else as_conversations(messages)
    if conversations is not None:
        count = len(conversations)
    elif input_texts is not None:
        count = 1 if isinstance(input_texts, str) else len(input_texts)
    else:
        count = 1 if segments and not _is_nested(segments) else len(segments or ())
    pieces: list[list[tuple[str, str]]] = [[] for _ in range(count)]
    if segments is not None:
        nested = _is_nested(segments)
        if not nested and count != 1:
            raise ValueError(
                f"segments= is one prompt's list of (name, text) pairs, but there are {count} prompts; give "
                "one list of pairs per prompt"
            )
        per_prompt = list(segments) if nested else [segments]
        if len(per_prompt) != count:
            raise ValueError(
                f"got {count} prompts but {len(per_prompt)} lists of segments; give one per prompt"
            )
        pieces = [as_pieces(p, f"segments[{k}]" if nested else "segments") for k, p in enumerate(per_prompt)]
    if conversations is not None:
        layouts = [render_chat(tokenizer, c, p, names) for c, p in zip(conversations, pieces, strict=True)]
    else:
        if input_texts is None:
            texts = ["".join(text for _, text in p) for p in pieces]
        else:
            texts = [input_texts] if isinstance(input_texts, str) else list(input_texts)
            if not all(isinstance(t, str) for t in texts):
                raise TypeError(
                    "segments= go with text prompts (or messages=); pairs of texts take no segments"
                )
        layouts = [plain_layout(tokenizer, t, p, names) for t, p in zip(texts, pieces, strict=True)]
    return [layout.text for layout in layouts], layouts


def _is_nested(segments: Any) -> bool:
    """Whether ``segments`` is a list of lists of pairs (several prompts) rather than one list of pairs."""
    return (
        isinstance(segments, Sequence)
        and bool(segments)
        and all(isinstance(p, Sequence) and p and not isinstance(p[0], str) for p in segments)
    )
