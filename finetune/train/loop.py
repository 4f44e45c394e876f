"""The training loop, top to bottom: seed -> model -> SFTTrainer -> best adapter -> test score -> run directory.

prepared = prepare(recipe, splits)               tokenizer, tokenized splits, plan (train/prepare.py)
metrics = train(recipe, run, console, prepared)  the run itself; returns what metrics.json holds
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from finetune.config import Recipe
from finetune.errors import UserError
from finetune.model import loading
from finetune.model.devices import compute_dtype, device_for_this_process, fsdp_active, is_main_process, world_size
from finetune.run import run_dir
from finetune.run.scoring import lm_loss
from finetune.train import trainer as trainer_setup
from finetune.train.launch import all_ranks_sum
from finetune.train.plan import Plan
from finetune.train.prepare import Prepared
from finetune.vram import estimator
from finetune.vram.architectures import load_spec

PACKAGES = ("finetune", "torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "unsloth")


def preflight(recipe: Recipe, model_path: str, console: Console, force: bool, backend: str = "hf") -> None:
    """Print the VRAM estimate; on a GPU whose free memory is below it, stop with advice unless --force.

    The estimate models the hf backend on one GPU. Unsloth offloads the checkpointed activations to the
    CPU and measured about half of it (docs/vram.md), and FSDP over N GPUs divides the weights: for both
    it is an upper bound and never stops the run.
    """
    import torch

    try:
        spec = load_spec(model_path)
    except UserError as err:  # an architecture the estimator does not know: train anyway
        console.print(f"[yellow]note:[/] no VRAM estimate ({err})")
        return
    setup = estimator.setup_from_recipe(recipe)
    estimate = estimator.estimate(spec, setup, model=recipe.model.name)
    line = f"VRAM estimate: {estimate.total_bytes / estimator.GiB:.2f} GiB on the GPU (peak, as nvidia-smi shows it)"
    if not torch.cuda.is_available():
        console.print(f"{line}; no GPU here, training on the CPU")
        return
    free, _ = torch.cuda.mem_get_info()
    bounded_by = [
        name
        for name, on in (("Unsloth", backend == "unsloth"), ("FSDP", fsdp_active(recipe) and world_size() > 1))
        if on
    ]
    if bounded_by:
        line += ", an upper bound with " + " and ".join(bounded_by)
    console.print(f"{line}; {free / estimator.GiB:.2f} GiB free on {torch.cuda.get_device_name()}")
    if estimate.total_bytes > free and not force and not bounded_by:
        tips = "; ".join(estimator.advise(spec, setup, free)[:3])
        raise UserError(
            f"the run needs about {estimate.total_bytes / estimator.GiB:.1f} GiB but {free / estimator.GiB:.1f} GiB are free: "
            f"{tips} (or pass --force to try anyway)"
        )


def train(
    recipe: Recipe,
    run: Path,
    console: Console,
    prepared: Prepared,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    force: bool = False,
    backend: str = "hf",
    callbacks: tuple = (),
) -> dict[str, Any]:
    """Fine-tune, keep the best adapter, score the test split, and write the run directory.

    `prepared` comes from train/prepare.py (tokenizer, tokenized splits, plan); `backend` from
    loading.choose_backend, called before transformers is imported; `callbacks` are extra
    TrainerCallbacks (the throughput benchmark times the steps with one).
    """
    from transformers import EarlyStoppingCallback, PrinterCallback, set_seed

    from finetune.train.callbacks import RichProgress
    from finetune.train.checkpoints import MarkComplete, StopOnSignal, check_resumable
    from finetune.train.spike_guard import SpikeGuard

    started = time.perf_counter()
    timings: dict[str, float] = {}
    trainer_setup.check_loss_kernel()
    set_seed(recipe.train.seed)
    splits, plan, datasets, tokenizer = prepared.splits, prepared.plan, prepared.datasets, prepared.tokenizer
    device = device_for_this_process()  # before the preflight: each rank checks its own GPU
    preflight(recipe, prepared.model_path, console, force, backend)
    timings["data_s"] = prepared.seconds
    for note in prepared.notes:
        console.print(f"[yellow]note:[/] {note}")

    # Run directory: a fresh one, or the checkpoint of this very recipe and data when resuming.
    fingerprint = {"recipe_hash": recipe.fingerprint(), "data_hash": splits.data_hash}
    events: list[dict[str, Any]] = []
    checkpoint = None
    if resume:
        checkpoint = check_resumable(run, fingerprint)
        events += json.loads((checkpoint / "finetune-complete.json").read_text()).get("events", [])
        events.append({"type": "resume", "step": int(checkpoint.name.rsplit("-", 1)[1]), "checkpoint": checkpoint.name})
    is_main = is_main_process()  # rank 0 alone writes the run directory
    if is_main and not resume:
        run_dir.prepare(run, overwrite)
    if is_main:
        run_dir.write_recipe(run, recipe.resolved_dict())

    # Model: the frozen base (4-bit unless quant.method is none) with LoRA adapters.
    t0 = time.perf_counter()
    dtype = compute_dtype(recipe.model.dtype, device)
    set_seed(recipe.train.seed)  # right before the adapter's random init: nothing earlier can shift it
    model = loading.load_for_training(prepared.model_path, recipe, device, dtype, backend)
    if is_main and recipe.lora.init in ("pissa", "olora") and not resume:
        run_dir.save_initial_adapter(run, model)
    trainable, total = model.get_nb_trainable_parameters()
    timings["model_load_s"] = time.perf_counter() - t0

    # Trainer: evaluation and checkpoints share one interval, so the best checkpoint always exists.
    trainer = trainer_setup.trainer_class()(
        model=model,
        args=trainer_setup.sft_config(recipe, plan, run, dtype, device),
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"],
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)  # raw log dicts on stdout; the progress bar replaces them
    stopper = None
    if recipe.early_stopping.enabled:
        stopper = EarlyStoppingCallback(recipe.early_stopping.patience, recipe.early_stopping.min_delta)
        trainer.add_callback(stopper)
    if recipe.spike_guard.enabled:
        trainer.spike_guard = SpikeGuard(recipe.spike_guard, events)
        trainer.add_callback(trainer.spike_guard)
    trainer.add_callback(MarkComplete(fingerprint, events, sharded=trainer.is_fsdp_enabled))
    signals = StopOnSignal()
    trainer.add_callback(signals)
    trainer.add_callback(RichProgress(console, enabled=progress))
    for callback in callbacks:
        trainer.add_callback(callback)

    t0 = time.perf_counter()
    signals.install()
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        signals.uninstall()
    timings["train_s"] = time.perf_counter() - t0

    results = _results(trainer, plan, stopper, recipe, events)
    results["throughput"] = _throughput(all_ranks_sum(trainer.trained_tokens, device), timings["train_s"], device)
    guard = trainer.spike_guard
    if signals.received is not None or (guard is not None and guard.diverged):
        # Stopped before the end: the last checkpoint and the partial metrics are on disk; no adapter
        # is written, so nothing looks finished.
        if signals.received is not None:
            events.append({"type": "interrupted", "step": trainer.state.global_step, "signal": signals.received})
        if is_main:
            run_dir.write_json(run / "metrics.partial.json", {**results, **fingerprint})
        if signals.received is not None:
            where = f"interrupted at step {trainer.state.global_step}"
            if trainer.is_fsdp_enabled:  # see checkpoints.check_resumable
                raise Stopped(signals.exit_code, f"{where}; train.fsdp runs cannot be resumed yet")
            raise Stopped(signals.exit_code, f"{where}; checkpoint saved", resumable=True)
        raise Stopped(
            1,
            f"training diverged: loss spikes persisted after {guard.rollbacks} rollbacks with lower learning rates "
            f"(see {run / 'metrics.partial.json'} events); lower train.learning_rate or check the data",
        )

    # The trainer has reloaded the best checkpoint (load_best_model_at_end): that is the adapter we
    # keep. Saved before the test scoring, so a failure there cannot cost the adapter. Under FSDP
    # every rank takes part in gathering the full weights; rank 0 writes them.
    gathered = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
    if is_main:
        run_dir.save_adapter(run, trainer.accelerator.unwrap_model(trainer.model), tokenizer, state_dict=gathered)
    trainer.optimizer = None  # its states are not needed any more; free them before scoring
    if datasets.get("test") is not None:
        # Scored by the same function as `finetune eval` (token-weighted mean over answer tokens), so
        # the two report the same number for the same adapter.
        t0 = time.perf_counter()
        trainer.model.eval()
        test = datasets["test"]
        batch = recipe.train.eval_batch_size or recipe.train.micro_batch_size
        scored = lm_loss(trainer.model, list(zip(test["input_ids"], test["labels"], strict=False)), batch)
        results["test_loss"], results["test_perplexity"] = scored["loss"], scored["perplexity"]
        timings["test_s"] = time.perf_counter() - t0

    if is_main:
        run_dir.plot_loss(results["history"], results["best_step"], run / "loss.png")
        timings["total_s"] = time.perf_counter() - started
        metrics = {
            **results,
            "parameters": {"trainable": trainable, "total": total},
            "splits": splits.sizes(),
            "data_format": splits.format,
            "tokenization": {name: asdict(report) for name, report in prepared.reports.items()},
            "world_size": plan.world_size,
            "backend": backend,
            "device": str(device),
            "compute_dtype": str(dtype).removeprefix("torch."),
            "versions": package_versions(),
            **fingerprint,
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }
        (run / "metrics.partial.json").unlink(missing_ok=True)
        run_dir.write_json(run / run_dir.METRICS, metrics)  # last: its presence marks a finished run
        return metrics
    return results


class Stopped(Exception):
    """Training ended early on purpose (signal, divergence): an exit code and one line for the user."""

    def __init__(self, exit_code: int, message: str, resumable: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.resumable = resumable


def _results(trainer, plan: Plan, stopper, recipe: Recipe, events: list[dict[str, Any]]) -> dict[str, Any]:
    from finetune.train.callbacks import loss_history

    state = trainer.state
    return {
        "global_step": state.global_step,
        "epochs_completed": round(float(state.epoch or 0), 4),
        "best_step": state.best_global_step,
        "best_eval_loss": state.best_metric,
        "stopped_early": bool(stopper and stopper.early_stopping_patience_counter >= recipe.early_stopping.patience),
        "planned_steps": plan.total_steps,
        "eval_steps": plan.eval_steps,
        "effective_batch_size": plan.effective_batch,
        "history": loss_history(state.log_history),
        "events": events,
    }


def _throughput(tokens: int, train_s: float, device) -> dict[str, float]:
    """Trained (non-padding) tokens per second, all processes together, and, on a GPU, peak memory."""
    import torch

    result = {"train_tokens": tokens, "tokens_per_s": round(tokens / max(train_s, 1e-9), 1)}
    if device.type == "cuda":
        result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    return result


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions
