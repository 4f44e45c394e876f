"""What `finetune train` prints: the plan before the run, the summary after it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from finetune.config import Recipe
from finetune.train.plan import Plan


def print_plan(console: Console, recipe: Recipe, plan: Plan, run: Path, mode: str) -> None:
    quant = "4-bit " + recipe.quant.method.upper() if recipe.quant.method != "none" else "16/32-bit"
    lines = [
        f"[bold]model[/]     {recipe.model.name} ({quant}, LoRA r={recipe.lora.r}, targets {recipe.lora.target_modules})",
        f"[bold]data[/]      train {plan.train_rows} / validation {plan.validation_rows} / test {plan.test_rows} rows",
        f"[bold]schedule[/]  {plan.total_steps} steps ({plan.steps_per_epoch}/epoch), batch {plan.effective_batch}, "
        f"validate every {plan.eval_steps} steps"
        + (f", early stopping patience {recipe.early_stopping.patience}" if recipe.early_stopping.enabled else ""),
        f"[bold]processes[/] {plan.world_size}{' FSDP' if recipe.train.fsdp and plan.world_size > 1 else ''} (micro-batch {recipe.train.micro_batch_size} x accumulation "
        f"{recipe.train.gradient_accumulation} x {plan.world_size} = {plan.effective_batch} examples per step)",
        f"[bold]batching[/]  {mode}" + (" (steps counted over packed sequences)" if mode == "packed" else ""),
        f"[bold]output[/]    {run}",
    ]
    console.print("\n".join(lines))


def print_summary(console: Console, metrics: dict, run: Path) -> None:
    table = Table(title="finetune: run finished", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "steps", f"{metrics['global_step']} of {metrics['planned_steps']} ({metrics['epochs_completed']:.2f} epochs)"
    )
    table.add_row("stopped early", "yes" if metrics["stopped_early"] else "no")
    table.add_row("best validation loss", f"{metrics['best_eval_loss']:.4f} at step {metrics['best_step']}")
    if "test_loss" in metrics:
        table.add_row("test loss / perplexity", f"{metrics['test_loss']:.4f} / {metrics['test_perplexity']:.2f}")
    for event in metrics.get("events", []):
        details = ", ".join(f"{k} {v}" for k, v in event.items() if k not in ("type", "step"))
        table.add_row(f"{event['type']} at step {event['step']}", details)
    table.add_row("time", f"{metrics['timings']['total_s']:.1f} s")
    table.add_row("adapter", str(run / "adapter"))
    console.print(table)
