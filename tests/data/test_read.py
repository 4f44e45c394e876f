import json
import re
from pathlib import Path

import pytest

from finetune.config import DataSection
from finetune.data.read import Example, load_splits, read_rows, split_examples
from finetune.errors import UserError
from tests.conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def section(path, **kwargs) -> DataSection:
    return DataSection(path=str(path), **kwargs)


@pytest.mark.parametrize(
    "rows, fmt",
    [
        ([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}], "chat"),
        ([{"instruction": "q", "input": "ctx", "output": "a"}], "alpaca"),
        ([{"prompt": "q", "completion": "a"}], "prompt_completion"),
        ([{"text": "headline", "label": "positive"}], "classification"),
        ([{"text": "just text"}], "text"),
    ],
)
def test_format_detection_and_conversion(tmp_path, rows, fmt):
    path = write_jsonl(tmp_path / "d.jsonl", rows * 10)
    splits = load_splits(section(path))
    assert splits.format == fmt
    example = splits.train[0]
    if fmt == "text":
        assert example.text == "just text" and example.messages is None
    else:
        assert example.messages[-1]["role"] == "assistant"
        assert example.messages[0]["role"] == "user"
    if fmt == "alpaca":
        assert example.messages[0]["content"] == "q\n\nctx"
    if fmt == "classification":
        assert example.label == "positive" and "headline" in example.messages[0]["content"]
        assert splits.labels == ["positive"]


