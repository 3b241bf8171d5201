"""Tiny random-weight models with offline tokenizers, one per supported architecture family.

Tests of an attribution toolkit need real model classes (their embedding layers, caches, generation
quirks) and real tokenizers (their subword markers and special tokens), but neither the Hub nor large
weights. :func:`tiny_model` builds both in-process, in well under a second each:

- the tokenizer is trained on a small corpus embedded below, with the family's own tokenizer style:
  byte-level BPE with the ``Ġ`` space marker for gpt2 / qwen2 / bart, SentencePiece-style ``▁`` pieces for
  llama / t5 / marian (Marian with the real sentencepiece-based ``MarianTokenizer``), and the family's
  special tokens at the family's usual ids;
- the model is the family's real class with 2 layers, a hidden size of 32-64 and random weights whose
  scale is raised above the usual 0.02 so that next-token distributions are far from uniform (gradients
  and greedy generations are then non-degenerate).

Results are cached per process: treat the returned model and tokenizer as read-only (do not train the
model in place or add tokens to the tokenizer; ``copy.deepcopy`` them first if you must).

Example:
    >>> from seqattr.testing import tiny_model
    >>> model, tok = tiny_model("gpt2")
    >>> enc = tok("The cat sat on the mat.", return_tensors="pt")
    >>> out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    >>> out.shape[1] <= enc["input_ids"].shape[1] + 4
    True
    >>> tok.convert_ids_to_tokens(tok("the cat")["input_ids"])[-1].startswith("Ġ")
    True
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import io
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

MAX_POSITIONS = 128
"""Context length of the tiny models (and ``model_max_length`` of their tokenizers), kept small so that
code paths for over-long inputs can be tested cheaply."""

# Standard deviation of the random weights of the decoder-only models. Hugging Face's default (0.02)
# makes a 64-wide model's logits almost constant (all probabilities ~1/V, gradients ~0); 0.3 gives
# peaked, varied next-token distributions while the layer norms keep activations bounded.
_INIT_STD = 0.3
# The encoder-decoders need another recipe (see _decorrelate_tied_head): a small init (0.05; T5 uses its
# own factor) and random-signed gains on the decoder's last norm, scaled so logits have std ~1.5-2.
_SEQ2SEQ_INIT_STD = 0.05
_T5_INIT_FACTOR = 2.0

# --------------------------------------------------------------------------------------------------
# Training corpus. Varied English (questions, numbers, contractions, punctuation, capitalised words) so
# that the tokenizers learn whole-word pieces for common words and split rarer ones into subwords;
# French and German lines so the translation-style tokenizers (t5, marian, bart) see accented letters.
# --------------------------------------------------------------------------------------------------
ENGLISH_CORPUS = (
    "The cat sat on the mat.",
    "The dog sat on the mat, and the cat ran away.",
    "A quick brown fox jumps over the lazy dog.",
    "The capital of France is Paris.",
    "The capital of Germany is Berlin.",
    "Paris is a beautiful city in the north of France.",
    "My name is Alice and I live in London.",
    "Bob is my friend, and he lives in New York.",
    "What is the weather like today?",
    "It is sunny today, but it will rain tomorrow.",
    "I don't think that's a good idea.",
    "She said that she would come back at 5 o'clock.",
    "There are 12 months in a year and 7 days in a week.",
    "In 2024, the team won the final match 3 to 1.",
    "Water boils at 100 degrees Celsius.",
    "The sun rises in the east and sets in the west.",
    "Could you please pass me the salt?",
    "He reads a book every evening before going to bed.",
    "The children are playing in the garden.",
    "We went to the market to buy apples, bread and cheese.",
    "Music makes people happy.",
    "The movie was long, but the ending was wonderful.",
    "Learning a new language takes time and patience.",
    "The old man walked slowly along the river.",
    "Computers can translate text from one language to another.",
    "The teacher asked the students a difficult question.",
    "Why is the sky blue?",
    "Because sunlight is scattered by the air.",
    "Once upon a time, there was a little girl who lived in a village.",
    "The meeting starts at nine and ends at noon.",
    "Please write your answer in the box below.",
    "This is a test of the tokenizer.",
    "The model predicts the next word in the sentence.",
    "Attribution methods explain which input words matter.",
    "Good morning! How are you?",
    "I am fine, thank you.",
    "The train to Berlin leaves from platform 4.",
    "They have been working on this project for two years.",
    "Dogs and cats are the most popular pets.",
    "The price of the coffee was 3.50 dollars.",
    "Summer is warm and winter is cold.",
    "The library is open from Monday to Friday.",
    "You can't always get what you want.",
    "The scientist measured the temperature of the water.",
    "Translate English to German: The house is wonderful.",
    "Translate English to French: The cat is on the table.",
)

FRENCH_CORPUS = (
    "Le chat est assis sur le tapis.",
    "La capitale de la France est Paris.",
    "Je m'appelle Alice et j'habite à Londres.",
    "Il fait beau aujourd'hui, mais il pleuvra demain.",
    "Les enfants jouent dans le jardin.",
    "Nous sommes allés au marché pour acheter du pain.",
    "Le chat est sur la table.",
    "Où est la gare, s'il vous plaît ?",
    "Ce film était très long, mais la fin était belle.",
    "L'été est chaud et l'hiver est froid.",
)

GERMAN_CORPUS = (
    "Die Katze sitzt auf der Matte.",
    "Die Hauptstadt von Deutschland ist Berlin.",
    "Ich heiße Alice und wohne in London.",
    "Heute ist es sonnig, aber morgen wird es regnen.",
    "Die Kinder spielen im Garten.",
    "Das Haus ist wunderbar.",
    "Wir sind zum Markt gegangen, um Äpfel und Brot zu kaufen.",
    "Der Zug nach Berlin fährt von Gleis 4 ab.",
    "Der Sommer ist warm und der Winter ist kalt.",
    "Warum ist der Himmel blau? Weil das Licht gestreut wird.",
)

CORPUS = ENGLISH_CORPUS + FRENCH_CORPUS + GERMAN_CORPUS
"""Everything the tiny tokenizers are trained on (every architecture sees all of it)."""

# Minimal ChatML template, as Qwen2 tokenizers ship one (other families' tiny tokenizers have none).
_CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


# --------------------------------------------------------------------------------------------------
# Tokenizer training helpers
# --------------------------------------------------------------------------------------------------
def _train_bpe(
    pre_tokenizer, vocab_size: int, *, byte_level: bool, normalizer=None, special_tokens: tuple[str, ...] = ()
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a BPE model on CORPUS with the given pre-tokenization; return (vocab, merges).

    The family's tokenizer class is then built from vocab and merges, so training only has to match the
    family's pre-tokenization (merges never cross its word boundaries).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,  # a merge seen once is noise; this keeps rare words split into subwords
        special_tokens=list(special_tokens),
        # Byte-level: all 256 byte symbols in the vocab so that any text tokenizes. Otherwise only the
        # corpus's characters (llama adds the 256 <0xNN> byte-fallback tokens itself).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if byte_level else [],
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def _byte_level_pre_tokenizer():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False)


def _tokenizer_gpt2() -> PreTrainedTokenizerBase:
    """GPT-2: byte-level BPE, ``<|endoftext|>`` (last id) as bos/eos/unk, no pad token, nothing added."""
    from transformers import GPT2Tokenizer

    vocab, merges = _train_bpe(_byte_level_pre_tokenizer(), 420, byte_level=True)
    vocab["<|endoftext|>"] = len(vocab)  # GPT-2 keeps it at the very end (50256)
    return GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=MAX_POSITIONS)


def _tokenizer_qwen2() -> PreTrainedTokenizerBase:
    """Qwen2: byte-level BPE with Qwen's digit/regex split and NFC, ``<|endoftext|>`` eos/pad, no bos."""
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Same pre-tokenization as Qwen2Tokenizer applies, so the learnt merges fit it.
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    vocab, merges = _train_bpe(pre, 420, byte_level=True, normalizer=normalizers.NFC())
    # Qwen2 puts its special tokens after the BPE vocabulary: <|endoftext|>, <|im_start|>, <|im_end|>.
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=MAX_POSITIONS,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=_CHATML_TEMPLATE,
    )


