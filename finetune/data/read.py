"""Read the user's files, turn their rows into examples (rows.py), and split them.

Everything here is pure Python (no torch, no tokenizer), so `finetune validate` and
`finetune train --dry-run` can check the data without loading a model. Tokenization and loss
masking live in `tokenize.py` (and `preference.py` for chosen/rejected pairs).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.config import DataSection
from finetune.data.rows import Example, detect_format, label_mapping, to_example
from finetune.errors import UserError


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


# CSV fields as long as a report (csv's default limit is 131,072 characters; a JSONL line has none)
csv.field_size_limit(2**31 - 1)


def file_lines(text: str) -> list[str]:
    """The lines of a data file: split at \n, \r\n or \r only. (str.splitlines also splits at U+2028, U+0085
    and form feeds, which a JSON string or a CSV field may hold raw: valid rows would be torn in two.)"""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def json_problem(err: ValueError | RecursionError) -> str:
    """What json.loads refused, in a few words: a syntax error, a number past Python's 4,300 digits, or nesting
    deeper than the interpreter's recursion limit."""
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at column {err.colno}"
    return "nested too deeply" if isinstance(err, RecursionError) else str(err).split(";")[0].split(":")[0]


def _read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(file_lines(_read_text(path)), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as err:
            problem = json_problem(err)
            raise UserError(f"{path}:{number}: invalid JSON ({problem}); each line must be one JSON object") from err
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append((f"{path.name}:{number}", row))
    return rows


def _read_json(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        hint = "; a file of one JSON object per line is .jsonl" if err.msg == "Extra data" else ""
        raise UserError(f"{path}:{err.lineno}: invalid JSON ({err.msg}){hint}") from err
    except (ValueError, RecursionError) as err:
        raise UserError(f"{path}: invalid JSON ({json_problem(err)})") from err
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
        value = next(iter(value.values()))  # {"data": [...]}
    if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
        raise UserError(f"{path}: expected a JSON array of objects")
    return [(f"{path.name}[{i}]", row) for i, row in enumerate(value)]


def _read_csv(path: Path) -> list[tuple[str, dict[str, Any]]]:
    text = _read_text(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))  # csv's own line breaks: \n, \r\n, \r
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
# Loading and splitting


def load_splits(data: DataSection) -> Splits:
    """Read the data of a recipe and return seeded, disjoint train/validation/test splits."""
    sources = {"train": data.path or data.train, "validation": data.validation, "test": data.test}
    raw = {name: read_rows(src, data) for name, src in sources.items() if src}
    all_rows = [row for rows in raw.values() for row in rows]

    fmt = data.format
    if fmt == "auto":
        fmt = detect_format(all_rows, data.classification)
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


def check_objective(objective: str, fmt: str, data: DataSection) -> None:
    """Preference pairs are trained by dpo/orpo, and dpo/orpo train nothing else."""
    source = data.path or data.train
    if objective == "sft" and fmt == "preference":
        raise UserError(
            f"{source}: the rows are preference pairs (prompt, chosen, rejected); set train.objective: dpo or orpo"
        )
    if objective != "sft" and fmt != "preference":
        raise UserError(
            f"{source}: train.objective {objective} needs preference rows with prompt, chosen and rejected "
            f"(these are {fmt} rows); use such data, or train.objective: sft"
        )


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
    fmt = data.format if data.format != "auto" else detect_format(rows, data.classification)
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
