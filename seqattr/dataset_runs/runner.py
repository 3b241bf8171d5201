"""`attribute_dataset`: attribute every row of a dataset of any size into a folder of shards, resumably.

Rows are read lazily (`seqattr.dataset_runs.source`) and grouped into shards of ``shard_size``
consecutive rows; a shard is attributed in batches of rows of similar length (order restored), then written
whole (`seqattr.dataset_runs.shards`). Under a distributed launcher (``accelerate launch``, ``torchrun``)
process ``rank`` of ``world_size`` takes the shards ``k`` with ``k % world_size == rank``: a deterministic,
disjoint split, and the same batches as one process would make, so the records are the same. A row that
cannot be attributed (empty, too long for the model, a forced target that does not fit its prompt) is
recorded with its reason and the run goes on (``on_error="skip"``), or stops (``"raise"``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from seqattr.dataset_runs.shards import (
    ERRORS_FILE,
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST_FILE,
    RUN_FILE,
    SHARD_FORMAT,
    DatasetOutput,
    load_dataset_output,
    shard_errors,
    shard_path,
    shard_rows,
    write_atomically,
    write_shard,
)
from seqattr.dataset_runs.source import Row, dataset_rows, fingerprint, open_dataset
from seqattr.engine import run_info
from seqattr.progress import progress_bar

if TYPE_CHECKING:
    from seqattr.data.attribution import SequenceAttribution
    from seqattr.models.attribution_model import AttributionModel

STORAGE_DTYPES = {None: None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Arguments of `attribute` that a dataset run sets itself.
_RUN_OWNED = {"input_texts", "generated_texts", "batch_size", "show_progress"}
# Arguments of `attribute` that differ per row: columns of the dataset.
_ROW_COLUMNS = {"messages": "messages_column", "segments": "segments_column"}


def _process_group() -> tuple[int, int, Any]:
    """``(rank, world_size, state)`` under a distributed launcher (accelerate's PartialState starts the
    process group it set up: gloo on CPUs), ``(0, 1, None)`` otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    from accelerate import PartialState

    state = PartialState()
    return state.process_index, state.num_processes, state


def _stored(seq: SequenceAttribution, dtype: torch.dtype | None) -> SequenceAttribution:
    if dtype is None:
        return seq

    def cast(values):
        return None if values is None else values.to(dtype)

    return dataclasses.replace(
        seq,
        source_attributions=cast(seq.source_attributions),
        target_attributions=cast(seq.target_attributions),
        step_scores={name: cast(values) for name, values in seq.step_scores.items()},
    )


class _ShardWorker:
    """Attributes the rows of one shard in length-bucketed batches; a failing batch is retried row by row so
    that only the bad rows fail."""

    def __init__(self, model: AttributionModel, attribute_args: dict, batch_size: int, on_error: str, dtype):
        self.model, self.attribute_args = model, attribute_args
        self.batch_size, self.on_error, self.dtype = batch_size, on_error, dtype

    def run(self, rows: list[Row]) -> dict[int, SequenceAttribution | str]:
        results: dict[int, SequenceAttribution | str] = {}
        usable = []
        for row in rows:
            problem = _row_problem(row)
            if problem is None:
                usable.append(row)
            else:
                results[row.index] = self._failed(row, ValueError(problem))
        # Similar lengths together (less padding); forced and generated rows apart (one call does one kind).
        usable.sort(key=lambda r: (r.target_text is None, _prompt_length(r), r.index))
        for start in range(0, len(usable), self.batch_size):
            batch = usable[start : start + self.batch_size]
            kinds = {r.target_text is None for r in batch}
            for kind in sorted(kinds):
                group = [r for r in batch if (r.target_text is None) == kind]
                results.update(self._attribute(group))
        return results

    def _attribute(self, rows: list[Row]) -> dict[int, SequenceAttribution | str]:
        try:
            out = self._call(rows)
        except (ValueError, TypeError) as err:
            if len(rows) == 1:
                return {rows[0].index: self._failed(rows[0], err)}
            results: dict[int, SequenceAttribution | str] = {}
            for row in rows:  # batched == single: the good rows' numbers do not change
                results.update(self._attribute([row]))
            return results
        return {row.index: _stored(seq, self.dtype) for row, seq in zip(rows, out, strict=True)}

    def _call(self, rows: list[Row]):
        targets = (
            None if rows[0].target_text is None else [row_target(self.model, r.target_text) for r in rows]
        )
        # A chat row's prompt is its conversation; segments alone (no input column) make the prompt.
        parts = {}
        if rows[0].messages is not None:
            parts["messages"] = [r.messages for r in rows]
        if rows[0].segments is not None:
            parts["segments"] = [r.segments for r in rows]
        texts = None if rows[0].input_text is None else [r.input_text for r in rows]
        return self.model.attribute(
            texts,
            targets,
            batch_size=len(rows),
            show_progress=False,
            **parts,
            **self.attribute_args,
        )

    def _failed(self, row: Row, err: Exception) -> str:
        if self.on_error == "raise":
            raise ValueError(f"row {row.index}: {err}") from err
        return f"{type(err).__name__}: {err}"