def _tokenizer_bart() -> PreTrainedTokenizerBase:
    """BART: RoBERTa's byte-level BPE; ``<s>``=0 ``<pad>``=1 ``</s>``=2 ``<unk>``=3, ``<mask>`` last."""
    from transformers import BartTokenizer

    specials = ("<s>", "<pad>", "</s>", "<unk>")
    vocab, merges = _train_bpe(_byte_level_pre_tokenizer(), 420, byte_level=True, special_tokens=specials)
    vocab["<mask>"] = len(vocab)  # as in facebook/bart-*: the mask token is the last id
    return BartTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_POSITIONS)


def _tokenizer_llama() -> PreTrainedTokenizerBase:
    """Llama (SentencePiece BPE): ``<unk>``=0 ``<s>``=1 ``</s>``=2, 256 ``<0xNN>`` byte-fallback tokens,
    then ``▁``-prefixed pieces; ``<s>`` is prepended to every encoding, nothing appended, no pad."""
    from tokenizers import pre_tokenizers
    from transformers import LlamaTokenizer

    # Train on words carrying the metaspace marker, exactly like sentencepiece's BPE (merges stay inside
    # a word, the marker sticks to the word's start).
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trained, merges = _train_bpe(pre, 260, byte_level=False)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})  # byte fallback for unseen characters
    for piece, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    # add_bos_token must be explicit: built directly (not from a tokenizer.json) transformers 5 defaults
    # it to False, although real Llama tokenizers prepend <s>.
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, model_max_length=MAX_POSITIONS)


