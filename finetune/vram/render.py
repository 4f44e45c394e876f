"""The estimate as a rich table: one row per component, with the reason beside each figure."""

from __future__ import annotations

from typing import Any

from finetune.vram.estimator import CHECKPOINTING_OFF_SHARE, GPUS, Estimate, GiB, auto_checkpointing, fits


def render_table(
    est: Estimate, console: Any, gpus: dict[str, float] | None = None, unchecked: Estimate | None = None
) -> None:
    """Components table and GPU fit table with rich (imported here: keeps `import finetune.vram` light).
    `unchecked`: the run without gradient checkpointing (auto): a column says what auto picks on each GPU."""
    from rich.table import Table

    table = Table(
        title=f"VRAM estimate: {est.model or 'model'} ({est.setup.method}, b={est.setup.micro_batch_size}, "
        f"seq={est.setup.seq_len}, checkpointing={'on' if est.setup.gradient_checkpointing else 'off'}"
        + (f", {est.setup.objective}: pairs" if est.setup.objective != "sft" else "")
        + ")"
    )
    table.add_column("component")
    table.add_column("GiB", justify="right")
    table.add_column("what it is")
    for name, comp in est.components.items():
        table.add_row(name, f"{comp.bytes / GiB:.2f}", comp.why)
    table.add_section()
    table.add_row("peak allocated", f"{est.peak_allocated_bytes / GiB:.2f}", "torch.cuda.max_memory_allocated")
    table.add_row("peak reserved", f"{est.peak_reserved_bytes / GiB:.2f}", "torch.cuda.max_memory_reserved")
    table.add_row(
        "total", f"{est.total_bytes / GiB:.2f}", "what nvidia-smi shows (reserved + context + paged)", style="bold"
    )
    console.print(table)
    console.print(
        f"parameters: {est.total_params:,} total, {est.trainable_params:,} trainable "
        f"({100 * est.trainable_params / max(est.total_params, 1):.2f}%)"
    )
    fit = Table(title="GPU fit")
    fit.add_column("GPU")
    fit.add_column("GiB usable", justify="right")
    fit.add_column("fits")
    if unchecked is not None:
        fit.add_column("checkpointing (auto)")
    for name, gib in (gpus or GPUS).items():
        ok = fits(est, int(gib * GiB))
        auto = []
        if unchecked is not None:
            off = auto_checkpointing(unchecked, gib * GiB) == "off"
            auto = [f"off: {unchecked.total_bytes / GiB:.2f} GiB, faster" if off else "on"]
        fit.add_row(name, f"{gib:.1f}", "[green]yes[/green]" if ok else "[red]no[/red]", *auto)
    console.print(fit)
    if unchecked is not None:
        console.print(
            f"train.gradient_checkpointing: auto turns checkpointing off where the run without it "
            f"({unchecked.total_bytes / GiB:.2f} GiB) fits in {CHECKPOINTING_OFF_SHARE:.0%} of the free memory"
        )
