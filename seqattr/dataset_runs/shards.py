"""The folder a dataset run writes, and reading it back lazily.

```
OUTPUT_DIR/
  run.json               the run's settings, written first; a restart with other settings is refused
  shard-00000.parquet    the examples of rows [0, shard_size), one Parquet row per example in row order;
  shard-00001.parquet    the rows that failed, with their reasons, in the file's metadata; written whole
  ...                    (temp file + rename)
  index.jsonl            one line per shard: {"shard": k, "file": ..., "rows": [...], "errors": [...]}
  manifest.json          written last, once every shard exists: info, counts, shards, dataset fingerprint
  errors.jsonl           the failed rows of all shards, with their reasons
```

A shard file exists only when all of its rows are done (it is written to a temporary name and renamed), so a
run killed at any point and restarted skips exactly the finished shards: no row is lost or written twice.
The Parquet files carry no timestamp, so the same rows give the same bytes whatever the run's history.

Each tensor (attributions, step scores, interactions) is a struct ``{dtype, shape, data}``: ``data`` holds
the tensor's little-endian bytes, so every dtype round-trips bit for bit, NaN (unseen positions) included,
bfloat16 too (which numpy and Parquet lack). ``storage_dtype`` (recorded in the manifest's settings) casts
attributions and step scores before they are stored. Tokens, ids and positions are plain columns; the
generation trace and the feature spans are JSON text (as `seqattr.data.io` writes them). A prompt given as
messages or segments adds its tokens' roles (``token_roles``); at a part granularity (one row per segment or
message) a merged row's ids are a list, so both sides' ids go to ``part_ids`` (JSON) and the id columns are
null. Shards written before these two columns read as before.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from seqattr.data.attribution import SequenceAttribution
from seqattr.data.io import tensor_from_json, tensor_to_json
from seqattr.trace import GenerationTrace

RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.json"
ERRORS_FILE = "errors.jsonl"
INDEX_FILE = "index.jsonl"
SHARD_FORMAT = "parquet"
"""Recorded in run.json: a folder of an earlier seqattr's JSONL shards is not resumed with Parquet ones."""
FORMAT_VERSION = 2
"""The manifest's ``format_version``: 1 was JSONL shards (base64 tensors in JSON lines), 2 is Parquet."""
_ERRORS_KEY = b"seqattr.errors"

TENSOR_DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64)
}

_TENSOR = pa.struct([("dtype", pa.string()), ("shape", pa.list_(pa.int64())), ("data", pa.binary())])
SHARD_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("source", pa.list_(pa.string())),
        ("target", pa.list_(pa.string())),
        ("source_ids", pa.list_(pa.int64())),
        ("target_ids", pa.list_(pa.int64())),
        ("attr_pos_start", pa.int64()),
        ("attr_pos_end", pa.int64()),
        ("source_attributions", _TENSOR),
        ("target_attributions", _TENSOR),
        ("step_scores", pa.list_(pa.struct([("name", pa.string()), ("tensor", _TENSOR)]))),
        ("interactions", _TENSOR),
        ("masked_source", pa.list_(pa.int64())),
        ("masked_target", pa.list_(pa.int64())),
        ("trace", pa.string()),
        ("features", pa.string()),
        ("token_roles", pa.list_(pa.string())),
        ("part_ids", pa.string()),
    ]
)
"""The columns of a shard: one row per example (`to_dataset` gives the same columns)."""


def shard_path(output_dir: Path, shard: int) -> Path:
    return output_dir / f"shard-{shard:05d}.parquet"


