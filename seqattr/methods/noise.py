"""Random draws of the noise tunnels and GradientSHAP, identical in the fused path and in Captum's reference.

Captum's ``NoiseTunnel`` draws ``torch.normal(0, stdev)`` input tensor by input tensor from the global RNG
(then GradientSHAP draws one ``np.random.uniform`` per noisy row). The stepwise reference passes every token
as its own Captum input (``captum_stepwise(split_positions=True)``) and reseeds both global generators before
each step, so step ``t`` receives, for its prefix, the first draws of the sequence. The fused path draws
the whole sequence once, position by position with private generators seeded the same way: same seed, same
numbers, in both paths, and the user's global RNG state is left as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from seqattr.methods.base import MethodInputs
from seqattr.typing import Float, Tensor


def check_stdevs(stdevs) -> None:
    if isinstance(stdevs, bool) or not isinstance(stdevs, (int, float)) or stdevs < 0:
        raise ValueError(
            f"stdevs must be a non-negative number (the noise's standard deviation), got {stdevs!r}"
        )


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's and numpy's global generators (which Captum draws from), restoring them on exit."""
    numpy_state = np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed)
            yield
    finally:
        np.random.set_state(numpy_state)


def attributed_embeds(inputs: MethodInputs) -> list[Tensor]:
    """The attributed embeddings in Captum's input order (source, then target)."""
    roles = ((inputs.source_embeds, inputs.attribute_source), (inputs.target_embeds, inputs.attribute_target))
    return [embeds for embeds, attributed in roles if attributed and embeds is not None]


def tunnel_noise(
    inputs: MethodInputs, stdev: float, n_samples: int, generator: torch.Generator
) -> list[Float[Tensor, "samples batch positions hidden"]]:
    """Noise for every attributed role, drawn as Captum's NoiseTunnel draws it for one input per token.

    Captum repeats each example ``n_samples`` times (``repeat_interleave``: example-major rows); the result is
    reordered sample-major, the block-wise layout of copies that `StepObjective` expects.
    """
    batch = inputs.batch.size
    noises = []
    for embeds in attributed_embeds(inputs):
        hidden = embeds.shape[-1]
        std = torch.tensor(float(stdev), device=embeds.device).repeat(batch * n_samples, hidden)
        draws = [torch.normal(0, std, generator=generator) for _ in range(embeds.shape[1])]
        noise = torch.stack(draws, 1).to(embeds.dtype)  # [batch * samples, positions, hidden]
        noise = noise.unflatten(0, (batch, n_samples)).transpose(0, 1)
        if embeds is inputs.target_embeds and inputs.held_target is not None:
            # Prompt-only attribution: the generated prefix stays at its tokens (drawn all the same, so the
            # prompt's noise is the one the whole-target run draws).
            noise = noise.masked_fill(inputs.held_target[None, :, :, None], 0.0)
        noises.append(noise)
    return noises


def tunnel_generators(seed: int, device: torch.device) -> tuple[torch.Generator, np.random.RandomState]:
    """Private generators that produce the same streams as the global ones seeded by `seeded_global_rng`."""
    return torch.Generator(device=device).manual_seed(seed), np.random.RandomState(seed)