def test_classification_label_mapping_and_unknown_label(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(10)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    data = section(path, classification={"labels": {0: "negative", 1: "positive"}})
    splits = load_splits(data)
    assert {e.label for e in splits.train + splits.validation + splits.test} == {"negative", "positive"}
    write_jsonl(path, rows + [{"text": "x", "label": 7}])
    with pytest.raises(UserError, match=r"d.jsonl:11: label '7' is not in the label set"):
        load_splits(data)


def test_split_is_deterministic_disjoint_and_complete():
    examples = [Example(text=str(i)) for i in range(100)]
    a = split_examples(examples, 0.1, 0.2, seed=7)
    b = split_examples(examples, 0.1, 0.2, seed=7)
    c = split_examples(examples, 0.1, 0.2, seed=8)
    assert [[e.text for e in part] for part in a] == [[e.text for e in part] for part in b]
    assert [e.text for e in a[2]] != [e.text for e in c[2]]
    train, val, test = ({e.text for e in part} for part in a)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    assert not (train & val or train & test or val & test)
    assert train | val | test == {str(i) for i in range(100)}


def test_small_file_keeps_a_row_in_each_split():
    train, val, test = split_examples([Example(text=str(i)) for i in range(5)], 0.1, 0.1, seed=0)
    assert (len(train), len(val), len(test)) == (3, 1, 1)


def test_explicit_split_files(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": "a"} for i in range(4)]
    data = DataSection(
        train=str(write_jsonl(tmp_path / "t.jsonl", rows)),
        validation=str(write_jsonl(tmp_path / "v.jsonl", rows[:2])),
    )
    splits = load_splits(data)
    assert splits.sizes() == {"train": 4, "validation": 2, "test": 0}


def test_data_hash_changes_with_content(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": str(i)} for i in range(20)])
    first = load_splits(section(path)).data_hash
    assert load_splits(section(path)).data_hash == first
    write_jsonl(path, [{"text": str(i)} for i in range(21)])
    assert load_splits(section(path)).data_hash != first


def test_readers_csv_json_parquet_and_bom(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes('\ufeffprompt,completion\n"What is 1,000 + 1?","1,001"\n'.encode("utf-8"))
    ((location, row),) = read_rows(str(csv_path))
    assert row == {"prompt": "What is 1,000 + 1?", "completion": "1,001"} and location == "d.csv:2"

    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps({"data": [{"text": "a"}, {"text": "b"}]}))
    assert [r["text"] for _, r in read_rows(str(json_path))] == ["a", "b"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet_path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["x", "y"]}), parquet_path)
    assert [r["text"] for _, r in read_rows(str(parquet_path))] == ["x", "y"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "no rows; the file is empty"),
        (b'{"text": "a"}\n{"text": broken}\n', r"d.jsonl:2: invalid JSON"),
        (b'["a"]\n', r"d.jsonl:1: expected a JSON object"),
        (b"\x00\x01\x02binary", "looks like a binary file"),
        (b'{"text": "caf\xe9"}\n', r"d.jsonl:1: not valid UTF-8"),
        (b'{"question": "q", "answer": "a"}\n', r"cannot detect the data format from columns \['answer', 'question'\]"),
        (b'{"messages": [{"role": "user", "content": "q"}]}\n', "chat has no assistant turn"),
        (
            b'{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}\n',
            "roles out of order at turn 1",
        ),
        (b'{"messages": [{"role": "bot", "content": "a"}]}\n', "has role 'bot'"),
        (b'{"instruction": "q", "output": ""}\n', r"d.jsonl:1: missing or empty 'output' for format alpaca"),
    ],
)
def test_bad_data_is_a_one_line_error_naming_the_place(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        load_splits(section(path))
    assert "\n" not in str(err.value)


def test_csv_missing_column_names_what_was_found(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,output\nq,\n")
    with pytest.raises(UserError, match=r"d.csv:2: missing or empty 'output'.*columns found: instruction, output"):
        load_splits(section(path))


def test_missing_file_and_empty_validation_split(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        load_splits(section(tmp_path / "missing.jsonl"))
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(UserError, match="validation split is empty"):
        load_splits(section(path, split={"validation": 0.0, "test": 0.0}))


def test_shipped_finance_sample_is_valid():
    splits = load_splits(section(ROOT / "data" / "finance_qa.jsonl"))
    assert splits.format == "alpaca"
    assert sum(splits.sizes().values()) >= 300


# --------------------------------------------------------------------------------------------
# Values that are not text: refused with the line and the field, never trained as str(value)


def chat(answer, question="q") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_chat_content_parts_are_joined_like_openai(tmp_path):
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}]
    path = write_jsonl(tmp_path / "d.jsonl", [chat(parts, question=[{"type": "text", "text": "Hi"}])] * 10)
    example = load_splits(section(path)).train[0]
    assert example.messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello world"}]


@pytest.mark.parametrize(
    "content, message",
    [
        ([{"type": "image_url", "image_url": {"url": "https://x/a.png"}}], "has a 'image_url' part"),
        ([{"type": "text", "text": "See "}, {"type": "image", "image": "a.png"}], "has a 'image' part"),
        ([{"type": "input_audio", "input_audio": {"data": "..."}}], "has a 'input_audio' part"),
        ([{"type": "file", "file": {"file_id": "f"}}], "has a 'file' part"),
    ],
)
def test_chat_content_non_text_parts_are_refused(tmp_path, content, message):
    path = write_jsonl(tmp_path / "data.jsonl", [chat("a")] * 2 + [chat(content)] + [chat("a")] * 5)
    with pytest.raises(UserError) as err:
        load_splits(section(path))
    assert str(err.value) == (
        f"data.jsonl:3: messages[1].content {message}; finetune trains on text only: remove non-text parts"
    )


@pytest.mark.parametrize(
    "bad, message",
    [
        (chat(42), r"messages\[1\].content must be a string or a list of text parts \(got int\)"),
        (chat(None), r"messages\[1\].content must be a string or a list of text parts \(got null\)"),
        (chat({"text": "a"}), r"messages\[1\].content must be a string or a list of text parts \(got dict\)"),
        (chat(True), r"messages\[1\].content must be a string or a list of text parts \(got bool\)"),
        (chat(float("nan")), r"messages\[1\].content must be a string or a list of text parts \(got NaN\)"),
        (chat(3.5, question=7), r"messages\[0\].content must be a string .*\(got int\)"),
        (chat([{"type": "text", "text": 5}]), r"messages\[1\].content\[0\].text must be a string \(got int\)"),
        (chat([{"type": "text"}]), r"messages\[1\].content\[0\].text must be a string \(got null\)"),
        (chat(["plain string"]), r"messages\[1\].content\[0\] must be a content part like"),
        ({"instruction": "q", "input": "", "output": 5}, r"output must be a string \(got int\)"),
        ({"instruction": ["q"], "input": "", "output": "a"}, r"instruction must be a string \(got list\)"),
        ({"instruction": "q", "input": 7, "output": "a"}, r"input must be a string or null \(got int\)"),
        ({"instruction": "q", "input": {"k": 1}, "output": "a"}, r"input must be a string or null \(got dict\)"),
        ({"prompt": "q", "completion": 1.5}, r"completion must be a string \(got float\)"),
        ({"prompt": False, "completion": "a"}, r"prompt must be a string \(got bool\)"),
        ({"text": 12, "label": "up"}, r"text must be a string \(got int\)"),
        ({"text": "t", "label": {"name": "up"}}, r"label must be a label name or a number \(got dict\)"),
        ({"text": "t", "label": ["up"]}, r"label must be a label name or a number \(got list\)"),
        ({"text": "t", "label": float("nan")}, r"label must be a label name or a number \(got NaN\)"),
        ({"text": {"body": "x"}}, r"text must be a string \(got dict\)"),
        ({"text": float("nan")}, r"text must be a string \(got NaN\)"),
    ],
)
def test_non_string_values_are_refused_with_line_and_field(tmp_path, bad, message):
    good = {key: "ok" for key in bad}
    if "messages" in bad:
        good = chat("a")
    if "label" in bad:
        good["label"] = "up"
    path = write_jsonl(tmp_path / "data.jsonl", [good] * 2 + [bad] + [good] * 5)
    with pytest.raises(UserError, match=r"^data\.jsonl:3: " + message) as err:
        load_splits(section(path))
    assert "\n" not in str(err.value)


def test_alpaca_input_stays_optional_when_missing_null_or_blank(tmp_path):
    rows = [
        {"instruction": "q0", "output": "a"},
        {"instruction": "q1", "input": None, "output": "a"},
        {"instruction": "q2", "input": "  ", "output": "a"},
        {"instruction": "q3", "input": "ctx", "output": "a"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows * 3)
    splits = load_splits(section(path, split={"validation": 0.1, "test": 0.0}))
    prompts = {e.messages[0]["content"] for e in splits.train + splits.validation}
    assert prompts == {"q0", "q1", "q2", "q3\n\nctx"}


def test_number_and_bool_labels_keep_working(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(10)]
    splits = load_splits(section(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert splits.labels == ["0", "1"]
    rows = [{"text": f"t{i}", "label": i % 2 == 0} for i in range(10)]
    data = section(write_jsonl(tmp_path / "b.jsonl", rows), classification={"labels": {True: "yes", False: "no"}})
    assert sorted(load_splits(data).labels) == ["no", "yes"]


def test_unusable_labels_are_not_made_into_label_names(tmp_path):
    """The automatic label set skips a dict label (its row is refused) instead of naming a label str(dict)."""
    from finetune.config import ClassificationSection
    from finetune.data.read import label_mapping

    rows = [("d:1", {"text": "a", "label": "up"}), ("d:2", {"text": "b", "label": {"x": 1}}), ("d:3", {"label": " "})]
    assert label_mapping(rows, ClassificationSection()) == {"up": "up"}


def test_csv_duplicate_header_is_refused(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label,text\nfirst text,up,second text\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"d\.csv:1: the header has the column 'text' more than once") as err:
        read_rows(str(path))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="more than once"):
        load_splits(section(path))


# --------------------------------------------------------------------------------------------
# Empty answers: a split with nothing else would only train (or score) EOS


@pytest.mark.parametrize("empty", ["", "  \n", [], [{"type": "text", "text": " "}]])
def test_a_split_whose_every_answer_is_empty_is_refused(tmp_path, empty):
    data = DataSection(
        train=str(write_jsonl(tmp_path / "t.jsonl", [chat(empty, question=f"q{i}") for i in range(4)])),
        validation=str(write_jsonl(tmp_path / "v.jsonl", [chat("a")] * 2)),
    )
    with pytest.raises(UserError) as err:
        load_splits(data)
    assert str(err.value).startswith("t.jsonl:1: every assistant answer in the train split (4 examples) is empty")
    assert "end-of-sequence" in str(err.value) and "\n" not in str(err.value)


def test_empty_validation_answers_are_refused_too_and_some_empty_answers_load(tmp_path):
    train = [chat("a" if i % 2 else "", question=f"q{i}") for i in range(4)]
    data = DataSection(
        train=str(write_jsonl(tmp_path / "t.jsonl", train)),
        validation=str(write_jsonl(tmp_path / "v.jsonl", [chat("")] * 2)),
    )
    with pytest.raises(UserError, match=r"v\.jsonl:1: every assistant answer in the validation split"):
        load_splits(data)
    write_jsonl(tmp_path / "v.jsonl", [chat(""), chat("a")])
    splits = load_splits(data)  # some empty answers: trained, and counted when tokenized
    assert [m["content"] for e in splits.train for m in e.messages if m["role"] == "assistant"] == ["", "a", "", "a"]


def alpaca_rows(count: int = 10) -> list[dict]:
    return [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(count)]


def test_line_breaks_inside_values_keep_rows_whole_in_training_and_in_inspect(tmp_path):
    """U+2028, U+0085 and form feeds are valid raw inside a JSON string or a CSV field: str.splitlines tore such
    rows in two (train refused valid JSONL, and trained half a CSV row as a row of its own)."""
    from finetune.data.inspect import read_tolerant

    odd = "line one\u2028line two\x85three\x0cfour"
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps(r, ensure_ascii=False) + "\n" for r in [{**alpaca_rows(1)[0], "output": odd}] + alpaca_rows(9)
        )
    )
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("instruction,output\n" + f"q,{odd}\n" + "".join(f"q{i},a{i}\n" for i in range(9)))
    cr_only = tmp_path / "cr.jsonl"
    cr_only.write_text("".join(json.dumps(r) + "\r" for r in alpaca_rows()))
    for path in (jsonl, csv_file, cr_only):
        rows = read_rows(str(path))
        assert len(rows) == 10, path
        assert odd in {row["output"] for _, row in rows} or path == cr_only
        assert len(read_tolerant(str(path), section(path))[0]) == 10, path  # `data inspect` reads the same


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"instruction": "q", "output": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ('{"instruction": "q", "output": "a", "n": ' + "9" * 5000 + "}", "Exceeds the limit (4300 digits)"),
    ],
)
def test_json_that_python_cannot_hold_is_a_user_error_naming_the_line(tmp_path, line, problem):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(3)) + line + "\n")
    with pytest.raises(UserError, match=rf"d\.jsonl:4: invalid JSON \({re.escape(problem)}"):
        read_rows(str(path))


def test_a_csv_field_as_long_as_a_report_is_read(tmp_path):
    path = tmp_path / "d.csv"
    report = "revenue 1,234; " * 20_000  # 300,000 characters, over csv's default 131,072
    path.write_text("instruction,output\n" + f'"{report}",a\n' + "".join(f"q{i},a{i}\n" for i in range(9)))
    assert read_rows(str(path))[0][1]["instruction"] == report


def test_the_format_error_names_the_file_and_a_blank_first_row_does_not_decide(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}] * 10)
    with pytest.raises(
        UserError, match=r"^d\.jsonl:1: cannot detect the data format from columns \['answer', 'question'\]"
    ):
        load_splits(section(path))
    path = write_jsonl(tmp_path / "e.jsonl", [{}] + alpaca_rows())
    with pytest.raises(UserError, match=r"e\.jsonl:1: "):  # the blank row is an error of its own, not "columns []"
        load_splits(section(path))
