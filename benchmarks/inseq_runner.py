"""Benchmark worker for Inseq, run by Inseq's own environment (``.bench-venv/bin/python``).

Usage: ``.bench-venv/bin/python benchmarks/inseq_runner.py CASE.json RESULTS.jsonl``; the same case format
as `seqattr_runner.py`, each run naming ``inseq_method`` and ``inseq_options``. Targets are forced
(``generated_texts``), so Inseq re-tokenizes the same texts; the token ids it attributed on are returned
so that the driver can check they equal seqattr's. The case's ``device`` (``cpu`` unless given) is where
Inseq puts the model and its inputs (``inseq.load_model(..., device=...)``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import measure, serve  # noqa: E402


def main(case: dict, result_path: str) -> None:
    import inseq
    import transformers

    torch.set_num_threads(case["threads"])
    transformers.logging.set_verbosity_error()
    device = case.get("device", "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        # setup_inseq.sh installs the CPU wheel by default: said here, not as an error from inside Inseq.
        raise SystemExit(
            f"Inseq's environment has torch {torch.__version__} without CUDA: recreate .bench-venv/ with a "
            "CUDA build (rm -rf .bench-venv; TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 "
            "bash benchmarks/setup_inseq.sh)"
        )
    models: dict[str, object] = {}  # one Inseq model per method: Inseq binds the method at load time

    def execute(run: dict) -> dict:
        if run["inseq_method"] not in models:
            models.clear()
            models[run["inseq_method"]] = inseq.load_model(
                case["model_dir"], run["inseq_method"], device=device
            )
        model = models[run["inseq_method"]]

        def attribute(inputs, outputs):
            # attribute_target: encoder-decoder outputs include the target prefix, as seqattr's do with
            # attribute_target=True (Inseq ignores it for decoder-only models, which always include it).
            return model.attribute(
                inputs,
                outputs,
                show_progress=False,
                pretty_progress=False,
                attribute_target=run["attribute_target"] and model.is_encoder_decoder,
                **run["inseq_options"],
            )

        attribute(*run["warmup"])
        outputs: list = []

        def once() -> None:
            outputs.clear()
            outputs.append(attribute(run["inputs"], run["outputs"]))

        measurement = measure(once, model.model, run["repeats"], run["budget_s"], device)

        def reduce(values):
            # Inseq keeps the hidden dimension of gradient methods: summed here, as seqattr does by
            # default, so that dumps stay small.
            if values is not None and run["compare"] == "sum_hidden" and values.dim() == 3:
                values = values.sum(-1)
            return None if values is None else values.detach().cpu()

        ids, dump = [], []
        for sequence in outputs[-1].sequence_attributions:
            source_ids = [token.id for token in sequence.source] if model.is_encoder_decoder else []
            target_ids = [token.id for token in sequence.target]
            ids.append({"source": source_ids, "target": target_ids})
            dump.append(
                {
                    "source_ids": source_ids,
                    "target_ids": target_ids,
                    "source_attributions": reduce(sequence.source_attributions),
                    "target_attributions": reduce(sequence.target_attributions),
                }
            )
        if run.get("dump"):
            torch.save(dump, run["dump"])
        return {"measurement": measurement.to_dict(), "ids": ids}

    serve(case["runs"], result_path, execute)


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()), sys.argv[2])
