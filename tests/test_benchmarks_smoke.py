"""Keeps the benchmark harness (benchmarks/) from rotting: its seqattr side on a tiny model, in-process, no
Inseq. Checks what the harness reports, never how fast anything is."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from seqattr.testing import tiny_model

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import cases  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402
import run as bench  # noqa: E402
import seqattr_runner  # noqa: E402


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    model, tokenizer = tiny_model("gpt2")
    folder = tmp_path_factory.mktemp("bench-gpt2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_texts_have_exact_token_counts_and_survive_the_round_trip():
    _, tokenizer = tiny_model("gpt2")
    pairs = cases.make_texts(tokenizer, False, batch=3, steps=7)
    assert len(pairs) == 3
    for prompt, full in pairs:
        prompt_ids, full_ids = tokenizer(prompt)["input_ids"], tokenizer(full)["input_ids"]
        assert full.startswith(prompt) and full_ids[: len(prompt_ids)] == prompt_ids
        assert (len(prompt_ids), len(full_ids)) == (cases.PROMPT_TOKENS, cases.PROMPT_TOKENS + 7)


def test_encoder_decoder_texts_count_special_tokens():
    _, tokenizer = tiny_model("bart")
    ((source, target),) = cases.make_texts(tokenizer, True, batch=1, steps=6)
    assert len(tokenizer(source)["input_ids"]) == cases.PROMPT_TOKENS
    assert len(tokenizer(text_target=target)["input_ids"]) == 6  # + the decoder start token = 6 steps


def test_probe_counts_forward_calls_rows_and_backward():
    model, tokenizer = tiny_model("gpt2")
    probe = measure.ModelProbe(model)
    ids = tokenizer(["the cat sat", "a dog ran"], return_tensors="pt")["input_ids"]
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    with probe.attached():
        model(inputs_embeds=embeds).logits.sum().backward(inputs=[embeds])  # shared model: no param .grad
        with torch.no_grad():
            model(input_ids=ids)
    counters = probe.counters
    assert (counters.forward_calls, counters.forward_rows) == (2, 4)
    assert counters.forward_positions == 4 * ids.shape[1]
    assert counters.backward_s > 0
    assert not model._forward_hooks and not model._forward_pre_hooks  # hooks are removed


def _run(folder: Path, engine: str, dump: Path, tmp_path: Path) -> dict:
    _, tokenizer = tiny_model("gpt2")
    config = bench.Config("gpt2-small", "saliency", steps=5, batch=2)
    args = Namespace(repeats=2, budget=30.0)
    texts = cases.make_texts(tokenizer, False, config.batch, config.steps)
    warmup = cases.make_texts(tokenizer, False, 1, 4, seed=1)[0]
    run = bench.make_run(f"0:{engine}", config, texts, warmup, args, dump)
    case = {
        "model_dir": str(folder),
        "is_encoder_decoder": False,
        "threads": torch.get_num_threads(),
        "engine": engine,
        "runs": [run],
    }
    results = tmp_path / f"{engine}.jsonl"
    seqattr_runner.main(case, str(results))
    started, finished = (json.loads(line) for line in results.read_text().splitlines())
    assert started["started"] == finished["id"] == f"0:{engine}"
    return finished


def test_seqattr_worker_reports_measurements_and_fused_agrees_with_stepwise(gpt2_folder, tmp_path):
    dumps = {engine: tmp_path / f"{engine}.pt" for engine in ("fused", "stepwise")}
    results = {engine: _run(gpt2_folder, engine, dumps[engine], tmp_path) for engine in dumps}
    for result in results.values():
        assert "error" not in result, result
        m = result["measurement"]
        assert len(m["times_s"]) >= 1 and m["median_s"] > 0 and m["backward_seen"]
        assert 0 <= m["overhead"] <= 1
        assert len(result["ids"]) == 2 and len(result["ids"][0]["target"]) == cases.PROMPT_TOKENS + 5
    # Stepwise runs one forward per step; fused one per chunk of steps (plus the engine's scoring pass).
    assert (
        results["fused"]["measurement"]["forward_calls"] < results["stepwise"]["measurement"]["forward_calls"]
    )

    config = bench.Config("gpt2-small", "saliency", 5, 2, engines=("fused", "stepwise"), results=results)
    config.agreement = report.agreement(config, dumps, "sum_hidden")
    assert config.agreement["stepwise"]["ids_match"] and config.agreement["stepwise"]["ok"]
    row = report._row(config)
    assert row["speedup_vs_stepwise"] > 0 and row["ids_match"]
    assert "saliency" in report.markdown({"meta": _meta(), "rows": [row], "targets": []})


def test_agreement_detects_a_difference(tmp_path):
    values = torch.tensor([[1.0, float("nan")], [2.0, 3.0]])
    ours = [
        {"source_ids": [], "target_ids": [1, 2], "source_attributions": None, "target_attributions": values}
    ]
    theirs = [{**ours[0], "target_attributions": values * 1.01}]
    torch.save(ours, tmp_path / "fused.pt")
    torch.save(theirs, tmp_path / "inseq.pt")
    config = bench.Config("gpt2-small", "saliency", 2, 1)
    result = report.agreement(
        config, {"fused": tmp_path / "fused.pt", "inseq": tmp_path / "inseq.pt"}, "same"
    )
    assert result["inseq"]["ids_match"] and not result["inseq"]["ok"]
    assert result["inseq"]["relative_error"] == pytest.approx(
        0.03 / 3.03, rel=1e-4
    )  # max error / max |reference|


def _meta() -> dict:
    return {
        "date": "today",
        "nproc": 2,
        "cpu": "cpu",
        "threads": 2,
        "versions": {"torch": "x", "transformers": "y"},
        "command": "make bench",
        "grid": "quick",
        "elapsed_s": 60.0,
        "load_average": (1.0, 1.0, 1.0),
    }
