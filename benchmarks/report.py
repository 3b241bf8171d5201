"""Benchmark results: agreement checks, ratios, targets, rich tables, the JSON document, the docs table."""

from __future__ import annotations

import datetime
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import cases
import torch
from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 200)
ROOT = Path(__file__).resolve().parent.parent
AGREEMENT_TOLERANCE = 1e-3
"""Largest allowed |seqattr - reference| relative to the largest |reference| value of the sequence."""
TARGET_STEPS = 40
TARGET_MODELS = ("smollm2", "gpt2-small")
GRADIENT_TARGET, PERTURBATION_TARGET, MEMORY_TARGET, OVERHEAD_TARGET = 2.0, 20.0, 0.5, 0.2
RELEVANCE_TARGET = 1.5
"""AttnLRP is one forward and one batched backward, as saliency: its fused time within 1.5x of saliency's."""
DOCS_START, DOCS_END = "<!-- bench:start -->", "<!-- bench:end -->"


# --- agreement ----------------------------------------------------------------------------------------


def _load(path: Path) -> list[dict]:
    return torch.load(path, weights_only=True)


def _compare_tensors(ours: torch.Tensor | None, reference: torch.Tensor | None, rule: str) -> dict | None:
    if ours is None or reference is None:
        return None
    ours, reference = ours.float(), reference.float()
    if rule == "abs":
        ours = ours.abs()
    if ours.dim() != reference.dim():
        return {"error": f"shapes {tuple(ours.shape)} vs {tuple(reference.shape)}"}
    # Inseq's target matrices can carry a trailing row for the last token (never seen by a step); compare
    # the common corner.
    corner = tuple(slice(0, min(a, b)) for a, b in zip(ours.shape, reference.shape, strict=True))
    ours, reference = ours[corner], reference[corner]
    both = ours.isfinite() & reference.isfinite()
    # Positions a step cannot see: NaN in seqattr; Inseq writes NaN or 0 there.
    mismatched_mask = int((ours.isfinite() & ~reference.isfinite()).sum())
    scale = float(reference[both].abs().max()) if both.any() else 0.0
    error = float((ours[both] - reference[both]).abs().max()) if both.any() else 0.0
    return {
        "max_abs_error": error,
        "scale": scale,
        "relative_error": error / scale if scale else 0.0,
        "finite_only_in_seqattr": mismatched_mask,
    }


def agreement(config, dumps: dict[str, Path], rule: str | None) -> dict:
    """fused vs Inseq and fused vs stepwise on the same token ids: the largest error relative to the scale."""
    if rule is None or "fused" not in dumps:
        return {}
    fused = _load(dumps["fused"])
    out = {}
    for other in ("stepwise", "inseq"):
        if other not in dumps:
            continue
        reference = _load(dumps[other])
        rule_here = rule if other == "inseq" else "same"
        worst, ids_match, details = 0.0, True, []
        for ours, theirs in zip(fused, reference, strict=True):
            same_ids = list(ours["source_ids"]) == list(theirs["source_ids"]) and list(
                ours["target_ids"]
            ) == list(theirs["target_ids"])
            ids_match &= same_ids
            if not same_ids:
                continue
            for role in ("source_attributions", "target_attributions"):
                compared = _compare_tensors(ours[role], theirs[role], rule_here)
                if compared is None:
                    continue
                if "error" in compared:
                    details.append(f"{role}: {compared['error']}")
                    worst = math.inf
                    continue
                worst = max(worst, compared["relative_error"])
        out[other] = {
            "ids_match": ids_match,
            "relative_error": worst if ids_match else None,
            "ok": ids_match and worst <= AGREEMENT_TOLERANCE,
            "details": details,
        }
    return out


# --- the document -------------------------------------------------------------------------------------


def machine(args=None) -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    import transformers

    import seqattr

    versions.update(transformers=transformers.__version__, seqattr=seqattr.__version__)
    inseq_python = ROOT / ".bench-venv" / "bin" / "python"
    if inseq_python.exists():
        probe = subprocess.run(
            [
                str(inseq_python),
                "-c",
                "import importlib.metadata as m; print(*(m.version(p) for p in "
                "('inseq', 'torch', 'transformers', 'captum')))",
            ],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0:
            names = ("inseq", "torch", "transformers", "captum")
            versions["inseq_env"] = dict(zip(names, probe.stdout.split(), strict=True))
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "threads": getattr(args, "threads", None),
        "load_average": os.getloadavg(),
        "versions": versions,
        "command": " ".join(["python3", *map(str, sys.argv)]),
    }