def _train_sentencepiece(vocab_size: int, **ids: int) -> bytes:
    """Train a real SentencePiece unigram model on CORPUS in memory and return its serialized proto."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buffer,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # the corpus is tiny: let sentencepiece stop short of vocab_size
        character_coverage=1.0,  # keep every accented letter of the corpus
        num_threads=1,  # deterministic, and the machine is small
        minloglevel=2,  # sentencepiece logs every training step to stderr otherwise
        **ids,
    )
    return buffer.getvalue()


def _tokenizer_t5() -> PreTrainedTokenizerBase:
    """T5: SentencePiece unigram, ``<pad>``=0 ``</s>``=1 ``<unk>``=2, ``</s>`` appended, no byte fallback.

    Built like transformers' own T5 converter does it: the (piece, score) list and the normalizer's
    precompiled char map from a real sentencepiece model. The 100 ``<extra_id_N>`` sentinels of the real
    T5 are left out (they would be a fifth of this vocabulary and only matter for span corruption).
    """
    from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2
    from transformers import T5Tokenizer

    proto_bytes = _train_sentencepiece(400, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    sp = SentencePieceProcessor(model_proto=proto_bytes)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(proto_bytes)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return T5Tokenizer(
        vocab=vocab,
        extra_ids=0,
        _spm_precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap,
        model_max_length=MAX_POSITIONS,
    )


_TEMP_DIRS: list[str] = []


@atexit.register
def _remove_temp_dirs() -> None:
    for folder in _TEMP_DIRS:
        shutil.rmtree(folder, ignore_errors=True)


def _tokenizer_marian() -> PreTrainedTokenizerBase:
    """Marian (opus-mt): the real, sentencepiece-based ``MarianTokenizer``.

    ``</s>``=0 ``<unk>``=1, pieces, ``<pad>`` last (opus-mt layout; pad doubles as decoder start); eos
    appended, no bos. One spm model serves as both source.spm and target.spm (shared vocabulary).
    """
    from transformers import MarianTokenizer

    proto_bytes = _train_sentencepiece(400, eos_id=0, unk_id=1, bos_id=-1, pad_id=-1)
    # MarianTokenizer reads its files from paths (and save_pretrained copies them from there), so they
    # live in a temp folder kept for the life of the process.
    folder = Path(tempfile.mkdtemp(prefix="seqattr-tiny-marian-"))
    _TEMP_DIRS.append(str(folder))
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes(proto_bytes)
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_proto=proto_bytes)
    # vocab.json ids equal the spm ids, so Marian's spm-id fallback in _convert_id_to_token agrees too.
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    vocab["<pad>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with warnings.catch_warnings():
        # "Recommended: pip install sacremoses." -- Moses punctuation normalization is optional and
        # would only rewrite quotes/dashes, which this corpus does not use.
        warnings.simplefilter("ignore", UserWarning)
        return MarianTokenizer(
            source_spm=str(folder / "source.spm"),
            target_spm=str(folder / "target.spm"),
            vocab=str(folder / "vocab.json"),
            source_lang="en",
            target_lang="de",
            model_max_length=MAX_POSITIONS,
        )


@functools.cache  # an unbounded lru_cache
def tiny_tokenizer(architecture: str) -> PreTrainedTokenizerBase:
    """The tiny tokenizer of ``architecture`` alone (cached; read-only). See :func:`tiny_model`.

    Example:
        >>> tok = tiny_tokenizer("llama")
        >>> tok.convert_ids_to_tokens(tok("the cat")["input_ids"])[:2]
        ['<s>', '▁the']
    """
    _check_architecture(architecture)
    with _quiet_transformers():
        return RECIPES[architecture].tokenizer()


# --------------------------------------------------------------------------------------------------
# Models: one recipe per architecture
# --------------------------------------------------------------------------------------------------
def _gpt2_config(tok: PreTrainedTokenizerBase):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(tok),
        n_positions=MAX_POSITIONS,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=None,
        initializer_range=_INIT_STD,
    )


def _llama_style_config(config_name: str, tok: PreTrainedTokenizerBase):
    import transformers

    return getattr(transformers, config_name)(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in the real ones
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=_INIT_STD,
    )


def _t5_config(tok: PreTrainedTokenizerBase):
    from transformers import T5Config

    return T5Config(
        vocab_size=len(tok),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=MAX_POSITIONS,
        feed_forward_proj="relu",
        tie_word_embeddings=True,
        dropout_rate=0.0,
        # T5 scales its whole init by this factor (embeddings get std = factor)
        initializer_factor=_T5_INIT_FACTOR,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )


def _bart_style_config(config_name: str, tok: PreTrainedTokenizerBase, **specific):
    """BART and Marian share their layout (post-LN, learned or sinusoidal positions, tied embeddings)."""
    import transformers

    return getattr(transformers, config_name)(
        vocab_size=len(tok),
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=MAX_POSITIONS,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        init_std=_SEQ2SEQ_INIT_STD,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        forced_eos_token_id=None,
        **specific,
    )


def _bart_config(tok: PreTrainedTokenizerBase):
    return _bart_style_config(
        "BartConfig",
        tok,
        bos_token_id=tok.bos_token_id,
        decoder_start_token_id=tok.eos_token_id,  # BART starts decoding from </s>
        forced_bos_token_id=None,
    )


def _marian_config(tok: PreTrainedTokenizerBase):
    return _bart_style_config(
        "MarianConfig",
        tok,
        decoder_vocab_size=len(tok),
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        decoder_start_token_id=tok.pad_token_id,  # opus-mt starts decoding from <pad>
    )


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one architecture's tiny model is built: adding an architecture to the zoo is one recipe here.

    ``last_norm`` (encoder-decoders) names the decoder norm whose gains get random signs of std
    ``last_norm_std`` (see `_decorrelate_tied_head`).
    """

    model_class: str
    tokenizer: Callable[[], PreTrainedTokenizerBase]
    config: Callable[[PreTrainedTokenizerBase], Any]
    encoder_decoder: bool = False
    last_norm: str | None = None
    last_norm_std: float = 0.0


