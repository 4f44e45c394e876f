"""data.truncation: long examples keep their answers (the prompt is cut, through the chat template)."""

from __future__ import annotations

import copy

import pytest

from finetune.data.read import Example
from finetune.data.tokenize import IGNORE, encode, encode_split
from finetune.data.truncate import CUT_MARKER

TABLE = "Revenue by segment, 2021-2023 (USD m)\n" + "".join(f"Segment {i}: {100 + i}.0\n" for i in range(60))
QUESTION = "Which segment grew the most?"
ANSWER = "Segment 59, by 159.0."


def trained_text(tokenizer, encoded) -> str:
    return tokenizer.decode([i for i, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE])


def chat(*turns: str, system: str | None = None) -> Example:
    roles = ["user", "assistant"] * len(turns)
    messages = [{"role": role, "content": text} for role, text in zip(roles, turns, strict=False)]
    return Example(messages=([{"role": "system", "content": system}] if system else []) + messages, source="d:1")


def test_the_middle_of_a_long_context_is_cut_and_the_answer_kept(tiny_tokenizer):
    example = chat(f"{TABLE}\n{QUESTION}", ANSWER, system="You are a careful analyst.")
    full = encode(example, tiny_tokenizer, 10_000, True)
    encoded = encode(example, tiny_tokenizer, 300, True)
    assert len(full.input_ids) > 300 >= len(encoded.input_ids) and encoded.truncated
    assert trained_text(tiny_tokenizer, encoded) == ANSWER + tiny_tokenizer.eos_token  # the whole answer, EOS
    text = tiny_tokenizer.decode(encoded.input_ids)
    assert text.startswith("<|begin_of_text|>You are a careful analyst.\n\n### User:\nRevenue by segment")
    assert CUT_MARKER in text and f"{QUESTION}\n\n### Assistant:\n{ANSWER}" in text  # beginning, end, structure
    assert encoded.prompt_tokens_cut == len(full.input_ids) - len(encoded.input_ids)


def test_earlier_exchanges_go_before_any_text_is_cut(tiny_tokenizer):
    example = chat("First question?", "A" * 120, "Second question?", "B" * 120, QUESTION, ANSWER)
    encoded = encode(example, tiny_tokenizer, 120, True)
    text = tiny_tokenizer.decode(encoded.input_ids)
    assert "First question" not in text and "Second question" not in text and CUT_MARKER not in text
    assert trained_text(tiny_tokenizer, encoded) == ANSWER + tiny_tokenizer.eos_token
    kept = encode(example, tiny_tokenizer, 300, True)  # room for two exchanges: only the first goes
    assert "Second question" in tiny_tokenizer.decode(kept.input_ids)
    assert "First question" not in tiny_tokenizer.decode(kept.input_ids)


def test_only_an_answer_that_cannot_fit_drops_the_example(tiny_tokenizer):
    examples = [chat(f"{TABLE}\n{QUESTION}", ANSWER), chat("Q?", "x" * 400), chat("Short?", "Yes.")]
    columns, report = encode_split(examples, tiny_tokenizer, 200, True)
    assert (report.examples, report.prompts_cut, report.dropped_too_long) == (3, 1, 1)
    assert len(columns["input_ids"]) == 2 and all(len(ids) <= 200 for ids in columns["input_ids"])
    assert report.prompt_tokens_cut > len(TABLE) - 200  # byte-level: a token per character


@pytest.mark.parametrize(
    ("truncation", "keeps_answer", "kept"),
    [("end", None, 0), ("start", True, 1), ("drop", None, 0), ("prompt", True, 1)],  # end: only prompt left
)
def test_each_truncation_choice(tiny_tokenizer, truncation, keeps_answer, kept):
    example = chat(f"{TABLE}\n{QUESTION}", "Segment 59." + " Growth was strongest there." * 4)
    columns, report = encode_split([example], tiny_tokenizer, 220, True, truncation)
    assert len(columns["input_ids"]) == kept and report.truncated == 1
    if kept:
        encoded = encode(example, tiny_tokenizer, 220, True, truncation)
        complete = trained_text(tiny_tokenizer, encoded).endswith(tiny_tokenizer.eos_token)
        assert complete is keeps_answer and len(encoded.input_ids) <= 220


def test_a_template_with_headers_keeps_them_whole(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|start|>{{ m['role'] }}<|end|>\n{{ m['content'] | trim }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|start|>assistant<|end|>\n{% endif %}"
    )
    example = chat(f"{TABLE}\n{QUESTION}", ANSWER, system="Cite the table.")
    encoded = encode(example, tokenizer, 260, True)
    text = tokenizer.decode(encoded.input_ids)
    assert len(encoded.input_ids) <= 260 and CUT_MARKER.strip() in text
    # (HF renders templates with trim_blocks: no newline after a block tag)
    assert text.startswith("<|begin_of_text|><|start|>system<|end|>\nCite the table.<|start|>user<|end|>\nRevenue")
    assert text.endswith(f"{QUESTION}<|start|>assistant<|end|>\n{ANSWER}<|end_of_text|>")
    assert len(encoded.input_ids) >= 250, "the cut removes about the excess, not much more"


def test_plain_text_is_cut_at_the_end(tiny_tokenizer):
    encoded = encode(Example(text="x" * 500), tiny_tokenizer, 100, True)
    assert len(encoded.input_ids) == 100 and encoded.truncated and not encoded.dropped


def test_a_prompt_for_generation_loses_its_earlier_exchanges_first(tiny_tokenizer):
    """A sample's or `generate`'s prompt ends with the user's turn: an earlier long answer is dropped whole
    (it was kept as "the last answer" and the prompt refused, which stopped training at its first samples)."""
    from finetune.run.generation import fitted_prompt_ids, prompt_ids

    question = {"role": "user", "content": "And the margin?"}
    messages = [{"role": "user", "content": "Revenue?"}, {"role": "assistant", "content": "x" * 2000}, question]
    ids = fitted_prompt_ids(tiny_tokenizer, messages, 200)
    assert ids == prompt_ids(tiny_tokenizer, [question])


def test_samples_never_stop_training_on_a_prompt_that_cannot_be_cut(tiny_model_path, tiny_tokenizer, tmp_path):
    """A system prompt longer than the budget is never cut: the sample keeps the prompt's last tokens."""
    from transformers import AutoModelForCausalLM

    from finetune.train.samples import SampleWriter

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    messages = [{"role": "system", "content": "s" * 3000}, {"role": "user", "content": "Why?"}]
    writer = SampleWriter([], tiny_tokenizer, tmp_path, max_new_tokens=400, max_length=384, trackers=[])
    assert isinstance(writer.generate(model, messages), str)
