"""Saved outputs load back bit for bit (NaN, infinities, signed zeros and every dtype included), whatever
fields a `SequenceAttribution` has; files of another format version or format are refused clearly."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

import seqattr
from conftest import attribution_model
from exact import assert_identical
from seqattr.data.attribution import AttributionOutput, SequenceAttribution
from seqattr.data.io import FORMAT_VERSION


@pytest.fixture(scope="module")
def outputs() -> dict[str, AttributionOutput]:
    """Real outputs of both families: NaN where steps cannot see, None where a side is not attributed."""
    decoder_only = attribution_model("gpt2")
    encoder_decoder = attribution_model("bart", "input_x_gradient")
    prompts = ["The cat sat on the mat.", "Why"]
    return {
        "decoder_only": decoder_only.attribute(
            prompts,
            generation_args={"max_new_tokens": 4},
            step_scores=["probability", "logprob"],
            show_progress=False,
        ),
        "raw_hidden": decoder_only.attribute(
            prompts[0], generation_args={"max_new_tokens": 3}, hidden_reduction=None, show_progress=False
        ),
        "encoder_decoder": encoder_decoder.attribute(
            prompts, ["Die Katze sitzt.", "Warum"], show_progress=False
        ),
        "encoder_decoder_target": encoder_decoder.attribute(
            prompts, generation_args={"max_new_tokens": 3}, attribute_target=True, show_progress=False
        ),
    }


@pytest.mark.parametrize("name", ["decoder_only", "raw_hidden", "encoder_decoder", "encoder_decoder_target"])
def test_round_trip_is_exact(outputs, name, tmp_path):
    out = outputs[name]
    out.save(tmp_path / "out.json")
    loaded = seqattr.load(tmp_path / "out.json")
    assert isinstance(loaded, AttributionOutput)
    assert_identical(loaded.sequence_attributions, out.sequence_attributions, "sequence_attributions")
    assert loaded.info == json.loads(json.dumps(out.info, default=str))
    first = out.sequence_attributions[0]
    if name == "decoder_only":
        assert first.source_attributions is None and first.target_attributions.isnan().any()
    if name == "encoder_decoder":
        assert first.target_attributions is None
    # A loaded output is a full output: it renders.
    console = Console(file=io.StringIO(), width=120)
    loaded.show(console=console)
    assert out.info["method"] in console.file.getvalue()


def test_round_trip_keeps_every_bit_of_every_dtype(tmp_path):
    special = torch.tensor(
        [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-45, 3.4028235e38, -1 / 3]
    )
    payload_nan = torch.tensor([0x7FC00123], dtype=torch.int32).view(torch.float32)  # a NaN with a payload
    seq = SequenceAttribution(
        source=["a", "b"],
        target=["<s>", "x", "y"],
        source_ids=[5, 6],
        target_ids=[1, 7, 8],
        source_attributions=torch.cat([special, payload_nan]).reshape(3, 3),
        target_attributions=torch.randn(3, 2, 4, dtype=torch.float64),
        step_scores={
            "half": torch.tensor([0.1, -65504.0], dtype=torch.float16),
            "ids": torch.tensor([3, -(2**62)], dtype=torch.int64),
        },
        attr_pos_start=1,
        attr_pos_end=3,
    )
    out = AttributionOutput([seq], info={"method": "saliency", "nested": {"x": [1, 2.5, None, "s"]}})
    out.save(str(tmp_path / "out.json"))  # str and Path both work
    loaded = seqattr.load(str(tmp_path / "out.json"))
    assert_identical(loaded.sequence_attributions, out.sequence_attributions)
    assert loaded.info == out.info


def test_bfloat16_is_saved_as_exact_float32(tmp_path):
    values = torch.tensor([[0.1, -3.0], [float("nan"), 1e30]], dtype=torch.bfloat16)
    seq = SequenceAttribution([], ["a", "b"], [], [1, 2], None, values, attr_pos_start=1, attr_pos_end=2)
    AttributionOutput([seq]).save(tmp_path / "out.json")
    loaded = seqattr.load(tmp_path / "out.json").sequence_attributions[0].target_attributions
    assert loaded.dtype == torch.float32
    assert_identical(loaded, values.float())


def test_info_with_objects_json_cannot_hold_is_saved_as_text(tmp_path):
    out = AttributionOutput([], info={"dtype": torch.float32, "path": tmp_path})
    out.save(tmp_path / "out.json")
    assert seqattr.load(tmp_path / "out.json").info == {"dtype": "torch.float32", "path": str(tmp_path)}


def _rewrite(path, **changes) -> None:
    payload = json.loads(path.read_text())
    payload.update(changes)
    path.write_text(json.dumps(payload))


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, None, "1"])
def test_another_format_version_is_refused(outputs, tmp_path, version):
    path = tmp_path / "out.json"
    outputs["decoder_only"].save(path)
    _rewrite(path, format_version=version)
    with pytest.raises(ValueError, match=rf"format_version {version}.*reads version {FORMAT_VERSION}"):
        seqattr.load(path)


def test_files_that_are_not_seqattr_outputs_are_refused(tmp_path):
    not_json = tmp_path / "broken.json"
    not_json.write_text('{"format": "seqattr", "format_ver')
    with pytest.raises(ValueError, match="not a seqattr JSON file"):
        seqattr.load(not_json)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"sequence_attributions": []}))
    with pytest.raises(ValueError, match="not a seqattr output file"):
        seqattr.load(other)
    with pytest.raises(FileNotFoundError):
        seqattr.load(tmp_path / "missing.json")
