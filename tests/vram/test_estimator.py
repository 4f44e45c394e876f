"""VRAM estimator: formulas against real tensors on the CPU (bitsandbytes NF4, saved activations, loss memory).

GPU peaks (max_memory_allocated/reserved) are checked by scripts/vram_calibrate.py on a CUDA machine; here we
check the terms that do not depend on CUDA: quantized bytes exactly, what each layer keeps for backward within
2%, and the full-logits loss peak with torch's memory profiler.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from finetune.errors import UserError
from finetune.vram import components as vc
from finetune.vram.architectures import spec_from_config
from finetune.vram.estimator import GPUS, TrainingSetup, advise, estimate, fits, setup_from_recipe
from finetune.vram.render import render_table

# Small but not tiny: hidden 128 makes 128 x 320 weights whose block counts are not multiples of 256.
SMALL = {
    "model_type": "llama",
    "vocab_size": 300,
    "hidden_size": 128,
    "intermediate_size": 320,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    path = tmp_path_factory.mktemp("small-llama")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**SMALL)).save_pretrained(path)
    return path


def load_4bit(path, double_quant: bool, attn: str = "sdpa"):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    return AutoModelForCausalLM.from_pretrained(
        path, quantization_config=q, dtype=torch.bfloat16, attn_implementation=attn
    )


def storage_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        if t is not None:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_bytes_match_bitsandbytes_exactly(small_dir, double_quant):
    from peft import prepare_model_for_kbit_training

    model = load_4bit(small_dir, double_quant)
    tensors = []
    for p in model.parameters():
        if type(p).__name__ == "Params4bit":
            qs = p.quant_state
            tensors += [p.data, qs.absmax, qs.code]
            if qs.nested:
                tensors += [qs.offset, qs.state2.absmax, qs.state2.code]
    spec = spec_from_config(SMALL)
    assert storage_bytes(tensors) == vc.quantized_weight_bytes(spec, double_quant)

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    rest = [p for p in model.parameters() if type(p).__name__ != "Params4bit"]
    assert all(p.dtype == torch.float32 for p in rest), "k-bit preparation upcasts what is not quantized"
    assert sum(p.numel() * 4 for p in rest) == vc.unquantized_numel(spec) * 4


def saved_bytes(run) -> int:
    """Bytes of the distinct storages autograd keeps for backward during `run()` (parameters excluded)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


def build_lora(model, r=8, dropout=0.05):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, target_modules="all-linear", lora_dropout=dropout))


@pytest.mark.parametrize(
    "method,attn,dropout",
    [("qlora", "sdpa", 0.05), ("qlora", "eager", 0.05), ("lora", "sdpa", 0.05), ("lora", "sdpa", 0.0)],
)
def test_saved_activations_match_a_real_forward(small_dir, method, attn, dropout):
    """Per-layer formulas vs. what a real CPU forward (autocast bf16, as on a GPU) keeps for backward."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    if method == "qlora":
        model = prepare_model_for_kbit_training(load_4bit(small_dir, True, attn), use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(small_dir, dtype=torch.bfloat16, attn_implementation=attn)
    model.enable_input_require_grads()  # as with checkpointing: layer 0 then keeps what every other layer keeps
    model = build_lora(model, r=8, dropout=dropout).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    batch, seq = 3, 48
    ids = torch.randint(0, SMALL["vocab_size"], (batch, seq))
    backbone = model.base_model.model.model  # the decoder stack, without the loss head

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            backbone(input_ids=ids)

    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen.setdefault(ptr, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    measured = sum(seen.values())

    spec = spec_from_config(SMALL)
    setup = TrainingSetup(
        method=method,
        lora_r=8,
        lora_dropout=dropout,
        micro_batch_size=batch,
        seq_len=seq,
        gradient_checkpointing=False,
        attn_implementation=attn,
        dropout_mask_bytes=4,
    )
    est = estimate(spec, setup)
    # components["activations"]: every layer, the final norm, eager's mask, RoPE cos/sin and autocast's adapter
    # weight copies. Exact on the CPU (the CPU keeps float dropout masks: dropout_mask_bytes=4).
    assert est.components["activations"].bytes == measured


def test_full_logits_peak_matches_torch_memory_profiler():
    """transformers' causal-LM loss over materialised logits: T x V x 12 bytes at its peak (backward)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action
    from transformers.loss.loss_utils import ForCausalLMLoss

    spec = spec_from_config(dict(SMALL, vocab_size=5000))
    batch, seq, h = 2, 128, SMALL["hidden_size"]
    hidden = torch.randn(batch, seq, h, requires_grad=True)
    head = torch.randn(spec.vocab_size, h, dtype=torch.bfloat16)
    labels = torch.randint(0, spec.vocab_size, (batch, seq))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = hidden @ head.t()
        loss = ForCausalLMLoss(logits, labels, vocab_size=spec.vocab_size)
        del logits
        loss.backward()

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        live += size if action == Action.CREATE else -size if action == Action.DESTROY else 0
        peak = max(peak, live)
    dtypes = vc.ActivationDtypes(residual=4, proj=4, compute=2)
    expected = vc.full_logits_peak(spec, batch, seq, dtypes, head_bytes=2)
    assert expected == pytest.approx(peak, rel=0.10)


