"""Long contexts: a forward graph over the memory budget is checkpointed block by block
(`seqattr.models.checkpointing`), with the same attributions and fewer bytes kept for the backward pass.

The tiny models' graphs are far below the real budget (`GRAPH_BYTES`, 1 GiB), so the tests set it to 0
(checkpoint every pass) or to a huge value (never) and compare; a spy on ``torch.utils.checkpoint`` proves
which one ran. Models have 4 blocks, 8 in the memory test (the first block of a pass measures and is never
checkpointed), and run in float64, where a recomputed block gives bit-identical values.
"""

from __future__ import annotations

import functools

import pytest
import torch
import transformers
from torch import Tensor

import seqattr
from seqattr.models import checkpointing
from seqattr.testing import tiny_model

NEVER = 2**62
PROMPT = "the cat sat on the mat and the dog ran to the door"
OUTPUT = PROMPT + " and then it slept"


@functools.cache
def deep_model(architecture: str, blocks: int = 4) -> tuple[transformers.PreTrainedModel, object]:
    """The tiny ``architecture`` with ``blocks`` blocks (random weights, float64, eval mode)."""
    model, tokenizer = tiny_model(architecture)
    config = type(model.config)(**{**model.config.to_dict(), "num_hidden_layers": blocks})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        deep = type(model)(config).double().eval()
    return deep, tokenizer


class CheckpointCalls:
    """Counts the block calls that `checkpointing` ran through ``torch.utils.checkpoint``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = checkpointing.checkpoint

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(checkpointing, "checkpoint", counted)


def attributions(monkeypatch, budget: int, architecture: str, method: str, **options) -> tuple[Tensor, int]:
    """The target attributions of one forced sequence under ``budget`` and the checkpointed block calls."""
    monkeypatch.setattr(checkpointing, "GRAPH_BYTES", budget)
    calls = CheckpointCalls(monkeypatch)
    hf_model, tokenizer = deep_model(architecture)
    model = seqattr.load_model(hf_model, method, tokenizer=tokenizer, **options)
    out = model.attribute(PROMPT, OUTPUT, attribute_target=True, show_progress=False)
    return out[0].target_attributions, calls.count


@pytest.mark.filterwarnings("ignore:.*do not add up")  # 4 integration points: the sums are not the point
@pytest.mark.parametrize(
    ("architecture", "method", "options"),
    [
        ("llama", "saliency", {}),
        ("gpt2", "saliency", {}),
        ("llama", "input_x_gradient", {}),
        ("llama", "integrated_gradients", {"n_steps": 4}),
        ("llama", "layer_integrated_gradients", {"target_layer": "decoder.1.mlp", "n_steps": 4}),
        ("llama", "attnlrp", {}),
    ],
)
def test_checkpointed_attributions_equal_plain_ones(monkeypatch, architecture, method, options):
    plain, plain_calls = attributions(monkeypatch, NEVER, architecture, method, **options)
    checkpointed, calls = attributions(monkeypatch, 0, architecture, method, **options)
    assert plain_calls == 0
    # Blocks 1-3 of every gradient pass were recomputed in the backward pass (the layer method's tap sits in
    # block 1: block 0 records no graph, block 1 measures, blocks 2-3 are checkpointed).
    assert calls > 0
    assert plain.dtype == torch.float64
    torch.testing.assert_close(checkpointed, plain, rtol=0, atol=1e-10, equal_nan=True)


def test_quantity_of_interest_inside_a_checkpointed_block(monkeypatch):
    """The quantity's recording hook sits inside block 2, which is recomputed in the backward pass: the hook
    is gone by then, so its activations are recorded once and the gradient is the plain one."""
    quantity = seqattr.qoi.neuron("decoder.2.mlp", 3)
    plain, _ = attributions(monkeypatch, NEVER, "llama", "saliency")
    results = []
    for budget in (NEVER, 0):
        monkeypatch.setattr(checkpointing, "GRAPH_BYTES", budget)
        calls = CheckpointCalls(monkeypatch)
        hf_model, tokenizer = deep_model("llama")
        model = seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer)
        out = model.attribute(PROMPT, OUTPUT, attributed_fn=quantity, show_progress=False)
        results.append((out[0].target_attributions, calls.count))
    (plain, plain_calls), (checkpointed, calls) = results
    assert (plain_calls, calls > 0) == (0, True)
    torch.testing.assert_close(checkpointed, plain, rtol=0, atol=1e-10, equal_nan=True)


def saved_bytes_of_attribution(monkeypatch, budget: int) -> int:
    """Bytes of the activations autograd saved for backward passes during one saliency call (each storage
    once, the weights not at all): deterministic, unlike a process's memory."""
    monkeypatch.setattr(checkpointing, "GRAPH_BYTES", budget)
    hf_model, tokenizer = deep_model("llama", blocks=8)
    weights = {p.untyped_storage().data_ptr() for p in hf_model.parameters()}
    model = seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer)
    seen: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.attribute(PROMPT, OUTPUT, show_progress=False)
    return sum(seen.values())


