"""`finetune init`'s starter recipe: detected format, max_length from the lengths, the estimator's GPU size."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from finetune.config import load_recipe
from finetune.errors import UserError
from finetune.train.starter import CARD_SIZES_GB, DEFAULT_MODEL, starter_recipe
from finetune.vram import estimator
from finetune.vram.architectures import TINY_LLAMA_CONFIG, load_spec
from tests.conftest import write_jsonl

OFFLINE = "no tokenizer could be loaded from m (offline): lengths are in characters, not tokens"


def no_tokenizer(model, data):
    return None, OFFLINE


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_without_a_tokenizer_max_length_is_the_p99_of_chars_over_4_rounded_up(tmp_path):
    # 99 rows of 400 characters -> 100 tokens + 8 per message (user, assistant) = 116; one row of 4000 characters
    rows = [{"prompt": "p" * 200, "completion": "c" * 200}] * 99 + [{"prompt": "p" * 3800, "completion": "c" * 200}]
    (tmp_path / "data").mkdir()
    data = write_jsonl(tmp_path / "data" / "qa.jsonl", rows)
    recipe_file = tmp_path / "recipes" / "qa.yaml"
    starter = starter_recipe(data, recipe_file, DEFAULT_MODEL, no_tokenizer)
    assert (starter.format, starter.rows, starter.bad_rows) == ("prompt_completion", 100, 0)
    assert starter.max_length == 128  # p99 = 116 (the long row is the 100th), rounded up to a multiple of 64
    assert "p50 116, p90 116, p99 116, max 1016" in starter.text
    assert "keeps 99 of 100 examples whole" in starter.text
    assert "no tokenizer could be loaded from m (offline): the lengths are estimated" in starter.text
    raw = yaml.safe_load(starter.text)
    assert raw["data"] | {"split": None} == {
        "path": "../data/qa.jsonl",  # relative to the recipe's folder, as the loader reads it
        "format": "prompt_completion",
        "split": None,
        "max_length": 128,
        "truncation": "prompt",
    }
    assert raw["model"]["name"] == DEFAULT_MODEL and starter.text.startswith(f"# finetune train {recipe_file}\n")


def test_the_stated_gpu_is_the_smallest_card_the_estimate_fits(tmp_path):
    data = write_jsonl(tmp_path / "qa.jsonl", [{"instruction": "q" * 300, "output": "a" * 100}] * 20)
    recipe_file = write(tmp_path / "r.yaml", "")
    recipe_file.write_text(starter_recipe(data, recipe_file, DEFAULT_MODEL, no_tokenizer).text)
    recipe = load_recipe(recipe_file)  # the starter loads as a recipe (validate also reads its data: e2e test)
    need = estimator.estimate(load_spec(DEFAULT_MODEL), estimator.setup_from_recipe(recipe)).total_bytes
    card = next(gb for gb in CARD_SIZES_GB if gb * 1e9 >= need)
    text = recipe_file.read_text()
    assert f"{need / estimator.GiB:.2f} GiB at micro_batch_size 4 x max_length {recipe.data.max_length}" in text
    assert re.search(rf"one {card} GB\+ GPU", recipe.description) and f"so one {card} GB+ GPU" in text
    assert "Fits: T4 16GB," in text
    assert recipe.data.path == str(data) and recipe.model.name == DEFAULT_MODEL


def test_a_small_gpu_gets_advice_and_a_long_context_is_capped_at_the_models(tmp_path):
    rows = [{"text": "w" * 40_000}] * 10  # ~10k tokens each, past the tiny model's 2048 positions
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    starter = starter_recipe(data, tmp_path / "r.yaml", "builtin:tiny-llama", no_tokenizer)
    assert starter.format == "text" and starter.max_length == 2048
    assert "capped at the model's context 2048" in starter.text
    assert "tests the pipeline, not your data" in starter.text
    big = starter_recipe(data, tmp_path / "r.yaml", "meta-llama/Llama-3.1-8B", no_tokenizer)
    assert big.max_length == math.ceil((10_000 + 8) / 64) * 64  # within Llama 3.1's 131072 positions
    assert "To fit a T4 16GB: " in big.text  # the estimator's advice, when the smallest GPU is too small


def test_far_away_data_is_named_by_absolute_path_and_unknown_models_still_get_a_recipe(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    data = write_jsonl(tmp_path / "a" / "b" / "rows.jsonl", [chat] * 3)  # the fewest rows that split 80/10/10
    starter = starter_recipe(data, tmp_path / "x" / "y" / "r.yaml", "acme/unknown-model", no_tokenizer)
    assert yaml.safe_load(starter.text)["data"]["path"] == str(data.resolve())
    assert "GPU memory: no estimate for acme/unknown-model (unknown model id" in starter.text
    assert starter.format == "chat"


def test_bad_rows_are_counted_and_bad_files_are_one_line_errors(tmp_path):
    data = write(tmp_path / "d.jsonl", '{"text": "a"}\nnot json\n{"text": "b"}\n{"text": "c"}\n')
    starter = starter_recipe(data, tmp_path / "r.yaml", DEFAULT_MODEL, no_tokenizer)
    assert (starter.rows, starter.bad_rows) == (3, 1)
    assert "Bad rows: 1. `finetune train` stops at the first" in starter.text
    for path, message in [
        (tmp_path / "missing.jsonl", "data file not found"),
        (tmp_path, "is a directory"),
        (write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}]), "cannot detect the data format"),
        (write(tmp_path / "empty.jsonl", ""), "no rows"),
    ]:
        with pytest.raises(UserError, match=message):
            starter_recipe(path, tmp_path / "r.yaml", DEFAULT_MODEL, no_tokenizer)


def test_a_local_model_folder_is_written_relative_to_the_recipe_like_the_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "models" / "mine" / "config.json").write_text(json.dumps(TINY_LLAMA_CONFIG))
    write_jsonl(tmp_path / "rows.jsonl", [{"text": "hello"}] * 5)
    recipe_file = tmp_path / "recipes" / "r.yaml"
    starter = starter_recipe(Path("rows.jsonl"), Path("recipes/r.yaml"), "models/mine", no_tokenizer)
    assert yaml.safe_load(starter.text)["model"]["name"] == "../models/mine"
    assert "GPU memory (finetune vram-estimate): " in starter.text  # the spec was read from its config.json
    write(recipe_file, starter.text)
    assert load_recipe(recipe_file).model.name == str(tmp_path / "models" / "mine")
