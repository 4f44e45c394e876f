"""Load the base model (4-bit or not) and attach LoRA; choose the backend, the device and the compute dtype."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from finetune.config import TINY_MODEL, DataSection, LoraSection, ModelSection, Recipe
from finetune.data.tokenize import check_special_tokens, ensure_chat_template
from finetune.errors import UserError
from finetune.model.devices import fsdp_active
from finetune.model.kernels import apply_kernels
from finetune.model.tiny import tiny_llama_path
from finetune.paths import go_offline_if_unreachable, looks_like_path

log = logging.getLogger("finetune")

# recipe init name -> peft's init_lora_weights value
LORA_INITS: dict[str, Any] = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}


def quiet_libraries(verbose: bool) -> None:
    """Silence the deprecation and progress spam of the HF stack unless -v asks for it."""
    if verbose:
        return
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for name in ("transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars


def resolve_model_path(model: ModelSection) -> str:
    """A local directory or a hub id that from_pretrained can load; checked before any weight is read."""
    if model.name == TINY_MODEL:
        return str(tiny_llama_path())
    if model.name.startswith("builtin:"):
        raise UserError(f"model.name: unknown built-in model '{model.name}'; the only one is {TINY_MODEL}")
    path = Path(model.name)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path}: model.name must be a model directory (with config.json), not a file")
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: no config.json; this is not a transformers model directory")
        weights = {p.suffix for p in path.glob("*") if p.suffix in {".safetensors", ".bin", ".pt", ".pth"}}
        if weights and ".safetensors" not in weights and not model.allow_pickle:
            raise UserError(
                f"{path}: only pickle weights ({', '.join(sorted(weights))}); pickle can run arbitrary code when "
                "loaded: convert the checkpoint to safetensors, or pass --allow-pickle if you trust its source"
            )
    elif looks_like_path(model.name):
        raise UserError(f"{model.name}: model directory not found (paths are relative to the recipe file)")
    check_architecture(model)
    return model.name


def check_architecture(model: ModelSection) -> None:
    """The config must name a causal-LM architecture transformers knows (reads config.json only)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not Path(model.name).exists():
        go_offline_if_unreachable()
    if model.trust_remote_code:
        log.warning("trust_remote_code is on: Python code from '%s' will run on this machine", model.name)
    try:
        config = AutoConfig.from_pretrained(
            model.name, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except ValueError as err:  # unknown model_type
        raise UserError(f"{model.name}: unsupported architecture ({str(err).splitlines()[0]})") from err
    except OSError as err:  # not on the hub, no network, gated
        raise UserError(
            f"{model.name}: unknown model id or the hub is unreachable; use a local model directory "
            "(with config.json and safetensors) or check the id and network"
        ) from err
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not model.trust_remote_code:
        raise UserError(
            f"{model.name}: model_type '{config.model_type}' is not a causal language model transformers supports"
        )


def choose_backend(requested: str) -> str:
    """hf (transformers + peft + bitsandbytes) or unsloth. Imports Unsloth when chosen: it must be
    imported before transformers, peft and trl, because it patches them, so call this first."""
    import importlib.util

    import torch

    installed = importlib.util.find_spec("unsloth") is not None
    gpu = torch.cuda.is_available()
    if requested == "hf" or (requested == "auto" and not (installed and gpu)):
        return "hf"
    if not installed:
        raise UserError("model.backend is unsloth but Unsloth is not installed: pip install 'finetune[unsloth]'")
    if not gpu:
        raise UserError("model.backend is unsloth, which needs a CUDA GPU, and none is visible; use model.backend: hf")
    import unsloth  # noqa: F401

    return "unsloth"


def load_tokenizer(path: str, model: ModelSection):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, revision=model.revision, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot load the tokenizer ({str(err).splitlines()[0]})") from err


def tokenizer_for_lengths(model: ModelSection | None, data: DataSection) -> tuple[Any, str]:
    """For `finetune data inspect`: (tokenizer, where from), or (None, why not): then lengths are counted in
    characters. Never raises for a tokenizer that cannot be loaded; the report says why."""
    if model is None:
        return None, "no --model and no recipe: lengths are in characters, not tokens"
    name = model.name
    if name.startswith("builtin:") and name != TINY_MODEL:
        raise UserError(f"--model: unknown built-in model '{name}'; the only one is {TINY_MODEL}")
    if not Path(name).exists() and looks_like_path(name):
        raise UserError(f"{name}: model directory not found")
    try:
        from transformers import AutoTokenizer

        if name == TINY_MODEL:
            name = str(tiny_llama_path())
        elif not Path(name).exists():
            go_offline_if_unreachable()  # a cached tokenizer still loads; no 25 s of retries
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
        ensure_chat_template(tokenizer, data.chat_template)
        check_special_tokens(tokenizer)
    except Exception as err:  # noqa: BLE001 - no tokenizer files, not cached offline, no EOS: all mean characters
        reason = (str(err).splitlines() or [err.__class__.__name__])[0][:160]
        return None, f"no tokenizer could be loaded from {model.name} ({reason}): lengths are in characters, not tokens"
    return tokenizer, model.name


def bnb_config(recipe: Recipe, dtype):
    """recipe.quant -> BitsAndBytesConfig, or None for a 16/32-bit base (plain LoRA)."""
    if recipe.quant.method == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=recipe.quant.method,
        bnb_4bit_use_double_quant=recipe.quant.double_quant,
        bnb_4bit_compute_dtype=dtype,
        # FSDP shards floating-point tensors of one dtype: store the packed 4-bit weights in the
        # dtype of the rest of the model (bitsandbytes reads them bytewise whatever the storage)
        bnb_4bit_quant_storage=dtype if fsdp_active(recipe) else None,
    )


