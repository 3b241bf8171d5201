"""seqattr: explain generative language models token by token, all steps of a sequence in one pass.

Example:
    >>> import seqattr
    >>> model = seqattr.load_model("gpt2", "integrated_gradients")  # doctest: +SKIP
    >>> model = seqattr.load_model(hf_model, "integrated_gradients", tokenizer=hf_tokenizer)  # offline
    >>> out = model.attribute("Hello everyone, today", generation_args={"max_new_tokens": 3})
    >>> out.show()                              # a heatmap per example, then its generation trace
    ... # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    #0 integrated_gradients ...
"""

from seqattr import methods as _methods  # noqa: F401  (registers the built-in methods)
from seqattr import qoi  # noqa: F401  (seqattr.qoi.neuron(...): quantities of interest)
from seqattr import viz as _viz  # noqa: F401  (registers the built-in views)
from seqattr.context_attribution import ContextAttributionOutput, attribute_context
from seqattr.data import AttributionOutput, SequenceAttribution, load
from seqattr.dataset_runs.shards import load_dataset_output
from seqattr.evaluation import EvaluationResult
from seqattr.methods import list_methods
from seqattr.methods.convergence import ConvergenceWarning
from seqattr.models import AttributionModel, load_model
from seqattr.models.zero_shot import zero_shot
from seqattr.step_functions import StepFunctionArgs, list_step_functions, register_step_function
from seqattr.version import __version__

__all__ = [
    "AttributionModel",
    "AttributionOutput",
    "ContextAttributionOutput",
    "ConvergenceWarning",
    "EvaluationResult",
    "SequenceAttribution",
    "StepFunctionArgs",
    "__version__",
    "attribute_context",
    "list_methods",
    "list_step_functions",
    "load",
    "load_dataset_output",
    "load_model",
    "register_step_function",
    "zero_shot",
]
