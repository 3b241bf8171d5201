"""What seqattr needs to know of an architecture beyond its family, in one table and one record.

Two kinds of facts:

- **listed** (`DECODER_LAYOUTS`): where a decoder's layers and their value projections are, which
  value zeroing hooks. A model's layout is the first row whose module paths it has, so one row serves every
  architecture that shares the paths (``model.layers`` is Llama, Qwen2, Mistral, Gemma, ...). Adding an
  architecture whose paths differ = one row.
- **measured** once when a model is wrapped (`ArchitectureFacts.of`): whether the forward pass takes
  ``logits_to_keep`` (the LM head then runs only where a step is explained), and the factor by which the
  model scales its embedding lookup when given ids but not when given ``inputs_embeds`` (Marian's encoder in
  transformers 5; `seqattr.models.embedding_scale`). Measured rather than listed, so a new architecture with
  the same quirk needs no row.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from seqattr.models.embedding_scale import input_embedding_scales
from seqattr.models.family import ModelFamily, family_of


@dataclass(frozen=True)
class DecoderLayout:
    """Module paths of a decoder's layers and, inside each layer, of its value projections."""

    layers: str
    self_values: str
    cross_values: str | None
    """The cross-attention's value projection (encoder-decoder models; None for decoder-only)."""
    fused_qkv: bool
    """The self-attention values are the last third of one fused query/key/value projection (GPT-2)."""


DECODER_LAYOUTS: dict[str, DecoderLayout] = {
    "llama-like": DecoderLayout("model.layers", "self_attn.v_proj", None, False),  # Llama, Qwen2, Mistral
    "gpt2": DecoderLayout("transformer.h", "attn.c_attn", None, True),
    "t5": DecoderLayout("decoder.block", "layer.0.SelfAttention.v", "layer.1.EncDecAttention.v", False),
    "bart-like": DecoderLayout(  # BART, Marian, mBART, Pegasus
        "model.decoder.layers", "self_attn.v_proj", "encoder_attn.v_proj", False
    ),
}


@dataclass
class DecoderLayer:
    """One decoder layer of a loaded model with its value modules."""

    layer: nn.Module
    self_values: nn.Module
    cross_values: nn.Module | None
    fused_qkv: bool


def decoder_layers(model: nn.Module) -> list[DecoderLayer]:
    """The decoder layers of ``model`` with their value modules, by the first matching `DECODER_LAYOUTS` row.

    Example:
        >>> layers = decoder_layers(hf_model)                   # the tiny GPT-2
        >>> len(layers), type(layers[0].self_values).__name__, layers[0].fused_qkv
        (2, 'Conv1D', True)
    """
    for layout in DECODER_LAYOUTS.values():
        try:
            layers = model.get_submodule(layout.layers)
            return [
                DecoderLayer(
                    layer,
                    layer.get_submodule(layout.self_values),
                    None if layout.cross_values is None else layer.get_submodule(layout.cross_values),
                    layout.fused_qkv,
                )
                for layer in layers
            ]
        except AttributeError:
            continue
    known = "; ".join(f"{layout.layers}[i].{layout.self_values}" for layout in DECODER_LAYOUTS.values())
    raise ValueError(
        f"seqattr does not know where {type(model).__name__} computes its value vectors "
        f"(looked for: {known}); add a row for its architecture to "
        "seqattr.models.architecture.DECODER_LAYOUTS"
    )


@dataclass(frozen=True)
class ArchitectureFacts:
    """The measured facts of one loaded model (see the module docstring)."""

    family: ModelFamily
    logits_to_keep: bool
    """The forward pass takes ``logits_to_keep`` over the (decoder's) positions."""
    source_embedding_scale: float | None
    """Factor applied to source ``inputs_embeds`` (None without a source)."""
    target_embedding_scale: float
    """Factor applied to target ``inputs_embeds``."""
    position_offset: int = 0
    """Position ids the model skips before its first token (RoBERTa's start after its padding index, so a
    model of ``max_position_embeddings`` positions reads ``max_position_embeddings - position_offset``
    tokens)."""

    @classmethod
    def of(cls, model: PreTrainedModel) -> ArchitectureFacts:
        """Measure ``model``'s facts (a few forward passes on a short probe).

        Example:
            >>> facts = ArchitectureFacts.of(hf_model)          # the tiny GPT-2
            >>> facts.family, facts.logits_to_keep, facts.source_embedding_scale, facts.target_embedding_scale
            (decoder-only, True, None, 1.0)
        """
        family = family_of(model)
        source, target = input_embedding_scales(model)
        # A capability of the architecture (transformers' causal LMs have it; its encoder-decoders do not).
        keeps = "logits_to_keep" in inspect.signature(model.forward).parameters
        return cls(family, keeps, source, target, position_offset(model))


def position_offset(model: nn.Module) -> int:
    """The position id of ``model``'s first token: 0, or for RoBERTa-like embeddings (RoBERTa, XLM-R,
    CamemBERT, Longformer: positions count from ``padding_idx + 1``) the id they give the first of a
    sequence of ``inputs_embeds``, read from their own position function.

    Example:
        >>> from seqattr.testing import tiny_classifier
        >>> position_offset(tiny_classifier("roberta")[0]), position_offset(tiny_classifier("bert")[0])
        (2, 0)
    """
    for module in model.modules():
        make_positions = getattr(module, "create_position_ids_from_inputs_embeds", None)
        padding_idx = getattr(module, "padding_idx", None)
        if callable(make_positions) and isinstance(padding_idx, int):
            return int(make_positions(torch.zeros(1, 1, 1), padding_idx)[0, 0])
    return 0
