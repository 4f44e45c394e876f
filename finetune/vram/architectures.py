"""Architecture specs: the shapes the VRAM estimator needs, from a config.json or the built-in catalogue.

No torch import: `finetune vram-estimate` must answer in well under a second. Parameter counts are exact for the
supported families (a test instantiates each catalogue entry with transformers on the meta device and compares).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import UserError
from finetune.paths import go_offline_if_unreachable
from finetune.vram.catalogue import CATALOGUE, lookup

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gemma2", "phi3", "qwen2_moe", "mixtral")

# The project's tiny test model (256 byte tokens + 5 specials). modeling.py builds it from this dict, so the
# estimator and the model cannot drift apart.
TINY_LLAMA_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 261,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class Linear:
    """One nn.Linear (or fused expert weight) of a decoder layer: `name` is the leaf module name peft matches."""

    name: str
    in_features: int
    out_features: int
    bias: bool = False
    experts: int = 1  # > 1: a 3-D expert parameter [experts, out, in], not an nn.Linear

    @property
    def numel(self) -> int:
        return self.experts * (self.in_features * self.out_features + (self.out_features if self.bias else 0))


@dataclass(frozen=True)
class ArchitectureSpec:
    """Shapes of a decoder-only causal LM, as config.json gives them."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    attention_bias: bool = False  # bias on q/k/v (and o for llama-style `attention_bias`)
    o_proj_bias: bool = False
    mlp_bias: bool = False
    norms_per_layer: int = 2  # gemma2 has 4 RMSNorms per layer
    fused_qkv: bool = False  # phi3: one qkv_proj and one gate_up_proj
    num_experts: int = 0  # 0 = dense
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0  # qwen2_moe: a dense expert every token goes through, plus a gate
    sparse_layers: int = 0  # layers whose MLP is the mixture of experts (the others are dense)
    final_logit_softcapping: float | None = None

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    # ---- parameter inventory -------------------------------------------------------------------------------

    def attention_linears(self) -> list[Linear]:
        h, d = self.hidden_size, self.head_dim
        q, kv = self.num_heads * d, self.num_kv_heads * d
        if self.fused_qkv:
            return [Linear("qkv_proj", h, q + 2 * kv, self.attention_bias), Linear("o_proj", q, h, self.o_proj_bias)]
        return [
            Linear("q_proj", h, q, self.attention_bias),
            Linear("k_proj", h, kv, self.attention_bias),
            Linear("v_proj", h, kv, self.attention_bias),
            Linear("o_proj", q, h, self.o_proj_bias),
        ]

    def dense_mlp_linears(self, intermediate: int | None = None) -> list[Linear]:
        h, i = self.hidden_size, intermediate or self.intermediate_size
        if self.fused_qkv:
            return [Linear("gate_up_proj", h, 2 * i, self.mlp_bias), Linear("down_proj", i, h, self.mlp_bias)]
        return [
            Linear("gate_proj", h, i, self.mlp_bias),
            Linear("up_proj", h, i, self.mlp_bias),
            Linear("down_proj", i, h, self.mlp_bias),
        ]

    def moe_nn_linears(self) -> list[Linear]:
        """The real nn.Linear modules of one sparse layer's MLP (quantized by bitsandbytes, targeted by peft)."""
        if self.model_type == "qwen2_moe":
            return self.dense_mlp_linears(self.shared_expert_intermediate_size) + [
                Linear("shared_expert_gate", self.hidden_size, 1)
            ]
        return []

    def expert_params(self) -> list[Linear]:
        """transformers 5 stores experts as 3-D parameters (not nn.Linear): bitsandbytes leaves them unquantized."""
        h, e, i = self.hidden_size, self.num_experts, self.moe_intermediate_size or self.intermediate_size
        return [Linear("gate_up_proj", h, 2 * i, experts=e), Linear("down_proj", i, h, experts=e)]

    def router_numel(self) -> int:
        return self.num_experts * self.hidden_size  # a TopKRouter weight [experts, hidden], no bias

    def layer_linears(self, sparse: bool) -> list[Linear]:
        """nn.Linear modules of one decoder layer (what bitsandbytes quantizes and 'all-linear' targets)."""
        return self.attention_linears() + (self.moe_nn_linears() if sparse else self.dense_mlp_linears())

    @property
    def dense_layers(self) -> int:
        return self.num_layers - self.sparse_layers

    def linear_numel(self) -> int:
        """Parameters in nn.Linear modules other than lm_head: the ones 4-bit loading quantizes."""
        dense = sum(lin.numel for lin in self.layer_linears(sparse=False))
        sparse = sum(lin.numel for lin in self.layer_linears(sparse=True)) if self.is_moe else 0
        return self.dense_layers * dense + self.sparse_layers * sparse

    def expert_numel(self) -> int:
        per_layer = sum(p.numel for p in self.expert_params()) + self.router_numel() if self.is_moe else 0
        return self.sparse_layers * per_layer

    def embedding_numel(self) -> int:
        return self.vocab_size * self.hidden_size

    def lm_head_numel(self) -> int:
        """0 when tied: the head reuses the embedding matrix (counted once, like model.num_parameters())."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def norm_numel(self) -> int:
        return (self.num_layers * self.norms_per_layer + 1) * self.hidden_size

    def total_params(self) -> int:
        return (
            self.linear_numel()
            + self.expert_numel()
            + self.embedding_numel()
            + self.lm_head_numel()
            + self.norm_numel()
        )


# ---------------------------------------------------------------------------------------------------------------
# config.json -> spec


def spec_from_config(config: dict[str, Any]) -> ArchitectureSpec:
    """Parse a Hugging Face config.json dict. Raises UserError for architectures the estimator does not model."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"model_type {model_type!r} is not supported by the VRAM estimator; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    try:
        return _parse(model_type, config)
    except (KeyError, TypeError, ZeroDivisionError) as err:
        raise UserError(f"config.json for {model_type} lacks or has a bad {err}; is it a complete config?") from err


