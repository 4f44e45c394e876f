"""Built-in offline catalogue: config.json values of popular base models, addressed by their hub ids.

The values are copied from each model's config.json on the hub (only the fields that matter for shapes, plus
the ones that identify the checkpoint). -Instruct/-it/-Chat variants share their base model's architecture and
are listed as aliases. Used by architectures.load_spec when the hub is unreachable, and by tests.
"""

from __future__ import annotations

from typing import Any

_LLAMA3_ROPE_1B_3B = {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}
_LLAMA31_ROPE_8B = {**_LLAMA3_ROPE_1B_3B, "factor": 8.0}


def _llama(hidden, inter, layers, heads, kv, tie, vocab, max_pos, theta, **extra) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "tie_word_embeddings": tie,
        "vocab_size": vocab,
        "max_position_embeddings": max_pos,
        "rope_theta": theta,
        "rms_norm_eps": 1e-5,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        **extra,
    }


def _qwen2(hidden, inter, layers, heads, kv, tie, vocab, max_pos) -> dict[str, Any]:
    return {
        "model_type": "qwen2",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "tie_word_embeddings": tie,
        "vocab_size": vocab,
        "max_position_embeddings": max_pos,
        "max_window_layers": layers,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "use_sliding_window": False,
        "hidden_act": "silu",
    }


CATALOGUE: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.2-1B": _llama(
        2048, 8192, 16, 32, 8, True, 128256, 131072, 500000.0, head_dim=64, rope_scaling=_LLAMA3_ROPE_1B_3B
    ),
    "meta-llama/Llama-3.2-3B": _llama(
        3072, 8192, 28, 24, 8, True, 128256, 131072, 500000.0, head_dim=128, rope_scaling=_LLAMA3_ROPE_1B_3B
    ),
    "meta-llama/Llama-3.1-8B": _llama(
        4096, 14336, 32, 32, 8, False, 128256, 131072, 500000.0, rope_scaling=_LLAMA31_ROPE_8B
    ),
    "Qwen/Qwen2.5-0.5B": _qwen2(896, 4864, 24, 14, 2, True, 151936, 32768),
    "Qwen/Qwen2.5-1.5B": _qwen2(1536, 8960, 28, 12, 2, True, 151936, 131072),
    "Qwen/Qwen2.5-3B": _qwen2(2048, 11008, 36, 16, 2, True, 151936, 32768),
    "Qwen/Qwen2.5-7B": _qwen2(3584, 18944, 28, 28, 4, False, 152064, 131072),
    "google/gemma-2-2b": {
        "model_type": "gemma2",
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "vocab_size": 256000,
        "tie_word_embeddings": True,
        "max_position_embeddings": 8192,
        "attention_bias": False,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh",
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": 1,
    },
    "microsoft/Phi-3-mini-4k-instruct": {
        "model_type": "phi3",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32064,
        "tie_word_embeddings": False,
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "sliding_window": 2047,
        "hidden_act": "silu",
        "pad_token_id": 32000,
        "bos_token_id": 1,
        "eos_token_id": 32000,
    },
    "mistralai/Mistral-7B-v0.3": {
        "model_type": "mistral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 32768,
        "tie_word_embeddings": False,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-5,
        "sliding_window": None,
        "hidden_act": "silu",
    },
    "HuggingFaceTB/SmolLM2-135M": _llama(
        576, 1536, 30, 9, 3, True, 49152, 8192, 100000.0, bos_token_id=0, eos_token_id=0
    ),
    "HuggingFaceTB/SmolLM2-360M": _llama(
        960, 2560, 32, 15, 5, True, 49152, 8192, 100000.0, bos_token_id=0, eos_token_id=0
    ),
    "HuggingFaceTB/SmolLM2-1.7B": _llama(
        2048, 8192, 24, 32, 32, True, 49152, 8192, 130000.0, bos_token_id=0, eos_token_id=0
    ),
    "Qwen/Qwen1.5-MoE-A2.7B": {
        "model_type": "qwen2_moe",
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "vocab_size": 151936,
        "tie_word_embeddings": False,
        "max_position_embeddings": 8192,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "decoder_sparse_step": 1,
        "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632,
        "num_experts": 60,
        "num_experts_per_tok": 4,
        "norm_topk_prob": False,
        "mlp_only_layers": [],
        "router_aux_loss_coef": 0.001,
        "hidden_act": "silu",
    },
    "mistralai/Mixtral-8x7B-v0.1": {
        "model_type": "mixtral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
        "max_position_embeddings": 32768,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-5,
        "router_aux_loss_coef": 0.02,
        "sliding_window": None,
        "hidden_act": "silu",
    },
}

# Chat/instruct checkpoints with their base model's architecture.
ALIASES: dict[str, str] = {
    "meta-llama/Llama-3.2-1B-Instruct": "meta-llama/Llama-3.2-1B",
    "meta-llama/Llama-3.2-3B-Instruct": "meta-llama/Llama-3.2-3B",
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B",
    "Qwen/Qwen2.5-0.5B-Instruct": "Qwen/Qwen2.5-0.5B",
    "Qwen/Qwen2.5-1.5B-Instruct": "Qwen/Qwen2.5-1.5B",
    "Qwen/Qwen2.5-3B-Instruct": "Qwen/Qwen2.5-3B",
    "Qwen/Qwen2.5-7B-Instruct": "Qwen/Qwen2.5-7B",
    "google/gemma-2-2b-it": "google/gemma-2-2b",
    "mistralai/Mistral-7B-Instruct-v0.3": "mistralai/Mistral-7B-v0.3",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M",
    "HuggingFaceTB/SmolLM2-360M-Instruct": "HuggingFaceTB/SmolLM2-360M",
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": "HuggingFaceTB/SmolLM2-1.7B",
    "Qwen/Qwen1.5-MoE-A2.7B-Chat": "Qwen/Qwen1.5-MoE-A2.7B",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mistralai/Mixtral-8x7B-v0.1",
}

_BY_LOWER = {name.lower(): name for name in [*CATALOGUE, *ALIASES]}


def lookup(model_id: str) -> dict[str, Any] | None:
    """The config dict for a catalogue id or alias (case-insensitive), or None."""
    name = _BY_LOWER.get(model_id.strip().lower())
    if name is None:
        return None
    return dict(CATALOGUE[ALIASES.get(name, name)])


def known_ids() -> list[str]:
    return sorted([*CATALOGUE, *ALIASES])
