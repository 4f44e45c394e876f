"""The recipe: one strict pydantic model, loaded from YAML with `--set` overrides.

Every section forbids unknown keys, so a typo is an error with a "did you mean" hint instead of a
silently ignored setting. This module imports neither torch nor transformers: `finetune validate`
and `--help` stay fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from finetune.errors import UserError
from finetune.paths import looks_like_file
from finetune.strict_yaml import explain, parse_yaml

TINY_MODEL = "builtin:tiny-llama"


SEED_MAX = 2**32 - 1  # numpy's and the dataloader's limit; torch accepts more, the trainer seeds all three
MAX_RECIPE_BYTES = 1_000_000


class Section(BaseModel):
    # allow_inf_nan: .inf or .nan in any float (lora.alpha=.inf trained a NaN adapter) is an error
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads true as 1 and false as 0: `lora.r: true` would train rank 1."""
        if isinstance(value, bool):
            annotation = cls.model_fields[info.field_name].annotation
            types = set(typing.get_args(annotation)) or {annotation}
            if bool not in types and types & {int, float}:
                raise ValueError("must be a number, not true/false")
        return value


class ModelSection(Section):
    name: str = Field(description="Hub id (meta-llama/Llama-3.2-1B), local directory, or builtin:tiny-llama.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    trust_remote_code: bool = Field(False, description="Run Python code shipped with the model. Off: it executes.")
    allow_pickle: bool = Field(False, description="Load .bin/.pt weights (pickle can run code); --allow-pickle.")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Compute dtype: auto = bf16 on GPUs that support it, else fp16; fp32 on CPU."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel. sdpa is PyTorch's fused attention and works everywhere."
    )
    backend: Literal["auto", "hf", "unsloth"] = Field(
        "auto", description="auto = Unsloth when installed and a CUDA GPU is present, else transformers + peft."
    )
    kernels: Literal["auto", "liger", "none"] = Field(
        "auto",
        description="Fused Triton kernels (RMSNorm, RoPE, SwiGLU): auto = Liger when finetune[liger] is installed, "
        "the backend is hf and the device a CUDA GPU; liger = the same or an error; none.",
    )
    adapter: str | None = Field(
        None,
        description="A PEFT adapter folder to train further instead of a new one, e.g. runs/my-sft/adapter "
        "(relative to the working directory, like output.dir).",
    )


class QuantSection(Section):
    method: Literal["nf4", "fp4", "none"] = Field(
        "nf4", description="4-bit base weights (QLoRA) with nf4/fp4, or none for a 16/32-bit base (plain LoRA)."
    )
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves ~0.4 bit/param).")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `quant: none` / `quant: nf4` is accepted as shorthand for `quant: {method: ...}`.
        if isinstance(value, str):
            return {"method": value}
        if value is None:
            return {"method": "none"}
        return value


class LoraSection(Section):
    r: int = Field(16, gt=0, le=4096, description="Rank of the adapter matrices: capacity vs. memory.")
    alpha: float = Field(
        32, gt=0, le=65536, description="Scale; the update is multiplied by alpha/r (alpha/sqrt(r) with rslora)."
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="all-linear, or module names such as [q_proj, v_proj]."
    )
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r); helps at high ranks.")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA): better at low rank, slower.")
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default", description="Adapter initialisation (pissa/olora start from the base weights' SVD/QR)."
    )


class SplitSection(Section):
    validation: float = Field(0.1, ge=0, lt=1, description="Fraction of the rows held out for early stopping.")
    test: float = Field(0.1, ge=0, lt=1, description="Fraction held out for the final score; never trained on.")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Seed of the shuffle that assigns rows to splits.")

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitSection:
        if self.validation + self.test >= 1:
            raise ValueError("validation + test must be below 1 so rows are left for training")
        return self


