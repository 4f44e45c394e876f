"""Long finance documents at a small max_length: every answer kept, exact epochs, the same rule in eval,
inspect and --dry-run (data.truncation: prompt)."""

from __future__ import annotations

import json
import random

from typer.testing import CliRunner

from finetune.cli import app
from tests.conftest import write_jsonl


def long_rows(n: int, seed: int = 0) -> list[dict]:
    """A report table of 700 to 3,000 characters, then the question; a short answer."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        lines = [
            f"{name} {year}: {rng.randint(100, 999)}.{rng.randint(0, 9)}"
            for name in ("Revenue", "EBIT", "Capex")
            for year in range(2000, 2000 + rng.randint(10, 45))
        ]
        table = "\n".join(lines)
        rows.append(
            {"instruction": f"{table}\n\nWhat was revenue in 2001 (row {i})?", "output": lines[1].split(": ")[1]}
        )
    return rows


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_long_documents_keep_every_answer_and_train_exact_epochs(tmp_path, write_recipe):
    data = write_jsonl(tmp_path / "reports.jsonl", long_rows(60))
    recipe = write_recipe({"data": {"path": str(data), "max_length": 192}, "train": {"epochs": 1, "eval_steps": 2}})
    dry = invoke("train", recipe, "-o", tmp_path / "dry", "--dry-run")
    assert dry.exit_code == 0 and "train 48 / validation 6 / test 6 rows" in dry.output, dry.output

    run = tmp_path / "run"
    result = invoke("train", recipe, "-o", run, "-q")
    assert result.exit_code in (0, 3), result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 1.0 and metrics["global_step"] == metrics["planned_steps"] == 6
    train = metrics["tokenization"]["train"]
    assert train["examples"] == 48 and train["prompts_cut"] == 48, "every row is over 192 tokens"
    assert train["dropped_no_target"] == train["dropped_too_long"] == 0
    assert train["prompt_tokens_cut"] > 48 * 500

    scored = invoke("eval", run, "--data", data, "--json")
    assert scored.exit_code == 0, scored.output
    finetuned = json.loads(scored.stdout)["finetuned"]
    assert finetuned["prompts_cut"] == 60 and finetuned["dropped_too_long"] == 0

    inspected = invoke("data", "inspect", recipe, "--json")
    report = json.loads(inspected.stdout)
    assert report["truncation"] == "prompt" and report["prompts_cut"] == 60 and report["truncated_to_no_answer"] == 0


def test_truncation_end_loses_those_answers_and_says_so(tmp_path, write_recipe):
    data = write_jsonl(tmp_path / "reports.jsonl", long_rows(60))
    recipe = write_recipe({"data": {"path": str(data), "max_length": 192, "truncation": "end"}})
    result = invoke("train", recipe, "-o", tmp_path / "run", "--dry-run")
    assert (
        result.exit_code == 2
        and "every train example is longer than data.max_length=192 before its answer ends" in result.output
    )
    assert "set data.truncation: prompt" in result.output