def _fsync_and_replace(temporary: Path, path: Path) -> None:
    with open(temporary, "rb+") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)  # atomic on POSIX and Windows


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that ``path`` is either absent or complete, whatever kills the process.

    Example:
        >>> write_atomically(tmp / "done.txt", "all of it")
        >>> (tmp / "done.txt").read_text()
        'all of it'
    """
    temporary = _temporary(path)
    temporary.write_text(text)
    _fsync_and_replace(temporary, path)


def encode_tensor(tensor: Tensor | None) -> dict[str, Any] | None:
    """A tensor as a shard stores it: ``{"dtype", "shape", "data"}``, ``data`` its little-endian bytes."""
    if tensor is None:
        return None
    tensor = tensor.detach().cpu().contiguous()
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in TENSOR_DTYPES:
        raise TypeError(f"cannot store a tensor of dtype {tensor.dtype}; supported: {sorted(TENSOR_DTYPES)}")
    if sys.byteorder != "little":  # the bytes are little-endian whatever the machine
        raise NotImplementedError("dataset shards are written on little-endian machines only")
    # bytes through a uint8 view: no numpy on the way, so bfloat16 keeps its own 16 bits
    return {
        "dtype": dtype,
        "shape": list(tensor.shape),
        "data": tensor.reshape(-1).view(torch.uint8).numpy().tobytes(),
    }


def decode_tensor(cell: dict[str, Any] | None) -> Tensor | None:
    """The tensor of a stored tensor cell (a column of `DatasetOutput.to_dataset`), bit for bit.

    Example:
        >>> values = torch.tensor([[0.1, float("nan"), 3.0]], dtype=torch.bfloat16)
        >>> stored = decode_tensor(encode_tensor(values))
        >>> stored.dtype, stored.shape, torch.equal(stored.view(torch.int16), values.view(torch.int16))
        (torch.bfloat16, torch.Size([1, 3]), True)
    """
    if cell is None:
        return None
    dtype = TENSOR_DTYPES[cell["dtype"]]
    if not cell["data"]:
        return torch.empty(cell["shape"], dtype=dtype)
    return torch.frombuffer(bytearray(cell["data"]), dtype=dtype).reshape(cell["shape"])


def _trace_to_text(trace: GenerationTrace | None) -> str | None:
    if trace is None:
        return None
    values = {f.name: getattr(trace, f.name) for f in fields(trace)}
    return json.dumps({k: tensor_to_json(v) if isinstance(v, Tensor) else v for k, v in values.items()})


def _trace_from_text(text: str | None) -> GenerationTrace | None:
    if text is None:
        return None
    values = json.loads(text)
    return GenerationTrace(
        **{k: tensor_from_json(v) if isinstance(v, dict) else v for k, v in values.items()}
    )


def _record(row: int, seq: SequenceAttribution) -> dict[str, Any]:
    # Rows merged into a prompt's parts have a list of ids each: the id columns hold flat ids only.
    merged = any(isinstance(i, list) for i in (*seq.source_ids, *seq.target_ids))
    return {
        "row": row,
        "source": seq.source,
        "target": seq.target,
        "source_ids": None if merged else seq.source_ids,
        "target_ids": None if merged else seq.target_ids,
        "attr_pos_start": seq.attr_pos_start,
        "attr_pos_end": seq.attr_pos_end,
        "source_attributions": encode_tensor(seq.source_attributions),
        "target_attributions": encode_tensor(seq.target_attributions),
        "step_scores": [{"name": k, "tensor": encode_tensor(v)} for k, v in seq.step_scores.items()],
        "interactions": encode_tensor(seq.interactions),
        "masked_source": list(seq.masked_source),
        "masked_target": list(seq.masked_target),
        "trace": _trace_to_text(seq.trace),
        "features": None if seq.features is None else json.dumps(seq.features),
        "token_roles": seq.token_roles,
        "part_ids": json.dumps({"source_ids": seq.source_ids, "target_ids": seq.target_ids})
        if merged
        else None,
    }


def sequence_from_record(record: dict[str, Any]) -> SequenceAttribution:
    """The `SequenceAttribution` of one shard row (a row of `DatasetOutput.to_dataset`)."""
    ids = {"source_ids": record["source_ids"], "target_ids": record["target_ids"]}
    if record.get("part_ids") is not None:  # rows merged into a prompt's parts
        ids = json.loads(record["part_ids"])
    return SequenceAttribution(
        source=record["source"],
        target=record["target"],
        source_ids=ids["source_ids"],
        target_ids=ids["target_ids"],
        source_attributions=decode_tensor(record["source_attributions"]),
        target_attributions=decode_tensor(record["target_attributions"]),
        step_scores={s["name"]: decode_tensor(s["tensor"]) for s in record["step_scores"]},
        attr_pos_start=record["attr_pos_start"],
        attr_pos_end=record["attr_pos_end"],
        trace=_trace_from_text(record["trace"]),
        masked_source=tuple(record["masked_source"]),
        masked_target=tuple(record["masked_target"]),
        features=None if record["features"] is None else json.loads(record["features"]),
        interactions=decode_tensor(record["interactions"]),
        token_roles=record.get("token_roles"),  # shards of earlier versions: none
    )


def write_shard(path: Path, results: dict[int, SequenceAttribution | str]) -> None:
    """Write a shard whole: the examples in row order, the failed rows' reasons in the file's metadata.

    Example:
        >>> write_shard(tmp / "shard.parquet", {1: "ValueError: empty", 0: out[0]})
        >>> [row for row, _ in read_shard(tmp / "shard.parquet")], shard_errors(tmp / "shard.parquet")
        ([0], [{'row': 1, 'error': 'ValueError: empty'}])
    """
    records = [_record(row, v) for row, v in sorted(results.items()) if not isinstance(v, str)]
    errors = [{"row": row, "error": v} for row, v in sorted(results.items()) if isinstance(v, str)]
    schema = SHARD_SCHEMA.with_metadata({_ERRORS_KEY: json.dumps(errors).encode()})
    table = pa.Table.from_pylist(records, schema=schema)
    temporary = _temporary(path)
    # No page index nor statistics of the binary columns (their bytes only repeat the data); nothing in a
    # Parquet file written by pyarrow depends on the time, so the same rows give the same bytes.
    pq.write_table(table, temporary, compression="zstd", write_statistics=["row"])
    _fsync_and_replace(temporary, path)


def shard_errors(path: Path) -> list[dict[str, Any]]:
    """``[{"row", "error"}, ...]`` of a shard's failed rows (from its metadata: no data is read)."""
    return json.loads(pq.read_schema(path).metadata[_ERRORS_KEY])


