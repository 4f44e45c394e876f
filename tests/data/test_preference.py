"""Preference pairs: rows -> examples (every bad row names its line), and tokens with explicit masks."""

from __future__ import annotations

import pytest

from finetune.config import DataSection
from finetune.data.preference import encode_pair, encode_pairs
from finetune.data.read import check_objective, load_splits
from finetune.data.rows import detect_format, to_example
from finetune.data.tokenize import IGNORE, encode
from finetune.errors import UserError
from tests.conftest import write_jsonl

DATA = DataSection(path="pairs.jsonl")
ROW = {"prompt": "Should I buy gold?", "chosen": "It depends on your goals.", "rejected": "Yes, it only goes up!"}


def example(row=ROW, data=DATA):
    return to_example("pairs.jsonl:3", row, "preference", data, {})


def test_the_format_is_detected_from_prompt_chosen_rejected():
    assert detect_format(rows("prompt", "chosen", "rejected"), DATA.classification) == "preference"
    assert detect_format(rows("prompt", "completion"), DATA.classification) == "prompt_completion"
    with pytest.raises(UserError, match="no prompt column"):
        detect_format(rows("chosen", "rejected"), DATA.classification)


def test_a_text_row_becomes_the_prompt_the_chosen_answer_and_the_rejected_one():
    e = example()
    assert e.messages == [
        {"role": "user", "content": ROW["prompt"]},
        {"role": "assistant", "content": ROW["chosen"]},
    ]
    assert e.rejected == ROW["rejected"]


def test_chat_rows_keep_their_system_turn_and_answers_may_be_assistant_messages():
    row = {
        "prompt": [{"role": "system", "content": "Be careful."}, {"role": "user", "content": "Buy gold?"}],
        "chosen": [
            {"role": "assistant", "content": [{"type": "text", "text": "It "}, {"type": "text", "text": "depends."}]}
        ],
        "rejected": [{"role": "assistant", "content": "Yes!"}],
    }
    e = example(row)
    assert [m["role"] for m in e.messages] == ["system", "user", "assistant"]
    assert e.messages[-1]["content"] == "It depends."  # parts joined, never str() of the list
    assert e.rejected == "Yes!"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({**ROW, "rejected": None}, "missing or empty 'rejected'"),
        ({**ROW, "chosen": "   "}, "missing or empty 'chosen'"),
        ({**ROW, "prompt": ""}, "missing or empty 'prompt'"),
        ({**ROW, "rejected": " It depends on your goals. "}, "chosen and rejected are the same answer"),
        ({**ROW, "chosen": 42}, "chosen must be a string"),
        ({**ROW, "chosen": [{"role": "user", "content": "hi"}]}, "one assistant message"),
        (
            {**ROW, "prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            "roles out of order",
        ),
        ({**ROW, "prompt": []}, "empty list"),
    ],
)
def test_a_bad_row_is_refused_naming_its_line(row, message):
    with pytest.raises(UserError, match=message) as err:
        example(row)
    assert str(err.value).startswith("pairs.jsonl:3: ")


def test_the_objective_and_the_data_must_agree(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [ROW] * 10)
    splits = load_splits(DataSection(path=str(path)))
    assert splits.format == "preference"
    check_objective("dpo", splits.format, DataSection(path="pairs.jsonl"))
    with pytest.raises(UserError, match="set train.objective: dpo or orpo"):
        check_objective("sft", splits.format, DataSection(path="pairs.jsonl"))
    with pytest.raises(UserError, match="needs preference rows"):
        check_objective("orpo", "chat", DataSection(path="chat.jsonl"))


