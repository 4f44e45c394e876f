"""Before the weights load: the VRAM estimate, gradient checkpointing's auto setting, and a stop with advice
when the GPU is too small."""

from __future__ import annotations

import dataclasses
import os

from rich.console import Console

from finetune.config import Recipe
from finetune.errors import UserError
from finetune.model.devices import fsdp_active, world_size
from finetune.model.kernels import resolve_kernels
from finetune.vram import estimator
from finetune.vram.architectures import ArchitectureSpec, load_spec


def preflight(recipe: Recipe, model_path: str, console: Console, force: bool, backend: str = "hf") -> Recipe:
    """Print the VRAM estimate; on a GPU whose free memory is below it, stop with advice unless --force.
    Returns the recipe with train.gradient_checkpointing decided: auto becomes true or false (decide_checkpointing).

    The estimate models the hf backend on one GPU. Unsloth offloads the checkpointed activations to the
    CPU and measured about half of it (docs/vram.md), and FSDP over N GPUs divides the weights: for both
    it is an upper bound and never stops the run.
    """
    import torch

    # model.kernels: liger that cannot run (no package, no GPU, Unsloth) fails here, before any weight is read
    kernels = resolve_kernels(recipe.model.kernels, backend, torch.cuda.is_available())
    try:
        spec = load_spec(model_path)
    except UserError as err:  # an architecture the estimator does not know: train anyway
        console.print(f"[yellow]note:[/] no VRAM estimate ({err})")
        spec = None
    recipe, why = decide_checkpointing(recipe, spec, backend, kernels)
    if why:
        on = "on" if recipe.train.gradient_checkpointing else "off"
        console.print(f"gradient checkpointing {on} (train.gradient_checkpointing: auto): {why}")
    if spec is None:
        return recipe
    setup = estimator.setup_from_recipe(recipe, kernels=kernels)
    estimate = estimator.estimate(spec, setup, model=recipe.model.name)
    line = f"VRAM estimate: {estimate.total_bytes / estimator.GiB:.2f} GiB on the GPU (peak, as nvidia-smi shows it)"
    if not torch.cuda.is_available():
        console.print(f"{line}; no GPU here, training on the CPU")
        return recipe
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
    return recipe


def decide_checkpointing(
    recipe: Recipe, spec: ArchitectureSpec | None, backend: str, kernels: str
) -> tuple[Recipe, str | None]:
    """train.gradient_checkpointing: auto -> off when the estimate says the run fits without it in this process's
    free memory (vram/estimator.py: auto_checkpointing), else on. (recipe with a bool, why) or (recipe, None)
    when the recipe already says true or false.

    Checkpointing costs a third more compute for activation memory that drops from every layer's to one layer's
    (without it, 1.36x-1.62x the tokens/s on the CPU benchmark, docs/throughput.md): where the memory is there,
    auto spends it. auto keeps it on where the estimate has not been measured: Unsloth (its own offloaded
    checkpointing), FSDP, DPO/ORPO, an architecture the estimator does not know.
    """
    if recipe.train.gradient_checkpointing != "auto":
        return recipe, None
    reason = not_measured(recipe, backend, fsdp_active(recipe), spec is not None)
    if reason is not None:
        return with_checkpointing(recipe, True), f"the memory of {reason} without it is not measured"
    memory, where = free_memory()
    setup = estimator.setup_from_recipe(recipe, kernels=kernels)
    if where == "RAM":  # the CPU computes in fp32 (model/devices.py) and keeps dropout masks as floats
        setup = dataclasses.replace(setup, dtype="fp32", dropout_mask_bytes=4)
    unchecked = estimator.estimate(spec, dataclasses.replace(setup, gradient_checkpointing=False))
    needs = f"{unchecked.total_bytes / estimator.GiB:.1f} GiB"
    share = f"{estimator.CHECKPOINTING_OFF_SHARE:.0%} of the {memory / estimator.GiB:.1f} GiB free {where}"
    if estimator.auto_checkpointing(unchecked, memory) == "on":
        return with_checkpointing(recipe, True), f"without it the run needs {needs}, over {share}"
    return with_checkpointing(recipe, False), f"the run fits without it: {needs}, within {share}"


def not_measured(recipe: Recipe, backend: str, fsdp: bool, known: bool) -> str | None:
    """Why auto keeps checkpointing on whatever the memory, or None: the estimate without checkpointing is
    measured for the hf backend's SFT on one GPU per process, of an architecture the estimator knows."""
    reasons = {
        "the unsloth backend": backend == "unsloth",
        "FSDP": fsdp,
        f"train.objective {recipe.train.objective}": recipe.train.objective != "sft",
        "an architecture the estimator does not know": not known,
    }
    return next((name for name, applies in reasons.items() if applies), None)


def with_checkpointing(recipe: Recipe, on: bool) -> Recipe:
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"gradient_checkpointing": on})})


def free_memory() -> tuple[int, str]:
    """(bytes, where): free memory of this process's GPU, or its share of the RAM available on a CPU-only machine
    (torchrun's processes on one machine share it: each counts 1/LOCAL_WORLD_SIZE of it)."""
    import psutil
    import torch

    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0], "on the GPU"
    return psutil.virtual_memory().available // int(os.environ.get("LOCAL_WORLD_SIZE", 1)), "RAM"
