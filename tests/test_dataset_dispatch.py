"""A model spread over devices with accelerate's big-model dispatch (issue 16): gradients flow through it and
attributions equal the undispatched model's. On CPU the split is CPU / disk offload (the offloaded layers'
weights live on the meta device and are loaded by accelerate's hooks at each forward)."""

from __future__ import annotations

import datasets
import pytest
import torch

import seqattr
from seqattr.cli import main
from seqattr.testing import tiny_model

PROMPT, TARGET = "The sky is", "The sky is blue today, and"
# GPT-2's second block on disk: the forward and backward cross an offloaded layer.
SPLIT = {
    "transformer.wte": "cpu",
    "transformer.wpe": "cpu",
    "transformer.drop": "cpu",
    "transformer.h.0": "cpu",
    "transformer.h.1": "disk",
    "transformer.ln_f": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dispatch")
    hf_model, tokenizer = tiny_model("gpt2")
    hf_model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return folder


@pytest.fixture(scope="module")
def reference(folder):
    return seqattr.load_model(str(folder / "model"), "saliency")


def dispatched(folder, device_map, **kwargs):
    offload = folder / f"offload-{len(list(folder.iterdir()))}"
    return seqattr.load_model(
        str(folder / "model"),
        "saliency",
        device_map=device_map,
        model_kwargs={"offload_folder": str(offload)},
        **kwargs,
    )


def offloaded(model) -> list[str]:
    return [name for name, p in model.model.named_parameters() if p.device.type == "meta"]


@pytest.mark.parametrize("method", ["saliency", "occlusion"])
def test_attributions_through_a_dispatched_model_equal_the_undispatched_ones(folder, reference, method):
    model = dispatched(folder, SPLIT)
    assert model.model.hf_device_map["transformer.h.1"] == "disk"
    assert offloaded(model) and all(name.startswith("transformer.h.1.") for name in offloaded(model))
    out = model.attribute(PROMPT, TARGET, method=method, step_scores=["probability"], show_progress=False)
    expected = reference.attribute(
        PROMPT, TARGET, method=method, step_scores=["probability"], show_progress=False
    )
    assert out.allclose(expected, rtol=1e-5, atol=1e-6)
    assert not torch.isnan(out[0].target_attributions[: out[0].attr_pos_start]).any()  # gradients reached


def test_device_map_auto_with_max_memory_offloads_what_does_not_fit(folder, reference):
    # 450 kB of "CPU memory": the embeddings and the head fit, the transformer blocks go to disk.
    model = dispatched(folder, "auto", max_memory={"cpu": 450_000})
    assert model.model.hf_device_map["transformer.h"] == "disk" and offloaded(model)
    out = model.attribute(PROMPT, TARGET, show_progress=False)
    assert out.allclose(reference.attribute(PROMPT, TARGET, show_progress=False), rtol=1e-5, atol=1e-6)


def test_a_dataset_run_through_a_dispatched_model_writes_the_same_records(folder, reference, tmp_path):
    data = datasets.Dataset.from_list(
        [{"text": PROMPT, "target": TARGET}, {"text": "A cat", "target": "A cat sat"}]
    )
    runs = [
        model.attribute_dataset(data, output_dir=tmp_path / name, target_column="target", show_progress=False)
        for name, model in (("plain", reference), ("split", dispatched(folder, SPLIT)))
    ]
    for (_, plain), (_, split) in zip(*runs, strict=True):
        assert split.allclose(plain, rtol=1e-5, atol=1e-6)


def test_dispatch_mistakes_are_refused_with_the_fix(folder):
    with pytest.raises(ValueError, match="give one of them"):
        seqattr.load_model(str(folder / "model"), device="cpu", device_map="auto")
    with pytest.raises(ValueError, match='give device_map="auto" too'):
        seqattr.load_model(str(folder / "model"), max_memory={"cpu": "1GiB"})
    hf_model, tokenizer = tiny_model("gpt2")
    with pytest.raises(ValueError, match="already loaded"):
        seqattr.load_model(hf_model, tokenizer=tokenizer, device_map="auto")
    # Too little memory for anything: the embeddings too would be offloaded.
    with pytest.raises(ValueError, match="input embeddings were offloaded"):
        dispatched(folder, "auto", max_memory={"cpu": 10_000})


def test_cli_passes_device_map_and_max_memory(folder, capsys):
    argv = ["attribute", "-m", str(folder / "model"), "-i", PROMPT, "-g", TARGET, "--no-show"]
    assert main([*argv, "--device-map", "auto", "--max-memory", "cpu=10000"]) == 2
    assert "input embeddings were offloaded" in capsys.readouterr().err  # the flags reached load_model
    assert main([*argv, "--device-map", "auto", "--device", "cpu"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main([*argv, "--device-map", "auto"]) == 0
