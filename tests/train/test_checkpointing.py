"""train.gradient_checkpointing: auto -- off where the VRAM estimate says the run fits without it, else on."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
import torch
import yaml
from rich.console import Console
from transformers import TrainerCallback
from typer.testing import CliRunner

from finetune.cli import app
from finetune.config import validate_recipe
from finetune.data.read import load_splits
from finetune.model import loading
from finetune.train import loop, preflight, report
from finetune.train.prepare import prepare
from finetune.vram import estimator
from finetune.vram.architectures import load_spec
from tests.conftest import ROOT

LLAMA = "meta-llama/Llama-3.2-1B"  # from the estimator's offline catalogue


def recipe(**train):
    return validate_recipe(
        {"model": {"name": LLAMA}, "data": {"path": str(ROOT / "data" / "finance_qa.jsonl")}, "train": train}
    )


def without_checkpointing_bytes(r, dtype: str = "fp32") -> int:
    """What the rule compares: the run without checkpointing, as the CPU computes it (fp32, float masks)."""
    setup = estimator.setup_from_recipe(r, kernels="none")
    setup = dataclasses.replace(setup, gradient_checkpointing=False, dtype=dtype, dropout_mask_bytes=4)
    return estimator.estimate(load_spec(LLAMA), setup).total_bytes


def decide(r, memory: int, monkeypatch, backend: str = "hf"):
    monkeypatch.setattr(preflight, "free_memory", lambda: (memory, "RAM"))
    return preflight.decide_checkpointing(r, load_spec(LLAMA), backend, "none")


def test_auto_is_the_default_and_explicit_settings_are_kept(monkeypatch):
    assert recipe().train.gradient_checkpointing == "auto"
    for setting in (True, False):
        decided, why = decide(recipe(gradient_checkpointing=setting), 1, monkeypatch)
        assert decided.train.gradient_checkpointing is setting and why is None


def test_auto_turns_checkpointing_off_only_within_the_share_of_free_memory(monkeypatch):
    r = recipe()
    needed = without_checkpointing_bytes(r)
    assert needed > 3 * estimator.estimate(load_spec(LLAMA), estimator.setup_from_recipe(r, "none")).total_bytes / 2
    room = int(needed / estimator.CHECKPOINTING_OFF_SHARE) + 1
    decided, why = decide(r, room, monkeypatch)
    assert decided.train.gradient_checkpointing is False and "fits without it" in why
    decided, why = decide(r, room - 2**20, monkeypatch)
    assert decided.train.gradient_checkpointing is True and "over 80% of" in why
    assert r.train.gradient_checkpointing == "auto"  # the user's recipe is not changed


def test_auto_keeps_checkpointing_on_where_the_memory_without_it_is_not_measured(monkeypatch):
    plenty = 10**15
    cases = {
        "the unsloth backend": (recipe(), "unsloth"),
        "train.objective dpo": (recipe(objective="dpo"), "hf"),
        "train.objective orpo": (recipe(objective="orpo"), "hf"),
    }
    for reason, (r, backend) in cases.items():
        decided, why = decide(r, plenty, monkeypatch, backend)
        assert decided.train.gradient_checkpointing is True and reason in why
    decided, why = preflight.decide_checkpointing(recipe(), None, "hf", "none")
    assert decided.train.gradient_checkpointing is True and "estimator does not know" in why


def test_the_model_never_loads_with_an_undecided_setting(tiny_model_path):
    r = validate_recipe({"model": {"name": "builtin:tiny-llama"}, "data": {"path": "unused.jsonl"}})
    with pytest.raises(ValueError, match="must be decided"):
        loading.load_for_training(str(tiny_model_path), r, torch.device("cpu"), torch.float32)


class SeesCheckpointing(TrainerCallback):
    seen = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.seen = (args.gradient_checkpointing, model.is_gradient_checkpointing)


@pytest.mark.slow
@pytest.mark.parametrize("memory", [10**12, 10**6])
def test_training_applies_the_decision_and_records_it(tmp_path, monkeypatch, memory):
    """The tiny model fits in a terabyte without checkpointing and not in a megabyte: the trainer and the
    model get what was decided, metrics.json records it, the run's recipe.yaml keeps auto."""
    monkeypatch.setattr(preflight, "free_memory", lambda: (memory, "RAM"))
    data = {"path": str(ROOT / "data" / "finance_qa.jsonl"), "max_length": 256}
    r = validate_recipe(
        {"model": {"name": "builtin:tiny-llama"}, "data": data, "train": {"max_steps": 2, "eval_steps": 2}}
    )
    seen, output = SeesCheckpointing(), io.StringIO()
    metrics = loop.train(
        r, tmp_path / "run", Console(file=output, width=200), prepare(r, load_splits(r.data)), callbacks=(seen,)
    )
    on = memory < 10**9
    assert seen.seen == (on, on)
    assert metrics["gradient_checkpointing"] is on
    assert f"gradient checkpointing {'on' if on else 'off'} (train.gradient_checkpointing: auto)" in output.getvalue()
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["train"]["gradient_checkpointing"] == "auto"
    summary = io.StringIO()
    report.print_summary(Console(file=summary, width=200), metrics, tmp_path / "run")
    assert f"trained tokens/s, checkpointing {'on' if on else 'off'}" in summary.getvalue()


