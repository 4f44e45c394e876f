"""model.kernels: Liger's fused Triton kernels on the hf backend, which to use, and what was applied.

    used = resolve_kernels(recipe.model.kernels, backend, cuda)   "liger" | "none"; UserError if it cannot be
    record = apply_kernels(model, recipe.model.kernels, backend, cuda)   patch the model; what metrics.json keeps

  auto   Liger when the liger-kernel package is installed (pip install "finetune[liger]"), the backend is hf
         and the device a CUDA GPU (Liger's kernels are Triton: GPU only); else none.
  liger  the same, but without the package, without a CUDA GPU or with the unsloth backend it is an error
         (exit 2) instead of a silent fallback.
  none   transformers' own modules.

Applied: Liger's RMSNorm, RoPE and SwiGLU kernels, through liger_kernel.transformers'
_apply_liger_kernel_to_instance (the call transformers' Trainer makes for `use_liger_kernel`), on the model
instance under the LoRA wrapper. Not Liger's fused linear cross-entropy: TRL's SFTTrainer already computes the
loss with its own fused LM head (no full logits), and Liger's replaces the model's forward, which TRL patches;
TRL 1.16 refuses the combination and turns it off for `use_liger_kernel` too. Liger's RMSNorm and SwiGLU also
keep less for backward: finetune/vram/liger.py. Unsloth ships its own kernels for the same layers, so with the
unsloth backend `auto` means Unsloth's and `liger` is refused.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from typing import Any

from finetune.errors import UserError

log = logging.getLogger("finetune")

LIGER_INSTALL = 'pip install "finetune[liger]"'
# Liger's per-architecture switches for the layer kernels finetune applies (all on) and the losses it leaves off.
LAYER_KERNELS = ("rms_norm", "rope", "swiglu")
LOSS_KERNELS = ("fused_linear_cross_entropy", "cross_entropy")


def liger_installed() -> bool:
    """Whether liger-kernel can be imported (checked without importing it: it imports Triton)."""
    return importlib.util.find_spec("liger_kernel") is not None


def resolve_kernels(requested: str, backend: str, cuda: bool, installed: bool | None = None) -> str:
    """ "liger" or "none" for this run; an explicit `liger` that cannot run is a UserError naming the fix."""
    installed = liger_installed() if installed is None else installed
    if requested == "none":
        return "none"
    if requested == "auto":
        return "liger" if installed and cuda and backend == "hf" else "none"
    if backend != "hf":
        raise UserError(
            f"model.kernels: liger needs the hf backend, but the {backend} backend was chosen (it has kernels of its "
            "own); set model.backend: hf, or model.kernels: auto"
        )
    if not installed:
        raise UserError(
            f"model.kernels: liger, but liger-kernel is not installed: {LIGER_INSTALL} (or model.kernels: auto)"
        )
    if not cuda:
        raise UserError(
            "model.kernels: liger needs a CUDA GPU (Liger's kernels are Triton) and none is visible; "
            "set model.kernels: auto or none"
        )
    return "liger"


def why_not(requested: str, backend: str, cuda: bool, installed: bool) -> str:
    """Why `auto` resolved to none, in words for metrics.json and the summary."""
    if requested == "none":
        return "model.kernels: none"
    if backend != "hf":
        return f"the {backend} backend uses its own kernels"
    if not cuda:
        return "no CUDA GPU"
    if not installed:
        return f"liger-kernel is not installed ({LIGER_INSTALL})"
    return ""


def apply_kernels(model, requested: str, backend: str, cuda: bool) -> dict[str, Any]:
    """Resolve model.kernels and patch `model` (a PeftModel or a transformers model) in place.

    Returns what metrics.json records: {"requested", "used": "liger"|"none", "applied": [kernel names],
    "why": why nothing was applied, or ""}."""
    installed = liger_installed()
    used = resolve_kernels(requested, backend, cuda, installed)
    record: dict[str, Any] = {"requested": requested, "used": used, "applied": [], "why": ""}
    if used == "none":
        record["why"] = why_not(requested, backend, cuda, installed)
        return record
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    applied = apply_liger(base)
    if not applied:
        model_type = getattr(base.config, "model_type", "?")
        if requested == "liger":
            raise UserError(
                f"model.kernels: liger has no kernels for model_type '{model_type}'; set model.kernels: auto or none"
            )
        record.update(used="none", why=f"Liger has no kernels for model_type '{model_type}'")
        return record
    record["applied"] = applied
    log.info("Liger kernels applied: %s", ", ".join(applied))
    return record


def apply_liger(model) -> list[str]:
    """Liger's layer kernels on a transformers model instance; the names of those applied ([] when Liger does not
    know the architecture). The loss kernels stay off (see the module docstring)."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    apply_fn = MODEL_TYPE_TO_APPLY_LIGER_FN.get(getattr(model.config, "model_type", None))
    if apply_fn is None:
        return []
    accepted = inspect.signature(apply_fn).parameters
    switches = {name: True for name in LAYER_KERNELS} | {name: False for name in LOSS_KERNELS}
    _apply_liger_kernel_to_instance(model=model, **switches)
    return sorted(name for name in LAYER_KERNELS if name in accepted)
