"""Duplicates within the data and train/evaluation leakage: exact (normalised text) and near (MinHash LSH).

Rows are compared on the example's prompt + answer (system prompts excluded: every row shares
them), lower-cased with whitespace collapsed. Near duplicates: word 3-gram shingles; datasketch's
MinHash LSH (128 permutations) finds candidate pairs, then the exact Jaccard similarity of the two
shingle sets decides: at or above NEAR_THRESHOLD the pair is a near duplicate. Short rows (a few
words) rarely reach it: one edited word changes up to three of their shingles.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from finetune.config import DataSection
from finetune.data.read import Example

NEAR_THRESHOLD = 0.8  # Jaccard similarity of word 3-gram sets
LSH_THRESHOLD = 0.7  # the index retrieves a little below NEAR_THRESHOLD so that few true pairs are missed
NUM_PERM = 128  # MinHash permutations: estimate error ~0.035 at Jaccard 0.8
SHINGLE_WORDS = 3
SHOW = 10  # matches and duplicate groups listed (all are counted)
PREVIEW = 120  # characters of text shown per example


@dataclass
class Item:
    """One usable row: its example, the text it is compared on, and that text normalised (the key)."""

    example: Example
    text: str
    key: str = ""

    def __post_init__(self) -> None:
        self.key = self.key or normalise(self.text)


# --------------------------------------------------------------------------------------------
# Text used for duplicates


def example_text(example: Example) -> str:
    """Prompt + answer (every non-system turn), or the raw text."""
    if example.text is not None:
        return example.text
    return "\n".join(m["content"] for m in example.messages or [] if m["role"] != "system")


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def exact_leaks(train: list[Example], evaluation: list[Example]) -> int:
    """How many evaluation examples also occur in train (after normalising case and whitespace)."""
    seen = {normalise(example_text(example)) for example in train}
    return sum(normalise(example_text(example)) in seen for example in evaluation)


def make_item(example: Example, row: dict[str, Any], fmt: str, data: DataSection) -> Item:
    if fmt == "classification":  # compare the text and label, not the prompt template every row shares
        return Item(example, f"{row.get(data.classification.text_column)}\n{example.label}")
    return Item(example, example_text(example))


# --------------------------------------------------------------------------------------------
# Duplicates and leakage


def _shingles(key: str) -> set[str]:
    words = re.findall(r"\w+", key)
    if len(words) < SHINGLE_WORDS:
        return {" ".join(words) or key}
    return {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


class NearIndex:
    """MinHash LSH over one side's rows; `best` returns its most similar row at or above NEAR_THRESHOLD."""

    def __init__(self, items: list[Item]) -> None:
        from datasketch import MinHash, MinHashLSH

        self.items = items
        self.shingles = [_shingles(item.key) for item in items]
        self.lsh = MinHashLSH(threshold=LSH_THRESHOLD, num_perm=NUM_PERM)
        self.MinHash = MinHash
        self.hashes = MinHash.bulk([[s.encode() for s in sh] for sh in self.shingles], num_perm=NUM_PERM)
        with self.lsh.insertion_session() as session:
            for index, minhash in enumerate(self.hashes):
                session.insert(index, minhash)

    def similar(self, item: Item, position: int | None = None) -> list[tuple[float, int]]:
        """(exact Jaccard, index) of the indexed rows LSH proposes for `item`, at or above NEAR_THRESHOLD;
        `position`: `item` is the index's own row there (its MinHash is reused, itself included)."""
        if position is not None:
            shingles, minhash = self.shingles[position], self.hashes[position]
        else:
            shingles = _shingles(item.key)
            minhash = self.MinHash(num_perm=NUM_PERM)
            minhash.update_batch([s.encode() for s in shingles])
        scored = [
            (len(shingles & self.shingles[i]) / len(shingles | self.shingles[i]), i) for i in self.lsh.query(minhash)
        ]
        return [(sim, i) for sim, i in scored if sim >= NEAR_THRESHOLD]

    def best(self, item: Item) -> tuple[float, Item] | None:
        top = max(self.similar(item), default=None)
        return (top[0], self.items[top[1]]) if top else None


