"""Shared fixtures: tiny random-weight models built offline (cached per session by seqattr.testing)."""

from __future__ import annotations

import pytest
import torch

import seqattr
from seqattr.testing import DECODER_ONLY, ENCODER_DECODER, tiny_model

# The tiny models' matrices are far too small to gain from intra-op threads; with several processes sharing
# two cores, torch's default (one thread per core, spin-waiting) made a test file 15x slower (measured).
torch.set_num_threads(1)

ALL_ARCHITECTURES = DECODER_ONLY + ENCODER_DECODER


@pytest.fixture(params=ALL_ARCHITECTURES)
def architecture(request) -> str:
    return request.param


@pytest.fixture(params=DECODER_ONLY)
def decoder_only_architecture(request) -> str:
    return request.param


@pytest.fixture(params=ENCODER_DECODER)
def encoder_decoder_architecture(request) -> str:
    return request.param


def attribution_model(
    architecture: str, method: str = "saliency", **method_kwargs
) -> seqattr.AttributionModel:
    """A tiny model of ``architecture`` wrapped with ``method`` (the HF model is shared and read-only)."""
    model, tokenizer = tiny_model(architecture)
    return seqattr.load_model(model, method, tokenizer=tokenizer, **method_kwargs)


PROMPTS = ["the cat sat on the mat", "a dog runs"]