def shard_rows(path: Path) -> list[int]:
    """The rows whose examples a shard holds (one column read)."""
    return pq.read_table(path, columns=["row"])["row"].to_pylist()


def read_shard(path: Path, batch_rows: int = 64) -> Iterator[tuple[int, SequenceAttribution]]:
    """``(row, SequenceAttribution)`` pairs of a shard, ``batch_rows`` decoded at a time."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        for record in batch.to_pylist():
            yield record["row"], sequence_from_record(record)


@dataclass
class DatasetOutput:
    """A finished dataset run, read lazily from its folder (`seqattr.load_dataset_output`).

    Iterating gives ``(row, SequenceAttribution)`` pairs in row order, a few rows in memory at a time; failed
    rows are in ``errors``; ``info`` is what every example was attributed with; ``index`` says which rows
    each shard holds.
    """

    output_dir: Path
    manifest: dict[str, Any]

    @property
    def info(self) -> dict[str, Any]:
        return self.manifest["info"]

    @property
    def errors(self) -> list[dict[str, Any]]:
        """``[{"row": i, "error": reason}, ...]`` of the rows that failed."""
        path = self.output_dir / ERRORS_FILE
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    @property
    def index(self) -> list[dict[str, Any]]:
        """One entry per shard: ``{"shard", "file", "rows", "errors"}``, the rows of its examples and the
        rows that failed (each row of the dataset in exactly one shard)."""
        return [json.loads(line) for line in (self.output_dir / INDEX_FILE).read_text().splitlines()]

    def shard_files(self) -> list[Path]:
        return [shard_path(self.output_dir, shard) for shard in range(self.manifest["num_shards"])]

    def __len__(self) -> int:
        return self.manifest["num_examples"]

    def __iter__(self) -> Iterator[tuple[int, SequenceAttribution]]:
        for path in self.shard_files():
            yield from read_shard(path)

    def to_dataset(self):
        """The examples as a `datasets.Dataset` read from the shards themselves (memory-mapped: nothing is
        decoded), one row per example in row order, with the columns of `SHARD_SCHEMA`: ``row``, the tokens,
        ids and window, and each tensor as ``{"dtype", "shape", "data"}`` (`decode_tensor` turns one into
        a tensor, `sequence_from_record` a whole row into a `SequenceAttribution`).

        Example:
            >>> table = seqattr.load_dataset_output(run_dir).to_dataset()   # doctest: +SKIP
            >>> decode_tensor(table[0]["target_attributions"])               # doctest: +SKIP
        """
        import datasets

        # A shard whose rows all failed holds no row, which the Parquet reader of `datasets` cannot read.
        files = [str(self.output_dir / entry["file"]) for entry in self.index if entry["rows"]]
        if not files:
            return datasets.Dataset(SHARD_SCHEMA.empty_table())
        return datasets.Dataset.from_parquet(files)


def load_dataset_output(output_dir: str | os.PathLike) -> DatasetOutput:
    """Open the folder a finished `AttributionModel.attribute_dataset` run wrote.

    Example:
        >>> out = seqattr.load_dataset_output(run_dir)        # doctest: +SKIP
        >>> for row, seq in out:                              # doctest: +SKIP
        ...     seq.show()
    """
    folder = Path(output_dir).expanduser()
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.exists():
        detail = (
            "the run has not finished (its run.json is there): run the same command again to complete it"
            if (folder / RUN_FILE).exists()
            else "it is not the output folder of a dataset run"
        )
        raise FileNotFoundError(f"{folder}: no {MANIFEST_FILE}; {detail}")
    manifest = json.loads(manifest_path.read_text())
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        earlier = " (JSONL shards, written by seqattr before Parquet shards)" if version == 1 else ""
        raise ValueError(
            f"{folder} holds a dataset run of format_version {version}{earlier}; this seqattr reads "
            f"format_version {FORMAT_VERSION}: read it with the seqattr version that wrote it, or run the "
            "dataset again into a new output_dir"
        )
    return DatasetOutput(folder, manifest)
