"""Readable text of subword tokens, for views and for grouping tokens into words and sentences.

Three tokenizer families mark word boundaries differently:

- byte-level BPE (GPT-2, Qwen, Bart): ``Ġ`` is a leading space, ``Ċ`` a newline, and every byte is mapped to
  a printable character, so ``é`` appears as ``Ã©``. `token_texts` maps the characters back to bytes and
  decodes them (``Ã©`` → ``é``);
- SentencePiece (Llama, T5, Marian): ``▁`` is a leading space; byte-fallback pieces such as ``<0x0A>`` or
  ``<0xC3><0xAF>`` (``ï``) stand for the bytes of characters missing from the vocabulary;
- WordPiece (BERT-style): ``##`` marks a continuation; every other token starts a new word.

Characters split over several tokens (byte-level BPE pieces, SentencePiece byte-fallback pieces, also inside
a merged token such as ``na<0xC3><0xAF>ve``) are decoded across the tokens of the sequence: the whole
character is shown on the token holding its first byte, and the tokens holding only its remaining bytes have
no text of their own (``""``; views label them `CONTINUATION`). Bytes that form no character (a sequence cut
in the middle of one) show as ``\\xNN``. Pass ``sequence=False`` for tokens that do not follow each other
(the top alternatives of one step): each is then decoded alone.

Example:
    >>> token_texts(["The", "Ġcaf", "Ã©", "Ċ"])
    ['The', ' caf', 'é', '\\n']
    >>> token_texts(["[CLS]", "play", "##ing"])
    ['[CLS]', ' play', 'ing']
    >>> token_texts(["▁na", "<0xC3>", "<0xAF>", "ve"])   # "ï" is two byte pieces: shown on the first
    [' na', 'ï', '', 've']
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
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
CONTINUATION = "·"
"""Label of a token that holds only the remaining bytes of a character shown on the token before it."""


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


def _utf8_length(lead: int) -> int:
    """How many bytes the UTF-8 character starting with byte ``lead`` has (0: not a lead byte)."""
    if lead < 0x80:
        return 1
    for length, (mask, value) in enumerate([(0xE0, 0xC0), (0xF0, 0xE0), (0xF8, 0xF0)], start=2):
        if lead & mask == value:
            return length
    return 0


def _decode_pieces(pieces: Sequence[bytes | str]) -> list[str]:
    """Text of each token from its bytes (``str``: text of its own, e.g. a special token, which ends a run).

    A character goes to the token holding its first byte; bytes that form no character show as ``\\xNN``.
    """
    texts = [piece if isinstance(piece, str) else "" for piece in pieces]
    data, owner = bytearray(), []
    for index, piece in [*enumerate(pieces), (None, "")]:
        if isinstance(piece, bytes):
            data += piece
            owner += [index] * len(piece)
            continue
        position = 0
        while position < len(data):
            length = _utf8_length(data[position])
            chunk = bytes(data[position : position + length]) if length else b""
            try:
                text = chunk.decode("utf-8") if len(chunk) == length > 0 else None
            except UnicodeDecodeError:
                text = None
            if text is None:
                text, length = f"\\x{data[position]:02x}", 1
            texts[owner[position]] += text
            position += length
        data, owner = bytearray(), []
    return texts


def _bpe_bytes(token: str) -> bytes | str:
    decoder = _byte_decoder()
    if looks_special(token) or not all(char in decoder for char in token):
        return token
    return bytes(decoder[char] for char in token)


def _sentencepiece_bytes(token: str) -> bytes | str:
    if looks_special(token):
        return token
    parts, position = [], 0
    for match in _BYTE_PIECE.finditer(token):  # a merged token may hold byte pieces amid text
        parts.append(token[position : match.start()].replace("▁", " ").encode("utf-8"))
        parts.append(bytes([int(match.group(1), 16)]))
        position = match.end()
    parts.append(token[position:].replace("▁", " ").encode("utf-8"))
    return b"".join(parts)


def token_texts(tokens: Sequence[str], scheme: Scheme | None = None, sequence: bool = True) -> list[str]:
    """The text each token stands for, spaces included, so that ``"".join(...)`` reads as the sequence.

    ``scheme`` is detected from the tokens when not given (see `detect_scheme`). With ``sequence=False``
    each token is decoded alone (for tokens that are alternatives, not a text).

    Example:
        >>> token_texts(["ĠðŁ", "ĺ", "Ĭ"])                     # an emoji split over three byte-level tokens
        [' 😊', '', '']
        >>> token_texts(["ĠÃ", "Ã©"], sequence=False)                # each alone: a cut character
        [' \\\\xc3', 'é']
    """
    scheme = scheme or detect_scheme(tokens)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown tokenizer scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    if scheme in ("bpe", "sentencepiece"):
        to_bytes = _bpe_bytes if scheme == "bpe" else _sentencepiece_bytes
        if not sequence:
            return [_decode_pieces([to_bytes(token)])[0] for token in tokens]
        return _decode_pieces([to_bytes(token) for token in tokens])
    if scheme == "wordpiece":
        texts = []
        for i, token in enumerate(tokens):
            if token.startswith("##"):
                texts.append(token[2:])
            else:
                texts.append(token if i == 0 or looks_special(token) else " " + token)
        return texts
    return list(tokens)


def token_labels(tokens: Sequence[str], scheme: Scheme | None = None, sequence: bool = True) -> list[str]:
    """Short labels for table headers: the token's text with whitespace made visible where it is all there is.

    A token holding only the rest of a character shown on the token before it is labelled `CONTINUATION`.

    Example:
        >>> token_labels(["ĠParis", "Ġ", "Ċ"])
        ['Paris', '␣', '\\\\n']
        >>> token_labels(["▁na", "<0xC3>", "<0xAF>", "ve"])
        ['na', 'ï', '·', 've']
    """
    labels = []
    for token, text in zip(tokens, token_texts(tokens, scheme, sequence), strict=True):
        stripped = text.strip()
        if stripped:
            labels.append(_visible(stripped))
        else:
            labels.append(_visible(text.replace(" ", "␣")) or (CONTINUATION if token else "∅"))
    return labels


def _visible(text: str) -> str:
    """Control characters (byte tokens such as 0x12) escaped: they would print nothing, or move the cursor."""
    escapes = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return "".join(escapes.get(char, char if char.isprintable() else f"\\x{ord(char):02x}") for char in text)
