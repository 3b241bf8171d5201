"""Dataset runs (issue 16): a folder of shards, the same records whatever the split into batches, shards and
processes, resumable after kill -9, bad rows recorded and never stopping the run, memory flat in the rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch

import seqattr
from seqattr.testing import tiny_model

PROMPTS = ["The sky", "A cat sat on", "Once upon a time there", "We", "Hello there my friend, how"]


@pytest.fixture(scope="module")
def gpt2():
    hf_model, tokenizer = tiny_model("gpt2")
    return seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer)


def rows(n: int) -> list[dict]:
    return [
        {"text": f"{PROMPTS[i % len(PROMPTS)]} {i}", "target": f"{PROMPTS[i % len(PROMPTS)]} {i} is here"}
        for i in range(n)
    ]


def test_records_equal_attributing_each_row_alone_and_bad_rows_are_listed(gpt2, tmp_path):
    data = rows(23)
    data[3]["text"] = ""  # empty
    data[7]["target"] = "Something else entirely"  # a forced target that does not start with its prompt
    data[12]["text"] = "word " * 200  # longer than the model's 128 positions
    run = gpt2.attribute_dataset(
        datasets.Dataset.from_list(data),
        output_dir=tmp_path / "run",
        target_column="target",
        shard_size=5,
        batch_size=3,
        show_progress=False,
        step_scores=["probability"],
    )
    errors = {e["row"]: e["error"] for e in run.errors}
    assert sorted(errors) == [3, 7, 12]
    assert "not a non-empty text" in errors[3]
    assert "must start with its prompt" in errors[7]
    assert "longer than the model's context" in errors[12]
    assert len(run) == 20 and run.manifest["num_errors"] == 3 and run.manifest["num_shards"] == 5
    records = list(run)
    assert [row for row, _ in records] == [i for i in range(23) if i not in errors]
    for row, seq in records:
        alone = gpt2.attribute(data[row]["text"], data[row]["target"], step_scores=["probability"])[0]
        assert seq.target == alone.target
        torch.testing.assert_close(seq.target_attributions, alone.target_attributions, equal_nan=True)
        torch.testing.assert_close(seq.step_scores["probability"], alone.step_scores["probability"])
    assert run.info["method"] == "saliency" and "timing" not in run.info
    frame = run.to_dataset()
    assert frame["row"] == [row for row, _ in records] and frame.num_rows == 20


def test_bad_arguments_are_refused_before_any_row(gpt2, tmp_path):
    data = datasets.Dataset.from_list(rows(3))
    with pytest.raises(ValueError, match="not a column of the dataset"):
        gpt2.attribute_dataset(data, output_dir=tmp_path / "a", input_column="prompt", show_progress=False)
    with pytest.raises(ValueError, match="unknown attribution method"):
        gpt2.attribute_dataset(data, output_dir=tmp_path / "b", method="saliencyy", show_progress=False)
    with pytest.raises(TypeError, match="sets batch_size itself|generated_texts"):
        gpt2.attribute_dataset(data, output_dir=tmp_path / "c", generated_texts=["x"], show_progress=False)
    with pytest.raises(ValueError, match="on_error"):
        gpt2.attribute_dataset(data, output_dir=tmp_path / "d", on_error="ignore", show_progress=False)
    with pytest.raises(ValueError, match="on_error='raise'|row 0"):
        bad = datasets.Dataset.from_list([{"text": "", "target": None}])
        gpt2.attribute_dataset(bad, output_dir=tmp_path / "e", on_error="raise", show_progress=False)
    gpt2.attribute_dataset(data, output_dir=tmp_path / "f", shard_size=2, show_progress=False)
    with pytest.raises(ValueError, match="holds a run with other settings \\(shard_size differ"):
        gpt2.attribute_dataset(data, output_dir=tmp_path / "f", shard_size=3, show_progress=False)
    with pytest.raises(FileNotFoundError, match="not the output folder of a dataset run"):
        seqattr.load_dataset_output(tmp_path)


def test_storage_dtype_halves_the_stored_attributions(gpt2, tmp_path):
    data = datasets.Dataset.from_list(rows(4))
    full = gpt2.attribute_dataset(
        data, output_dir=tmp_path / "a", target_column="target", show_progress=False
    )
    half = gpt2.attribute_dataset(
        data, output_dir=tmp_path / "b", target_column="target", storage_dtype="float16", show_progress=False
    )
    assert half.manifest["settings"]["storage_dtype"] == "float16"
    for (_, a), (_, b) in zip(full, half, strict=True):
        assert b.target_attributions.dtype == torch.float16
        torch.testing.assert_close(
            b.target_attributions.float(), a.target_attributions, equal_nan=True, rtol=1e-3, atol=1e-4
        )


# --- processes: the CLI run as users run it -------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny GPT-2 saved as a model folder, and a 200-row JSONL file."""
    folder = tmp_path_factory.mktemp("dataset_run")
    hf_model, tokenizer = tiny_model("gpt2")
    hf_model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(200)))
    return folder


