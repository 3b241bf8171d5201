"""What is attributed (``attributed_fn``) and scored (``step_scores``) at each generation step.

A step function maps the model's next-token logits at every explained step to one number per step. All steps
of a batch arrive together (``logits`` is ``[n, steps, vocab]``), so a score costs no extra forward pass;
the contrast sequence's logits (``contrast_logits``) are computed on first use, by one forward pass shared
by every step function of the call. Parameters are keyword-only arguments of the function (e.g.
``top_p``); callers set them with ``step_scores_args={...}`` / ``attributed_fn_args={...}`` of
`AttributionModel.attribute`.

Example:
    >>> import seqattr
    >>> def logit_margin(args):            # logit of the target minus the best other logit
    ...     target = args.logits.gather(-1, args.target_ids[..., None])[..., 0]
    ...     others = args.logits.scatter(-1, args.target_ids[..., None], float("-inf"))
    ...     return target - others.max(-1).values
    >>> seqattr.register_step_function(logit_margin, "logit_margin", description="logit minus runner-up")
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from seqattr.registry import name_or_callable
from seqattr.typing import Bool, Float, Int, StepLogits, StepScores, Tensor

NO_CONTRAST = (
    "a contrastive step function needs a contrast: pass contrast_targets= (alternative outputs) "
    "and/or contrast_sources= (alternative inputs) to attribute()"
)


@dataclass
class StepFunctionArgs:
    """Everything a step function may read, for ``n`` sequences and all their explained steps at once."""

    logits: Float[Tensor, "n steps vocab"]
    """Next-token logits at each explained step (the model's output just before the token is produced)."""
    target_ids: Int[Tensor, "n steps"]
    """The token each step produced (or was forced to produce)."""
    contrast_target_ids: Int[Tensor, "n steps"] | None = None
    """The contrast token aligned with each step (None when ``attribute()`` got no contrast)."""
    contrast_forward: Callable[[], StepLogits] | None = field(default=None, repr=False)
    """Runs the contrast sequence once; read its result through ``contrast_logits``."""
    forward: Callable[..., StepLogits] | None = field(default=None, repr=False)
    """Another forward pass over the same inputs: ``forward(dropout=True)`` runs it with dropout active."""
    activations: Mapping[Any, Tensor] = field(default_factory=dict, repr=False)
    """Internal activations of the forward pass that gave ``logits``, recorded for the quantities of interest
    among the step functions (`seqattr.qoi`), by quantity: ``[n, prefix_len, *dims]`` each."""
    positions: Int[Tensor, " steps"] | None = None
    """The padded target position of each step: its logits (and a quantity of interest) come from the model's
    output at position ``p - 1``."""
    contrast_activations: Mapping[Any, Tensor] = field(default_factory=dict, repr=False)
    """The same activations in the contrast pass (filled when it runs), for contrastive quantities."""
    contrast_positions: Int[Tensor, "n steps"] | None = None
    """The padded position, in each contrast sequence, of the contrast step aligned with each step."""
    multi_label: bool = False
    """The "vocabulary" is a multi-label classifier's labels, each an independent yes/no: a label's
    probability is ``sigmoid(logit)``, not a softmax over the labels (`log_probabilities`)."""

    @functools.cached_property
    def logprobs(self) -> Float[Tensor, "n steps vocab"]:
        """``log_probabilities(logits)``, computed once: the step functions of one call that read it share
        one pass over the vocabulary."""
        return log_probabilities(self.logits, self.multi_label)

    @functools.cached_property
    def contrast_logits(self) -> Float[Tensor, "n steps vocab"]:
        """Next-token logits of the contrast sequence at the step aligned with each original step."""
        if self.contrast_forward is None:
            raise ValueError(NO_CONTRAST)
        return self.contrast_forward()


StepFunction = Callable[..., StepScores]
"""``fn(args: StepFunctionArgs, *, parameter=default, ...) -> [n, steps]``."""


@dataclass(frozen=True)
class _Entry:
    fn: StepFunction
    description: str
    parameters: tuple[str, ...]


_REGISTRY: dict[str, _Entry] = {}


def _parameters(fn: StepFunction) -> tuple[str, ...]:
    """The keyword-only parameters of ``fn``: its declared options."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: no options
        return ()
    return tuple(p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY)


def register_step_function(
    fn: StepFunction, name: str, *, description: str | None = None, overwrite: bool = False
) -> None:
    """Make ``fn`` usable by name as ``attributed_fn=`` or in ``step_scores=`` (and in the CLI).

    ``fn`` takes a `StepFunctionArgs` and returns a ``[n, steps]`` tensor; its keyword-only parameters are
    its options. A name already taken is refused unless ``overwrite=True``.

    Example:
        >>> seqattr.register_step_function(lambda a: a.logits.amax(-1), "max_logit", description="top logit")
    """
    if not callable(fn):
        raise TypeError(f"register_step_function expects a callable, got {type(fn).__name__}")
    if not name or not isinstance(name, str):
        raise ValueError("a step function needs a non-empty string name")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a step function named {name!r} exists already; pass overwrite=True to replace it")
    if description is None:
        doc_lines = (fn.__doc__ or "").strip().splitlines()
        description = doc_lines[0] if doc_lines else ""
    _REGISTRY[name] = _Entry(fn, description, _parameters(fn))


def list_step_functions() -> dict[str, str]:
    """Names of the registered step functions with a one-line description each.

    Example:
        >>> seqattr.list_step_functions()["entropy"]
        'Entropy of the next-token distribution (nats).'
    """
    return {name: entry.description for name, entry in sorted(_REGISTRY.items())}


def get_step_function(name_or_fn: str | StepFunction) -> StepFunction:
    """The step function registered under ``name_or_fn`` (a callable is returned as it is)."""
    own = ". Add your own with seqattr.register_step_function(fn, name)."
    found = name_or_callable(_REGISTRY, name_or_fn, "step function", own, sort=True)
    return found.fn if isinstance(found, _Entry) else found


def step_function_name(name_or_fn: str | StepFunction) -> str:
    if isinstance(name_or_fn, str):
        return name_or_fn
    for name, entry in _REGISTRY.items():
        if entry.fn is name_or_fn:
            return name
    return getattr(name_or_fn, "__name__", repr(name_or_fn))


def bind_step_functions(
    names: list[str | StepFunction], arguments: Mapping[str, Any] | None, argument: str
) -> list[StepFunction]:
    """The step functions with their options set from ``arguments``, a dict shared by all of them.

    Each function receives the keys it declares (keyword-only parameters); a key that none of them declares
    is refused, naming the valid ones, so a typo never passes silently.

    Example:
        >>> kl, = bind_step_functions(["kl_divergence"], {"top_k": 10}, "step_scores_args")
    """
    arguments = dict(arguments or {})
    functions = [get_step_function(name) for name in names]
    declared = [
        _REGISTRY[n].parameters if isinstance(n, str) else _parameters(f)
        for n, f in zip(names, functions, strict=True)
    ]
    unknown = sorted(set(arguments) - {p for params in declared for p in params})
    if unknown:
        valid = sorted({p for params in declared for p in params})
        listed = [step_function_name(n) for n in names]
        raise TypeError(
            f"{argument} has {', '.join(map(repr, unknown))}, which no step function of {listed} takes; "
            f"valid: {', '.join(valid) or 'none (these functions have no options)'}"
        )
    bound = []
    for fn, params in zip(functions, declared, strict=True):
        own = {key: value for key, value in arguments.items() if key in params}
        bound.append(functools.partial(fn, **own) if own else fn)
    return bound


# --- helpers -----------------------------------------------------------------------------------------


def promote(logits: Float[Tensor, "*dims"]) -> Float[Tensor, "*dims"]:
    """``logits`` in the precision a softmax needs: float32 and float64 stay as they are, half precision
    (float16, bfloat16) is computed in float32 (its softmax would lose the small probabilities).

    Example:
        >>> [promote(torch.zeros(2, dtype=d)).dtype for d in (torch.bfloat16, torch.float64)]
        [torch.float32, torch.float64]
    """
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


MULTI_LABEL_THRESHOLD = 0.5
"""A multi-label classifier predicts every label whose probability, ``sigmoid(logit)``, passes this."""


def log_probabilities(
    logits: Float[Tensor, "*dims vocab"], multi_label: bool = False
) -> Float[Tensor, "*dims vocab"]:
    """The log-probability of every entry of ``logits`` (promoted as `promote` says): ``log_softmax`` over
    the vocabulary, or for a multi-label classifier ``logsigmoid`` of each label alone (its labels are
    independent yes/no decisions, so their probabilities need not sum to 1).

    Example:
        >>> logits = torch.tensor([0.0, 2.0])
        >>> log_probabilities(logits).exp(), log_probabilities(logits, multi_label=True).exp()
        (tensor([0.1192, 0.8808]), tensor([0.5000, 0.8808]))
    """
    logits = promote(logits)
    return torch.nn.functional.logsigmoid(logits) if multi_label else torch.log_softmax(logits, dim=-1)


def bernoulli_entropy(logits: Float[Tensor, "*dims vocab"]) -> Float[Tensor, "*dims vocab"]:
    """The entropy (nats) of each label of a multi-label classifier alone, a yes/no of probability
    ``sigmoid(logit)``; their sum is the entropy of the labels' joint distribution (they are independent).

    Example:
        >>> bernoulli_entropy(torch.tensor([0.0, 20.0])).round(decimals=4)
        tensor([0.6931, 0.0000])
    """
    logits = promote(logits)
    p = torch.sigmoid(logits)
    return -(p * torch.nn.functional.logsigmoid(logits) + (1 - p) * torch.nn.functional.logsigmoid(-logits))


def _no_nucleus(name: str) -> ValueError:
    return ValueError(
        f"{name} reads one distribution over the vocabulary (a top-p nucleus); a multi-label classifier's "
        "labels are independent yes/no decisions with no such distribution: leave top_p at 1.0, or use "
        "probability / entropy"
    )


def _gather(values: Float[Tensor, "n steps vocab"], ids: Int[Tensor, "n steps"]) -> StepScores:
    return values.gather(-1, ids[..., None])[..., 0]


def _contrast_ids(args: StepFunctionArgs) -> Int[Tensor, "n steps"]:
    if args.contrast_target_ids is None:
        raise ValueError(NO_CONTRAST)
    return args.contrast_target_ids


def nucleus_mask(logits: Float[Tensor, "*dims vocab"], top_p: float) -> Bool[Tensor, "*dims vocab"]:
    """True for the smallest set of most probable tokens whose probability mass reaches ``top_p``."""
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if top_p == 1:  # everything: a float32 cumulative sum can reach 1 before the tail and drop it
        return torch.ones_like(logits, dtype=torch.bool)
    probs, order = torch.softmax(promote(logits.detach()), dim=-1).sort(dim=-1, descending=True)
    mass_before = probs.cumsum(-1) - probs
    keep_sorted = mass_before < top_p
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def top_k_mask(logits: Float[Tensor, "*dims vocab"], top_k: int) -> Bool[Tensor, "*dims vocab"]:
    """True for the ``top_k`` highest logits (all of them when ``top_k`` is 0)."""
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be a non-negative integer (0 = no top-k filtering), got {top_k!r}")
    if top_k == 0 or top_k >= logits.shape[-1]:
        return torch.ones_like(logits, dtype=torch.bool)
    index = logits.detach().topk(top_k, dim=-1).indices
    return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, index, True)


@contextlib.contextmanager
def dropout_active(model: torch.nn.Module) -> Iterator[None]:
    """Every module in train mode (in Hugging Face LMs that switches dropout on, and nothing else that
    changes the output: attention dropout reads its attention module's flag); each module's mode is restored,
    always."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.train()
        yield
    finally:
        for module, training in modes:
            module.training = training


# --- the target token's score ------------------------------------------------------------------------


def probability(args: StepFunctionArgs) -> StepScores:
    """Probability of the target token."""
    return logprob(args).exp()


def logprob(args: StepFunctionArgs) -> StepScores:
    """Log-probability of the target token."""
    return _gather(args.logprobs, args.target_ids)


def logit(args: StepFunctionArgs) -> StepScores:
    """Raw logit of the target token."""
    return _gather(args.logits, args.target_ids)


def crossentropy(args: StepFunctionArgs) -> StepScores:
    """Cross-entropy of the target token, -log p(target) (nats)."""
    return -logprob(args)


def perplexity(args: StepFunctionArgs) -> StepScores:
    """Per-step perplexity of the target token, exp(crossentropy) = 1 / p(target)."""
    return crossentropy(args).exp()


def rank(args: StepFunctionArgs) -> StepScores:
    """Rank of the target token (0 = the most probable); not differentiable."""
    logits = args.logits.detach()
    return (logits > _gather(logits, args.target_ids)[..., None]).sum(-1).float()


# --- the whole next-token distribution ---------------------------------------------------------------


def entropy(args: StepFunctionArgs) -> StepScores:
    """Entropy of the next-token distribution (nats)."""
    if args.multi_label:  # independent labels: the joint distribution's entropy is the sum of theirs
        return bernoulli_entropy(args.logits).sum(-1)
    return -torch.linalg.vecdot(args.logprobs.exp(), args.logprobs)


def top_p_size(args: StepFunctionArgs, *, top_p: float = 0.9) -> StepScores:
    """Number of most probable tokens whose mass reaches top_p (default 0.9); not differentiable."""
    if args.multi_label:
        raise _no_nucleus("top_p_size")
    return nucleus_mask(args.logits, top_p).sum(-1).float()


def mc_dropout_prob_avg(args: StepFunctionArgs, *, n_mcd_steps: int = 5, seed: int | None = 0) -> StepScores:
    """Target probability averaged over n_mcd_steps forward passes with dropout on (seed: None = global RNG).

    Each pass reruns the model on the same inputs with every module in train mode; the modes are restored
    after each pass. A fixed ``seed`` (default 0) draws the same dropout masks at every call, so fused and
    stepwise runs, and a perturbed input and its original, see the same masks; the global RNG is untouched.
    """
    if not isinstance(n_mcd_steps, int) or n_mcd_steps < 1:
        raise ValueError(f"n_mcd_steps must be a positive integer, got {n_mcd_steps!r}")
    if args.forward is None:
        raise ValueError("mc_dropout_prob_avg needs StepFunctionArgs.forward to rerun the model")
    device = args.logits.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        total = sum(
            probability(
                StepFunctionArgs(args.forward(dropout=True), args.target_ids, multi_label=args.multi_label)
            )
            for _ in range(n_mcd_steps)
        )
    return total / n_mcd_steps


# --- contrastive: the original step against its aligned contrast step --------------------------------


def contrast_prob(args: StepFunctionArgs) -> StepScores:
    """Probability of the contrast token given the contrast sequence's prefix."""
    return contrast_logprob(args).exp()


def contrast_logprob(args: StepFunctionArgs) -> StepScores:
    """Log-probability of the contrast token given the contrast sequence's prefix."""
    return _gather(log_probabilities(args.contrast_logits, args.multi_label), _contrast_ids(args))


def contrast_logits(args: StepFunctionArgs) -> StepScores:
    """Logit of the contrast token given the contrast sequence's prefix."""
    return _gather(args.contrast_logits, _contrast_ids(args))


def contrast_prob_diff(args: StepFunctionArgs) -> StepScores:
    """p(target) - p(contrast token | contrast prefix): why this token and not the contrast one."""
    return probability(args) - contrast_prob(args)


def contrast_logits_diff(args: StepFunctionArgs) -> StepScores:
    """logit(target) - logit(contrast token | contrast prefix) (Yin and Neubig 2022)."""
    return logit(args) - contrast_logits(args)


def pcxmi(args: StepFunctionArgs) -> StepScores:
    """Pointwise contextual cross-mutual information, log p(y | input) - log p(y' | contrast input) (nats)."""
    return logprob(args) - contrast_logprob(args)


def kl_divergence(args: StepFunctionArgs, *, top_k: int = 0, top_p: float = 1.0) -> StepScores:
    """KL(original || contrast) of the next-token distributions, over the original's top_k / top_p tokens.

    Both distributions are restricted to the tokens the original distribution keeps (its ``top_k`` most
    probable, 0 = all, and its ``top_p`` nucleus, 1.0 = all) and renormalised there. For a multi-label
    classifier (independent labels) it is the sum, over the kept labels, of each label's yes/no KL.
    """
    if args.multi_label:
        if top_p != 1.0:
            raise _no_nucleus("kl_divergence with top_p")
        keep = top_k_mask(args.logits, top_k)
        p, q = (log_probabilities(x, True) for x in (args.logits, args.contrast_logits))
        p_not, q_not = (log_probabilities(-x, True) for x in (args.logits, args.contrast_logits))
        per_label = p.exp() * (p - q) + p_not.exp() * (p_not - q_not)
        return (per_label * keep).sum(-1)
    keep = top_k_mask(args.logits, top_k) & nucleus_mask(args.logits, top_p)

    def restricted_logprobs(logits: Tensor) -> Tensor:
        # Masked entries are zeroed after the softmax: no -inf * 0 to poison the values or the gradients.
        logprobs = torch.log_softmax(promote(logits).masked_fill(~keep, float("-inf")), dim=-1)
        return logprobs.masked_fill(~keep, 0.0)

    original, contrast = restricted_logprobs(args.logits), restricted_logprobs(args.contrast_logits)
    return (original.exp() * keep * (original - contrast)).sum(-1)


CONTRASTIVE_STEP_FUNCTIONS = frozenset(
    {contrast_prob, contrast_logprob, contrast_logits, contrast_prob_diff, contrast_logits_diff, pcxmi,
     kl_divergence}
)  # fmt: skip
"""The built-in step functions that read the contrast sequence (``args.contrast_logits``)."""


def is_contrastive(fn: StepFunction) -> bool:
    """True for a built-in contrastive step function (bound with options or not); False for any other,
    custom functions included (whether those read ``contrast_logits`` is only known when they run).

    Example:
        >>> is_contrastive(contrast_prob_diff), is_contrastive(probability)
        (True, False)
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn in CONTRASTIVE_STEP_FUNCTIONS


for _fn in (
    probability, logprob, logit, crossentropy, perplexity, rank, entropy, top_p_size, mc_dropout_prob_avg,
    contrast_prob, contrast_logprob, contrast_logits, contrast_prob_diff, contrast_logits_diff, pcxmi,
    kl_divergence,
):  # fmt: skip
    register_step_function(_fn, _fn.__name__)
