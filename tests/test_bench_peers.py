"""The benchmark's peers and devices (benchmarks/): Captum's LLM attribution as a second peer of `make bench`,
the issue-17 targets' verdicts, and `make bench-gpu` (the quick grid on CUDA, skipped without one).

Runs the workers in-process on a tiny model, on CPU through the same device plumbing as CUDA; the CUDA
memory meter is exercised with torch.cuda's statistics stood in for. Checks what the harness reports, never
how fast anything is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from seqattr.testing import tiny_model

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import captum_runner  # noqa: E402
import cases  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402
import run as bench  # noqa: E402
import seqattr_runner  # noqa: E402

STEPS = 4


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    model, tokenizer = tiny_model("gpt2")
    folder = tmp_path_factory.mktemp("bench-peers-gpt2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _args(**overrides) -> Namespace:
    defaults = dict(
        captum=True,
        captum_only=False,
        captum_methods=None,
        methods=None,
        full=False,
        models=("gpt2-small", "bart-small"),
        lengths=(STEPS,),
        repeats=1,
        budget=30.0,
    )
    return Namespace(**{**defaults, **overrides})


def _worker(module, folder: Path, worker: str, runs: list[dict], tmp_path: Path) -> dict[str, dict]:
    case = {
        "model_dir": str(folder),
        "is_encoder_decoder": False,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "engine": worker,
        "runs": runs,
    }
    results = tmp_path / f"{worker}.jsonl"
    module.main(case, str(results))
    records = [json.loads(line) for line in results.read_text().splitlines()]
    return {r["id"]: r for r in records if "id" in r}


def test_captum_part_plans_decoder_only_rows_with_every_mode():
    configs = bench.plan_captum(_args())
    assert {(c.model, c.method) for c in configs} == {
        ("gpt2-small", "feature_ablation"),
        ("gpt2-small", "layer_integrated_gradients"),
    }  # bart-small: Captum's LLMAttribution is decoder-only
    ablation = next(c for c in configs if c.method == "feature_ablation")
    assert ablation.engines == ("fused", "captum:one_pass", "captum:by_tokens", "captum:by_tokens_cached")
    assert (ablation.scenario, ablation.batch, ablation.steps) == ("captum", 1, STEPS)
    assert bench.plan_captum(_args(captum=False)) == []
    quick = {c.method: c.steps for c in bench.plan_captum(_args(lengths=None))}
    assert quick == {"feature_ablation": cases.CAPTUM_STEPS, "layer_integrated_gradients": 10}
    full = {c.method: c.steps for c in bench.plan_captum(_args(lengths=None, full=True))}
    assert set(full.values()) == {cases.CAPTUM_STEPS}
    # --methods narrows the Captum part as it narrows the grid.
    assert bench.plan_captum(_args(methods=("saliency",))) == []
    narrowed = bench.plan_captum(_args(methods=("saliency", "feature_ablation")))
    assert [c.method for c in narrowed] == ["feature_ablation"]
    only = bench.plan_captum(_args(captum=False, captum_only=True, captum_methods=("feature_ablation",)))
    assert [c.method for c in only] == ["feature_ablation"]


def test_feature_ablation_and_layer_ig_agree_with_captum_number_by_number(gpt2_folder, tmp_path):
    """The whole path of the Captum part on a tiny GPT-2: seqattr's worker prompt-only, Captum's worker in
    the one-pass and by-token modes and layer IG, then the driver's comparison of the prompt rows."""
    _, tokenizer = tiny_model("gpt2")
    texts = cases.make_texts(tokenizer, False, 1, STEPS)
    warmup = cases.make_texts(tokenizer, False, 1, 2, seed=1)[0]
    args = _args()
    seqattr_runs, captum_runs, dumps = [], [], {}
    for index, method in enumerate(("feature_ablation", "layer_integrated_gradients")):
        modes = (
            ("captum:one_pass", "captum:by_tokens") if method == "feature_ablation" else ("captum:layer_ig",)
        )
        config = bench.Config("gpt2-small", method, STEPS, 1, "captum", ("fused", *modes))
        for engine in config.engines:
            dumps[index, engine] = tmp_path / f"{index}-{engine.replace(':', '-')}.pt"
            run = bench.make_run(
                f"{index}:{engine}", config, texts, warmup, args, dumps[index, engine], engine
            )
            (seqattr_runs if engine == "fused" else captum_runs).append(run)
    assert all(run["attribute_target"] is False for run in seqattr_runs)  # Captum's convention
    results = {
        **_worker(seqattr_runner, gpt2_folder, "fused", seqattr_runs, tmp_path),
        **_worker(captum_runner, gpt2_folder, "captum", captum_runs, tmp_path),
    }
    for run_id, result in results.items():
        assert "error" not in result, (run_id, result)
        assert result["measurement"]["forward_calls"] > 0, run_id  # Captum's model.forward calls counted too
        assert result["measurement"]["extra"]["device"] == "cpu"
    for index, method in enumerate(("feature_ablation", "layer_integrated_gradients")):
        present = {engine: path for (i, engine), path in dumps.items() if i == index}
        agreement = report.captum_agreement(present)
        assert set(agreement) == set(present) - {"fused"}
        for engine, result in agreement.items():
            assert result["ids_match"] and result["ok"], (method, engine, result)
            assert result["max_abs_error"] < 1e-4


