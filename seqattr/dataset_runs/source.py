"""The rows of a dataset run, read lazily: a `datasets` dataset (streaming or not) or a path to one.

A run never tokenises or loads the whole dataset: rows come one at a time as ``(index, input, target)``, the
index counting rows from 0 in the dataset's order (the key a run's shards, its errors and its resumption use).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# File suffixes and the `datasets` builder that reads them, streaming.
_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


@dataclass(frozen=True)
class Row:
    """One dataset row: its index, its input text and its forced target (None: generate); a chat row's
    conversation (``messages``, then ``input_text`` is None) and a row's named segments (``[(name, text),
    ...]``), when the run reads such columns."""

    index: int
    input_text: Any
    target_text: Any = None
    messages: Any = None
    segments: Any = None


def open_dataset(data: Any, split: str = "train"):
    """``data`` as a `datasets` (iterable) dataset: a dataset as given, a file streamed by its suffix (JSONL,
    JSON, CSV, Parquet, text), a folder written by ``save_to_disk`` (memory-mapped), else a hub name
    (streamed).

    Example:
        >>> _ = (tmp / "data.jsonl").write_text('{"text": "Hello"}\\n{"text": "Bye"}\\n')
        >>> [row["text"] for row in open_dataset(tmp / "data.jsonl")]
        ['Hello', 'Bye']
    """
    import datasets

    if isinstance(data, (datasets.Dataset, datasets.IterableDataset)):
        return data
    if isinstance(data, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in data:
            raise ValueError(f"the dataset has no split {split!r}; its splits: {sorted(data)}")
        return data[split]
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(
            f"data must be a datasets.Dataset, an IterableDataset or a path (JSONL, CSV, Parquet, a folder "
            f"saved with save_to_disk) or a hub name; got {type(data).__name__}"
        )
    path = Path(data).expanduser()
    if path.is_dir():
        return datasets.load_from_disk(str(path))
    if path.is_file():
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"{path}: unknown file type {path.suffix!r}; use one of {sorted(_BUILDERS)}")
        return datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True)
    if path.suffix.lower() in _BUILDERS or os.sep in str(data):
        raise FileNotFoundError(f"{data}: no such file or folder")
    return datasets.load_dataset(str(data), split=split, streaming=True)  # a hub name


def dataset_rows(
    dataset,
    input_column: str | None,
    target_column: str | None,
    messages_column: str | None = None,
    segments_column: str | None = None,
) -> Iterator[Row]:
    """The rows of ``dataset`` (see `open_dataset`), one at a time; a missing column is refused. With
    ``messages_column`` a row's prompt is its conversation (``input_column`` is not read); with
    ``segments_column`` its named segments come along (``input_column=None``: they make the prompt).

    Example:
        >>> import datasets
        >>> data = datasets.Dataset.from_dict({"src": ["a b", "c"], "tgt": ["x", "y"]})
        >>> [(r.index, r.input_text, r.target_text) for r in dataset_rows(data, "src", "tgt")]
        [(0, 'a b', 'x'), (1, 'c', 'y')]
    """
    if messages_column is not None:
        input_column = None  # the conversation is the prompt
    if input_column is None and messages_column is None and segments_column is None:
        raise ValueError(
            "input_column=None leaves the rows without a prompt; name the column of input texts, or give "
            "messages_column= (conversations) or segments_column= (segments that make the prompt)"
        )
    named = (
        ("input_column", input_column),
        ("target_column", target_column),
        ("messages_column", messages_column),
        ("segments_column", segments_column),
    )
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        for argument, name in named:
            if name is not None and name not in columns:
                raise ValueError(
                    f"{argument}={name!r} is not a column of the dataset; its columns: {columns}"
                )
    for index, record in enumerate(dataset):
        for argument, name in named:
            if name is not None and argument != "target_column" and name not in record:
                raise ValueError(f"row {index} has no column {name!r} ({argument}); it has {sorted(record)}")
        target = None if target_column is None else record.get(target_column)
        yield Row(
            index,
            None if input_column is None else record[input_column],
            target,
            messages=None if messages_column is None else record[messages_column],
            segments=None if segments_column is None else record[segments_column],
        )


def fingerprint(data: Any, dataset) -> str:
    """An identifier of the data a run reads, recorded in its manifest and checked when it resumes: the
    dataset's own fingerprint, or a file's content hash, or the hub name.

    Example:
        >>> _ = (tmp / "a.jsonl").write_text('{"text": "Hello"}\\n')
        >>> fingerprint(tmp / "a.jsonl", None)[:7]
        'sha256:'
    """
    import datasets
    from datasets.fingerprint import Hasher

    if isinstance(dataset, datasets.Dataset):  # equal content, equal hash
        return f"datasets:{Hasher.hash(dataset)}"
    if isinstance(data, (str, os.PathLike)) and Path(data).expanduser().is_file():
        digest = hashlib.sha256()
        with open(Path(data).expanduser(), "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        return f"sha256:{digest.hexdigest()}"
    return f"name:{data}"
