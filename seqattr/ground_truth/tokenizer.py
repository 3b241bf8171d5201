"""The word-level tokenizer of the ground-truth tasks: one token per whitespace-separated word.

One token per word keeps the tasks' gold links exact at the token level, and equal at the word level
(``aggregate("words")`` changes nothing). Special tokens: ``<pad>``=0, ``<s>``=1, ``</s>``=2, ``<unk>``=3;
with ``append_eos`` (the encoder-decoder task) every encoding ends with ``</s>``, as Bart's and T5's do.

Example:
    >>> tok = word_tokenizer(["a", "b"], append_eos=True)
    >>> tok.convert_ids_to_tokens(tok("b a")["input_ids"])
    ['b', 'a', '</s>']
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def word_tokenizer(words: Sequence[str], append_eos: bool = False) -> PreTrainedTokenizerFast:
    """A tokenizer whose vocabulary is `SPECIAL_TOKENS` followed by ``words`` (built offline, deterministic).

    Example:
        >>> word_tokenizer(["x"])("x x")["input_ids"]
        [4, 4]
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    if len(vocab) != len(SPECIAL_TOKENS) + len(words):
        raise ValueError("the words of a word tokenizer must be distinct and not special tokens")
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if append_eos:
        backend.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
