"""What the benchmark runs: models, inputs of exact token lengths, and how each method maps onto Inseq.

Runs in the main environment (it needs seqattr and its tokenizers); the workers only receive the resulting
case files (model folder, texts, options).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seqattr.models.default_model import DEFAULT_MODEL, cache_dir, default_model_path

PROMPT_TOKENS = 20
CAPTUM_STEPS = 40
"""Generated (explained) tokens of the Captum part's rows unless --lengths says otherwise."""
MODEL_VERSION = 1  # bump when the small models' recipe changes, so that cached folders are rebuilt


@dataclass(frozen=True)
class ModelSpec:
    name: str
    is_encoder_decoder: bool
    description: str


MODELS = {
    "gpt2-small": ModelSpec("gpt2-small", False, "GPT-2, 4 layers, hidden 256, random weights"),
    "bart-small": ModelSpec("bart-small", True, "Bart, 3+3 layers, hidden 256, random weights"),
    "smollm2": ModelSpec("smollm2", False, "SmolLM2-135M-Instruct (real weights, 30 layers, hidden 576)"),
}


def _small_model(name: str):
    """A small random-weight model with the offline tokenizer of `seqattr.testing`, context 2048."""
    from transformers import BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel

    from seqattr.testing import tiny_tokenizer

    family = name.split("-")[0]
    tokenizer = copy.deepcopy(tiny_tokenizer(family))
    tokenizer.model_max_length = 2048
    if family == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=2048,
            n_embd=256,
            n_layer=4,
            n_head=4,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            initializer_range=0.1,
        )
        model_class = GPT2LMHeadModel
    else:
        config = BartConfig(
            vocab_size=len(tokenizer),
            d_model=256,
            encoder_layers=3,
            decoder_layers=3,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=1024,
            decoder_ffn_dim=1024,
            max_position_embeddings=2048,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            init_std=0.1,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            decoder_start_token_id=tokenizer.eos_token_id,
            forced_eos_token_id=None,
            forced_bos_token_id=None,
        )
        model_class = BartForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_class(config).eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.eos_token_id
    return model, tokenizer


def model_folder(name: str) -> Path | None:
    """A folder both environments can load with ``from_pretrained`` (built once and cached), or None when
    the model is not available offline."""
    if name == "smollm2":
        path = default_model_path()
        return None if path == DEFAULT_MODEL else Path(path)
    folder = cache_dir() / "bench-models" / f"{name}-v{MODEL_VERSION}"
    if not (folder / "config.json").is_file():
        model, tokenizer = _small_model(name)
        staging = folder.with_name(folder.name + ".tmp")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(folder)
    return folder


# --- inputs -------------------------------------------------------------------------------------------


def _corpus_sentences() -> list[str]:
    from seqattr.testing import ENGLISH_CORPUS

    return list(ENGLISH_CORPUS)


