"""Debug a generation step by step: find where a forced text leaves the model's greedy path, then ask
"why this token and not the one the model preferred?" at that step.

    python3 examples/contrastive_debugging.py
"""

from __future__ import annotations

import seqattr


def main() -> None:
    model = seqattr.load_model(None, "input_x_gradient")  # the default model, SmolLM2-135M-Instruct
    prompt = "The capital of France is"
    forced = prompt + " Berlin, a city in Germany."

    seq = model.attribute(prompt, forced, show_progress=False)[0]
    seq.show()  # the trace under the heatmap highlights steps whose token was not the model's first choice
    off = seq.trace.off_greedy_steps()
    if not off:
        print("the forced text is the model's greedy continuation; nothing to contrast")
        return
    step = off[0]
    preferred = int(seq.trace.top_ids[step, 0])
    position = seq.attr_pos_start + step
    contrast = model.tokenizer.decode(seq.target_ids[:position] + [preferred], skip_special_tokens=True)
    forced_token, preferred_token = seq.trace.tokens[step], seq.trace.top_tokens[step][0]
    print(f"step {step}: forced {forced_token!r}, model preferred {preferred_token!r}")

    why = model.attribute(
        prompt,
        forced,
        contrast_targets=contrast,
        attributed_fn="contrast_prob_diff",  # p(forced token) - p(preferred token) at that step
        attr_pos_start=position,
        attr_pos_end=position + 1,
        step_scores=["probability", "contrast_prob"],
        show_progress=False,
    )
    why.show()


if __name__ == "__main__":
    main()
