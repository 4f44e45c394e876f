"""`finetune init`: a commented starter recipe for one data file.

The format is detected as `finetune data inspect` detects it (data/inspect.py reads on past bad rows),
data.max_length is proposed from the examples' lengths, and the header states the GPU memory the VRAM
estimator gives for the chosen model. The recipe is validated before it is returned: `finetune init`
never writes a recipe that `finetune validate` rejects for its keys.

Lengths. With the model's tokenizer (a local folder, builtin:tiny-llama, or a hub model in the local cache)
they are the encoded examples, chat template and EOS included, as training sees them. Without it (a hub
model that was never downloaded, offline) they are estimated: characters / 4 (English text averages about
4 characters per BPE token) + 8 tokens per message for the template's role headers and special tokens.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml

from finetune.config import TINY_MODEL, DataFormat, DataSection, ModelSection, TrainSection, validate_recipe
from finetune.data.inspect import load, measure, percentile
from finetune.data.read import split_examples
from finetune.errors import UserError
from finetune.vram import estimator
from finetune.vram.architectures import load_spec

DEFAULT_MODEL = "meta-llama/Llama-3.2-1B-Instruct"
PERCENTILE = 99  # max_length keeps this share of the examples whole; longer ones are cut (prompt first)
ROUND_TO = 64  # max_length is rounded up to a multiple of this
CHARS_PER_TOKEN = 4  # the estimate without a tokenizer
TEMPLATE_TOKENS_PER_MESSAGE = 8
MAX_LENGTH_LIMIT = 1_048_576  # data.max_length's upper bound in the schema
CARD_SIZES_GB = (4, 6, 8, 12, 16, 24, 32, 40, 48, 80, 141)  # common GPU sizes as sold (decimal GB)

TokenizerLoader = Callable[[ModelSection | None, DataSection], tuple[Any, str]]


@dataclass
class Starter:
    text: str  # the recipe, comments included
    format: str
    rows: int
    bad_rows: int
    max_length: int
    lengths_from: str  # "counted with the tokenizer of M" or "estimated as characters / 4 + ..."
    gpu: str  # one line about the GPU memory


def starter_recipe(data_file: Path, recipe_file: Path, model: str, load_tokenizer: TokenizerLoader) -> Starter:
    """The starter recipe for `data_file`, to be written at `recipe_file` (data paths are relative to it)."""
    if data_file.is_dir():
        raise UserError(f"{data_file}: is a directory; give a .jsonl, .json, .csv or .parquet file")
    if not data_file.is_file():
        raise UserError(f"{data_file}: data file not found")
    probe = DataSection(path=str(data_file), max_length=MAX_LENGTH_LIMIT)
    loaded = load([str(data_file)], probe)[0]
    if not loaded.items:
        raise UserError(f"{data_file}: no usable rows; `finetune data inspect {data_file}` lists what is wrong")
    split = probe.split  # the recipe splits data.path like this: every part needs a row, or it fails validate
    if not all(split_examples([item.example for item in loaded.items], split.validation, split.test, split.seed)):
        raise UserError(
            f"{data_file}: {len(loaded.items)} usable rows are too few to split into train, validation and test "
            f"({1 - split.validation - split.test:.0%}/{split.validation:.0%}/{split.test:.0%}); add rows"
        )

    tokenizer, note = load_tokenizer(ModelSection(name=model), probe)
    if tokenizer is not None:
        lengths, _, _ = measure(loaded.items, tokenizer, probe, MAX_LENGTH_LIMIT)
        lengths_from = f"counted with the tokenizer of {model}"
    else:
        lengths = [_estimated_tokens(item.example) for item in loaded.items]
        lengths_from = f"estimated as characters / {CHARS_PER_TOKEN} + {TEMPLATE_TOKENS_PER_MESSAGE} per message"
    spec, spec_error = _spec(model)
    context = spec.max_position_embeddings if spec else MAX_LENGTH_LIMIT
    ordered = sorted(lengths) or [ROUND_TO]
    high = percentile(ordered, PERCENTILE)
    rounded = math.ceil(high / ROUND_TO) * ROUND_TO
    max_length = max(ROUND_TO, min(rounded, context, MAX_LENGTH_LIMIT))

    fmt = loaded.format
    local_model = not model.startswith("builtin:") and Path(model).expanduser().exists()
    facts = {
        "data": _relative(data_file, recipe_file),
        "format": fmt if fmt in get_args(DataFormat) else "auto",
        "model": _relative(Path(model).expanduser(), recipe_file) if local_model else model,
        "max_length": max_length,
        "preference": fmt == "preference" and "objective" in TrainSection.model_fields,
    }
    recipe = validate_recipe(yaml.safe_load(_body(facts, "")), source="the starter recipe")
    gpu, fitting = _gpu_lines(model, spec, spec_error, recipe)
    short = model.rsplit("/", 1)[-1]
    where = "CPU or any GPU" if model == TINY_MODEL else fitting
    description = f"{short}, QLoRA (NF4) r=16, {data_file.name} ({fmt}), {where}."
    whole = sum(length <= max_length for length in lengths)
    header = [
        f"finetune train {recipe_file}",
        "",
        f"Starter recipe written by `finetune init` for {data_file.name}: {len(loaded.items)} rows, {fmt} format "
        f"(columns: {', '.join(loaded.columns)}).",
        *(
            [
                f"Bad rows: {len(loaded.problems)}. `finetune train` stops at the first; "
                f"`finetune data inspect {data_file}` lists them."
            ]
            if loaded.problems
            else []
        ),
        f"Example lengths in tokens, {lengths_from}: p50 {percentile(ordered, 50)}, p90 {percentile(ordered, 90)}, "
        f"p99 {high}, max {ordered[-1]}.",
        f"data.max_length {max_length} (p{PERCENTILE}, rounded up to a multiple of {ROUND_TO}"
        + (f", capped at the model's context {context}" if rounded > context else "")
        + f") keeps {whole} of {len(lengths)} examples whole; longer ones lose prompt, not answer.",
        *([f"Labels found: {', '.join(loaded.labels)}."] if loaded.labels else []),
        *(
            []
            if tokenizer is not None
            else [
                f"{note.split(': lengths are')[0]}: the lengths are estimated; `finetune data inspect "
                f"{recipe_file}` counts them once the tokenizer is available."
            ]
        ),
        *gpu,
        f"Check before training:  finetune validate {recipe_file}  and  finetune data inspect {recipe_file}",
        "Every key and its default: the README's Recipes section.",
    ]
    comments = [
        wrapped
        for line in header
        for wrapped in textwrap.wrap(line, 116, break_long_words=False, break_on_hyphens=False) or [""]
    ]
    text = "".join(f"# {line}".rstrip() + "\n" for line in comments) + _body(facts, description)
    validate_recipe(yaml.safe_load(text), source=str(recipe_file))  # the comments changed nothing
    return Starter(text, fmt, len(loaded.items), len(loaded.problems), max_length, lengths_from, gpu[0])


def _estimated_tokens(example: Any) -> int:
    messages = example.messages or []
    characters = len(example.text) if example.text is not None else sum(len(m["content"]) for m in messages)
    return math.ceil(characters / CHARS_PER_TOKEN) + TEMPLATE_TOKENS_PER_MESSAGE * max(1, len(messages))


def _spec(model: str) -> tuple[Any, str]:
    try:
        return load_spec(model), ""
    except UserError as err:
        return None, str(err)


def _relative(path: Path, recipe_file: Path) -> str:
    """A local file or model folder relative to the recipe's folder (as the loader reads it) when it is in that
    folder's parent's tree (recipes/r.yaml -> ../data/d.jsonl), else absolute."""
    target = path.resolve()
    relative = os.path.relpath(target, recipe_file.parent.resolve())
    return str(target) if relative.startswith(os.path.join("..", "..")) else relative


def _gpu_lines(model: str, spec: Any, spec_error: str, recipe: Any) -> tuple[list[str], str]:
    """The header's lines about GPU memory, and the short 'one N GB+ GPU' for the description."""
    if spec is None:
        reason = spec_error.split(";")[0]
        return [f"GPU memory: no estimate for {model} ({reason})."], "GPU size unknown"
    setup = estimator.setup_from_recipe(recipe)
    estimate = estimator.estimate(spec, setup, model=model)
    need = estimate.total_bytes
    card = next((gb for gb in CARD_SIZES_GB if gb * 1e9 >= need), None)
    fitting = f"one {card} GB+ GPU" if card else "more than one GPU's memory"
    gpus = [name for name, gib in estimator.GPUS.items() if estimator.fits(estimate, int(gib * estimator.GiB))]
    lines = [
        f"GPU memory (finetune vram-estimate): {need / estimator.GiB:.2f} GiB at micro_batch_size "
        f"{setup.micro_batch_size} x max_length {setup.seq_len}, so {fitting}.",
        f"Fits: {', '.join(gpus)}." if gpus else "Fits none of the GPUs finetune knows; see below.",
    ]
    smallest, gib = next(iter(estimator.GPUS.items()))
    if not estimator.fits(estimate, int(gib * estimator.GiB)):
        lines += [f"To fit a {smallest}: {tip}." for tip in estimator.advise(spec, setup, int(gib * estimator.GiB))]
    if recipe.data.format == "preference":
        lines.append("The estimate is for SFT: dpo/orpo run chosen and rejected together, about twice the activations.")
    if model == TINY_MODEL:
        lines.append(f"{TINY_MODEL} is a tiny random model that trains on a CPU: it tests the pipeline, not your data.")
    return lines, fitting


