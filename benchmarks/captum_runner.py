"""Benchmark worker for Captum's LLM attribution (main environment, where captum is installed).

Usage: ``python3 benchmarks/captum_runner.py CASE.json RESULTS.jsonl``; the same case format as
`seqattr_runner.py` (decoder-only models, one example per run), each run naming a ``captum_mode``
(`CAPTUM_MODES`). Captum attributes the prompt only, the forced continuation being its target (Captum's
convention, which seqattr follows with ``attribute_target=False``): ``LLMAttribution(FeatureAblation)``
ablates each prompt token to token id 0 and reports every target token's log-probability change;
``LLMGradientAttribution(LayerIntegratedGradients)`` on the input embeddings runs one integration (50
Gauss-Legendre points, Captum's default) per target token. The dump holds Captum's ``token_attr``
(``[target tokens, prompt features]``) and which prompt positions its features are, for the driver's
number-by-number comparison with seqattr's prompt rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import measure, serve  # noqa: E402

CAPTUM_MODES = {
    "one_pass": ("feature_ablation", {"forward_in_tokens": False}),
    "by_tokens": ("feature_ablation", {"forward_in_tokens": True, "use_cached_outputs": False}),
    "by_tokens_cached": ("feature_ablation", {"forward_in_tokens": True, "use_cached_outputs": True}),
    "layer_ig": ("layer_integrated_gradients", {}),
}
"""Captum's ways of running, by name: the seqattr method each is compared with and the keyword arguments of
Captum's ``attribute``. ``one_pass``: one forward over prompt + target per ablation
(``forward_in_tokens=False``); ``by_tokens``: one forward per target token per ablation, each on its whole
prefix; ``by_tokens_cached``: the same loop reusing the key-value cache (Captum 0.9.0's default for
``forward_in_tokens=True``)."""


def split_prompt(tokenizer, prompt: str, full: str) -> tuple[list[int], torch.Tensor, list[int]]:
    """The prompt's ids, the target (the continuation's ids) and the prompt's special-token ids.

    Example:
        >>> from seqattr.testing import tiny_model
        >>> _, tokenizer = tiny_model("gpt2")
        >>> prompt_ids, target, special = split_prompt(tokenizer, "the cat", "the cat sat on")
        >>> tokenizer.decode(target)
        ' sat on'
    """
    prompt_ids = tokenizer(prompt)["input_ids"]
    full_ids = tokenizer(full)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(f"the forced output {full!r} does not start with the prompt's tokens")
    special = sorted({i for i in prompt_ids if i in tokenizer.all_special_ids})
    return prompt_ids, torch.tensor(full_ids[len(prompt_ids) :]), special


def captum_attributor(hf_model, tokenizer, mode: str):
    """Captum's attributor for ``mode`` and the keyword arguments of its ``attribute`` call."""
    from captum.attr import FeatureAblation, LayerIntegratedGradients, LLMAttribution, LLMGradientAttribution

    if mode not in CAPTUM_MODES:
        raise ValueError(f"unknown Captum mode {mode!r}; choose from {', '.join(CAPTUM_MODES)}")
    method, options = CAPTUM_MODES[mode]
    if method == "feature_ablation":
        return LLMAttribution(FeatureAblation(hf_model), tokenizer), options
    layer = LayerIntegratedGradients(hf_model, hf_model.get_input_embeddings())
    return LLMGradientAttribution(layer, tokenizer), options


def attribute_prompt(attributor, options: dict, tokenizer, prompt: str, full: str, skip_special: bool):
    """Captum's prompt attribution of ``full``'s continuation; returns (result, prompt feature positions).

    Special tokens are not features of seqattr's perturbation methods: skipped for feature ablation
    (``skip_special``), kept for integrated gradients (every prompt row has a gradient).
    """
    from captum.attr import TextTokenInput

    prompt_ids, target, special = split_prompt(tokenizer, prompt, full)
    skip = special if skip_special else None
    features = [p for p, i in enumerate(prompt_ids) if not (skip_special and i in special)]
    result = attributor.attribute(
        TextTokenInput(prompt, tokenizer, skip_tokens=skip), target=target, **options
    )
    return result, features


def main(case: dict, result_path: str) -> None:
    import transformers

    torch.set_num_threads(case["threads"])
    transformers.logging.set_verbosity_error()
    if case["is_encoder_decoder"]:
        raise SystemExit("Captum's LLMAttribution explains decoder-only models; this case is encoder-decoder")
    device = case.get("device", "cpu")
    hf_model = (
        transformers.AutoModelForCausalLM.from_pretrained(case["model_dir"], dtype=torch.float32)
        .eval()
        .to(device)
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(case["model_dir"])

    def execute(run: dict) -> dict:
        if len(run["inputs"]) != 1:
            raise ValueError("Captum's LLM attribution takes one prompt per call: give batch 1")
        attributor, options = captum_attributor(hf_model, tokenizer, run["captum_mode"])
        skip_special = CAPTUM_MODES[run["captum_mode"]][0] == "feature_ablation"

        def attribute(prompt, full):
            return attribute_prompt(attributor, options, tokenizer, prompt, full, skip_special)

        attribute(*run["warmup"])
        outputs: list = []

        def once() -> None:
            outputs.clear()
            outputs.append(attribute(run["inputs"][0], run["outputs"][0]))

        # Captum calls ``model.forward(...)`` directly, which skips the module's hooks: the probe counts the
        # decoder body's calls instead (one per forward pass of the language model, as seqattr's count).
        measurement = measure(once, hf_model.base_model, run["repeats"], run["budget_s"], device)
        result, features = outputs[-1]
        full_ids = tokenizer(run["outputs"][0])["input_ids"]
        if run.get("dump"):
            torch.save(
                [
                    {
                        "target_ids": full_ids,
                        "features": features,
                        "token_attr": result.token_attr.detach().cpu(),
                    }
                ],
                run["dump"],
            )
        return {"measurement": measurement.to_dict(), "ids": [{"source": [], "target": full_ids}]}

    serve(case["runs"], result_path, execute)


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()), sys.argv[2])
