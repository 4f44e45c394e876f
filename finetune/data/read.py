"""Read the user's rows, detect their format, turn them into conversations, and split them.

Everything here is pure Python (no torch, no tokenizer), so `finetune validate` and
`finetune train --dry-run` can check the data without loading a model. Tokenization and loss
masking live in `tokenization.py`.

Formats (detected from the columns, or set with data.format):
  chat               {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}
  alpaca             {"instruction": ..., "input": ..., "output": ...}
  prompt_completion  {"prompt": ..., "completion": ...}
  classification     {"text": ..., "label": ...}        (columns configurable)
  text               {"text": ...}                       (trained on every token)
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.config import ClassificationSection, DataSection
from finetune.errors import UserError

ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    """One training example: a conversation (trained on the assistant turns) or raw text."""

    messages: list[dict[str, str]] | None = None
    text: str | None = None
    label: str | None = None  # classification: the label name, also the last assistant turn
    source: str = ""  # "file:line", for error messages


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    format: str
    data_hash: str
    labels: list[str] = field(default_factory=list)  # classification label names, in order

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


# --------------------------------------------------------------------------------------------
# Reading files


def read_rows(source: str, data: DataSection | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Rows as (location, dict). Local JSONL/JSON/CSV/Parquet, or a hub dataset id."""
    path = Path(source)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; point data.path at a .jsonl, .json, .csv or .parquet file")
    if not path.exists():
        if path.suffix or source.startswith((".", "/", "~")) or source.count("/") != 1:
            raise UserError(f"{source}: data file not found (paths are relative to the recipe file)")
        return _read_hub(source, data)
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"{path}: unsupported file type '{path.suffix}'; use .jsonl, .json, .csv or .parquet")
    if path.suffix.lower() != ".parquet":
        head = path.read_bytes()[:4096]
        if b"\x00" in head:
            raise UserError(f"{path}: looks like a binary file, not {path.suffix[1:].upper()} text")
    rows = reader(path)
    if not rows:
        raise UserError(f"{path}: no rows; the file is empty")
    return rows


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte {err.start}); re-save the file as UTF-8") from err


def _read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: invalid JSON ({err.msg}); each line must be one JSON object") from err
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append((f"{path.name}:{number}", row))
    return rows


