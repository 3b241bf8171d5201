"""The entity-span view of a token classifier's output: the text with its predicted entities marked, and
for each entity (or a chosen one) its attribution over the input tokens.

An entity (`seqattr.data.labels.entities`) is a run of tokens whose explained tags name one entity
(``B-LOC I-LOC``); its attribution is the mean of its steps' columns, one score per input token (NaN where
none of its steps sees the token: a causal tagger's tokens after the entity). In the terminal the text reads
``[bob](PER) went to [london](LOC).`` (each span also coloured by its label), followed by a table of input
tokens x entities coloured as the heatmap is (red positive, blue negative, one scale for the table). The
HTML page (`seqattr.viz.html`) shows the same marked text above each token classifier's example; clicking an
entity colours the input tokens by its attribution.

Example:
    >>> from seqattr.testing import tiny_task_model
    >>> hf_tagger, tagger_tokenizer = tiny_task_model("token-classification")
    >>> tagger = seqattr.load_model(hf_tagger, "saliency", tokenizer=tagger_tokenizer)
    >>> tagged = tagger.attribute("bob went to london.", show_progress=False)
    >>> tagged.show_entities()                                  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    #0
    [bob](PER) went to [london](LOC) .
    ...PER bob ... LOC london ...
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from seqattr.data.attribution import AttributionOutput, SequenceAttribution
from seqattr.data.labels import Entity
from seqattr.data.tokens import detect_scheme, looks_special, token_labels, token_texts

if TYPE_CHECKING:
    from rich.console import Console, Group

LABEL_COLOURS = ("#2a7ab0", "#b5651d", "#3c8d40", "#8e44ad", "#c0392b", "#16a085", "#7f6000", "#c2185b")
"""Colours of entity labels, assigned in order of first appearance (terminal and page alike)."""


def label_colours(entities: list[Entity]) -> dict[str, str]:
    """A colour per entity label, in order of first appearance (cycling through `LABEL_COLOURS`).

    Example:
        >>> from seqattr.data.labels import Entity
        >>> found = [Entity("PER", 1, 2, ["bob"], [1], None), Entity("LOC", 4, 5, ["paris"], [4], None)]
        >>> label_colours(found)
        {'PER': '#2a7ab0', 'LOC': '#b5651d'}
    """
    colours: dict[str, str] = {}
    for entity in entities:
        colours.setdefault(entity.label, LABEL_COLOURS[len(colours) % len(LABEL_COLOURS)])
    return colours


def text_pieces(seq: SequenceAttribution, entities: list[Entity]) -> list[tuple[str, int | None]]:
    """The input text in pieces ``(text, entity index or None)``: each entity's tokens as one piece, the
    tokens between them as others, special tokens left out, a span's leading space kept outside it.

    Example:
        >>> from seqattr.testing import tiny_task_model
        >>> hf_tagger, tagger_tokenizer = tiny_task_model("token-classification")
        >>> tagger = seqattr.load_model(hf_tagger, "saliency", tokenizer=tagger_tokenizer)
        >>> seq = tagger.attribute("bob went to london.", show_progress=False)[0]
        >>> text_pieces(seq, seq.entities())
        [('bob', 0), (' went to ', None), ('london', 1), (' .', None)]
    """
    scheme = detect_scheme(seq.source)
    if scheme == "plain":  # whole words without subword markers (WordPiece without ##): words apart
        texts = [("" if i == 0 else " ") + token for i, token in enumerate(seq.source)]
    else:
        texts = token_texts(seq.source, scheme)
    owner = {p: k for k, entity in enumerate(entities) for p in range(entity.start, entity.end)}
    pieces: list[tuple[str, int | None]] = []
    for position, (token, text) in enumerate(zip(seq.source, texts, strict=True)):
        if looks_special(token):
            continue
        k = owner.get(position)
        if pieces and pieces[-1][1] == k and (k is None or position > entities[k].start):
            pieces[-1] = (pieces[-1][0] + text, k)
            continue
        if k is not None and text[:1].isspace():  # the space before an entity belongs to the text around it
            pieces.append((text[: len(text) - len(text.lstrip())], None))
            text = text.lstrip()
        pieces.append((text, k))
    merged: list[tuple[str, int | None]] = []
    for text, k in pieces:
        if merged and k is None and merged[-1][1] is None:
            merged[-1] = (merged[-1][0] + text, None)
        else:
            merged.append((text, k))
    if merged and merged[0][1] is None:
        merged[0] = (merged[0][0].lstrip(), None)
    return [(text, k) for text, k in merged if text]


def pick_entities(entities: list[Entity], entity: int | str | None) -> list[int]:
    """Indices of the entities to show: all (None), the ``entity``-th, or those whose text or label is
    ``entity``; anything else is refused, listing the entities.

    Example:
        >>> from seqattr.data.labels import Entity
        >>> found = [Entity("PER", 1, 2, ["bob"], [1], None), Entity("LOC", 4, 5, ["paris"], [4], None)]
        >>> pick_entities(found, None), pick_entities(found, "paris"), pick_entities(found, "PER")
        ([0, 1], [1], [0])
    """
    if entity is None:
        return list(range(len(entities)))
    if isinstance(entity, int) and not isinstance(entity, bool) and -len(entities) <= entity < len(entities):
        return [entity % len(entities)]
    chosen = [k for k, e in enumerate(entities) if entity in (e.text, e.label)]
    if chosen:
        return chosen
    listed = ", ".join(f"{k}={e.label}:{e.text!r}" for k, e in enumerate(entities)) or "none"
    raise ValueError(
        f"entity={entity!r} is not an entity of this example; give an index, a text or a label of: {listed}"
    )


def entity_renderable(
    seq: SequenceAttribution, entity: int | str | None = None, title: str | None = None
) -> Group:
    """The terminal view of one example: its marked text, then the chosen entities' attributions.

    Example:
        >>> from rich.console import Console
        >>> from seqattr.testing import tiny_task_model
        >>> hf_tagger, tagger_tokenizer = tiny_task_model("token-classification")
        >>> tagger = seqattr.load_model(hf_tagger, "saliency", tokenizer=tagger_tokenizer)
        >>> seq = tagger.attribute("bob went to london.", show_progress=False)[0]
        >>> Console(width=80).print(entity_renderable(seq, "london"))    # doctest: +ELLIPSIS
        [bob](PER) went to [london](LOC) .
        ...LOC london...
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from seqattr.viz.console import cell_style, format_score

    entities = seq.entities()
    colours = label_colours(entities)
    line = Text()
    for text, k in text_pieces(seq, entities):
        if k is None:
            line.append(text)
        else:
            style = f"bold {colours[entities[k].label]}"
            line.append("[", style=style)
            line.append(text, style=f"{style} underline")
            line.append(f"]({entities[k].label})", style=style)
    parts: list = [Text(title, style="bold")] if title else []
    parts.append(line)
    if not entities:
        parts.append(Text("no entity: every explained tag is outside one (O)", style="dim"))
        return Group(*parts)
    chosen = pick_entities(entities, entity)
    columns = [entities[k] for k in chosen]
    values = [float(v) for e in columns for v in e.attributions.tolist() if not math.isnan(float(v))]
    scale = max((abs(v) for v in values), default=0.0)
    table = Table()
    table.add_column("token")
    for e in columns:
        table.add_column(
            f"{e.label} {e.text}",
            justify="right",
            style=colours[e.label],
            header_style=f"bold {colours[e.label]}",
        )
    labels = token_labels(seq.source, detect_scheme(seq.source))
    for position, label in enumerate(labels):
        inside = [e.start <= position < e.end for e in columns]
        cells = []
        for e, own in zip(columns, inside, strict=True):
            value = float(e.attributions[position])
            cells.append(Text(format_score(value) + ("*" if own else ""), style=cell_style(value, scale)))
        table.add_row(Text(label), *cells)
    note = "attribution of each entity: the mean of its steps; * its own tokens; blank: unseen by its steps"
    parts += [table, Text(note, style="dim")]
    return Group(*parts)