def lora_config(lora: LoraSection):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        init_lora_weights=LORA_INITS[lora.init],
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_base_model(path: str, recipe: Recipe, device, dtype, for_training: bool = True):
    """The frozen base: 4-bit NF4 through bitsandbytes unless quant.method is none."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            revision=recipe.model.revision,
            quantization_config=bnb_config(recipe, dtype),
            dtype=dtype,
            # Under FSDP every rank quantizes on the CPU and FSDP moves only its shard to the GPU, so
            # a model that does not fit one GPU can still be loaded.
            device_map={"": "cpu" if fsdp_active(recipe) else device},
            attn_implementation=recipe.model.attn_implementation,
            trust_remote_code=recipe.model.trust_remote_code,
            use_safetensors=None if recipe.model.allow_pickle else True,  # never unpickle unless allowed
        )
    except ImportError as err:  # e.g. flash_attention_2 requested but not installed
        raise UserError(f"model: {str(err).splitlines()[0]}") from err
    model.config.use_cache = False  # the KV cache is useless in training and costs memory
    if device.type == "cpu" and for_training:
        keep_cpu_weights_differentiable(model)
    return model


def keep_cpu_weights_differentiable(model) -> None:
    """Stop bitsandbytes (0.50) from repacking 4-bit weights for its AVX512-BF16 inference kernel.

    Linear4bit repacks its weight the first time it runs in eval mode on such a CPU, and keeps the
    packed layout when training resumes; that kernel has no autograd formula, so after the first
    validation the gradient through every quantized layer would be silently dropped.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def attach_lora(model, recipe: Recipe):
    """Prepare for training (k-bit prep upcasts norms/embeddings to fp32, as peft recommends) and add LoRA."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    checkpointing = recipe.train.gradient_checkpointing
    kwargs = {"use_reentrant": False}  # non-reentrant works with frozen inputs and is the supported path
    if getattr(model, "is_loaded_in_4bit", False) and not fsdp_active(recipe):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs=kwargs
        )
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()
    if recipe.model.adapter is not None:
        return continue_adapter(model, recipe.model.adapter)
    try:
        return get_peft_model(model, lora_config(recipe.lora))
    except ValueError as err:  # e.g. "Target modules {...} not found in the base model"
        raise UserError(f"lora.target_modules: {str(err).splitlines()[0]}") from err


def continue_adapter(model, adapter: str):
    """model.adapter: train that adapter further, with its own LoRA settings (the recipe's lora section is
    not used). For DPO, TRL's DPOTrainer (1.16) then copies it into a frozen adapter named "ref", its
    reference model: DPO after SFT measures its rewards against the SFT model, as the DPO paper does."""
    from peft import PeftModel

    check_adapter_folder(adapter)
    try:
        return PeftModel.from_pretrained(model, adapter, is_trainable=True)
    except (ValueError, RuntimeError, KeyError) as err:  # shapes or module names of another base model
        raise UserError(f"model.adapter: {adapter} does not fit {model.config.name_or_path} ({err})"[:400]) from err


def check_adapter_folder(adapter: str) -> None:
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise UserError(
            f"model.adapter: {adapter} is not a PEFT adapter folder (no adapter_config.json); "
            "point it at a run's adapter/ folder, e.g. runs/my-sft/adapter"
        )


def load_for_training(path: str, recipe: Recipe, device, dtype, backend: str = "hf"):
    """The model to train. model.kernels is applied here (model/kernels.py); what was applied is kept on the
    model as `finetune_kernels`, for metrics.json."""
    if not isinstance(recipe.train.gradient_checkpointing, bool):  # auto is decided before loading (train/preflight)
        raise ValueError("train.gradient_checkpointing: auto must be decided (true/false) before the model loads")
    if backend == "unsloth":
        model = load_with_unsloth(path, recipe, device, dtype)
    else:
        model = attach_lora(load_base_model(path, recipe, device, dtype), recipe)
    model.finetune_kernels = apply_kernels(model, recipe.model.kernels, backend, device.type == "cuda")
    return model


def load_with_unsloth(path: str, recipe: Recipe, device, dtype):
    """The same recipe through Unsloth's FastLanguageModel (its kernels and gradient checkpointing)."""
    lora = recipe.lora
    if lora.use_dora or lora.init != "default":
        raise UserError("lora.use_dora and lora.init are not supported by the unsloth backend; use model.backend: hf")
    if recipe.model.attn_implementation != "sdpa":  # Unsloth drops the argument and picks the kernel itself
        raise UserError(
            "model.attn_implementation: the unsloth backend chooses the attention kernel itself; "
            "remove the key or set model.backend: hf"
        )
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(
        model_name=path,
        max_seq_length=recipe.data.max_length,
        dtype=dtype,
        load_in_4bit=recipe.quant.method != "none",
        trust_remote_code=recipe.model.trust_remote_code,
        device_map={"": device},  # each torchrun rank on its own GPU (Unsloth's default fills GPU 0 first)
        **({"revision": recipe.model.revision} if recipe.model.revision else {}),
    )
    return FastLanguageModel.get_peft_model(
        model,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,  # Unsloth resolves "all-linear" as peft does (fused Phi-3 names too)
        bias="none",
        use_gradient_checkpointing="unsloth" if recipe.train.gradient_checkpointing else False,
        use_rslora=lora.use_rslora,
        random_state=recipe.train.seed,
        max_seq_length=recipe.data.max_length,
    )
