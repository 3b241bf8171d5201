"""The dataset row of `make bench` (alone: `python3 benchmarks/run.py --dataset-run`): examples per minute
of `seqattr attribute-dataset` over the same rows in 1 process and in N processes under `accelerate launch`
(CPU, gloo), whether both runs wrote the same records, and Inseq's `inseq attribute-dataset` over the same
rows (same model, method and batch size, in its own environment `.bench-venv/`), measured in the same
invocation so that the ratio holds on a busy machine.

Each run is the command line a user types, in a fresh process (imports and model loading included in the
time, as a user pays them), with one torch thread per process; the rows are prompts with forced
continuations from `seqattr.testing.ENGLISH_CORPUS`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seqattr.testing import ENGLISH_CORPUS

BATCH = 8
"""Rows per model call, the same for both tools."""


def write_rows(path: Path, rows: int) -> None:
    """``rows`` JSONL rows ``{"text": prompt, "target": prompt + continuation}``, made from the corpus."""
    lines = []
    for i in range(rows):
        words = ENGLISH_CORPUS[i % len(ENGLISH_CORPUS)].split()
        cut = max(2, len(words) // 2)
        prompt = " ".join(words[:cut])
        lines.append(json.dumps({"text": prompt, "target": " ".join(words)}))
    path.write_text("\n".join(lines) + "\n")


def _command(processes: int, data: Path, model: Path, method: str, output: Path) -> list[str]:
    cli = ["attribute-dataset", str(data), "-m", str(model), "-a", method, "-o", str(output)]
    cli += ["--target-column", "target", "--shard-size", "20", "--batch-size", str(BATCH)]
    if processes == 1:
        return [sys.executable, "-m", "seqattr.cli", *cli]
    script = output.parent / "run_cli.py"
    script.write_text("import sys, seqattr.cli\nsys.exit(seqattr.cli.main(sys.argv[1:]))\n")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(processes)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launch, str(script), *cli]


def _inseq_command(inseq_python: Path, data: Path, model: Path, method: str, output: Path) -> list[str]:
    """Inseq's own dataset command: reads the rows with `datasets`, attributes them in batches, saves JSON.
    ``--generated_text_field``: the same forced targets (prompt + continuation, as seqattr's)."""
    cli = ["attribute-dataset", "-m", str(model), "-a", method, "--device", "cpu", "--batch_size", str(BATCH)]
    cli += ["--dataset_name", "json", "--dataset_files", str(data), "--input_text_field", "text"]
    cli += [
        "--generated_text_field",
        "target",
        "--save_path",
        str(output / "out.json"),
        "--hide_attributions",
    ]
    return [
        str(inseq_python),
        "-c",
        "import sys; from inseq.commands.cli import main; sys.exit(main())",
        *cli,
    ]


def _inseq_examples(output: Path) -> int:
    """How many sequences Inseq's saved output holds."""
    saved = json.loads((output / "out.json").read_text())
    return len(saved["attributes"]["sequence_attributions"])


def _records(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.parquet"))}


def _timed(command: list[str], env: dict, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - started, result


def dataset_rows(
    model: Path,
    method: str = "saliency",
    rows: int = 200,
    processes=(1, 2),
    threads: int = 1,
    inseq_python: Path | None = None,
    inseq_method: str | None = None,
) -> list[dict]:
    """One result per run: ``{"tool", "processes", "rows", "seconds", "examples_per_minute", ...}``; seqattr's
    with ``same_records`` (its shards compared with the 1-process run's), Inseq's (when ``inseq_python`` is
    given) with ``examples`` (the sequences in its saved output)."""
    results = []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    with tempfile.TemporaryDirectory(prefix="seqattr-bench-dataset-") as tmp:
        data = Path(tmp) / "rows.jsonl"
        write_rows(data, rows)
        first = None
        for count in processes:
            output = Path(tmp) / f"run-{count}"
            seconds, result = _timed(_command(count, data, model, method, output), env, Path(tmp))
            row = {"tool": "seqattr", "processes": count, "rows": rows}
            if result.returncode != 0:
                results.append({**row, "error": result.stderr[-2000:]})
                continue
            records = _records(output)
            first = records if first is None else first
            results.append({**row, **_speed(rows, seconds), "same_records": records == first})
        if inseq_python is not None:
            output = Path(tmp) / "inseq"
            output.mkdir()
            # Inseq's `datasets` cache in the run's folder: a first read (not a cached one) every time
            inseq_env = {**env, "HF_DATASETS_CACHE": str(output / "cache")}
            command = _inseq_command(inseq_python, data, model, inseq_method or method, output)
            seconds, result = _timed(command, inseq_env, output)
            row = {"tool": "inseq", "processes": 1, "rows": rows}
            if result.returncode != 0:
                results.append({**row, "error": (result.stderr or result.stdout)[-2000:]})
            else:
                results.append({**row, **_speed(rows, seconds), "examples": _inseq_examples(output)})
    return results


def _speed(rows: int, seconds: float) -> dict:
    return {"seconds": round(seconds, 2), "examples_per_minute": round(rows / seconds * 60, 1)}


def vs_inseq(results: list[dict]) -> float | None:
    """seqattr's 1-process examples/min over Inseq's, from the same invocation (None when one failed)."""
    speeds = {
        (r["tool"], r["processes"]): r["examples_per_minute"] for r in results if "examples_per_minute" in r
    }
    if ("seqattr", 1) not in speeds or ("inseq", 1) not in speeds:
        return None
    return round(speeds[("seqattr", 1)] / speeds[("inseq", 1)], 2)


def print_rows(results: list[dict], model: str, method: str) -> None:
    print(f"\nattribute-dataset, {model}, {method}: examples per minute (imports and model loading included)")
    for r in results:
        who = f"{r['tool']}, {r['processes']} process(es)"
        if "error" in r:
            print(f"  {who}: failed\n{r['error']}")
            continue
        check = (
            f"records equal to 1 process: {r['same_records']}"
            if r["tool"] == "seqattr"
            else f"{r['examples']} sequences saved"
        )
        print(
            f"  {who}: {r['rows']} rows in {r['seconds']:.1f} s = {r['examples_per_minute']:.0f}/min, {check}"
        )
    ratio = vs_inseq(results)
    if ratio is not None:
        print(f"  seqattr (1 process) vs Inseq: {ratio:.2f}x the examples per minute")


DOCS_START, DOCS_END = "<!-- bench-dataset:start -->", "<!-- bench-dataset:end -->"


def markdown(document: dict) -> str:
    """The dataset row's table for docs/benchmarks.md."""
    meta, versions = document["meta"], document["meta"]["versions"]
    lines = [
        f"Measured {meta['date']} on {meta['nproc']} x {meta['cpu']} (1 torch thread per process), "
        f"{document['model']}, {document['method']}, batch {BATCH}; torch {versions['torch']}, "
        f"transformers {versions['transformers']}, Inseq {versions.get('inseq_env', {}).get('inseq', '-')} "
        f"(transformers {versions.get('inseq_env', {}).get('transformers', '-')}); `{meta['command']}` "
        f"(load average at the end {', '.join(f'{x:.1f}' for x in meta['load_average'])}).",
        "",
        "| tool | processes | rows | seconds | examples/min | check |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in document["results"]:
        if "error" in r:
            lines.append(f"| {r['tool']} | {r['processes']} | {r['rows']} | failed | - | - |")
            continue
        check = (
            f"records equal to 1 process: {'yes' if r['same_records'] else 'NO'}"
            if r["tool"] == "seqattr"
            else f"{r['examples']} sequences saved"
        )
        lines.append(
            f"| {r['tool']} | {r['processes']} | {r['rows']} | {r['seconds']:.1f} | "
            f"{r['examples_per_minute']:.0f} | {check} |"
        )
    ratio = vs_inseq(document["results"])
    if ratio is not None:
        lines += ["", f"seqattr in one process: **{ratio:.2f}x** Inseq's examples per minute."]
    return "\n".join(lines)


def write_docs(document: dict, path: Path) -> None:
    """Replace the dataset row's part of ``path`` (between its markers) with ``document``'s table."""
    from report import rewrite_section  # a sibling script, as run.py imports it

    rewrite_section(path, DOCS_START, DOCS_END, markdown(document))
    print(f"updated {path}")
