"""eval, generate, chat and merge on runs trained by the real CLI (tiny model, CPU)."""

import io
import json

import pytest
import torch
from typer.testing import CliRunner

from finetune.cli import app
from tests.conftest import ROOT, train_run, write_jsonl

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_eval_lm_reproduces_the_training_test_score_and_beats_the_base(quickstart_run, tmp_path):
    out = tmp_path / "eval"
    result = invoke("eval", quickstart_run, "--compare-base", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # exactly one JSON object on stdout
    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    assert data["task"] == "lm" and data["examples"] == 21  # the quickstart's test split
    # CPU inference runs bitsandbytes' bf16 kernel, training the dequantized fp32 path: equal to ~1e-4
    assert data["finetuned"]["loss"] == pytest.approx(metrics["test_loss"], rel=1e-3)
    assert data["base"]["loss"] > data["finetuned"]["loss"] + 0.5
    assert json.loads((out / "metrics.json").read_text()) == data
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 21 and all(row["input"] for row in rows)
    # each scored row has its own tuned and base loss and its answer-token count; they add up to the mean
    scored = [row for row in rows if "loss" in row]
    assert len(scored) == 21 - data["finetuned"]["dropped_too_long"] and all(
        "dropped" in r for r in rows if "loss" not in r
    )
    assert sum(r["tokens"] for r in scored) == data["finetuned"]["tokens"]
    mean = sum(r["loss"] * r["tokens"] for r in scored) / data["finetuned"]["tokens"]
    assert mean == pytest.approx(data["finetuned"]["loss"], rel=1e-6)
    assert all(r["base_loss"] is not None for r in scored) and "base_prediction" not in rows[0]


def test_eval_classification_by_ranking_writes_metrics_and_confusion(sentiment_run):
    result = invoke("eval", sentiment_run, "--compare-base")
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "confusion matrix" in result.output
    data = json.loads((sentiment_run / "eval" / "metrics.json").read_text())
    m = data["finetuned"]
    assert data["task"] == "classification" and data["method"] == "rank"
    assert m["labels"] == ["positive", "negative", "neutral"]
    assert sum(map(sum, m["confusion_matrix"])) == data["examples"] == 24
    assert 0.0 <= m["accuracy"] <= 1.0 and "base" in data
    rows = [json.loads(line) for line in (sentiment_run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert all(set(row["scores"]) == {"positive", "negative", "neutral"} for row in rows)
    assert all(row["prediction"] == max(row["scores"], key=row["scores"].get) for row in rows)
    assert (sentiment_run / "eval" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    # The training run ended with the same ranking of its test split. On the CPU, training scores through
    # the dequantized fp32 path and `eval` through bitsandbytes' bf16 kernel (docs/design.md): a near-tie
    # may flip, so the two accuracies agree to within two of the 24 examples.
    trained = json.loads((sentiment_run / "metrics.json").read_text())
    assert abs(trained["test_accuracy"] - m["accuracy"]) <= 2 / 24 and 0.0 <= trained["test_macro_f1"] <= 1.0


def test_eval_classification_by_generation(sentiment_run, tmp_path):
    result = invoke("eval", sentiment_run, "--method", "generate", "--limit", "6", "-o", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["examples"] == 6 and data["method"] == "generate"
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(isinstance(row["generated"], str) for row in rows)  # the text, kept
    other = sum(row["prediction"] == "(other)" for row in rows)
    assert data["finetuned"]["unmatched"] == other
    assert ("name no label" in result.stderr) == (other > 6 / 5), result.stderr


def test_eval_of_another_file_with_explicit_labels(quickstart_run, tmp_path):
    rows = [
        {"text": f"Stock {i} {'soars' if i % 2 else 'slumps'}", "label": "up" if i % 2 else "down"} for i in range(6)
    ]
    data_file = write_jsonl(tmp_path / "cls.jsonl", rows)
    result = invoke(
        "eval",
        quickstart_run,
        "--data",
        data_file,
        "--task",
        "classification",
        "--labels",
        "up,down",
        "-o",
        tmp_path / "e",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["finetuned"]["labels"] == ["up", "down"]


def test_eval_bad_input(quickstart_run, sentiment_run, tmp_path, write_recipe):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "recipe.yaml").write_text("x: 1")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    no_test = train_run(
        tmp_path / "no_test", write_recipe({"data": {"split": {"test": 0.0}}, "train": {"max_steps": 2}})
    )
    cases = [
        (["eval", unfinished], "not a finished run"),
        (["eval", tmp_path / "missing"], "no such run directory"),
        (["eval", sentiment_run, "--labels", "positive,negative"], "is not in the label set"),
        (["eval", no_test], "has no test split"),
        (["eval", quickstart_run, "--data", empty], "no rows; the file is empty"),
        (["eval", quickstart_run, "--limit", "0"], "--limit must be positive"),
        (["eval", quickstart_run, "--batch-size", "0"], "--batch-size must be positive"),
        (["generate", quickstart_run, "hi", "--max-new-tokens", "0"], "--max-new-tokens must be positive"),
        (["generate", quickstart_run, "hi", "--temperature", "inf"], "--temperature must be between 0"),
        (["chat", quickstart_run, "--temperature", "-1"], "--temperature must be between 0"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_generate_streams_with_the_training_template(quickstart_run):
    from finetune.data.read import Example
    from finetune.data.tokenize import encode
    from finetune.run.generation import prompt_ids
    from finetune.run.inference import load_model, open_run

    result = invoke("generate", quickstart_run, "What is a bond?", "--max-new-tokens", "12")
    assert result.exit_code == 0, result.output
    assert len(result.stdout) > 0

    model, tokenizer = load_model(open_run(quickstart_run))
    messages = [{"role": "user", "content": "What is a bond?"}]
    trained = encode(Example(messages=messages + [{"role": "assistant", "content": "A loan."}]), tokenizer, 512, True)
    prompt = prompt_ids(tokenizer, messages)
    assert trained.input_ids[: len(prompt)] == prompt and trained.labels[len(prompt) - 1] == -100


def test_chat_loop_keeps_history_resets_and_exits(quickstart_run):
    from finetune.run.generation import chat_loop, trim_history
    from finetune.run.inference import load_model, open_run

    model, tokenizer = load_model(open_run(quickstart_run))
    lines = iter(["hello", "/reset", "hi again", "/exit", "never read"])
    stream = io.StringIO()
    chat_loop(
        model,
        tokenizer,
        read=lambda _: next(lines),
        stream=stream,
        system=None,
        max_new_tokens=4,
        temperature=0.0,
        context_length=256,
    )
    text = stream.getvalue()
    assert text.count("model> ") == 2 and "(conversation cleared)" in text
    assert next(lines) == "never read"

    long = (
        [{"role": "system", "content": "S"}]
        + [{"role": role, "content": "x" * 40} for _ in range(6) for role in ("user", "assistant")]
        + [{"role": "user", "content": "last"}]
    )
    kept = trim_history(tokenizer, long, budget=150)
    assert kept[0]["role"] == "system" and kept[-1]["content"] == "last" and len(kept) < len(long)


def test_merge_equals_base_plus_adapter(quickstart_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    result = invoke("merge", quickstart_run, "-o", out, "--dtype", "fp32")
    assert result.exit_code == 0, result.output
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }
    merged = AutoModelForCausalLM.from_pretrained(out)
    base_path = json.loads((quickstart_run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), quickstart_run / "adapter")
    ids = torch.randint(5, 250, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (merged(ids).logits - reference(ids).logits).abs().max().item()
    assert difference < 1e-4  # fp32: merging W + BA*scale only reorders the same float operations
    assert (
        AutoTokenizer.from_pretrained(out).chat_template
        == AutoTokenizer.from_pretrained(quickstart_run / "adapter").chat_template
    )

    again = invoke("merge", quickstart_run, "-o", out)
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_pissa_adapter_is_converted_to_plain_lora_on_the_original_base(tmp_path):
    # PiSSA rewrites the base weights at init; the saved adapter must still work on the original base.
    run = train_run(
        tmp_path / "pissa",
        ROOT / "recipes" / "quickstart.yaml",
        "lora.init=pissa",
        "quant.method=none",
        "lora.r=8",
        "lora.alpha=16",
        "train.max_steps=6",
    )
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["init_lora_weights"] is True  # rank 2r: the conversion happened
    result = invoke("eval", run, "--split", "validation", "-o", tmp_path / "e", "--json")
    assert result.exit_code == 0, result.output
    best = json.loads((run / "metrics.json").read_text())["best_eval_loss"]
    assert json.loads(result.stdout)["finetuned"]["loss"] == pytest.approx(best, rel=1e-3)


def test_pissa_on_a_4bit_base_is_refused(write_recipe, tmp_path):
    result = invoke("train", write_recipe({"lora": {"init": "olora"}}), "-o", tmp_path / "r")
    assert result.exit_code == 2 and "needs a 16/32-bit base" in result.output


def test_the_adapter_and_merged_model_carry_finetunes_card(quickstart_run, tmp_path):
    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    text = (quickstart_run / "adapter" / "README.md").read_text()
    assert text.startswith("---\nlibrary_name: peft\n") and "## Results" in text
    assert f"test loss {metrics['test_loss']:.4f}" in text and metrics["data_hash"] in text
    out = tmp_path / "merged"
    assert invoke("merge", quickstart_run, "-o", out).exit_code == 0
    assert "library_name: transformers" in (out / "README.md").read_text()


def test_push_selects_only_the_chosen_folder_and_fails_offline_in_one_line(quickstart_run, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(quickstart_run, run)
    (run / "adapter" / ".adapter-stale").mkdir()  # staging left by a kill: never uploaded
    dry = invoke("push", run, "--repo", "me/finance-adapter", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert plan["private"] is True and plan["uploaded"] is False and plan["folder"] == str(run / "adapter")
    assert plan["files"] == sorted(p.name for p in (run / "adapter").iterdir() if p.is_file())
    assert "README.md" in plan["files"] and not any("checkpoint" in f for f in plan["files"])

    merged = tmp_path / "merged"
    assert invoke("merge", run, "-o", merged).exit_code == 0
    (merged / "notes.log").write_text("not a model file")
    files = json.loads(invoke("push", run, "--repo", "me/m", "--merged", merged, "--dry-run", "--json").stdout)["files"]
    assert "model.safetensors" in files and "README.md" in files and "notes.log" not in files
    assert not any(name.startswith(".") for name in files)

    monkeypatch.setenv("HF_TOKEN", "hf_pushTestSecretValue42")
    cases = [
        (["--repo", "me/x"], "cannot be reached"),  # HF_HUB_OFFLINE=1 in the tests
        (["--repo", "not a repo!"], "not a Hub repository id"),
        (["--repo", "me/x", "--gguf"], "pass --merged DIR too"),
        (["--repo", "me/x", "--merged", run / "adapter"], "not a folder `finetune merge` wrote"),
        (["--repo", "me/x", "--merged", merged, "--gguf"], "no .gguf file"),
    ]
    for args, message in cases:
        result = invoke("push", run, *args)
        assert result.exit_code == 2 and message in result.stderr, (args, result.output)
        assert "hf_pushTestSecretValue42" not in result.output and "Traceback" not in result.output


def test_generate_and_chat_phrase_a_classification_run_as_training_did(sentiment_run):
    from finetune.run.inference import open_run, prompt_builder

    trained = open_run(sentiment_run)
    phrase = prompt_builder(trained)
    spec = trained.recipe.data.classification
    assert spec.template.split("{labels}")[0] in phrase("Shares jumped 12% after earnings.")
    assert phrase("Shares jumped 12% after earnings.").endswith("Shares jumped 12% after earnings.")
    assert "positive" in phrase("x") and "{labels}" not in phrase("x")
    result = invoke("generate", sentiment_run, "Shares jumped 12% after earnings.", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
