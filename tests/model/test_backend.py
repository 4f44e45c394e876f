"""Backend selection: the logic and its errors (the Unsloth training path itself needs a CUDA GPU)."""

import importlib.util

import pytest
import torch

from finetune.errors import UserError
from finetune.model.loading import choose_backend


def fake_unsloth_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "unsloth" else real(name, *a))


def test_hf_and_auto_without_unsloth_or_gpu_use_transformers():
    assert choose_backend("hf") == "hf"
    assert choose_backend("auto") == "hf"  # no Unsloth and no GPU on this machine


def test_auto_with_unsloth_but_no_gpu_uses_transformers(monkeypatch):
    fake_unsloth_installed(monkeypatch)
    assert not torch.cuda.is_available()
    assert choose_backend("auto") == "hf"


@pytest.mark.skipif(importlib.util.find_spec("unsloth") is not None, reason="Unsloth is installed here")
def test_unsloth_without_the_package_names_the_extra():
    with pytest.raises(UserError, match=r"pip install 'finetune\[unsloth\]'"):
        choose_backend("unsloth")


def test_unsloth_without_a_gpu_is_a_clear_error(monkeypatch):
    fake_unsloth_installed(monkeypatch)
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        choose_backend("unsloth")


@pytest.mark.skipif(importlib.util.find_spec("unsloth") is not None, reason="Unsloth is installed here")
def test_train_with_unsloth_backend_on_cpu_exits_2(write_recipe, tmp_path):
    from typer.testing import CliRunner

    from finetune.cli import app

    result = CliRunner().invoke(
        app, ["train", str(write_recipe({"model": {"backend": "unsloth"}})), "-o", str(tmp_path / "r")]
    )
    assert result.exit_code == 2 and "finetune[unsloth]" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.attn_implementation=eager"], "the unsloth backend chooses the attention kernel itself"),
        (["lora.use_dora=true"], "not supported by the unsloth backend"),
    ],
)
def test_recipe_settings_unsloth_cannot_honour_are_refused_before_loading(overrides, message):
    from finetune.config import load_recipe
    from finetune.model.loading import load_with_unsloth
    from tests.conftest import ROOT

    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", overrides)
    with pytest.raises(UserError, match=message):
        load_with_unsloth("unused", recipe, torch.device("cpu"), torch.float32)