class ClassificationSection(Section):
    text_column: str = Field("text", description="Column holding the input text.")
    label_column: str = Field("label", description="Column holding the label (a name, or a key of `labels`).")
    labels: dict[str, str] | list[str] | None = Field(
        None, description="Label set: a list of names, or a mapping raw value -> name (e.g. {0: negative})."
    )
    template: str = Field(
        "Classify the following text as one of: {labels}.\n\n{text}",
        description="User prompt; {text} and {labels} are filled in. The answer is the label name.",
    )

    @field_validator("template")
    @classmethod
    def _template_has_text(cls, value: str) -> str:
        if "{text}" not in value:
            raise ValueError("must contain {text}, where each row's text goes (and may contain {labels})")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _stringify_keys(cls, value: Any) -> Any:
        """{0: negative} -> {"0": "negative"}: raw values are matched as text; a name that is not text or a
        number (a list, a mapping, null) is an error, never its repr in the prompt."""
        if not isinstance(value, dict):
            return value
        for key, name in value.items():
            if not isinstance(key, (str, int, float)) or isinstance(name, bool):  # bool keys: {true: yes}
                raise ValueError(f"maps raw label values to names; {key!r}: {name!r} is not a value and a name")
            if not isinstance(name, (str, int, float)):
                kind = {"NoneType": "null", "list": "a list", "dict": "a mapping"}.get(type(name).__name__, "")
                raise ValueError(f"the name of {key!r} must be text (got {kind or type(name).__name__})")
        return {str(k): str(v) for k, v in value.items()}

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, str] | list[str] | None) -> dict[str, str] | list[str] | None:
        names = list(value.values()) if isinstance(value, dict) else value
        if names is None:
            return value
        if any(not name.strip() for name in names):
            raise ValueError("a label name is empty")
        if isinstance(value, list) and len(set(names)) < len(names):
            raise ValueError(f"names a label twice ({next(n for n in names if names.count(n) > 1)!r})")
        if len(set(names)) < 2:
            raise ValueError("needs at least two label names to choose from")
        return value


DataFormat = Literal["auto", "chat", "alpaca", "prompt_completion", "text", "classification", "preference"]


class DataSection(Section):
    path: str | None = Field(None, description="One file (JSONL/JSON/CSV/Parquet) or hub dataset id, split below.")
    train: str | None = Field(None, description="Explicit training file (instead of `path`).")
    validation: str | None = Field(None, description="Explicit validation file.")
    test: str | None = Field(None, description="Explicit test file.")
    hub_config: str | None = Field(None, description="Hub dataset configuration name.")
    hub_split: str = Field("train", description="Hub dataset split to read from.")
    format: DataFormat = Field("auto", description="Row format; auto detects it from the columns.")
    split: SplitSection = Field(default_factory=SplitSection)
    max_length: int = Field(
        1024, ge=2, le=1_048_576, description="Tokens per example; longer ones are truncated and counted."
    )
    completion_only_loss: bool = Field(True, description="Loss on answer/assistant tokens only (not the prompt).")
    truncation: Literal["prompt", "end", "start", "drop"] = Field(
        "prompt",
        description="Longer than max_length: prompt = cut the prompt, keep the answer (data/truncate.py); end; "
        "start; drop.",
    )
    packing: Literal["auto", "on", "off"] = Field(
        "auto", description="auto = packed with flash_attention_2, else length-grouped batches; on; off = padded."
    )
    system_prompt: str | None = Field(None, description="System message prepended to every conversation.")
    chat_template: str | None = Field(None, description="Jinja chat template overriding the tokenizer's.")
    classification: ClassificationSection = Field(default_factory=ClassificationSection)

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        if self.path and self.train:
            raise ValueError("give either `path` (split automatically) or `train` (+ validation/test files), not both")
        if not self.path and not self.train:
            raise ValueError("no data: set data.path (one file, split automatically) or data.train")
        return self


Optimizer = Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd"]


