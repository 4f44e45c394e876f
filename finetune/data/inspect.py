"""`finetune data inspect`: what is in a data file (or a recipe's splits) before GPU hours go into it.

The analysis only; the CLI renders the dict that `inspect_data` returns (it is also the --json output).
Unlike `load_splits`, which stops at the first bad row (training must not run on half a file), this
reads on past broken rows and lists them all, so one run shows everything to fix.

Duplicates and leakage are computed in leakage.py.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.config import DataSection, ModelSection, load_recipe
from finetune.data.leakage import Item, duplicates, exact_leaks, leakage, make_item, near_duplicates
from finetune.data.preference import encode_pair
from finetune.data.read import (
    check_csv_header,
    detect_format,
    json_problem,
    label_mapping,
    read_rows,
    split_examples,
    to_example,
)
from finetune.data.rows import blank
from finetune.data.tokenize import IGNORE, encode
from finetune.errors import UserError

__all__ = ["exact_leaks", "inspect_data", "read_tolerant"]  # exact_leaks: `finetune train` warns with it

MAX_PROBLEMS = 100  # bad rows listed in full (all are counted)


@dataclass
class Problem:
    location: str  # "file.jsonl:12" (a line) or "file.parquet[3]" (a row index)
    kind: str  # "malformed" | "empty"
    message: str

    def to_json(self) -> dict[str, Any]:
        name, _, line = self.location.rpartition(":")
        return {
            "location": self.location,
            "line": int(line) if name and line.isdigit() else None,
            "kind": self.kind,
            "message": self.message,
        }


@dataclass
class Loaded:
    items: list[Item]
    format: str
    columns: list[str]
    problems: list[Problem]
    labels: list[str]


# --------------------------------------------------------------------------------------------
# Reading on past bad rows


def read_tolerant(source: str, data: DataSection) -> tuple[list[tuple[str, dict[str, Any]]], list[Problem]]:
    """data.read_rows, except that a broken JSONL line or CSV row is collected instead of stopping the read."""
    path = Path(source)
    if path.suffix.lower() not in (".jsonl", ".csv") or not path.is_file():
        return read_rows(source, data), []  # whole-file formats: valid or not (read_rows says where)
    raw = path.read_bytes()
    if b"\x00" in raw[:4096]:
        raise UserError(f"{path}: looks like a binary file, not {path.suffix[1:].upper()} text")
    raw = raw.removeprefix(codecs.BOM_UTF8)
    rows, problems = (_jsonl if path.suffix.lower() == ".jsonl" else _csv)(path, raw)
    if not rows and not problems:
        raise UserError(f"{path}: no rows; the file is empty")
    if not rows:
        first = problems[0]
        more = f"; {len(problems) - 1} more bad rows" if len(problems) > 1 else ""
        raise UserError(f"{path}: no readable rows ({first.location}: {first.message}{more})")
    return rows, problems


def _jsonl(path: Path, raw: bytes) -> tuple[list[tuple[str, dict[str, Any]]], list[Problem]]:
    rows, problems = [], []
    for number, line in enumerate(raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"), start=1):
        location = f"{path.name}:{number}"
        if not line.strip():
            continue  # blank lines are not rows (training skips them too)
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            problems.append(Problem(location, "malformed", "not valid UTF-8; re-save the file as UTF-8"))
            continue
        except (ValueError, RecursionError) as err:  # syntax, a number past 4,300 digits, nesting too deep
            problems.append(Problem(location, "malformed", f"invalid JSON ({json_problem(err)})"))
            continue
        if isinstance(row, dict):
            rows.append((location, row))
        else:
            problems.append(Problem(location, "malformed", f"expected a JSON object, got {type(row).__name__}"))
    return rows, problems


def _csv(path: Path, raw: bytes) -> tuple[list[tuple[str, dict[str, Any]]], list[Problem]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte {err.start}); re-save the file as UTF-8") from err
    reader = csv.DictReader(io.StringIO(text, newline=""))  # csv's own line breaks, as training reads it
    rows, problems = [], []
    try:
        check_csv_header(path, reader.fieldnames or [], reader.line_num)  # a whole-file problem: stop here
        for row in reader:
            location = f"{path.name}:{reader.line_num}"
            if None in row:  # more cells than header columns: usually an unquoted comma
                problems.append(
                    Problem(location, "malformed", "more values than header columns; quote fields with commas")
                )
            else:
                rows.append((location, row))
    except csv.Error as err:
        raise UserError(f"{path}:{reader.line_num}: cannot parse CSV ({err})") from err
    return rows, problems


def convert(
    rows: list[tuple[str, dict[str, Any]]], fmt: str, data: DataSection, labels: dict[str, str]
) -> tuple[list[Item], list[Problem]]:
    """Every row through data.to_example; a row it rejects becomes a Problem (empty or malformed)."""
    items, problems = [], []
    for location, row in rows:
        try:
            example = to_example(location, row, fmt, data, labels)
        except UserError as err:
            if all(map(blank, row.values())):
                problems.append(Problem(location, "empty", "empty row: every value is blank"))
            else:
                problems.append(Problem(location, "malformed", str(err).removeprefix(f"{location}: ")))
            continue
        items.append(make_item(example, row, fmt, data))
    return items, problems


def load(sources: list[str], data: DataSection) -> list[Loaded]:
    """Read files that share one format and label set (a recipe's files, or one file), one Loaded each."""
    read = [read_tolerant(source, data) for source in sources]
    all_rows = [row for rows, _ in read for row in rows]
    fmt = data.format
    if fmt == "auto":  # like load_splits: the first row with a value decides
        fmt = detect_format(all_rows, data.classification)
    labels = label_mapping(all_rows, data.classification) if fmt == "classification" else {}
    loaded = []
    for rows, problems in read:
        items, bad = convert(rows, fmt, data, labels)
        columns = list(dict.fromkeys(column for _, row in rows for column in row))
        loaded.append(Loaded(items, fmt, columns, problems + bad, list(dict.fromkeys(labels.values()))))
    return loaded


# --------------------------------------------------------------------------------------------
# Lengths


def percentile(ordered: list[int], p: float) -> int:
    """Nearest-rank percentile: always one of the measured lengths."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def measure(
    items: list[Item], tokenizer: Any, data: DataSection, max_length: int
) -> tuple[list[int], dict[str, Any], list[Problem]]:
    """Lengths of the encoded examples (what training sees: template, BOS/EOS) and what max_length cuts off."""

    lengths, problems, truncated, lost, no_answer, cut, cut_tokens = [], [], 0, 0, 0, 0, 0
    for item in items:
        if tokenizer is None:
            example = item.example
            lengths.append(
                len(example.text if example.text is not None else "".join(m["content"] for m in example.messages or []))
            )
            continue
        try:
            encoded = encode(
                item.example, tokenizer, max_length=1 << 62, completion_only_loss=data.completion_only_loss
            )
        except UserError as err:  # the chat template cannot render this row, or leaves its answer out
            source = item.example.source
            problems.append(Problem(source, "malformed", str(err).removeprefix(f"{source}: ")))
            continue
        length = len(encoded.input_ids)
        lengths.append(length)
        if length > max_length:  # what training does to it, under data.truncation
            fitted = encode(item.example, tokenizer, max_length, data.completion_only_loss, data.truncation)
            truncated, lost = truncated + 1, lost + length - max_length
            no_answer += fitted.dropped or all(label == IGNORE for label in fitted.labels)  # training drops these
            cut, cut_tokens = cut + (fitted.prompt_tokens_cut > 0), cut_tokens + fitted.prompt_tokens_cut
    stats: dict[str, Any] = {"unit": "tokens" if tokenizer is not None else "characters", **length_stats(lengths)}
    counted = tokenizer is not None  # truncation is in tokens; characters cannot say
    fit = {
        "truncation": data.truncation,
        "truncated_rows": truncated if counted else None,  # rows longer than max_length
        "truncated_tokens": lost if counted else None,  # tokens beyond max_length, all rows together
        "prompts_cut": cut if counted else None,  # data.truncation: prompt: rows whose prompt is cut to fit
        "prompt_tokens_cut": cut_tokens if counted else None,
        "truncated_to_no_answer": no_answer if counted else None,  # rows training drops
    }
    return lengths, {"token_lengths": stats, **fit}, problems


NEAR_IDENTICAL = 0.9  # difflib similarity of chosen and rejected above which a pair teaches almost nothing
SIMILARITY_CHARS = 2000  # compare the first characters only: SequenceMatcher is quadratic in the worst case


def preference_report(
    items: list[Item], tokenizer: Any, data: DataSection, max_length: int, problems: list[Problem]
) -> dict[str, Any]:
    """Pairs: lengths of the prompt and of each answer, identical and nearly identical pairs, what max_length cuts."""
    sides: dict[str, list[int]] = {"prompt": [], "chosen": [], "rejected": []}
    near, dropped, cut = [], 0, 0
    for item in items:
        example = item.example
        chosen, rejected = example.messages[-1]["content"], example.rejected or ""
        if tokenizer is None:
            lengths = ["".join(m["content"] for m in example.messages[:-1]), chosen, rejected]
            for name, text in zip(sides, lengths, strict=True):
                sides[name].append(len(text))
        else:
            pair = encode_pair(example, tokenizer, 1 << 62)
            for name in sides:
                sides[name].append(len(getattr(pair, f"{name}_ids")))
            if pair.length > max_length:
                fitted = encode_pair(example, tokenizer, max_length, data.truncation)
                dropped, cut = dropped + fitted.dropped, cut + (fitted.prompt_tokens_cut > 0)
        matcher = difflib.SequenceMatcher(None, chosen[:SIMILARITY_CHARS].lower(), rejected[:SIMILARITY_CHARS].lower())
        # quick_ratio is an upper bound computed in linear time: most pairs stop there
        if matcher.quick_ratio() >= NEAR_IDENTICAL and matcher.ratio() >= NEAR_IDENTICAL:
            near.append(example.source)
    return {
        "lengths": {name: length_stats(values) for name, values in sides.items()},
        "unit": "tokens" if tokenizer is not None else "characters",
        # identical pairs are bad rows (they teach no preference): counted from the problems list
        "identical_pairs": sum("chosen and rejected are the same answer" in p.message for p in problems),
        "near_identical_pairs": len(near),
        "near_identical_examples": near[:MAX_PROBLEMS],
        "pairs_cut_to_fit": cut if tokenizer is not None else None,
        "pairs_dropped_too_long": dropped if tokenizer is not None else None,
    }


def length_stats(values: list[int]) -> dict[str, Any]:
    """min, p50, p90, p99, max, mean; the same keys (None) when there is no value."""
    ordered = sorted(values)
    if not ordered:
        return dict.fromkeys(("min", "p50", "p90", "p99", "max", "mean"))
    return {
        "min": ordered[0],
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
        "mean": round(sum(ordered) / len(ordered), 1),
    }


def plot_lengths(lengths: list[int], unit: str, max_length: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(lengths, bins=min(50, max(5, len(set(lengths)))), color="#4c72b0")
    if unit == "tokens":
        ax.axvline(max_length, color="#c44e52", linestyle="--", label=f"max_length {max_length}")
        ax.legend()
    ax.set_xlabel(f"example length ({unit})")
    ax.set_ylabel("rows")
    ax.set_title(f"{len(lengths)} examples")
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    except OSError as err:
        raise UserError(f"{path}: cannot write the plot ({err.strerror or err})") from err
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------
# The report


TokenizerLoader = Callable[[ModelSection | None, DataSection], tuple[Any, str]]


def inspect_data(
    source: str,
    load_tokenizer: TokenizerLoader,
    against: str | None = None,
    model: str | None = None,
    max_length: int | None = None,
    plot: Path | None = None,
) -> dict[str, Any]:
    """The whole report as a JSON-ready dict (the --json output).

    `load_tokenizer(model, data)` gives (tokenizer, where from) or (None, why not): the caller
    supplies it (model/loading.py's tokenizer_for_lengths), so this package never loads a model.
    """
    is_recipe = Path(source).suffix.lower() in (".yaml", ".yml")
    if is_recipe and against:
        raise UserError("--against compares two data files; a recipe's splits are already checked against each other")
    if max_length is not None and max_length <= 0:
        raise UserError(f"--max-length must be a positive integer (got {max_length})")
    other = None  # the --against file
    if is_recipe:
        data, model_section, main, sides = _recipe_sides(source)
    else:
        data, model_section = DataSection(path=source), None
        main = load([source], data)
        other = load([against], DataSection(path=against))[0] if against else None
        sides = {"file": main[0].items, "against": other.items} if other else {}
    if model:  # --model wins over the recipe's model
        model_section = ModelSection(name=model)
    max_length = max_length or data.max_length
    items = [item for part in main for item in part.items]
    problems = [problem for part in [*main, *([other] if other else [])] for problem in part.problems]

    notes: list[str] = []
    tokenizer, tokenizer_note = load_tokenizer(model_section, data)
    if tokenizer is None:
        notes.append(tokenizer_note)
    lengths, length_report, bad = measure(items, tokenizer, data, max_length)
    problems += bad
    report: dict[str, Any] = {
        "source": source,
        "kind": "recipe" if is_recipe else "file",
        "rows": len(items),
        "format": main[0].format,
        "columns": list(dict.fromkeys(c for part in main for c in part.columns)),
        "bad_rows": len(problems),
        "empty_rows": sum(p.kind == "empty" for p in problems),
        "malformed_rows": sum(p.kind == "malformed" for p in problems),
        "problems": [p.to_json() for p in problems[:MAX_PROBLEMS]],
        **duplicates(items),
        **near_duplicates(items),
        "tokenizer": tokenizer_note if tokenizer is not None else None,
        "max_length": max_length,
        **length_report,
    }
    if main[0].format == "preference":
        report["preference"] = preference_report(items, tokenizer, data, max_length, problems)
    if main[0].format == "classification":
        counts = Counter(item.example.label for item in items)
        report["labels"] = {label: counts.get(label, 0) for label in main[0].labels}
        smallest, largest = min(report["labels"].values(), default=0), max(report["labels"].values(), default=0)
        report["imbalance"] = round(largest / smallest, 2) if smallest else None  # largest / smallest class
        if not smallest:
            notes.append("a label has no rows, so the imbalance ratio is undefined")
    if is_recipe:
        report["splits"] = {name: len(rows) for name, rows in sides.items()}
        report.update(
            leakage(sides, [("train", "validation"), ("train", "test"), ("validation", "test")], training="train")
        )
        if problems:
            notes.append("`finetune train` stops at the first bad row: fix the rows listed before training")
    elif against:
        report["against"] = {"source": against, "rows": len(sides["against"])}
        report.update(leakage(sides, [("file", "against")], training="file"))
    if not items:
        notes.append("no usable rows: fix the bad rows listed above")
    elif plot is not None:
        plot_lengths(lengths, length_report["token_lengths"]["unit"], max_length, plot)
        report["plot"] = str(plot)
    report["notes"] = notes
    return report


def _recipe_sides(source: str) -> tuple[DataSection, ModelSection, list[Loaded], dict[str, list[Item]]]:
    """A recipe's data files, read, and its train/validation/test splits."""
    recipe = load_recipe(source)
    data = recipe.data
    files = {
        name: path
        for name, path in (("train", data.path or data.train), ("validation", data.validation), ("test", data.test))
        if path
    }
    loaded = dict(zip(files, load(list(files.values()), data), strict=False))
    if data.path:  # the same seeded split as training (identical when no row is bad)
        split = split_examples(loaded["train"].items, data.split.validation, data.split.test, data.split.seed)
        sides = dict(zip(("train", "validation", "test"), split, strict=False))
    else:
        sides = {name: loaded[name].items if name in loaded else [] for name in ("train", "validation", "test")}
    return data, recipe.model, list(loaded.values()), sides
