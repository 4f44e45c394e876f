"""Before the weights load: the VRAM estimate, and a stop with advice when the GPU is too small."""

from __future__ import annotations

from rich.console import Console

from finetune.config import Recipe
from finetune.errors import UserError
from finetune.model.devices import fsdp_active, world_size
from finetune.model.kernels import resolve_kernels
from finetune.vram import estimator
from finetune.vram.architectures import load_spec


def preflight(recipe: Recipe, model_path: str, console: Console, force: bool, backend: str = "hf") -> None:
    """Print the VRAM estimate; on a GPU whose free memory is below it, stop with advice unless --force.

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
        return
    setup = estimator.setup_from_recipe(recipe, kernels=kernels)
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
