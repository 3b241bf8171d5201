"""Integrated gradients on SmolLM2: 50 Gauss-Legendre points against ``n_steps="auto"`` (docs/benchmarks.md,
*Adaptive integration*), then Inseq's 50 points on the same input.

Usage: ``python3 benchmarks/adaptive_integration.py STEPS`` (one torch thread; ``baseline="unk"``, Inseq's
baseline, so that the 50-point row is Inseq's computation too: the two agree to 1e-4; the last seqattr row
uses the zero baseline). Prints one JSON line
per configuration: wall time, mean and largest ``|convergence delta|``, the mean relative error
``|delta| / max(|f(x) - f(b)|, 1e-3)``, the points each step used, and the load average when it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

import torch

import seqattr
from seqattr.models.default_model import default_model_path

PROMPT = "The old lighthouse keeper climbed the stairs every evening to light the lamp, and"
CONFIGS = [
    dict(n_steps=50),
    dict(n_steps="auto"),
    dict(n_steps="auto", tolerance=0.1),
    dict(n_steps="auto", tolerance=0.05),
    dict(n_steps="auto", tolerance=0.02),
    dict(n_steps="auto", baseline="zeros"),  # the closed trapezoid rule's NaN case on RMSNorm models
]
INSEQ_PYTHON = "/work/main/.bench-venv/bin/python"


def main(steps: int) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the 50-point run's convergence warning: its deltas are reported
    model = seqattr.load_model(None, "integrated_gradients")
    generation = {"max_new_tokens": steps, "do_sample": False}
    generated = model.attribute(PROMPT, method="saliency", generation_args=generation, show_progress=False)
    full = model.tokenizer.decode(generated[0].target_ids, skip_special_tokens=False)
    print("text:", repr(full), "steps", generated[0].num_steps, flush=True)
    common = dict(generated_texts=full, baseline="unk", return_convergence_delta=True, show_progress=False)
    warmup = dict(generation_args={"max_new_tokens": 2}, baseline="unk", n_steps=5, show_progress=False)
    model.attribute("Hi there", **warmup)
    for config in CONFIGS:
        load = os.getloadavg()
        started = time.perf_counter()
        seq = model.attribute(PROMPT, **{**common, **config})[0]
        wall = time.perf_counter() - started
        delta = seq.step_scores["convergence_delta"]
        total = sum(
            x.nan_to_num().sum(0) for x in (seq.source_attributions, seq.target_attributions) if x is not None
        )
        gap = total - delta
        points = seq.step_scores.get("integration_points")
        row = dict(
            cfg=config,
            wall_s=wall,
            mean_abs_delta=float(delta.abs().mean()),
            max_abs_delta=float(delta.abs().max()),
            mean_rel=float((delta.abs() / gap.abs().clamp(min=1e-3)).mean()),
            mean_points=None if points is None else float(points.mean()),
            points=None if points is None else points.int().tolist(),
            load=load,
        )
        print(json.dumps(row), flush=True)
    if os.path.exists(INSEQ_PYTHON):
        inseq = f"""
import json, os, time, torch, inseq, transformers
torch.set_num_threads(1); transformers.logging.set_verbosity_error()
m = inseq.load_model({str(default_model_path())!r}, "integrated_gradients")
m.attribute("Hi there", "Hi there you", show_progress=False, pretty_progress=False)
load = os.getloadavg(); t = time.perf_counter()
m.attribute({PROMPT!r}, {full!r}, show_progress=False, pretty_progress=False)
print(json.dumps(dict(inseq_wall_s=time.perf_counter() - t, load=load)))
"""
        result = subprocess.run([INSEQ_PYTHON, "-c", inseq], capture_output=True, text=True, check=False)
        print(result.stdout.strip() or result.stderr[-2000:], flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
