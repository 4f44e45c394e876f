"""`finetune init DATA_FILE`: a starter recipe that `finetune validate` accepts, never written over a file."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from finetune.cli import app
from tests.conftest import ROOT, write_jsonl


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_init_writes_a_recipe_that_validates_and_whose_max_length_covers_the_p99(tmp_path):
    data, recipe = ROOT / "data" / "finance_chat.jsonl", tmp_path / "recipes" / "chat.yaml"
    result = run_cli("init", data, "-o", recipe, "--model", "builtin:tiny-llama")
    assert result.exit_code == 0, result.output
    assert f"wrote {recipe}: chat data, " in result.output
    text = recipe.read_text()
    assert (
        text.startswith(f"# finetune train {recipe}\n") and "counted with the tokenizer of builtin:tiny-llama" in text
    )

    validated = run_cli("validate", recipe)
    assert validated.exit_code == 0 and "valid (chat data: train " in validated.output, validated.output
    # the same token lengths as `finetune data inspect` counts with that tokenizer
    inspected = run_cli("data", "inspect", data, "--model", "builtin:tiny-llama", "--json")
    p99 = json.loads(inspected.stdout)["token_lengths"]["p99"]
    written = run_cli("vram-estimate", recipe, "--json")
    assert written.exit_code == 0, written.output
    assert json.loads(written.stdout)["setup"]["seq_len"] == math.ceil(p99 / 64) * 64
    dry = run_cli("train", recipe, "-o", tmp_path / "run", "--dry-run", "-q")
    assert dry.exit_code == 0 and "dry run: recipe and data are valid" in dry.output, dry.output


def test_init_states_the_estimate_for_the_default_model_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("init", ROOT / "data" / "finance_qa.jsonl")  # default: recipe.yaml, Llama 3.2 1B Instruct
    assert result.exit_code == 0, result.output
    text = (tmp_path / "recipe.yaml").read_text()
    assert "name: meta-llama/Llama-3.2-1B-Instruct" in text
    assert "estimated as characters / 4" in text  # no tokenizer offline: the documented estimate
    estimate = json.loads(run_cli("vram-estimate", "recipe.yaml", "--json").stdout)
    assert f"GPU memory (finetune vram-estimate): {estimate['total_bytes'] / 2**30:.2f} GiB" in text
    validated = run_cli("validate", "recipe.yaml")
    assert validated.exit_code == 0 and "valid (alpaca data: train 320, validation 40, test 40)" in validated.output


def test_init_never_writes_over_a_file_unless_forced(tmp_path):
    data, recipe = ROOT / "data" / "finance_sentiment.jsonl", tmp_path / "r.yaml"
    recipe.write_text("mine\n")
    result = run_cli("init", data, "-o", recipe, "--model", "builtin:tiny-llama")
    assert result.exit_code == 2 and recipe.read_text() == "mine\n"
    assert result.output.strip().splitlines() == [
        f"error: {recipe}: already exists; choose another -o or pass --force to replace it"
    ]
    result = run_cli("init", data, "-o", recipe, "--model", "builtin:tiny-llama", "--force")
    assert result.exit_code == 0, result.output
    assert "format: classification" in recipe.read_text() and "Labels found: negative" in recipe.read_text()
    assert run_cli("validate", recipe).exit_code == 0


def test_init_force_never_replaces_the_data_or_a_non_recipe_file(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_bytes((ROOT / "data" / "finance_qa.jsonl").read_bytes())
    (tmp_path / "link.yaml").symlink_to(data)
    notes = tmp_path / "notes.txt"
    notes.write_text("keep\n")
    for target in (data, tmp_path / "link.yaml", notes):
        result = run_cli("init", data, "-o", target, "--model", "builtin:tiny-llama", "--force")
        assert result.exit_code == 2 and "replaces a recipe file (.yaml) only" in result.output, result.output
    assert data.read_bytes() == (ROOT / "data" / "finance_qa.jsonl").read_bytes() and notes.read_text() == "keep\n"


def test_init_refuses_data_too_small_to_split_and_writes_nothing(tmp_path):
    rows = (ROOT / "data" / "finance_qa.jsonl").read_text().splitlines(keepends=True)
    for count, written in ((2, False), (3, True)):  # one row each for train, validation and test at least
        data, recipe = tmp_path / f"d{count}.jsonl", tmp_path / f"r{count}.yaml"
        data.write_text("".join(rows[:count]))
        result = run_cli("init", data, "-o", recipe, "--model", "builtin:tiny-llama")
        assert recipe.exists() is written and result.exit_code == (0 if written else 2), result.output
        if written:
            assert run_cli("validate", recipe).exit_code == 0
        else:
            assert f"{count} usable rows are too few to split into train, validation and test" in result.output


def test_init_bad_input_is_one_line_and_exit_2(tmp_path):
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    qa = ROOT / "data" / "finance_qa.jsonl"
    for args, message in [
        (["init", tmp_path / "missing.jsonl", "-o", tmp_path / "a.yaml"], "missing.jsonl: data file not found"),
        (["init", odd, "-o", tmp_path / "b.yaml"], "cannot detect the data format from columns ['answer', 'question']"),
        (["init", qa, "-o", tmp_path], "is a directory; give the recipe file to write with -o"),
        (["init", qa, "-o", tmp_path / "c.yaml", "--model", "builtin:nope"], "unknown built-in model 'builtin:nope'"),
    ]:
        result = run_cli(*args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.jsonl"]  # nothing written
