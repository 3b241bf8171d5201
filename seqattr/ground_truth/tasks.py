"""The ground-truth tasks: data with exactly known dependencies, and the tiny model that learns each.

- ``dictionary_translation`` (encoder-decoder, Bart): the source is 3-6 words ``s0``..``s11``; target word
  ``t`` is a fixed dictionary's translation of source word ``pi(t)``, where ``pi`` swaps neighbours
  (``0<->1``, ``2<->3``, ...; the last word of an odd-length sentence stays in place). Gold: the sure link
  ``pi(t)-t`` for every target word; the final ``</s>`` step is special and not counted.
- ``indexed_retrieval`` (decoder-only, GPT-2): the prompt lists 4-7 values ``v0``..``v9`` and then asks
  ``Q pK``; the answer is the value at (0-based) position ``K`` of the list. Gold: the sure link from the
  answer to that value; the query's index token ``pK`` is a possible link (it says where to look).
- ``copying`` (decoder-only, Llama): the prompt is 6 distinct tokens ``c0``..``c15`` and a separator ``Q``;
  the continuation repeats them. Gold: step ``t`` has the sure link ``t-t`` (the token it copies).

Each model reaches at least 99% accuracy on its evaluation set (checked in tests/test_ground_truth.py), so
the gold links describe what the model does, not only what the data says.
"""

from __future__ import annotations

import random

from seqattr.ground_truth.task import TaskExample, TaskRecipe
from seqattr.metrics.gold import GoldAlignment

# --- dictionary translation ------------------------------------------------------------------------------
_N_DICT = 12
_SOURCE_WORDS = tuple(f"s{i}" for i in range(_N_DICT))
_TARGET_WORDS = tuple(f"t{i}" for i in range(_N_DICT))
DICTIONARY = dict(zip(_SOURCE_WORDS, random.Random(1).sample(_TARGET_WORDS, _N_DICT), strict=True))
"""The fixed word-for-word dictionary of ``dictionary_translation``."""


def swap_neighbours(t: int, length: int) -> int:
    """The source position that target position ``t`` translates: neighbours swap, a last odd word stays.

    Example:
        >>> [swap_neighbours(t, 5) for t in range(5)]
        [1, 0, 3, 2, 4]
    """
    partner = t ^ 1
    return partner if partner < length else t


def _sample_translation(rng: random.Random) -> TaskExample:
    length = rng.randint(3, 6)
    source = [rng.choice(_SOURCE_WORDS) for _ in range(length)]
    order = [swap_neighbours(t, length) for t in range(length)]
    target = [DICTIONARY[source[i]] for i in order]
    gold = GoldAlignment(frozenset((i, t) for t, i in enumerate(order)))
    return TaskExample(" ".join(source), " ".join(target), gold)


# --- indexed retrieval -----------------------------------------------------------------------------------
_VALUES = tuple(f"v{i}" for i in range(10))
_INDICES = tuple(f"p{i}" for i in range(7))


def _sample_retrieval(rng: random.Random) -> TaskExample:
    length = rng.randint(4, 7)
    values = [rng.choice(_VALUES) for _ in range(length)]
    index = rng.randrange(length)
    prompt = f"{' '.join(values)} Q {_INDICES[index]}"
    query = length + 1  # the index token's position in the prompt
    gold = GoldAlignment(frozenset({(index, 0)}), frozenset({(query, 0)}))
    return TaskExample(prompt, f"{prompt} {values[index]}", gold)


# --- copying ---------------------------------------------------------------------------------------------
_COPY_WORDS = tuple(f"c{i}" for i in range(16))
_COPY_LENGTH = 6


def _sample_copying(rng: random.Random) -> TaskExample:
    tokens = rng.sample(_COPY_WORDS, _COPY_LENGTH)
    prompt = " ".join(tokens) + " Q"
    gold = GoldAlignment(frozenset((t, t) for t in range(_COPY_LENGTH)))
    return TaskExample(prompt, f"{prompt} {' '.join(tokens)}", gold)


_NO_DROPOUT_BART = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}

TASKS: dict[str, TaskRecipe] = {
    "dictionary_translation": TaskRecipe(
        name="dictionary_translation",
        description="Bart translates word by word with a fixed dictionary, swapping neighbouring words; "
        "gold: target word t <- source word pi(t)",
        words=_SOURCE_WORDS + _TARGET_WORDS,
        sample=_sample_translation,
        model_class="BartForConditionalGeneration",
        config={
            "d_model": 64,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
            "max_position_embeddings": 16,
            **_NO_DROPOUT_BART,
        },
        steps=400,
    ),
    "indexed_retrieval": TaskRecipe(
        name="indexed_retrieval",
        description="GPT-2 answers 'Q pK' with the K-th value of the list before it; "
        "gold: the answer <- that value (sure), <- the index token (possible)",
        words=_VALUES + _INDICES + ("Q",),
        sample=_sample_retrieval,
        model_class="GPT2LMHeadModel",
        config={
            "n_embd": 64,
            "n_layer": 2,
            "n_head": 4,
            "n_positions": 16,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
        },
        steps=500,
    ),
    "copying": TaskRecipe(
        name="copying",
        description="Llama repeats the 6 tokens before the separator Q; gold: step t <- prompt token t",
        words=_COPY_WORDS + ("Q",),
        sample=_sample_copying,
        model_class="LlamaForCausalLM",
        config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 16,
            "tie_word_embeddings": False,
        },
        steps=400,
    ),
}
"""The tasks by name."""
