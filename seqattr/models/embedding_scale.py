"""The factor that makes ``inputs_embeds`` behave like ``input_ids``, checked on each model.

seqattr attributes to the output of the model's input embedding layer (``model.get_input_embeddings()``) and
runs the model on those embeddings (``inputs_embeds=``). Most Hugging Face models treat ``inputs_embeds``
exactly like the embedding of ``input_ids``, but some scale the lookup by ``embed_scale`` only when they
embed ids themselves: in transformers 5, Marian's encoder multiplies ``embed_tokens(input_ids)`` by
``sqrt(d_model)`` but takes ``inputs_embeds`` as already scaled, while its decoder scales both. Fed the plain
lookup, such an encoder computes a different function from the model's own (the tiny test Marian's step
probabilities were off by 6%).

Rather than a table of classes that would go stale, the factor is measured once per model: a forward pass
on a few token ids and on their embeddings times each candidate (1, or an ``embed_scale`` the model holds)
must agree. `AttributionModel.step_logits` multiplies the embeddings by it, so the forward pass equals the
model's own and the attributions stay w.r.t. the embedding layer's output on both sides.

Example:
    >>> from seqattr.testing import tiny_model
    >>> input_embedding_scales(tiny_model("marian")[0])     # (source, target): the encoder needs sqrt(64)
    (8.0, 1.0)
    >>> input_embedding_scales(tiny_model("gpt2")[0])
    (None, 1.0)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from transformers import PreTrainedModel

from seqattr.caller import user_stacklevel
from seqattr.models.family import family_of

_PROBE_LENGTH = 4


def _candidates(model: PreTrainedModel) -> list[float]:
    scales = [1.0]
    for module in model.modules():
        value = getattr(module, "embed_scale", None)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value)
        if isinstance(value, (int, float)) and float(value) not in scales:
            scales.append(float(value))
    return scales


def _matching_scale(
    reference: torch.Tensor, run: Callable[[float], torch.Tensor], candidates: list[float], side: str
) -> float:
    reference = reference.float()
    tolerance = 1e-2 * (float(reference.abs().max()) + 1e-6)  # loose: a wrong scale is off by O(1)
    for scale in candidates:
        if (run(scale).float() - reference).abs().max() <= tolerance:  # NaN compares False: no match
            return scale
    warnings.warn(
        f"{side} does not compute the same function from "
        "inputs_embeds as from input_ids (with any embed_scale it holds); attributions to its embeddings may "
        "not match the model's own forward pass",
        stacklevel=user_stacklevel(),
    )
    return 1.0


def input_embedding_scales(model: PreTrainedModel) -> tuple[float | None, float]:
    """``(source, target)`` factors for the embedding lookup fed as ``inputs_embeds`` (source: None for
    decoder-only models), so that the forward pass equals the one on token ids."""
    embed = model.get_input_embeddings()
    # Not the pad id: from ids, RoBERTa-like models give a pad the padding position (from inputs_embeds
    # every token gets a real one), so a probe holding it would differ for a reason other than a scale.
    pad = getattr(model.config.get_text_config(), "pad_token_id", None)
    ids = [i % embed.num_embeddings for i in range(1, _PROBE_LENGTH + 2) if i != pad][:_PROBE_LENGTH]
    ids = torch.tensor([ids], device=model.device)
    candidates = _candidates(model)
    with torch.no_grad():
        embeds = embed(ids)
        family = family_of(model)
        if not family.is_encoder_decoder:
            # The output's first tensor: the logits (an extractive QA head's start logits).
            reference = model(input_ids=ids, use_cache=False)[0]
            scale = _matching_scale(
                reference,
                lambda s: model(inputs_embeds=embeds * s, use_cache=False)[0],
                candidates,
                type(model).__name__,
            )
            return family.scales_of_one_stack(scale)
        encoder = model.get_encoder()
        reference = encoder(input_ids=ids).last_hidden_state
        source = _matching_scale(
            reference,
            lambda s: encoder(inputs_embeds=embeds * s).last_hidden_state,
            candidates,
            f"{type(model).__name__}'s encoder",
        )
        reference = model(input_ids=ids, decoder_input_ids=ids, use_cache=False).logits
        target = _matching_scale(
            reference,
            lambda s: model(input_ids=ids, decoder_inputs_embeds=embeds * s, use_cache=False).logits,
            candidates,
            f"{type(model).__name__}'s decoder",
        )
        return source, target
