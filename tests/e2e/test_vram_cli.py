"""`finetune vram-estimate` through the CLI, and the preflight check of `finetune train`."""

import json

import pytest
from typer.testing import CliRunner

from finetune.cli import app
from finetune.errors import UserError
from tests.conftest import ROOT

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_json_is_one_object_with_the_contract_keys():
    result = invoke(
        "vram-estimate", "--model", "meta-llama/Llama-3.2-1B", "--batch-size", "2", "--seq-len", "2048", "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {
        "model",
        "parameters",
        "components",
        "peak_allocated_bytes",
        "peak_reserved_bytes",
        "total_bytes",
        "gpus",
    } <= set(data)
    assert data["parameters"]["total"] == 1_235_814_400
    assert data["peak_allocated_bytes"] <= data["peak_reserved_bytes"] < data["total_bytes"]
    assert {gpu["name"] for gpu in data["gpus"]} >= {"T4 16GB", "A100 80GB", "H100 80GB"}


def test_flags_override_the_recipe():
    recipe = ROOT / "recipes" / "llama-3.2-1b-finance.yaml"
    base = json.loads(invoke("vram-estimate", recipe, "--json").stdout)
    bigger = json.loads(
        invoke("vram-estimate", recipe, "--batch-size", "8", "--no-gradient-checkpointing", "--json").stdout
    )
    assert base["setup"]["micro_batch_size"] == 4 and bigger["setup"]["micro_batch_size"] == 8
    assert bigger["setup"]["gradient_checkpointing"] is False
    assert bigger["peak_allocated_bytes"] > base["peak_allocated_bytes"]
    full = json.loads(invoke("vram-estimate", recipe, "--loss-impl", "full", "--json").stdout)
    assert full["components"]["logits_loss"] > base["components"]["logits_loss"], "128k-vocab logits dominate"


def test_table_and_advice_when_it_does_not_fit():
    result = invoke("vram-estimate", "--model", "meta-llama/Llama-3.1-8B", "--method", "lora", "--gpu", "T4")
    assert result.exit_code == 0, result.output
    assert "weights" in result.output and "T4 16GB" in result.output
    assert "to fit T4 16GB" in result.output and "4-bit" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "acme/not-a-model"], "unknown model id 'acme/not-a-model'"),
        (["--model", "meta-llama/Llama-3.2-1B", "--batch-size", "0"], "micro-batch-size must be a positive integer"),
        (["--model", "meta-llama/Llama-3.2-1B", "--seq-len", "-1"], "seq-len must be a positive integer"),
        (["--model", "meta-llama/Llama-3.2-1B", "--gpu", "Voodoo3"], "unknown GPU"),
        ([], "needs a RECIPE or --model"),
        ([ROOT / "recipes" / "quickstart.yaml", "--measure"], "needs a CUDA GPU"),
        (["--model", "meta-llama/Llama-3.2-1B", "--gpu-memory", "inf"], "--gpu-memory must be a positive number"),
        (["--model", "meta-llama/Llama-3.2-1B", "--gpu-memory", "nan", "--json"], "--gpu-memory must be a positive"),
    ],
)
def test_bad_input_exit_code_2(args, message):
    result = invoke("vram-estimate", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_unsupported_architecture_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 50257}))
    result = invoke("vram-estimate", "--model", tmp_path)
    assert result.exit_code == 2 and "gpt2" in result.output


def test_train_refuses_a_run_that_does_not_fit_the_gpu(monkeypatch, tmp_path, write_recipe):
    # The refusal logic, driven by a GPU that reports 100 MiB free (no GPU exists on the test machines).
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (100 * 2**20, 16 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Small GPU")
    # backend hf: with Unsloth installed, `auto` on this faked GPU would import it into the test process
    result = invoke("train", write_recipe({"model": {"backend": "hf"}}), "-o", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "needs about" in result.output and "--force" in result.output
    assert not (tmp_path / "run").exists()


def test_the_estimate_is_an_upper_bound_that_never_refuses_with_unsloth_or_fsdp(monkeypatch, write_recipe):
    """It models the hf backend on one GPU: Unsloth measured half of it, FSDP divides the weights."""
    import torch
    from rich.console import Console

    from finetune.config import load_recipe
    from finetune.model.loading import resolve_model_path
    from finetune.train.loop import preflight

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (100 * 2**20, 16 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Small GPU")
    recipe = load_recipe(write_recipe({"train": {"fsdp": True}}))
    path = resolve_model_path(recipe.model)
    console = Console(record=True, width=200)
    preflight(recipe, path, console, force=False, backend="unsloth")
    assert "an upper bound with Unsloth;" in console.export_text()

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    preflight(recipe, path, console, force=False, backend="hf")
    assert "an upper bound with FSDP;" in console.export_text()
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: a real limit again
    with pytest.raises(UserError, match="needs about"):
        preflight(recipe, path, console, force=False, backend="hf")


def test_an_unknown_model_with_the_hub_unreachable_is_one_line_at_once(tmp_path):
    """No HF_HUB_OFFLINE, but nothing listens where the hub should be: one line, no retry chatter."""
    import os
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # the discard port: connection refused
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "finetune", "vram-estimate", "--model", "acme/Qwen-14B-unknown"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and time.perf_counter() - start < 20
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model id 'acme/Qwen-14B-unknown'"), done.stderr
