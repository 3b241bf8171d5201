"""Deterministic training of a task's tiny model, its accuracy, and the cache of trained models.

Training is plain teacher-forced cross-entropy on the answer tokens (the whole target of an encoder-decoder
example, the continuation of a decoder-only one) with AdamW, on batches drawn from the task's sampler with a
fixed seed, one CPU thread: the same recipe gives the same weights. A trained model is saved under
``cache_dir()/ground_truth/<task>-<hash of the recipe>`` (``$SEQATTR_CACHE``, else ``~/.cache/seqattr``), so
the training runs once per machine and recipe (each task trains in well under a minute).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seqattr.ground_truth.task import TaskExample, TaskRecipe
from seqattr.ground_truth.tokenizer import word_tokenizer
from seqattr.models.default_model import cache_dir

TRAINING_VERSION = 1
"""Part of every cache folder's name: raise it when a change to this module changes the trained weights."""


def task_folder(recipe: TaskRecipe) -> Path:
    """The cache folder of ``recipe``'s trained model.

    Example:
        >>> from seqattr.ground_truth.tasks import TASKS
        >>> task_folder(TASKS["copying"]).parent.name
        'ground_truth'
    """
    digest = hashlib.sha256(f"{TRAINING_VERSION}:{recipe.fingerprint()}".encode()).hexdigest()[:12]
    return cache_dir() / "ground_truth" / f"{recipe.name}-{digest}"


def _batch(
    recipe: TaskRecipe, tokenizer: PreTrainedTokenizerBase, examples: list[TaskExample]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Model inputs and labels (-100 where no loss is taken) of a batch of examples."""
    if recipe.encoder_decoder:
        inputs = tokenizer([e.input_text for e in examples], padding=True, return_tensors="pt")
        labels = tokenizer(text_target=[e.target_text for e in examples], padding=True, return_tensors="pt")
        ids = labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100)
        return dict(inputs), ids
    inputs = tokenizer([e.target_text for e in examples], padding=True, return_tensors="pt")
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    for row, example in enumerate(examples):
        labels[row, : len(tokenizer(example.input_text)["input_ids"])] = -100  # no loss on the prompt
    return dict(inputs), labels


def build_model(recipe: TaskRecipe, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The untrained model of ``recipe`` (seeded by the recipe's training seed)."""
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if recipe.encoder_decoder:
        ids.update(decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=None)
    model_class = getattr(transformers, recipe.model_class)
    config = model_class.config_class(**ids, **recipe.config)
    torch.manual_seed(recipe.train_seed)
    return model_class(config)


def train(recipe: TaskRecipe) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Train ``recipe``'s model from scratch (deterministic: one thread, fixed seeds; the global RNG and
    thread count are restored afterwards)."""
    tokenizer = word_tokenizer(recipe.words, append_eos=recipe.encoder_decoder)
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(1)
        try:
            model = build_model(recipe, tokenizer)
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
            rng = random.Random(recipe.train_seed)
            for _ in range(recipe.steps):
                inputs, labels = _batch(
                    recipe, tokenizer, [recipe.sample(rng) for _ in range(recipe.batch_size)]
                )
                loss = model(**inputs, labels=labels).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        finally:
            torch.set_num_threads(threads)
    model.eval()
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    if recipe.encoder_decoder:
        generation.decoder_start_token_id = tokenizer.eos_token_id
    return model, tokenizer


@torch.no_grad()
def accuracy(
    recipe: TaskRecipe,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[TaskExample],
) -> float:
    """The share of the examples' answer tokens that the model predicts (greedy, teacher-forced)."""
    inputs, labels = _batch(recipe, tokenizer, examples)
    logits = model(**inputs, labels=labels.clamp(min=0) if recipe.encoder_decoder else None).logits
    if not recipe.encoder_decoder:  # the logits at position p predict the token at p + 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    scored = labels != -100
    return ((logits.argmax(-1) == labels) & scored).sum().item() / scored.sum().item()


def load_or_train(
    recipe: TaskRecipe, retrain: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Path]:
    """The trained model of ``recipe`` from the cache, training and caching it first if needed."""
    folder = task_folder(recipe)
    model_class = getattr(transformers, recipe.model_class)
    if not retrain and (folder / "recipe.json").is_file():
        tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
        return model_class.from_pretrained(str(folder)).eval(), tokenizer, folder
    model, tokenizer = train(recipe)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        # Written last: its presence marks a complete folder.
        (tmp / "recipe.json").write_text(json.dumps({"task": recipe.name, "recipe": recipe.fingerprint()}))
        if folder.exists() and (retrain or not (folder / "recipe.json").is_file()):
            shutil.rmtree(folder)  # retraining, or a folder an interrupted older run left incomplete
        try:
            os.replace(tmp, folder)  # atomic
        except OSError:  # a concurrent process (another test worker) cached the same recipe first: the same
            if not (folder / "recipe.json").is_file():  # weights (training is deterministic), so keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tokenizer, folder
