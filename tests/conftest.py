"""Shared fixtures. Everything runs offline on the CPU; the tiny model is built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network, even by accident
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def finetune_home(tmp_path_factory) -> Path:
    """A private model cache so tests never depend on (or pollute) ~/.cache/finetune."""
    home = tmp_path_factory.mktemp("finetune-home")
    os.environ["FINETUNE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model_path(finetune_home) -> Path:
    from finetune.model.tiny import tiny_llama_path

    return tiny_llama_path()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    from finetune.data.tokenize import ensure_chat_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    ensure_chat_template(tokenizer, None)
    return tokenizer


def train_run(run: Path, recipe: Path, *overrides: str) -> Path:
    """`finetune train` through the CLI (in-process); fails the test with its output if it fails."""
    from typer.testing import CliRunner

    from finetune.cli import app

    args = ["train", str(recipe), "-o", str(run), "-q"] + [f"--set={o}" for o in overrides]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> Path:
    """The shipped quickstart, trained once per test session."""
    return train_run(tmp_path_factory.mktemp("runs") / "quick", ROOT / "recipes" / "quickstart.yaml")


@pytest.fixture(scope="session")
def sentiment_run(tmp_path_factory) -> Path:
    """The classification recipe, one epoch."""
    recipe = ROOT / "recipes" / "finance-sentiment-classification.yaml"
    return train_run(tmp_path_factory.mktemp("runs") / "sentiment", recipe, "train.epochs=1")


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe dict (deep-merged over a small valid one) to tmp_path/recipe.yaml."""

    def write(overrides: dict | None = None, text: str | None = None, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        if text is not None:
            path.write_text(text, encoding="utf-8")
            return path
        recipe = {
            "model": {"name": "builtin:tiny-llama"},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"path": str(ROOT / "data" / "finance_qa.jsonl"), "max_length": 256},
            "train": {
                "epochs": 1,
                "micro_batch_size": 8,
                "gradient_accumulation": 1,
                "learning_rate": 3e-3,
                "gradient_checkpointing": False,
            },
        }
        _merge(recipe, overrides or {})
        path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
        return path

    return write


def _merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# Tests that train a model or run the CLI end to end: `pytest -m "not slow"` leaves them out.
SLOW_FIXTURES = {"quickstart_run", "sentiment_run", "write_recipe"}


def pytest_collection_modifyitems(items):
    for item in items:
        in_e2e = "e2e" in item.path.parts
        if in_e2e or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
