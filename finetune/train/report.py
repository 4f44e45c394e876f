"""What `finetune train` prints: the plan before the run, the summary after it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from finetune.config import Recipe
from finetune.run.run_dir import SAMPLES
from finetune.train.plan import Plan


def print_plan(console: Console, recipe: Recipe, plan: Plan, run: Path, mode: str) -> None:
    quant = "4-bit " + recipe.quant.method.upper() if recipe.quant.method != "none" else "16/32-bit"
    lora = f"LoRA r={recipe.lora.r}, targets {recipe.lora.target_modules}"
    if recipe.model.adapter:
        lora = f"continuing the adapter {recipe.model.adapter}"
    lines = [
        f"[bold]model[/]     {recipe.model.name} ({quant}, {lora})",
        *objective_lines(recipe),
        f"[bold]data[/]      train {plan.train_rows} / validation {plan.validation_rows} / test {plan.test_rows} rows",
        f"[bold]schedule[/]  {plan.total_steps} steps ({plan.steps_per_epoch}/epoch), batch {plan.effective_batch}, "
        f"validate every {plan.eval_steps} steps"
        + (f", early stopping patience {recipe.early_stopping.patience}" if recipe.early_stopping.enabled else ""),
        f"[bold]processes[/] {plan.world_size}{' FSDP' if recipe.train.fsdp and plan.world_size > 1 else ''} (micro-batch {recipe.train.micro_batch_size} x accumulation "
        f"{recipe.train.gradient_accumulation} x {plan.world_size} = {plan.effective_batch} examples per step)",
        f"[bold]batching[/]  {mode}" + (" (steps counted over packed sequences)" if mode == "packed" else ""),
        "[bold]samples[/]   "
        + (
            f"{recipe.train.sample_prompts} validation prompts x {recipe.train.sample_max_new_tokens} tokens "
            "at each validation -> samples.jsonl"
            if recipe.train.sample_prompts
            else "off"
        ),
        f"[bold]output[/]    {run}",
    ]
    console.print("\n".join(lines))


def objective_lines(recipe: Recipe) -> list[str]:
    """For dpo/orpo: the objective, its settings and what the reference model is."""
    objective, p = recipe.train.objective, recipe.preference
    if objective == "sft":
        return []
    if objective == "orpo":
        return [f"[bold]objective[/] orpo (beta {p.beta:g}; no reference model)"]
    if recipe.model.adapter:
        ref = f"the adapter it starts from ({recipe.model.adapter})"
    else:
        ref = "the base model (the adapter switched off)"
    pre = ", precomputed" if p.precompute_ref_log_probs else ""
    return [f"[bold]objective[/] dpo (beta {p.beta:g}, {p.loss_type}; reference: {ref}{pre})"]


def print_summary(console: Console, metrics: dict, run: Path) -> None:
    table = Table(title="finetune: run finished", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "steps", f"{metrics['global_step']} of {metrics['planned_steps']} ({metrics['epochs_completed']:.2f} epochs)"
    )
    table.add_row("stopped early", "yes" if metrics["stopped_early"] else "no")
    best = f"{metrics['best_eval_loss']:.4f} at step {metrics['best_step']}"
    base = metrics.get("base_eval_loss")
    table.add_row("validation loss", f"base {base:.4f} -> best {best}" if base is not None else f"best {best}")
    if metrics.get("improved") is False:
        table.add_row(
            "[bold red]not improved[/]",
            "[red]the best adapter is no better than the base model on the validation split: lower "
            "train.learning_rate, check the data, or train longer (exit code 3)[/]",
        )
    if "test_perplexity" in metrics:
        table.add_row("test loss / perplexity", f"{metrics['test_loss']:.4f} / {metrics['test_perplexity']:.2f}")
    elif "test_loss" in metrics:  # dpo/orpo
        table.add_row("test preference loss", f"{metrics['test_loss']:.4f}")
    if "test_preference_accuracy" in metrics:
        table.add_row(
            "test preference accuracy",
            f"base {metrics['test_base_preference_accuracy']:.4f} -> {metrics['test_preference_accuracy']:.4f} "
            f"(reward accuracy {metrics['test_reward_accuracy']:.4f}, margin {metrics['test_reward_margin']:.3f})",
        )
    if "test_accuracy" in metrics:
        table.add_row("test accuracy / macro-F1", f"{metrics['test_accuracy']:.4f} / {metrics['test_macro_f1']:.4f}")
    for event in metrics.get("events", []):
        details = ", ".join(f"{k} {v}" for k, v in event.items() if k not in ("type", "step"))
        table.add_row(f"{event['type']} at step {event['step']}", details)
    for sample in best_samples(run, metrics.get("best_step"))[:2]:
        prompt = " ".join(sample["prompt"].split())
        table.add_row(
            "sample (best)", f"{prompt[:70]}{'...' if len(prompt) > 70 else ''} -> {sample['generation'][:120]!r}"
        )
    kernels = metrics.get("kernels") or {}
    if kernels:  # model.kernels: which fused kernels ran, or why none did
        used = f"liger ({', '.join(kernels['applied'])})" if kernels["applied"] else f"none ({kernels['why']})"
        table.add_row("kernels", used)
    if "gradient_checkpointing" in metrics:  # what train.gradient_checkpointing (auto) came to, beside its effect
        on = "on" if metrics["gradient_checkpointing"] else "off"
        table.add_row("speed", f"{metrics['throughput']['tokens_per_s']:,.0f} trained tokens/s, checkpointing {on}")
    table.add_row("time", f"{metrics['timings']['total_s']:.1f} s")
    table.add_row("adapter", str(run / "adapter"))
    console.print(table)


def best_samples(run: Path, step: int | None) -> list[dict[str, Any]]:
    """The samples written at `step` (the best one), for the final summary."""
    path = run / SAMPLES
    if step is None or not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row for row in rows if row["step"] == step]
