"""Prefix reuse: a perturbed row's forward pass starts where it first differs from the clean sequence.

A decoder-only model is causal: a perturbed copy of a sequence is identical to the clean one before its first
perturbed position ``p``, so its keys and values there, and its logits at positions ``< p``, are the clean
pass's. `PrefixReuse` runs the clean batch once with the key/value cache on, and then scores ``n`` perturbed
rows by running the model only on their positions ``p..`` after the clean cache's first ``p`` positions
(copied to the rows); steps predicted before ``p`` take the clean logits. Occluding token ``q`` of ``L`` then
computes ``L - q`` positions instead of ``L``: about half the positions over all single-token ablations.

Where it does not apply the caller runs the full forward (it is an optimisation: the numbers are the same to
rounding): encoder-decoder models and classifiers, models whose cache is not a plain per-layer key/value
cache (sliding-window or recurrent layers), passes that record activations (quantities of interest) or run
with dropout, and batches whose clean cache would exceed `PREFIX_CACHE_BYTES`.

Memory: the clean cache holds ``2 x layers x kv_heads x head_dim x positions x bytes`` per example (keys and
values of every layer; SmolLM2-135M in float32: 30 x 3 x 64 x 2 x 4 = 46,080 bytes a position, 4.6 MB at 100
tokens, 46 MB at 1,000), plus the clean logits of every step (``steps x vocab x bytes``). A chunk of ``R``
perturbed rows holds ``R`` copies of the cache for its forward (transformers concatenates the new positions to
the copied prefix), so the perturbation engine counts one row's cache in its memory budget per row
(`seqattr.methods.perturbation.score_chunks`).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch

from seqattr.typing import Float, Int, Tensor

if TYPE_CHECKING:
    from seqattr.models.attribution_model import AttributionModel
    from seqattr.models.batch import AttributionBatch

PREFIX_CACHE_BYTES = 256 * 2**20
"""The most the clean batch's cache and step logits may take (256 MiB); a larger batch runs full forwards.
SmolLM2-135M in float32 reaches it at about 5,000 positions of one example."""

ENABLED = True
"""Prefix reuse on (the default). Tests turn it off to compare with the full forward; not a user option."""


def cache_bytes_per_position(model: AttributionModel) -> int:
    """Bytes one position of one row takes in the key/value cache: ``2 x layers x kv_heads x head_dim x
    bytes``, from the model's config.

    Example:
        >>> cache_bytes_per_position(model)  # tiny GPT-2: 2 layers, 4 heads of 16, float32
        1024
    """
    config = model.model.config.get_text_config()
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    head_dim = getattr(config, "head_dim", None) or hidden // max(heads, 1)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    return 2 * layers * kv_heads * head_dim * torch.finfo(model.dtype).bits // 8


def applies_to(model: AttributionModel) -> bool:
    """Whether ``model``'s perturbed rows can start from a clean prefix: a decoder-only generator without a
    sliding window (whose cache keeps only the window) and with a forward that takes a cache."""
    family = model.family  # decoder-only generators: the only family that pads its targets on the left
    if not ENABLED or family.task != "generation" or not family.pads_target_left:
        return False
    config = model.model.config.get_text_config()
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return False
    return _cache_keyword(model) is not None


def _cache_keyword(model: AttributionModel) -> str | None:
    """The forward's keyword for a key/value cache: ``cache`` (transformers 5) or ``past_key_values``."""
    parameters = inspect.signature(model.model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    return None


def first_changes(
    clean: Float[Tensor, "n length hidden"], target_embeds: Float[Tensor, "n prefix_len hidden"]
) -> Int[Tensor, " n"]:
    """Each row's first (padded) position whose embedding differs from ``clean`` (cut to the rows' prefix);
    the prefix length where none does.

    Example:
        >>> clean = torch.zeros(2, 4, 1)
        >>> first_changes(clean, torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])[..., None])
        tensor([2, 4])
    """
    length = target_embeds.shape[1]
    differs = (target_embeds != clean[:, :length]).any(-1)
    index = torch.arange(length, device=differs.device).expand_as(differs)
    return torch.where(differs, index, length).amin(-1)


class PrefixReuse:
    """The clean batch's key/value cache and step logits, and the perturbed rows' passes that start from them.

    Example:
        >>> reuse = PrefixReuse.of(model, batch, target_embeds)      # doctest: +SKIP
        >>> logits = reuse.step_logits(rows, perturbed, slice(None))  # [n, steps, vocab]  # doctest: +SKIP
    """

    def __init__(
        self,
        model: AttributionModel,
        batch: AttributionBatch,
        target_embeds: Float[Tensor, "batch length hidden"],
        keys: list[Tensor],
        values: list[Tensor],
        logits: Float[Tensor, "batch steps vocab"],
    ) -> None:
        self.model, self.batch, self.target_embeds = model, batch, target_embeds
        self.keys, self.values = keys, values
        """Per layer, ``[batch, kv_heads, length, head_dim]``: the clean pass's keys and values."""
        self.logits = logits
        self.keyword = _cache_keyword(model)

    @classmethod
    def of(
        cls,
        model: AttributionModel,
        batch: AttributionBatch,
        target_embeds: Float[Tensor, "batch length hidden"],
    ) -> PrefixReuse | None:
        """Run the clean batch once with the cache on; None where reuse does not apply (see the module)."""
        if not applies_to(model):
            return None
        length = target_embeds.shape[1]
        vocab = model.model.config.get_text_config().vocab_size
        element = target_embeds.element_size()
        needed = batch.size * (length * cache_bytes_per_position(model) + batch.num_steps * vocab * element)
        if needed > PREFIX_CACHE_BYTES:
            return None
        from transformers.cache_utils import DynamicLayer

        rows = torch.arange(batch.size, device=target_embeds.device)
        positions = batch.step_positions
        inputs = model.model_inputs(batch, rows, None, target_embeds)
        with torch.no_grad():
            if model.has_logits_to_keep:
                output = model.model(**inputs, use_cache=True, logits_to_keep=positions - 1)
                logits = output.logits
            else:
                output = model.model(**inputs, use_cache=True)
                logits = output.logits[:, positions - 1]
        cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        layers = getattr(cache, "layers", None)
        # Only a plain per-layer cache of every position can be cut at a prefix (not sliding, not recurrent).
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return None
        if any(layer.keys is None or layer.keys.shape[-2] != length for layer in layers):
            return None
        return cls(
            model,
            batch,
            target_embeds,
            [layer.keys for layer in layers],
            [layer.values for layer in layers],
            logits,
        )

    def first_changes(
        self, rows: Int[Tensor, " n"], target_embeds: Float[Tensor, "n prefix_len hidden"]
    ) -> Int[Tensor, " n"]:
        """Each row's first perturbed position (`first_changes` against its example's clean embeddings)."""
        return first_changes(self.target_embeds[rows], target_embeds)

    def step_logits(
        self, rows: Int[Tensor, " n"], target_embeds: Float[Tensor, "n prefix_len hidden"], steps: slice
    ) -> Float[Tensor, "n steps vocab"]:
        """The logits of steps ``steps`` for ``n`` rows (batch examples ``rows``) of target embeddings, as a
        full forward would give them: the pass runs from the rows' earliest first change on, after the clean
        cache; the steps predicted before it take the clean logits."""
        model, batch = self.model, self.batch
        positions = batch.step_positions[steps]
        prefix_len = target_embeds.shape[1]
        start = int(self.first_changes(rows, target_embeds).min()) if rows.numel() else prefix_len
        logits = self.logits[rows][:, steps].clone()
        after = positions - 1 >= start  # steps whose logits the changed positions can reach
        if not bool(after.any()):
            return logits
        inputs = model.model_inputs(batch, rows, None, target_embeds)
        inputs["inputs_embeds"] = inputs["inputs_embeds"][:, start:]
        inputs["position_ids"] = inputs["position_ids"][:, start:]
        if inputs["attention_mask"].dim() == 4:  # the engine's own mask: queries from ``start`` on
            inputs["attention_mask"] = inputs["attention_mask"][:, :, start:]
        if start > 0:
            from transformers.cache_utils import DynamicCache

            inputs[self.keyword] = DynamicCache(
                [
                    (k[rows, :, :start], v[rows, :, :start])
                    for k, v in zip(self.keys, self.values, strict=True)
                ]
            )
        kept = positions[after] - 1 - start
        if model.has_logits_to_keep:
            output = model.model(**inputs, use_cache=start > 0, logits_to_keep=kept)
            fresh = output.logits
        else:
            output = model.model(**inputs, use_cache=start > 0)
            fresh = output.logits[:, kept]
        logits[:, after] = fresh.to(logits.dtype)
        return logits