RECIPES: dict[str, Recipe] = {
    "gpt2": Recipe("GPT2LMHeadModel", _tokenizer_gpt2, _gpt2_config),
    "llama": Recipe(
        "LlamaForCausalLM", _tokenizer_llama, functools.partial(_llama_style_config, "LlamaConfig")
    ),
    "qwen2": Recipe(
        "Qwen2ForCausalLM", _tokenizer_qwen2, functools.partial(_llama_style_config, "Qwen2Config")
    ),
    "t5": Recipe(
        "T5ForConditionalGeneration", _tokenizer_t5, _t5_config, True, "decoder.final_layer_norm", 1.0
    ),
    # BART and Marian are post-LN and have no final decoder norm: their last layer's is used.
    "bart": Recipe(
        "BartForConditionalGeneration",
        _tokenizer_bart,
        _bart_config,
        True,
        "model.decoder.layers.1.final_layer_norm",
        4.0,
    ),
    "marian": Recipe(
        "MarianMTModel",
        _tokenizer_marian,
        _marian_config,
        True,
        "model.decoder.layers.1.final_layer_norm",
        4.0,
    ),
}
"""The architectures of the zoo, by name."""

DECODER_ONLY = tuple(name for name, recipe in RECIPES.items() if not recipe.encoder_decoder)
ENCODER_DECODER = tuple(name for name, recipe in RECIPES.items() if recipe.encoder_decoder)
ARCHITECTURES = DECODER_ONLY + ENCODER_DECODER