def row_target(model: AttributionModel, text: str) -> Any:
    """A row's target column as `attribute` takes one text's among several: the text, or for a tagger (its
    tags) and a multi-label classifier (its labels), the space-separated names as a list; a flat list of
    such strings would read as one text's tags or labels.

    Example:
        >>> row_target(model, "Hello there")       # a generative model's forced output: as it is
        'Hello there'
        >>> import seqattr
        >>> from seqattr.testing import tiny_task_model
        >>> hf_tagger, tokenizer = tiny_task_model("token-classification")
        >>> row_target(seqattr.load_model(hf_tagger, tokenizer=tokenizer), "B-PER O O B-LOC O")
        ['B-PER', 'O', 'O', 'B-LOC', 'O']
    """
    family = model.family
    if family.task == "token-classification":
        return text.split()
    if family.multi_label:
        names = {str(name) for name in model.model.config.id2label.values()}
        return [text] if text in names else text.split()  # a label whose name holds a space stays whole
    return text


def _prompt_length(row: Row) -> int:
    """A row's prompt length in characters (its conversation's or segments' texts when it has no text)."""
    if row.input_text is not None:
        return len(row.input_text)
    parts = row.messages if row.messages is not None else row.segments
    return len(json.dumps(parts, default=str))


def _row_problem(row: Row) -> str | None:
    # A conversation or segments without text are checked by `attribute`, which names the problem (recorded
    # as the row's error).
    text_prompt = row.messages is None and not (row.input_text is None and row.segments is not None)
    if text_prompt and (not isinstance(row.input_text, str) or not row.input_text.strip()):
        return f"the input is {row.input_text!r}, not a non-empty text"
    if row.target_text is not None and (not isinstance(row.target_text, str) or not row.target_text.strip()):
        return f"the target is {row.target_text!r}, not a non-empty text"
    return None


def _shards(rows: Iterator[Row], shard_size: int) -> Iterator[tuple[int, list[Row]]]:
    shard, members = 0, []
    for row in rows:
        if row.index // shard_size != shard and members:
            yield shard, members
            members = []
        shard = row.index // shard_size
        members.append(row)
    if members:
        yield shard, members


def _check_settings(output_dir: Path, settings: dict[str, Any]) -> None:
    """Write the run's settings, or refuse to resume a folder that holds a run with other settings."""
    path = output_dir / RUN_FILE
    if path.exists():
        earlier = json.loads(path.read_text())
        differing = sorted(k for k in settings.keys() | earlier.keys() if settings.get(k) != earlier.get(k))
        if "shard_format" not in earlier:  # run.json of a seqattr that wrote JSONL shards
            raise ValueError(
                f"{output_dir} holds an unfinished run of an earlier seqattr (JSONL shards); this seqattr "
                f"writes {SHARD_FORMAT} shards and cannot complete it: choose another output_dir"
            )
        if differing:
            raise ValueError(
                f"{output_dir} holds a run with other settings ({', '.join(differing)} differ); "
                "resume it with the same command, or choose another output_dir"
            )
        return
    write_atomically(path, json.dumps(settings, indent=1, default=str))


