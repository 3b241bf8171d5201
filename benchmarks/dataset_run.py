"""The dataset row of `make bench` (optional: `python3 benchmarks/run.py --dataset-run`): examples per
minute of `seqattr attribute-dataset` over the same rows in 1 process and in N processes under
`accelerate launch` (CPU, gloo), and whether both runs wrote the same records.

Each run is the command line a user types, in a fresh process (model loading included in the time, as a user
pays it); the rows are prompts with forced continuations from `seqattr.testing.ENGLISH_CORPUS`.
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
    cli += ["--target-column", "target", "--shard-size", "20", "--batch-size", "8"]
    if processes == 1:
        return [sys.executable, "-m", "seqattr.cli", *cli]
    script = output.parent / "run_cli.py"
    script.write_text("import sys, seqattr.cli\nsys.exit(seqattr.cli.main(sys.argv[1:]))\n")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(processes)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launch, str(script), *cli]


def _records(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.jsonl"))}


def dataset_rows(
    model: Path, method: str = "saliency", rows: int = 200, processes=(1, 2), threads: int = 1
) -> list[dict]:
    """One result per process count: ``{"processes", "rows", "seconds", "examples_per_minute",
    "same_records"}`` (the records compared with the first run's)."""
    results = []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    with tempfile.TemporaryDirectory(prefix="seqattr-bench-dataset-") as tmp:
        data = Path(tmp) / "rows.jsonl"
        write_rows(data, rows)
        first = None
        for count in processes:
            output = Path(tmp) / f"run-{count}"
            started = time.perf_counter()
            result = subprocess.run(
                _command(count, data, model, method, output), env=env, capture_output=True, text=True
            )
            seconds = time.perf_counter() - started
            if result.returncode != 0:
                results.append({"processes": count, "rows": rows, "error": result.stderr[-2000:]})
                continue
            records = _records(output)
            first = records if first is None else first
            results.append(
                {
                    "processes": count,
                    "rows": rows,
                    "seconds": round(seconds, 2),
                    "examples_per_minute": round(rows / seconds * 60, 1),
                    "same_records": records == first,
                }
            )
    return results


def print_rows(results: list[dict], model: str, method: str) -> None:
    print(f"\nattribute-dataset, {model}, {method}: examples per minute (model loading included)")
    for r in results:
        if "error" in r:
            print(f"  {r['processes']} process(es): failed\n{r['error']}")
        else:
            print(
                f"  {r['processes']} process(es): {r['rows']} rows in {r['seconds']:.1f} s = "
                f"{r['examples_per_minute']:.0f}/min, records equal to 1 process: {r['same_records']}"
            )
