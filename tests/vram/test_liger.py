"""What Liger's kernels change in the VRAM estimate (finetune/vram/liger.py): each formula, and how the estimate
assembles them. Liger's kernels are Triton, so these are arithmetic checks against the eager formulas (which
tests/vram/test_estimator.py checks against real forwards) and against Liger 0.8.5's own chunking rule; the GPU
calibration is not measured yet (docs/vram.md)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from finetune.cli import app
from finetune.errors import UserError
from finetune.vram import components as vc
from finetune.vram import liger
from finetune.vram.architectures import spec_from_config
from finetune.vram.catalogue import CATALOGUE
from finetune.vram.estimator import TrainingSetup, estimate, setup_from_recipe

LLAMA_1B = spec_from_config(CATALOGUE["meta-llama/Llama-3.2-1B"])
QLORA = vc.ActivationDtypes(residual=4, proj=4, compute=2)  # fp32 residual stream after k-bit preparation
LORA = vc.ActivationDtypes(residual=2, proj=2, compute=2)  # bf16 base


def eager_norm(tokens: int, hidden: int) -> int:
    return tokens * hidden * 4 + tokens * 4  # components.layer_saved: fp32 copy of the input + rsqrt


def test_rms_norm_keeps_its_input_in_its_own_dtype():
    t, h = 4096, 2048
    assert liger.rms_norm_saved(t, h, residual=4) == eager_norm(t, h)  # QLoRA: the fp32 stream itself, as eager
    assert liger.rms_norm_saved(t, h, residual=2) == eager_norm(t, h) - t * h * 2  # bf16: half the copy


def test_swiglu_keeps_two_of_the_three_mlp_tensors():
    t, i = 4096, 8192
    assert liger.swiglu_saved(t, i, proj=4) == 2 * t * i * 4
    assert 3 * liger.swiglu_saved(t, i, proj=2) == 2 * (3 * t * i * 2)  # eager keeps gate, silu(gate) and up


def test_layer_saving_is_the_norms_and_one_mlp_tensor():
    t, h, i = 2048, LLAMA_1B.hidden_size, LLAMA_1B.intermediate_size
    assert liger.layer_saving(LLAMA_1B, t, QLORA, sparse=False) == t * i * 4
    assert liger.layer_saving(LLAMA_1B, t, LORA, sparse=False) == 2 * t * h * 2 + t * i * 2
    assert liger.layer_saving(LLAMA_1B, t, LORA, sparse=True) == 2 * t * h * 2  # experts: counted as eager


@pytest.mark.parametrize(
    "tokens, hidden, vocab, rows",
    [
        (4096, 2048, 128256, 128),  # Llama-3.2-1B, 4 x 1024: ceil(V/H) = 63, ceil(4096/63) = 66 -> 128
        (8192, 896, 151936, 64),  # Qwen2.5-0.5B, 4 x 2048: 170 -> 49 -> 64
        (100, 64, 261, 32),  # the tiny model: 5 -> 20 -> 32
        (10, 4096, 1000, 10),  # one chunk covers every token, never more than BT
        (1, 2048, 128256, 1),
    ],
)
def test_flce_chunk_follows_liger(tokens, hidden, vocab, rows):
    assert liger.flce_chunk(tokens, hidden, vocab) == rows


def test_flce_peak_terms():
    spec = spec_from_config(dict(CATALOGUE["meta-llama/Llama-3.2-1B"], vocab_size=1000, hidden_size=64))
    b, s, h, v = 2, 50, 64, 1000
    n, chunk = b * s, liger.flce_chunk(b * s, h, v)
    # bf16 LoRA: head and hidden states already in the compute dtype, no casts
    assert liger.flce_peak(spec, b, s, LORA, head_bytes=2) == 2 * n * h * 2 + n * 5 + chunk * v * 2 + chunk * h * 2
    # QLoRA: the fp32 head and the fp32 input chunk are cast to bf16 under autocast
    qlora = liger.flce_peak(spec, b, s, QLORA, head_bytes=4)
    assert qlora == 2 * n * h * 4 + n * 5 + chunk * v * 2 + chunk * h * 2 + v * h * 2 + chunk * h * 2


def test_flce_against_trls_fused_head_on_llama_1b():
    """Liger's chunk is a quarter of TRL's tile here, but under QLoRA it casts the whole fp32 head to bf16 at once
    (TRL casts 32768 rows at a time): for Llama-3.2-1B at 4 x 2048 its peak is the larger one."""
    b, s = 4, 2048
    for dtypes, head in ((LORA, 2), (QLORA, 4)):
        trl = vc.fused_loss_peak(LLAMA_1B, b, s, dtypes, head)
        ours = liger.flce_peak(LLAMA_1B, b, s, dtypes, head)
        full = vc.full_logits_peak(LLAMA_1B, b, s, dtypes, head)
        assert ours < full / 10, "neither materialises the logits"
        assert (ours < trl) == (head == 2)


def test_estimate_with_liger_kernels_keeps_exactly_the_saving_less():
    base = TrainingSetup(method="lora", micro_batch_size=2, seq_len=512, gradient_checkpointing=False)
    plain, fused = estimate(LLAMA_1B, base), estimate(LLAMA_1B, TrainingSetup(**{**base.__dict__, "kernels": "liger"}))
    t, h = 2 * 512, LLAMA_1B.hidden_size
    layers = LLAMA_1B.num_layers * liger.layer_saving(LLAMA_1B, t, LORA, sparse=False)
    final = eager_norm(t, h) - liger.final_norm_saved(t, h, residual=2)
    assert plain.components["activations"].bytes - fused.components["activations"].bytes == layers + final
    assert "Liger RMSNorm/SwiGLU" in fused.components["activations"].why
    assert fused.components["logits_loss"] == plain.components["logits_loss"], "TRL's loss either way"
    assert fused.peak_allocated_bytes < plain.peak_allocated_bytes


def test_with_checkpointing_only_the_recomputed_layer_shrinks():
    base = TrainingSetup(micro_batch_size=4, seq_len=1024)  # QLoRA, checkpointing on: the defaults
    plain, fused = estimate(LLAMA_1B, base), estimate(LLAMA_1B, TrainingSetup(**{**base.__dict__, "kernels": "liger"}))
    saving = liger.layer_saving(LLAMA_1B, 4 * 1024, QLORA, sparse=False)
    recompute = "activations_recompute"
    assert plain.components[recompute].bytes - fused.components[recompute].bytes == saving
    assert plain.components["activations"].bytes == fused.components["activations"].bytes  # fp32 norms: no change


def test_liger_loss_impl_replaces_the_loss_component():
    setup = TrainingSetup(micro_batch_size=4, seq_len=1024, loss_impl="liger")
    est = estimate(LLAMA_1B, setup)
    assert est.components["logits_loss"].bytes == liger.flce_peak(LLAMA_1B, 4, 1024, QLORA, head_bytes=4)
    assert "[128 x V] chunks" in est.components["logits_loss"].why


@pytest.mark.parametrize("field, value", [("kernels", "fast"), ("loss_impl", "chunked")])
def test_unknown_kernels_are_user_errors(field, value):
    with pytest.raises(UserError, match=field.replace("_", "-")):
        estimate(LLAMA_1B, TrainingSetup(**{field: value}))


def test_setup_from_recipe_resolves_model_kernels(monkeypatch):
    from finetune.config import validate_recipe

    def recipe(kernels: str, backend: str = "auto"):
        raw = {"model": {"name": "builtin:tiny-llama", "kernels": kernels, "backend": backend}, "data": {"path": "x"}}
        return validate_recipe(raw)

    assert setup_from_recipe(recipe("liger")).kernels == "liger"
    assert setup_from_recipe(recipe("none")).kernels == "none"
    assert setup_from_recipe(recipe("liger"), kernels="none").kernels == "none"  # what the run resolved
    import importlib.util

    real = importlib.util.find_spec
    for installed in (False, True):

        def find_spec(name, *args, on=installed):
            return (object() if on else None) if name == "liger_kernel" else real(name, *args)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        assert setup_from_recipe(recipe("auto")).kernels == ("liger" if installed else "none")
        assert setup_from_recipe(recipe("auto", backend="unsloth")).kernels == "none"


def test_cli_kernels_flag():
    def run(*flags):
        result = CliRunner().invoke(app, ["vram-estimate", "--model", "meta-llama/Llama-3.2-1B", "--json", *flags])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    plain, fused = run(), run("--kernels", "liger", "--no-gradient-checkpointing")
    assert plain["setup"]["kernels"] == "none" and fused["setup"]["kernels"] == "liger"
    assert run("--no-gradient-checkpointing")["components"]["activations"] > fused["components"]["activations"]
    assert run("--loss-impl", "liger")["setup"]["loss_impl"] == "liger"
    bad = CliRunner().invoke(app, ["vram-estimate", "--model", "meta-llama/Llama-3.2-1B", "--kernels", "fast"])
    assert bad.exit_code == 2 and "kernels must be one of none, liger" in bad.output
