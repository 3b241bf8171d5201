"""`make quality`: which attribution to trust: every method on the ground-truth tasks and on SmolLM2.

Plausibility: each method's argmax alignments against the gold links of the three ground-truth tasks
(`seqattr.ground_truth`: alignment accuracy and AER). Faithfulness: each method on SmolLM2-135M-Instruct
(the default model), 20 short prompts, 10 greedy tokens each, evaluated by `model.evaluate`
(comprehensiveness, sufficiency, deletion/insertion AUC, ABPC) with the random ranking's level beside each;
and the time per explained step. Writes the tables to benchmarks/results/quality.json and, with --docs, into
docs/quality.md between its markers.

Usage:
    python3 benchmarks/quality.py --docs                  # everything (tens of minutes on 2 cores)
    python3 benchmarks/quality.py --methods saliency,occlusion --prompts 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import seqattr
from seqattr.ground_truth import alignment_scores, list_tasks, load_task

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "quality.json"
CACHE = ROOT / "benchmarks" / "results" / "quality_cache"
DOC = ROOT / "docs" / "quality.md"
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"

# Options that make each method affordable on the CPU and comparable: path methods at 16 points, sampling
# methods at a few dozen samples, the attention methods averaged over layers and heads.
OPTIONS: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 16},
    "layer_integrated_gradients": {"n_steps": 16},
    "sequential_integrated_gradients": {"n_steps": 8},
    "internal_influence": {"n_steps": 16, "hidden_reduction": "sum"},  # one score per token
    "integrated_hessians": {"n_steps": 3},  # 6 path points; the default 8 (36 points) took 20 s per step
    "expected_hessians": {"n_steps": 2, "n_baselines": 2},  # 3 points x 2 baselines (default 10 x 8)
    "discretized_integrated_gradients": {"n_steps": 8},
    "expected_gradients": {"n_steps": 8, "n_baselines": 2},
    "smooth_grad": {"nt_samples": 8},
    "square_grad": {"nt_samples": 8},
    "var_grad": {"nt_samples": 8},
    "gradient_shap": {"n_samples": 8},
    "lime": {"n_samples": 64},
    "kernel_shap": {"n_samples": 64},
    "sobol": {"n_designs": 16},
    "reagent": {"num_probes": 4, "max_probe_steps": 25},  # Inseq's 16 x 3000 takes a day on SmolLM2 here
    "attention": {"aggregate_layers": "mean", "aggregate_heads": "mean"},
    "value_zeroing": {"aggregate_layers": "mean"},
}
METRICS = ("comprehensiveness", "sufficiency", "deletion_auc", "insertion_auc", "abpc")
# Every method's ranking is measured on the generated token's probability, the quantity all but ContextCite
# attribute: ContextCite explains a log-odds, which the curves (shares of f_t(x)) cannot divide by, and on
# one scale the rows compare.
MEASURED = "probability"
PROMPTS = [
    "The capital of France is",
    "My favourite fruit is the",
    "The sun rises in the",
    "Water boils at a temperature of",
    "The opposite of hot is",
    "A week has seven",
    "Cats like to chase",
    "The first month of the year is",
    "To open a locked door you need a",
    "The largest ocean on Earth is the",
    "In winter it often",
    "Bees make",
    "The color of the sky on a clear day is",
    "Two plus two equals",
    "The author of Romeo and Juliet is",
    "People read books in a",
    "At night we can see the moon and the",
    "The Eiffel Tower is in",
    "Fish live in",
    "A doctor works in a",
]
GENERATION = {"max_new_tokens": 10, "do_sample": False}


def ground_truth_rows(methods: list[str], progress: Progress) -> list[dict]:
    tasks = [load_task(name) for name in list_tasks()]
    job = progress.add_task("ground-truth tasks", total=len(tasks) * len(methods))
    rows = []
    for task in tasks:
        for method in methods:
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    scores = alignment_scores(task, method, **OPTIONS.get(method, {}))
                except ValueError as error:  # a method that refuses the task's architecture: "-" in the table
                    print(f"{method} on {task.name}: not run ({error})", file=sys.stderr)
                    progress.advance(job)
                    continue
            rows.append(
                {
                    "task": task.name,
                    "task_accuracy": task.accuracy,
                    "method": method,
                    "alignment_accuracy": scores.accuracy,
                    "aer": scores.aer,
                    "steps": scores.steps,
                    "seconds": time.perf_counter() - started,
                    "date": time.strftime("%Y-%m-%d"),
                }
            )
            progress.advance(job)
    return rows


def faithfulness_rows(
    methods: list[str], prompts: list[str], progress: Progress, cached_only: bool = False
) -> list[dict]:
    """Each method on each prompt, evaluated; one cached file per (method, prompt), so a run can resume.

    The full grid takes hours on a CPU: an interrupted run (or one spread over several sessions, `nice`d in
    the background) keeps every finished pair under benchmarks/results/quality_cache/ and computes only the
    rest. ``cached_only`` computes nothing: each row averages the prompts cached so far (its ``prompts``).
    """
    model = None if cached_only else seqattr.load_model()
    job = progress.add_task("SmolLM2 faithfulness", total=len(methods) * len(prompts))
    rows = []
    for method in methods:
        pairs = []
        for index, prompt in enumerate(prompts):
            pair = _cached(method, index, prompt)
            if pair is None and not cached_only:
                pair = _prompt_evaluation(model, method, index, prompt)
            if pair is not None:
                pairs.append(pair)
            progress.advance(job)
        if not pairs:
            continue
        steps = sum(pair["steps"] for pair in pairs)
        rows.append(
            {
                "method": method,
                "prompts": len(pairs),
                "steps": steps,
                "seconds_per_step": sum(pair["attribution_s"] for pair in pairs) / steps,
                "total_s": sum(pair["total_s"] for pair in pairs),
                "means": _step_means(pairs, "per_step"),
                "random": _step_means(pairs, "random_per_step"),
                "date": time.strftime("%Y-%m-%d"),
            }
        )
    return rows


def _prompt_evaluation(model, method: str, index: int, prompt: str) -> dict:
    """One method on one prompt: its per-step metric values (and the random ranking's), cached on disk.

    The random level depends only on the generated tokens (not on the method), so it is computed once per
    prompt and output and reused by every method that generated the same tokens: half the evaluation's cost.
    """
    cached = _cached(method, index, prompt)
    if cached is not None:
        return cached
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        out = model.attribute(
            prompt, method=method, generation_args=GENERATION, show_progress=False, **OPTIONS.get(method, {})
        )
        attributed = time.perf_counter() - started
        seq = out[0]
        # The random level depends on the tokens and on the step function the metrics measure.
        key = {
            "prompt": prompt,
            "target_ids": list(seq.target_ids),
            "attr_pos_start": seq.attr_pos_start,
            "step_function": MEASURED,
        }
        random_file = CACHE / "_random" / f"{index:02d}-{MEASURED}.json"
        known = json.loads(random_file.read_text()) if random_file.exists() else None
        reuse = known is not None and known["key"] == key
        # The metrics depend on each step's ranking only: methods that rank alike (a layer variant at the
        # embeddings and its input method) share one evaluation.
        digest = _ranking_digest(out, key)
        ranked = None if digest is None else CACHE / "_rankings" / f"{index:02d}-{digest}.json"
        if ranked is not None and ranked.exists() and reuse:
            per_step = json.loads(ranked.read_text())
        else:  # evaluate refuses attributions with extra dimensions itself, naming the fix
            result = model.evaluate(
                out, metrics=list(METRICS), random_ranking=not reuse, step_function=MEASURED
            )
            per_step = {metric: result.per_step[0][metric].tolist() for metric in METRICS}
            if ranked is not None:
                _write(ranked, per_step)
    random_per_step = (
        known["random_per_step"]
        if reuse
        else {metric: result.random_per_step[0][metric].tolist() for metric in METRICS}
    )
    if not reuse:
        _write(random_file, {"key": key, "random_per_step": random_per_step})
    pair = {
        "prompt": prompt,
        "options": OPTIONS.get(method, {}),
        "steps": out[0].num_steps,
        "attribution_s": out.info["timing"]["attribution_s"],
        "total_s": attributed,
        "per_step": per_step,
        "random_per_step": random_per_step,
    }
    _write(CACHE / method / f"{index:02d}.json", pair)
    return pair


def _cached(method: str, index: int, prompt: str) -> dict | None:
    """The cached evaluation of ``method`` on prompt ``index``, if it was made with today's options."""
    path = CACHE / method / f"{index:02d}.json"
    if path.exists():
        pair = json.loads(path.read_text())
        if pair["prompt"] == prompt and pair["options"] == OPTIONS.get(method, {}):
            return pair
    return None


def _ranking_digest(out, key: dict) -> str | None:
    """A digest of the output's tokens and each step's ranking of the features it sees (the order of its
    token-level scores, largest first, ties in position order: as `evaluate` ranks them)."""
    seq = out[0]
    parts = [x for x in (seq.source_attributions, seq.target_attributions) if x is not None]
    scores = torch.cat(parts).double()
    if scores.dim() > 2:  # not one score per token: nothing to rank (evaluate says so)
        return None
    orders = [
        np.argsort(-scores[:, step][~scores[:, step].isnan()].numpy(), kind="stable").tolist()
        for step in range(scores.shape[1])
    ]
    return hashlib.sha1(json.dumps([key, orders]).encode()).hexdigest()[:16]


def _write(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")  # two runs may write the same prompt's random level
    temporary.write_text(json.dumps(content))
    temporary.replace(path)  # atomic: a killed run never leaves half a file to resume from


def _step_means(pairs: list[dict], key: str) -> dict[str, float]:
    """Each metric's mean over all steps of all prompts (NaN steps skipped), as EvaluationResult.means."""
    means = {}
    for metric in METRICS:
        values = [v for pair in pairs for v in pair[key][metric] if not math.isnan(v)]
        means[metric] = sum(values) / len(values) if values else math.nan
    return means


def _number(value: float, digits: int = 3) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "n/a" if missing else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    lines = []
    tasks = sorted({r["task"] for r in results["ground_truth"]}, key=list_tasks().index)
    if tasks:
        accuracy = {r["task"]: r["task_accuracy"] for r in results["ground_truth"]}
        lines += [
            "Alignment accuracy / AER on the ground-truth tasks (argmax link per step; task model accuracy "
            "in the header). Higher accuracy and lower AER are better.",
            "",
            "| method | " + " | ".join(f"{t} ({accuracy[t]:.0%})" for t in tasks) + " |",
            "| --- | " + " | ".join("---" for _ in tasks) + " |",
        ]
        by = {(r["task"], r["method"]): r for r in results["ground_truth"]}
        for method in results["methods"]:
            cells = [
                f"{_number(by[t, method]['alignment_accuracy'])} / {_number(by[t, method]['aer'])}"
                if (t, method) in by
                else "-"
                for t in tasks
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if results["faithfulness"]:
        lines += [
            f"Faithfulness on SmolLM2-135M-Instruct ({results['num_prompts']} prompts, 10 greedy tokens "
            "each; each cell: the method's mean over all steps, then the random ranking's). "
            "Comprehensiveness, deletion-vs-insertion gap (ABPC) and insertion AUC: higher is better; "
            "sufficiency and deletion AUC: lower is better.",
            "",
            "| method | " + " | ".join(METRICS) + " | s / step |",
            "| --- | " + " | ".join("---" for _ in METRICS) + " | --- |",
        ]
        partial = []
        for row in results["faithfulness"]:
            cells = [f"{_number(row['means'][m])} ({_number(row['random'][m])})" for m in METRICS]
            seconds = _number(row["seconds_per_step"])
            prompts = row.get("prompts", results["num_prompts"])
            name = row["method"]
            if prompts != results["num_prompts"]:
                name = f"{name} ({prompts} prompts)"
                partial.append(name)
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds} |")
        lines.append("")
        missing = sorted(set(results["methods"]) - {row["method"] for row in results["faithfulness"]})
        if missing:
            lines += [f"Not yet measured on SmolLM2: {', '.join(missing)}.", ""]
        if partial:
            lines += [
                f"Not yet on all {results['num_prompts']} prompts (`make quality` computes the rest from "
                f"the cache): {', '.join(partial)}; their means and random levels are over their own "
                "prompts.",
                "",
            ]
    spans = [
        f"{what} {_date_span(results[key])}"
        for key, what in (("ground_truth", "ground-truth tasks"), ("faithfulness", "SmolLM2 faithfulness"))
        if results[key]
    ]
    lines.append(
        f"Measured on {results['machine']} by `make quality`: {', '.join(spans)} (each row's date is in "
        "`benchmarks/results/quality.json`)."
    )
    return "\n".join(lines)


def _date_span(rows: list[dict]) -> str:
    """The dates ``rows`` were measured on: one date, or the first and the last.

    Example:
        >>> _date_span([{"date": "2026-12-03"}, {"date": "2026-12-02"}])
        '2026-12-02 to 2026-12-03'
    """
    dates = sorted({row["date"] for row in rows})
    return dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"


def write_docs(text: str) -> None:
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        sys.exit(f"{DOC} has no {BEGIN} ... {END} markers to write between")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def updated(previous: dict, new: dict) -> dict:
    """``previous`` results with ``new``'s methods measured again or added: the other methods' rows are kept,
    each with the date it was measured. Kept faithfulness rows must use the same prompts.

    Example:
        >>> old = {"methods": ["a"], "num_prompts": 3, "date": "d1",
        ...        "ground_truth": [{"method": "a", "date": "d1"}],
        ...        "faithfulness": [{"method": "a", "date": "d1"}]}
        >>> new = {**old, "methods": ["b"], "date": "d2", "ground_truth": [{"method": "b", "date": "d2"}],
        ...        "faithfulness": [{"method": "b", "date": "d2"}]}
        >>> merged = updated(old, new)
        >>> [(r["method"], r["date"]) for r in merged["faithfulness"]], merged["date"]
        ([('a', 'd1'), ('b', 'd2')], 'd2')
    """
    measured = set(new["methods"])
    kept_faithfulness = [r for r in previous["faithfulness"] if r["method"] not in measured]
    if previous["num_prompts"] != new["num_prompts"] and kept_faithfulness and new["faithfulness"]:
        sys.exit(
            f"--update: {RESULTS} has {previous['num_prompts']} prompts, this run {new['num_prompts']}; "
            f"pass --prompts {previous['num_prompts']} or run every method again"
        )
    methods = sorted(set(previous["methods"]) | measured)

    def rows(key: str) -> list[dict]:
        kept = [r for r in previous[key] if r["method"] not in measured] + new[key]
        return sorted(kept, key=lambda r: (r.get("task", ""), methods.index(r["method"])))

    return {
        **previous,
        "num_prompts": new["num_prompts"] if new["faithfulness"] else previous["num_prompts"],
        "methods": methods,
        "date": new["date"],
        "ground_truth": rows("ground_truth") if new["ground_truth"] else previous["ground_truth"],
        "faithfulness": rows("faithfulness") if new["faithfulness"] else previous["faithfulness"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: all registered)")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the 20 prompts")
    parser.add_argument("--skip-tasks", action="store_true", help="no ground-truth tasks")
    parser.add_argument("--skip-smollm2", action="store_true", help="no SmolLM2 faithfulness")
    parser.add_argument("--docs", action="store_true", help="also write the tables into docs/quality.md")
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="compute nothing on SmolLM2: tables from the cached (method, prompt) results so far",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the other methods' rows of benchmarks/results/quality.json (same number of prompts)",
    )
    args = parser.parse_args()
    methods = args.methods.split(",") if args.methods else sorted(seqattr.list_methods())
    prompts = PROMPTS[: args.prompts]
    import platform

    results = {
        "methods": methods,
        "num_prompts": len(prompts),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)",
        "ground_truth": [],
        "faithfulness": [],
    }
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        if not args.skip_tasks:
            results["ground_truth"] = ground_truth_rows(methods, progress)
        if not args.skip_smollm2:
            results["faithfulness"] = faithfulness_rows(methods, prompts, progress, args.cached_only)
    if args.update and RESULTS.exists():
        results = updated(json.loads(RESULTS.read_text()), results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    text = markdown(results)
    console = Console()
    table = Table("method", *METRICS, "s / step", title="faithfulness (random level in brackets)")
    for row in results["faithfulness"]:
        cells = [f"{_number(row['means'][m])} ({_number(row['random'][m])})" for m in METRICS]
        table.add_row(row["method"], *cells, _number(row["seconds_per_step"]))
    if results["faithfulness"]:
        console.print(table)
    console.print(f"written to {RESULTS}")
    if args.docs:
        write_docs(text)
        console.print(f"and into {DOC}")


if __name__ == "__main__":
    main()
