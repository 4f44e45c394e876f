import pytest

from finetune.data.read import Example
from finetune.data.tokenize import IGNORE, check_special_tokens, encode, encode_split, render_pieces
from finetune.errors import UserError


def qa(question: str, answer: str, system: str | None = None) -> Example:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return Example(messages=messages)


def decode_trained(tokenizer, encoded) -> str:
    return tokenizer.decode([i for i, label in zip(encoded.input_ids, encoded.labels, strict=False) if label != IGNORE])


def test_only_the_answer_and_eos_are_trained(tiny_tokenizer):
    encoded = encode(qa("What is 2+2?", "4."), tiny_tokenizer, max_length=512, completion_only_loss=True)
    prompt = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    n_prompt = len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    # every prompt position is masked, every answer position (and the final EOS) keeps its id
    assert encoded.labels[:n_prompt] == [IGNORE] * n_prompt
    assert encoded.labels[n_prompt:] == encoded.input_ids[n_prompt:]
    assert decode_trained(tiny_tokenizer, encoded) == "4.<|end_of_text|>"
    assert encoded.input_ids[-1] == tiny_tokenizer.eos_token_id and encoded.labels[-1] == tiny_tokenizer.eos_token_id
    assert encoded.input_ids[0] == tiny_tokenizer.bos_token_id and not encoded.truncated


def test_training_tokens_equal_inference_prompt_plus_answer(tiny_tokenizer):
    example = qa("Define beta.", "Sensitivity to the market.", system="Be brief.")
    encoded = encode(example, tiny_tokenizer, 512, True)
    prompt = tiny_tokenizer.apply_chat_template(example.messages[:-1], tokenize=False, add_generation_prompt=True)
    prompt_ids = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert encoded.input_ids[: len(prompt_ids)] == prompt_ids


def test_multi_turn_chat_trains_every_assistant_turn(tiny_tokenizer):
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ]
    encoded = encode(Example(messages=messages), tiny_tokenizer, 512, True)
    assert decode_trained(tiny_tokenizer, encoded) == "A1<|end_of_text|>A2<|end_of_text|>"
    assert [text for text, trained in render_pieces(messages, tiny_tokenizer) if trained] == [
        "A1<|end_of_text|>",
        "A2<|end_of_text|>",
    ]


def test_completion_only_loss_off_trains_everything(tiny_tokenizer):
    encoded = encode(qa("Q", "A"), tiny_tokenizer, 512, completion_only_loss=False)
    assert encoded.labels == encoded.input_ids


def test_plain_text_gets_eos_appended_and_trained(tiny_tokenizer):
    encoded = encode(Example(text="Bonds pay coupons."), tiny_tokenizer, 512, True)
    assert tiny_tokenizer.decode(encoded.input_ids) == "Bonds pay coupons.<|end_of_text|>"
    assert encoded.labels == encoded.input_ids and encoded.eos_appended


def test_truncation_is_counted_and_prompt_only_rows_are_dropped(tiny_tokenizer):
    examples = [qa("short", "answer"), qa("x" * 300, "answer"), qa("q", "y" * 300)]
    columns, report = encode_split(
        examples, tiny_tokenizer, max_length=100, completion_only_loss=True, truncation="end"
    )
    assert report.examples == 3 and report.truncated == 2 and report.dropped_no_target == 1
    assert len(columns["input_ids"]) == 2
    assert all(len(ids) <= 100 for ids in columns["input_ids"])
    assert report.target_tokens == sum(t != IGNORE for labels in columns["labels"] for t in labels)


def test_template_without_eos_gets_eos_appended(tiny_tokenizer):
    tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    encoded = encode(qa("Q", "A"), tokenizer, 512, True)
    assert encoded.eos_appended
    assert decode_trained(tokenizer, encoded) == "A\n<|end_of_text|>"


def test_pad_equal_to_eos_is_reported(tiny_tokenizer):
    tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tokenizer.pad_token = tokenizer.eos_token
    notes = check_special_tokens(tokenizer)
    assert any("pad token = EOS" in note for note in notes)
    assert check_special_tokens(tiny_tokenizer) == []


# --------------------------------------------------------------------------------------------
# Empty answers and templates that leave the answer out


