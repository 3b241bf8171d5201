"""Zero-shot classification with an NLI model: each candidate label becomes a hypothesis about the text, and
the model's entailment of it is what gets explained (transformers' zero-shot pipeline, explained)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from seqattr.models.family import label_name

if TYPE_CHECKING:
    from seqattr.data.attribution import AttributionOutput
    from seqattr.models.attribution_model import AttributionModel


def entailment_label(model: AttributionModel) -> str:
    """The name of an NLI classifier's entailment label (the first whose name starts with "entail"), or an
    error listing its labels."""
    config = model.model.config
    names = [label_name(config, i) for i in range(config.num_labels)]
    for name in names:
        if name.lower().startswith("entail"):
            return name
    raise ValueError(
        f"zero_shot needs an NLI classifier with an entailment label; {model.model_name}'s labels are "
        f"{names}. Load an NLI model (e.g. facebook/bart-large-mnli) or name its labels in config.id2label"
    )


def zero_shot(
    model: AttributionModel,
    text: str,
    labels: Sequence[str],
    hypothesis_template: str = "This example is {}.",
    **attribute_args: Any,
) -> AttributionOutput:
    """Explain an NLI model's zero-shot classification of ``text`` among ``labels``: one example per label,
    the pair ``(text, hypothesis_template.format(label))``, explaining its entailment label.

    ``out.info["zero_shot"]`` holds the ``labels``, their ``hypotheses``, their ``scores`` (the softmax of
    the entailment logits over the labels, as transformers' zero-shot pipeline scores one label per text) and
    the ``predicted_label``. Each example keeps its entailment logit as the ``"logit"`` step score;
    ``attribute_args`` go to `AttributionModel.attribute` (``method=``, ``n_steps=``, ...).

    Example:
        >>> out = seqattr.zero_shot(nli, "the movie was wonderful.", ["good", "bad"])   # doctest: +SKIP
        >>> out.info["zero_shot"]["predicted_label"], out[0].word_attributions()[:2]    # doctest: +SKIP
        ('good', [('[CLS]', 0.0), ('the', 0.12)])
    """
    if model.family.task != "sequence-classification":
        raise ValueError(
            f"zero_shot runs on an NLI sequence classifier; this model is a {model.family} model. Load a "
            "*ForSequenceClassification NLI model"
        )
    if not isinstance(text, str) or not text.strip():
        raise ValueError("zero_shot's text must be a non-empty string (the text to classify)")
    labels = [labels] if isinstance(labels, str) else list(labels)
    if not labels or not all(isinstance(label, str) and label.strip() for label in labels):
        raise ValueError(f"zero_shot's labels must be a non-empty list of non-empty strings, got {labels!r}")
    if "{}" not in hypothesis_template:
        raise ValueError(
            f"hypothesis_template must hold '{{}}' where the label goes, e.g. 'This example is {{}}.'; got "
            f"{hypothesis_template!r}"
        )
    for name in ("input_texts", "target", "generated_texts"):
        if name in attribute_args:
            raise TypeError(f"zero_shot builds {name} from the text and the labels; do not pass it")
    entailment = entailment_label(model)
    hypotheses = [hypothesis_template.format(label) for label in labels]
    step_scores = attribute_args.pop("step_scores", ())
    step_scores = (
        [step_scores] if isinstance(step_scores, str) or callable(step_scores) else list(step_scores)
    )
    if "logit" not in step_scores:
        step_scores.append("logit")
    out = model.attribute(
        [(text, hypothesis) for hypothesis in hypotheses],
        target=[entailment] * len(labels),
        step_scores=step_scores,
        **attribute_args,
    )
    logits = torch.stack([seq.step_scores["logit"][0] for seq in out]).double()
    scores = logits.softmax(0)
    out.info["zero_shot"] = {
        "labels": labels,
        "hypotheses": hypotheses,
        "hypothesis_template": hypothesis_template,
        "entailment_label": entailment,
        "scores": scores.tolist(),
        "predicted_label": labels[int(scores.argmax())],
    }
    return out
