"""The tokenisation cache: hits return the same columns; any change of what the tokens depend on misses."""

from __future__ import annotations

import copy

import pytest

from finetune.data import token_cache
from finetune.data.read import Example
from finetune.data.tokenize import encode_split

EXAMPLES = [
    Example(
        messages=[
            {"role": "user", "content": f"What is {word}?"},
            {"role": "assistant", "content": f"{word} is money."},
        ]
    )
    for word in ("a bond", "equity", "a dividend", "yield", "an option")
] + [Example(text="Plain text trained on every token.")]


@pytest.fixture
def calls(monkeypatch):
    """Counts real encodings (cache misses)."""
    counter = {"n": 0}
    real = token_cache.encode_parallel

    def counting(*args, **kwargs):
        counter["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(token_cache, "encode_parallel", counting)
    return counter


def encode(
    tokenizer,
    cache_dir,
    examples=EXAMPLES,
    max_length=64,
    data_hash="d1",
    completion_only_loss=True,
    truncation="prompt",
):
    return token_cache.cached_encode(
        examples, tokenizer, max_length, completion_only_loss, data_hash, truncation, cache_dir=cache_dir
    )


def test_second_call_hits_and_returns_identical_columns(tiny_tokenizer, tmp_path, calls):
    first, report = encode(tiny_tokenizer, tmp_path)
    second, cached_report = encode(tiny_tokenizer, tmp_path)
    assert calls["n"] == 1
    assert second == first == encode_split(EXAMPLES, tiny_tokenizer, 64, True)[0]
    assert cached_report == report and report.examples == len(EXAMPLES)
    assert len(list(tmp_path.glob("*.parquet"))) == 1 and not list(tmp_path.glob(".tmp-*"))


def test_default_folder_is_under_finetune_home(tiny_tokenizer, finetune_home):
    token_cache.cached_encode(EXAMPLES[:2], tiny_tokenizer, 64, True, "home")
    assert list((finetune_home / "token-cache").glob("*.parquet"))


def test_each_input_of_the_key_invalidates(tiny_tokenizer, tmp_path, calls):
    encode(tiny_tokenizer, tmp_path)
    encode(tiny_tokenizer, tmp_path, data_hash="d2")
    encode(tiny_tokenizer, tmp_path, max_length=32)
    encode(tiny_tokenizer, tmp_path, completion_only_loss=False)
    encode(tiny_tokenizer, tmp_path, truncation="end")
    encode(tiny_tokenizer, tmp_path, examples=EXAMPLES[:-1])  # another split of the same file

    templated = copy.deepcopy(tiny_tokenizer)
    templated.chat_template = tiny_tokenizer.chat_template.replace("### User:", "### Question:")
    encode(templated, tmp_path)

    grown = copy.deepcopy(tiny_tokenizer)
    grown.add_tokens(["<|new|>"])
    encode(grown, tmp_path)
    assert calls["n"] == 8
    assert len(list(tmp_path.glob("*.parquet"))) == 8


def test_corrupt_file_is_ignored_and_rewritten(tiny_tokenizer, tmp_path, calls):
    columns, _ = encode(tiny_tokenizer, tmp_path)
    (path,) = tmp_path.glob("*.parquet")
    path.write_bytes(b"PAR1 not really parquet")
    again, _ = encode(tiny_tokenizer, tmp_path)
    assert again == columns and calls["n"] == 2
    assert token_cache.read_entry(path) is not None  # rewritten whole
    encode(tiny_tokenizer, tmp_path)
    assert calls["n"] == 2


def test_padding_settings_do_not_change_the_fingerprint(tiny_tokenizer):
    before = token_cache.tokenizer_fingerprint(tiny_tokenizer)
    tiny_tokenizer(["a", "abc"], padding=True, truncation=True, max_length=2)
    assert token_cache.tokenizer_fingerprint(tiny_tokenizer) == before


def test_parallel_encoding_equals_one_process(tiny_tokenizer):
    examples = EXAMPLES * 7  # 42 rows in 3 uneven chunks
    serial_columns, serial_report = encode_split(examples, tiny_tokenizer, 48, True)
    columns, report = token_cache.encode_parallel(examples, tiny_tokenizer, 48, True, workers=3)
    assert columns == serial_columns
    assert report == serial_report


def test_least_recently_used_entries_are_pruned_above_the_size_cap(tiny_tokenizer, tmp_path, calls, monkeypatch):
    import os

    encode(tiny_tokenizer, tmp_path, data_hash="old")
    encode(tiny_tokenizer, tmp_path, data_hash="used")
    old, used = sorted(tmp_path.glob("*.parquet"), key=lambda p: p.stat().st_mtime)
    os.utime(old, (1, 1))
    os.utime(used, (2, 2))
    encode(tiny_tokenizer, tmp_path, data_hash="used")  # a hit: now the most recently used
    assert used.stat().st_mtime > 2 and calls["n"] == 2

    # A cap of two entries' worth: writing a third deletes the least recently used one only.
    monkeypatch.setenv("FINETUNE_TOKEN_CACHE_GB", str(2.5 * used.stat().st_size / 1e9))
    encode(tiny_tokenizer, tmp_path, data_hash="new")
    assert not old.exists() and used.exists() and len(list(tmp_path.glob("*.parquet"))) == 2

    # The entry just written is kept even when it alone exceeds the cap.
    monkeypatch.setenv("FINETUNE_TOKEN_CACHE_GB", "0")
    encode(tiny_tokenizer, tmp_path, data_hash="newest")
    assert len(list(tmp_path.glob("*.parquet"))) == 1


def test_a_bad_cache_size_is_a_user_error(tiny_tokenizer, tmp_path, monkeypatch):
    from finetune.errors import UserError

    for bad in ("lots", "inf", "-1"):
        monkeypatch.setenv("FINETUNE_TOKEN_CACHE_GB", bad)
        with pytest.raises(UserError, match=f"FINETUNE_TOKEN_CACHE_GB={bad}: not a number"):
            encode(tiny_tokenizer, tmp_path)


def test_an_entry_written_before_the_empty_answer_fields_still_loads(tiny_tokenizer, tmp_path):
    """Old cache entries have no empty_answers in their stored report: it loads with the defaults."""
    import json
    from dataclasses import asdict

    import pyarrow.parquet as pq

    columns, report = encode_split(EXAMPLES, tiny_tokenizer, 64, True)
    path = tmp_path / "old.parquet"
    token_cache.write_entry(path, columns, report)
    old = {k: v for k, v in asdict(report).items() if k not in ("empty_answers", "empty_answer_sources")}
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({token_cache.REPORT_KEY: json.dumps(old).encode()}), path)
    read_columns, read_report = token_cache.read_entry(path)
    assert read_columns == columns
    assert read_report.empty_answers == 0 and read_report.empty_answer_sources == []


def test_parallel_encoding_counts_empty_answers_like_one_process(tiny_tokenizer):
    examples = [
        Example(
            messages=[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "" if i % 3 else "a"}],
            source=f"d.jsonl:{i + 1}",
        )
        for i in range(12)
    ]
    _, serial = encode_split(examples, tiny_tokenizer, 48, True)
    _, parallel = token_cache.encode_parallel(examples, tiny_tokenizer, 48, True, workers=3)
    assert parallel.empty_answers == serial.empty_answers == 8
    assert parallel.empty_answer_sources[0] == serial.empty_answer_sources[0] == "d.jsonl:2"
