"""prepare(): one path from a recipe to the tokenizer, the tokenized splits and the step plan."""

from __future__ import annotations

import math

from finetune.config import load_recipe
from finetune.data import batching
from finetune.data.read import load_splits
from finetune.train.plan import make_plan
from finetune.train.prepare import prepare


def test_plan_counts_optimizer_steps_from_the_split_sizes(write_recipe):
    recipe = load_recipe(write_recipe({"train": {"micro_batch_size": 4, "gradient_accumulation": 2, "epochs": 2}}))
    plan = make_plan(recipe, train_rows=33, validation_rows=5, test_rows=4, world_size=2)
    # 33 rows over 2 processes x 4 per micro-batch = 5 micro-batches per process, 2 per step -> 3 steps
    assert (plan.effective_batch, plan.steps_per_epoch, plan.total_steps) == (16, 3, 6)
    assert plan.eval_steps == 1  # auto: about five validations per epoch, at least one step apart


def test_prepare_tokenizes_every_split_and_plans_over_what_it_made(write_recipe):
    recipe = load_recipe(write_recipe())
    splits = load_splits(recipe.data)
    prepared = prepare(recipe, splits)
    assert prepared.batching == "grouped"  # sdpa on a CPU: no packing
    for name, rows in splits.sizes().items():  # rows whose answer max_length cut off entirely are dropped
        report = prepared.reports[name]
        assert len(prepared.datasets[name]) == rows - report.dropped_no_target - report.dropped_too_long
    trained = len(prepared.datasets["train"])  # the plan counts what is trained, after drops: exact epochs
    assert prepared.plan.train_rows == trained < len(splits.train)
    assert prepared.plan.steps_per_epoch == math.ceil(trained / recipe.train.micro_batch_size)
    ends = [ids[-1] for ids in prepared.datasets["train"]["input_ids"] if len(ids) < recipe.data.max_length]
    assert ends and all(end == prepared.tokenizer.eos_token_id for end in ends)  # untruncated rows end with EOS


def test_packed_runs_count_steps_over_packed_sequences(write_recipe, monkeypatch):
    monkeypatch.setattr(batching, "flash_attn_installed", lambda: True)  # packing is decided, not run, here
    recipe = load_recipe(
        write_recipe({"model": {"attn_implementation": "flash_attention_2"}, "data": {"max_length": 1024}})
    )
    splits = load_splits(recipe.data)
    prepared = prepare(recipe, splits)
    assert prepared.batching == "packed"
    packed = batching.packed_sequences(prepared.datasets["train"], recipe.data.max_length)
    assert prepared.plan.train_rows == packed < len(prepared.datasets["train"])
    sizes = (len(prepared.datasets["validation"]), len(prepared.datasets["test"]))
    assert (prepared.plan.validation_rows, prepared.plan.test_rows) == sizes


def test_text_that_spells_a_special_token_is_pointed_out(write_recipe, tmp_path, tiny_tokenizer):
    """The tiny tokenizer encodes "<|end_of_text|>" in an answer as its EOS: the run says so, naming a row."""
    import json

    eos = tiny_tokenizer.eos_token
    assert len(tiny_tokenizer("a " + eos + " b", add_special_tokens=False)["input_ids"]) < len("a " + eos + " b")
    rows = [{"instruction": f"q{i}", "output": f"answer {i} {eos} more"} for i in range(40)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = load_recipe(write_recipe({"data": {"path": str(data)}}))
    notes = [n for n in prepare(recipe, load_splits(recipe.data)).notes if "spell a special token" in n]
    assert [n.split(" (")[0] for n in notes] == [  # 80/10/10 of 40 rows, one answer each
        "32 train texts spell a special token of the tokenizer",
        "4 validation texts spell a special token of the tokenizer",
        "4 test texts spell a special token of the tokenizer",
    ]
    assert f"(e.g. {eos!r} at d.jsonl:" in notes[0] and notes[0].endswith("remove it from the data")
    clean = load_recipe(write_recipe())
    assert not [n for n in prepare(clean, load_splits(clean.data)).notes if "special token" in n]
