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
from finetune.run import card, run_dir
from finetune.run.inference import TrainedRun

DTYPES = ("bf16", "fp16", "fp32")


def merge(run: TrainedRun, out: Path, dtype: str = "bf16", overwrite: bool = False) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    check_merge_output(run.path, out, overwrite)
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
        run_dir.write_json(staging / run_dir.MERGE_MARKER, {"created_by": "finetune merge", "run": str(run.path)})
        merged.save_pretrained(staging)  # safetensors
        card.write_card(run.path, run.recipe, run.metrics, staging, merged=True)
        tokenizer.save_pretrained(staging)
        generation.save_pretrained(staging)
    return out


def check_merge_output(run: Path, out: Path, overwrite: bool) -> None:
    """-o must be a new or empty folder, or (with --overwrite) one an earlier merge made; never the run
    itself, a folder inside it, or a folder that holds it."""
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents:
        raise UserError(f"{out}: -o lies inside the run {run}; merging there would replace the run: choose another -o")
    if out.resolve() in run.resolve().parents:
        raise UserError(f"{out}: -o holds the run {run}; choose a folder of its own")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is a file; choose a folder for the merged model with -o")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(f"{out}: output directory is not empty; pass --overwrite or choose another -o")
    if not (out / run_dir.MERGE_MARKER).is_file():
        raise UserError(
            f"{out}: --overwrite only replaces a folder an earlier `finetune merge` made, and this one is not; "
            "choose another -o"
        )
