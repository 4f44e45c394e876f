"""DPO and ORPO end to end on the tiny model: training, the test score against the base, eval, SFT -> DPO,
SIGTERM and resume, two processes, and the spike guard on the preference loss."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from finetune.cli import app
from tests.conftest import ROOT, train_run, write_jsonl
from tests.e2e.test_resilience import wait_for

ASSETS = ["gold", "a tech stock", "crypto", "bonds", "a startup", "an index fund", "options", "property"]


def short_pairs(n: int = 48) -> list[dict]:
    """Short pairs (the tiny tokenizer is byte-level: one character, one token)."""
    return [
        {
            "prompt": f"Q{i}: should I buy {ASSETS[i % len(ASSETS)]}?",
            "chosen": "It depends on your goals and risk.",
            "rejected": f"Yes! {ASSETS[i % len(ASSETS)]} always goes up.",
        }
        for i in range(n)
    ]


def pair_recipe(tmp_path: Path, objective: str = "dpo", **train) -> Path:
    data = write_jsonl(tmp_path / "pairs.jsonl", short_pairs())
    recipe = {
        "model": {"name": "builtin:tiny-llama"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"path": str(data), "max_length": 96},
        "train": {
            "objective": objective,
            "max_steps": 4,
            "eval_steps": 2,
            "learning_rate": 5e-3,
            "micro_batch_size": 4,
            "gradient_accumulation": 1,
            "gradient_checkpointing": False,
            "sample_prompts": 0,
            **train,
        },
    }
    path = tmp_path / f"{objective}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def dpo_run(tmp_path_factory) -> Path:
    """The shipped DPO quickstart, as README runs it."""
    return train_run(tmp_path_factory.mktemp("runs") / "dpo", ROOT / "recipes" / "quickstart-dpo.yaml")


def test_dpo_on_the_shipped_pairs_beats_the_base_on_its_test_split(dpo_run):
    metrics = json.loads((dpo_run / "metrics.json").read_text())
    assert metrics["base_eval_loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at step 0
    assert metrics["improved"] is True
    assert metrics["test_preference_accuracy"] >= metrics["test_base_preference_accuracy"] + 0.3
    assert metrics["test_reward_accuracy"] > 0.8 and metrics["test_reward_margin"] > 0
    evals = [row for row in metrics["history"] if "eval_loss" in row and row["step"] > 0]
    assert evals and all({"eval_rewards/accuracies", "eval_rewards/margins"} <= set(row) for row in evals)
    assert (dpo_run / "loss.png").stat().st_size > 0
    assert not (dpo_run / "adapter" / "ref").exists() and (dpo_run / "adapter" / "adapter_model.safetensors").is_file()
    assert "test preference accuracy" in (dpo_run / "adapter" / "README.md").read_text()

    result = CliRunner().invoke(app, ["eval", str(dpo_run), "--compare-base", "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["task"] == "preference" and scores["reference"] == "base"
    assert scores["finetuned"]["preference_accuracy"] > scores["base"]["preference_accuracy"] + 0.3
    assert scores["finetuned"]["preference_accuracy"] == pytest.approx(metrics["test_preference_accuracy"])
    rows = [json.loads(line) for line in (dpo_run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == scores["examples"] and {"chosen_logp", "rejected_logp", "base_chosen_logp"} <= set(rows[0])
    assert "`finetune eval` on test split" in (dpo_run / "adapter" / "README.md").read_text()  # the card shows it


def test_eval_of_pairs_that_cannot_fit_is_one_line_exit_2(dpo_run, tmp_path):
    data = write_jsonl(tmp_path / "long.jsonl", [{**row, "chosen": "x" * 2000} for row in short_pairs(3)])
    result = CliRunner().invoke(app, ["eval", str(dpo_run), "--data", str(data), "-o", str(tmp_path / "eval")])
    assert result.exit_code == 2 and "no pair fits data.max_length=512" in result.output
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_orpo_trains_with_the_nll_on_the_chosen_answer_only(tmp_path):
    run = train_run(tmp_path / "orpo", pair_recipe(tmp_path, "orpo"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and "test_preference_accuracy" in metrics
    assert any("eval_rewards/accuracies" in row for row in metrics["history"])


def test_orpo_masks_the_prompt_in_its_nll_term(tmp_path):
    import torch

    from finetune.config import load_recipe
    from finetune.data.read import load_splits
    from finetune.model import loading
    from finetune.run.scoring import sequence_logprobs
    from finetune.train.prepare import prepare
    from finetune.train.trainer import trainer_class, trainer_config

    recipe = load_recipe(pair_recipe(tmp_path, "orpo"))
    prepared = prepare(recipe, load_splits(recipe.data))
    device = torch.device("cpu")
    model = loading.load_for_training(prepared.model_path, recipe, device, torch.float32)
    trainer = trainer_class("orpo")(
        model=model,
        args=trainer_config(recipe, prepared.plan, tmp_path, torch.float32, device),
        train_dataset=prepared.datasets["train"],
        eval_dataset=prepared.datasets["validation"],
        processing_class=prepared.tokenizer,
    )
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model.eval()
    with torch.no_grad():
        nll = trainer.concatenated_forward(model, batch)[4]
    sequences = []
    for ids, mask, labels in zip(
        batch["chosen_input_ids"], batch["chosen_attention_mask"], batch["chosen_labels"], strict=True
    ):
        n = int(mask.sum())
        assert (labels[:n] != -100).sum() < n  # the prompt is masked in the labels ORPO collates
        sequences.append((ids[:n].tolist(), labels[:n].tolist()))
    with torch.no_grad():
        sums, counts = sequence_logprobs(model, sequences)
    assert float(nll) == pytest.approx(-sum(sums) / sum(counts), rel=1e-4)  # answer tokens only, token-weighted


def test_dpo_after_sft_continues_the_sft_adapter_and_takes_it_as_the_reference(tmp_path, quickstart_run):
    from safetensors.torch import load_file

    sft = quickstart_run / "adapter"
    recipe = pair_recipe(tmp_path, max_steps=1, learning_rate=1e-12)
    run = tmp_path / "dpo"
    args = ["train", str(recipe), "-o", str(run), "-q", f"--set=model.adapter={sft}", "--set=train.eval_steps=1"]
    trained = CliRunner().invoke(app, args)
    assert trained.exit_code == 3, trained.output  # lr 1e-12: finished, no better than its start (exit 3)
    metrics = json.loads((run / "metrics.json").read_text())
    before, after = (
        load_file(sft / "adapter_model.safetensors"),
        load_file(run / "adapter" / "adapter_model.safetensors"),
    )
    assert before.keys() == after.keys()
    assert all((before[k] - after[k]).abs().max() < 1e-6 for k in before)  # lr 1e-12: the SFT weights, continued
    assert not (run / "adapter" / "ref").exists()
    recorded = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recorded["model"]["adapter"] == str(sft)

    result = CliRunner().invoke(app, ["eval", str(run), "--json", "--compare-base"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["reference"] == str(sft)
    rows = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]

    def margin(row: dict, ref: str) -> float:  # DPO's implicit reward margin of the policy against `ref`
        chosen = row["chosen_logp"] - row[f"{ref}chosen_logp"]
        return 0.1 * (chosen - (row["rejected_logp"] - row[f"{ref}rejected_logp"]))

    # Against the SFT adapter (the reference) the policy has no margin: DPO starts at ln 2. Against the
    # bare base it would: the SFT adapter already prefers some answers, so the reference must be the adapter.
    # (TRL's step-0 loss is ln 2 to within ~1e-3 here: its policy and "ref" forwards differ by float noise)
    assert metrics["base_eval_loss"] == pytest.approx(math.log(2), abs=1e-2)
    assert max(abs(margin(row, "ref_")) for row in rows) < 0.02
    assert sum(abs(margin(row, "base_")) for row in rows) / len(rows) > 0.1


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_sigterm_then_resume_finishes_the_run(tmp_path, objective):
    recipe = pair_recipe(tmp_path, objective, max_steps=12, eval_steps=2)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "finetune", "train", str(recipe), "-o", str(run), "-q"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    wait_for(run / "checkpoints" / "checkpoint-2" / "finetune-complete.json", process, timeout=300)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr
    assert not (run / "metrics.json").exists()
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 12 and metrics["events"][0]["type"] == "resume"
    assert "test_preference_accuracy" in metrics


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_two_processes(tmp_path, objective):
    recipe = pair_recipe(tmp_path, objective)
    result = CliRunner().invoke(app, ["train", str(recipe), "-o", str(tmp_path / "ddp"), "--nproc", "2", "-q"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["effective_batch_size"] == 8
    assert "test_preference_accuracy" in metrics


def test_the_spike_guard_watches_the_dpo_loss(tmp_path):
    """A learning rate that wrecks the pairs keeps the preference loss above ln 2 (worse than the reference):
    with a strict factor those steps are spikes, skipped and rolled back, and each one is above the floor."""
    recipe = pair_recipe(tmp_path, max_steps=30, eval_steps=10, learning_rate=1000)
    strict = ["--set", "spike_guard.factor=1.05", "--set", "spike_guard.window=10"]
    result = CliRunner().invoke(app, ["train", str(recipe), "-o", str(tmp_path / "run"), "-q", *strict])
    run = tmp_path / "run"
    written = run / "metrics.json" if (run / "metrics.json").exists() else run / "metrics.partial.json"
    events = json.loads(written.read_text())["events"]
    spikes = [event for event in events if event["type"] == "spike"]
    assert spikes, result.output
    assert all(event["loss"] > math.log(2) for event in spikes)  # never below the floor
    assert any(event["type"] in ("rollback", "diverged") for event in events)


def test_orpo_with_a_learning_rate_that_wrecks_the_model_is_caught(tmp_path):
    """ORPO's loss is an NLL: a collapsed model sits at ln(vocabulary) + beta ln 2 (even odds), which the
    guard calls a collapse, rolls back, and finally stops the run as diverged (exit 1), as for SFT."""
    recipe = pair_recipe(tmp_path, "orpo", max_steps=30, eval_steps=10, learning_rate=1000)
    result = CliRunner().invoke(app, ["train", str(recipe), "-o", str(tmp_path / "run"), "-q"])
    events = json.loads((tmp_path / "run" / "metrics.partial.json").read_text())["events"]
    assert any(event["type"] == "collapse" for event in events), result.output
    assert result.exit_code == 1 and "collapsed" in result.output
