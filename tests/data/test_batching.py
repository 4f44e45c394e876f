"""data.packing: which batching mode each recipe gets, and that the trainer configuration carries it."""

from __future__ import annotations

import pytest

from finetune.config import validate_recipe
from finetune.data import batching
from finetune.errors import UserError
from finetune.train.plan import Plan
from finetune.train.trainer import trainer_config


def recipe(packing: str = "auto", attn: str = "sdpa", **data):
    return validate_recipe(
        {
            "model": {"name": "builtin:tiny-llama", "attn_implementation": attn},
            "data": {"path": "rows.jsonl", "packing": packing, "max_length": 8, **data},
        }
    )


@pytest.mark.parametrize(
    ("packing", "attn", "flash", "mode"),
    [
        ("auto", "flash_attention_2", True, "packed"),
        ("auto", "flash_attention_2", False, "grouped"),  # requested but not installed
        ("auto", "sdpa", True, "grouped"),
        ("auto", "eager", True, "grouped"),
        ("on", "flash_attention_2", True, "packed"),
        ("off", "flash_attention_2", True, "padded"),
        ("off", "sdpa", False, "padded"),
        ("off", "eager", False, "padded"),
    ],
)
def test_mode_for_each_combination(packing, attn, flash, mode):
    assert batching.batching_mode(recipe(packing, attn), flash_available=flash) == mode


@pytest.mark.parametrize(("attn", "flash"), [("sdpa", True), ("eager", True), ("flash_attention_2", False)])
def test_packing_on_without_a_varlen_kernel_is_a_user_error(attn, flash):
    with pytest.raises(UserError) as err:
        batching.batching_mode(recipe("on", attn), flash_available=flash)
    message = str(err.value)
    assert "data.packing" in message and "model.attn_implementation" in message and "\n" not in message


def test_packing_defaults_to_auto_and_rejects_other_values():
    assert recipe().data.packing == "auto"
    with pytest.raises(UserError, match="data.packing"):
        recipe("yes")


def _config(r, tmp_path):
    import torch

    plan = Plan(
        train_rows=32,
        validation_rows=4,
        test_rows=4,
        world_size=1,
        effective_batch=16,
        steps_per_epoch=2,
        total_steps=6,
        eval_steps=1,
    )
    return trainer_config(r, plan, tmp_path, torch.float32, torch.device("cpu"))


def test_sft_config_carries_the_mode(tmp_path, monkeypatch):
    grouped = _config(recipe("auto", "sdpa"), tmp_path)
    assert grouped.train_sampling_strategy == "batch_rebalance" and not grouped.packing and not grouped.padding_free
    padded = _config(recipe("off"), tmp_path)
    assert padded.train_sampling_strategy == "random" and not padded.packing and not padded.padding_free
    monkeypatch.setattr(batching, "flash_attn_installed", lambda: True)
    packed = _config(recipe("auto", "flash_attention_2"), tmp_path)
    assert packed.packing and packed.padding_free and packed.packing_strategy == "bfd"
    assert packed.max_length == 8  # the packed sequence length is data.max_length
    with pytest.raises(UserError):
        _config(recipe("on", "sdpa"), tmp_path)


def test_packed_sequences_are_counted_as_trl_packs_them():
    from datasets import Dataset

    # lengths 5,5,3,3,2,2 in sequences of 8 tokens: best fit gives [5,3] [5,3] [2,2]
    lengths = [5, 5, 3, 3, 2, 2]
    rows = Dataset.from_dict({"input_ids": [[1] * n for n in lengths], "labels": [[1] * n for n in lengths]})
    assert batching.packed_sequences(rows, 8) == 3


def test_grouped_mode_reaches_the_rebalancing_sampler(tiny_model_path, tiny_tokenizer, tmp_path):
    """Guards the transformers option name: the trainer really builds a BatchRebalanceSampler."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from transformers.trainer_pt_utils import BatchRebalanceSampler
    from trl import SFTTrainer

    rows = Dataset.from_dict(
        {
            "input_ids": [[5, 6, 7][: 1 + i % 3] for i in range(16)],
            "labels": [[5, 6, 7][: 1 + i % 3] for i in range(16)],
        }
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        args=_config(recipe("auto", "sdpa"), tmp_path),
        train_dataset=rows,
        eval_dataset=rows,
        processing_class=tiny_tokenizer,
    )
    assert isinstance(trainer._get_train_sampler(), BatchRebalanceSampler)
