"""`finetune data inspect` on real files written to tmp_path: formats, bad rows, duplicates, lengths, leakage."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from finetune.cli import app
from finetune.data.inspect import exact_leaks
from finetune.data.read import Example
from tests.conftest import write_jsonl

runner = CliRunner()

# Long enough (> 20 words) that one edited word keeps the word 3-gram Jaccard above 0.8.
PASSAGE = (
    "The quarterly report shows that operating margin improved by two points while revenue grew "
    "seven percent, driven by higher fee income, lower funding costs and a stable loan book across regions"
)


def inspect(*args) -> dict:
    result = runner.invoke(app, ["data", "inspect", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # exactly one JSON object, nothing else on stdout


def qa(n: int, prefix: str = "question") -> list[dict]:
    return [
        {"prompt": f"{prefix} {i}: what is the fee on account {i}?", "completion": f"It is {i} dollars."}
        for i in range(n)
    ]


def test_csv_with_quoted_commas_and_header(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(
        'prompt,completion\n"Revenue was 1,200, costs 900. Profit?","300, i.e. 25%"\n"Say ""hi""",hello\n',
        encoding="utf-8",
    )
    report = inspect(path)
    assert (report["rows"], report["format"], report["columns"], report["bad_rows"]) == (
        2,
        "prompt_completion",
        ["prompt", "completion"],
        0,
    )


def test_jsonl_broken_line_is_reported_and_the_rest_analysed(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(row) for row in qa(5)]
    lines.insert(2, '{"prompt": "unterminated')  # line 3
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = inspect(path)
    assert report["rows"] == 5 and report["malformed_rows"] == 1
    assert report["problems"][0]["line"] == 3 and "invalid JSON" in report["problems"][0]["message"]
    assert report["token_lengths"]["unit"] == "characters" and report["token_lengths"]["max"] > 0