@functools.cache  # an unbounded lru_cache
def tiny_model(architecture: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A tiny random-weight model of ``architecture`` and its offline tokenizer (cached; read-only).

    ``architecture`` is one of :data:`ARCHITECTURES`. The model is float32, in eval mode, with
    ``vocab_size == len(tokenizer)`` and its config and generation config holding the tokenizer's
    bos/eos/pad (and decoder start) ids. Tokenizers without a pad token (gpt2, llama) keep none, as the
    real ones; their models' ``generation_config.pad_token_id`` is the eos id, so ``generate`` is quiet.
    The same seed gives the same weights; the global torch RNG is left untouched.

    Example:
        >>> model, tok = tiny_model("t5")
        >>> enc = tok("Translate English to German: The house is wonderful.", return_tensors="pt")
        >>> model.generate(**enc, max_new_tokens=5, do_sample=False)[0, 0].item() == tok.pad_token_id
        True
    """
    tok = tiny_tokenizer(architecture)
    recipe = RECIPES[architecture]
    config = recipe.config(tok)
    with _quiet_transformers(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, recipe.model_class)(config)
        _decorrelate_tied_head(model, recipe)
    model = model.float().eval()
    generation = model.generation_config
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        value = getattr(config, name, None)
        if value is not None or name != "decoder_start_token_id":
            setattr(generation, name, value)
    if generation.pad_token_id is None:
        # What generate() would otherwise do with a warning, for tokenizers without a pad token.
        generation.pad_token_id = tok.eos_token_id
    return model, tok


def _decorrelate_tied_head(model: PreTrainedModel, recipe: Recipe) -> None:
    """Give the decoder's last norm random-signed gains (encoder-decoders only), in place.

    These models tie their output projection to the input embeddings, as the real ones do. With random
    weights the decoder's final hidden state is then mostly the embedding of its current input token, whose
    logit (its squared norm) wins: greedy decoding repeats one token forever. Gains of random sign on the
    last normalization layer decorrelate the hidden state from that embedding, so each input token maps to
    a different, pseudo-random next token, while the embeddings stay tied like in the real models. (Untying
    instead is awkward in transformers 5: ``tie_word_embeddings=False`` also unties the encoder's and the
    decoder's input embeddings from ``shared``, and T5Config forces it back to True.)
    """
    if recipe.last_norm is None:
        return
    with torch.no_grad():
        model.get_submodule(recipe.last_norm).weight.normal_(0.0, recipe.last_norm_std)


def _check_architecture(architecture: str) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")


class _quiet_transformers:
    """Silence transformers' logger while building (config/init chatter is about defaults we chose)."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger("transformers")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self._logger.setLevel(self._level)


# --------------------------------------------------------------------------------------------------
# Classifiers: one recipe per head architecture, trained a few seconds on a toy sentiment task
# --------------------------------------------------------------------------------------------------
POSITIVE_WORDS = ("good", "great", "wonderful", "happy", "beautiful", "nice")
NEGATIVE_WORDS = ("bad", "awful", "terrible", "sad", "boring", "cold")
_SUBJECTS = ("the movie", "the city", "this book", "my day", "the music", "the meeting", "the weather")
SENTIMENT_CORPUS = tuple(
    f"{subject} was {word}." for word in POSITIVE_WORDS + NEGATIVE_WORDS for subject in _SUBJECTS
)
"""The toy task of the tiny classifiers: ``"<subject> was <word>."``, positive when the word is one of
`POSITIVE_WORDS`, negative for `NEGATIVE_WORDS` (labels ``{0: "negative", 1: "positive"}``)."""
SENTIMENT_LABELS = {0: "negative", 1: "positive"}
_SENTIMENT_IDS = {name: index for index, name in SENTIMENT_LABELS.items()}


def sentiment_label(text: str) -> int:
    """The toy task's label of ``text``: 1 if it holds a positive word, else 0."""
    return int(any(word in text.split() or f"{word}." in text.split() for word in POSITIVE_WORDS))


def _tokenizer_bert() -> PreTrainedTokenizerBase:
    """BERT: lower-cased WordPiece, ``[PAD]``=0 ``[UNK]``=1 ``[CLS]``=2 ``[SEP]``=3 ``[MASK]``=4; ``[CLS]``
    text ``[SEP]``.

    The vocabulary is built here rather than by `tokenizers`' WordPiece trainer, whose vocabulary (its tokens
    and their ids) changed from one process to the next (ties broken in hash order), and with it every model
    trained on it: the specials, each character alone and as a ``##`` continuation, then every word of the
    corpora by frequency (ties by spelling). Words outside it split into characters.
    """
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers
    from transformers import BertTokenizer

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    texts = [*ENGLISH_CORPUS, *SENTIMENT_CORPUS, *(" ".join(words) for words, _ in tagging_corpus())]
    texts += [f"{question} {context}" for question, context, _ in qa_corpus()]
    counts = Counter(
        word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )
    characters = sorted({character for word in counts for character in word})
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    tokens = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *characters,
        *(f"##{c}" for c in characters),
        *words,
    ]
    return BertTokenizer(vocab={token: i for i, token in enumerate(tokens)}, model_max_length=MAX_POSITIONS)


def _tokenizer_roberta() -> PreTrainedTokenizerBase:
    """RoBERTa: byte-level BPE; ``<s>``=0 ``<pad>``=1 ``</s>``=2 ``<unk>``=3, ``<mask>`` last; ``<s>`` text
    ``</s>``."""
    from transformers import RobertaTokenizer

    specials = ("<s>", "<pad>", "</s>", "<unk>")
    vocab, merges = _train_bpe(_byte_level_pre_tokenizer(), 420, byte_level=True, special_tokens=specials)
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_POSITIONS)


def _bert_classifier_config(tok: PreTrainedTokenizerBase):
    from transformers import BertConfig

    return BertConfig(max_position_embeddings=MAX_POSITIONS, **_bert_encoder_sizes(tok))


def _roberta_classifier_config(tok: PreTrainedTokenizerBase):
    from transformers import RobertaConfig

    return RobertaConfig(
        max_position_embeddings=MAX_POSITIONS + 2,  # RoBERTa's positions start after its padding index
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **_bert_encoder_sizes(tok),
    )


def _deberta_v2_classifier_config(tok: PreTrainedTokenizerBase):
    """DeBERTa-v2 (relative positions, disentangled attention) on the BERT tokenizer: the model reads ids, so
    the sentencepiece tokenizer of the real ones, which needs a trained model file, is not needed."""
    from transformers import DebertaV2Config

    return DebertaV2Config(
        max_position_embeddings=MAX_POSITIONS,
        relative_attention=True,
        position_buckets=16,
        pos_att_type=["p2c", "c2p"],
        pooler_hidden_size=32,
        pooler_dropout=0.0,
        type_vocab_size=0,
        **_bert_encoder_sizes(tok),
    )


def _bert_encoder_sizes(tok: PreTrainedTokenizerBase) -> dict:
    """The tiny sizes, no dropout and the sentiment labels shared by the BERT, RoBERTa and DeBERTa-v2
    classifiers."""
    return dict(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=tok.pad_token_id,
        id2label=SENTIMENT_LABELS,
        label2id=_SENTIMENT_IDS,
    )


def _distilbert_classifier_config(tok: PreTrainedTokenizerBase):
    from transformers import DistilBertConfig

    return DistilBertConfig(
        vocab_size=len(tok),
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=64,
        max_position_embeddings=MAX_POSITIONS,
        dropout=0.0,
        attention_dropout=0.0,
        seq_classif_dropout=0.0,
        pad_token_id=tok.pad_token_id,
        id2label=SENTIMENT_LABELS,
        label2id=_SENTIMENT_IDS,
    )