def _read_json(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
        value = next(iter(value.values()))  # {"data": [...]}
    if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
        raise UserError(f"{path}: expected a JSON array of objects")
    return [(f"{path.name}[{i}]", row) for i, row in enumerate(value)]


def _read_csv(path: Path) -> list[tuple[str, dict[str, Any]]]:
    text = _read_text(path)
    try:
        reader = csv.DictReader(text.splitlines(keepends=True))
        check_csv_header(path, reader.fieldnames or [], reader.line_num)
        rows = []
        for row in reader:
            if None in row:  # more cells than header columns
                raise UserError(f"{path}:{reader.line_num}: more values than header columns; quote fields with commas")
            rows.append((f"{path.name}:{reader.line_num}", {k: v for k, v in row.items() if k is not None}))
    except csv.Error as err:
        raise UserError(f"{path}: cannot parse CSV ({err})") from err
    return rows


def check_csv_header(path: Path, columns: list[str], line: int) -> None:
    """A repeated column name: csv.DictReader would keep only the last column's values, silently."""
    repeated = [name for name, count in Counter(columns).items() if count > 1]
    if repeated:
        raise UserError(
            f"{path}:{line}: the header has the column '{repeated[0]}' more than once; "
            "rename or remove the duplicate column (only one of its values per row would be read)"
        )


def _read_parquet(path: Path) -> list[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise UserError(f"{path}: cannot read Parquet ({err.__class__.__name__}: {err})".splitlines()[0]) from err
    return [(f"{path.name}[{i}]", row) for i, row in enumerate(table.to_pylist())]


def _read_hub(dataset_id: str, data: DataSection | None) -> list[tuple[str, dict[str, Any]]]:
    import datasets

    config = data.hub_config if data else None
    split = data.hub_split if data else "train"
    try:
        dataset = datasets.load_dataset(dataset_id, name=config, split=split)
    except Exception as err:
        raise UserError(
            f"{dataset_id}: not a local file and the hub dataset could not be loaded "
            f"({err.__class__.__name__}); check the id, data.hub_split, or the network"
        ) from err
    return [(f"{dataset_id}[{i}]", row) for i, row in enumerate(dataset)]


# --------------------------------------------------------------------------------------------
# Formats


def detect_format(columns: set[str], classification: ClassificationSection) -> str:
    if "messages" in columns:
        return "chat"
    if {"instruction", "output"} <= columns:
        return "alpaca"
    if {"prompt", "completion"} <= columns:
        return "prompt_completion"
    if {classification.text_column, classification.label_column} <= columns:
        return "classification"
    if "text" in columns:
        return "text"
    raise UserError(
        f"cannot detect the data format from columns {sorted(columns)}; expected messages, instruction+output, "
        "prompt+completion, text+label or text (or set data.format)"
    )


def to_example(location: str, row: dict[str, Any], fmt: str, data: DataSection, labels: dict[str, str]) -> Example:
    """Turn one row into an Example, or raise UserError naming the row and what is wrong."""

    def need(key: str) -> str:
        value = row.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            found = ", ".join(sorted(row)) or "none"
            raise UserError(f"{location}: missing or empty '{key}' for format {fmt} (columns found: {found})")
        return _string(location, key, value)

    if fmt == "chat":
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{location}: 'messages' must be a non-empty list of {{role, content}} objects")
        return Example(messages=_check_chat(location, messages, data.system_prompt), source=location)
    if fmt == "alpaca":
        prompt = need("instruction")
        extra = row.get("input")  # optional: missing, null or blank adds nothing
        if extra is not None and not isinstance(extra, str):
            raise UserError(
                f"{location}: input must be a string or null (got {_kind(extra)}); store it as text in the data file"
            )
        if extra and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        return _qa(prompt, need("output"), data, location)
    if fmt == "prompt_completion":
        return _qa(need("prompt"), need("completion"), data, location)
    if fmt == "classification":
        spec = data.classification
        value = row.get(spec.label_column)
        if value is None or (isinstance(value, str) and not value.strip()):
            need(spec.label_column)  # raises: missing or empty
        raw = _label_key(value)
        if raw is None:
            raise UserError(
                f"{location}: {spec.label_column} must be a label name or a number (got {_kind(value)}); "
                "fix the row or data.classification.label_column"
            )
        if raw not in labels:
            known = ", ".join(sorted(labels))
            raise UserError(
                f"{location}: label '{raw}' is not in the label set ({known}); fix the row or data.classification.labels"
            )
        prompt = classification_prompt(spec, list(dict.fromkeys(labels.values())), need(spec.text_column))
        example = _qa(prompt, labels[raw], data, location)
        example.label = labels[raw]
        return example
    if fmt == "text":
        return Example(text=need("text"), source=location)
    raise UserError(f"data.format: unknown format '{fmt}'")


def _kind(value: Any) -> str:
    """How an error names a value's type: null, NaN, or the (JSON-ish) type name."""
    if value is None:
        return "null"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return type(value).__name__


def _string(location: str, field: str, value: Any) -> str:
    """The value itself when it is a string; anything else is refused, never turned into text with str()."""
    if not isinstance(value, str):
        raise UserError(f"{location}: {field} must be a string (got {_kind(value)}); store it as text in the data file")
    return value


def _label_key(value: Any) -> str | None:
    """A raw label as the text its label set is keyed by: a string, or an integer, bool or finite float
    (written in its usual decimal form). None for a missing, blank or unusable value (a list, an object, NaN)."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    return None


def _qa(prompt: str, answer: str, data: DataSection, location: str) -> Example:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    if data.system_prompt:
        messages.insert(0, {"role": "system", "content": data.system_prompt})
    return Example(messages=messages, source=location)


def _check_chat(location: str, messages: list[Any], system_prompt: str | None) -> list[dict[str, str]]:
    """Roles must be system? then user/assistant alternating, ending with at least one assistant turn."""
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise UserError(f"{location}: messages[{i}] must be an object with 'role' and 'content'")
        role = message["role"]
        if role not in ROLES:
            raise UserError(f"{location}: messages[{i}] has role '{role}'; use system, user or assistant")
        clean.append({"role": role, "content": _content(location, i, message["content"])})
    body = clean[1:] if clean[0]["role"] == "system" else clean
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise UserError(
                f"{location}: roles out of order at turn {i + 1} ('{message['role']}' where '{expected}' was expected); "
                "a chat is an optional system message, then user and assistant turns alternating"
            )
    if not any(m["role"] == "assistant" for m in body):
        raise UserError(f"{location}: chat has no assistant turn, so there is nothing to learn from it")
    if system_prompt and clean[0]["role"] != "system":
        clean.insert(0, {"role": "system", "content": system_prompt})
    return clean


def _content(location: str, i: int, content: Any) -> str:
    """A message's text: a string, or OpenAI-style content parts whose text parts are joined (no separator)."""
    where = f"messages[{i}].content"
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise UserError(
            f"{location}: {where} must be a string or a list of text parts (got {_kind(content)}); "
            'write the turn as text ("" for an empty turn)'
        )
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or "type" not in part:
            raise UserError(
                f'{location}: {where}[{j}] must be a content part like {{"type": "text", "text": "..."}} '
                f"(got {_kind(part)})"
            )
        if part["type"] != "text":
            raise UserError(
                f"{location}: {where} has a '{part['type']}' part; finetune trains on text only: remove non-text parts"
            )
        texts.append(_string(location, f"{where}[{j}].text", part.get("text")))
    return "".join(texts)


def empty_answer(example: Example) -> bool:
    """A conversation with an assistant turn that is empty or only whitespace (trained as: answer nothing)."""
    return any(m["role"] == "assistant" and not m["content"].strip() for m in example.messages or [])


def label_mapping(rows: list[tuple[str, dict[str, Any]]], spec: ClassificationSection) -> dict[str, str]:
    """raw label value (as text) -> label name. From the recipe, else the sorted distinct values."""
    if isinstance(spec.labels, dict):
        return dict(spec.labels)
    if isinstance(spec.labels, list):
        return {name: name for name in spec.labels}
    # unusable values (a list, an object, NaN, blank) are refused row by row in to_example
    keys = {_label_key(row.get(spec.label_column)) for _, row in rows}
    values = sorted(key for key in keys if key is not None)
    return {value: value for value in values}


# --------------------------------------------------------------------------------------------
# Loading and splitting


def load_splits(data: DataSection) -> Splits:
    """Read the data of a recipe and return seeded, disjoint train/validation/test splits."""
    sources = {"train": data.path or data.train, "validation": data.validation, "test": data.test}
    raw = {name: read_rows(src, data) for name, src in sources.items() if src}
    all_rows = [row for rows in raw.values() for row in rows]

    fmt = data.format
    if fmt == "auto":
        fmt = detect_format(set(all_rows[0][1]), data.classification)
    labels = label_mapping(all_rows, data.classification) if fmt == "classification" else {}
    examples = {name: [to_example(loc, row, fmt, data, labels) for loc, row in rows] for name, rows in raw.items()}

    if data.path:
        train, validation, test = split_examples(
            examples["train"], data.split.validation, data.split.test, data.split.seed
        )
    else:
        train, validation, test = examples["train"], examples.get("validation", []), examples.get("test", [])
    splits = Splits(
        train=train,
        validation=validation,
        test=test,
        format=fmt,
        data_hash=hash_sources([s for s in sources.values() if s]),
        labels=list(dict.fromkeys(labels.values())),
    )
    where = data.path or data.train
    if not splits.train:
        raise UserError(f"{where}: the training split is empty; add rows or lower data.split.validation/test")
    if not splits.validation:
        raise UserError(
            f"{where}: the validation split is empty ({len(all_rows)} rows); early stopping needs one: "
            "raise data.split.validation, add rows, or set data.validation"
        )
    for name in ("train", "validation", "test"):
        _check_some_answer(name, getattr(splits, name))
    return splits


def _check_some_answer(name: str, examples: list[Example]) -> None:
    """A split whose every assistant answer is empty trains (or scores) nothing but the end-of-sequence token."""
    chats = [example for example in examples if example.messages is not None]
    if chats and all(_no_answer_text(example) for example in chats):
        why = (
            "training would only teach the end-of-sequence token (the model learns to answer with nothing)"
            if name == "train"
            else f"the {name} loss would only measure the end-of-sequence token"
        )
        raise UserError(
            f"{chats[0].source}: every assistant answer in the {name} split ({len(chats)} examples) is empty, "
            f"so {why}; fill in the assistant answers"
        )


def _no_answer_text(example: Example) -> bool:
    return all(not m["content"].strip() for m in example.messages or [] if m["role"] == "assistant")


def load_examples(source: str, data: DataSection) -> tuple[list[Example], str, list[str]]:
    """One file (or hub id) converted with the recipe's format settings: `finetune eval --data FILE`."""
    rows = read_rows(source, data)
    fmt = data.format if data.format != "auto" else detect_format(set(rows[0][1]), data.classification)
    labels = label_mapping(rows, data.classification) if fmt == "classification" else {}
    examples = [to_example(location, row, fmt, data, labels) for location, row in rows]
    return examples, fmt, list(dict.fromkeys(labels.values()))


def split_examples(
    examples: list[Example], validation: float, test: float, seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """A seeded shuffle, then test | validation | train. Same seed and rows -> same split, always.

    Sizes round to the nearest row but keep at least one row in a split whose fraction is > 0,
    so a small file still gets a validation and a test split.
    """
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n = len(order)
    n_test = max(1, round(n * test)) if test > 0 else 0
    n_val = max(1, round(n * validation)) if validation > 0 else 0
    n_test, n_val = min(n_test, n), min(n_val, max(0, n - n_test))
    pick = [examples[i] for i in order]
    return pick[n_test + n_val :], pick[n_test : n_test + n_val], pick[:n_test]


def hash_sources(sources: list[str]) -> str:
    """sha256 over the bytes of every data file (or the id of a hub dataset): detects changed data."""
    digest = hashlib.sha256()
    for source in sources:
        path = Path(source)
        digest.update(b"\0" if path.is_file() else source.encode())
        if path.is_file():
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def classification_prompt(spec: ClassificationSection, labels: list[str], text: str) -> str:
    """The user turn of a classification example: the template with the label names and the text."""
    return spec.template.replace("{labels}", ", ".join(labels)).replace("{text}", text)
