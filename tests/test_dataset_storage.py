"""How a dataset run stores its examples (issue 16): Parquet shards, one row per example, tensors as their
bytes with dtype and shape; ``storage_dtype`` float32, float16 or bfloat16 with exactly the rounding each
implies; an index of the rows in each shard; the same bytes for the same rows; a folder of the earlier JSONL
format refused with the fix; ``to_dataset`` read from the shards themselves. Also the GPU form of the
dispatch check (skipped without CUDA) and the dataset row of `make bench` against Inseq (its Inseq half
skipped without .bench-venv/)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import torch

import seqattr
from seqattr.cli import main
from seqattr.data.io import sequence_to_json
from seqattr.dataset_runs.shards import (
    SHARD_SCHEMA,
    decode_tensor,
    read_shard,
    sequence_from_record,
    shard_errors,
    write_shard,
)
from seqattr.testing import tiny_model

ROWS = [
    {"text": "The sky", "target": "The sky is blue today"},
    {"text": "A cat sat on", "target": "A cat sat on the mat"},
    {"text": "", "target": "nothing"},  # fails: empty input
    {"text": "Once upon a time", "target": "Once upon a time there was"},
    {"text": "We", "target": "Something else"},  # fails: the target does not start with the prompt
    {"text": "Hello there my friend", "target": "Hello there my friend, how are you"},
    {"text": "It was", "target": "It was a dark and stormy night"},
]
FAILED = [2, 4]


@pytest.fixture(scope="module")
def gpt2():
    hf_model, tokenizer = tiny_model("gpt2")
    return seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def alone(gpt2):
    """Each good row attributed on its own."""
    return {
        row: gpt2.attribute(r["text"], r["target"], step_scores=["probability"], show_progress=False)[0]
        for row, r in enumerate(ROWS)
        if row not in FAILED
    }


@pytest.fixture(scope="module")
def computed(gpt2, tmp_path_factory):
    """The run stored as computed (float32): the values every storage dtype is rounded from."""
    return dict(run(gpt2, tmp_path_factory.mktemp("computed") / "run"))


def run(gpt2, folder, **kwargs):
    return gpt2.attribute_dataset(
        datasets.Dataset.from_list(ROWS),
        output_dir=folder,
        target_column="target",
        shard_size=3,
        batch_size=2,
        show_progress=False,
        step_scores=["probability"],
        **kwargs,
    )


# Half the distance between neighbouring floats of a dtype, relative to the value (round to nearest): the
# most a normal value may move when stored; `tiny` is that half-distance among the subnormal numbers.
ROUNDING = {
    torch.float16: {"relative": 2.0**-11, "tiny": 2.0**-25},
    torch.bfloat16: {"relative": 2.0**-8, "tiny": 2.0**-134},
}


@pytest.mark.parametrize(
    "storage_dtype, dtype",
    [
        (None, torch.float32),
        ("float32", torch.float32),
        ("float16", torch.float16),
        ("bfloat16", torch.bfloat16),
    ],
)
def test_every_storage_dtype_round_trips_with_exactly_its_rounding(
    gpt2, alone, computed, tmp_path, storage_dtype, dtype
):
    out = run(gpt2, tmp_path / "run", storage_dtype=storage_dtype)
    assert out.manifest["settings"]["storage_dtype"] == storage_dtype
    assert [row for row, _ in out] == sorted(alone) == sorted(computed)
    for row, stored in out:
        expected = computed[row]
        assert stored.target == expected.target == alone[row].target
        assert expected.target_attributions.dtype == torch.float32
        # as computed, the batched values equal each row's alone up to float32 summation order
        torch.testing.assert_close(
            expected.target_attributions, alone[row].target_attributions, equal_nan=True
        )
        pairs = [(stored.target_attributions, expected.target_attributions)]
        pairs.append((stored.step_scores["probability"], expected.step_scores["probability"]))
        for got, full in pairs:
            assert got.dtype == dtype
            # Bit for bit the float32 values cast to the storage dtype (NaN where a step cannot see)...
            torch.testing.assert_close(got, full.to(dtype), rtol=0, atol=0, equal_nan=True)
            if dtype in ROUNDING:  # ...so within half a unit in the last place of the float32 value
                seen = ~full.isnan()
                error = (got.float() - full)[seen].abs()
                bound = ROUNDING[dtype]["relative"] * full[seen].abs() + ROUNDING[dtype]["tiny"]
                assert bool((error <= bound).all()), (error / full[seen].abs()).max()
                assert bool(error.max() > 0)  # the values were rounded: the dtype was applied
            else:
                assert torch.equal(got.isnan(), full.isnan())
        assert torch.equal(stored.trace.token_ids, expected.trace.token_ids)


def test_the_analysis_reads_a_run_stored_in_bfloat16(gpt2, tmp_path):
    from seqattr.analysis import summarize

    full = summarize(run(gpt2, tmp_path / "full"))
    half = summarize(run(gpt2, tmp_path / "half", storage_dtype="bfloat16"))
    assert half.overall.keys() == full.overall.keys()
    for name, value in full.overall.items():
        # shares of sums of values each within 2^-8 of float32's
        assert half.overall[name] == pytest.approx(value, rel=2**-7, abs=1e-6), name


def test_a_shard_keeps_every_field_of_an_example_bit_for_bit(gpt2, tmp_path):
    seq = gpt2.attribute("The sky", generation_args={"max_new_tokens": 3}, show_progress=False)[0]
    assert seq.trace is not None
    tokens = len(seq.target)
    rich = dataclasses.replace(
        seq,
        interactions=torch.randn(tokens, tokens, seq.num_steps, dtype=torch.float64),
        features={"granularity": "word", "source": [], "target": [[0, 1], [1, tokens]]},
        masked_target=(0,),
        step_scores={"probability": torch.tensor([0.5, float("nan"), 1e-30], dtype=torch.bfloat16)},
    )
    path = tmp_path / "shard.parquet"
    write_shard(path, {7: rich, 3: "ValueError: empty", 9: seq})
    read = list(read_shard(path))
    assert [row for row, _ in read] == [7, 9]
    assert [sequence_to_json(s) for _, s in read] == [sequence_to_json(rich), sequence_to_json(seq)]
    assert read[0][1].step_scores["probability"].dtype == torch.bfloat16
    assert shard_errors(path) == [{"row": 3, "error": "ValueError: empty"}]
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed, not left behind


def test_the_same_rows_give_the_same_bytes(gpt2, tmp_path):
    seq = gpt2.attribute("The sky", "The sky is blue", show_progress=False)[0]
    write_shard(tmp_path / "a.parquet", {0: seq, 1: "ValueError: x"})
    time.sleep(1.1)  # a timestamp in the file would now differ
    write_shard(tmp_path / "b.parquet", {1: "ValueError: x", 0: seq})
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_a_tensor_of_a_dtype_that_cannot_be_stored_is_refused_and_leaves_no_file(gpt2, tmp_path):
    seq = gpt2.attribute("The sky", "The sky is blue", show_progress=False)[0]
    bad = dataclasses.replace(seq, target_attributions=seq.target_attributions.to(torch.int32))
    with pytest.raises(TypeError, match="cannot store a tensor of dtype torch.int32; supported"):
        write_shard(tmp_path / "shard.parquet", {0: bad})
    assert list(tmp_path.iterdir()) == []


def test_the_index_lists_each_row_once_in_the_shard_that_holds_it(gpt2, tmp_path):
    out = run(gpt2, tmp_path / "run")
    index = out.index
    assert [entry["file"] for entry in index] == [
        "shard-00000.parquet",
        "shard-00001.parquet",
        "shard-00002.parquet",
    ]
    listed = [row for entry in index for row in entry["rows"] + entry["errors"]]
    assert sorted(listed) == list(range(len(ROWS)))  # every row, each once
    assert [row for entry in index for row in entry["errors"]] == FAILED == [e["row"] for e in out.errors]
    for entry in index:
        path = out.output_dir / entry["file"]
        assert entry["rows"] == [row for row, _ in read_shard(path)]
        assert entry["errors"] == [e["row"] for e in shard_errors(path)]
        assert all(row // 3 == entry["shard"] for row in entry["rows"] + entry["errors"])
    assert out.manifest["format_version"] == 2 and out.manifest["num_examples"] == len(ROWS) - len(FAILED)


def test_to_dataset_reads_the_shards_as_a_datasets_table(gpt2, alone, tmp_path):
    out = run(gpt2, tmp_path / "run", storage_dtype="bfloat16")
    table = out.to_dataset()
    assert isinstance(table, datasets.Dataset)
    assert table.column_names == SHARD_SCHEMA.names and table.num_rows == len(out)
    assert list(table["row"]) == [row for row, _ in out]
    for record, (row, seq) in zip(table, out, strict=True):
        assert record["row"] == row and record["target"] == seq.target
        assert record["target_attributions"]["dtype"] == "bfloat16"
        values = decode_tensor(record["target_attributions"])
        torch.testing.assert_close(
            values, alone[row].target_attributions.to(torch.bfloat16), rtol=0, atol=0, equal_nan=True
        )
        assert sequence_to_json(sequence_from_record(record)) == sequence_to_json(seq)
    assert table.cache_files  # memory-mapped from disk, not a table held in memory


def test_to_dataset_leaves_out_shards_whose_rows_all_failed(gpt2, tmp_path):
    data = datasets.Dataset.from_list([*ROWS[:2], ROWS[2], ROWS[2], ROWS[3]])  # rows 2 and 3 empty
    out = gpt2.attribute_dataset(
        data, output_dir=tmp_path / "some", target_column="target", shard_size=2, show_progress=False
    )
    assert [entry["rows"] for entry in out.index] == [[0, 1], [], [4]]
    assert list(out.to_dataset()["row"]) == [0, 1, 4]
    none = gpt2.attribute_dataset(
        datasets.Dataset.from_list([ROWS[2]]),
        output_dir=tmp_path / "none",
        target_column="target",
        show_progress=False,
    )
    assert len(none) == 0 and none.to_dataset().num_rows == 0
    assert none.to_dataset().column_names == SHARD_SCHEMA.names


def test_a_folder_of_the_earlier_jsonl_format_is_refused_with_the_fix(gpt2, tmp_path):
    # What seqattr wrote before Parquet shards: JSON lines with base64 tensors, manifest format_version 1.
    old = tmp_path / "old"
    old.mkdir()
    (old / "shard-00000.jsonl").write_text(json.dumps({"row": 0, "error": "ValueError: x"}) + "\n")
    manifest = {"format": "seqattr-dataset", "format_version": 1, "info": {}, "settings": {}}
    (old / "manifest.json").write_text(json.dumps({**manifest, "num_shards": 1, "num_examples": 0}))
    with pytest.raises(
        ValueError, match=r"format_version 1 \(JSONL shards.*run the dataset again into a new"
    ):
        seqattr.load_dataset_output(old)
    # An unfinished run of that format is not completed with Parquet shards (a folder of both kinds).
    settings = json.loads((run(gpt2, tmp_path / "new").output_dir / "run.json").read_text())
    (old / "manifest.json").unlink()
    (old / "run.json").write_text(json.dumps({k: v for k, v in settings.items() if k != "shard_format"}))
    with pytest.raises(ValueError, match=r"earlier seqattr \(JSONL shards\).*choose another output_dir"):
        run(gpt2, old)
    assert not list(old.glob("*.parquet"))


def test_the_cli_stores_bfloat16_and_refuses_an_unknown_dtype(tmp_path, capsys):
    hf_model, tokenizer = tiny_model("gpt2")
    hf_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    argv = ["attribute-dataset", str(tmp_path / "rows.jsonl"), "-m", str(tmp_path / "model")]
    argv += ["-o", str(tmp_path / "run"), "--target-column", "target"]
    assert main([*argv, "--storage-dtype", "bfloat16"]) == 0
    out = seqattr.load_dataset_output(tmp_path / "run")
    assert out.manifest["settings"]["storage_dtype"] == "bfloat16"
    assert {seq.target_attributions.dtype for _, seq in out} == {torch.bfloat16}
    assert pq.read_schema(out.output_dir / "shard-00000.parquet").names == SHARD_SCHEMA.names
    with pytest.raises(SystemExit):
        main([*argv, "--storage-dtype", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err


# --- the dispatch check on a GPU (tests/test_dataset_dispatch.py runs it on CPU and disk) -------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["saliency", "occlusion"])
def test_attributions_through_a_model_split_over_gpu_and_cpu_equal_the_undispatched_ones(tmp_path, method):
    hf_model, tokenizer = tiny_model("gpt2")
    hf_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    folder = str(tmp_path / "model")
    split = {
        "transformer.wte": 0,
        "transformer.wpe": 0,
        "transformer.drop": 0,
        "transformer.h.0": 0,
        "transformer.h.1": "cpu",
        "transformer.ln_f": "cpu",
        "lm_head": "cpu",
    }
    reference = seqattr.load_model(folder, method)
    prompt, target = "The sky is", "The sky is blue today, and"
    expected = reference.attribute(prompt, target, step_scores=["probability"], show_progress=False)
    for device_map in (split, "auto"):
        model = seqattr.load_model(folder, method, device_map=device_map)
        assert any(str(p.device).startswith("cuda") for p in model.model.parameters())
        out = model.attribute(prompt, target, step_scores=["probability"], show_progress=False)
        # GPU kernels sum in another order than CPU ones: equal up to float32 rounding
        assert out.allclose(expected, rtol=1e-4, atol=1e-5)
    data = datasets.Dataset.from_list(
        [{"text": prompt, "target": target}, {"text": "A cat", "target": "A cat sat"}]
    )
    runs = [
        m.attribute_dataset(data, output_dir=tmp_path / name, target_column="target", show_progress=False)
        for name, m in (("plain", reference), ("split", seqattr.load_model(folder, method, device_map=split)))
    ]
    for (_, plain), (_, dispatched) in zip(*runs, strict=True):
        assert dispatched.allclose(plain, rtol=1e-4, atol=1e-5)


# --- the dataset row of `make bench` (benchmarks/dataset_run.py): what it reports, not how fast ------------

INSEQ_PYTHON = Path(__file__).resolve().parent.parent / ".bench-venv" / "bin" / "python"


def test_the_bench_dataset_row_reports_seqattr_and_inseq_on_the_same_rows(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import dataset_run

    hf_model, tokenizer = tiny_model("gpt2")
    hf_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    with_inseq = (
        INSEQ_PYTHON.exists()
    )  # created by benchmarks/setup_inseq.sh (make bench), not by make install
    results = dataset_run.dataset_rows(
        tmp_path / "model", rows=6, processes=(1,), inseq_python=INSEQ_PYTHON if with_inseq else None
    )
    assert all("error" not in r for r in results), results
    assert [(r["tool"], r["processes"], r["rows"]) for r in results] == [("seqattr", 1, 6)] + (
        [("inseq", 1, 6)] if with_inseq else []
    )
    assert results[0]["same_records"] and results[0]["examples_per_minute"] > 0
    if with_inseq:
        assert results[1]["examples"] == 6  # Inseq attributed every row
        assert dataset_run.vs_inseq(results) == round(
            results[0]["examples_per_minute"] / results[1]["examples_per_minute"], 2
        )
    meta = {"date": "d", "nproc": 2, "cpu": "c", "versions": {"torch": "t", "transformers": "x"}}
    meta |= {"command": "python3 benchmarks/run.py", "load_average": (1.0, 1.0, 1.0)}
    page = tmp_path / "bench.md"
    page.write_text(f"before\n{dataset_run.DOCS_START}\nold\n{dataset_run.DOCS_END}\nafter\n")
    dataset_run.write_docs({"meta": meta, "model": "m", "method": "saliency", "results": results}, page)
    text = page.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    assert "| seqattr | 1 | 6 |" in text and ("| inseq | 1 | 6 |" in text) == with_inseq