def _llama_classifier_config(tok: PreTrainedTokenizerBase, config_name: str = "LlamaConfig"):
    """A decoder-based classifier's config: the zoo's Llama-style decoder at the encoders' width (32)."""
    config = _llama_style_config(config_name, tok)
    config.hidden_size, config.intermediate_size = 32, 64
    config.pad_token_id = tok.eos_token_id  # batches need one; the tokenizer pads with its eos too
    config.id2label, config.label2id = SENTIMENT_LABELS, _SENTIMENT_IDS
    config.num_labels = len(SENTIMENT_LABELS)
    config.initializer_range = 0.02
    return config


CLASSIFIER_RECIPES: dict[str, Recipe] = {
    "bert": Recipe("BertForSequenceClassification", _tokenizer_bert, _bert_classifier_config),
    "distilbert": Recipe(
        "DistilBertForSequenceClassification", _tokenizer_bert, _distilbert_classifier_config
    ),
    "roberta": Recipe("RobertaForSequenceClassification", _tokenizer_roberta, _roberta_classifier_config),
    "deberta-v2": Recipe(
        "DebertaV2ForSequenceClassification", _tokenizer_bert, _deberta_v2_classifier_config
    ),
    "llama": Recipe("LlamaForSequenceClassification", _tokenizer_llama, _llama_classifier_config),
}
"""The tiny sequence classifiers of the zoo, by name (`tiny_classifier`)."""

CLASSIFIERS = tuple(CLASSIFIER_RECIPES)


@functools.cache
def _classifier_tokenizer(architecture: str) -> PreTrainedTokenizerBase:
    with _quiet_transformers():
        return CLASSIFIER_RECIPES[architecture].tokenizer()


