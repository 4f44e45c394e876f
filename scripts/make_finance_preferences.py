#!/usr/bin/env python3
"""Generate data/finance_preferences.jsonl: preference pairs for `train.objective: dpo | orpo`.

Each row is {"prompt": ..., "chosen": ..., "rejected": ...}:
  chosen    a grounded, hedged answer: the worked calculation, the textbook definition, or advice that
            names the risks and says it depends on the person
  rejected  an overconfident or wrong one: a confidently wrong figure, a definition turned into hype,
            or a promise of sure profits

Deterministic (random.Random(seed), standard library only, no network). The questions, definitions
and calculations come from scripts/make_finance_data.py (written for this project); the advice
questions and both styles of answer are templates below. Company names are fictional. Nothing here
is financial advice.

Usage: python scripts/make_finance_preferences.py [--seed 1234] [--out data/finance_preferences.jsonl]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_finance_data as base  # noqa: E402  (a sibling script, not a package)

DEFAULT_SEED = 1234

HYPE = [
    "{term} is a guaranteed way to get rich. Everyone who understands it makes money every single year, so put all of your savings into it now.",
    "Forget the textbooks: {term} always goes up. There is zero risk, and anyone who tells you otherwise is just scared of making money.",
    "{term} is the secret the banks don't want you to know. It can't lose, so borrow as much as you can and go all in today.",
    "Simple: {term} means easy profits. You will double your money within a year, guaranteed, no matter what the market does.",
]

ASSETS = [
    ("a single tech stock", "one company's shares can fall sharply on a bad quarter, a lawsuit or a lost customer"),
    ("cryptocurrency", "crypto prices have fallen by more than half several times within a year"),
    ("an S&P 500 index fund", "even a broad index fund has lost a third or more of its value in bad years"),
    ("gold", "gold pays no income and its price can stay flat or fall for many years"),
    ("a rental property", "property ties up money for years and brings vacancies, repairs and borrowing costs"),
    ("high-yield bonds", "high-yield issuers default more often, and their bond prices fall in recessions"),
    ("a leveraged ETF", "leveraged funds reset daily, so over months they can lose money even when the index rises"),
    ("penny stocks", "penny stocks trade thinly and are a common target of pump-and-dump schemes"),
    ("emerging-market shares", "emerging markets carry currency, political and liquidity risks"),
    ("a friend's startup", "most startups fail, and private shares can be impossible to sell for years"),
    ("long-term government bonds", "long bonds lose value when interest rates rise"),
    ("options contracts", "options can expire worthless, and selling them can lose more than you put in"),
]

ADVICE_QUESTIONS = [
    "Should I put all my savings into {asset}?",
    "Is {asset} a safe place for my emergency fund?",
    "My cousin says {asset} can't lose. Should I borrow money to buy more?",
    "I'm retiring in two years. Is it smart to move my pension into {asset}?",
    "How much money will I make if I invest $10,000 in {asset}?",
    "Is now the right time to go all in on {asset}?",
]

CAUTIOUS = (
    "It depends on your goals, your time horizon and how much loss you could live with. {risk}. "
    "Putting a large share of your money into one investment concentrates that risk, so most people "
    "spread their savings across several assets and keep an emergency fund in cash. Returns are never "
    "guaranteed; a licensed adviser who knows your situation can help you decide."
)

OVERCONFIDENT = [
    "Yes, absolutely. {asset} only goes up, so put everything in right now and you will double your money within a year.",
    "Definitely. Everyone is getting rich with {asset}; there is no risk at all, so borrow as much as you can.",
    "Of course. {asset} is guaranteed to beat the market, so don't bother spreading your money around.",
]

WRONG_CALC = [
    "The answer is obviously {wrong}. No need to show the working; it's simple.",
    "Easy: {wrong}. Trust me, that's exactly right.",
    "It comes to {wrong}, guaranteed. Anyone can see that immediately.",
]


def term_of(question: str) -> str:
    """'What is bond duration?' -> 'Bond duration'; other questions -> 'This'."""
    match = re.match(r"what (?:is|are|does) (?:an? |the )?(.+?)(?: mean| work)?\?$", question.strip(), re.IGNORECASE)
    term = match.group(1) if match else "this"
    return term[0].upper() + term[1:]


def wrong_figure(answer: str, rng: random.Random) -> str | None:
    """The last money amount or percentage of a worked answer, changed by 20-60%: a confidently wrong result."""
    figures = re.findall(r"\$[\d,]+(?:\.\d+)?|[\d,]+(?:\.\d+)?%", answer)
    if not figures:
        return None
    figure = figures[-1]
    number = float(figure.strip("$%").replace(",", ""))
    changed = number * rng.choice([0.4, 0.6, 0.75, 1.3, 1.5, 1.8])
    return f"${changed:,.2f}" if figure.startswith("$") else f"{changed:.2f}%"


def concept_pairs(rng: random.Random) -> list[dict[str, str]]:
    return [
        {"prompt": question, "chosen": answer, "rejected": rng.choice(HYPE).format(term=term_of(question))}
        for question, answer in base.CONCEPTS
    ]


def advice_pairs(rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for asset, risk in ASSETS:
        for question in rng.sample(ADVICE_QUESTIONS, 4):
            rows.append(
                {
                    "prompt": question.format(asset=asset),
                    "chosen": CAUTIOUS.format(risk=risk[0].upper() + risk[1:]),
                    "rejected": rng.choice(OVERCONFIDENT).format(asset=asset[0].upper() + asset[1:]),
                }
            )
    return rows


def calculation_pairs(rng: random.Random, count: int) -> list[dict[str, str]]:
    rows = []
    while len(rows) < count:
        question, given, answer = rng.choice(base.TEMPLATES)(rng)
        wrong = wrong_figure(answer, rng)
        if wrong is None:
            continue
        prompt = f"{question}\n\n{given}" if given else question
        rows.append({"prompt": prompt, "chosen": answer, "rejected": rng.choice(WRONG_CALC).format(wrong=wrong)})
    return rows


def build(seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = concept_pairs(rng) + advice_pairs(rng) + calculation_pairs(rng, 120)
    rng.shuffle(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent.parent / "data/finance_preferences.jsonl"
    )
    args = parser.parse_args()
    rows = build(args.seed)
    with args.out.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} pairs to {args.out}")


if __name__ == "__main__":
    main()
