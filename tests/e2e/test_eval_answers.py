"""`finetune eval` (lm) writes greedy answers beside the references in predictions.jsonl (run/answers.py)."""

import json

from typer.testing import CliRunner

from finetune.cli import app
from tests.conftest import ROOT, write_jsonl

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def predictions(out) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_eval_answers_the_first_three_scored_rows_by_default(quickstart_run, tmp_path):
    result = invoke("eval", quickstart_run, "-o", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["answers"] == {"rows": 3, "max_new_tokens": 24}  # the quickstart's train.sample_max_new_tokens
    rows = predictions(tmp_path)
    scored = [i for i, row in enumerate(rows) if "loss" in row]
    answered = [i for i, row in enumerate(rows) if "generated" in row]
    assert answered == scored[:3] and len(scored) > 3
    chats = [json.loads(line)["messages"] for line in (ROOT / "data" / "finance_chat.jsonl").read_text().splitlines()]
    outputs = {m["content"] for chat in chats for m in chat if m["role"] == "assistant"}  # the quickstart's data
    for i in answered:
        assert isinstance(rows[i]["generated"], str) and rows[i]["reference"] in outputs
    assert not any("reference" in row or "base_generated" in row for row in rows if "generated" not in row)


def test_eval_generate_answers_every_scored_row_as_finetune_generate_would(quickstart_run, tmp_path):
    from finetune.config import load_recipe
    from finetune.data.read import load_examples
    from finetune.run.generation import generate, prompt_ids
    from finetune.run.inference import load_model, open_run

    document = "The filing says revenue grew while costs fell in every region. " * 10  # ~630 tokens (bytes)
    rows = [
        {"prompt": "What is a bond?", "completion": "A loan to an issuer."},
        {"prompt": document + "By how much did revenue grow?", "completion": "Seven percent."},  # prompt cut
        {"prompt": "What is equity?", "completion": "Ownership."},
        {"prompt": "Define yield.", "completion": "Income over price."},
    ]
    data_file = write_jsonl(tmp_path / "qa.jsonl", rows)
    out = tmp_path / "e"
    args = ["--data", data_file, "--generate", "--compare-base", "--max-new-tokens", "8", "--batch-size", "3"]
    result = invoke("eval", quickstart_run, *args, "-o", out)
    assert result.exit_code == 0, result.output
    assert "greedy answers beside the references in 4 rows" in result.output
    written = predictions(out)
    assert all(isinstance(row["generated"], str) and isinstance(row["base_generated"], str) for row in written)
    assert [row["reference"] for row in written] == [row["completion"] for row in rows]

    # Batched and left-padded, each answer equals `finetune generate`'s for the same prompt, cut to fit as it
    # cuts one (data.truncation: prompt): the long document leaves room for max_new_tokens in max_length 384
    model, tokenizer = load_model(open_run(quickstart_run))
    examples, _, _ = load_examples(str(data_file), load_recipe(quickstart_run / "recipe.yaml").data)
    assert len(prompt_ids(tokenizer, examples[1].messages[:-1])) > 384
    for example, row in zip(examples, written, strict=True):
        expected = generate(
            model, tokenizer, example.messages[:-1], max_new_tokens=8, temperature=0.0, stream=None, context_length=384
        )
        assert row["generated"] == expected, example.source


def test_eval_answer_options(quickstart_run, tmp_path):
    result = invoke("eval", quickstart_run, "--no-generate", "--limit", "4", "-o", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["answers"]["rows"] == 0
    assert not any("generated" in row for row in predictions(tmp_path))

    labelled = write_jsonl(tmp_path / "cls.jsonl", [{"text": "Stock soars", "label": "up"}])
    cases = [
        (["--max-new-tokens", "0"], "--max-new-tokens must be positive"),
        (["--data", labelled, "--task", "classification", "--generate"], "apply to lm eval"),
        (["--data", labelled, "--task", "classification", "--max-new-tokens", "4"], "apply to lm eval"),
    ]
    for args, message in cases:
        result = invoke("eval", quickstart_run, *args, "-o", tmp_path / "bad")
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