@functools.cache  # an unbounded lru_cache
def tiny_classifier(architecture: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A tiny sequence classifier of ``architecture`` (one of `CLASSIFIERS`) and its offline tokenizer,
    trained for a few seconds on the toy sentiment task (`SENTIMENT_CORPUS`), so that its predictions follow
    the task rather than chance (cached; read-only; float32, eval mode; the global RNG is left untouched).

    Example:
        >>> model, tok = tiny_classifier("bert")
        >>> batch = tok(["the movie was wonderful.", "my day was sad."], return_tensors="pt", padding=True)
        >>> logits = model(**batch).logits
        >>> [model.config.id2label[int(i)] for i in logits.argmax(-1)]
        ['positive', 'negative']
    """
    if architecture not in CLASSIFIER_RECIPES:
        raise ValueError(f"unknown classifier {architecture!r}; expected one of {', '.join(CLASSIFIERS)}")
    tok = _classifier_tokenizer(architecture)
    recipe = CLASSIFIER_RECIPES[architecture]
    config = recipe.config(tok)
    with _quiet_transformers(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, recipe.model_class)(config).float()
        _train_sentiment(model, tok)
    return model.eval(), tok


def _train_sentiment(model: PreTrainedModel, tok: PreTrainedTokenizerBase, epochs: int = 60) -> None:
    """Full-batch Adam on the toy sentiment task until every training text is classified right."""
    padding_side = tok.padding_side
    tok.padding_side = "left" if model.config.model_type == "llama" else "right"
    pad = tok.pad_token or tok.eos_token
    batch = tok(list(SENTIMENT_CORPUS), return_tensors="pt", padding=True) if tok.pad_token else None
    if batch is None:  # tokenizers without a pad token (Llama) pad with their eos, as load_model does
        tok.pad_token = pad
        batch = tok(list(SENTIMENT_CORPUS), return_tensors="pt", padding=True)
        tok.pad_token = None
    tok.padding_side = padding_side
    labels = torch.tensor([sentiment_label(text) for text in SENTIMENT_CORPUS])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        logits = model(**batch).logits
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if bool((logits.argmax(-1) == labels).all()) and float(loss.detach()) < 0.05:
            break


# --------------------------------------------------------------------------------------------------
# Taggers and readers: tiny BERTs for the other classifier heads, each trained a second on a toy task
# --------------------------------------------------------------------------------------------------
_PEOPLE = ("alice", "bob")
_PLACES = (("paris",), ("london",), ("berlin",), ("new", "york"))
_TAG_TEMPLATES = (
    ("{person}", "lives", "in", "{place}", "."),
    ("{person}", "went", "to", "{place}", "."),
    ("my", "friend", "{person}", "is", "in", "{place}", "today", "."),
    ("in", "{place}", "{person}", "sat", "on", "the", "mat", "."),
)
TAG_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
"""The toy tagging task's tags (BIO): people (``alice``, ``bob``), places (``paris``, ``new york``, ...)."""


def tagging_corpus() -> list[tuple[list[str], list[str]]]:
    """The toy tagging task: ``(words, tags)`` of sentences such as ``"alice lives in new york ."``, one tag
    per word (`TAG_LABELS`).

    Example:
        >>> tagging_corpus()[3]
        (['alice', 'lives', 'in', 'new', 'york', '.'], ['B-PER', 'O', 'O', 'B-LOC', 'I-LOC', 'O'])
    """
    corpus = []
    for template in _TAG_TEMPLATES:
        for person in _PEOPLE:
            for place in _PLACES:
                words: list[str] = []
                tags: list[str] = []
                for word in template:
                    if word == "{person}":
                        words.append(person)
                        tags.append("B-PER")
                    elif word == "{place}":
                        words += place
                        tags += ["B-LOC"] + ["I-LOC"] * (len(place) - 1)
                    else:
                        words.append(word)
                        tags.append("O")
                corpus.append((words, tags))
    return corpus


def qa_corpus() -> list[tuple[str, str, str]]:
    """The toy extractive QA task: ``(question, context, answer)``; "where" asks for the place of the
    context, "who" for its person.

    Example:
        >>> qa_corpus()[0]
        ('where does alice live?', 'alice lives in paris.', 'paris')
    """
    corpus = []
    for words, tags in tagging_corpus():
        context = " ".join(words).replace(" .", ".")
        person = " ".join(w for w, t in zip(words, tags, strict=True) if t.endswith("PER"))
        place = " ".join(w for w, t in zip(words, tags, strict=True) if t.endswith("LOC"))
        corpus.append((f"where does {person} live?", context, place))
        corpus.append((f"who is in {place}?", context, person))
    return corpus


TASKS = ("token-classification", "question-answering", "multi-label-classification")
"""The tasks of `tiny_task_model`."""

TASK_ARCHITECTURES = {"bert": "Bert", "distilbert": "DistilBert", "roberta": "Roberta", "qwen2": "Qwen2"}
"""The architectures of `tiny_task_model` and their transformers class prefix: three encoders and a causal
decoder (whose tokens see only their left context)."""

_TASK_HEADS = {
    "token-classification": "ForTokenClassification",
    "question-answering": "ForQuestionAnswering",
    "multi-label-classification": "ForSequenceClassification",
}

MULTI_LABELS = {0: "negative", 1: "positive", 2: "weather"}
"""The toy multi-label task's labels: the sentiment of `SENTIMENT_CORPUS`'s texts, and whether they are
about the weather (``"the weather was nice."`` is positive and weather)."""


def multi_labels(text: str) -> list[int]:
    """The toy multi-label task's labels of ``text`` (`MULTI_LABELS`), a 0/1 per label.

    Example:
        >>> multi_labels("the weather was cold."), multi_labels("my day was great.")
        ([1, 0, 1], [0, 1, 0])
    """
    positive = sentiment_label(text)
    return [1 - positive, positive, int("weather" in text.split())]


def _task_config(architecture: str, tok: PreTrainedTokenizerBase):
    """The sentiment classifiers' config of ``architecture`` (their sizes; labels set by the task)."""
    if architecture == "qwen2":
        return _llama_classifier_config(tok, "Qwen2Config")
    return CLASSIFIER_RECIPES[architecture].config(tok)


def _task_tokenizer(architecture: str) -> PreTrainedTokenizerBase:
    if architecture in CLASSIFIER_RECIPES:
        return _classifier_tokenizer(architecture)
    return tiny_tokenizer(architecture)


@functools.cache  # an unbounded lru_cache
def tiny_task_model(
    task: str, architecture: str = "bert", seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A tiny model of ``architecture`` (one of `TASK_ARCHITECTURES`) with the head of ``task`` (one of
    `TASKS`) and the tokenizer of its zoo classifier, trained for a few seconds so that its predictions
    follow a toy task: tagging people and places (`tagging_corpus`, ``*ForTokenClassification``), answering
    where / who from a one-sentence context (`qa_corpus`, ``*ForQuestionAnswering``), or the labels of
    `multi_labels` (a ``*ForSequenceClassification`` with ``problem_type="multi_label_classification"``).
    The sizes are those of `tiny_classifier`'s. Cached; read-only; float32, eval mode; the global RNG is left
    untouched.

    Example:
        >>> model, tok = tiny_task_model("token-classification")
        >>> ids = tok("bob went to london.", return_tensors="pt")
        >>> [model.config.id2label[int(i)] for i in model(**ids).logits.argmax(-1)[0]]
        ['O', 'B-PER', 'O', 'O', 'B-LOC', 'O', 'O']
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if architecture not in TASK_ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {architecture!r}; expected one of {', '.join(TASK_ARCHITECTURES)}"
        )
    tok = _task_tokenizer(architecture)
    config = _task_config(architecture, tok)
    if task == "token-classification":
        labels = TAG_LABELS
    elif task == "question-answering":
        labels = {0: "LABEL_0", 1: "LABEL_1"}
    else:
        labels = MULTI_LABELS
        config.problem_type = "multi_label_classification"
    config.id2label, config.label2id = labels, {v: k for k, v in labels.items()}
    config.num_labels = len(labels)
    model_class = getattr(transformers, TASK_ARCHITECTURES[architecture] + _TASK_HEADS[task])
    with _quiet_transformers(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).float()
        {
            "token-classification": _train_tagger,
            "question-answering": _train_reader,
            "multi-label-classification": _train_multi_label,
        }[task](model, tok)
    return model.eval(), tok


def _padded(tok: PreTrainedTokenizerBase, *texts: list[str], **kwargs: Any) -> Any:
    """``tok(*texts)`` padded on the right; tokenizers without a pad token pad with their eos (as
    `seqattr.load_model` sets it)."""
    padding_side, pad = tok.padding_side, tok.pad_token
    tok.padding_side = "right"
    if pad is None:
        tok.pad_token = tok.eos_token
    try:
        return tok(*texts, return_tensors="pt", padding=True, **kwargs)
    finally:
        tok.padding_side, tok.pad_token = padding_side, pad


def _full_batch_adam(model: PreTrainedModel, batch: dict[str, Any], epochs: int, solved) -> None:
    """Full-batch Adam on ``batch`` (the labels included: the model computes its own loss) until
    ``solved(output)`` says every training example is predicted right (or ``epochs`` run out)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        output = model(**batch)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        if float(output.loss.detach()) < 0.05 and solved(output):
            break


def _train_tagger(model: PreTrainedModel, tok: PreTrainedTokenizerBase, epochs: int = 80) -> None:
    corpus = tagging_corpus()
    texts = [" ".join(words) for words, _ in corpus]
    batch = _padded(tok, texts, return_offsets_mapping=True)
    labels = torch.zeros_like(batch["input_ids"])  # special tokens are outside any entity ("O")
    for row, (words, tags) in enumerate(corpus):
        ends = torch.tensor([len(" ".join(words[: k + 1])) for k in range(len(words))])
        previous = None
        for position, (a, b) in enumerate(batch["offset_mapping"][row].tolist()):
            if b <= a:
                continue
            # The word holding the token's last character (byte-level tokens may start with its space);
            # a word's later pieces continue its entity (B- becomes I-).
            word = int((ends < b).sum())
            tag = tags[word] if word != previous else tags[word].replace("B-", "I-")
            labels[row, position] = model.config.label2id[tag]
            previous = word
        labels[row, batch["attention_mask"][row] == 0] = -100
    del batch["offset_mapping"]
    real = labels != -100
    _full_batch_adam(
        model,
        {**batch, "labels": labels},
        epochs,
        lambda out: bool((out.logits.argmax(-1)[real] == labels[real]).all()),
    )


def _train_reader(model: PreTrainedModel, tok: PreTrainedTokenizerBase, epochs: int = 80) -> None:
    corpus = qa_corpus()
    batch = _padded(tok, [q for q, _, _ in corpus], [c for _, c, _ in corpus], return_offsets_mapping=True)
    starts, ends = [], []
    for row, (_, context, answer) in enumerate(corpus):
        begin = context.index(answer)
        sequence = batch.sequence_ids(row)
        tokens = [
            p
            for p, (a, b) in enumerate(batch["offset_mapping"][row].tolist())
            if sequence[p] == 1 and b > begin and a < begin + len(answer)
        ]
        starts.append(tokens[0])
        ends.append(tokens[-1])
    inputs = {k: v for k, v in batch.items() if k != "offset_mapping"}
    positions = {"start_positions": torch.tensor(starts), "end_positions": torch.tensor(ends)}
    _full_batch_adam(
        model,
        {**inputs, **positions},
        epochs,
        lambda out: bool(
            (out.start_logits.argmax(-1) == positions["start_positions"]).all()
            and (out.end_logits.argmax(-1) == positions["end_positions"]).all()
        ),
    )


def _train_multi_label(model: PreTrainedModel, tok: PreTrainedTokenizerBase, epochs: int = 150) -> None:
    batch = _padded(tok, list(SENTIMENT_CORPUS))
    labels = torch.tensor([multi_labels(text) for text in SENTIMENT_CORPUS], dtype=torch.float32)
    _full_batch_adam(  # the model's own loss: binary cross-entropy per label (its problem_type)
        model,
        {**batch, "labels": labels},
        epochs,
        lambda out: bool(((out.logits > 0) == labels.bool()).all()),
    )


__all__ = [
    "ARCHITECTURES",
    "CLASSIFIERS",
    "CLASSIFIER_RECIPES",
    "CORPUS",
    "DECODER_ONLY",
    "ENCODER_DECODER",
    "MAX_POSITIONS",
    "RECIPES",
    "Recipe",
    "SENTIMENT_CORPUS",
    "SENTIMENT_LABELS",
    "MULTI_LABELS",
    "TAG_LABELS",
    "TASKS",
    "TASK_ARCHITECTURES",
    "multi_labels",
    "qa_corpus",
    "tagging_corpus",
    "tiny_classifier",
    "tiny_task_model",
    "tiny_model",
    "tiny_tokenizer",
]
