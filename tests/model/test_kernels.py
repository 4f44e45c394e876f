"""model.kernels: the recipe key, how auto|liger|none resolve, the errors, and what a run records.

Liger's kernels are Triton (CUDA only) and liger-kernel is not installed here: the patching itself is checked
against a stand-in liger_kernel module that records the call finetune makes; the real kernels need a GPU.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from finetune.config import load_recipe
from finetune.errors import UserError
from finetune.model import kernels
from finetune.model.kernels import LIGER_INSTALL, apply_kernels, resolve_kernels

LIGER_MISSING = kernels.liger_installed() is False


def test_recipe_key_defaults_to_auto_and_is_validated(write_recipe):
    assert load_recipe(write_recipe()).model.kernels == "auto"
    assert load_recipe(write_recipe({"model": {"kernels": "none"}})).model.kernels == "none"
    with pytest.raises(UserError) as err:
        load_recipe(write_recipe({"model": {"kernels": "fast"}}))
    assert "model.kernels: must be 'auto', 'liger' or 'none'" in str(err.value) and "\n" not in str(err.value)


def test_liger_with_the_unsloth_backend_is_refused_in_the_recipe(write_recipe):
    with pytest.raises(UserError, match="model.kernels liger patches the layers Unsloth patches"):
        load_recipe(write_recipe({"model": {"kernels": "liger", "backend": "unsloth"}}))


@pytest.mark.parametrize(
    "requested, backend, cuda, installed, expected",
    [
        ("auto", "hf", False, True, "none"),  # this machine: no CUDA GPU
        ("auto", "hf", True, False, "none"),  # no package
        ("auto", "unsloth", True, True, "none"),  # Unsloth's own kernels
        ("auto", "hf", True, True, "liger"),
        ("liger", "hf", True, True, "liger"),
        ("none", "hf", True, True, "none"),
    ],
)
def test_resolution(requested, backend, cuda, installed, expected):
    assert resolve_kernels(requested, backend, cuda, installed) == expected


def test_auto_resolves_to_none_on_this_cpu():
    assert not torch.cuda.is_available()
    assert resolve_kernels("auto", "hf", torch.cuda.is_available()) == "none"


@pytest.mark.parametrize(
    "backend, cuda, installed, message",
    [
        ("hf", True, False, f"model.kernels: liger, but liger-kernel is not installed: {LIGER_INSTALL}"),
        ("hf", False, True, "model.kernels: liger needs a CUDA GPU"),
        ("unsloth", True, True, "model.kernels: liger needs the hf backend, but the unsloth backend was chosen"),
    ],
)
def test_explicit_liger_that_cannot_run_is_a_one_line_error(backend, cuda, installed, message):
    with pytest.raises(UserError) as err:
        resolve_kernels("liger", backend, cuda, installed)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(not LIGER_MISSING, reason="liger-kernel is installed here")
def test_train_with_liger_and_no_package_exits_2_before_the_run_directory(write_recipe, tmp_path):
    from typer.testing import CliRunner

    from finetune.cli import app

    run = tmp_path / "r"
    result = CliRunner().invoke(app, ["train", str(write_recipe({"model": {"kernels": "liger"}})), "-o", str(run)])
    assert result.exit_code == 2, result.output
    assert 'pip install "finetune[liger]"' in result.output and "model.kernels" in result.output
    assert "Traceback" not in result.output
    assert not run.exists()


@pytest.fixture
def fake_liger(monkeypatch):
    """A stand-in liger_kernel package: a Llama entry point that takes the switches Liger's does."""
    calls = []

    def apply_liger_kernel_to_llama(rope=True, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True,
                                    swiglu=True, model=None):  # fmt: skip
        pass

    def _apply_liger_kernel_to_instance(model, **switches):
        calls.append((model, switches))

    root = types.ModuleType("liger_kernel")
    transformers_ = types.ModuleType("liger_kernel.transformers")
    monkey_patch = types.ModuleType("liger_kernel.transformers.monkey_patch")
    transformers_._apply_liger_kernel_to_instance = _apply_liger_kernel_to_instance
    monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN = {"llama": apply_liger_kernel_to_llama}
    for name, module in (
        ("liger_kernel", root),
        ("liger_kernel.transformers", transformers_),
        ("liger_kernel.transformers.monkey_patch", monkey_patch),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(kernels, "liger_installed", lambda: True)
    return calls


def peft_model(model_type: str = "llama"):
    base = types.SimpleNamespace(config=types.SimpleNamespace(model_type=model_type))
    return types.SimpleNamespace(get_base_model=lambda: base), base


def test_liger_patches_the_base_model_with_the_layer_kernels_only(fake_liger):
    model, base = peft_model()
    record = apply_kernels(model, "auto", "hf", cuda=True)
    assert record == {"requested": "auto", "used": "liger", "applied": ["rms_norm", "rope", "swiglu"], "why": ""}
    [(patched, switches)] = fake_liger
    assert patched is base, "patched under the LoRA wrapper, as transformers' Trainer does"
    # TRL's fused LM head computes the loss: Liger's loss kernels stay off
    assert switches == {
        "rms_norm": True,
        "rope": True,
        "swiglu": True,
        "fused_linear_cross_entropy": False,
        "cross_entropy": False,
    }


def test_an_architecture_liger_does_not_know(fake_liger):
    model, _ = peft_model("gpt2")
    record = apply_kernels(model, "auto", "hf", cuda=True)
    assert record["used"] == "none" and record["why"] == "Liger has no kernels for model_type 'gpt2'"
    with pytest.raises(UserError, match="model.kernels: liger has no kernels for model_type 'gpt2'"):
        apply_kernels(model, "liger", "hf", cuda=True)
    assert not fake_liger


def test_on_the_cpu_nothing_is_applied_and_the_reason_is_recorded():
    model, _ = peft_model()
    record = apply_kernels(model, "auto", "hf", cuda=False)
    assert record == {
        "requested": "auto",
        "used": "none",
        "applied": [],
        "why": "no CUDA GPU",
    }
    assert apply_kernels(model, "none", "hf", cuda=True)["why"] == "model.kernels: none"


def test_the_run_records_its_kernels(quickstart_run):
    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    assert metrics["kernels"] == {
        "requested": "auto",
        "used": "none",
        "applied": [],
        "why": "no CUDA GPU",
    }
