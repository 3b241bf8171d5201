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
PARITY_TARGET, SALIENCY_TARGET, IG_TARGET, CAPTUM_ABLATION_TARGET = 1.0, 3.0, 1.3, 1.8
"""Issue 17: every method at least Inseq's speed, saliency >= 3x Inseq, integrated gradients >= 1.3x Inseq at
the same 50 points, prompt-only feature ablation >= 1.8x Captum's one-pass LLMAttribution, equal numbers."""
CAPTUM_REFERENCE_MODE = "captum:one_pass"
DOCS_START, DOCS_END = "<!-- bench:start -->", "<!-- bench:end -->"
GPU_DOCS_START, GPU_DOCS_END = "<!-- bench-gpu:start -->", "<!-- bench-gpu:end -->"


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


def captum_agreement(dumps: dict[str, Path]) -> dict:
    """Fused seqattr (prompt-only) against each Captum mode, on the prompt rows Captum has as features.

    seqattr's ``target_attributions`` is ``[positions, steps]``; Captum's ``token_attr`` is ``[target tokens,
    prompt features]`` with the features' positions in its dump: the prompt rows of seqattr, transposed,
    against it. Reports the largest absolute difference and that difference relative to the largest
    |Captum| value (``ok`` within `AGREEMENT_TOLERANCE`).
    """
    if "fused" not in dumps:
        return {}
    (ours,) = _load(dumps["fused"])
    out = {}
    for engine, path in dumps.items():
        if not engine.startswith("captum:"):
            continue
        (theirs,) = _load(path)
        ids_match = list(ours["target_ids"]) == list(theirs["target_ids"])
        if not ids_match:
            out[engine] = {"ids_match": False, "relative_error": None, "max_abs_error": None, "ok": False}
            continue
        mine = ours["target_attributions"][theirs["features"]].T.float()
        reference = theirs["token_attr"].float()
        if mine.shape != reference.shape:
            out[engine] = {
                "ids_match": True,
                "relative_error": math.inf,
                "max_abs_error": None,
                "ok": False,
                "details": [f"shapes {tuple(mine.shape)} vs {tuple(reference.shape)}"],
            }
            continue
        compared = _compare_tensors(mine, reference, "same")
        out[engine] = {
            "ids_match": True,
            "relative_error": compared["relative_error"],
            "max_abs_error": compared["max_abs_error"],
            "ok": compared["relative_error"] <= AGREEMENT_TOLERANCE
            and compared["finite_only_in_seqattr"] == 0,
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
        "device": getattr(args, "device", "cpu"),
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
    captum = [engine for engine in engines if engine.startswith("captum:")]
    if captum:  # the Captum part: Captum's time (memory) over fused seqattr's, per mode
        row["speedup_vs_captum"] = {engine: ratio(engine, "fused", "median_s") for engine in captum}
        row["memory_vs_captum"] = {engine: ratio("fused", engine, "peak_mb") for engine in captum}
    ids = {e: r.get("ids") for e, r in config.results.items() if "ids" in r}
    row["ids_match"] = None if len(ids) < 2 else all(v == ids.get("fused", v) for v in ids.values())
    row["agreement"] = config.agreement
    return row


def target(
    text: str, row: dict, required: float, measured: float | None, at_most: bool = False, **extra
) -> dict:
    """One target's verdict: met or not, and ``by`` = measured / required (for an ``at_most`` target, a
    limit, below 1 is met; otherwise above 1 is). ``extra["condition"]`` False fails a met ratio (e.g.
    "same numbers") and ``extra["why"]`` says why.

    Example:
        >>> t = target("saliency >= 3x faster than Inseq", {"model": "m", "method": "saliency"}, 3.0, 2.4)
        >>> t["met"], round(t["by"], 2), verdict(t)
        (False, 0.8, 'no (0.80 of the target)')
    """
    condition = extra.pop("condition", True)
    if measured is None:
        met = False
    else:
        met = (measured <= required if at_most else measured >= required) and condition
    return {
        "target": text,
        "model": row["model"],
        "method": row["method"],
        "required": required,
        "measured": measured,
        "at_most": at_most,
        "met": met,
        "by": None if measured is None else measured / required,
        **extra,
    }


def verdict(result: dict) -> str:
    """ "yes" or "no" and by how much: the measured value as a multiple or fraction of the target."""
    by = result["by"]
    if by is None:
        return "no (not measured)"
    if result.get("at_most"):
        margin = f"{by:.2f} of the limit" if by <= 1 else f"{by:.2f}x the limit"
    else:
        margin = f"{by:.2f}x the target" if by >= 1 else f"{by:.2f} of the target"
    why = f"; {result['why']}" if result.get("why") else ""
    return f"{'yes' if result['met'] else 'no'} ({margin}{why})"


def _targets(rows: list[dict]) -> list[dict]:
    targets = []
    for row in rows:
        if row["model"] not in TARGET_MODELS:
            continue
        fused = row["engines"].get("fused", {})
        if row["scenario"] == "memory":
            text = "peak memory at 1,000 tokens <= 1/2 of Inseq's"
            targets.append(target(text, row, MEMORY_TARGET, row["memory_vs_inseq"], at_most=True))
            continue
        if row["steps"] != TARGET_STEPS or row["batch"] != 1:
            continue
        if row["scenario"] == "captum":
            targets += _captum_targets(row)
            continue
        required = {"perturbation": PERTURBATION_TARGET, "gradient": GRADIENT_TARGET}.get(row["category"])
        if "inseq" in row["engines"]:
            measured = row["speedup_vs_inseq"]
            if required is not None:
                text = f"{row['category']} methods >= {required:g}x faster than Inseq"
                targets.append(target(text, row, required, measured))
            targets.append(target("every method >= 1x Inseq's speed", row, PARITY_TARGET, measured))
            if row["method"] == "saliency":
                targets.append(target("saliency >= 3x faster than Inseq", row, SALIENCY_TARGET, measured))
            if row["method"] == "integrated_gradients":
                text = "integrated gradients >= 1.3x faster than Inseq (same 50 points)"
                targets.append(target(text, row, IG_TARGET, measured))
        if row["model"] == "smollm2" and "overhead" in fused:
            text = "time outside the model's passes < 20%"
            targets.append(target(text, row, OVERHEAD_TARGET, fused["overhead"], at_most=True))
    return targets + _relevance_targets(rows)


def _captum_targets(row: dict) -> list[dict]:
    """Feature ablation against Captum's one-pass LLMAttribution: faster by 1.8x, with the same numbers."""
    if row["method"] != "feature_ablation" or CAPTUM_REFERENCE_MODE not in row["engines"]:
        return []
    agreement = row["agreement"].get(CAPTUM_REFERENCE_MODE, {})
    same = bool(agreement.get("ok"))
    error = agreement.get("max_abs_error")
    why = (
        ""
        if same
        else f"numbers differ (max abs {error:.1e})"
        if error is not None
        else "numbers not compared"
    )
    text = "feature ablation >= 1.8x faster than Captum's one-pass LLMAttribution, same numbers"
    measured = row["speedup_vs_captum"][CAPTUM_REFERENCE_MODE]
    return [target(text, row, CAPTUM_ABLATION_TARGET, measured, condition=same, why=why)]


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
        text = f"attnlrp within {RELEVANCE_TARGET:g}x of fused saliency"
        targets.append(target(text, row, RELEVANCE_TARGET, measured, at_most=True))
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
            "memory": (
                "peak resident set (VmHWM, reset before each run) above the resident size before it"
                if not str(getattr(args, "device", "cpu")).startswith("cuda")
                else "torch.cuda.max_memory_allocated (reset before each run) above memory_allocated then"
            ),
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


CAPTUM_COLUMNS = (
    "model",
    "method",
    "Captum mode",
    "steps",
    "seqattr s",
    "Captum s",
    "vs Captum",
    "forwards s/C",
    "peak MB s/C",
    "max abs diff (relative)",
    "same numbers",
)


def captum_cells(row: dict) -> list[list[str]]:
    """The Captum part's rows: one per Captum mode, against the same fused seqattr run."""
    engines, lines = row["engines"], []
    fused = engines.get("fused", {})
    for engine, ratio in row.get("speedup_vs_captum", {}).items():
        theirs = engines.get(engine, {})
        forwards = "/".join(str(e.get("forward_calls", "-")) for e in (fused, theirs))
        peaks = "/".join(f"{e['peak_mb']:.0f}" if "peak_mb" in e else "-" for e in (fused, theirs))
        agreement = row["agreement"].get(engine)
        if agreement is None:
            diff, same = "-", "-"
        elif not agreement["ids_match"]:
            diff, same = "-", "ids differ"
        elif agreement.get("max_abs_error") is None:
            diff, same = "shape", "no"
        else:
            diff = f"{agreement['max_abs_error']:.1e} ({agreement['relative_error']:.0e})"
            same = "yes" if agreement["ok"] else "no"
        lines.append(
            [
                row["model"],
                row["method"],
                engine.split(":", 1)[1],
                str(row["steps"]),
                _seconds(fused),
                _seconds(theirs),
                _times(ratio),
                forwards,
                peaks,
                diff,
                same,
            ]
        )
    for engine in engines:  # a mode that failed has no ratio: still listed, with its error
        if engine.startswith("captum:") and row.get("speedup_vs_captum", {}).get(engine) is None:
            if not any(line[2] == engine.split(":", 1)[1] for line in lines):
                lines.append(
                    [row["model"], row["method"], engine.split(":", 1)[1], str(row["steps"])]
                    + [_seconds(fused), _seconds(engines[engine])]
                    + ["-"] * 5
                )
    return lines


def _measured_text(result: dict) -> str:
    measured = result["measured"]
    if measured is None:
        return "-"
    return f"{measured:.0%}" if "%" in result["target"] else f"{measured:.2f}"


def print_group(number: int, total: int, model: str, worker: str, members, elapsed_s: float) -> None:
    failed = sum("error" in config.results.get(engine, {}) for config, engine, _ in members)
    note = f", {failed} failed" if failed else ""
    console.print(
        f"[{number}/{total}] {model} {worker}: {len(members)} runs{note} ({elapsed_s / 60:.1f} min so far)"
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
        if row["scenario"] != "captum":
            table.add_row(*table_cells(row))
    console.print(table)
    captum_rows = [
        line for row in document["rows"] if row["scenario"] == "captum" for line in captum_cells(row)
    ]
    if captum_rows:
        captum = Table(title="Captum (prompt-only, batch 1); vs Captum = Captum's time / fused seqattr's")
        for column in CAPTUM_COLUMNS:
            captum.add_column(
                column, justify="left" if column in ("model", "method", "Captum mode") else "right"
            )
        for line in captum_rows:
            captum.add_row(*line)
        console.print(captum)
    targets = Table(title="Targets (generation length 40, batch 1; memory at 1,000 tokens)")
    for column in ("target", "model", "method", "required", "measured", "met"):
        targets.add_column(column)
    for result in document["targets"]:
        targets.add_row(
            result["target"],
            result["model"],
            result["method"],
            f"{result['required']:g}",
            _measured_text(result),
            verdict(result),
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
    lines += [
        "| " + " | ".join(table_cells(row)) + " |" for row in document["rows"] if row["scenario"] != "captum"
    ]
    captum_rows = [
        line for row in document["rows"] if row["scenario"] == "captum" for line in captum_cells(row)
    ]
    if captum_rows:
        lines += [
            "",
            "Captum (prompt-only attribution, batch 1; vs Captum = Captum's time / fused seqattr's; the "
            "numbers are seqattr's prompt rows against Captum's `token_attr`):",
            "",
            "| " + " | ".join(CAPTUM_COLUMNS) + " |",
            "|"
            + "|".join("---" if c in ("model", "method", "Captum mode") else "---:" for c in CAPTUM_COLUMNS)
            + "|",
            *("| " + " | ".join(line) + " |" for line in captum_rows),
        ]
    lines += ["", "| target | model | method | required | measured | met |", "|---|---|---|---:|---:|---|"]
    for result in document["targets"]:
        lines.append(
            f"| {result['target']} | {result['model']} | {result['method']} | {result['required']:g} "
            f"| {_measured_text(result)} | {verdict(result)} |"
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
    """Replace the generated part of ``path`` (between the bench markers; the GPU section's for a run on
    CUDA) with the latest tables."""
    on_gpu = str(document["meta"].get("device", "cpu")).startswith("cuda")
    start, end = (GPU_DOCS_START, GPU_DOCS_END) if on_gpu else (DOCS_START, DOCS_END)
    rewrite_section(path, start, end, markdown(document))
    console.print(f"updated {path}")
