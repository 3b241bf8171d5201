"""The namespace of the docstring examples, which run as doctests (``make test``, ``pytest seqattr``).

Every example in ``seqattr/`` may use the names below without defining them; they are small real objects built
offline from `seqattr.testing.tiny_model` (a tiny random-weight GPT-2), once per session and only when
a doctest runs, so the tests in ``tests/`` are not affected (their fixtures live in ``tests/conftest.py``).

- ``seqattr``, ``torch``, ``Path``;
- ``hf_model``, ``hf_tokenizer`` (also ``tokenizer``): the tiny GPT-2 and its tokenizer;
- ``model``: ``seqattr.load_model(hf_model, "saliency", tokenizer=hf_tokenizer)``;
- ``out``: ``model.attribute("The capital of France is", "The capital of France is the city",
  step_scores=["probability"])`` (4 forced steps: "Ġthe", "Ġc", "it", "y"), and ``seq = out[0]``;
- ``tmp``: an empty temporary folder (one per example); examples run with it as the working directory, so
  nothing they write lands in the repository.

The random weights make scores arbitrary: examples show shapes, types and invariants, not score values.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest


@functools.cache
def _shared_namespace() -> dict:
    import datasets
    import torch

    import seqattr
    from seqattr.testing import tiny_model

    # As in tests/conftest.py: the tiny matrices gain nothing from intra-op threads.
    torch.set_num_threads(1)
    hf_model, hf_tokenizer = tiny_model("gpt2")
    model = seqattr.load_model(hf_model, "saliency", tokenizer=hf_tokenizer)
    # A forced continuation: its tokens come from the tokenizer, not from the random weights, so the examples
    # that print tokens stay true whatever the weights (" city" is three tokens: word aggregation shows).
    out = model.attribute(
        "The capital of France is",
        "The capital of France is the city",
        step_scores=["probability"],
        show_progress=False,
    )
    return {
        "seqattr": seqattr,
        "torch": torch,
        "datasets": datasets,
        "Path": Path,
        "hf_model": hf_model,
        "hf_tokenizer": hf_tokenizer,
        "tokenizer": hf_tokenizer,
        "model": model,
        "out": out,
        "seq": out[0],
    }


@pytest.fixture(autouse=True)
def _doctest_names(request):
    """Fill the doctest namespace for docstring examples only (a no-op for the tests in ``tests/``)."""
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    from seqattr import step_functions

    tmp_path = request.getfixturevalue("tmp_path")
    monkeypatch = request.getfixturevalue("monkeypatch")
    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update(_shared_namespace(), tmp=tmp_path)
    monkeypatch.chdir(tmp_path)
    registered = dict(step_functions._REGISTRY)
    yield
    # Examples may register step functions: leave the registry as it was for the rest of the session.
    step_functions._REGISTRY.clear()
    step_functions._REGISTRY.update(registered)