def show(
    attributions: AttributionOutput | SequenceAttribution,
    entity: int | str | None = None,
    console: Console | None = None,
    example: int | None = None,
) -> None:
    """Print the entity-span view of a token classifier's output: every example (or ``example``), each with
    its marked text and the attributions of its entities (all, or ``entity``: an index, a text or a label).

    Example:
        >>> from seqattr.testing import tiny_task_model
        >>> hf_tagger, tagger_tokenizer = tiny_task_model("token-classification")
        >>> tagger = seqattr.load_model(hf_tagger, "saliency", tokenizer=tagger_tokenizer)
        >>> show(tagger.attribute("bob went to london.", show_progress=False), entity=0)  # doctest: +ELLIPSIS
        #0
        [bob](PER) went to [london](LOC) .
        ...PER bob...
    """
    from rich.console import Console, Group

    if isinstance(attributions, SequenceAttribution):
        views = [entity_renderable(attributions, entity)]
    else:
        task = attributions.info.get("task")
        if task is not None and task != "token-classification":
            raise ValueError(f"the entity view reads a token classifier's output; this one explains {task}")
        indices = range(len(attributions)) if example is None else [example]
        views = [entity_renderable(attributions[i], entity, title=f"#{i}") for i in indices]
    (console or Console()).print(Group(*views))