def attribute_dataset(
    model: AttributionModel,
    data: Any,
    *,
    output_dir: str | os.PathLike,
    input_column: str | None = "text",
    target_column: str | None = None,
    messages_column: str | None = None,
    segments_column: str | None = None,
    split: str = "train",
    shard_size: int = 100,
    batch_size: int = 8,
    on_error: str = "skip",
    storage_dtype: str | None = None,
    show_progress: bool = True,
    **attribute_args: Any,
) -> DatasetOutput:
    """Attribute every row of a dataset into ``output_dir``, a folder of shards; resumable.

    Also a method of the model: ``model.attribute_dataset(data, output_dir=...)``.

    Args:
        model: the model to explain, with the method `load_model` bound (``method=`` picks another).
        data: a `datasets.Dataset` or `IterableDataset` (streaming), or a path (JSONL, JSON, CSV, Parquet,
            a folder written by ``save_to_disk``) or a hub name (streamed); read lazily, never whole.
        output_dir: the folder of the run (see `seqattr.dataset_runs.shards`). Run the same call again
            after an interruption: finished shards are kept, the rest is done, nothing twice.
        input_column: the column of input texts (prompts, or sources of an encoder-decoder).
        target_column: a column of forced outputs (default: generate); for a classifier, the labels to
            explain (default: the predicted ones): a label name, a tagger's tags or a multi-label
            classifier's labels separated by spaces (`row_target`). With ``messages_column``: the replies
            (the reply's text only).
        messages_column: a column of conversations (each a list of ``{"role", "content"}`` dicts) for a
            chat model: a row's prompt is its conversation with the chat template applied, as
            ``attribute(messages=...)`` (``input_column`` is then not read).
        segments_column: a column of named segments, each row's ``[[name, text], ...]``, as
            ``attribute(segments=...)``: found in the row's input text (or conversation); with
            ``input_column=None`` they make the prompt. ``granularity="segment"`` and ``context_parts=``
            then go in ``attribute_args``, the same for every row.
        split: the split of a dataset dictionary or hub name.
        shard_size: rows per shard (the unit of resumption and of the split between processes).
        batch_size: rows per model call (rows of similar length are batched together).
        on_error: ``"skip"`` records a row that cannot be attributed (empty, too long, a forced target
            that does not fit) in ``errors.jsonl`` and goes on; ``"raise"`` stops the run.
        storage_dtype: store attributions and step scores as ``"float16"`` or ``"bfloat16"`` (half the
            size of float32: float16 keeps 11 significant bits, bfloat16 8 bits but float32's range) or
            ``"float32"``; default as computed. Recorded in the manifest's settings.
        show_progress: a progress bar of rows, rows per second, time left and rows skipped.
        **attribute_args: the keywords of `attribute` (method options included), the same for every row.

    Under ``accelerate launch`` or ``torchrun`` each process takes a disjoint, deterministic share of the
    shards; the records equal a one-process run's.

    Example:
        >>> data = datasets.Dataset.from_dict({"text": ["Hello there", "The sky is", ""]})
        >>> run = model.attribute_dataset(data, output_dir=tmp / "run", show_progress=False,
        ...                               generation_args={"max_new_tokens": 2})
        >>> len(run), run.errors[0]["row"], [row for row, seq in run]
        (2, 2, [0, 1])
    """
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {list(STORAGE_DTYPES)}, got {storage_dtype!r}")
    owned = sorted(_RUN_OWNED & set(attribute_args))
    if owned:
        raise TypeError(f"attribute_dataset sets {', '.join(owned)} itself (the rows come from data)")
    for name, column in _ROW_COLUMNS.items():
        if name in attribute_args:
            raise TypeError(
                f"{name}= differs per row in a dataset run: put them in a column of the dataset and name it "
                f"with {column}="
            )
    request = _validated_request(model, attribute_args, messages_column, segments_column)
    # A randomised method's seed is drawn once so that every batch, shard and process uses the same one (the
    # records then do not depend on how the run is split).
    if "seed" in dataclasses.asdict(request.options):
        attribute_args = {**attribute_args, "seed": request.options.seed}

    output_dir = Path(output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    dataset = open_dataset(data, split)
    rank, world_size, state = _process_group()
    info = run_info(model, request)
    settings = {
        "model": model.model_name,
        "method": request.method,
        "method_options": info["method_options"],
        "attribute_args": {k: v for k, v in attribute_args.items()},
        "data": fingerprint(data, dataset),
        "input_column": input_column,
        "target_column": target_column,
        **({"messages_column": messages_column} if messages_column is not None else {}),
        **({"segments_column": segments_column} if segments_column is not None else {}),
        "split": split,
        "shard_size": shard_size,
        "storage_dtype": storage_dtype,
        "shard_format": SHARD_FORMAT,
    }
    settings = json.loads(json.dumps(settings, default=str))
    if rank == 0:
        _check_settings(output_dir, settings)
    if state is not None:
        state.wait_for_everyone()
    if rank != 0:
        _check_settings(output_dir, settings)

    worker = _ShardWorker(model, attribute_args, batch_size, on_error, STORAGE_DTYPES[storage_dtype])
    num_shards = 0
    with _RunProgress(getattr(dataset, "num_rows", None), enabled=show_progress and rank == 0) as progress:
        rows_of = dataset_rows(dataset, input_column, target_column, messages_column, segments_column)
        for shard, rows in _shards(rows_of, shard_size):
            num_shards = shard + 1
            if shard % world_size != rank:
                continue
            path = shard_path(output_dir, shard)
            if path.exists():  # finished by an earlier run
                progress.advance(len(rows), skipped=0)
                continue
            results = worker.run(rows)
            write_shard(path, results)
            progress.advance(len(rows), skipped=sum(isinstance(v, str) for v in results.values()))
    if state is not None:
        state.wait_for_everyone()
    if rank == 0:
        _write_manifest(output_dir, num_shards, info, settings)
    if state is not None:
        state.wait_for_everyone()
    return load_dataset_output(output_dir)


def _validated_request(
    model: AttributionModel,
    attribute_args: dict[str, Any],
    messages_column: str | None,
    segments_column: str | None,
):
    """The run's arguments validated once, before any row (the request the manifest's info describes): a
    chat column on a model that cannot read one, or ``context_parts`` without parts, is refused here, not
    once per row. Rows with parts are checked on a stand-in prompt with both kinds of part; each row's own
    parts are checked when it runs."""
    from seqattr.chat import check_prompt_parts
    from seqattr.segments import PromptLayout, Segment, as_part_names

    arguments = dict(attribute_args)
    context_parts = arguments.pop("context_parts", None)
    has_parts = messages_column is not None or segments_column is not None
    if context_parts is not None and not has_parts:
        raise ValueError(
            "context_parts= names parts of each row's prompt: give them with messages_column= or "
            "segments_column="
        )
    if context_parts is not None:
        as_part_names(context_parts)  # a name or a list of names (each row's prompt is checked as it runs)
    if has_parts:
        # The kind of model only: `[]` stands for "a conversation" (each row's own is checked as it runs).
        check_prompt_parts(model.family, None if messages_column is None else [])
        if messages_column is not None and not getattr(model.tokenizer, "chat_template", None):
            raise ValueError(
                f"messages_column={messages_column!r}: this model's tokenizer has no chat template, so a "
                "conversation cannot be turned into a prompt; use a chat (instruct) model, set "
                "tokenizer.chat_template, or give rendered prompts with input_column="
            )
        stand_in = Segment("validation", "user", 0, 1)
        arguments["prompts"] = [PromptLayout("validation", [0], ["user"], (stand_in,), (stand_in,))]
    return model.request("validation", **arguments)


def _write_manifest(
    output_dir: Path, num_shards: int, info: dict[str, Any], settings: dict[str, Any]
) -> None:
    # Read from the shards' row column and metadata (no attribution is decoded).
    errors, index = [], []
    for shard in range(num_shards):
        path = shard_path(output_dir, shard)
        failed = shard_errors(path)
        errors += failed
        index.append(
            {
                "shard": shard,
                "file": path.name,
                "rows": shard_rows(path),
                "errors": [e["row"] for e in failed],
            }
        )
    examples = sum(len(entry["rows"]) for entry in index)
    write_atomically(output_dir / ERRORS_FILE, "".join(json.dumps(e) + "\n" for e in errors))
    write_atomically(output_dir / INDEX_FILE, "".join(json.dumps(entry) + "\n" for entry in index))
    manifest = {
        "format": "seqattr-dataset",
        "format_version": FORMAT_VERSION,
        "info": info,
        "settings": settings,
        "num_shards": num_shards,
        "num_examples": examples,
        "num_errors": len(errors),
    }
    write_atomically(output_dir / MANIFEST_FILE, json.dumps(manifest, indent=1, default=str))


class _RunProgress:
    """Rows done, rows per second, the time left (when the dataset's length is known) and the rows skipped."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.total, self.enabled, self.skipped = total, enabled, 0
        self.progress = None

    def __enter__(self) -> _RunProgress:
        if self.enabled:
            from rich.progress import TextColumn

            self.progress = progress_bar(
                TextColumn("{task.fields[rate]}"), TextColumn("skipped {task.fields[skipped]}")
            )
            self.progress.start()
            self.task = self.progress.add_task("rows", total=self.total, skipped=0, rate="")  # rows/s
        return self

    def advance(self, rows: int, skipped: int) -> None:
        self.skipped += skipped
        if self.progress is not None:
            self.progress.update(self.task, advance=rows, skipped=self.skipped)
            speed = self.progress.tasks[0].speed
            self.progress.update(self.task, rate="" if speed is None else f"{speed:.1f} rows/s")

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
