"""End to end: the real CLI, the real 4-bit tiny model, the real SFTTrainer, on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune.cli import app
from tests.conftest import write_jsonl

runner = CliRunner()


def run_cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_quickstart_writes_a_complete_run_directory(quickstart_run):
    run = quickstart_run
    files = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "checkpoints" not in p.parts}
    assert {
        "recipe.yaml",
        "metrics.json",
        "loss.png",
        "samples.jsonl",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer.json",
        "adapter/tokenizer_config.json",
    } <= files
    assert {name for name in files if name.startswith(".")} == {".finetune-run", ".finetune-lock"}, (
        "no staging leftovers"
    )
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = json.loads((run / "metrics.json").read_text())
    for key in (
        "global_step",
        "epochs_completed",
        "best_step",
        "best_eval_loss",
        "stopped_early",
        "history",
        "test_loss",
        "test_perplexity",
        "world_size",
        "backend",
        "versions",
        "data_hash",
        "recipe_hash",
        "events",
        "timings",
    ):
        assert key in metrics, key
    assert metrics["world_size"] == 1 and metrics["backend"] == "hf"
    assert metrics["splits"] == {"train": 18, "validation": 21, "test": 21}
    evals = [row["eval_loss"] for row in metrics["history"] if "eval_loss" in row]
    assert metrics["best_eval_loss"] == pytest.approx(min(evals))
    assert metrics["best_eval_loss"] < evals[0] - 0.3, "the quickstart must visibly learn"
    # ... and then overfit its 18 conversations: the validation loss turns up, early stopping ends the run
    # before max_steps, and the adapter kept is the best step's (patience 2: two validations after it)
    assert metrics["stopped_early"] is True and metrics["global_step"] < metrics["planned_steps"]
    assert evals[-1] > metrics["best_eval_loss"] and evals[-2] > metrics["best_eval_loss"]
    assert metrics["best_step"] < metrics["global_step"]
    assert any("loss" in row for row in metrics["history"])
    assert metrics["test_perplexity"] == pytest.approx(2.718281828 ** metrics["test_loss"], rel=1e-6)
    assert {"torch", "transformers", "peft", "trl", "bitsandbytes"} <= set(metrics["versions"])

    assert metrics["base_eval_loss"] == evals[0] and metrics["improved"] is True  # step 0 is the base model

    # samples: the same fixed validation prompts answered greedily at every validation, base included
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in metrics["history"] if "eval_loss" in row]
    per_step = {step: [row for row in samples if row["step"] == step] for step in steps}
    assert all(len(rows) == 2 for rows in per_step.values()) and len(samples) == 2 * len(steps)
    assert {row["prompt"] for row in per_step[0]} == {row["prompt"] for row in per_step[steps[-1]]}
    assert all(set(row) == {"step", "prompt", "reference", "generation"} for row in samples)
    assert all(isinstance(row["generation"], str) and row["reference"] for row in samples)

    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 64 and adapter_config["peft_type"] == "LORA"
    assert Path(adapter_config["base_model_name_or_path"]).is_dir()
    recipe = (run / "recipe.yaml").read_text()
    assert "builtin:tiny-llama" in recipe and "early_stopping" in recipe
    # the recipe says ../data/finance_chat.jsonl; the run records the file it read, absolute and without ../
    assert f"  path: {Path(__file__).resolve().parents[2] / 'data' / 'finance_chat.jsonl'}\n" in recipe


def test_adapter_reloads_with_plain_peft_and_reproduces_the_validation_loss(quickstart_run):
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTTrainer

    from finetune.config import load_recipe
    from finetune.data.read import load_splits
    from finetune.data.tokenize import encode_split

    adapter = quickstart_run / "adapter"
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]

    # 1. Plain peft on a plain (unquantized) base: it loads and generates.
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    assert model.generate(torch.tensor([[1, 70]]), max_new_tokens=3, do_sample=False).shape == (1, 5)

    # 2. The same 4-bit base as in training reproduces the recorded best validation loss.
    recipe = load_recipe(quickstart_run / "recipe.yaml")
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    base4 = AutoModelForCausalLM.from_pretrained(
        base, quantization_config=quant, dtype=torch.float32, device_map={"": "cpu"}
    )
    model4 = PeftModel.from_pretrained(base4, adapter)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    validation = load_splits(recipe.data).validation
    columns, _ = encode_split(validation, tokenizer, recipe.data.max_length, True)

    from finetune.train.plan import make_plan
    from finetune.train.trainer import trainer_config

    splits = load_splits(recipe.data)
    plan = make_plan(
        recipe, train_rows=len(splits.train), validation_rows=len(splits.validation), test_rows=len(splits.test)
    )
    args = trainer_config(recipe, plan, quickstart_run / "reeval", torch.float32, torch.device("cpu"))
    trainer = SFTTrainer(
        model=model4,
        args=args,
        eval_dataset=Dataset.from_dict(columns),
        train_dataset=Dataset.from_dict(columns),
        processing_class=tokenizer,
    )
    loss = trainer.evaluate()["eval_loss"]
    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    assert loss == pytest.approx(metrics["best_eval_loss"], rel=1e-4)


def test_early_stopping_stops_when_validation_loss_rises(tmp_path, write_recipe):
    # Train answers are all "a", validation answers all "z": fitting the training split makes the
    # validation loss rise from the first evaluation, so early stopping must end the run.
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"Q{i}", "completion": "a" * 20} for i in range(64)])
    val = write_jsonl(tmp_path / "val.jsonl", [{"prompt": f"Q{i}", "completion": "z" * 20} for i in range(8)])
    recipe = write_recipe(
        {
            "data": {"path": None, "train": str(train), "validation": str(val)},
            "train": {"epochs": 3, "eval_steps": 2, "learning_rate": 1e-2},
            "early_stopping": {"patience": 2},
        }
    )
    result = run_cli("train", recipe, "-o", tmp_path / "run", "-q")
    assert result.exit_code == 3, result.output  # finished, but no better than the base model
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    evals = [row["eval_loss"] for row in metrics["history"] if "eval_loss" in row and row["step"] > 0]
    assert metrics["improved"] is False and metrics["base_eval_loss"] < evals[0]
    assert metrics["stopped_early"] is True
    assert metrics["global_step"] < metrics["planned_steps"] == 24
    assert metrics["best_step"] == 2 and len(evals) == 3 and evals[2] > evals[0]
    assert "test_loss" not in metrics  # no test split was given


def test_base_weights_stay_frozen_and_adapter_weights_change(tiny_model_path, write_recipe):
    import bitsandbytes as bnb
    import torch

    from finetune.config import load_recipe
    from finetune.model import loading

    recipe = load_recipe(write_recipe())
    model = loading.load_for_training(str(tiny_model_path), recipe, torch.device("cpu"), torch.float32)
    # bitsandbytes repacks 4-bit weights into a CPU kernel layout on the first forward, so the packed
    # bytes may change while the weight does not: compare each quantized layer by its outputs.
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantized, "the base is really 4-bit"
    probes = {
        n: torch.randn(2, 3, m.in_features, generator=torch.Generator().manual_seed(0)) for n, m in quantized.items()
    }

    def layer_outputs():
        with torch.no_grad():
            return {n: m(probes[n]) for n, m in quantized.items()}

    before_outputs = layer_outputs()
    frozen = {
        n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad and p.dtype != torch.uint8
    }
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(5, 200, (2, 32))
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], before) for n, before in frozen.items())
    after_outputs = layer_outputs()
    assert all(torch.equal(after_outputs[n], before_outputs[n]) for n in quantized)
    assert all(not torch.equal(params[n], before) for n, before in lora.items() if "lora_B" in n)


def test_non_empty_output_needs_overwrite(tmp_path, write_recipe):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    result = run_cli("train", write_recipe(), "-o", run)
    assert result.exit_code == 2
    assert "--overwrite" in result.output and "Traceback" not in result.output
    assert (run / "keep.txt").exists()


def test_dry_run_loads_nothing_and_writes_nothing(tmp_path, write_recipe):
    result = run_cli("train", write_recipe(), "-o", tmp_path / "run", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "no weights were loaded" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "setup, message",
    [
        ("no_config", "no config.json"),
        ("pickle_only", "only pickle weights"),
        ("unsupported", "unsupported architecture"),
        ("hub_offline", "unknown model id or the hub is unreachable"),
        ("bad_target", "lora.target_modules"),
    ],
)
def test_bad_model_input_is_exit_code_2_and_leaves_no_run(tmp_path, write_recipe, tiny_model_path, setup, message):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    overrides = {"model": {"name": str(model_dir)}}
    if setup == "pickle_only":
        (model_dir / "config.json").write_text((tiny_model_path / "config.json").read_text())
        (model_dir / "pytorch_model.bin").write_bytes(b"not really")
    elif setup == "unsupported":
        (model_dir / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    elif setup == "hub_offline":
        overrides = {"model": {"name": "acme/does-not-exist"}}
    elif setup == "bad_target":
        overrides = {"model": {"name": "builtin:tiny-llama"}, "lora": {"target_modules": ["w_nonexistent"]}}
    result = run_cli("train", write_recipe(overrides), "-o", tmp_path / "run", "-q")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_validate_and_recipes_commands(write_recipe):
    result = run_cli("validate", write_recipe())
    assert result.exit_code == 0 and "valid (alpaca data: train 320, validation 40, test 40)" in result.output
    result = run_cli("validate", write_recipe({"train": {"epochs": -1}}))
    assert result.exit_code == 2 and "train.epochs" in result.output
    result = run_cli("recipes")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines()]  # `finetune train NAME` takes these
    assert "quickstart" in names and "llama-3.2-1b-finance" in names


def test_cli_top_level_imports_no_heavy_library():
    code = (
        "import sys, finetune.cli, finetune.config, finetune.data; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_version_flag():
    result = run_cli("--version")
    assert result.exit_code == 0 and result.output.startswith("finetune ")


def test_dry_run_shows_batching_and_refuses_packing_without_flash_attention(tmp_path, write_recipe):
    result = run_cli("train", write_recipe(), "-o", tmp_path / "run", "--dry-run")
    assert result.exit_code == 0 and "batching  grouped" in result.output
    result = run_cli("train", write_recipe({"data": {"packing": "on"}}), "-o", tmp_path / "run", "--dry-run")
    assert result.exit_code == 2 and "data.packing: on needs" in result.output


def test_a_tracker_that_is_not_installed_is_named_before_training(tmp_path, write_recipe):
    import importlib.util

    if importlib.util.find_spec("mlflow"):
        pytest.skip("mlflow is installed here")
    result = run_cli("train", write_recipe({"train": {"report_to": ["mlflow"]}}), "-o", tmp_path / "run")
    assert result.exit_code == 2 and "train.report_to: mlflow is not installed" in result.output
    assert not (tmp_path / "run").exists()


def test_dry_run_counts_steps_over_packed_sequences(tmp_path, write_recipe, monkeypatch):
    """With flash-attention packing, --dry-run tokenizes (no weights) to count the packed sequences, as
    train() does; flash-attn is faked as installed: packing is chosen but nothing runs on a GPU."""
    import re

    from finetune.data import batching

    recipe = write_recipe({"model": {"attn_implementation": "flash_attention_2"}, "data": {"max_length": 1024}})
    grouped = run_cli("train", recipe, "-o", tmp_path / "run", "--dry-run")
    monkeypatch.setattr(batching, "flash_attn_installed", lambda: True)
    packed = run_cli("train", recipe, "-o", tmp_path / "run", "--dry-run")
    assert packed.exit_code == 0, packed.output
    assert "packed (steps counted over packed sequences)" in packed.output

    def steps(result):
        return int(re.search(r"schedule\s+(\d+) steps", result.output).group(1))

    assert steps(packed) < steps(grouped)  # several examples per sequence: fewer steps for the same epoch
    assert not (tmp_path / "run").exists()


def test_samples_can_be_turned_off_and_show_in_the_summary(tmp_path, write_recipe):
    on = run_cli(
        "train", write_recipe({"train": {"max_steps": 4, "eval_steps": 2, "sample_prompts": 1}}), "-o", tmp_path / "on"
    )
    assert on.exit_code in (0, 3), on.output
    assert "sample (best)" in on.output and "samples   1 validation prompts" in on.output
    rows = [json.loads(line) for line in (tmp_path / "on" / "samples.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 2, 4]
    off = run_cli("train", write_recipe({"train": {"max_steps": 2, "sample_prompts": 0}}), "-o", tmp_path / "off", "-q")
    assert off.exit_code in (0, 3) and not (tmp_path / "off" / "samples.jsonl").exists()


def test_a_run_logged_to_a_file_shows_progress_lines_and_train_log(tmp_path, write_recipe):
    """stderr to a file (nohup, CI, Slurm): a plain line per logged step and per validation, the same
    lines in RUN/train.log, and no line wrapped at 80 columns."""
    import subprocess
    import sys

    recipe = write_recipe({"train": {"max_steps": 6, "eval_steps": 3, "logging_steps": 2}})
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        done = subprocess.run(
            [sys.executable, "-m", "finetune", "train", str(recipe), "-o", str(tmp_path / "run")],
            stderr=stderr,
            stdout=subprocess.DEVNULL,
        )
    text = log.read_text()
    assert done.returncode in (0, 3), text
    steps = [line for line in text.splitlines() if " loss " in line and "tokens/s" in line]
    assert [line.split()[3] for line in steps] == ["2/6", "4/6", "6/6"], text
    assert all("epoch" in line and " lr " in line and "eta" in line for line in steps)
    validations = [line for line in text.splitlines() if "validation loss" in line and "(best" in line]
    assert len(validations) == 3 and "before training (the base model)" in validations[0]  # base, step 3, step 6
    assert "early stopping patience" in text, "the plan line is not broken at 80 columns"
    train_log = (tmp_path / "run" / "train.log").read_text()
    assert all(line in train_log for line in steps)
    assert "━" not in text, "no progress bar drawn into a file"


def test_the_cheap_errors_come_first(tmp_path, write_recipe):
    """A folder in the way, then the model, then the data: each reported before the next is looked at."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    recipe = write_recipe({"model": {"name": str(tmp_path / "no-model")}, "data": {"path": str(broken)}})
    for output, message in [(busy, "output directory is not empty"), (tmp_path / "new", "model directory not found")]:
        for extra in ([], ["--dry-run"]):
            result = run_cli("train", recipe, "-o", output, *extra)
            assert result.exit_code == 2 and message in result.output, (output, extra, result.output)
    fixed = write_recipe({"data": {"path": str(broken)}})
    result = run_cli("train", fixed, "-o", tmp_path / "new", "--dry-run")
    assert result.exit_code == 2 and "invalid JSON" in result.output
