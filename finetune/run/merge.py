"""`finetune merge`: fold the LoRA adapter into an unquantized copy of the base, save a plain model.

The base is reloaded in 16/32-bit (merging into 4-bit weights would re-quantize and lose the
adapter's small updates), the adapter is merged with peft's `merge_and_unload`, and the result is
saved as safetensors + tokenizer (with the training chat template) + generation config, so
`AutoModelForCausalLM.from_pretrained(DIR)`, vLLM and llama.cpp's converters load it as is.
"""

from __future__ import annotations

from pathlib import Path

from finetune.errors import UserError
from finetune.model import loading
from finetune.model.devices import torch_dtype
from finetune.run import run_dir
from finetune.run.inference import TrainedRun

DTYPES = ("bf16", "fp16", "fp32")


def merge(run: TrainedRun, out: Path, dtype: str = "bf16", overwrite: bool = False) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: output directory is not empty; pass --overwrite or choose another -o")
    weights_dtype = torch_dtype(dtype)
    base_path = loading.resolve_model_path(run.recipe.model)
    base = AutoModelForCausalLM.from_pretrained(
        base_path,
        revision=run.recipe.model.revision,
        dtype=weights_dtype,
        trust_remote_code=run.recipe.model.trust_remote_code,
        use_safetensors=None if run.recipe.model.allow_pickle else True,
    )
    merged = PeftModel.from_pretrained(base, run.path / run_dir.ADAPTER).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(run.path / run_dir.ADAPTER)
    generation = GenerationConfig.from_model_config(merged.config)
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id

    with run_dir.staged_directory(out) as staging:
        merged.save_pretrained(staging)  # safetensors
        tokenizer.save_pretrained(staging)
        generation.save_pretrained(staging)
    return out
