"""Prefix reuse on SmolLM2-135M-Instruct, one thread: occlusion and feature ablation with and without it, and
feature ablation's prompt attribution against Captum's one-pass ``LLMAttribution(FeatureAblation)``.

Usage: ``python3 benchmarks/prefix_reuse.py [--steps 40] [--repeats 1]`` (offline: the default model). Prints
one line per run: seconds (best of the repeats), the positions the model computed, and the largest difference
between the compared results. Not part of ``make bench``; docs/benchmarks.md ("Prefix reuse") quotes it.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

PROMPT = "The three most important things to know about the history of Paris are"
LONG_PROMPT = (
    "Paris, the capital of France, grew from a small settlement of the Parisii tribe on an island in the "
    "Seine into one of the largest cities of medieval Europe. The Romans called it Lutetia and built baths, "
    "an arena and a forum on the left bank. Under the Capetian kings it became the seat of royal power, and "
    "its university drew scholars from across the continent. The revolution of 1789 began with the storming "
    "of the Bastille, and in the nineteenth century Baron Haussmann rebuilt the centre with wide boulevards. "
    "Question: who rebuilt the centre of Paris? Answer:"
)
"""About 100 tokens: prompt attribution of a short answer, where most positions precede the answer."""


def best_of(repeats: int, run):
    """``(wall seconds, CPU seconds of this process, result)`` of the fastest of ``repeats`` runs: on a shared
    machine the CPU time is the steadier figure (one thread, so it bounds the wall time from below)."""
    times, result = [], None
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        result = run()
        times.append((time.perf_counter() - started, time.process_time() - cpu))
    wall, cpu = min(times)
    return wall, cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="generated tokens explained")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-captum", action="store_true")
    parser.add_argument("--prompt-only", action="store_true", help="only the prompt attribution runs")
    parser.add_argument("--long-prompt", action="store_true", help="a 100-token prompt (LONG_PROMPT)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompt = LONG_PROMPT if args.long_prompt else PROMPT

    import seqattr
    from seqattr.models import prefix_reuse

    model = seqattr.load_model(None, "occlusion")
    hf_model, tokenizer = model.model, model.tokenizer
    generated = model.attribute(prompt, generation_args={"max_new_tokens": args.steps}, show_progress=False)
    target_ids = generated[0].target_ids
    text = tokenizer.decode(target_ids)
    prompt_len = generated[0].attr_pos_start
    print(f"load: {os.getloadavg()}; {prompt_len} prompt tokens + {len(target_ids) - prompt_len} generated")

    positions = {"n": 0}
    hf_model.register_forward_pre_hook(
        lambda module, a, k: (
            positions.__setitem__(
                "n", positions["n"] + k["inputs_embeds"].shape[0] * k["inputs_embeds"].shape[1]
            )
            if k.get("inputs_embeds") is not None
            else None
        ),
        with_kwargs=True,
    )

    def seqattr_run(method: str, reuse: bool, **kwargs):
        prefix_reuse.ENABLED = reuse
        wrapped = seqattr.load_model(hf_model, method, tokenizer=tokenizer, **kwargs.pop("options", {}))
        positions["n"] = 0
        wall, cpu, out = best_of(
            args.repeats, lambda: wrapped.attribute(prompt, text, show_progress=False, **kwargs)
        )
        prefix_reuse.ENABLED = True
        return f"{wall:7.2f} s ({cpu:6.2f} s CPU)", positions["n"] // args.repeats, out

    results = {}
    cases = [
        ("occlusion, whole target", "occlusion", {}),
        (
            "feature_ablation, prompt only, logprob, baseline token 0",
            "feature_ablation",
            {"attribute_target": False, "attributed_fn": "logprob", "options": {"baseline": 0}},
        ),
    ]
    for name, method, kwargs in cases[1:] if args.prompt_only else cases:
        for reuse in (False, True):
            seconds, computed, out = seqattr_run(method, reuse, **dict(kwargs))
            results[(name, reuse)] = out
            print(f"{name:58s} reuse={reuse!s:5s} {seconds}  {computed:6d} positions", flush=True)
        a, b = (results[(name, r)][0].target_attributions for r in (True, False))
        print(f"{name:58s} max |reuse - full| = {float((a - b).nan_to_num().abs().max()):.2e}", flush=True)

    if args.skip_captum:
        return
    from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput

    captum = LLMAttribution(FeatureAblation(hf_model), tokenizer)  # attr_target="log_prob"
    inp = TextTokenInput(prompt, tokenizer)  # ablated tokens become id 0, as seqattr's baseline=0
    assert inp.values == tokenizer.convert_ids_to_tokens(target_ids[:prompt_len]), "prompt tokens differ"
    target = torch.tensor(target_ids[prompt_len:])
    positions["n"] = 0
    wall, cpu, result = best_of(
        args.repeats, lambda: captum.attribute(inp, target=target, forward_in_tokens=False)
    )
    name = "Captum LLMAttribution(FeatureAblation), forward_in_tokens=False"
    print(f"{name:58s}            {wall:7.2f} s ({cpu:6.2f} s CPU)", flush=True)
    ours = results[("feature_ablation, prompt only, logprob, baseline token 0", True)][0]
    mine = ours.target_attributions[:prompt_len].T  # [steps, prompt tokens]
    theirs = result.token_attr.cpu()
    difference, largest = float((mine - theirs).abs().max()), float(theirs.abs().max())
    print(f"max |seqattr - Captum| = {difference:.2e} (max |Captum| {largest:.2f})")


if __name__ == "__main__":
    main()
