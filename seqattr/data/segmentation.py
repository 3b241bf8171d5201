"""The one segmentation of tokens into words and sentences, shared by perturbation features and aggregation.

`seqattr.features` perturbs the words (``granularity="word"``) or sentences (``"sentence"``) made here, and
`seqattr.data.granularity.aggregate` merges rows and steps into the same words (``"word"``) and sentences
(``"sentence"``), so a perturbation feature and an aggregated word cover the same tokens.

The rules, on each token's text (`seqattr.data.tokens.token_texts`: ``Ġ``/``▁`` markers, byte-level encoding
and byte-fallback pieces decoded, WordPiece ``##`` continuations joined):

- **Words** are whitespace-delimited: a word starts at a token whose text starts with whitespace or that
  follows whitespace; every other token continues the word before it. Subword pieces join, and punctuation
  attached in the text stays with its word (``Paris.`` is one word; WordPiece tokenizers split it off
  themselves).
- **Whitespace-only tokens** go where their whitespace belongs. A run of them between two words is split
  after its last line break: the line break (``Ċ``, ``<0x0A>``, ``\\n\\n``) and whatever precedes it end the
  word before (``Paris.\\n\\n``), and the spaces after it (a lone ``Ġ``/``▁``, indentation) lead into the
  next word, as the ``Ġ``/``▁`` prefix they stand for does (``▁`` + ``2023`` is one word). With no word on
  one side (at the start or end of a sequence, next to a special token) they join the word on the other; a
  sequence of whitespace alone is one word.
- **Sentences** are runs of words ending with a word that ends with ``.``, ``!`` or ``?`` (closing quotes or
  brackets may follow) or that holds a line break after its first non-space character.
- **Tokens that stand alone** (special tokens: BOS, EOS, padding, chat scaffolding; in aggregation also
  masked tokens) belong to no word or sentence and end the one before them.

Granularity names are singular everywhere: ``"word"``, ``"sentence"`` (and ``"token"``, ``"all_tokens"`` for
perturbation features). `aggregate` also accepts the plural names of earlier versions, ``"words"``
(and Inseq's ``"subwords"``) and ``"sentences"`` (`GRANULARITY_ALIASES`).

Example:
    >>> texts = [" Paris", ".", "\\n", "\\n", "The", " ", "2023", "!"]
    >>> segment(texts, unit="word")
    [(0, 4), (4, 5), (5, 8)]
    >>> segment(texts, unit="sentence")
    [(0, 4), (4, 8)]
    >>> segment(["<s>", " a", "b", "</s>"], alone={0, 3}, unit="word")
    [(0, 1), (1, 3), (3, 4)]
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

Span = tuple[int, int]
"""A half-open ``[start, end)`` range of token positions."""

UNITS = ("word", "sentence")
GRANULARITY_ALIASES = {"words": "word", "subwords": "word", "sentences": "sentence"}
"""Plural names accepted by `aggregate` for backwards compatibility; the singular names are canonical."""

WORD_PATTERN = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?][\"')\]»”’]*$")
_LINE_BREAK = re.compile(r"[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")


def canonical_granularity(name: str) -> str:
    """The canonical (singular) name of a granularity: ``"words"`` → ``"word"``; other names unchanged.

    Example:
        >>> canonical_granularity("words"), canonical_granularity("sentence")
        ('word', 'sentence')
    """
    return GRANULARITY_ALIASES.get(name, name)


def segment(texts: Sequence[str], alone: Collection[int] = frozenset(), unit: str = "word") -> list[Span]:
    """Contiguous spans covering all tokens in order: each ``alone`` token by itself, the others in units.

    ``unit`` is ``"word"`` or ``"sentence"`` (see the module docstring for the rules).

    Example:
        >>> segment([" The", " c", "at", " sat", "."], unit="word")
        [(0, 1), (1, 3), (3, 5)]
    """
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; valid: {', '.join(map(repr, UNITS))}")
    words = pattern_spans(texts, WORD_PATTERN, alone)
    if unit == "word":
        return words
    sentences: list[Span] = []
    current: Span | None = None
    for start, end in words:
        if start in alone:
            if current is not None:
                sentences.append(current)
            sentences.append((start, end))
            current = None
            continue
        current = (start, end) if current is None else (current[0], end)
        text = "".join(texts[start:end]).lstrip()  # a line break leading into the word starts no sentence
        if _SENTENCE_END.search(text.rstrip()) or _LINE_BREAK.search(text):
            sentences.append(current)
            current = None
    if current is not None:
        sentences.append(current)
    return sentences


def pattern_spans(
    texts: Sequence[str], pattern: str | re.Pattern, alone: Collection[int] = frozenset()
) -> list[Span]:
    """Contiguous spans following the matches of ``pattern`` over the tokens' joined text.

    Each token with text joins the match holding its first non-space character (a token in no match is a
    unit of its own); whitespace-only tokens follow the rule of the module docstring. Matches never cross an
    ``alone`` token, which is a span of its own.

    Example:
        >>> pattern_spans(["The", " capit", "al", "."], r"\\S+")
        [(0, 1), (1, 4)]
        >>> pattern_spans(["The", " capit", "al", "."], r"\\w+|[^\\w\\s]")   # punctuation apart
        [(0, 1), (1, 3), (3, 4)]
    """
    regex = re.compile(pattern)
    unit_of: list[object] = [None] * len(texts)
    run: list[int] = []
    for i in [*range(len(texts)), None]:
        if i is not None and i not in alone:
            run.append(i)
            continue
        if run:
            _label_run(run, texts, regex, unit_of)
            run = []
        if i is not None:
            unit_of[i] = ("alone", i)
    spans: list[Span] = []
    for i, unit in enumerate(unit_of):
        if spans and unit_of[spans[-1][0]] == unit:
            spans[-1] = (spans[-1][0], i + 1)
        else:
            spans.append((i, i + 1))
    return spans


def _label_run(run: list[int], texts: Sequence[str], regex: re.Pattern, unit_of: list[object]) -> None:
    """Label each token of a run (no alone token inside) with the unit it belongs to."""
    text, starts = "", []
    for i in run:
        starts.append(len(text))
        text += texts[i]
    matches = [(m.start(), m.end()) for m in regex.finditer(text) if m.end() > m.start()]
    labels: list[object] = []
    m = 0  # tokens and matches both go left to right: one pass over the matches, not one per token
    for i, start in zip(run, starts, strict=True):
        stripped = len(texts[i]) - len(texts[i].lstrip())
        if stripped == len(texts[i]):
            labels.append(None)  # only whitespace: decided below
            continue
        first = start + stripped
        while m < len(matches) and matches[m][1] <= first:
            m += 1
        inside = m < len(matches) and matches[m][0] <= first
        labels.append(("match", m) if inside else ("unmatched", i))
    k = 0
    while k < len(labels):
        if labels[k] is not None:
            k += 1
            continue
        end = k
        while end < len(labels) and labels[end] is None:
            end += 1
        before = labels[k - 1] if k > 0 else None
        after = labels[end] if end < len(labels) else None
        if before is None and after is None:
            split = end  # whitespace alone: one unit
            before = ("whitespace", run[k])
        elif before is None:
            split = k
        elif after is None:
            split = end
        else:  # up to the last line break: the word before; the spaces after it: the next word
            breaks = [j for j in range(k, end) if _LINE_BREAK.search(texts[run[j]])]
            split = breaks[-1] + 1 if breaks else k
        for j in range(k, end):
            labels[j] = before if j < split else after
        k = end
    for i, label in zip(run, labels, strict=True):
        unit_of[i] = label