def test_captum_agreement_reports_a_difference(tmp_path):
    ours = torch.tensor([[0.5, 1.0], [2.0, -1.0], [float("nan"), float("nan")]])  # [positions, steps]
    torch.save(
        [
            {
                "source_ids": [],
                "target_ids": [1, 2, 3],
                "source_attributions": None,
                "target_attributions": ours,
            }
        ],
        tmp_path / "fused.pt",
    )
    theirs = ours[:2].T.clone()  # [steps, prompt features]
    theirs[1, 0] += 0.25
    torch.save([{"target_ids": [1, 2, 3], "features": [0, 1], "token_attr": theirs}], tmp_path / "captum.pt")
    torch.save([{"target_ids": [1, 2, 4], "features": [0, 1], "token_attr": theirs}], tmp_path / "other.pt")
    result = report.captum_agreement(
        {
            "fused": tmp_path / "fused.pt",
            "captum:x": tmp_path / "captum.pt",
            "captum:y": tmp_path / "other.pt",
        }
    )
    assert result["captum:x"]["max_abs_error"] == pytest.approx(0.25)
    assert result["captum:x"]["relative_error"] == pytest.approx(0.25 / 2.0)
    assert not result["captum:x"]["ok"]
    assert result["captum:y"] == {
        "ids_match": False,
        "relative_error": None,
        "max_abs_error": None,
        "ok": False,
    }


def _speed_row(model: str, method: str, inseq_ratio: float, category: str = "gradient") -> dict:
    return {
        "model": model,
        "method": method,
        "steps": report.TARGET_STEPS,
        "batch": 1,
        "scenario": "speed",
        "category": category,
        "engines": {"fused": {"median_s": 1.0}, "inseq": {"median_s": inseq_ratio}},
        "speedup_vs_inseq": inseq_ratio,
        "agreement": {},
    }


def _captum_row(ratio: float, same: bool) -> dict:
    engine = report.CAPTUM_REFERENCE_MODE
    return {
        "model": "smollm2",
        "method": "feature_ablation",
        "steps": report.TARGET_STEPS,
        "batch": 1,
        "scenario": "captum",
        "category": "perturbation",
        "engines": {"fused": {"median_s": 1.0}, engine: {"median_s": ratio}},
        "speedup_vs_captum": {engine: ratio},
        "agreement": {
            engine: {
                "ids_match": True,
                "ok": same,
                "max_abs_error": 0.0 if same else 0.3,
                "relative_error": 0.1,
            }
        },
    }


def _found(targets: list[dict], text: str, model: str, method: str) -> dict:
    (found,) = [
        t for t in targets if t["target"].startswith(text) and (t["model"], t["method"]) == (model, method)
    ]
    return found


def test_issue_17_targets_state_met_or_not_and_by_how_much():
    rows = [
        _speed_row("gpt2-small", "saliency", 3.3),
        _speed_row("smollm2", "saliency", 2.4),
        _speed_row("smollm2", "integrated_gradients", 1.3 * 1.1),
        _speed_row("smollm2", "attention", 0.8, category="other"),
        _captum_row(1.8 * 1.5, same=True),
    ]
    targets = report._targets(rows)
    saliency = _found(targets, "saliency >= 3x", "smollm2", "saliency")
    assert not saliency["met"] and report.verdict(saliency) == "no (0.80 of the target)"
    assert (
        report.verdict(_found(targets, "saliency >= 3x", "gpt2-small", "saliency"))
        == "yes (1.10x the target)"
    )
    assert report.verdict(
        _found(targets, "integrated gradients >= 1.3x", "smollm2", "integrated_gradients")
    ) == ("yes (1.10x the target)")
    attention = _found(targets, "every method >= 1x", "smollm2", "attention")  # attention included
    assert not attention["met"] and report.verdict(attention) == "no (0.80 of the target)"
    captum = _found(targets, "feature ablation >= 1.8x faster than Captum", "smollm2", "feature_ablation")
    assert captum["met"] and report.verdict(captum) == "yes (1.50x the target)"
    # Fast but other numbers: not met, and the difference is said.
    (differs,) = report._captum_targets(_captum_row(1.8 * 1.5, same=False))
    assert not differs["met"]
    assert report.verdict(differs) == "no (1.50x the target; numbers differ (max abs 3.0e-01))"
    # A limit (memory, at most half of Inseq's): below 1 is met.
    memory = report.target("peak memory", {"model": "smollm2", "method": "saliency"}, 0.5, 0.6, at_most=True)
    assert not memory["met"] and report.verdict(memory) == "no (1.20x the limit)"


