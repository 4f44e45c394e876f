"""Which process this is and which device and dtype it computes on: the one place these are decided.

torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; without it there is one process, rank 0.
"""

from __future__ import annotations

import os
from typing import Any

from finetune.errors import UserError


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def fsdp_active(recipe) -> bool:
    """train.fsdp takes effect only in processes torchrun started (accelerate shards across a process group)."""
    return recipe.train.fsdp and under_torchrun()


def device_for_this_process():
    """cuda:LOCAL_RANK when a GPU is present (each torchrun rank owns one), else the CPU."""
    import torch

    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)  # so no rank opens a context on GPU 0 by accident
        return device
    return torch.device("cpu")


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def compute_dtype(requested: str, device) -> Any:
    """bf16 on GPUs that support it (Ampere+), fp16 on older GPUs (T4), fp32 on CPU (fast and exact there)."""
    import torch

    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"model.dtype: bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or auto")
    if requested != "auto":
        return torch_dtype(requested)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
