"""The folder a dataset run writes, and reading it back lazily.

```
OUTPUT_DIR/
  run.json               the run's settings, written first; a restart with other settings is refused
  shard-00000.jsonl      rows [0, shard_size), one JSON line per row in row order: {"row": i, "sequence": ...}
  shard-00001.jsonl      (a row that failed: {"row": i, "error": "..."}), written whole (temp file + rename)
  ...
  manifest.json          written last, once every shard exists: info, counts, shards, dataset fingerprint
  errors.jsonl           the failed rows of all shards, with their reasons
```

A shard file exists only when all of its rows are done (it is written to a temporary name and renamed), so a
run killed at any point and restarted skips exactly the finished shards: no row is lost or written twice.
Sequences are stored as `seqattr.data.io` stores them (base64 of the tensors' bytes: bit for bit), optionally
in a smaller float type (``storage_dtype``, recorded in the manifest).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqattr.data.attribution import SequenceAttribution
from seqattr.data.io import sequence_from_json, sequence_to_json

RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.json"
ERRORS_FILE = "errors.jsonl"


def shard_path(output_dir: Path, shard: int) -> Path:
    return output_dir / f"shard-{shard:05d}.jsonl"


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that ``path`` is either absent or complete, whatever kills the process.

    Example:
        >>> write_atomically(tmp / "done.txt", "all of it")
        >>> (tmp / "done.txt").read_text()
        'all of it'
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)  # atomic on POSIX and Windows


def shard_lines(results: dict[int, SequenceAttribution | str]) -> str:
    """A shard's text: one line per row in row order, a sequence or the reason the row failed."""
    lines = []
    for row in sorted(results):
        value = results[row]
        record = (
            {"row": row, "error": value}
            if isinstance(value, str)
            else {"row": row, "sequence": sequence_to_json(value)}
        )
        lines.append(json.dumps(record, default=str))
    return "".join(line + "\n" for line in lines)


def read_shard(path: Path) -> Iterator[dict[str, Any]]:
    with open(path) as file:
        for line in file:
            yield json.loads(line)


@dataclass
class DatasetOutput:
    """A finished dataset run, read lazily from its folder (`seqattr.load_dataset_output`).

    Iterating gives ``(row, SequenceAttribution)`` pairs in row order, one shard in memory at a time; failed
    rows are in ``errors``; ``info`` is what every example was attributed with.
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

    def __len__(self) -> int:
        return self.manifest["num_examples"]

    def __iter__(self) -> Iterator[tuple[int, SequenceAttribution]]:
        for shard in range(self.manifest["num_shards"]):
            for record in read_shard(shard_path(self.output_dir, shard)):
                if "sequence" in record:
                    yield record["row"], sequence_from_json(record["sequence"])

    def to_dataset(self):
        """A `datasets.Dataset` with one row per example: ``row``, the tokens, ids and window, and the
        attributions and step scores as nested lists (NaN where a step cannot see).

        Example:
            >>> data = seqattr.load_dataset_output(run_dir).to_dataset()   # doctest: +SKIP
        """
        import datasets

        def records():
            for row, seq in self:
                yield {
                    "row": row,
                    "source": seq.source,
                    "target": seq.target,
                    "source_ids": seq.source_ids,
                    "target_ids": seq.target_ids,
                    "attr_pos_start": seq.attr_pos_start,
                    "attr_pos_end": seq.attr_pos_end,
                    "source_attributions": None
                    if seq.source_attributions is None
                    else seq.source_attributions.tolist(),
                    "target_attributions": None
                    if seq.target_attributions is None
                    else seq.target_attributions.tolist(),
                    "step_scores": {name: values.tolist() for name, values in seq.step_scores.items()},
                }

        return datasets.Dataset.from_generator(records)


def load_dataset_output(output_dir: str | os.PathLike) -> DatasetOutput:
    """Open the folder a finished `AttributionModel.attribute_dataset` run wrote.

    Example:
        >>> out = seqattr.load_dataset_output(run_dir)        # doctest: +SKIP
        >>> for row, seq in out:                              # doctest: +SKIP
        ...     seq.show()
    """
    folder = Path(output_dir).expanduser()
    manifest = folder / MANIFEST_FILE
    if not manifest.exists():
        detail = (
            "the run has not finished (its run.json is there): run the same command again to complete it"
            if (folder / RUN_FILE).exists()
            else "it is not the output folder of a dataset run"
        )
        raise FileNotFoundError(f"{folder}: no {MANIFEST_FILE}; {detail}")
    return DatasetOutput(folder, json.loads(manifest.read_text()))