def template_tokenizer(tiny_tokenizer, template: str):
    tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tokenizer.chat_template = template
    return tokenizer


def test_empty_answers_are_trained_and_counted(tiny_tokenizer):
    examples = [qa("Q1", "A1"), qa("Q2", ""), qa("Q3", "  \n"), qa("Q4", "A4")]
    for i, example in enumerate(examples, start=1):
        example.source = f"data.jsonl:{i}"
    columns, report = encode_split(examples, tiny_tokenizer, 512, True)
    assert len(columns["input_ids"]) == 4 and report.examples == 4
    assert report.empty_answers == 2 and report.empty_answer_sources == ["data.jsonl:2", "data.jsonl:3"]
    trained = tiny_tokenizer.decode([t for t in columns["labels"][1] if t != IGNORE])
    assert trained == "<|end_of_text|>"  # what an empty answer teaches


def test_empty_answer_note(tiny_tokenizer):
    from finetune.train.prepare import truncation_notes

    examples = [qa(f"Q{i}", "") for i in range(3)] + [qa("Q4", "A4")]
    for i, example in enumerate(examples, start=7):
        example.source = f"data.jsonl:{i}"
    _, train = encode_split(examples, tiny_tokenizer, 512, True)
    _, validation = encode_split(examples[:1], tiny_tokenizer, 512, True)
    _, test = encode_split(examples[3:], tiny_tokenizer, 512, True)
    notes = truncation_notes({"train": train, "validation": validation, "test": test}, 512)
    assert notes == [
        "3 train examples have an empty assistant answer (e.g. data.jsonl:7); they teach the model to answer with "
        "nothing",
        "1 validation example has an empty assistant answer (e.g. data.jsonl:7); it rewards answering with nothing "
        "in the validation loss",
    ]


def test_prepare_notes_empty_answers(tmp_path, write_recipe):
    """The whole path: a file with some empty answers trains, with the note; no example is dropped."""
    from finetune.config import load_recipe
    from finetune.data.read import load_splits
    from finetune.train.prepare import prepare
    from tests.conftest import write_jsonl

    rows = [
        {"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "" if i < 3 else "A"}]}
        for i in range(12)
    ]
    paths = {
        "train": str(write_jsonl(tmp_path / "data.jsonl", rows)),
        "validation": str(write_jsonl(tmp_path / "v.jsonl", rows[3:5])),
    }
    recipe = load_recipe(write_recipe({"data": {"path": None, **paths}}))
    prepared = prepare(recipe, load_splits(recipe.data))
    assert prepared.reports["train"].empty_answers == 3
    assert "3 train examples have an empty assistant answer (e.g. data.jsonl:1)" in " ".join(prepared.notes)
    assert len(prepared.datasets["train"]) == 12


@pytest.mark.parametrize(
    "template",
    [
        # assistant messages dropped altogether
        "{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n{% endif %}{% endfor %}",
        # the assistant header and EOS rendered, the content not
        "{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
        "{% else %}Assistant: {{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}Assistant: {% endif %}",
    ],
)
def test_template_that_does_not_render_the_answer_is_refused(tiny_tokenizer, template):
    tokenizer = template_tokenizer(tiny_tokenizer, template)
    example = qa("What is a bond?", "A loan.")
    example.source = "data.jsonl:4"
    with pytest.raises(UserError) as err:
        encode(example, tokenizer, 512, True)
    assert str(err.value).startswith(
        "data.jsonl:4: the chat template does not render the assistant content (assistant turn 1)"
    )
    assert "data.chat_template" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="does not render the assistant content"):
        encode_split([qa("Q", "A")], tokenizer, 512, True)


def test_template_that_trims_the_answer_is_accepted(tiny_tokenizer):
    """Llama 3 style: content | trim. The answer is compared stripped, so this is not an error."""
    tokenizer = template_tokenizer(
        tiny_tokenizer,
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | trim }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}",
    )
    encoded = encode(qa(" Q ", "  A loan.\n"), tokenizer, 512, True)
    assert decode_trained(tokenizer, encoded) == "A loan.<|end_of_text|>"
    encoded = encode(qa("Q", ""), tokenizer, 512, True)  # an empty answer is rendered as nothing: fine
    assert decode_trained(tokenizer, encoded) == "<|end_of_text|>"