def test_estimate_shape_and_json(tmp_path):
    spec = spec_from_config(SMALL)
    est = estimate(spec, TrainingSetup(micro_batch_size=2, seq_len=64), "small")
    data = json.loads(est.dumps())
    assert {
        "model",
        "parameters",
        "components",
        "peak_allocated_bytes",
        "peak_reserved_bytes",
        "total_bytes",
        "gpus",
    } <= set(data)
    assert data["parameters"] == {"total": spec.total_params(), "trainable": est.trainable_params}
    assert data["peak_allocated_bytes"] <= data["peak_reserved_bytes"] < data["total_bytes"]
    assert {g["name"] for g in data["gpus"]} == set(GPUS) and all(g["fits"] for g in data["gpus"])
    assert all(isinstance(v, int) and v >= 0 for v in data["components"].values())


def test_knobs_move_memory_the_right_way():
    spec = spec_from_config(CATALOGUE_LLAMA_1B)
    base = TrainingSetup(micro_batch_size=4, seq_len=2048, gradient_checkpointing=True)
    peak = lambda **kw: estimate(spec, TrainingSetup(**{**base.__dict__, **kw})).peak_allocated_bytes  # noqa: E731
    assert peak(gradient_checkpointing=False) > 2 * peak()
    assert peak(loss_impl="full") > peak() + 8 * 2048 * 128256  # materialised 128k-vocab logits
    assert peak(method="lora") > peak()  # bf16 base weights
    assert peak(micro_batch_size=8) > peak()
    assert peak(optimizer="adamw_8bit") < peak()
    full = estimate(spec, TrainingSetup(**{**base.__dict__, "method": "full"}))
    assert full.trainable_params == spec.total_params() and full.peak_allocated_bytes > 4 * spec.total_params() * 2
    paged = estimate(spec, TrainingSetup(**{**base.__dict__, "optimizer": "paged_adamw_32bit"}))
    assert paged.unaccounted_bytes == paged.components["optimizer_states"].bytes > 0
    assert paged.total_bytes > paged.peak_reserved_bytes + paged.unaccounted_bytes


def test_moe_estimate_keeps_all_experts_resident():
    spec = spec_from_config(dict(CATALOGUE_MIXTRAL))
    est = estimate(spec, TrainingSetup(micro_batch_size=1, seq_len=512, lora_dropout=0.0))
    assert est.components["weights_unquantized"].bytes >= spec.expert_numel() * 4  # bnb leaves 3-D experts alone
    assert not fits(est, int(80 * 1024**3))


def test_advise_finds_a_batch_and_length_that_fit():
    spec = spec_from_config(CATALOGUE_LLAMA_1B)
    setup = TrainingSetup(micro_batch_size=16, seq_len=1024, gradient_checkpointing=False, loss_impl="full")
    memory = int(GPUS["T4 16GB"] * 1024**3)
    tips = advise(spec, setup, memory)
    assert any(t.startswith("micro_batch_size ") for t in tips) and any("gradient checkpointing" in t for t in tips)
    batch = int(next(t for t in tips if t.startswith("micro_batch_size ")).split()[1])
    assert fits(estimate(spec, TrainingSetup(**{**setup.__dict__, "micro_batch_size": batch})), memory)
    assert not fits(estimate(spec, TrainingSetup(**{**setup.__dict__, "micro_batch_size": batch + 1})), memory)
    assert advise(spec, TrainingSetup(micro_batch_size=1, seq_len=256), memory) == []


@pytest.mark.parametrize(
    "field,value", [("micro_batch_size", 0), ("seq_len", -5), ("lora_r", 0), ("optimizer", "adam")]
)
def test_bad_sizes_are_user_errors(field, value):
    with pytest.raises(UserError):
        estimate(spec_from_config(SMALL), TrainingSetup(**{field: value}))


def test_setup_from_recipe():
    from finetune.config import validate_recipe

    recipe = validate_recipe(
        {
            "model": {"name": "builtin:tiny-llama"},
            "data": {"path": "x.jsonl", "max_length": 512},
            "quant": "none",
            "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]},
            "train": {"micro_batch_size": 2, "gradient_checkpointing": False, "optimizer": "adamw_8bit"},
        }
    )
    setup = setup_from_recipe(recipe)
    assert (setup.method, setup.lora_r, setup.lora_targets, setup.seq_len) == ("lora", 8, ("q_proj", "v_proj"), 512)
    assert (setup.micro_batch_size, setup.gradient_checkpointing, setup.optimizer, setup.dtype) == (
        2,
        False,
        "adamw_8bit",
        "bf16",
    )


