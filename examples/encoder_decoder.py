"""Encoder-decoder attribution (translation-style): every target step attributed to the source and, with
``attribute_target=True``, to the target prefix.

With network access, use a real translation model::

    python3 examples/encoder_decoder.py Helsinki-NLP/opus-mt-en-fr

Offline (no argument) it runs on a tiny random-weight Marian model built locally by ``seqattr.testing``:
the numbers are meaningless, the shapes and the workflow are the real ones.
"""

from __future__ import annotations

import sys

import seqattr


def main() -> None:
    if len(sys.argv) > 1:
        model = seqattr.load_model(sys.argv[1], "integrated_gradients", n_steps=32)
    else:
        from seqattr.testing import tiny_model

        hf_model, tokenizer = tiny_model("marian")
        model = seqattr.load_model(hf_model, "integrated_gradients", tokenizer=tokenizer, n_steps=32)

    out = model.attribute(
        ["The cat sat on the mat.", "Paris is a beautiful city."],
        attribute_target=True,
        generation_args={"max_new_tokens": 8},
        step_scores=["probability"],
        show_progress=False,
    )
    for seq in out:
        print(seq.source, "->", seq.steps)
        print("source attributions", tuple(seq.source_attributions.shape), "[source_len, steps]")
        print("target attributions", tuple(seq.target_attributions.shape), "[target_len, steps]")
    out.normalize().show()


if __name__ == "__main__":
    main()
