"""Long financial documents for the throughput benchmark: made up by a seeded generator, not real data.

    python benchmarks/long_documents.py out.jsonl --rows 120 --seed 7

Each row is one chat exchange: the user turn is a report of a fictional company (an opening line, then
tables: income statement, balance sheet, segments, quarters, ... with made-up figures) followed by a
question about one figure; the assistant's answer is one short sentence computed from the table. The
report's length is drawn log-uniformly between MIN_CHARS and MAX_CHARS characters, so most rows are a
few hundred to a few thousand characters and some reach ~10,000: the length mix of filings and report
extracts, where a padded batch is mostly padding. Standard library only; the same seed gives the same
file byte for byte.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

MIN_CHARS, MAX_CHARS = 300, 10_000
YEARS = ("FY2022", "FY2023", "FY2024", "FY2025")
TABLES = {
    "Income statement": (
        "Revenue",
        "Cost of goods sold",
        "Gross profit",
        "Research and development",
        "Selling, general and administrative",
        "Operating income",
        "Interest expense",
        "Income tax",
        "Net income",
    ),
    "Balance sheet": (
        "Cash and equivalents",
        "Accounts receivable",
        "Inventory",
        "Property and equipment",
        "Total assets",
        "Accounts payable",
        "Long-term debt",
        "Total liabilities",
        "Shareholders' equity",
    ),
    "Cash flow": (
        "Operating cash flow",
        "Capital expenditure",
        "Free cash flow",
        "Dividends paid",
        "Share repurchases",
    ),
    "Segments": ("Retail revenue", "Wholesale revenue", "Services revenue", "Licensing revenue"),
    "Regions": ("North revenue", "South revenue", "East revenue", "West revenue", "Online revenue"),
    "Headcount": ("Employees", "Contractors", "Stores", "Warehouses"),
}
SYLLABLES = ("al", "bra", "cor", "del", "ex", "fin", "gra", "hol", "ix", "jun", "kel", "lum", "mar", "nor", "ost")
SUFFIXES = ("Holdings", "Industries", "Group", "Partners", "Systems", "Foods", "Logistics", "Materials")


def company(rng: random.Random) -> str:
    name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
    return f"{name} {rng.choice(SUFFIXES)}"


def table(rng: random.Random, title: str, items: tuple[str, ...], years: tuple[str, ...]) -> tuple[str, dict]:
    """A markdown table in thousands of dollars (units for Headcount) and its figures."""
    unit = "units" if title.startswith("Headcount") else "$ thousands"
    figures = {}
    lines = [f"{title} ({unit})", "| Line item | " + " | ".join(years) + " |", "|---" * (len(years) + 1) + "|"]
    for item in items:
        value = rng.randint(200, 90_000)
        row = []
        for year in years:
            value = max(1, round(value * rng.uniform(0.85, 1.25)))
            figures[(title, item, year)] = value
            row.append(f"{value:,}")
        lines.append(f"| {item} | " + " | ".join(row) + " |")
    return "\n".join(lines), figures


def question(rng: random.Random, figures: dict, who: str) -> tuple[str, str]:
    title, item, year = rng.choice(sorted(figures))
    value = figures[(title, item, year)]
    unit = "" if title.startswith("Headcount") else "$"
    scale = "" if title.startswith("Headcount") else " thousand"
    years = [y for (t, i, y) in figures if (t, i) == (title, item)]
    if len(years) > 1 and rng.random() < 0.5:
        first, last = years[0], years[-1]
        a, b = figures[(title, item, first)], figures[(title, item, last)]
        change = 100 * (b - a) / a
        return (
            f"By what percentage did {who}'s {item.lower()} change from {first} to {last}?",
            f"{item} went from {unit}{a:,}{scale} to {unit}{b:,}{scale}, a change of {change:+.1f}%.",
        )
    return f"What was {who}'s {item.lower()} in {year}?", f"{item} in {year} was {unit}{value:,}{scale}."


def periods(rng: random.Random) -> tuple[str, tuple[str, ...]]:
    """Annual columns, or the quarters of one year."""
    if rng.random() < 0.5:
        return "annual", YEARS[-rng.randint(2, len(YEARS)) :]
    year = rng.choice(YEARS)
    return f"quarterly, {year}", tuple(f"Q{q} {year}" for q in range(1, 5))


def document(rng: random.Random) -> dict:
    target = math.exp(rng.uniform(math.log(MIN_CHARS), math.log(MAX_CHARS)))
    who = company(rng)
    parts = [f"{who}: report extract. Figures are unaudited and rounded."]
    figures: dict = {}
    used = set()
    while sum(len(p) + 2 for p in parts) < target and len(used) < len(TABLES) * (1 + len(YEARS)):
        title = rng.choice(list(TABLES))
        scheme, columns = periods(rng)
        if (title, scheme) in used:
            continue
        used.add((title, scheme))
        room = target - sum(len(p) + 2 for p in parts)
        items = TABLES[title][: max(2, min(len(TABLES[title]), int(room / (20 + 10 * len(columns)))))]
        text, found = table(rng, f"{title}, {scheme}", items, columns)
        parts.append(text)
        figures.update(found)
    ask, answer = question(rng, figures, who)
    report = "\n\n".join(parts)
    return {
        "messages": [
            {"role": "user", "content": f"{report}\n\nQuestion: {ask}"},
            {"role": "assistant", "content": answer},
        ]
    }


def write(path: Path, rows: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    docs = [document(rng) for _ in range(rows)]
    path.write_text("".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs), encoding="utf-8")
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=120)
    parser.add_argument("--seed", type=int, default=7)
    options = parser.parse_args()
    docs = write(options.out, options.rows, options.seed)
    chars = sorted(len(doc["messages"][0]["content"]) for doc in docs)
    print(f"{len(docs)} rows, prompt characters min {chars[0]}, median {chars[len(chars) // 2]}, max {chars[-1]}")


if __name__ == "__main__":
    main()