def test_docs_tables_show_the_captum_rows_and_the_verdicts():
    row = _captum_row(2.0, same=True)
    row["engines"]["fused"].update(forward_calls=3, peak_mb=10.0)
    row["engines"][report.CAPTUM_REFERENCE_MODE].update(forward_calls=21, peak_mb=5.0)
    meta = {
        "date": "today",
        "nproc": 2,
        "cpu": "cpu",
        "threads": 1,
        "versions": {"torch": "x", "transformers": "y"},
        "command": "make bench",
        "grid": "quick",
        "elapsed_s": 60.0,
        "load_average": (1.0, 1.0, 1.0),
    }
    text = report.markdown({"meta": meta, "rows": [row], "targets": report._targets([row])})
    assert (
        "| smollm2 | feature_ablation | one_pass | 40 | 1 | 2 | 2.0x | 3/21 | 10/5 | 0.0e+00 (1e-01) | yes |"
        in text
    )
    assert "| feature ablation >= 1.8x faster than Captum's one-pass LLMAttribution, same numbers |" in text
    assert "yes (1.11x the target)" in text


def test_bench_gpu_says_it_skipped_without_cuda(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    output = tmp_path / "out.json"
    assert bench.main(["--device", "cuda", "--output", str(output)]) == 0
    assert capsys.readouterr().out.startswith("no CUDA device: skipped")
    assert not output.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine make bench-gpu runs the grid")
def test_make_bench_gpu_exits_0_with_the_skip_message():
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        ["make", "--no-print-directory", "bench-gpu", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA device: skipped" in done.stdout


def test_device_selection(monkeypatch):
    assert bench.resolve_device("cpu") == ("cpu", "")
    with pytest.raises(SystemExit, match="unknown device 'gpu'"):
        bench.resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert bench.resolve_device("cuda") == ("cuda", "")
    assert bench.resolve_device("cuda:0") == ("cuda:0", "")
    device, why = bench.resolve_device("cuda:3")
    assert device is None and why.startswith("no CUDA device 3: skipped")
    args = bench.parse_args(["--device", "cuda"])
    assert args.output is None  # main() then writes benchmarks/results/latest-cuda.json, not the CPU table


def test_measure_on_cuda_reads_the_allocator_statistics(monkeypatch):
    """The CUDA branch of `measure`: synchronized timing and CUDA's peak allocated bytes above the bytes
    allocated before the calls (torch.cuda's functions stood in for: no GPU here)."""
    calls: list[str] = []
    allocated = {"now": 300 * 2**20, "peak": 0}

    def reset_peak(device):
        calls.append("reset")
        allocated["peak"] = allocated["now"]

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset_peak)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: allocated["peak"])
    model, tokenizer = tiny_model("gpt2")
    ids = tokenizer("the cat sat", return_tensors="pt")["input_ids"]

    def run():
        with torch.no_grad():
            model(input_ids=ids)
        allocated["peak"] = max(allocated["peak"], allocated["now"] + 48 * 2**20)  # the call's own tensors

    result = measure.measure(run, model, repeats=2, budget_s=30.0, device="cuda")
    assert result.peak_mb == pytest.approx(48.0) and result.base_mb == pytest.approx(300.0)
    assert result.extra == {"memory": measure.CudaMemory.kind, "device": "cuda"}
    assert result.forward_calls == 1
    assert calls[0] == "sync" and "reset" in calls and calls.count("sync") >= 2 * 2  # around each call
    assert isinstance(measure.memory_meter("cpu"), measure.ResidentMemory)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_seqattr_and_captum_workers_run_on_cuda(gpt2_folder, tmp_path):
    _, tokenizer = tiny_model("gpt2")
    texts = cases.make_texts(tokenizer, False, 1, STEPS)
    warmup = cases.make_texts(tokenizer, False, 1, 2, seed=1)[0]
    config = bench.Config("gpt2-small", "feature_ablation", STEPS, 1, "captum", ("fused", "captum:one_pass"))
    runs = {e: bench.make_run(f"0:{e}", config, texts, warmup, _args(), None, e) for e in config.engines}
    for module, worker, engine in (
        (seqattr_runner, "fused", "fused"),
        (captum_runner, "captum", "captum:one_pass"),
    ):
        case = {
            "model_dir": str(gpt2_folder),
            "is_encoder_decoder": False,
            "threads": 1,
            "device": "cuda",
            "engine": worker,
            "runs": [runs[engine]],
        }
        module.main(case, str(tmp_path / f"{worker}.jsonl"))
        record = json.loads((tmp_path / f"{worker}.jsonl").read_text().splitlines()[-1])
        assert "error" not in record, record
        assert record["measurement"]["extra"]["device"] == "cuda" and record["measurement"]["peak_mb"] > 0
