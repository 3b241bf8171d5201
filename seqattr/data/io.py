"""JSON serialisation of attribution outputs that round-trips their tensors (float32, float64) bit for bit.

Tensors are stored as base64 of their little-endian bytes with dtype and shape, so NaN (unseen positions) and
every float survive exactly, and files stay compact. A file records its ``format_version``; a file of an
unknown version is refused with a message instead of being misread.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seqattr.data.attribution import AttributionOutput, SequenceAttribution
from seqattr.trace import GenerationTrace

FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "int64": torch.int64}


def tensor_to_json(tensor: Tensor) -> dict[str, Any]:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
        tensor = tensor.float()
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise TypeError(f"cannot save a tensor of dtype {tensor.dtype}; supported: {sorted(_DTYPES)}")
    data = tensor.numpy().astype(tensor.numpy().dtype.newbyteorder("<"), copy=False).tobytes()
    return {"dtype": dtype, "shape": list(tensor.shape), "data": base64.b64encode(data).decode("ascii")}


def tensor_from_json(obj: dict[str, Any]) -> Tensor:
    dtype = _DTYPES[obj["dtype"]]
    np_dtype = np.dtype(str(dtype).removeprefix("torch.")).newbyteorder("<")
    array = np.frombuffer(base64.b64decode(obj["data"]), dtype=np_dtype).reshape(obj["shape"])
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="))).to(dtype)


def _trace_to_json(trace: GenerationTrace) -> dict[str, Any]:
    return {
        name: tensor_to_json(value) if isinstance(value, Tensor) else value
        for name, value in ((f, getattr(trace, f)) for f in GenerationTrace.__dataclass_fields__)
    }


def _trace_from_json(obj: dict[str, Any]) -> GenerationTrace:
    return GenerationTrace(
        **{name: tensor_from_json(v) if isinstance(v, dict) else v for name, v in obj.items()}
    )


def sequence_to_json(seq: SequenceAttribution) -> dict[str, Any]:
    def optional(t):
        return None if t is None else tensor_to_json(t)

    return {
        "source": seq.source,
        "target": seq.target,
        "source_ids": seq.source_ids,
        "target_ids": seq.target_ids,
        "source_attributions": optional(seq.source_attributions),
        "target_attributions": optional(seq.target_attributions),
        "step_scores": {k: tensor_to_json(v) for k, v in seq.step_scores.items()},
        "attr_pos_start": seq.attr_pos_start,
        "attr_pos_end": seq.attr_pos_end,
        "trace": None if seq.trace is None else _trace_to_json(seq.trace),
        "masked_source": list(seq.masked_source),
        "masked_target": list(seq.masked_target),
        "features": seq.features,
        "token_roles": seq.token_roles,
        "interactions": optional(seq.interactions),
    }


def sequence_from_json(obj: dict[str, Any]) -> SequenceAttribution:
    def optional(t):
        return None if t is None else tensor_from_json(t)

    return SequenceAttribution(
        source=obj["source"],
        target=obj["target"],
        source_ids=obj["source_ids"],
        target_ids=obj["target_ids"],
        source_attributions=optional(obj["source_attributions"]),
        target_attributions=optional(obj["target_attributions"]),
        step_scores={k: tensor_from_json(v) for k, v in obj["step_scores"].items()},
        attr_pos_start=obj["attr_pos_start"],
        attr_pos_end=obj["attr_pos_end"],
        # Files written before traces existed have no "trace" key.
        trace=None if obj.get("trace") is None else _trace_from_json(obj["trace"]),
        masked_source=tuple(obj.get("masked_source", ())),
        masked_target=tuple(obj.get("masked_target", ())),
        features=obj.get("features"),  # files of earlier versions: per-token scores
        token_roles=obj.get("token_roles"),  # files of earlier versions: none
        interactions=optional(obj.get("interactions")),  # files of earlier versions: none
    )


def save(output: AttributionOutput, path: str | Path) -> None:
    payload = {
        "format": "seqattr",
        "format_version": FORMAT_VERSION,
        "info": output.info,
        "sequence_attributions": [sequence_to_json(s) for s in output.sequence_attributions],
    }
    Path(path).write_text(json.dumps(payload, default=str))


def load(path: str | Path) -> AttributionOutput:
    """Read an output written by `AttributionOutput.save`.

    Example:
        >>> out.save(tmp / "out.json")
        >>> same = seqattr.load(tmp / "out.json")
        >>> same[0].target == out[0].target, same.info["method"]
        (True, 'saliency')
    """
    try:
        payload = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a seqattr JSON file: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != "seqattr":
        raise ValueError(f"{path} is not a seqattr output file (no 'format': 'seqattr' field)")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {version}, but this seqattr reads version {FORMAT_VERSION}; "
            "load it with the seqattr version that wrote it"
        )
    return AttributionOutput(
        sequence_attributions=[sequence_from_json(s) for s in payload["sequence_attributions"]],
        info=payload["info"],
    )