def _parse(model_type: str, c: dict[str, Any]) -> ArchitectureSpec:
    hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    layers = int(c["num_hidden_layers"])
    common = dict(
        model_type=model_type,
        vocab_size=int(c["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(c["intermediate_size"]),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(c.get("num_key_value_heads") or heads),
        head_dim=int(c.get("head_dim") or hidden // heads),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", model_type == "gemma2")),
        max_position_embeddings=int(c.get("max_position_embeddings", 0) or 0),
        final_logit_softcapping=c.get("final_logit_softcapping"),
    )
    if model_type in ("llama", "gemma2"):  # attention_bias covers q, k, v and o
        bias = bool(c.get("attention_bias", False))
        common.update(attention_bias=bias, o_proj_bias=bias, mlp_bias=bool(c.get("mlp_bias", False)))
    if model_type == "gemma2":
        common.update(norms_per_layer=4)
    if model_type == "qwen2":
        common.update(attention_bias=True)  # hard-coded bias=True on q/k/v in modeling_qwen2.py
    if model_type == "phi3":
        common.update(fused_qkv=True)
        if c.get("head_dim"):  # phi3 always derives it from hidden/heads
            common.update(head_dim=hidden // heads)
    if model_type == "mixtral":
        common.update(
            num_experts=int(c["num_local_experts"]),
            num_experts_per_tok=int(c["num_experts_per_tok"]),
            moe_intermediate_size=int(c["intermediate_size"]),
            sparse_layers=layers,
        )
    if model_type == "qwen2_moe":
        step = int(c.get("decoder_sparse_step", 1))
        mlp_only = set(c.get("mlp_only_layers") or [])
        experts = int(c["num_experts"])
        # modeling_qwen2_moe.py: sparse when not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0
        sparse = sum(1 for i in range(layers) if i not in mlp_only and experts > 0 and (i + 1) % step == 0)
        common.update(
            attention_bias=bool(c.get("qkv_bias", True)),
            num_experts=experts,
            num_experts_per_tok=int(c["num_experts_per_tok"]),
            moe_intermediate_size=int(c["moe_intermediate_size"]),
            shared_expert_intermediate_size=int(c["shared_expert_intermediate_size"]),
            sparse_layers=sparse,
        )
    spec = ArchitectureSpec(**common)
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
        if getattr(spec, name) <= 0:
            raise UserError(f"config.json: {name} must be positive (got {getattr(spec, name)})")
    return spec


# ---------------------------------------------------------------------------------------------------------------
# Where a spec comes from


def load_spec(model: str) -> ArchitectureSpec:
    """A local directory holding config.json, builtin:tiny-llama, a catalogue hub id, or (last) the hub's config.json."""
    if model == "builtin:tiny-llama":
        return spec_from_config(TINY_LLAMA_CONFIG)
    path = Path(model).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise UserError(f"{path}: no config.json in this directory")
        return spec_from_config(_read_json(config_file))
    if path.is_file() and path.name.endswith(".json"):
        return spec_from_config(_read_json(path))
    if model.startswith((".", "/", "~")):
        raise UserError(f"{model}: no such directory")

    config = lookup(model)
    if config is not None:
        return spec_from_config(config)
    config = _fetch_hub_config(model)
    if config is None:
        known = ", ".join(sorted(CATALOGUE))
        raise UserError(
            f"unknown model id '{model}' and the hub is unreachable; pass a local directory with config.json or one of: {known}"
        )
    return spec_from_config(config)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read it as JSON ({err.__class__.__name__})") from err
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _fetch_hub_config(model: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """config.json alone (never weights) from the hub; None on any failure (offline, unknown id, gated repo).

    A 2 s probe first: offline, huggingface_hub would retry with back-off for ~25 s before failing, while
    in offline mode a cached config.json still loads at once."""
    go_offline_if_unreachable()
    try:
        from huggingface_hub import hf_hub_download

        file = hf_hub_download(model, "config.json", etag_timeout=timeout_s)
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - offline, 404, gated, bad JSON: all mean "not available"
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------------------------
# LoRA: which weights get adapters, and how many trainable parameters that makes


@dataclass(frozen=True)
class LoraTarget:
    """One adapted weight: `layers` copies of A [rank, in] and B [out, rank] (rank already times the experts)."""

    linear: Linear
    rank: int
    layers: int

    @property
    def params(self) -> int:
        return self.layers * self.rank * (self.linear.in_features + self.linear.out_features)


# peft 0.21 remaps "all-linear" on transformers-5 Mixtral to the v4 names (w1/w3 -> fused gate_up_proj with rank 2r,
# w2 -> down_proj, gate -> router weight): peft/utils/transformers_weight_conversion.py, _MOE_TARGET_MODULE_MAPPING,
# applied only where transformers has a checkpoint conversion mapping (mixtral; not qwen2_moe in transformers 5.24).
_PEFT_MOE_REMAPPED = ("mixtral",)


def lora_targets(spec: ArchitectureSpec, r: int, target_modules: str | list[str] | tuple[str, ...]) -> list[LoraTarget]:
    """The adapters peft's get_peft_model creates for `target_modules` ("all-linear" or leaf module names)."""
    if r <= 0:
        raise UserError(f"lora r must be positive (got {r})")
    dense = [lin for lin in spec.layer_linears(sparse=False)]
    sparse = [lin for lin in spec.layer_linears(sparse=True)] if spec.is_moe else []
    head = Linear("lm_head", spec.hidden_size, spec.vocab_size)
    all_linear = isinstance(target_modules, str) and target_modules.lower() == "all-linear"
    if all_linear:
        wanted = {lin.name for lin in dense + sparse}  # every nn.Linear except the output head (peft's rule)
    else:
        names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        wanted = {n.strip() for n in names if n.strip()}
        known = {lin.name for lin in dense + sparse} | {"lm_head"}
        unknown = sorted(wanted - known)
        if unknown or not wanted:
            raise UserError(
                f"lora.target_modules: {unknown or names} match no linear layer of this {spec.model_type} model; "
                f"choose from: all-linear, {', '.join(sorted(known))}"
            )
    targets: list[LoraTarget] = []
    for lin in dense:
        if lin.name in wanted and spec.dense_layers:
            targets.append(LoraTarget(lin, r, spec.dense_layers))
    for lin in sparse:
        if lin.name in wanted and spec.sparse_layers:
            targets.append(LoraTarget(lin, r, spec.sparse_layers))
    if not all_linear and "lm_head" in wanted:
        targets.append(LoraTarget(head, r, 1))
    if all_linear and spec.model_type in _PEFT_MOE_REMAPPED and spec.sparse_layers:
        gate_up, down = spec.expert_params()
        e = spec.num_experts
        router = Linear("gate", spec.hidden_size, spec.num_experts)
        targets += [
            LoraTarget(router, r, spec.sparse_layers),
            LoraTarget(
                Linear("experts.gate_up_proj", gate_up.in_features, gate_up.out_features), 2 * r * e, spec.sparse_layers
            ),
            LoraTarget(Linear("experts.down_proj", down.in_features, down.out_features), r * e, spec.sparse_layers),
        ]
    return targets


def lora_params(spec: ArchitectureSpec, r: int, target_modules: str | list[str] | tuple[str, ...]) -> int:
    """Trainable parameters of the adapter (what peft's print_trainable_parameters reports)."""
    return sum(t.params for t in lora_targets(spec, r, target_modules))
