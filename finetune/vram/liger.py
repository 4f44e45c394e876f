"""What Liger's kernels change in the memory of a training step. Pure arithmetic, bytes everywhere.

Read from liger-kernel 0.8.5 (liger_kernel/ops/*.py); notation as in components.py (T tokens of a micro-batch,
h hidden, I intermediate, V vocabulary, R/P/c bytes of the residual stream, of the projections and of the compute
dtype). Not calibrated on a GPU yet (docs/vram.md, "Not measured yet").

finetune applies Liger's RMSNorm, RoPE and SwiGLU kernels (model.kernels, finetune/model/kernels.py), never its
fused linear cross-entropy: TRL's SFTTrainer computes the loss with its own fused LM head and refuses Liger's,
which would replace the forward TRL patches. `flce_peak` describes stacks that do use Liger's loss
(`vram-estimate --loss-impl liger`), so the estimate can be compared with them.
"""

from __future__ import annotations

import math

from finetune.vram.architectures import ArchitectureSpec
from finetune.vram.components import ActivationDtypes

KERNELS = ("none", "liger")  # TrainingSetup.kernels


def rms_norm_saved(tokens: int, hidden: int, residual: int) -> int:
    """LigerRMSNormFunction (casting mode "llama") saves its input X as it comes, in its own dtype, and the fp32
    inverse RMS per row (RSTD): T x h x R + T x 4. transformers' RMSNorm keeps an fp32 copy of the input instead
    (T x h x 4 + T x 4, components.layer_saved): the same when the residual stream is fp32 (QLoRA), half the
    tensor when it is bf16. Backward writes dX into dY in place (in_place=True)."""
    return tokens * hidden * residual + tokens * 4


def swiglu_saved(tokens: int, intermediate: int, proj: int) -> int:
    """LigerSiLUMulFunction saves the gate and up projections (a, b) and recomputes silu(a) in backward:
    2 x T x I x P, where transformers' act(gate) * up keeps gate, silu(gate) and up (3 x T x I x P). Its
    backward writes da and db into a and b, so the layer's backward transients are not above the eager ones
    (components.layer_backward_transient, left unchanged: an upper bound)."""
    return 2 * tokens * intermediate * proj


def layer_saving(spec: ArchitectureSpec, tokens: int, dtypes: ActivationDtypes, sparse: bool) -> int:
    """Bytes one decoder layer keeps for backward under Liger, fewer than components.layer_saved.

    The norms: T x h x (4 - R) each. The dense MLP: one T x I x P tensor (silu(gate) is recomputed). RoPE
    (LigerRopeFunction rotates q and k in place and saves cos/sin, shared by all layers) saves what transformers'
    apply_rotary_pos_emb saves: nothing more. MoE expert MLPs are counted as without Liger (an upper bound)."""
    h = spec.hidden_size
    norms = spec.norms_per_layer * (tokens * h * 4 + tokens * 4 - rms_norm_saved(tokens, h, dtypes.residual))
    if sparse:
        return norms
    i = spec.intermediate_size
    return norms + 3 * tokens * i * dtypes.proj - swiglu_saved(tokens, i, dtypes.proj)


def final_norm_saved(tokens: int, hidden: int, residual: int) -> int:
    """The model's last RMSNorm, patched like the layers' norms."""
    return rms_norm_saved(tokens, hidden, residual)


def flce_chunk(tokens: int, hidden: int, vocab: int) -> int:
    """Rows of one logits chunk of LigerFusedLinearCrossEntropyFunction (chunk_mem_const 1):
    next_power_of_2(ceil(BT / ceil(V / H))), at most BT."""
    inc_factor = math.ceil(vocab / hidden)
    rows = math.ceil(tokens / inc_factor)
    return min(1 << max(rows - 1, 0).bit_length(), tokens)


def flce_peak(spec: ArchitectureSpec, batch: int, seq: int, dtypes: ActivationDtypes, head_bytes: int) -> int:
    """Liger's fused linear cross-entropy (LigerForCausalLMLoss -> fused_linear_cross_entropy_forward), its peak.

    It computes the gradient during the forward, chunk by chunk, so its peak is there and backward only scales
    grad_input. N = batch x seq positions (the labels are padded by one, not the hidden states sliced). Live:
    the final hidden states (N x h x R), grad_input = zeros_like(input) (N x h x R), the fp32 per-token loss and
    the label mask (N x 5), one logits chunk [chunk, V] in the compute dtype that the Triton kernel overwrites
    with its gradient, the chunk's grad_input product (chunk x h x c) and, under autocast, the compute-dtype
    copies of the head (V x h x c, when it is stored wider: fp32 after QLoRA preparation) and of the input
    chunk. A frozen head gets no grad_weight. The [N, V] logits are never materialised; the chunk is far smaller
    than TRL's [4096 x 32768] tile (components.fused_loss_peak) for large vocabularies.
    """
    n, h, v, c = batch * seq, spec.hidden_size, spec.vocab_size, dtypes.compute
    chunk = flce_chunk(n, h, v)
    head_cast = v * h * c if head_bytes != c else 0
    input_cast = chunk * h * c if dtypes.residual != c else 0
    return 2 * n * h * dtypes.residual + n * 5 + chunk * v * c + chunk * h * c + head_cast + input_cast
