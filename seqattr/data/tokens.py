"""Readable text of subword tokens, for views and for grouping tokens into words and sentences.

Three tokenizer families mark word boundaries differently:

- byte-level BPE (GPT-2, Qwen, Bart): ``Ġ`` is a leading space, ``Ċ`` a newline, and every byte is mapped to
  a printable character, so ``é`` appears as ``Ã©``. `token_texts` maps the characters back to bytes and
  decodes them (``Ã©`` → ``é``); a token holding only part of a multi-byte character shows its bytes
  (``\\xc3``) because it has no text of its own;
- SentencePiece (Llama, T5, Marian): ``▁`` is a leading space; byte-fallback pieces such as ``<0x0A>`` are
  decoded when they hold a whole (ASCII) character;
- WordPiece (BERT-style): ``##`` marks a continuation; every other token starts a new word.

Example:
    >>> token_texts(["The", "Ġcaf", "Ã©", "Ċ"])
    ['The', ' caf', 'é', '\\n']
    >>> token_texts(["[CLS]", "play", "##ing"])
    ['[CLS]', ' play', 'ing']
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Literal

Scheme = Literal["bpe", "sentencepiece", "wordpiece", "plain"]
SCHEMES = ("bpe", "sentencepiece", "wordpiece", "plain")

# Special tokens of the common families: <s>, </s>, <pad>, <|endoftext|>, <|im_start|>, <extra_id_0>, [CLS].
# Byte-fallback pieces (<0x0A>) start with a digit and are not special.
_SPECIAL = re.compile(r"^(<\|?[A-Za-z_/][^<>\s]*\|?>|\[[A-Z]+\])$")
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def looks_special(token: str) -> bool:
    """True for tokens shaped like special tokens (``<s>``, ``</s>``, ``<|endoftext|>``, ``[CLS]``, ...).

    Used when the tokenizer's list of special ids is not at hand (outputs built by hand or loaded from old
    files); `AttributionOutput.mask_special` prefers the ids recorded at attribution time.

    Example:
        >>> looks_special("<|im_start|>"), looks_special("<0x0A>"), looks_special("Ġ<")
        (True, False, False)
    """
    return bool(_SPECIAL.match(token))


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's map from its printable stand-in characters back to the bytes they encode."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def detect_scheme(tokens: Sequence[str]) -> Scheme:
    """The subword family of a token sequence, from the markers it contains.

    Example:
        >>> detect_scheme(["▁The", "▁cat"]), detect_scheme(["The", "Ġcat"]), detect_scheme(["play", "##ing"])
        ('sentencepiece', 'bpe', 'wordpiece')
    """
    if any(token.startswith("▁") for token in tokens):
        return "sentencepiece"
    if any("Ġ" in token or "Ċ" in token for token in tokens):
        return "bpe"
    if any(token.startswith("##") for token in tokens):
        return "wordpiece"
    return "plain"


def _bytes_to_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # Part of a multi-byte character: its bytes are all there is to show.
        return "".join(f"\\x{b:02x}" if b >= 0x80 else chr(b) for b in data)


def _bpe_text(token: str) -> str:
    decoder = _byte_decoder()
    if looks_special(token) or not all(char in decoder for char in token):
        return token
    return _bytes_to_text(bytes(decoder[char] for char in token))


def _sentencepiece_text(token: str) -> str:
    fallback = _BYTE_FALLBACK.match(token)
    if fallback:
        byte = int(fallback.group(1), 16)
        return chr(byte) if byte < 0x80 else token
    return token.replace("▁", " ")


def token_texts(tokens: Sequence[str], scheme: Scheme | None = None) -> list[str]:
    """The text each token stands for, spaces included, so that ``"".join(...)`` reads as the sequence.

    ``scheme`` is detected from the tokens when not given (see `detect_scheme`).
    """
    scheme = scheme or detect_scheme(tokens)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown tokenizer scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    if scheme == "bpe":
        return [_bpe_text(token) for token in tokens]
    if scheme == "sentencepiece":
        return [_sentencepiece_text(token) for token in tokens]
    if scheme == "wordpiece":
        texts = []
        for i, token in enumerate(tokens):
            if token.startswith("##"):
                texts.append(token[2:])
            else:
                texts.append(token if i == 0 or looks_special(token) else " " + token)
        return texts
    return list(tokens)


def token_labels(tokens: Sequence[str], scheme: Scheme | None = None) -> list[str]:
    """Short labels for table headers: the token's text with whitespace made visible where it is all there is.

    Example:
        >>> token_labels(["ĠParis", "Ġ", "Ċ"])
        ['Paris', '␣', '\\\\n']
    """
    labels = []
    for text in token_texts(tokens, scheme):
        stripped = text.strip()
        labels.append(_visible(stripped) if stripped else _visible(text.replace(" ", "␣")) or "∅")
    return labels


def _visible(text: str) -> str:
    """Control characters (byte tokens such as 0x12) escaped: they would print nothing, or move the cursor."""
    escapes = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return "".join(escapes.get(char, char if char.isprintable() else f"\\x{ord(char):02x}") for char in text)