def test_checkpointing_keeps_a_fraction_of_the_graph(monkeypatch):
    """8 blocks: with checkpointing, the forward pass keeps the first block's graph and the blocks' inputs;
    without, all 8 blocks' activations (measured: 0.27 MB against 3.1 MB)."""
    plain = saved_bytes_of_attribution(monkeypatch, NEVER)
    checkpointed = saved_bytes_of_attribution(monkeypatch, 0)
    assert plain > 0
    assert checkpointed < plain / 3


def test_the_budget_decides(monkeypatch):
    """Under the budget nothing is checkpointed; over it, every block after the first; the estimate is the
    first block's saved bytes times the blocks."""
    hf_model, tokenizer = deep_model("llama")
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    embeds = hf_model.get_input_embeddings()(ids).detach().requires_grad_()
    calls = CheckpointCalls(monkeypatch)
    with checkpointing.checkpointing_when_large(hf_model, budget=NEVER) as plan:
        hf_model(inputs_embeds=embeds, use_cache=False)
    estimate = plan.graph_bytes["decoder"]
    assert (plan.checkpointed, calls.count) == (0, 0)
    assert estimate > 0 and estimate % 4 == 0
    with checkpointing.checkpointing_when_large(hf_model, budget=estimate - 1) as plan:
        hf_model(inputs_embeds=embeds, use_cache=False)
    assert (plan.checkpointed, calls.count) == (3, 3)
    with checkpointing.checkpointing_when_large(hf_model, budget=estimate) as plan:
        hf_model(inputs_embeds=embeds, use_cache=False)
    assert plan.checkpointed == 0
    # Without gradients there is no graph: nothing is measured or checkpointed.
    with torch.no_grad(), checkpointing.checkpointing_when_large(hf_model, budget=0) as plan:
        hf_model(inputs_embeds=embeds, use_cache=False)
    assert (plan.checkpointed, plan.graph_bytes) == (0, {})


def test_the_budget_is_per_sequence(monkeypatch):
    """A pass of many rows (integrated gradients' interpolation rows) whose graph exceeds the budget only in
    total is not checkpointed: the engine chunks rows; one long sequence over it is."""
    hf_model, tokenizer = deep_model("llama")
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    one = hf_model.get_input_embeddings()(ids).detach().requires_grad_()
    rows = one.detach().repeat(8, 1, 1).requires_grad_()
    with checkpointing.checkpointing_when_large(hf_model, budget=NEVER) as plan:
        hf_model(inputs_embeds=one, use_cache=False)
    per_sequence = plan.graph_bytes["decoder"]
    with checkpointing.checkpointing_when_large(hf_model, budget=per_sequence) as plan:
        hf_model(inputs_embeds=rows, use_cache=False)  # 8 rows: 8 times the budget in all
    total = plan.graph_bytes["decoder"]
    assert total > 7 * per_sequence and plan.checkpointed == 0
    with checkpointing.checkpointing_when_large(hf_model, budget=total // 8 - 1) as plan:
        hf_model(inputs_embeds=rows, use_cache=False)
    assert plan.checkpointed == 3


def test_the_model_is_left_as_found(monkeypatch):
    hf_model, _ = deep_model("llama")
    blocks = list(hf_model.model.layers)
    with (
        pytest.raises(RuntimeError, match="stop"),
        checkpointing.checkpointing_when_large(hf_model, budget=0),
    ):
        assert all("forward" in block.__dict__ for block in blocks)
        raise RuntimeError("stop")
    assert not any("forward" in block.__dict__ for block in blocks)