def _body(facts: dict[str, Any], description: str) -> str:
    data, model = _scalar(facts["data"]), _scalar(facts["model"])
    objective = "  objective: dpo            # preference pairs (prompt, chosen, rejected): dpo or orpo\n"
    return f"""description: {_scalar(description)}

model:
  name: {model}
  dtype: auto               # bf16 on Ampere and newer GPUs, fp16 on older ones, fp32 on a CPU
quant:
  method: nf4               # 4-bit base (QLoRA); none = plain LoRA on a 16-bit base (more memory)
  double_quant: true
lora:
  r: 16                     # adapter capacity; its memory grows linearly with r and stays small
  alpha: 32
  dropout: 0.05
  target_modules: all-linear
data:
  path: {data}
  format: {facts["format"]}{" " * max(1, 18 - len(facts["format"]))}# detected from the columns
  split: {{validation: 0.1, test: 0.1, seed: 42}}   # held out: early stopping, and the final test score
  max_length: {facts["max_length"]}{" " * max(1, 14 - len(str(facts["max_length"])))}# see the lengths above
  truncation: prompt        # a longer example loses prompt, never its answer
train:
{objective if facts["preference"] else ""}  epochs: 3                 # above 3 usually overfits; early stopping keeps the best adapter
  learning_rate: 2.0e-4
  micro_batch_size: 4       # the main memory knob: on OOM lower it and raise gradient_accumulation
  gradient_accumulation: 4  # effective batch 16
  gradient_checkpointing: auto  # off where the run fits without it (~30% faster), else on (less memory)
early_stopping:
  enabled: true
  patience: 3               # validations without improvement before stopping
# output: {{dir: runs/NAME}}  # default runs/<this file's name>, under the working directory
"""


def _scalar(value: str) -> str:
    """A YAML scalar: plain when it reads back as the same string, else double-quoted (JSON is YAML)."""
    try:
        if value and yaml.safe_load(f"k: {value}") == {"k": value}:
            return value
    except yaml.YAMLError:
        pass
    return json.dumps(value)