def test_json_array_parquet_and_bom(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = qa(4)
    (tmp_path / "a.json").write_text(json.dumps(rows), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    (tmp_path / "bom.jsonl").write_text("\ufeff" + "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "bom.csv").write_text("\ufeffprompt,completion\nq1,a1\nq2,a2\n", encoding="utf-8")
    for name, expected_rows in [("a.json", 4), ("a.parquet", 4), ("bom.jsonl", 4), ("bom.csv", 2)]:
        report = inspect(tmp_path / name)
        assert (report["rows"], report["format"], report["columns"]) == (
            expected_rows,
            "prompt_completion",
            ["prompt", "completion"],
        ), name


def test_empty_and_malformed_rows_with_line_numbers(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("prompt,completion\nq1,a1\n,\nq3,\nq4,a4,extra\nq5,a5\n", encoding="utf-8")
    report = inspect(path)
    problems = {p["line"]: p["kind"] for p in report["problems"]}
    assert report["rows"] == 2 and problems == {3: "empty", 4: "malformed", 5: "malformed"}


def test_exact_duplicates_ignore_case_and_whitespace(tmp_path):
    rows = qa(3) + [
        {"prompt": "QUESTION 0:  what is the fee on account 0?", "completion": "it is 0 dollars."},
        {"prompt": "question 1: what is the fee\non account 1?", "completion": "It is 1 dollars. "},
    ]
    report = inspect(write_jsonl(tmp_path / "d.jsonl", rows))
    assert report["duplicates"] == 2
    assert sorted(g["count"] for g in report["duplicate_groups"]) == [2, 2]


def test_label_distribution_and_imbalance(tmp_path):
    rows = [{"text": f"headline {i}", "label": "positive" if i < 6 else "negative"} for i in range(8)]
    report = inspect(write_jsonl(tmp_path / "s.jsonl", rows))
    assert report["format"] == "classification"
    assert report["labels"] == {"negative": 2, "positive": 6} and report["imbalance"] == 3.0


def test_near_duplicates_between_two_files(tmp_path):
    train = [
        {"text": PASSAGE},
        {"text": "A completely different row about mortgage rates and the housing market in spring."},
    ]
    evaluation = [
        {"text": PASSAGE.replace("seven", "eight")},  # one word edited: near duplicate
        {
            "text": "a completely different row about MORTGAGE rates and the housing market in spring."
        },  # exact after normalising
        {"text": "Unrelated: central banks held rates steady as inflation cooled."},
    ]
    report = inspect(
        write_jsonl(tmp_path / "train.jsonl", train), "--against", write_jsonl(tmp_path / "eval.jsonl", evaluation)
    )
    assert report["leaked"] == 1 and report["near_duplicates"] == 1
    worst = report["leakage"]["worst"]
    assert [m["exact"] for m in worst] == [True, False] and 0.8 <= worst[1]["similarity"] < 1
    assert worst[1]["evaluation"]["location"] == "eval.jsonl:1" and report["leakage"]["threshold"] == 0.8


def test_near_duplicates_within_one_file_with_their_line_numbers(tmp_path):
    rows = [
        {"text": PASSAGE},  # line 1
        {"text": "Unrelated: central banks held rates steady as inflation cooled across most large economies."},
        {"text": "A completely different row about mortgage rates and the housing market in spring and summer."},
        {"text": PASSAGE.replace("seven", "eight")},  # line 4: one word changed, a near duplicate of line 1
        {"text": PASSAGE.upper()},  # line 5: an exact copy of line 1, counted as such and not again as near
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    report = inspect(path)
    assert report["duplicates"] == 1 and report["near_duplicate_rows"] == 1
    (pair,) = report["near_duplicate_pairs"]  # the distinct rows 2 and 3 pair with nothing
    assert (pair["first"]["line"], pair["second"]["line"]) == (1, 4) and 0.8 <= pair["similarity"] < 1
    assert (pair["first"]["location"], pair["second"]["location"]) == ("d.jsonl:1", "d.jsonl:4")
    assert pair["second"]["text"].startswith("The quarterly report")
    # the console report lists the pair; --strict gates on bad rows only, as for exact duplicates
    result = runner.invoke(app, ["data", "inspect", str(path), "--strict"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "1 rows nearly repeat an earlier row" in result.stdout and "d.jsonl:4 ~ d.jsonl:1" in result.stdout


def test_distinct_rows_have_no_near_duplicates(tmp_path):
    rows = [
        {"text": PASSAGE},
        {"text": "Unrelated: central banks held rates steady as inflation cooled across most large economies."},
        {"text": " ".join(reversed(PASSAGE.split()))},  # the same words in another order: other shingles
        {"text": PASSAGE.replace("seven percent", "a record")},  # two words out, two in: Jaccard below 0.8
    ]
    report = inspect(write_jsonl(tmp_path / "d.jsonl", rows))
    assert (report["duplicates"], report["near_duplicate_rows"], report["near_duplicate_pairs"]) == (0, 0, [])


def test_recipe_reports_a_test_row_copied_from_train(tmp_path, write_recipe):
    train = qa(12)
    test = [qa(12)[4], *qa(2, prefix="held-out")]
    paths = {
        name: str(write_jsonl(tmp_path / f"{name}.jsonl", rows))
        for name, rows in [("train", train), ("validation", qa(3, prefix="val")), ("test", test)]
    }
    recipe = write_recipe({"data": {"path": None, **paths, "max_length": 64}})
    report = inspect(recipe)
    assert report["kind"] == "recipe" and report["splits"] == {"train": 12, "validation": 3, "test": 3}
    assert report["leaked"] == 1
    assert {(p["train"], p["evaluation"]): p["exact"] for p in report["leakage"]["pairs"]}[("train", "test")] == 1
    assert report["token_lengths"]["unit"] == "tokens" and report["tokenizer"] == "builtin:tiny-llama"


def test_exact_leaks_for_training():
    def example(prompt, answer):
        return Example(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer},
            ]
        )

    train = [example("What is EBITDA?", "Earnings before interest..."), Example(text="Plain text row.")]
    evaluation = [
        example("what is  EBITDA?", "earnings before interest..."),
        Example(text="plain text row."),
        example("New?", "Yes."),
    ]
    assert exact_leaks(train, evaluation) == 2


def test_token_lengths_and_truncation_with_the_tiny_tokenizer(tmp_path, tiny_model_path, tiny_tokenizer):
    from finetune.config import DataSection
    from finetune.data.read import load_examples
    from finetune.data.tokenize import encode

    path = write_jsonl(tmp_path / "d.jsonl", qa(6) + [{"prompt": "long " * 30, "completion": "answer"}])
    examples, _, _ = load_examples(str(path), DataSection(path=str(path)))
    lengths = sorted(len(encode(e, tiny_tokenizer, 10_000, True).input_ids) for e in examples)
    report = inspect(path, "--model", tiny_model_path, "--max-length", 120, "--plot", tmp_path / "plots" / "len.png")
    stats = report["token_lengths"]
    assert stats["unit"] == "tokens" and (stats["min"], stats["max"]) == (lengths[0], lengths[-1])
    assert stats["p50"] == lengths[3]
    assert report["truncated_rows"] == sum(n > 120 for n in lengths) == 1
    assert report["truncated_tokens"] == lengths[-1] - 120
    assert (tmp_path / "plots" / "len.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_directory_without_tokenizer_falls_back_to_characters(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    rows = qa(3)
    report = inspect(write_jsonl(tmp_path / "d.jsonl", rows), "--model", model_dir)
    assert report["token_lengths"]["unit"] == "characters" and report["truncated_rows"] is None
    assert report["token_lengths"]["max"] == max(len(r["prompt"]) + len(r["completion"]) for r in rows)
    assert any("characters" in note for note in report["notes"])


def test_human_report(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", qa(3) + qa(1))
    result = runner.invoke(app, ["data", "inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "prompt_completion" in result.stdout and "duplicates" in result.stdout and "characters" in result.stdout


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.jsonl", None, "not found"),
        ("binary.jsonl", b"\x00\x01\x02PK\x03\x04" * 20, "binary"),
        ("empty.jsonl", b"", "empty"),
        ("empty.csv", b"", "empty"),
        ("broken.jsonl", b'{"prompt": "x"\n', "no readable rows"),
        ("broken.json", b'[{"prompt": 1,', "invalid JSON"),
        ("columns.jsonl", b'{"question": "q", "answer": "a"}\n', "cannot detect the data format"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = runner.invoke(app, ["data", "inspect", str(path), "--json"])
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_against_with_a_recipe_is_a_user_error(write_recipe, tmp_path):
    result = runner.invoke(
        app, ["data", "inspect", str(write_recipe()), "--against", str(write_jsonl(tmp_path / "e.jsonl", qa(2)))]
    )
    assert result.exit_code == 2 and "--against" in result.stderr


def test_values_that_are_not_text_are_listed_as_problems(tmp_path):
    rows = qa(3)
    rows.insert(1, {"prompt": "q", "completion": 42})  # line 2
    rows.insert(3, {"prompt": {"q": 1}, "completion": "a"})  # line 4
    report = inspect(write_jsonl(tmp_path / "d.jsonl", rows))
    assert report["rows"] == 3 and report["malformed_rows"] == 2
    assert [(p["line"], p["message"]) for p in report["problems"]] == [
        (2, "completion must be a string (got int); store it as text in the data file"),
        (4, "prompt must be a string (got dict); store it as text in the data file"),
    ]

    def chat(content):
        return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]}

    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}]
    image = [{"type": "image_url", "image_url": {"url": "x"}}]
    report = inspect(write_jsonl(tmp_path / "c.jsonl", [chat(parts), chat(image), chat(None), chat(float("nan"))]))
    assert report["rows"] == 1 and report["malformed_rows"] == 3
    messages = {p["line"]: p["message"] for p in report["problems"]}
    assert (
        messages[2] == "messages[1].content has a 'image_url' part; finetune trains on text only: remove non-text parts"
    )
    assert "(got null)" in messages[3] and "(got NaN)" in messages[4]
    assert report["token_lengths"]["max"] == len("q" + "Hello world")  # the parts joined, not a list's repr

    labels = [{"text": f"t{i}", "label": "up"} for i in range(3)] + [{"text": "t", "label": {"name": "down"}}]
    report = inspect(write_jsonl(tmp_path / "l.jsonl", labels))
    assert report["labels"] == {"up": 3} and report["problems"][0]["line"] == 4
    assert report["problems"][0]["message"].startswith("label must be a label name or a number (got dict)")


def test_csv_duplicate_header_exits_2(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion,prompt\nq,a,q2\n", encoding="utf-8")
    result = runner.invoke(app, ["data", "inspect", str(path), "--json"])
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert "d.csv:1: the header has the column 'prompt' more than once" in result.stderr


def test_a_template_that_drops_the_answer_is_a_problem_of_each_row(tmp_path, tiny_tokenizer):
    from finetune.config import DataSection
    from finetune.data.inspect import load, measure

    tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    path = write_jsonl(tmp_path / "d.jsonl", qa(2))
    data = DataSection(path=str(path))
    (loaded,) = load([str(path)], data)
    lengths, _, problems = measure(loaded.items, tokenizer, data, 128)
    assert lengths == [] and [p.location for p in problems] == ["d.jsonl:1", "d.jsonl:2"]
    assert problems[0].message.startswith("the chat template does not render the assistant content")


def test_strict_fails_a_file_with_bad_rows_and_passes_a_clean_one(tmp_path):
    clean = write_jsonl(tmp_path / "clean.jsonl", qa(5))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(clean.read_text() + '{"prompt": "unterminated\n', encoding="utf-8")
    assert runner.invoke(app, ["data", "inspect", str(clean), "--strict"]).exit_code == 0
    result = runner.invoke(app, ["data", "inspect", str(bad), "--strict", "--json"])
    assert result.exit_code == 2 and "1 bad rows in" in result.stderr
    assert json.loads(result.stdout)["bad_rows"] == 1  # the report is still printed, whole
