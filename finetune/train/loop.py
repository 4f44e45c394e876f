"""The training loop, top to bottom: seed -> model -> SFTTrainer -> best adapter -> test score -> run directory.

prepared = prepare(recipe, splits)               tokenizer, tokenized splits, plan (train/prepare.py)
metrics = train(recipe, run, console, prepared)  the run itself; returns what metrics.json holds
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from finetune.config import Recipe
from finetune.model import loading
from finetune.model.devices import compute_dtype, device_for_this_process, is_main_process
from finetune.run import card, run_dir
from finetune.run.scoring import classification_metrics, lm_loss, rank_labels
from finetune.train import trainer as trainer_setup
from finetune.train.launch import all_ranks_sum
from finetune.train.plan import Plan
from finetune.train.preflight import preflight
from finetune.train.prepare import Prepared
from finetune.train.resume import ResumePoint

PACKAGES = ("finetune", "torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "unsloth")
PACKAGES += ("liger-kernel",)  # model.kernels: liger, optional like unsloth


def train(
    recipe: Recipe,
    run: Path,
    console: Console,
    prepared: Prepared,
    *,
    overwrite: bool = False,
    resume_point: ResumePoint | None = None,
    progress: bool = True,
    force: bool = False,
    backend: str = "hf",
    callbacks: tuple = (),
    inputs: tuple[Path, ...] = (),
) -> dict[str, Any]:
    """Fine-tune, keep the best adapter, score the test split, and write the run directory.

    `prepared` comes from train/prepare.py (tokenizer, tokenized splits, plan); `backend` from
    loading.choose_backend, called before transformers is imported; `callbacks` are extra
    TrainerCallbacks (the throughput benchmark times the steps with one); `inputs` are the run's
    input files, which --overwrite must never delete; `resume_point` is where --resume continues
    (train/resume.py), None for a new run.
    """
    from transformers import set_seed

    started = time.perf_counter()
    trainer_setup.check_loss_kernel()
    set_seed(recipe.train.seed)
    device = device_for_this_process()  # before the preflight: each rank checks its own GPU
    # auto settings decided (train.gradient_checkpointing); the run's recipe.yaml and fingerprint keep the user's
    decided = preflight(recipe, prepared.model_path, console, force, backend)
    for note in prepared.notes:
        console.print(f"[yellow]note:[/] {note}")

    # Run directory: a fresh one, or the checkpoint of this very recipe and data when resuming.
    fingerprint = {"recipe_hash": recipe.fingerprint(), "data_hash": prepared.splits.data_hash}
    point = resume_point
    is_main = is_main_process()  # rank 0 alone writes the run directory
    held = None
    if is_main:
        if point is None:
            run_dir.prepare(run, overwrite, fingerprint, inputs)
        held = run_dir.lock(run)  # before touching a run to resume: no other process may be in it
        if point is not None:
            run_dir.remove_staging(run)  # a kill while the adapter was being written leaves its staging folder
            if point.checkpoint is None:  # died before its first checkpoint: start over in the same folder
                run_dir.reset(run)
    try:
        if is_main:
            run_dir.write_recipe(run, recipe.resolved_dict())
        return _fit(decided, run, console, prepared, device, backend, progress, callbacks, fingerprint, point, started)
    finally:
        if held is not None:
            held.close()


def _fit(recipe, run, console, prepared, device, backend, progress, callbacks, fingerprint, point, started):
    from transformers import EarlyStoppingCallback, PrinterCallback, TrainerState, set_seed

    from finetune.train.callbacks import RichProgress, TrainLog
    from finetune.train.checkpoints import MarkComplete, StopOnSignal
    from finetune.train.samples import SampleWriter, sample_prompts
    from finetune.train.spike_guard import SpikeGuard

    splits, plan, datasets, tokenizer = prepared.splits, prepared.plan, prepared.datasets, prepared.tokenizer
    timings: dict[str, float] = {"data_s": prepared.seconds}
    is_main = is_main_process()
    seal = point.seal if point else {}
    events: list[dict[str, Any]] = list(seal.get("events", []))
    if point is not None:
        step = seal.get("global_step", 0)
        events.append(
            {"type": "resume", "step": step, "checkpoint": point.checkpoint.name if point.checkpoint else None}
        )

    # Model: the frozen base (4-bit unless quant.method is none) with LoRA adapters.
    t0 = time.perf_counter()
    dtype = compute_dtype(recipe.model.dtype, device)
    set_seed(recipe.train.seed)  # right before the adapter's random init: nothing earlier can shift it
    model = loading.load_for_training(prepared.model_path, recipe, device, dtype, backend)
    if is_main and recipe.lora.init in ("pissa", "olora") and point is None:
        run_dir.save_initial_adapter(run, model)
    trainable, total = model.get_nb_trainable_parameters()
    timings["model_load_s"] = time.perf_counter() - t0

    # Trainer: evaluation and checkpoints share one interval, so the best checkpoint always exists.
    objective = recipe.train.objective
    trainer = trainer_setup.trainer_class(objective)(
        model=model,
        args=trainer_setup.trainer_config(recipe, plan, run, dtype, device),
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
        if objective == "dpo":  # the loss of a policy equal to its reference is ln 2 (spike_judge.py)
            guard = SpikeGuard(recipe.spike_guard, events, floor=math.log(2))
        else:  # collapse: the loss of a model that predicts nothing; ORPO adds its odds term at even odds
            even_odds = recipe.preference.beta * math.log(2) if objective == "orpo" else 0.0
            guard = SpikeGuard(recipe.spike_guard, events, uniform_loss=math.log(model.config.vocab_size) + even_odds)
        trainer.spike_guard = guard
        trainer.add_callback(trainer.spike_guard)
    sealer = MarkComplete(fingerprint, events, sharded=trainer.is_fsdp_enabled, stopper=stopper)
    trainer.add_callback(sealer)
    signals = StopOnSignal()
    trainer.add_callback(signals)

    def count() -> int:  # read at each log, not each step: it syncs with the GPU
        return int(trainer.trained_tokens)

    live = progress and console.is_terminal  # a bar on a terminal; plain lines in files and pipes
    trainer.add_callback(RichProgress(console, enabled=live, tokens=count))
    if is_main:
        trainer.add_callback(TrainLog(run / run_dir.TRAIN_LOG, echo=progress and not live, tokens=count))
    t = recipe.train
    if t.sample_prompts and not trainer.is_fsdp_enabled:  # FSDP: every rank would have to take part
        prompts = sample_prompts(splits.validation, t.sample_prompts)
        sampler = SampleWriter(prompts, tokenizer, run, t.sample_max_new_tokens, recipe.data.max_length, t.report_to)
        sampler.handler = trainer.callback_handler
        trainer.add_callback(sampler)
    for callback in callbacks:
        trainer.add_callback(callback)

    # The base model's validation loss, before the first step: a run must beat it to count as improved.
    # (Under FSDP evaluating before the trainer has wrapped the model is not supported: not measured.)
    if point is not None:
        base_eval_loss = seal.get("base_eval_loss")
    elif trainer.is_fsdp_enabled:
        base_eval_loss = None
    else:
        base_eval_loss = trainer.evaluate()["eval_loss"]
    sealer.extra["base_eval_loss"] = base_eval_loss

    t0 = time.perf_counter()
    if point is not None and point.checkpoint is not None and seal.get("final"):
        # Training had ended at that checkpoint; the process died writing the adapter or the metrics.
        # Reload its state and the best checkpoint's weights, and write only what is missing.
        trainer.state = TrainerState.load_from_json(str(point.checkpoint / "trainer_state.json"))
        best = Path(trainer.state.best_model_checkpoint or point.checkpoint)
        trainer._load_from_checkpoint(str(run / "checkpoints" / best.name))
        stopped_early = bool(seal.get("stopped_early"))
    else:
        signals.install()
        try:
            trainer.train(resume_from_checkpoint=str(point.checkpoint) if point and point.checkpoint else None)
        finally:
            signals.uninstall()
        stopped_early = sealer.stopped_early()
    timings["train_s"] = time.perf_counter() - t0

    results = _results(trainer, plan, stopped_early, events)
    results["base_eval_loss"] = base_eval_loss
    if base_eval_loss is not None:  # trainer.train() starts a fresh log: the base row goes first by hand
        results["history"].insert(0, {"step": 0, "eval_loss": base_eval_loss})
    best = results["best_eval_loss"]
    results["improved"] = None if base_eval_loss is None or best is None else bool(best < base_eval_loss)
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
        collapsed = any(event["type"] == "collapse" for event in events)
        what = "the model collapsed to predicting nothing" if collapsed else "loss spikes persisted"
        raise Stopped(
            1,
            f"training diverged: {what} after {guard.rollbacks} rollbacks with lower learning rates "
            f"(see {run / 'metrics.partial.json'} events); lower train.learning_rate or check the data",
        )

    # The trainer has reloaded the best checkpoint (load_best_model_at_end): that is the adapter we
    # keep. Saved before the test scoring, so a failure there cannot cost the adapter. Under FSDP
    # every rank takes part in gathering the full weights; rank 0 writes them.
    gathered = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
    if is_main:
        run_dir.save_adapter(run, trainer.accelerator.unwrap_model(trainer.model), tokenizer, state_dict=gathered)
    trainer.optimizer = None  # its states are not needed any more; free them before scoring
    if datasets.get("test") is not None and objective != "sft":
        t0 = time.perf_counter()
        results.update(_test_preferences(trainer, recipe, datasets["test"]))
        timings["test_s"] = time.perf_counter() - t0
    elif datasets.get("test") is not None:
        # Scored by the same function as `finetune eval` (token-weighted mean over answer tokens), so
        # the two report the same number for the same adapter.
        t0 = time.perf_counter()
        trainer.model.eval()
        test = datasets["test"]
        batch = recipe.train.eval_batch_size or recipe.train.micro_batch_size
        scored = lm_loss(trainer.model, list(zip(test["input_ids"], test["labels"], strict=True)), batch)
        results["test_loss"], results["test_perplexity"] = scored["loss"], scored["perplexity"]
        if splits.format == "classification" and splits.labels:  # ranked as `finetune eval` ranks them
            examples, labels = splits.test, splits.labels
            ranked = rank_labels(trainer.model, tokenizer, examples, labels, recipe.data.max_length, batch)
            predicted = [max(labels, key=lambda label, s=s: s[label]) for s in ranked]
            scores = classification_metrics([e.label for e in examples], predicted, labels)
            results["test_accuracy"], results["test_macro_f1"] = scores["accuracy"], scores["macro"]["f1"]
        timings["test_s"] = time.perf_counter() - t0

    if not is_main:
        return results
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
        "kernels": model.finetune_kernels,  # model.kernels: requested, used, applied (model/kernels.py)
        "gradient_checkpointing": recipe.train.gradient_checkpointing,  # auto decided (train/preflight.py)
        "device": str(device),
        "compute_dtype": str(dtype).removeprefix("torch."),
        "versions": package_versions(),
        **fingerprint,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    card.write_card(run, recipe, metrics, run / run_dir.ADAPTER)  # replaces peft's template README
    (run / "metrics.partial.json").unlink(missing_ok=True)
    run_dir.write_json(run / run_dir.METRICS, metrics)  # last: its presence marks a finished run
    return metrics


class Stopped(Exception):
    """Training ended early on purpose (signal, divergence): an exit code and one line for the user."""

    def __init__(self, exit_code: int, message: str, resumable: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.resumable = resumable


def _results(trainer, plan: Plan, stopped_early: bool, events: list[dict[str, Any]]) -> dict[str, Any]:
    from finetune.train.callbacks import loss_history

    state = trainer.state
    return {
        "global_step": state.global_step,
        "epochs_completed": round(float(state.epoch or 0), 4),
        "best_step": state.best_global_step,
        "best_eval_loss": state.best_metric,
        "stopped_early": stopped_early,
        "planned_steps": plan.total_steps,
        "eval_steps": plan.eval_steps,
        "effective_batch_size": plan.effective_batch,
        "history": loss_history(state.log_history),
        "events": events,
    }


def _test_preferences(trainer, recipe: Recipe, test) -> dict[str, Any]:
    """The held-out pairs: the preference loss, and preference/reward accuracy of the tuned model and the base."""
    from finetune.run.preference import score_pairs

    scored_by_trainer = test.map(trainer.tokenize_row) if hasattr(trainer, "tokenize_row") else test  # ORPO's columns
    handler = trainer.callback_handler
    callbacks, handler.callbacks = handler.callbacks, []  # not a validation: no samples, log lines or stopping
    try:
        test_loss = trainer.evaluate(scored_by_trainer, metric_key_prefix="test")["test_loss"]
    finally:
        handler.callbacks = callbacks
    trainer.model.eval()
    triples = list(zip(test["prompt_ids"], test["chosen_ids"], test["rejected_ids"], strict=True))
    batch = recipe.train.eval_batch_size or recipe.train.micro_batch_size
    scored, _ = score_pairs(trainer.model, triples, recipe.preference.beta, batch, compare_base=True)
    return {"test_loss": test_loss, **{f"test_{k}": v for k, v in scored.items() if k != "pairs"}}


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
