"""The VRAM estimator: peak GPU memory of one training run, from an architecture spec and the recipe's knobs.

Pure arithmetic (no torch import): the component formulas and their sources live in vram_components.py; this
module assembles them into the peaks torch.cuda.max_memory_allocated / max_memory_reserved and nvidia-smi report,
compares them with common GPUs, and advises when a run does not fit.

Peak model. `static` = weights + trainable parameters + optimizer states (present from the first optimizer step on).
The peak is the larger of two moments of a training step:
  forward/loss: static + activations kept for backward + the loss head's working set (its backward);
  backward:     static + gradients + activations kept + one layer's backward transients
                (+ with checkpointing, one layer's recomputed activations).
Loading (weights + the embedding's bf16 and fp32 copies during k-bit preparation) is a floor for tiny runs.
Measured against 36 real runs on an H200 (scripts/vram_calibrate.py, Llama-3.2-1B / Qwen2.5-0.5B, qlora/lora,
seq 512/2048, checkpointing on/off, batch 1/4, fused and full loss): peak allocated median |error| 1.5%, between
-2.0% and +11.4%.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from finetune.errors import UserError
from finetune.vram import components as vc
from finetune.vram import liger
from finetune.vram.architectures import ArchitectureSpec, lora_targets

GiB = 1024**3

# CUDA context + the kernels torch/cuBLAS/bitsandbytes load (lazily, CUDA_MODULE_LOADING=LAZY): device memory
# used minus torch.cuda.memory_reserved() after training, measured 750 MiB on an H200 (torch 2.11, CUDA 13.0,
# scripts/vram_calibrate.py). Older CUDA/GPUs report 300-500 MiB; 750 keeps the fit check on the safe side.
CUDA_CONTEXT_BYTES = 750 * vc.MiB
# The caching allocator rounds requests (512 B blocks, 2 MiB segments, large segments rounded to 2 MiB) and keeps
# freed segments cached for reuse: measured max_memory_reserved = 1.03 x max_memory_allocated + ~128 MiB across
# the calibration grid (H200, median error ~1.5%).
FRAGMENTATION = 1.03
RESERVED_SLACK_BYTES = 128 * vc.MiB
# cuBLAS workspaces (allocated through torch's allocator since torch 2.2), the optimizer's small tensors, RNG state.
FRAMEWORK_BYTES = 64 * vc.MiB

# GPUs as sold (decimal GB) and the GiB torch sees: usable = total reported by cudaMemGetInfo (slightly under the
# nameplate: ECC and driver reservations). Values in GiB from torch.cuda.get_device_properties().total_memory.
GPUS: dict[str, float] = {
    "T4 16GB": 14.57,
    "L4 24GB": 22.03,
    "RTX 3090 24GB": 23.57,
    "RTX 4090 24GB": 23.55,
    "A10G 24GB": 22.05,
    "A100 40GB": 39.39,
    "A100 80GB": 79.14,
    "H100 80GB": 79.10,
    "H200 141GB": 139.8,
}

METHODS = ("full", "lora", "qlora")
OBJECTIVES = ("sft", "dpo", "orpo")
OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd")
PAGED = ("paged_adamw_8bit", "paged_adamw_32bit")


@dataclass(frozen=True)
class TrainingSetup:
    """The knobs of a run that move memory."""

    method: str = "qlora"  # full | lora | qlora
    lora_r: int = 16
    lora_targets: str | tuple[str, ...] = "all-linear"
    lora_dropout: float = 0.05  # > 0 adds a dropout mask per adapted linear
    micro_batch_size: int = 4
    seq_len: int = 1024
    gradient_checkpointing: bool = True
    optimizer: str = "adamw_torch"
    dtype: str = "bf16"  # compute dtype
    double_quant: bool = True
    loss_impl: str = "fused"  # fused (TRL SFTTrainer) | full (materialised logits) | liger (Liger's fused loss)
    kernels: str = "none"  # none | liger: Liger's RMSNorm/SwiGLU/RoPE kernels (vram/liger.py)
    attn_implementation: str = "sdpa"  # sdpa | eager (flash_attention_2 is counted as sdpa)
    objective: str = "sft"  # sft | dpo | orpo: dpo/orpo put chosen and rejected through one forward
    precompute_ref: bool = False  # dpo: reference log-probs scored once before training (no reference forward)
    dropout_mask_bytes: int = 1  # 1 on CUDA (bool mask); tests on CPU set 4

    def validate(self) -> TrainingSetup:
        for name in ("lora_r", "micro_batch_size", "seq_len"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name.replace('_', '-')} must be a positive integer (got {getattr(self, name)})")
        if self.seq_len < 2:
            raise UserError("seq-len must be at least 2 (one token predicts the next)")
        choices = {
            "method": METHODS,
            "optimizer": OPTIMIZERS,
            "dtype": tuple(vc.DTYPE_BYTES),
            "loss_impl": ("fused", "full", "liger"),
            "kernels": liger.KERNELS,
            "attn_implementation": ("sdpa", "eager", "flash_attention_2"),
            "objective": OBJECTIVES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(
                    f"{name.replace('_', '-')} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})"
                )
        return self


def setup_from_recipe(recipe: Any, kernels: str | None = None) -> TrainingSetup:
    """Map a finetune.config.Recipe onto the estimator's knobs (quant none -> lora, nf4/fp4 -> qlora).

    `kernels`: what the run resolved model.kernels to; by default model.kernels as a GPU run with the hf backend
    resolves it (auto = liger when liger-kernel is installed)."""
    targets = recipe.lora.target_modules
    if kernels is None:
        wanted, backend = recipe.model.kernels, recipe.model.backend
        auto = wanted == "auto" and backend != "unsloth" and importlib.util.find_spec("liger_kernel") is not None
        kernels = "liger" if wanted == "liger" or auto else "none"
    return TrainingSetup(
        method="lora" if recipe.quant.method == "none" else "qlora",
        lora_r=recipe.lora.r,
        lora_targets=targets if isinstance(targets, str) else tuple(targets),
        lora_dropout=recipe.lora.dropout,
        micro_batch_size=recipe.train.micro_batch_size,
        seq_len=recipe.data.max_length,
        gradient_checkpointing=recipe.train.gradient_checkpointing is not False,  # auto: on until decided
        optimizer=recipe.train.optimizer,
        dtype="bf16" if recipe.model.dtype == "auto" else recipe.model.dtype,
        double_quant=recipe.quant.double_quant,
        attn_implementation=recipe.model.attn_implementation,
        kernels=kernels,
        objective=recipe.train.objective,
        precompute_ref=recipe.train.objective == "dpo" and recipe.preference.precompute_ref_log_probs,
    )


@dataclass
class Estimate:
    model: str
    setup: TrainingSetup
    total_params: int
    trainable_params: int
    components: dict[str, vc.Component] = field(default_factory=dict)
    peak_allocated_bytes: int = 0
    peak_reserved_bytes: int = 0
    total_bytes: int = 0  # reserved + CUDA context + paged optimizer states: what nvidia-smi shows
    unaccounted_bytes: int = 0  # paged optimizer states: unified memory PyTorch does not count

    def to_json(self, gpus: dict[str, float] | None = None, unchecked: Estimate | None = None) -> dict[str, Any]:
        """`unchecked`: the same run without gradient checkpointing, when train.gradient_checkpointing is auto:
        each GPU then says what auto picks there (auto_checkpointing) and the total without it is added."""
        auto = {} if unchecked is None else {"without_checkpointing_total_bytes": unchecked.total_bytes}
        return {
            "model": self.model,
            "setup": asdict(self.setup),
            "parameters": {"total": self.total_params, "trainable": self.trainable_params},
            "components": {name: comp.bytes for name, comp in self.components.items()},
            "explanations": {name: comp.why for name, comp in self.components.items()},
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "total_bytes": self.total_bytes,
            **auto,
            "gpus": [
                {
                    "name": name,
                    "memory_bytes": int(gib * GiB),
                    "fits": fits(self, int(gib * GiB)),
                    **({} if unchecked is None else {"auto_checkpointing": auto_checkpointing(unchecked, gib * GiB)}),
                }
                for name, gib in (gpus or GPUS).items()
            ],
        }

    def dumps(self, gpus: dict[str, float] | None = None) -> str:
        return json.dumps(self.to_json(gpus), indent=2)


def fits(estimate: Estimate, memory_bytes: int) -> bool:
    """Whether the run fits a GPU with this much memory (nvidia-smi's total: context included)."""
    return estimate.total_bytes <= memory_bytes


# train.gradient_checkpointing: auto leaves checkpointing off only when the run without it needs at most this share
# of the memory: the total of the 16 checkpointing-off calibration cells was at worst 1.9% low; the room left absorbs that,
# other processes' growth and a longer validation batch.
CHECKPOINTING_OFF_SHARE = 0.8


def auto_checkpointing(unchecked: Estimate, memory_bytes: float) -> str:
    """What train.gradient_checkpointing: auto picks with this much free memory, given the run's estimate without
    checkpointing: "off" when that fits in CHECKPOINTING_OFF_SHARE of it, else "on"."""
    return "off" if unchecked.total_bytes <= CHECKPOINTING_OFF_SHARE * memory_bytes else "on"


# ---------------------------------------------------------------------------------------------------------------


def estimate(spec: ArchitectureSpec, setup: TrainingSetup, model: str = "") -> Estimate:
    """Peak memory of training `spec` with `setup` on one CUDA GPU."""
    setup.validate()
    c = vc.DTYPE_BYTES[setup.dtype]
    comps: dict[str, vc.Component] = {}
    # DPO/ORPO: TRL concatenates each pair's chosen and rejected sequences into one forward of 2 x micro-batch
    # rows, each padded to seq_len: every activation and logits term below sees twice the rows of SFT.
    rows = 2 if setup.objective in ("dpo", "orpo") else 1
    b, s = setup.micro_batch_size * rows, setup.seq_len
    t = b * s
    # TRL's ORPOTrainer (trl.experimental, 1.16) runs the model for its full logits; DPOTrainer uses the fused head.
    loss_impl = "full" if setup.objective == "orpo" else setup.loss_impl
    targets = None if setup.method == "full" else lora_targets(spec, setup.lora_r, setup.lora_targets)
    total = spec.total_params()

    # ---- weights
    if setup.method == "qlora":
        residual = 4  # prepare_model_for_kbit_training: fp32 embeddings make the residual stream fp32
        comps["weights_4bit"] = vc.Component(
            vc.quantized_weight_bytes(spec, setup.double_quant),
            f"{spec.linear_numel():,} linear weights in NF4: numel/2 + absmax per 64 "
            + ("(uint8, nested fp32 per 256 blocks)" if setup.double_quant else "(fp32)"),
        )
        head_bytes = 4
        tied = " (lm_head tied to the embedding: stored once)" if spec.tie_word_embeddings else ""
        moe = " incl. MoE experts (not quantized by bnb)" if spec.is_moe else ""
        comps["weights_unquantized"] = vc.Component(
            vc.unquantized_numel(spec) * 4,
            f"embeddings, lm_head, norms, biases{moe} upcast to fp32 by prepare_model_for_kbit_training{tied}",
        )
    else:
        residual = c
        head_bytes = c
        comps["weights"] = vc.Component(total * c, f"{total:,} parameters in {setup.dtype}")

    # ---- trainable parameters, gradients, optimizer states
    if targets is not None:
        trainable = sum(x.params for x in targets)
        sizes = vc.lora_param_sizes(targets)
        comps["lora_params"] = vc.Component(trainable * 4, "adapter weights in fp32 (peft autocast_adapter_dtype)")
        if setup.objective == "dpo":
            comps["reference_adapter"] = vc.Component(
                trainable * 4, "DPO: TRL copies the adapter into a frozen 'ref' adapter, its reference (fp32)"
            )
        comps["lora_grads"] = vc.Component(trainable * 4, "adapter gradients, fp32 like the adapters")
        state_bytes = vc.optimizer_state_bytes(setup.optimizer, sizes, 4)
    else:
        trainable = total
        comps["gradients"] = vc.Component(trainable * c, f"one gradient per parameter in {setup.dtype}")
        sizes = [trainable]
        state_bytes = vc.optimizer_state_bytes(setup.optimizer, sizes, c)
    paged = setup.optimizer in PAGED
    comps["optimizer_states"] = vc.Component(
        state_bytes,
        _optimizer_why(setup.optimizer, "fp32" if targets is not None else setup.dtype)
        + (" - paged: unified memory, not in torch's max_memory_allocated" if paged else ""),
    )

    # ---- activations
    dtypes = vc.ActivationDtypes(
        residual=residual, proj=residual if setup.method == "qlora" else c, compute=c, mask=setup.dropout_mask_bytes
    )
    attn = "eager" if setup.attn_implementation == "eager" else "sdpa"
    dropout = setup.lora_dropout > 0 and targets is not None
    per_layer = {sparse: vc.layer_saved(spec, b, s, dtypes, attn, targets, dropout, sparse) for sparse in (False, True)}
    if setup.kernels == "liger":  # Liger's RMSNorm and SwiGLU keep less (vram/liger.py)
        per_layer = {sparse: saved - liger.layer_saving(spec, t, dtypes, sparse) for sparse, saved in per_layer.items()}
    all_layers = spec.dense_layers * per_layer[False] + spec.sparse_layers * per_layer[True]
    biggest_layer = max(per_layer[False] if spec.dense_layers else 0, per_layer[True] if spec.sparse_layers else 0)
    final_norm = t * spec.hidden_size * 4 + t * 4  # RMSNorm keeps its input upcast to fp32 and the rsqrt
    final_norm = liger.final_norm_saved(t, spec.hidden_size, residual) if setup.kernels == "liger" else final_norm
    # Shared by every layer: RoPE cos/sin [s, d] (in the residual dtype) and autocast's cached compute-dtype copies
    # of the adapter weights (kept for backward, torch autocast weight cache).
    shared = 2 * s * spec.head_dim * residual + (sum(x.params for x in targets) * c if targets else 0)
    if setup.gradient_checkpointing:
        kept = spec.num_layers * t * spec.hidden_size * residual + final_norm + shared
        comps["activations"] = vc.Component(
            kept, f"checkpointed layer inputs: {spec.num_layers} x b*s*h in {_dt(residual)} (+ final norm)"
        )
        recompute = biggest_layer
        comps["activations_recompute"] = vc.Component(
            recompute, "one layer's activations recomputed during backward (checkpointing)"
        )
    else:
        kept = all_layers + final_norm + shared
        liger_on = ", Liger RMSNorm/SwiGLU" if setup.kernels == "liger" else ""
        comps["activations"] = vc.Component(
            kept, f"kept for backward: {spec.num_layers} layers, {attn} attention{liger_on}"
        )
        recompute = 0
    dequant = _largest_linear(spec) * c if setup.method == "qlora" else 0  # bnb dequantizes one weight at a time
    layer_bwd = vc.layer_backward_transient(spec, t, dtypes) + dequant
    comps["backward_transients"] = vc.Component(layer_bwd, "one layer's gradients in flight (+ a dequantized weight)")

    # ---- logits and loss
    if loss_impl == "fused":
        loss = vc.fused_loss_peak(spec, b, s, dtypes, head_bytes)
        why = f"TRL fused LM head: [{min(t, vc.TRL_TOKEN_CHUNK)} x {vc.TRL_VOCAB_CHUNK}] tiles, no full logits"
    elif loss_impl == "liger":
        loss = liger.flce_peak(spec, b, s, dtypes, head_bytes)
        why = f"Liger fused linear cross-entropy: [{liger.flce_chunk(t, spec.hidden_size, spec.vocab_size)} x V] chunks"
    else:
        loss = vc.full_logits_peak(spec, b, s, dtypes, head_bytes)
        why = f"full logits b*s*V ({t:,} x {spec.vocab_size:,}): fp32 log_softmax + 2 fp32 grads at backward"
    comps["logits_loss"] = vc.Component(loss, why)
    # DPO's reference forward comes first in each step, under no_grad with checkpointing off: nothing is kept,
    # so its peak is one layer's working set plus the fused head's tiles, on top of static memory.
    reference = 0
    if setup.objective == "dpo" and not setup.precompute_ref:
        reference = vc.reference_forward_peak(spec, t, dtypes, dequant, loss)
        comps["reference_forward"] = vc.Component(
            reference, "DPO reference forward (adapter off, no_grad): one layer's working set + the fused head"
        )
    comps["framework"] = vc.Component(FRAMEWORK_BYTES, "cuBLAS workspaces, RNG and optimizer bookkeeping")

    # ---- peaks
    weights = sum(v.bytes for k, v in comps.items() if k.startswith("weights"))
    params = sum(comps[k].bytes for k in ("lora_params", "reference_adapter") if k in comps)
    grads = comps.get("lora_grads", comps.get("gradients")).bytes
    states = 0 if paged else state_bytes
    static = weights + params + states + FRAMEWORK_BYTES
    forward_peak = static + kept + loss  # grads of the last step were freed by zero_grad(set_to_none=True)
    backward_peak = static + grads + kept + recompute + layer_bwd
    optimizer_peak = static + grads + (trainable * c if setup.optimizer == "adamw_torch" and targets is None else 0)
    # Loading: prepare_model_for_kbit_training upcasts one tensor at a time, so the largest bf16 tensor (the
    # embedding) and its fp32 copy coexist once (measured: within 3% of the load peak on an H200).
    load_peak = weights + params + (spec.embedding_numel() * c if setup.method == "qlora" else 0)
    reference_peak = static + reference  # before the policy forward: no activations kept yet
    peak = max(forward_peak, backward_peak, optimizer_peak, load_peak, reference_peak)
    reserved = int(peak * FRAGMENTATION) + RESERVED_SLACK_BYTES
    if loss_impl == "full":
        # The freed compute-dtype logits block stays cached and cannot serve the fp32 [T, V] buffers (measured).
        reserved += t * spec.vocab_size * c
    unaccounted = state_bytes if paged else 0
    comps["allocator_overhead"] = vc.Component(
        reserved - peak,
        f"reserved - allocated: cached blocks (x{FRAGMENTATION} + {RESERVED_SLACK_BYTES // vc.MiB} MiB)",
    )
    comps["cuda_context"] = vc.Component(CUDA_CONTEXT_BYTES, "CUDA context and kernels, outside torch's allocator")
    return Estimate(
        model=model,
        setup=setup,
        total_params=total,
        trainable_params=trainable,
        components=comps,
        peak_allocated_bytes=peak,
        peak_reserved_bytes=reserved,
        total_bytes=reserved + CUDA_CONTEXT_BYTES + unaccounted,
        unaccounted_bytes=unaccounted,
    )


def _largest_linear(spec: ArchitectureSpec) -> int:
    linears = spec.layer_linears(sparse=False) + (spec.layer_linears(sparse=True) if spec.is_moe else [])
    return max(lin.in_features * lin.out_features for lin in linears)


def _dt(nbytes: int) -> str:
    return {2: "bf16", 4: "fp32", 1: "uint8"}.get(nbytes, f"{nbytes}B")


def _optimizer_why(optimizer: str, dtype: str) -> str:
    return {
        "adamw_torch": f"AdamW: exp_avg + exp_avg_sq, 2 x {dtype} per trainable parameter",
        "adamw_8bit": "8-bit AdamW (bitsandbytes): 2 bytes per parameter + fp32 absmax per 256",
        "paged_adamw_8bit": "paged 8-bit AdamW: 2 bytes per parameter + absmax",
        "paged_adamw_32bit": "paged AdamW: 2 x fp32 per parameter",
        "sgd": f"SGD momentum buffer, 1 x {dtype} per parameter",
    }[optimizer]


# ---------------------------------------------------------------------------------------------------------------
# Advice


def advise(spec: ArchitectureSpec, setup: TrainingSetup, memory_bytes: int) -> list[str]:
    """Concrete changes that make the run fit `memory_bytes` (empty when it already fits)."""
    if fits(estimate(spec, setup), memory_bytes):
        return []
    tips: list[str] = []
    best_batch = _largest(lambda n: replace(setup, micro_batch_size=n), setup.micro_batch_size, spec, memory_bytes)
    if best_batch:
        tips.append(f"micro_batch_size {best_batch} fits (raise gradient_accumulation to keep the effective batch)")
    best_len = _largest(lambda n: replace(setup, seq_len=n), setup.seq_len, spec, memory_bytes, minimum=2)
    if best_len:
        tips.append(f"max_length {best_len} fits at micro_batch_size {setup.micro_batch_size}")
    # (applies, the change, what to say, the --set flag that makes it: None where no recipe key does)
    candidates = [
        (
            not setup.gradient_checkpointing,
            {"gradient_checkpointing": True},
            "turn gradient checkpointing on",
            "train.gradient_checkpointing=true",
        ),
        (
            setup.optimizer in ("adamw_torch", "paged_adamw_32bit"),
            {"optimizer": "adamw_8bit"},
            "use the 8-bit optimizer adamw_8bit",
            "train.optimizer=adamw_8bit",
        ),
        (setup.method == "lora", {"method": "qlora"}, "load the base in 4-bit (quant: nf4)", "quant.method=nf4"),
        (setup.loss_impl == "full", {"loss_impl": "fused"}, "use the fused loss (TRL SFTTrainer)", None),
    ]
    applicable = [c for c in candidates if c[0]]
    for _, change, text, _ in applicable:
        after = estimate(spec, replace(setup, **change))
        verdict = "fits" if fits(after, memory_bytes) else "still too big"
        tips.append(f"{text}: {after.total_bytes / GiB:.1f} GiB ({verdict})")
    combined = _smallest_combination(spec, setup, memory_bytes, applicable)
    if combined:
        tips.append(combined)
    if not tips:
        tips.append("no setting of this recipe fits; choose a smaller model or a GPU with more memory")
    return tips


def _smallest_combination(spec: ArchitectureSpec, setup: TrainingSetup, memory_bytes: int, candidates) -> str:
    """When no fix fits alone: the fewest fixes that fit together (the smallest estimate among those), with
    the exact --set flags. Empty when one fix alone fits, or when not even all of them together do."""
    if any(fits(estimate(spec, replace(setup, **change)), memory_bytes) for _, change, _, _ in candidates):
        return ""
    for size in range(2, len(candidates) + 1):
        fitting = []
        for chosen in itertools.combinations(candidates, size):
            after = estimate(spec, replace(setup, **{k: v for _, change, _, _ in chosen for k, v in change.items()}))
            if fits(after, memory_bytes):
                fitting.append((after.total_bytes, chosen))
        if fitting:
            total, chosen = min(fitting, key=lambda item: item[0])
            what = " + ".join(text for _, _, text, _ in chosen)
            flags = " ".join(f"--set {flag}" for _, _, _, flag in chosen if flag)
            return f"together, {what}: {total / GiB:.1f} GiB (fits)" + (f"; {flags}" if flags else "")
    return ""


def _largest(make, upper: int, spec: ArchitectureSpec, memory_bytes: int, minimum: int = 1) -> int | None:
    """Largest n in [minimum, upper) whose estimate fits (memory grows with n, so bisect)."""
    lo, hi = minimum, upper - 1
    if hi < lo or not fits(estimate(spec, make(lo)), memory_bytes):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(estimate(spec, make(mid)), memory_bytes):
            lo = mid
        else:
            hi = mid - 1
    return lo
