"""The two result classes have the same methods (issue 10): what applies to one example applies to an output
of many, written once (`Operations` in seqattr/data/attribution.py, `Views` in seqattr/data/views.py)."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch

from conftest import attribution_model
from seqattr import AttributionOutput, SequenceAttribution

ONLY_ON_OUTPUT = {"merge", "save", "predicted_label", "predicted_labels"}
"""An output's own: combining outputs, the file format (which holds an output), and a classifier's
prediction (read with the run's task, which the output's info holds)."""
ONLY_ON_SEQUENCE = {"steps", "num_steps", "attribution_shape", "extra_dims"}
"""One example's own: its steps and the shape of its tensors."""


def public_methods(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls) if not name.startswith("_")} - {
        f for f in getattr(cls, "__dataclass_fields__", {})
    }


@functools.cache
def output() -> AttributionOutput:
    model = attribution_model("gpt2", "saliency")
    return model.attribute(["The cat sat", "A dog"], ["The cat sat on the mat", "A dog ran"])


def test_both_result_classes_have_the_same_methods():
    output_methods = public_methods(AttributionOutput) - ONLY_ON_OUTPUT
    sequence_methods = public_methods(SequenceAttribution) - ONLY_ON_SEQUENCE
    assert output_methods == sequence_methods
    for name in ("__sub__", "__getitem__", "_repr_html_", "__rich__"):
        assert hasattr(AttributionOutput, name) and hasattr(SequenceAttribution, name)


def test_scores_dicts_agree_between_the_classes():
    out = output()
    per_example = [seq.get_scores_dict() for seq in out]
    assert out.get_scores_dicts() == per_example
    assert [out.get_scores_dict(i) for i in range(len(out))] == per_example
    assert out.get_scores_dict() == per_example[0]  # the first, as plot(example=0)
    assert out[1].get_scores_dicts() == [per_example[1]]  # one example: a list of one
    with pytest.raises(IndexError, match=r"example=2 is out of range: this holds 2 example\(s\)"):
        out.get_scores_dict(2)


def test_tensor_methods_apply_to_every_example_of_an_output():
    out = output()
    copied = out.map_tensors(torch.clone)
    assert all(
        new.target_attributions is not old.target_attributions for new, old in zip(copied, out, strict=True)
    )
    assert copied.info == out.info and "aggregations" not in copied.info  # a copy, not an aggregation
    assert copied.allclose(out) and out[0].allclose(copied[0])
    assert not out.allclose(out[:1]), "a different number of examples"
    assert not out.allclose(out.map_tensors(lambda t: t + 1 if t.is_floating_point() else t))
    aggregated = out.aggregate("word").normalize()
    assert aggregated.info["aggregations"] == ["aggregate(word)", "normalize"]
    assert all(aggregated[i].allclose(out[i].aggregate("word").normalize()) for i in range(len(out)))