def _show(item: Item) -> dict[str, str]:
    text = item.text.replace("\n", " ")
    return {"location": item.example.source, "text": text[:PREVIEW] + ("…" if len(text) > PREVIEW else "")}


def duplicates(items: list[Item]) -> dict[str, Any]:
    groups = defaultdict(list)
    for item in items:
        groups[item.key].append(item)
    repeated = sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)
    return {
        "duplicates": sum(len(g) - 1 for g in repeated),  # rows that repeat an earlier row
        "duplicate_groups": [
            {"count": len(g), "locations": [i.example.source for i in g][:SHOW], "text": _show(g[0])["text"]}
            for g in repeated[:SHOW]
        ],
    }


def near_duplicates(items: list[Item]) -> dict[str, Any]:
    """Rows that nearly repeat an earlier row of the same data (Jaccard >= NEAR_THRESHOLD, not exact).

    The within-file counterpart of `duplicates`: a row counts once, against its most similar earlier
    row (the earliest of equals); a row that exactly repeats an earlier one is left to `duplicates`."""
    index = NearIndex(items)
    first = {}  # key -> index of its first row
    for i, item in enumerate(items):
        first.setdefault(item.key, i)
    pairs = []
    for i, item in enumerate(items):
        if first[item.key] != i:
            continue  # an exact repeat: counted in `duplicates`
        earlier = [(-sim, j) for sim, j in index.similar(item, i) if j < i]  # j < i: a different key
        if earlier:
            sim, j = min(earlier)
            pairs.append((-sim, items[j], item))
    pairs.sort(key=lambda pair: -pair[0])
    return {
        "near_duplicate_rows": len(pairs),
        "near_duplicate_pairs": [
            {"similarity": round(sim, 3), "first": _located(a), "second": _located(b)} for sim, a, b in pairs[:SHOW]
        ],
    }


def _located(item: Item) -> dict[str, Any]:
    """_show plus the line number ("file.jsonl:12" -> 12; None for a JSON array or Parquet row index)."""
    name, _, line = item.example.source.rpartition(":")
    return {**_show(item), "line": int(line) if name and line.isdigit() else None}


def compare(
    train_name: str, train: list[Item], eval_name: str, evaluation: list[Item], index: NearIndex
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Exact and near duplicates of `evaluation` rows in `train`: the counts, and every match."""
    keys = {item.key: item for item in train}
    matches = []
    for item in evaluation:
        if item.key in keys:
            matches.append((1.0, True, keys[item.key], item))
        elif (found := index.best(item)) is not None:
            matches.append((found[0], False, found[1], item))
    exact = sum(m[1] for m in matches)
    pair = {"train": train_name, "evaluation": eval_name, "exact": exact, "near": len(matches) - exact}
    shown = [
        {
            "similarity": round(sim, 3),
            "exact": is_exact,
            "train_side": train_name,
            "evaluation_side": eval_name,
            "train": _show(a),
            "evaluation": _show(b),
        }
        for sim, is_exact, a, b in matches
    ]
    return pair, shown


def leakage(sides: dict[str, list[Item]], pairs: list[tuple[str, str]], training: str) -> dict[str, Any]:
    """`leaked`/`near_duplicates` count the evaluation rows found in the `training` side; pairs list each check."""
    indexes = {name: NearIndex(sides[name]) for name in dict.fromkeys(a for a, _ in pairs)}
    results, matches = [], []
    for a, b in pairs:
        pair, shown = compare(a, sides[a], b, sides[b], indexes[a])
        results.append(pair)
        matches += shown
    ours = [p for p in results if p["train"] == training]
    matches.sort(key=lambda m: -m["similarity"])
    return {
        "leaked": sum(p["exact"] for p in ours),
        "near_duplicates": sum(p["near"] for p in ours),
        "leakage": {
            "method": f"MinHash LSH ({NUM_PERM} permutations) on word {SHINGLE_WORDS}-gram shingles, "
            f"confirmed by exact Jaccard >= {NEAR_THRESHOLD}",
            "threshold": NEAR_THRESHOLD,
            "pairs": results,
            "worst": matches[:SHOW],
        },
    }