def make_texts(
    tokenizer,
    is_encoder_decoder: bool,
    batch: int,
    steps: int,
    seed: int = 0,
    prompt_tokens: int = PROMPT_TOKENS,
) -> list[tuple[str, str]]:
    """``batch`` (input, forced output) pairs, each with exactly ``prompt_tokens`` input tokens and ``steps``
    explained steps, whose texts survive the tokenizer round trip (so both tools see the same token ids).

    Decoder-only: the output is prompt + continuation. Encoder-decoder: the output is the target text; the
    tokenizer's special tokens count into both lengths (Bart: ``<s> ... </s>``).
    """
    sentences = _corpus_sentences()
    rng = random.Random(seed)
    pairs: list[tuple[str, str]] = []
    attempt = 0
    while len(pairs) < batch:
        attempt += 1
        if attempt > 200 * batch:
            raise RuntimeError(f"could not build {batch} inputs of {steps} steps that survive tokenization")
        order = sentences[:]
        rng.shuffle(order)
        text = " ".join(order * (1 + (steps + prompt_tokens) // 200))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if is_encoder_decoder:
            n_special_source = len(tokenizer("a")["input_ids"]) - len(
                tokenizer("a", add_special_tokens=False)["input_ids"]
            )
            n_special_target = len(tokenizer(text_target="a")["input_ids"]) - 1
            source_ids = ids[: prompt_tokens - n_special_source]
            target_ids = ids[len(source_ids) : len(source_ids) + steps - n_special_target]
            source, target = tokenizer.decode(source_ids).strip(), tokenizer.decode(target_ids).strip()
            ok = (
                len(target_ids) == steps - n_special_target
                and len(tokenizer(source)["input_ids"]) == prompt_tokens
                and len(tokenizer(text_target=target)["input_ids"]) == steps
                and tokenizer(text_target=target, add_special_tokens=False)["input_ids"] == target_ids
            )
            if ok:
                pairs.append((source, target))
            continue
        prompt_ids = ids[:prompt_tokens]
        full_ids = ids[: prompt_tokens + steps]
        prompt, full = tokenizer.decode(prompt_ids), tokenizer.decode(full_ids)
        encoded_prompt = tokenizer(prompt)["input_ids"]
        encoded_full = tokenizer(full)["input_ids"]
        ok = (
            len(full_ids) == prompt_tokens + steps
            and full.startswith(prompt)
            and encoded_full[: len(encoded_prompt)] == encoded_prompt
            and len(encoded_full) - len(encoded_prompt) == steps
            and tokenizer(full, add_special_tokens=False)["input_ids"] == full_ids
        )
        if ok:
            pairs.append((prompt, full))
    return pairs


# --- methods ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """How a seqattr method is run, which Inseq method it is compared with, and how their outputs compare."""

    seqattr_options: dict = field(default_factory=dict)
    inseq_method: str | None = None
    inseq_options: dict = field(default_factory=dict)
    compare: str | None = None
    """How raw outputs are made comparable: ``"sum_hidden"`` (Inseq keeps the hidden dimension; seqattr
    sums it by default), ``"abs"`` (Inseq reports |effect|), ``"same"``, or None (not comparable)."""
    cheap: bool = False
    """Also run at the long generation length."""
    note: str = ""


METHOD_SPECS: dict[str, MethodSpec] = {
    "saliency": MethodSpec(
        inseq_method="saliency",
        compare="sum_hidden",
        cheap=True,
        note="|gradient| summed over the hidden dimension on both sides",
    ),
    "input_x_gradient": MethodSpec(
        inseq_method="input_x_gradient",
        compare="sum_hidden",
        cheap=True,
        note="input x gradient summed over the hidden dimension on both sides",
    ),
    "attnlrp": MethodSpec(
        cheap=True,
        note="no Inseq method; its fused time is compared with fused saliency's (one forward, one backward)",
    ),
    "integrated_gradients": MethodSpec(
        seqattr_options={"baseline": "unk"},
        inseq_method="integrated_gradients",
        compare="sum_hidden",
        note="Inseq's baseline is the UNK embedding (EOS kept); 50 Gauss-Legendre points on both sides",
    ),
    "occlusion": MethodSpec(
        seqattr_options={"baseline": "unk", "granularity": "all_tokens"},
        inseq_method="occlusion",
        compare="abs",
        note="Inseq occludes every token (specials too) with UNK and reports |effect|",
    ),
    "lime": MethodSpec(
        seqattr_options={"n_samples": 50},
        inseq_method="lime",
        inseq_options={"n_samples": 50},
        note="50 samples on both sides (Inseq's default); random samples differ, so no agreement check",
    ),
}
"""Methods whose conventions were matched by hand. A method not listed here runs with its defaults on
both sides (Inseq only if it has a method of the same name) and without an agreement check."""

HEADLINE_METHODS = (
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "occlusion",
    "lime",
    "attention",
    "attnlrp",
)
"""The methods of the quick grid (those the targets name)."""

INSEQ_METHODS = (
    "attention",
    "deeplift",
    "discretized_integrated_gradients",
    "gradient_shap",
    "input_x_gradient",
    "integrated_gradients",
    "layer_deeplift",
    "layer_gradient_x_activation",
    "layer_integrated_gradients",
    "lime",
    "occlusion",
    "reagent",
    "saliency",
    "sequential_integrated_gradients",
    "value_zeroing",
)
"""`inseq.list_feature_attribution_methods()` of inseq 0.7.1, less its ``dummy``."""


def method_spec(name: str) -> MethodSpec:
    if name in METHOD_SPECS:
        return METHOD_SPECS[name]
    return MethodSpec(inseq_method=name if name in INSEQ_METHODS else None, note="defaults on both sides")


# --- Captum, the second peer --------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptumPeer:
    """A seqattr method run prompt-only (``attribute_target=False``, Captum's convention) against Captum's
    LLM attribution in each of ``modes`` (`captum_runner.CAPTUM_MODES`)."""

    modes: tuple[str, ...]
    seqattr_options: dict = field(default_factory=dict)
    attribute_options: dict = field(default_factory=dict)
    quick_steps: int = CAPTUM_STEPS
    """Generated tokens in the quick grid (the full grid runs `CAPTUM_STEPS`)."""
    note: str = ""


CAPTUM_PEERS: dict[str, CaptumPeer] = {
    "feature_ablation": CaptumPeer(
        modes=("one_pass", "by_tokens", "by_tokens_cached"),
        seqattr_options={"baseline": 0},
        attribute_options={"attributed_fn": "logprob"},
        note="LLMAttribution(FeatureAblation): each prompt token to id 0, each target token's logprob",
    ),
    "layer_integrated_gradients": CaptumPeer(
        modes=("layer_ig",),
        seqattr_options={"baseline": 0, "hidden_reduction": "sum"},
        attribute_options={"attributed_fn": "logprob"},
        # 50 points x 40 steps take each tool about 8 minutes on SmolLM2 (one thread): 10 in the quick grid.
        quick_steps=10,
        note="LLMGradientAttribution(LayerIntegratedGradients) on the input embeddings, 50 Gauss-Legendre "
        "points on both sides, one integration per target token in Captum",
    ),
}
"""Prompt-only methods compared with Captum (`benchmarks/run.py --captum`, on by default)."""