def _category(method: str) -> str:
    from seqattr.methods import get_method_class
    from seqattr.methods.gradient import GradientOptions

    try:
        from seqattr.methods.perturbation import PerturbationOptions
    except ImportError:
        PerturbationOptions = ()  # noqa: N806
    options = get_method_class(method).Options
    if PerturbationOptions and issubclass(options, PerturbationOptions):
        return "perturbation"
    if issubclass(options, GradientOptions):
        return "gradient"
    return "other"


def _row(config) -> dict:
    row = {
        "model": config.model,
        "method": config.method,
        "steps": config.steps,
        "batch": config.batch,
        "scenario": config.scenario,
        "category": _category(config.method),
        "engines": {},
    }
    for engine, result in config.results.items():
        if "error" in result:
            row["engines"][engine] = {"error": result["error"]}
            continue
        m = result["measurement"]
        row["engines"][engine] = {
            key: m[key]
            for key in (
                "median_s",
                "times_s",
                "peak_mb",
                "base_mb",
                "forward_calls",
                "forward_rows",
                "forward_positions",
                "model_s",
                "overhead",
                "backward_seen",
            )
        }
    engines = row["engines"]

    def ratio(numerator: str, denominator: str, key: str) -> float | None:
        a, b = engines.get(numerator, {}), engines.get(denominator, {})
        if key in a and key in b and b[key] > 0:
            return a[key] / b[key]
        return None

    row["speedup_vs_inseq"] = ratio("inseq", "fused", "median_s")
    row["speedup_vs_stepwise"] = ratio("stepwise", "fused", "median_s")
    row["memory_vs_inseq"] = ratio("fused", "inseq", "peak_mb")
    ids = {e: r.get("ids") for e, r in config.results.items() if "ids" in r}
    row["ids_match"] = None if len(ids) < 2 else all(v == ids.get("fused", v) for v in ids.values())
    row["agreement"] = config.agreement
    return row


def _targets(rows: list[dict]) -> list[dict]:
    targets = []
    for row in rows:
        if row["model"] not in TARGET_MODELS:
            continue
        fused = row["engines"].get("fused", {})
        if row["scenario"] == "memory":
            measured = row["memory_vs_inseq"]
            targets.append(
                {
                    "target": "peak memory at 1,000 tokens <= 1/2 of Inseq's",
                    "model": row["model"],
                    "method": row["method"],
                    "required": MEMORY_TARGET,
                    "measured": measured,
                    "met": measured is not None and measured <= MEMORY_TARGET,
                    "by": None if measured is None else measured / MEMORY_TARGET,
                }
            )
            continue
        if row["steps"] != TARGET_STEPS or row["batch"] != 1:
            continue
        required = {"perturbation": PERTURBATION_TARGET, "gradient": GRADIENT_TARGET}.get(row["category"])
        if required is not None and "inseq" in row["engines"]:
            measured = row["speedup_vs_inseq"]
            targets.append(
                {
                    "target": f"{row['category']} methods >= {required:g}x faster than Inseq",
                    "model": row["model"],
                    "method": row["method"],
                    "required": required,
                    "measured": measured,
                    "met": measured is not None and measured >= required,
                    "by": None if measured is None else measured / required,
                }
            )
        if row["model"] == "smollm2" and "overhead" in fused:
            measured = fused["overhead"]
            targets.append(
                {
                    "target": "time outside the model's passes < 20%",
                    "model": row["model"],
                    "method": row["method"],
                    "required": OVERHEAD_TARGET,
                    "measured": measured,
                    "met": measured < OVERHEAD_TARGET,
                    "by": measured / OVERHEAD_TARGET,
                }
            )
    return targets + _relevance_targets(rows)


def _relevance_targets(rows: list[dict]) -> list[dict]:
    """AttnLRP's fused time over fused saliency's, on the same model, length and batch (issue 13)."""
    fused = {_key(row): row["engines"].get("fused", {}).get("median_s") for row in rows}
    targets = []
    for row in rows:
        if row["method"] != "attnlrp" or row["model"] not in TARGET_MODELS or row["scenario"] == "memory":
            continue
        if row["steps"] != TARGET_STEPS or row["batch"] != 1:
            continue
        mine, saliency = fused[_key(row)], fused.get(_key({**row, "method": "saliency"}))
        measured = mine / saliency if mine and saliency else None
        targets.append(
            {
                "target": f"attnlrp within {RELEVANCE_TARGET:g}x of fused saliency",
                "model": row["model"],
                "method": row["method"],
                "required": RELEVANCE_TARGET,
                "measured": measured,
                "met": measured is not None and measured <= RELEVANCE_TARGET,
                "by": None if measured is None else measured / RELEVANCE_TARGET,
            }
        )
    return targets


