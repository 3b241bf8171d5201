"""The performance features as a new user meets them from the docs: half precision (``dtype=``), adaptive
integration (``n_steps="auto"``), activation checkpointing. Each test is a mistake or a question a user
plausibly has, and checks the answer names the problem and the fix (or that the docs' claim holds)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import seqattr
from seqattr.models import checkpointing
from seqattr.testing import tiny_model

PROMPT = "the cat sat on the mat"


@pytest.fixture
def gpt2():
    """A private copy of the tiny GPT-2 (``load_model(dtype=...)`` casts the model it is given)."""
    model, tokenizer = tiny_model("gpt2")
    return copy.deepcopy(model), tokenizer


@pytest.mark.parametrize(
    ("dtype", "named"),
    [
        ("bf16", "'bfloat16'"),
        ("fp16", "'float16'"),
        ("BFloat16", "'bfloat16'"),
        ("torch.bfloat16", "'bfloat16'"),
    ],
)
def test_other_spellings_of_a_dtype_name_the_right_one(gpt2, dtype, named):
    model, tokenizer = gpt2
    with pytest.raises(ValueError, match=f"did you mean dtype={named}"):
        seqattr.load_model(model, "saliency", tokenizer=tokenizer, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.int8, "int8", "long", torch.bool, torch.float8_e4m3fn, "complex64"])
def test_a_dtype_no_model_runs_in_is_refused_before_the_model_is_touched(gpt2, dtype):
    # torch.int8 failed inside nn.Module.to, float8 and complex only at the first attribute() deep in torch.
    model, tokenizer = gpt2
    with pytest.raises(ValueError, match="not a precision.*'bfloat16'"):
        seqattr.load_model(model, "saliency", tokenizer=tokenizer, dtype=dtype)
    assert next(model.parameters()).dtype == torch.float32


def test_a_dtype_that_is_not_a_dtype_is_a_type_error(gpt2):
    # dtype=16 (bits) went to nn.Module.to(16), which read it as a device: "Cannot access accelerator device".
    model, tokenizer = gpt2
    with pytest.raises(TypeError, match="dtype must be a torch dtype or its name, got 16"):
        seqattr.load_model(model, "saliency", tokenizer=tokenizer, dtype=16)


@pytest.mark.parametrize("dtype", ["bfloat16", torch.bfloat16, "half"])
def test_names_and_dtype_objects_load_the_same_precision(gpt2, dtype):
    model, tokenizer = gpt2
    loaded = seqattr.load_model(model, "saliency", tokenizer=tokenizer, dtype=dtype)
    expected = torch.float16 if dtype == "half" else torch.bfloat16
    assert next(loaded.model.parameters()).dtype == expected


def test_the_output_says_whether_activation_checkpointing_ran(monkeypatch, gpt2):
    # docs/methods_gradient.md, "Long sequences": automatic, and info["checkpointed_block_calls"] tells.
    model, tokenizer = gpt2
    attributor = seqattr.load_model(model, "saliency", tokenizer=tokenizer)
    short = attributor.attribute(PROMPT, PROMPT + " and the dog", show_progress=False)
    assert short.info["checkpointed_block_calls"] == 0  # the tiny model's graph is far below 1 GiB
    monkeypatch.setattr(checkpointing, "GRAPH_BYTES", 0)  # as over a long sequence: every graph is too large
    long = attributor.attribute(PROMPT, PROMPT + " and the dog", show_progress=False)
    assert long.info["checkpointed_block_calls"] > 0
    torch.testing.assert_close(long[0].target_attributions, short[0].target_attributions, equal_nan=True)


@pytest.mark.parametrize(
    ("options", "fix"),
    [
        ({"n_steps": "Auto"}, "pass n_steps='auto'"),
        ({"n_steps": "auto", "tolerance": "0.01"}, "pass the number, tolerance=0.01"),
        # The hint was "pass e.g. max_n_steps=1", itself refused (not a grid of the rule).
        ({"n_steps": "auto", "max_n_steps": "27"}, "pass the number, max_n_steps=27"),
    ],
)
def test_adaptive_integration_options_spelled_as_strings_get_the_value_to_pass(gpt2, options, fix):
    model, tokenizer = gpt2
    with pytest.raises(TypeError, match=fix):
        seqattr.load_model(model, "integrated_gradients", tokenizer=tokenizer, **options)


def test_adaptive_integration_does_not_pass_nan_attributions_as_converged():
    # NaN > tolerance is False: a NaN delta once counted as converged, every step stopping on the first grid
    # with no warning (the closed trapezoid rule overflowed at a zero baseline on RMSNorm models; the open
    # rule does not, so an attributed function that is NaN stands in for any overflow).
    model, tokenizer = tiny_model("llama")
    attributor = seqattr.load_model(model, "integrated_gradients", tokenizer=tokenizer, n_steps="auto")

    def overflowing(args):
        return args.logits[..., 0] * math.nan

    with pytest.warns(seqattr.ConvergenceWarning, match=r"a delta of nan or inf.*delta nan"):
        out = attributor.attribute(
            PROMPT, PROMPT + " and the dog", attributed_fn=overflowing, show_progress=False
        )
    assert out[0].step_scores["integration_points"].eq(3).all()
