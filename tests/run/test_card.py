"""finetune's model card: Hub metadata and what happened, from the recipe and metrics.json."""

from __future__ import annotations

import json

import yaml

from finetune.config import validate_recipe
from finetune.run.card import render

METRICS = {
    "splits": {"train": 320, "validation": 40, "test": 40},
    "data_format": "alpaca",
    "data_hash": "abc123",
    "recipe_hash": "def456",
    "tokenization": {"train": {"prompts_cut": 7, "prompt_tokens_cut": 910, "dropped_too_long": 2, "truncated": 9}},
    "base_eval_loss": 2.5,
    "best_eval_loss": 1.25,
    "best_step": 40,
    "improved": True,
    "test_loss": 1.3,
    "test_perplexity": 3.67,
    "global_step": 60,
    "epochs_completed": 1.5,
    "stopped_early": True,
    "effective_batch_size": 16,
    "timings": {"total_s": 812.4},
    "device": "cuda:0",
    "world_size": 1,
    "backend": "hf",
    "compute_dtype": "bfloat16",
    "versions": {"finetune": "0.1.0", "peft": "0.21.2"},
}


def recipe(**data):
    return validate_recipe(
        {"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"}, "data": {"path": "acme/finance-qa", **data}}
    )


def test_the_card_has_hub_metadata_and_says_what_happened(tmp_path):
    text = render(tmp_path / "my-run", recipe(), METRICS)
    header = yaml.safe_load(text.split("---")[1])
    assert header["base_model"] == "meta-llama/Llama-3.2-1B-Instruct" and header["library_name"] == "peft"
    assert header["datasets"] == ["acme/finance-qa"] and "finetune" in header["tags"]
    for expected in (
        "# my-run",
        "train 320, validation 40, test 40",
        "data hash: `abc123`",
        "7 prompts cut to fit max_length 1024 (910 tokens), 2 rows dropped",
        "LoRA r=16, alpha=32",
        "validation loss: 2.5000 (base) -> 1.2500 at step 40",
        "test loss 1.3000, perplexity 3.67",
        "60 steps, 1.5 epochs, stopped early",
        "812 s on cuda:0",
        "peft 0.21.2",
        "AutoPeftModelForCausalLM.from_pretrained",
        "## Intended use and limits",
    ):
        assert expected in text, expected


def test_a_merged_model_and_a_run_that_did_not_improve(tmp_path):
    text = render(tmp_path / "run", recipe(), {**METRICS, "improved": False}, merged=True)
    assert yaml.safe_load(text.split("---")[1])["library_name"] == "transformers"
    assert "**not improved**" in text and "AutoModelForCausalLM.from_pretrained" in text


def test_eval_results_join_the_card_once_eval_ran(tmp_path):
    (tmp_path / "eval").mkdir()
    scores = {"source": "test split", "finetuned": {"loss": 1.1, "perplexity": 3.0}, "base": {"loss": 2.0}}
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(scores))
    text = render(tmp_path, recipe(), METRICS)
    assert "`finetune eval` on test split: loss 1.1000 (base 2.0000)" in text
