"""Benchmark worker for seqattr (main environment): the runs of one model and engine in one process.

Usage: ``python3 benchmarks/seqattr_runner.py CASE.json RESULTS.jsonl``. The case names the model folder,
the engine (``fused`` or ``stepwise``), the device (``cpu`` unless given: the model and its inputs go there)
and a list of runs (method, options, attribute options, texts, repeats); each run's
measurement, the token ids its examples were attributed on and, when asked, a dump of the attributions
are appended to RESULTS.jsonl. Peak memory is reset before each run (see `measure.py`), so runs sharing
a process do not see each other's peaks; the driver gives the 1,000-token memory runs a process of their own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import measure, serve  # noqa: E402


def _on_cpu(values):
    return None if values is None else values.detach().cpu()


def main(case: dict, result_path: str) -> None:
    import transformers

    import seqattr
    from seqattr.methods import gradient

    torch.set_num_threads(case["threads"])
    transformers.logging.set_verbosity_error()
    auto = (
        transformers.AutoModelForSeq2SeqLM
        if case["is_encoder_decoder"]
        else transformers.AutoModelForCausalLM
    )
    device = case.get("device", "cpu")
    hf_model = auto.from_pretrained(case["model_dir"], dtype=torch.float32).eval().to(device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(case["model_dir"])
    fused = case["engine"] == "fused"
    defaults = {name: getattr(gradient, name) for name in ("MAX_STEP_CHUNK", "CHUNK_BYTES")}

    def execute(run: dict) -> dict:
        for name, value in {**defaults, **run.get("engine_constants", {})}.items():  # run.py --chunk-sweep
            setattr(gradient, name, value)
        model = seqattr.load_model(hf_model, run["method"], tokenizer=tokenizer, **run["options"])

        def attribute(inputs, outputs):
            # seqattr puts the token ids on the model's device itself.
            return model.attribute(
                inputs,
                outputs,
                fused=fused,
                show_progress=False,
                attribute_target=run["attribute_target"],
                **run.get("attribute_options", {}),
            )

        attribute(*run["warmup"])
        outputs: list = []

        def once() -> None:
            outputs.clear()  # the previous output is freed before the next call, as in a loop over inputs
            outputs.append(attribute(run["inputs"], run["outputs"]))

        measurement = measure(once, hf_model, run["repeats"], run["budget_s"], device)
        sequences = outputs[-1].sequence_attributions
        if run.get("dump"):
            torch.save(
                [
                    {
                        "source_ids": s.source_ids,
                        "target_ids": s.target_ids,
                        "source_attributions": _on_cpu(s.source_attributions),
                        "target_attributions": _on_cpu(s.target_attributions),
                    }
                    for s in sequences
                ],
                run["dump"],
            )
        ids = [{"source": list(s.source_ids), "target": list(s.target_ids)} for s in sequences]
        return {"measurement": measurement.to_dict(), "ids": ids}

    serve(case["runs"], result_path, execute)


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()), sys.argv[2])