def test_render_table_and_no_torch_import():
    from rich.console import Console

    console = Console(record=True, width=200)
    render_table(estimate(spec_from_config(SMALL), TrainingSetup(micro_batch_size=1, seq_len=32)), console)
    text = console.export_text()
    assert "peak allocated" in text and "H100 80GB" in text
    code = "import sys, finetune.vram.estimator, finetune.vram.architectures; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


CATALOGUE_LLAMA_1B = __import__("finetune.vram.catalogue", fromlist=["CATALOGUE"]).CATALOGUE["meta-llama/Llama-3.2-1B"]
CATALOGUE_MIXTRAL = __import__("finetune.vram.catalogue", fromlist=["CATALOGUE"]).CATALOGUE[
    "mistralai/Mixtral-8x7B-v0.1"
]


def test_advice_combines_fixes_that_only_fit_together():
    from finetune.vram.architectures import load_spec

    spec = load_spec("meta-llama/Llama-3.2-1B")
    setup = TrainingSetup(
        method="lora",
        micro_batch_size=8,
        seq_len=4096,
        gradient_checkpointing=False,
        optimizer="adamw_torch",
        loss_impl="full",
    )
    budget = 20 * 2**30  # checkpointing alone: ~62 GiB, the fused loss alone: ~75 GiB, together: ~12 GiB
    tips = advise(spec, setup, budget)
    assert sum("still too big" in tip for tip in tips) == 4
    together = [tip for tip in tips if tip.startswith("together")]
    assert together == [
        "together, turn gradient checkpointing on + use the fused loss (TRL SFTTrainer): 12.2 GiB (fits); "
        "--set train.gradient_checkpointing=true"
    ]
    assert not [tip for tip in advise(spec, setup, 70 * 2**30) if tip.startswith("together")], "one fix suffices"


# --- preference objectives: one component or rule each -----------------------------------------------


def test_dpo_and_orpo_put_both_sides_of_a_pair_through_one_forward():
    spec = spec_from_config(SMALL)
    sft = estimate(spec, TrainingSetup(micro_batch_size=2, seq_len=64, gradient_checkpointing=False))
    doubled = estimate(spec, TrainingSetup(micro_batch_size=4, seq_len=64, gradient_checkpointing=False))
    for objective in ("dpo", "orpo"):
        pairs = estimate(
            spec, TrainingSetup(micro_batch_size=2, seq_len=64, gradient_checkpointing=False, objective=objective)
        )
        assert pairs.components["activations"].bytes == doubled.components["activations"].bytes
        assert pairs.components["activations"].bytes > sft.components["activations"].bytes


def test_dpo_reference_forward_keeps_nothing_and_is_gone_when_precomputed():
    spec = spec_from_config(SMALL)
    setup = TrainingSetup(micro_batch_size=2, seq_len=64, objective="dpo")
    est = estimate(spec, setup)
    ref = est.components["reference_forward"].bytes
    t, h, i = 4 * 64, SMALL["hidden_size"], SMALL["intermediate_size"]
    dequant = max(x.in_features * x.out_features for x in spec.layer_linears(sparse=False)) * 2
    head = est.components["logits_loss"].bytes
    assert ref == 2 * t * h * 4 + 2 * t * i * 2 + dequant + head  # residual in/out (fp32 in qlora), gate+up, tiles
    assert ref < est.components["activations"].bytes + est.components["activations_recompute"].bytes + head
    assert (
        "reference_forward"
        not in estimate(
            spec, TrainingSetup(micro_batch_size=2, seq_len=64, objective="dpo", precompute_ref=True)
        ).components
    )
    assert (
        "reference_forward"
        not in estimate(spec, TrainingSetup(micro_batch_size=2, seq_len=64, objective="orpo")).components
    )


def test_dpo_holds_a_frozen_copy_of_the_adapter_as_its_reference():
    spec = spec_from_config(SMALL)
    dpo = estimate(spec, TrainingSetup(objective="dpo"))
    assert dpo.components["reference_adapter"].bytes == dpo.components["lora_params"].bytes
    assert "reference_adapter" not in estimate(spec, TrainingSetup(objective="orpo")).components


def test_orpo_materialises_the_logits_of_both_sides():
    spec = spec_from_config(dict(SMALL, vocab_size=5000))
    orpo = estimate(spec, TrainingSetup(micro_batch_size=2, seq_len=64, objective="orpo"))
    dtypes = vc.ActivationDtypes(residual=4, proj=4, compute=2, mask=1)
    assert orpo.components["logits_loss"].bytes == vc.full_logits_peak(spec, 4, 64, dtypes, head_bytes=4)


def test_the_recipe_sets_the_objective(write_recipe):
    from finetune.config import load_recipe

    recipe = load_recipe(
        write_recipe(
            {
                "train": {"objective": "dpo"},
                "preference": {"precompute_ref_log_probs": True},
                "data": {"path": "x.jsonl"},
            }
        )
    )
    setup = setup_from_recipe(recipe)
    assert (setup.objective, setup.precompute_ref) == ("dpo", True)
    with pytest.raises(UserError, match="objective must be one of sft, dpo, orpo"):
        TrainingSetup(objective="ppo").validate()