def test_both_sides_are_masked_to_their_answer_and_end_with_a_trained_eos(tiny_tokenizer):
    """What TRL's DPO collator trains: completion_mask over prompt + side marks exactly the answer and EOS."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    e = example()
    pair = encode_pair(e, tiny_tokenizer, 256)
    # the prompt is exactly what SFT would not train and what generation continues from
    sft = encode(e, tiny_tokenizer, 256, completion_only_loss=True)
    first_target = next(i for i, label in enumerate(sft.labels) if label != IGNORE)
    assert pair.prompt_ids == sft.input_ids[:first_target]
    assert tiny_tokenizer.decode(pair.prompt_ids).endswith("### Assistant:\n")
    batch = DataCollatorForPreference(pad_token_id=tiny_tokenizer.pad_token_id)(
        [{"prompt_ids": pair.prompt_ids, "chosen_ids": pair.chosen_ids, "rejected_ids": pair.rejected_ids}]
    )
    eos = tiny_tokenizer.eos_token_id
    for row, answer in enumerate((ROW["chosen"], ROW["rejected"])):
        ids, mask = batch["input_ids"][row], batch["completion_mask"][row]
        trained = ids[mask.bool()].tolist()
        assert trained[-1] == eos
        assert tiny_tokenizer.decode(trained[:-1]) == answer
        assert mask[: len(pair.prompt_ids)].sum() == 0  # no loss on the prompt


def test_a_long_prompt_is_cut_and_both_answers_are_kept(tiny_tokenizer):
    long = {**ROW, "prompt": "Annual report table: " + "revenue 100, costs 90; " * 40 + "Should I buy?"}
    e = example(long)
    full = encode_pair(e, tiny_tokenizer, 10_000)
    cut = encode_pair(e, tiny_tokenizer, 200)
    assert full.length > 200 >= cut.length
    assert cut.chosen_ids == full.chosen_ids and cut.rejected_ids == full.rejected_ids
    assert cut.prompt_tokens_cut > 0
    text = tiny_tokenizer.decode(cut.prompt_ids)
    assert "Annual report" in text and "Should I buy?" in text and "[...]" in text  # beginning and question kept


@pytest.mark.parametrize("mode", ["end", "start", "drop"])
def test_the_other_truncation_modes(tiny_tokenizer, mode):
    long = {**ROW, "prompt": "x" * 300}
    pair = encode_pair(example(long), tiny_tokenizer, 200, mode)
    if mode == "drop" or mode == "end":
        assert pair.dropped
    else:  # start: the prompt's first tokens go, the answers stay whole
        assert not pair.dropped and pair.length == 200
        assert tiny_tokenizer.decode(pair.chosen_ids[:-1]) == ROW["chosen"]


def test_a_split_reports_what_it_cut_and_dropped(tiny_tokenizer):
    rows = [example(), example({**ROW, "prompt": "y" * 400}), example({**ROW, "chosen": "z" * 400})]
    columns, report = encode_pairs(rows, tiny_tokenizer, 200)
    assert len(columns["prompt_ids"]) == 2  # the third answer alone does not fit
    assert (report.examples, report.prompts_cut, report.dropped_too_long) == (3, 1, 1)
    assert report.target_tokens == sum(
        len(c) + len(r) for c, r in zip(columns["chosen_ids"], columns["rejected_ids"], strict=True)
    )


def test_data_inspect_reports_sides_identical_and_near_identical_pairs(tmp_path, tiny_tokenizer):
    from finetune.data.inspect import inspect_data

    rows = [{**ROW, "prompt": f"Q{i}: should I buy gold?"} for i in range(6)]
    rows.append({**ROW, "rejected": ROW["chosen"]})  # identical: a bad row
    rows.append({**ROW, "prompt": "Q9", "rejected": "It depends on your goals!"})  # nearly identical
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    report = inspect_data(str(path), lambda model, data: (tiny_tokenizer, "tiny"), max_length=40)
    pairs = report["preference"]
    assert report["format"] == "preference" and report["rows"] == 7 and report["bad_rows"] == 1
    assert (pairs["identical_pairs"], pairs["near_identical_pairs"]) == (1, 1)
    assert pairs["near_identical_examples"] == ["pairs.jsonl:8"]
    chosen = len(tiny_tokenizer(ROW["chosen"], add_special_tokens=False)["input_ids"]) + 1  # + EOS
    assert pairs["lengths"]["chosen"]["max"] == chosen and pairs["unit"] == "tokens"
    assert pairs["pairs_cut_to_fit"] + pairs["pairs_dropped_too_long"] > 0  # max_length 40 is too short


def test_loss_png_gets_a_reward_panel_for_preference_runs(tmp_path):
    import matplotlib.image

    from finetune.run.run_dir import plot_loss

    sft = [{"step": 0, "eval_loss": 0.69}, {"step": 2, "loss": 0.6}, {"step": 2, "eval_loss": 0.5}]
    dpo = [*sft[:2], {**sft[2], "eval_rewards/accuracies": 0.8, "eval_rewards/margins": 0.3}]
    plot_loss(sft, 2, tmp_path / "sft.png")
    plot_loss(dpo, 2, tmp_path / "dpo.png")
    sft_height = matplotlib.image.imread(tmp_path / "sft.png").shape[0]
    dpo_height = matplotlib.image.imread(tmp_path / "dpo.png").shape[0]
    assert dpo_height > 1.5 * sft_height  # a second panel below the losses


def rows(*columns: str) -> list:
    return [("d.jsonl:1", dict.fromkeys(columns, "x"))]