def _key(row: dict) -> tuple:
    return row["model"], row["method"], row["steps"], row["batch"], row["scenario"]


def build(configs, args, elapsed_s: float, previous: dict | None = None) -> dict:
    """The JSON document; with ``previous`` (``--update``), its rows that were not re-measured are kept (each
    row's ratios still come from one invocation, whose date the row records)."""
    date = machine(args)["date"]
    rows = [{**_row(config), "measured": date} for config in configs]
    invocations = [{"date": date, "command": machine(args)["command"], "rows": len(rows)}]
    if previous is not None:
        fresh = {_key(row) for row in rows}
        kept = [row for row in previous["rows"] if _key(row) not in fresh]
        for row in kept:
            row.setdefault("measured", previous["meta"]["date"])
            for result in row["agreement"].values():  # the tolerance may have changed since
                error = result.get("relative_error")
                result["ok"] = bool(
                    result["ids_match"] and error is not None and error <= AGREEMENT_TOLERANCE
                )
        order = {key: i for i, key in enumerate(_key(row) for row in previous["rows"])}
        rows = sorted(kept + rows, key=lambda row: order.get(_key(row), len(order)))
        invocations = (
            previous["meta"].get(
                "invocations",
                [
                    {
                        "date": previous["meta"]["date"],
                        "command": previous["meta"]["command"],
                        "rows": len(previous["rows"]),
                    }
                ],
            )
            + invocations
        )
    return {
        "meta": {
            **machine(args),
            "elapsed_s": elapsed_s,
            "grid": "full" if args.full else "quick",
            "invocations": invocations,
            "agreement_tolerance": AGREEMENT_TOLERANCE,
            "memory": "peak resident set (VmHWM, reset before each run) above the resident size before it",
            "models": {name: spec.description for name, spec in cases.MODELS.items()},
            "method_specs": {m: cases.method_spec(m).__dict__ for m in sorted({r["method"] for r in rows})},
        },
        "rows": rows,
        "targets": _targets(rows),
    }


# --- printing -----------------------------------------------------------------------------------------


def _seconds(engine: dict | None) -> str:
    if not engine:
        return "-"
    if "error" in engine:
        return "timeout" if engine["error"].startswith("timeout") else "error"
    return f"{engine['median_s']:.3g}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _agree(row: dict, other: str) -> str:
    result = row["agreement"].get(other)
    if result is None:
        return "-" if row["ids_match"] is not False else "ids differ"
    if not result["ids_match"]:
        return "ids differ"
    error = result["relative_error"]
    return ("ok " if result["ok"] else "NO ") + (f"{error:.0e}" if math.isfinite(error) else "shape")


COLUMNS = (
    "model",
    "method",
    "steps",
    "batch",
    "fused s",
    "stepwise s",
    "Inseq s",
    "vs stepwise",
    "vs Inseq",
    "forwards f/s/I",
    "peak MB f/s/I",
    "overhead",
    "agrees (stepwise, Inseq)",
)


def table_cells(row: dict) -> list[str]:
    engines = row["engines"]
    forwards = "/".join(
        str(engines.get(e, {}).get("forward_calls", "-")) for e in ("fused", "stepwise", "inseq")
    )
    peaks = "/".join(
        f"{engines[e]['peak_mb']:.0f}" if "peak_mb" in engines.get(e, {}) else "-"
        for e in ("fused", "stepwise", "inseq")
    )
    overhead = engines.get("fused", {}).get("overhead")
    steps = str(row["steps"]) if row["scenario"] == "speed" else f"{row['steps']} of 1,000 tokens"
    return [
        row["model"],
        row["method"],
        steps,
        str(row["batch"]),
        _seconds(engines.get("fused")),
        _seconds(engines.get("stepwise")),
        _seconds(engines.get("inseq")),
        _times(row["speedup_vs_stepwise"]),
        _times(row["speedup_vs_inseq"]),
        forwards,
        peaks,
        "-" if overhead is None else f"{overhead:.0%}",
        f"{_agree(row, 'stepwise')}, {_agree(row, 'inseq')}",
    ]


def print_group(number: int, total: int, model: str, engine: str, members, elapsed_s: float) -> None:
    failed = sum("error" in config.results.get(engine, {}) for config, _ in members)
    note = f", {failed} failed" if failed else ""
    console.print(
        f"[{number}/{total}] {model} {engine}: {len(members)} runs{note} ({elapsed_s / 60:.1f} min so far)"
    )


