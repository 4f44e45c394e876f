"""Open a finished run for inference: its recipe, metrics, base model + adapter, tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.config import Recipe, load_recipe
from finetune.data.read import load_splits
from finetune.data.rows import classification_prompt
from finetune.data.tokenize import check_special_tokens
from finetune.errors import UserError
from finetune.model import loading
from finetune.model.devices import compute_dtype, device_for_this_process
from finetune.run import run_dir


@dataclass
class TrainedRun:
    path: Path
    recipe: Recipe
    metrics: dict[str, Any]


def open_run(path: Path) -> TrainedRun:
    """A run directory that `finetune train` finished, or a UserError saying what is missing."""
    if not path.is_dir():
        raise UserError(f"{path}: no such run directory")
    if not run_dir.is_finished(path):
        raise UserError(
            f"{path}: not a finished run (needs metrics.json and adapter/adapter_config.json); "
            "train it with `finetune train` or point at a finished run"
        )
    return TrainedRun(path, load_recipe(path / "recipe.yaml"), run_dir.read_metrics(path))


def prompt_builder(run: TrainedRun) -> Callable[[str], str]:
    """What the user types -> the user turn as training phrased it: a classification run wraps the text
    in its template with its label set, as `finetune eval` does; any other run takes the text as is."""
    if run.metrics.get("data_format") != "classification":
        return lambda text: text
    labels = load_splits(run.recipe.data).labels  # the run's own label set, in its order
    spec = run.recipe.data.classification
    return lambda text: classification_prompt(spec, labels, text)


def load_model(run: TrainedRun):
    """(model, tokenizer): the base loaded as in training (4-bit unless quant: none) with the adapter on top.

    The adapter can be switched off with `model.disable_adapter()` to score the base model on the same
    weights in memory (`finetune eval --compare-base`).
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    device = device_for_this_process()
    dtype = compute_dtype(run.recipe.model.dtype, device)
    base_path = loading.resolve_model_path(run.recipe.model)
    base = loading.load_base_model(base_path, run.recipe, device, dtype, for_training=False)
    model = PeftModel.from_pretrained(base, run.path / run_dir.ADAPTER)
    model.eval()
    model.config.use_cache = True
    tokenizer = AutoTokenizer.from_pretrained(run.path / run_dir.ADAPTER)  # carries the training chat template
    check_special_tokens(tokenizer)  # the same pad choice as in training
    return model, tokenizer