class TrainSection(Section):
    epochs: float = Field(3, gt=0, le=1000, description="Passes over the training split; above 3 usually overfits.")
    max_steps: int | None = Field(
        None, gt=0, le=10**8, description="Stop after this many optimizer steps (not epochs)."
    )
    # le=1000: far past any useful value (a rate that wrecks the model is caught by the collapse check)
    learning_rate: float = Field(2e-4, gt=0, le=1000, description="Peak learning rate (2e-4 is the usual QLoRA value).")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of the steps spent warming up.")
    micro_batch_size: int = Field(
        4, gt=0, le=65536, description="Examples per device per forward pass (drives memory)."
    )
    gradient_accumulation: int = Field(4, gt=0, le=65536, description="Micro-batches per optimizer step.")
    eval_batch_size: int | None = Field(
        None, gt=0, le=65536, description="Defaults to micro_batch_size (never larger)."
    )
    optimizer: Optimizer = Field("adamw_torch", description="8-bit/paged variants cut optimizer memory (GPU).")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum for sgd.")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations: ~30% slower, far less memory. auto = off where the VRAM estimate says "
        "the run fits without it (train/preflight.py), else on.",
    )
    fsdp: bool = Field(
        False, description="With several processes, shard the model over them (FSDP) instead of a copy on each (DDP)."
    )
    eval_steps: int | Literal["auto"] = Field(
        "auto", description="Evaluate every N optimizer steps; auto = about 5 times per epoch."
    )
    logging_steps: int = Field(5, gt=0, le=10**8, description="Record the training loss every N optimizer steps.")
    seed: int = Field(
        42, ge=0, le=SEED_MAX, description="Seed for weights init of the adapter, dropout and data order."
    )
    sample_prompts: int = Field(
        3, ge=0, le=100, description="Validation prompts answered (greedy) at each validation, into samples.jsonl."
    )
    sample_max_new_tokens: int = Field(48, ge=1, le=4096, description="Tokens generated per sample answer.")
    objective: Literal["sft", "dpo", "orpo"] = Field(
        "sft", description="sft = learn the answers; dpo/orpo = prefer `chosen` over `rejected` (preference data)."
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list, description="Experiment trackers; tensorboard logs go to RUN/tb."
    )

    @field_validator("eval_steps")
    @classmethod
    def _positive_eval_steps(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 < value <= 10**8:
            raise ValueError("must be a positive integer (at most 10^8) or 'auto'")
        return value


DpoLoss = Literal["sigmoid", "ipo", "hinge", "robust", "sppo_hard", "nca_pair", "apo_zero", "apo_down"]


class PreferenceSection(Section):
    beta: float = Field(
        0.1,
        gt=0,
        le=100,
        description="DPO: how far the policy may move from the reference; ORPO: the odds-ratio weight.",
    )
    loss_type: DpoLoss = Field("sigmoid", description="DPO's loss (TRL's loss_type): sigmoid is the paper's.")
    precompute_ref_log_probs: bool = Field(
        False, description="DPO: score the reference once before training (no reference forward per step)."
    )


class EarlyStoppingSection(Section):
    enabled: bool = Field(True, description="Stop when validation loss stops improving; keep the best adapter.")
    patience: int = Field(3, gt=0, le=10**6, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest drop in validation loss that counts as improvement.")


class SpikeGuardSection(Section):
    enabled: bool = Field(True, description="Skip updates whose loss or gradient is non-finite or spikes.")
    factor: float = Field(4.0, gt=1, description="A step loss above factor x the running median is a spike.")
    window: int = Field(50, gt=0, le=10**6, description="Steps in the running median and in the spike count.")
    max_spikes: int = Field(3, gt=0, le=10**6, description="Spikes within `window` steps that trigger a rollback.")
    lr_factor: float = Field(0.5, gt=0, lt=1, description="Learning rate multiplier applied at each rollback.")
    max_rollbacks: int = Field(2, ge=0, le=100, description="Rollbacks before the run stops as diverged.")


class OutputSection(Section):
    dir: str | None = Field(
        None, description="Run directory (relative to the working directory); default runs/<recipe>."
    )
    save_total_limit: int = Field(
        2, gt=0, le=10**6, description="Checkpoints kept in all; the best and the newest are never deleted."
    )


class Recipe(Section):
    """A complete fine-tuning run. Relative data paths are resolved against the recipe's folder."""

    model: ModelSection
    quant: QuantSection = Field(default_factory=QuantSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection
    train: TrainSection = Field(default_factory=TrainSection)
    early_stopping: EarlyStoppingSection = Field(default_factory=EarlyStoppingSection)
    spike_guard: SpikeGuardSection = Field(default_factory=SpikeGuardSection)
    preference: PreferenceSection = Field(default_factory=PreferenceSection)
    output: OutputSection = Field(default_factory=OutputSection)
    description: str | None = Field(None, description="One line shown by `finetune recipes`.")

    @model_validator(mode="after")
    def _init_needs_full_precision(self) -> Recipe:
        # peft initialises PiSSA/OLoRA from an SVD/QR of full-precision weights and refuses a 4-bit base
        if self.lora.init in ("pissa", "olora") and self.quant.method != "none":
            raise ValueError(
                f"lora.init {self.lora.init} needs a 16/32-bit base: set quant: none (or lora.init: default)"
            )
        if self.train.fsdp and self.model.backend == "unsloth":
            raise ValueError("train.fsdp is not supported by the unsloth backend: set model.backend: hf")
        if self.model.kernels == "liger" and self.model.backend == "unsloth":
            raise ValueError(
                "model.kernels liger patches the layers Unsloth patches with its own kernels: "
                "set model.backend: hf, or model.kernels: auto (Unsloth's kernels only)"
            )
        if self.model.adapter and self.model.backend == "unsloth":
            raise ValueError("model.adapter continues an adapter on the hf backend: set model.backend: hf")
        preference = self.train.objective != "sft"
        if preference and self.model.backend == "unsloth":
            raise ValueError(f"train.objective {self.train.objective} runs on the hf backend: set model.backend: hf")
        if preference and self.data.format not in ("auto", "preference"):
            raise ValueError(
                f"train.objective {self.train.objective} trains on preference pairs: set data.format: preference "
                "(or auto) and give rows with prompt, chosen and rejected"
            )
        if preference and not self.data.completion_only_loss:
            raise ValueError(
                f"data.completion_only_loss: false applies to sft; {self.train.objective} scores the answers only"
            )
        if self.data.format == "preference" and not preference:
            raise ValueError("data.format preference needs train.objective: dpo or orpo")
        if self.train.objective == "orpo" and "preference" in self.model_fields_set:
            touched = self.preference.model_fields_set - {"beta"}
            if touched:
                raise ValueError(f"preference.{sorted(touched)[0]} applies to dpo only; orpo takes preference.beta")
        if self.train.objective != "sft" and self.train.fsdp:
            raise ValueError(f"train.fsdp is not supported for train.objective {self.train.objective} yet")
        return self

    def resolved_dict(self) -> dict[str, Any]:
        """Everything, defaults filled in: what RUN/recipe.yaml records."""
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """sha256 of the resolved recipe, minus where it is written to (same run, other folder = same hash)."""
        data = self.resolved_dict()
        data.pop("output", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Loading


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe. Raises UserError with one line naming file, line and key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe not found")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise UserError(f"{path}: {path.stat().st_size:,} bytes is not a recipe (they are a few KB); check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read the recipe ({err.__class__.__name__}); is it a UTF-8 YAML file?") from err
    raw, lines = parse_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping with sections model, data, train, ...")
    for override in overrides:
        _apply_override(raw, override)
        key = override.split("=", 1)[0].strip()  # its value is not on a line of the file: errors say --set
        lines.update({name: 0 for name in lines if name == key or name.startswith(key + ".")} | {key: 0})
    recipe = validate_recipe(raw, source=str(path), lines=lines)
    return _resolve_paths(recipe, path.parent.resolve())


def validate_recipe(raw: dict[str, Any], source: str = "recipe", lines: dict[str, int] | None = None) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise UserError(explain(err, source, lines or {}, Recipe)) from err


def _apply_override(raw: dict[str, Any], override: str) -> None:
    """`train.learning_rate=1e-4`: the value is parsed as YAML, so numbers, bools and lists keep their type."""
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {override!r}: expected key.path=value, e.g. --set train.epochs=2")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None or isinstance(child, str):  # `quant: none` shorthand becomes a mapping
            child = {} if child is None else {"method": child}
            node[part] = child
        if not isinstance(child, dict):
            raise UserError(f"--set {key}: {part} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise UserError(f"--set {key}: cannot parse value {value!r}") from err


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Data files and local model folders are relative to the recipe file, not to where it is run from."""

    def resolve(value: str | None) -> str | None:
        if value is None:
            return None
        # absolute and normalised (no ../ left): RUN/recipe.yaml names the very files the run read
        candidate = Path(os.path.normpath(base / Path(value).expanduser()))
        # A hub id (org/name) that is not a local path stays as written.
        return str(candidate) if candidate.exists() or looks_like_file(value) else value

    data = recipe.data
    for field in ("path", "train", "validation", "test"):
        setattr(data, field, resolve(getattr(data, field)))
    if not recipe.model.name.startswith("builtin:"):
        recipe.model.name = resolve(recipe.model.name) or recipe.model.name
    if recipe.model.adapter is not None:  # another run's output: relative to the working directory, as output.dir
        recipe.model.adapter = os.path.normpath(Path.cwd() / Path(recipe.model.adapter).expanduser())
    return recipe