def command(saved: Path, output_dir: Path) -> list[str]:
    return [
        "-c",
        "import sys, seqattr.cli; sys.exit(seqattr.cli.main(sys.argv[1:]))",
        "attribute-dataset",
        str(saved / "data.jsonl"),
        "-m",
        str(saved / "model"),
        "-o",
        str(output_dir),
        "--target-column",
        "target",
        "--shard-size",
        "20",
        "--batch-size",
        "8",
        "--step-scores",
        "probability",
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def one_process(saved):
    output_dir = saved / "one"
    subprocess.run([sys.executable, *command(saved, output_dir)], env=ENV, check=True, capture_output=True)
    return folder_bytes(output_dir)


def test_two_processes_under_accelerate_write_the_same_records_as_one(saved, one_process):
    output_dir = saved / "two"
    script = saved / "run.py"
    script.write_text("import sys, seqattr.cli\nsys.exit(seqattr.cli.main(sys.argv[1:]))\n")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run(
        [*launch, str(script), *command(saved, output_dir)[2:]], env=ENV, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert folder_bytes(output_dir) == one_process
    shards = sorted(p for p in one_process if p.startswith("shard-"))
    assert len(shards) == 10
    index = [json.loads(line) for line in one_process["index.jsonl"].splitlines()]
    assert [entry["file"] for entry in index] == shards
    assert sorted(row for entry in index for row in entry["rows"]) == list(range(200))


def test_a_run_killed_mid_way_resumes_to_the_same_output(saved, one_process):
    output_dir = saved / "killed"
    process = subprocess.Popen(
        [sys.executable, *command(saved, output_dir)], env=ENV, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while len(list(output_dir.glob("shard-*.parquet"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)  # a shard takes ~50 ms here: the kill lands well before the last of 10
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list(output_dir.glob("shard-*.parquet")))
    assert 2 <= done < 10, f"killed after {done} shards: not mid-way"
    assert not (output_dir / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="has not finished"):
        seqattr.load_dataset_output(output_dir)
    subprocess.run([sys.executable, *command(saved, output_dir)], env=ENV, check=True, capture_output=True)
    assert folder_bytes(output_dir) == one_process


MEMORY_SCRIPT = """
import json, resource, sys
import datasets
import seqattr
from seqattr.testing import tiny_model

n = int(sys.argv[1])
hf_model, tokenizer = tiny_model("gpt2")
model = seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer)
def rows():
    for i in range(n):
        yield {"text": f"The sky {i}", "target": f"The sky {i} is blue"}
data = datasets.IterableDataset.from_generator(rows)
model.attribute_dataset(data, output_dir=sys.argv[2], target_column="target", shard_size=250,
                        batch_size=25, show_progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_stays_flat_in_the_number_of_rows(tmp_path):
    peaks = {}
    for n in (500, 5000):
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(n), str(tmp_path / str(n))],
            env=ENV,
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[n] = int(result.stdout.split()[-1])
    assert seqattr.load_dataset_output(tmp_path / "5000").manifest["num_examples"] == 5000
    assert peaks[5000] <= 1.10 * peaks[500], peaks


def test_the_cli_refuses_a_missing_file_before_loading_the_model(tmp_path, capsys):
    from seqattr.cli import main

    assert main(["attribute-dataset", str(tmp_path / "nope.jsonl"), "-m", "never/loaded", "-o", "x"]) == 2
    assert "nope.jsonl: no such file or folder" in capsys.readouterr().err
