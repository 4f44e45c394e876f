"""The formulas behind each memory component of the VRAM estimate. Pure arithmetic, bytes everywhere.

Each function states its formula and the library code it comes from (versions pinned by the project:
bitsandbytes 0.50, peft 0.21, transformers 5.24, TRL 1.16, torch 2.13). Notation: T = tokens in a micro-batch
(batch * seq_len), h = hidden size, I = intermediate size, nh/nkv = query/key-value heads, d = head dim,
c = bytes of the compute dtype, R = bytes of the residual stream (the dtype hidden states travel in between layers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from finetune.vram.architectures import ArchitectureSpec, LoraTarget

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
MiB = 1024**2

# bitsandbytes/functional.py quantize_4bit: blocksize defaults to 64; with compress_statistics (double quant) the
# fp32 absmax is quantized again by quantize_blockwise(blocksize=256) into uint8 + one fp32 absmax per 256 blocks.
NF4_BLOCKSIZE = 64
NESTED_BLOCKSIZE = 256
NF4_CODE_BYTES = 16 * 4  # get_4bit_type(): the 16-entry fp32 code table, one per quantized weight
NESTED_CODE_BYTES = 256 * 4  # create_dynamic_map(): 256 fp32 entries, copied into every nested QuantState (copy=True)
OFFSET_BYTES = 4  # QuantState.offset: the fp32 mean subtracted from absmax before nesting

# TRL 1.15/1.16 trl/trainer/utils.py + trl/kernels/chunked_logprob.py (same constants in both): the fused LM
# head projects tiles of [TOKEN_CHUNK_SIZE tokens, _CHUNKED_LOGPROB_CHUNK_SIZE vocabulary columns] into one
# reused buffer (mm_buf).
TRL_VOCAB_CHUNK = 32768
TRL_TOKEN_CHUNK = 4096

# bitsandbytes/optim/optimizer.py Optimizer2State.init_state: tensors under 4096 elements keep fp32 states; 8-bit
# states carry one fp32 absmax per 256 elements per state.
BNB_MIN_8BIT_SIZE = 4096
BNB_OPTIM_BLOCK = 256


@dataclass(frozen=True)
class Component:
    bytes: int
    why: str


# ---- weights ----------------------------------------------------------------------------------------------------


def nf4_bytes(numel: int, double_quant: bool) -> int:
    """One Params4bit: packed 4-bit data (numel/2 bytes) + its QuantState tensors.

    Without double quant: fp32 absmax per 64-element block + the code table.
    With double quant: uint8 absmax per block + fp32 absmax per 256 blocks + the fp32 offset + the code table
    + the nested quantizer's own 256-entry fp32 map (quantize_blockwise stores code.to(device, copy=True)).
    """
    blocks = math.ceil(numel / NF4_BLOCKSIZE)
    data = math.ceil(numel / 2)
    if not double_quant:
        return data + blocks * 4 + NF4_CODE_BYTES
    nested = math.ceil(blocks / NESTED_BLOCKSIZE) * 4 + OFFSET_BYTES + NESTED_CODE_BYTES
    return data + blocks + nested + NF4_CODE_BYTES


def quantized_weight_bytes(spec: ArchitectureSpec, double_quant: bool) -> int:
    """Every nn.Linear except lm_head becomes a bnb Linear4bit (transformers' bnb quantizer, skipping the head)."""
    total = 0
    for sparse, layers in ((False, spec.dense_layers), (True, spec.sparse_layers)):
        if layers:
            total += layers * sum(
                nf4_bytes(lin.in_features * lin.out_features, double_quant) for lin in spec.layer_linears(sparse)
            )
    return total


def linear_bias_numel(spec: ArchitectureSpec) -> int:
    """Biases of the quantized linears stay in floating point (Linear4bit quantizes the weight only)."""
    total = 0
    for sparse, layers in ((False, spec.dense_layers), (True, spec.sparse_layers)):
        if layers:
            total += layers * sum(lin.out_features for lin in spec.layer_linears(sparse) if lin.bias)
    return total


def unquantized_numel(spec: ArchitectureSpec) -> int:
    """Embeddings, lm_head (0 when tied), norms, quantized layers' biases, MoE experts and routers.

    transformers 5 keeps MoE experts as 3-D nn.Parameters, which the bitsandbytes quantizer does not convert.
    """
    return (
        spec.embedding_numel()
        + spec.lm_head_numel()
        + spec.norm_numel()
        + linear_bias_numel(spec)
        + spec.expert_numel()
    )


# ---- optimizer --------------------------------------------------------------------------------------------------


def optimizer_state_bytes(optimizer: str, param_sizes: list[int], param_bytes: int) -> int:
    """States of the trainable parameters. param_bytes: bytes per element of the parameters (fp32 adapters: 4).

    adamw_torch: exp_avg + exp_avg_sq, zeros_like(param) -> 2 x param dtype (torch/optim/adamw.py).
    adamw_8bit / paged_adamw_8bit: 2 uint8 states + 2 fp32 absmax per 256 elements; tensors under 4096 elements
    stay 32-bit (bitsandbytes Optimizer2State). paged_adamw_32bit: 2 x fp32. sgd: one momentum buffer.
    """
    if optimizer == "sgd":
        return sum(param_sizes) * param_bytes
    if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        total = 0
        for n in param_sizes:
            total += 2 * 4 * n if n < BNB_MIN_8BIT_SIZE else 2 * n + 2 * 4 * math.ceil(n / BNB_OPTIM_BLOCK)
        return total
    if optimizer == "paged_adamw_32bit":
        return 2 * 4 * sum(param_sizes)
    return 2 * param_bytes * sum(param_sizes)


def lora_param_sizes(targets: list[LoraTarget]) -> list[int]:
    """Element counts of every adapter tensor (A and B per layer), for per-tensor optimizer rules."""
    sizes: list[int] = []
    for t in targets:
        sizes += [t.rank * t.linear.in_features] * t.layers + [t.rank * t.linear.out_features] * t.layers
    return sizes


# ---- activations ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationDtypes:
    """Bytes per element of what a layer saves. R: residual stream; P: outputs of the projections; c: compute.

    QLoRA: prepare_model_for_kbit_training upcasts the embeddings to fp32, so the residual stream is fp32 (R=4); bnb
    Linear4bit returns its input's dtype, so projections of the fp32 normed stream are fp32 too (P=4).
    LoRA/full in bf16: autocast matmuls return bf16 and the weights are bf16 (R=P=2).
    mask: dropout mask bytes; CUDA's fused native_dropout keeps a bool mask (1 byte), CPU keeps a float one.
    """

    residual: int
    proj: int
    compute: int
    mask: int = 1


def lora_linear_saved(tokens: int, target: LoraTarget, dtypes: ActivationDtypes, dropout: bool) -> int:
    """peft lora.Linear forward: lora_B(lora_A(dropout(x.to(fp32)))) under autocast.

    Saved per adapted linear: the dropout mask (when lora_dropout > 0), the autocast bf16 copy of the dropout
    output that lora_A's matmul keeps, and lora_A's output kept by lora_B. The 4-bit base layer saves nothing
    (bitsandbytes MatMul4Bit keeps only the quantized weight) and its dequantized weight is a transient.
    """
    width = target.linear.in_features
    saved = tokens * width * dtypes.compute + tokens * target.rank * dtypes.compute
    if dropout:
        saved += tokens * width * dtypes.mask
    return saved


def attention_saved(spec: ArchitectureSpec, batch: int, seq: int, c: int, attn: str) -> int:
    """What attention keeps for backward (RoPE's cos/sin are shared by all layers and left out).

    sdpa (flash/efficient kernels, GQA via enable_gqa, no padding mask): q, k, v in the compute dtype (autocast
    copies), the output and the fp32 logsumexp per head and token (torch/nn/functional scaled_dot_product_attention).
    eager (transformers eager_attention_forward): q, repeat_kv'd k and v (nh heads), the fp32 softmax output
    and its compute-dtype copy used by the second matmul: b * nh * s^2 * (4 + c).
    """
    t, nh, nkv, d = batch * seq, spec.num_heads, spec.num_kv_heads, spec.head_dim
    if attn == "eager":
        return 3 * t * nh * d * c + batch * nh * seq * seq * (4 + c)
    return t * (2 * nh + 2 * nkv) * d * c + t * nh * 4


def layer_saved(
    spec: ArchitectureSpec,
    batch: int,
    seq: int,
    dtypes: ActivationDtypes,
    attn: str,
    lora: list[LoraTarget] | None,
    dropout: bool,
    sparse: bool,
) -> int:
    """Bytes one decoder layer keeps for backward without checkpointing.

    Norms (RMSNorm): hidden.to(fp32) is what pow/mul keep: the residual itself when it is fp32 (QLoRA), a fresh
    fp32 copy otherwise (T x h x 4 either way), plus the fp32 rsqrt per token. MLP: act(gate) keeps gate, gate*up keeps both
    factors: 3 x T x I x P. LoRA adapters: lora_linear_saved. Full fine-tuning (lora None): each linear keeps its
    input in the compute dtype (q/k/v and gate/up share theirs). MoE: see moe_saved.
    """
    t, h = batch * seq, spec.hidden_size
    saved = spec.norms_per_layer * (t * h * 4 + t * 4)
    saved += attention_saved(spec, batch, seq, dtypes.compute, attn)
    if sparse:
        saved += moe_saved(spec, t, dtypes)
    else:
        saved += 3 * t * spec.intermediate_size * dtypes.proj
    if lora is None:  # full fine-tuning: inputs of qkv, o, gate/up, down (+ normalized x kept for the norm weight grad)
        q_width = spec.num_heads * spec.head_dim
        mlp_in = spec.intermediate_size if not sparse else 0
        saved += t * (h + q_width + h + mlp_in) * dtypes.compute + spec.norms_per_layer * t * h * dtypes.compute
    else:
        names = {lin.name for lin in spec.layer_linears(sparse)}
        for target in lora:
            if target.linear.name in names:
                saved += lora_linear_saved(t, target, dtypes, dropout)
    return saved


def moe_saved(spec: ArchitectureSpec, tokens: int, dtypes: ActivationDtypes) -> int:
    """Sparse MLP (transformers 5 MixtralExperts / Qwen2MoeExperts loop over the experts that got tokens).

    Router: logits in the compute dtype and their fp32 softmax (T x E x (c + 4)). Each token visits k experts:
    the gathered input (c), gate_up output (2I, P), act output and product (2 x I x P), the routing-weight product
    (h, P): T x k x (h*c + 4*I*P + h*P). qwen2_moe adds the shared expert (a dense MLP) and its sigmoid gate.
    """
    k, i, h = spec.num_experts_per_tok, spec.moe_intermediate_size, spec.hidden_size
    saved = tokens * spec.num_experts * (dtypes.compute + 4)
    saved += tokens * k * (h * dtypes.compute + 4 * i * dtypes.proj + h * dtypes.proj)
    if spec.shared_expert_intermediate_size:
        saved += 3 * tokens * spec.shared_expert_intermediate_size * dtypes.proj + tokens * (h + 1) * dtypes.proj
    return saved


def layer_backward_transient(spec: ArchitectureSpec, tokens: int, dtypes: ActivationDtypes) -> int:
    """Gradients in flight while one layer runs backward: the incoming residual grad and its norm grad (2 x T x h
    in fp32) and the MLP's intermediate grads. Read from the code: grad of down_proj's input, of gate/up and of the
    activation, T x I each, while the layer's saved tensors are freed as backward walks past them. Measured on an
    H200 (scripts/vram_calibrate.py): the net peak is T x I x 4 bytes in QLoRA (fp32 everywhere) and T x I x 6 in
    bf16 LoRA (bf16 base grads plus the fp32 grad of peft's cast of the adapter input)."""
    i = (
        spec.intermediate_size
        if not spec.is_moe
        else max(spec.moe_intermediate_size, spec.shared_expert_intermediate_size)
    )
    per_i = 4 if dtypes.proj == 4 else 3 * dtypes.proj
    return 2 * tokens * spec.hidden_size * 4 + tokens * i * per_i


# ---- logits and loss --------------------------------------------------------------------------------------------


def fused_loss_peak(spec: ArchitectureSpec, batch: int, seq: int, dtypes: ActivationDtypes, head_bytes: int) -> int:
    """TRL 1.16 fused LM head (add_fused_lm_head -> ChunkedLogProbFunction), at its backward, its peak.

    N = batch x (seq - 1) scored positions (all labels valid: an upper bound; prompt masking scores fewer).
    Kept from the forward: hidden_states[mask] (N x h x R) and fp32 log_z/entropy (2 x N x 4). Backward allocates
    grad_hidden in fp32 (N x h x 4), one reused tile buffer mm_buf [min(N, 4096), 32768] in the compute dtype and
    casts each 32768-row slice of the head to the compute dtype when it is stored wider (fp32 after QLoRA prep).
    The [N, V] logits are never materialised.
    """
    n, h, c = batch * (seq - 1), spec.hidden_size, dtypes.compute
    vocab_chunk = min(TRL_VOCAB_CHUNK, spec.vocab_size)
    tile = min(n, TRL_TOKEN_CHUNK) * vocab_chunk * c
    head_cast = vocab_chunk * h * c if head_bytes != c else 0
    hidden_cast = min(n, TRL_TOKEN_CHUNK) * h * c if dtypes.residual != c else 0
    return n * h * dtypes.residual + 2 * n * 4 + n * h * 4 + tile + head_cast + hidden_cast


def full_logits_peak(spec: ArchitectureSpec, batch: int, seq: int, dtypes: ActivationDtypes, head_bytes: int) -> int:
    """transformers ForCausalLMLoss (loss_utils.py): logits [T, V] in the compute dtype, .float() for the loss,
    cross_entropy keeps the fp32 log_softmax output. The backward peak holds that output, the fp32 grad nll_loss
    writes and the fp32 grad of log_softmax's input at once: T x V x 12 bytes (the compute-dtype logits are freed
    once the loss is taken; c <= 4 so the forward's T x V x (c + 8) is not above it). An fp32 head under autocast
    is cast to the compute dtype first (V x h x c)."""
    t, v = batch * seq, spec.vocab_size
    head_cast = v * spec.hidden_size * dtypes.compute if head_bytes != dtypes.compute else 0
    return t * v * 12 + head_cast + t * spec.hidden_size * 4


def reference_forward_peak(
    spec: ArchitectureSpec, tokens: int, dtypes: ActivationDtypes, dequant: int, head: int
) -> int:
    """DPO's reference forward (TRL 1.16 compute_ref_log_probs): torch.no_grad, gradient checkpointing switched
    off, the adapter disabled. Without autograd each layer's intermediates are freed as soon as the next op has
    read them, so the peak is the residual stream in and out of the biggest layer, that layer's largest
    intermediate (the MLP's gate and up projections, in the compute dtype), a dequantized weight, and the fused
    LM head's working set (the same tiles as the policy's loss; only the per-token log-probs are returned)."""
    residual = 2 * tokens * spec.hidden_size * dtypes.residual
    mlp = 2 * tokens * spec.intermediate_size * dtypes.compute
    return residual + mlp + dequant + head
