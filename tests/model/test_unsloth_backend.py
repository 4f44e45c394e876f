"""The Unsloth training path, where Unsloth is installed (it pins older transformers/trl/datasets, so
CI's environment does not have it). Unsloth 2026.10 trains on the CPU too (its fallback), which runs
finetune's side of the path here; finetune itself refuses model.backend: unsloth without a GPU, so the
test calls train() directly. Runs in a subprocess: importing Unsloth patches transformers for good."""

import importlib.util
import json
import math
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="Unsloth is not installed")

SCRIPT = """
import sys
import unsloth  # first: it patches transformers, peft and trl
from pathlib import Path
from rich.console import Console
from finetune.config import load_recipe
from finetune.data.read import load_splits
from finetune.train.loop import train
from finetune.train.prepare import prepare
recipe = load_recipe(sys.argv[1], ["train.max_steps=4", "train.eval_steps=2", "model.backend=unsloth"])
prepared = prepare(recipe, load_splits(recipe.data))
train(recipe, Path(sys.argv[2]), Console(stderr=True), prepared, backend="unsloth")
"""


def test_unsloth_backend_writes_the_same_run_directory(tmp_path, finetune_home):
    run = tmp_path / "unsloth"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT / "recipes" / "quickstart.yaml"), str(run)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )  # its compile cache lands in cwd
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["backend"] == "unsloth" and "unsloth" in metrics["versions"]
    assert metrics["throughput"]["train_tokens"] > 0  # counted by finetune: Unsloth's trainer logs no num_tokens
    assert (
        metrics["global_step"] == 4 and math.isfinite(metrics["best_eval_loss"]) and math.isfinite(metrics["test_loss"])
    )
    # LoRA B starts at zero: non-zero B matrices in the saved adapter mean the optimizer updated them
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    assert all(w.abs().sum() > 0 for name, w in weights.items() if "lora_B" in name)
    # "all-linear" reaches every projection of every block, as with the hf backend
    targets = json.loads((run / "adapter" / "adapter_config.json").read_text())["target_modules"]
    names = {t.rsplit(".", 1)[-1] for t in targets}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