def test_a_bad_value_names_the_choices(write_recipe):
    path = write_recipe({"train": {"gradient_checkpointing": "maybe"}})
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "train.gradient_checkpointing: must be true/false or 'auto' (got 'maybe')" in result.output


def test_vram_estimate_says_what_auto_picks_on_each_gpu():
    result = CliRunner().invoke(app, ["vram-estimate", "--model", LLAMA, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    unchecked = report["without_checkpointing_total_bytes"]
    assert report["setup"]["gradient_checkpointing"] is True and unchecked > report["total_bytes"]
    for gpu in report["gpus"]:
        fits = unchecked <= estimator.CHECKPOINTING_OFF_SHARE * gpu["memory_bytes"]
        assert gpu["auto_checkpointing"] == ("off" if fits else "on")
    assert {gpu["auto_checkpointing"] for gpu in report["gpus"]} == {"on", "off"}  # T4: on; 80 GB: off
    for fixed in (["--gradient-checkpointing"], ["--no-gradient-checkpointing"], ["--objective", "dpo"]):
        report = json.loads(CliRunner().invoke(app, ["vram-estimate", "--model", LLAMA, "--json", *fixed]).output)
        assert "without_checkpointing_total_bytes" not in report
        assert all("auto_checkpointing" not in gpu for gpu in report["gpus"])


def test_vram_estimate_shows_no_auto_column_where_training_keeps_checkpointing_on(write_recipe):
    for train, model in (({"fsdp": True}, {}), ({"objective": "dpo"}, {}), ({}, {"backend": "unsloth"})):
        path = write_recipe({"model": {"name": LLAMA, **model}, "train": {"gradient_checkpointing": "auto", **train}})
        result = CliRunner().invoke(app, ["vram-estimate", str(path), "--json"])
        assert result.exit_code == 0, result.output
        assert all("auto_checkpointing" not in gpu for gpu in json.loads(result.output)["gpus"]), (train, model)
    path = write_recipe({"model": {"name": LLAMA}, "train": {"gradient_checkpointing": "auto"}})
    assert (
        "auto_checkpointing"
        in json.loads(CliRunner().invoke(app, ["vram-estimate", str(path), "--json"]).output)["gpus"][0]
    )


def test_processes_on_one_cpu_machine_share_its_ram(monkeypatch):
    whole, _ = preflight.free_memory()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    quarter, where = preflight.free_memory()
    assert where == "RAM" and abs(quarter - whole / 4) < whole / 20  # available RAM moves a little between calls
