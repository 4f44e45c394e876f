"""train.fsdp: what can be checked without CUDA GPUs (accelerate shards across GPUs only).

The sharded run itself is in scripts/gpu_check.sh; docs/multi-gpu.md has its result.
"""

import pytest
import torch
from typer.testing import CliRunner

from finetune.cli import app
from finetune.config import load_recipe
from tests.conftest import ROOT

QUICK = ROOT / "recipes" / "quickstart.yaml"


def test_fsdp_stores_4bit_weights_in_the_model_dtype_and_keeps_one_dtype(tiny_model_path, monkeypatch):
    """FSDP flattens tensors of one dtype: the packed NF4 weights and every other frozen weight must share
    the compute dtype (no fp32 upcast of norms); only the LoRA weights stay fp32, wrapped apart by peft."""
    from finetune.model.loading import attach_lora, bnb_config, load_base_model

    monkeypatch.setenv("LOCAL_RANK", "0")  # a torchrun worker: train.fsdp applies only there

    plain = load_recipe(QUICK, ["model.dtype=bf16"])
    sharded = load_recipe(QUICK, ["model.dtype=bf16", "train.fsdp=true"])
    assert bnb_config(plain, torch.bfloat16).bnb_4bit_quant_storage == torch.uint8
    assert bnb_config(sharded, torch.bfloat16).bnb_4bit_quant_storage == torch.bfloat16

    model = attach_lora(load_base_model(str(tiny_model_path), sharded, torch.device("cpu"), torch.bfloat16), sharded)
    frozen = {p.dtype for n, p in model.named_parameters() if "lora_" not in n}
    assert frozen == {torch.bfloat16}
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}

    # Without FSDP, peft's k-bit preparation upcasts the norms to fp32 (and the packed weights are uint8).
    model = attach_lora(load_base_model(str(tiny_model_path), plain, torch.device("cpu"), torch.bfloat16), plain)
    assert {torch.uint8, torch.float32} <= {p.dtype for n, p in model.named_parameters() if "lora_" not in n}


def test_fsdp_settings_reach_the_trainer(tmp_path):
    from trl import SFTConfig

    from finetune.train.trainer import fsdp_kwargs

    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **fsdp_kwargs(True))
    plugin = args.fsdp_plugin_args
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    # version 1 with flat parameters: FSDP2 would turn the packed Params4bit weights into plain tensors
    assert plugin["fsdp_version"] == 1 and plugin["use_orig_params"] is False
    assert (
        SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **fsdp_kwargs(False)).fsdp_plugin_args
        is None
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_fsdp_without_a_gpu_is_a_clear_error_but_a_dry_run_notes_it(tmp_path):
    args = ["train", str(QUICK), "-o", str(tmp_path / "r"), "--nproc", "2", "--set", "train.fsdp=true"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "train.fsdp: FSDP shards the model across CUDA GPUs" in result.output
    assert not (tmp_path / "r").exists()
    dry = CliRunner().invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0 and "train.fsdp needs CUDA GPUs" in dry.output


def test_fsdp_with_the_unsloth_backend_is_refused(tmp_path):
    result = CliRunner().invoke(
        app, ["validate", str(QUICK), "--set", "train.fsdp=true", "--set", "model.backend=unsloth"]
    )
    assert result.exit_code == 2 and "train.fsdp is not supported by the unsloth backend" in result.output


def test_one_process_gets_a_note_and_gpus_no_objection(monkeypatch):
    """On GPUs (availability faked: the checks run before anything touches a GPU)."""
    from finetune.train.launch import check_fsdp

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert "no effect in one process" in check_fsdp(True, 1)
    assert check_fsdp(True, 2) is None and check_fsdp(False, 1) is None


def test_a_checkpoint_written_under_fsdp_is_not_resumed(quickstart_run, tmp_path):
    """A resumed FSDP run diverged on the GPU check (docs/multi-gpu.md): its checkpoints say they were
    sharded, and --resume refuses them with whatever --nproc, while ordinary ones resume."""
    import json
    import shutil

    from finetune.errors import UserError
    from finetune.train.resume import MARKER, check_resumable

    run = tmp_path / "run"
    shutil.copytree(quickstart_run, run)
    fingerprint = {k: json.loads((run / "metrics.json").read_text())[k] for k in ("recipe_hash", "data_hash")}
    newest = check_resumable(run, fingerprint).checkpoint
    seal = json.loads((newest / MARKER).read_text())
    assert seal["fsdp"] is False
    (newest / MARKER).write_text(json.dumps({**seal, "fsdp": True}))
    with pytest.raises(UserError, match="a train.fsdp run cannot be resumed yet"):
        check_resumable(run, fingerprint)