def print_tables(document: dict) -> None:
    meta = document["meta"]
    title = (
        f"seqattr benchmarks, {meta['date']}, {meta['nproc']} x {meta['cpu']}, "
        f"torch {meta['versions']['torch']}; speedups = other engine's time / fused time"
    )
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("model", "method") else "right")
    for row in document["rows"]:
        table.add_row(*table_cells(row))
    console.print(table)
    targets = Table(title="Targets (generation length 40, batch 1; memory at 1,000 tokens)")
    for column in ("target", "model", "method", "required", "measured", "met"):
        targets.add_column(column)
    for target in document["targets"]:
        measured = target["measured"]
        shown = (
            "-" if measured is None else (f"{measured:.0%}" if "%" in target["target"] else f"{measured:.2f}")
        )
        met = "yes" if target["met"] else ("no" if measured is None else f"no ({target['by']:.2f} of target)")
        targets.add_row(
            target["target"], target["model"], target["method"], f"{target['required']:g}", shown, met
        )
    console.print(targets)
    for row in document["rows"]:
        for engine, result in row["engines"].items():
            if "error" in result:
                console.print(
                    f"[red]{row['model']} {row['method']} {row['steps']}x{row['batch']} {engine}: "
                    f"{result['error']}[/red]"
                )


def print_sweep(rows: list[dict]) -> None:
    table = Table(title="fused gradient methods by MAX_STEP_CHUNK (seconds, median)")
    for column in ("model", "method", "steps", "batch", "chunk", "seconds", "forwards", "peak MB"):
        table.add_column(column, justify="right")
    for row in rows:
        m = row.get("measurement")
        table.add_row(
            row["model"],
            row["method"],
            str(row["steps"]),
            str(row["batch"]),
            str(row["chunk"]),
            f"{m['median_s']:.3g}" if m else row.get("error", "?"),
            str(m["forward_calls"]) if m else "-",
            f"{m['peak_mb']:.0f}" if m else "-",
        )
    console.print(table)


# --- docs ---------------------------------------------------------------------------------------------


def markdown(document: dict) -> str:
    meta = document["meta"]
    invocations = meta.get("invocations", [])
    when = (
        f"Measured in {len(invocations)} invocations (below), the last"
        if len(invocations) > 1
        else "Measured"
    )
    lines = [
        f"{when} {meta['date']} on {meta['nproc']} x {meta['cpu']} ({meta['threads']} torch threads), "
        f"torch {meta['versions']['torch']}, transformers {meta['versions']['transformers']}, "
        f"Inseq {meta['versions'].get('inseq_env', {}).get('inseq', '?')}; `{meta['command']}` "
        f"({meta['grid']} grid, {meta['elapsed_s'] / 60:.0f} min, load average at the end "
        f"{', '.join(f'{x:.1f}' for x in meta['load_average'])}).",
        "",
        *(
            f"- {inv['date']}: `{inv['command']}` ({inv['rows']} rows)"
            for inv in meta.get("invocations", [])
            if len(meta.get("invocations", [])) > 1
        ),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c in ("model", "method") else "---:" for c in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in document["rows"]]
    lines += ["", "| target | model | method | required | measured | met |", "|---|---|---|---:|---:|---|"]
    for target in document["targets"]:
        measured = target["measured"]
        shown = (
            "-" if measured is None else (f"{measured:.0%}" if "%" in target["target"] else f"{measured:.2f}")
        )
        met = "yes" if target["met"] else ("no" if measured is None else f"no ({target['by']:.2f} of target)")
        lines.append(
            f"| {target['target']} | {target['model']} | {target['method']} | {target['required']:g} "
            f"| {shown} | {met} |"
        )
    errors = [
        f"- {row['model']} {row['method']} {row['steps']}x{row['batch']} {engine}: {result['error']}"
        for row in document["rows"]
        for engine, result in row["engines"].items()
        if "error" in result
    ]
    if errors:
        lines += ["", "Runs that did not finish:", "", *errors]
    return "\n".join(lines)


def rewrite_section(path: Path, start: str, end: str, body: str) -> None:
    """Replace what lies between the ``start`` and ``end`` markers of the doc at ``path`` with ``body``."""
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start} ... {end} section to rewrite")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}")


def write_docs(document: dict, path: Path) -> None:
    """Replace the generated part of ``path`` (between the bench markers) with the latest tables."""
    rewrite_section(path, DOCS_START, DOCS_END, markdown(document))
    console.print(f"updated {path}")
