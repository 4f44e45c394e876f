"""Run directories on disk, shaped like the ones `finetune train` writes (modelled on a real quickstart run's
metrics.json, recipe.yaml and checkpoints; trimmed where `finetune runs`/`compare` read nothing)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import yaml

# The quickstart (recipes/quickstart.yaml, CPU): validation loss at each validation, step 0 = the base model.
EVAL_CURVE = [
    (0, 5.8745),
    (8, 5.058),
    (16, 4.6884),
    (24, 4.6108),
    (32, 4.5328),
    (40, 4.4063),
    (48, 4.3043),
    (56, 4.2415),
    (64, 4.1881),
    (72, 4.1563),
    (80, 4.1279),
    (88, 4.1053),
    (96, 4.0944),
    (104, 4.0912),
    (112, 4.0907),
    (117, 4.0907),
]
TRAIN_CURVE = [(5, 5.7631), (10, 5.1768), (15, 4.7381), (20, 4.6534), (25, 4.61), (30, 4.585)]
HASHES = {"recipe_hash": "56a4ba19" * 8, "data_hash": "2c2abf6b" * 8}


def history(eval_curve=EVAL_CURVE, train_curve=TRAIN_CURVE) -> list[dict[str, float]]:
    rows = [{"step": s, "eval_loss": v} for s, v in eval_curve] + [{"step": s, "loss": v} for s, v in train_curve]
    return sorted(rows, key=lambda row: row["step"])  # as the trainer logs them: interleaved by step


# What loop.py's _results returns (metrics.partial.json is this + the hashes)...
RESULTS: dict[str, Any] = {
    "global_step": 117,
    "epochs_completed": 3.0,
    "best_step": 112,
    "best_eval_loss": 4.090672969818115,
    "stopped_early": False,
    "planned_steps": 117,
    "eval_steps": 8,
    "effective_batch_size": 8,
    "events": [],
    "history": history(),
    "base_eval_loss": 5.874475955963135,
    "improved": True,
    "throughput": {"train_tokens": 250302, "tokens_per_s": 9613.2},
}
# ...and metrics.json adds the test score and the rest.
METRICS: dict[str, Any] = {
    **RESULTS,
    "test_loss": 4.069699452961461,
    "test_perplexity": 58.53936611461657,
    "parameters": {"trainable": 16384, "total": 123840},
    "splits": {"train": 320, "validation": 40, "test": 40},
    "data_format": "alpaca",
    "world_size": 1,
    "backend": "hf",
    "device": "cpu",
    "compute_dtype": "float32",
    "versions": {"finetune": "0.1.0", "torch": "2.13.0+cpu", "peft": "0.21.2", "trl": "1.16.0"},
    **HASHES,
    "timings": {"data_s": 2.304, "model_load_s": 0.131, "train_s": 26.037, "test_s": 0.121, "total_s": 27.718},
}
RECIPE: dict[str, Any] = {
    "model": {"name": "builtin:tiny-llama", "revision": None, "trust_remote_code": False},
    "quant": {"method": "nf4", "double_quant": True},
    "lora": {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": "all-linear"},
    "data": {"path": "/work/main/data/finance_qa.jsonl", "format": "auto", "max_length": 384},
    "train": {"epochs": 3.0, "learning_rate": 0.003, "micro_batch_size": 8, "seed": 42},
    "output": {"dir": None, "save_total_limit": 2},
    "description": "Offline CPU smoke run: tiny random Llama, 4-bit NF4 + LoRA, finance Q&A sample.",
}


def metrics(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(METRICS), **changes}


def make_run(
    folder: Path,
    name: str,
    *,
    metrics: dict[str, Any] | None = None,
    metrics_text: str | None = None,
    partial: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = RECIPE,
    checkpoints: dict[int, bool] | None = None,
    started: float | None = None,
    lock_file: bool = True,
) -> Path:
    """A run directory as finetune leaves it. `metrics`/`metrics_text`: metrics.json (a dict, or raw text);
    `partial`: metrics.partial.json; `checkpoints`: {step: sealed}; `started`: the marker's mtime."""
    run = folder / name
    (run / "checkpoints").mkdir(parents=True)
    marker = run / ".finetune-run"
    marker.write_text(json.dumps({"created_by": "finetune", **HASHES}), encoding="utf-8")
    if lock_file:  # training leaves the (unlocked) lock file behind
        (run / ".finetune-lock").touch()
    if recipe is not None:
        (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    for step, sealed in (checkpoints or {}).items():
        checkpoint = run / "checkpoints" / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "adapter_config.json").write_text("{}", encoding="utf-8")
        if sealed:
            (checkpoint / "finetune-complete.json").write_text(json.dumps(HASHES), encoding="utf-8")
    if partial is not None:
        (run / "metrics.partial.json").write_text(json.dumps({**partial, **HASHES}), encoding="utf-8")
    if metrics is not None or metrics_text is not None:
        (run / "adapter").mkdir()
        (run / "adapter" / "adapter_config.json").write_text("{}", encoding="utf-8")
        text = metrics_text if metrics_text is not None else json.dumps(metrics, indent=2)
        (run / "metrics.json").write_text(text, encoding="utf-8")
    if started is not None:
        os.utime(marker, (started, started))
    return run
