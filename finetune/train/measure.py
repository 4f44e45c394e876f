"""`vram-estimate --measure`: run a few real training steps on the GPU and compare with the estimate.

The batch is the worst case the recipe allows: micro_batch_size rows of exactly data.max_length
random tokens, every position trained. The model is resolved and the tokenizer checked by prepare(),
the model loaded and the trainer configured by the same functions `finetune train` uses, so the
measurement is of the real run.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from finetune.config import Recipe
from finetune.data.read import load_splits
from finetune.errors import UserError
from finetune.model import loading
from finetune.model.devices import compute_dtype, device_for_this_process
from finetune.train.plan import Plan
from finetune.train.prepare import prepare
from finetune.train.trainer import trainer_config

STEPS = 3  # optimizer steps: the first allocates the optimizer states, the later ones show the steady peak


def measure(recipe: Recipe) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTTrainer

    device = device_for_this_process()
    if device.type != "cuda":
        raise UserError("--measure runs real training steps and needs a CUDA GPU; none is visible here")
    prepared = prepare(recipe, load_splits(recipe.data))  # the model path and tokenizer checks of a real run
    dtype = compute_dtype(recipe.model.dtype, device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    model = loading.load_for_training(prepared.model_path, recipe, device, dtype)
    loaded = torch.cuda.memory_allocated() - baseline

    batch, length = recipe.train.micro_batch_size, recipe.data.max_length
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, model.config.vocab_size, (batch * STEPS, length), generator=generator).tolist()
    data = Dataset.from_dict({"input_ids": rows, "labels": rows})
    plan = Plan(
        train_rows=len(rows),
        validation_rows=0,
        test_rows=0,
        world_size=1,
        effective_batch=batch,
        steps_per_epoch=STEPS,
        total_steps=STEPS,
        eval_steps=STEPS,
    )
    with tempfile.TemporaryDirectory() as scratch:
        args = trainer_config(recipe, plan, Path(scratch), dtype, device)
        args = dataclasses.replace(
            args, eval_strategy="no", save_strategy="no", load_best_model_at_end=False, gradient_accumulation_steps=1
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=prepared.tokenizer)
        trainer.remove_callback(PrinterCallback)
        torch.cuda.reset_peak_memory_stats()
        trainer.train()
        torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return {
        "loaded_bytes": loaded,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated() - baseline,
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
        "device_used_bytes": total - free,  # what nvidia-smi shows for this process (alone on the GPU)
        "gpu": torch.cuda.get_device_name(),
    }


def compare(estimate, measured: dict[str, Any]) -> dict[str, Any]:
    """Estimate beside measurement, error in percent (positive: the estimate is above the measurement)."""
    weights = sum(
        c.bytes for name, c in estimate.components.items() if name.startswith("weights") or name == "lora_params"
    )
    pairs = {
        "weights + adapters (after loading)": (weights, measured["loaded_bytes"]),
        "peak allocated": (estimate.peak_allocated_bytes, measured["peak_allocated_bytes"]),
        "peak reserved": (estimate.peak_reserved_bytes, measured["peak_reserved_bytes"]),
        "total (nvidia-smi)": (estimate.total_bytes, measured["device_used_bytes"]),
    }
    return {
        name: {"estimate_bytes": est, "measured_bytes": got, "error_pct": round(100 * (est / max(got, 1) - 1), 1)}
        for name, (est, got) in pairs.items()
    }
