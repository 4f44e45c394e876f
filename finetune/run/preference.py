"""Preference pairs scored: does the model prefer the chosen answer, and by how much against its reference?

    preference_accuracy  share of pairs whose chosen answer has the higher mean per-token log-likelihood
                         (a per-token mean, so a longer answer is not penalised for its length)
    reward_accuracy      share of pairs with a positive implicit DPO reward margin
    reward_margin        mean of beta * [(log p(chosen) - log p_ref(chosen)) - (log p(rejected) - log p_ref(rejected))],
                         log p summed over the answer tokens, as DPO defines its reward

The reference is what DPO trained against: the base with the adapter switched off, or the adapter a
run started from (model.adapter, loaded as "ref"). A pair's tokens are exactly what training used
(data/preference.py), so `finetune eval` and the run's own test score agree.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from finetune.data.preference import encode_pair
from finetune.data.rows import Example
from finetune.data.tokenize import IGNORE
from finetune.run.scoring import Progress, batches, sequence_logprobs

REFERENCE_ADAPTER = "ref"  # the adapter name TRL's DPOTrainer uses as its reference


@contextlib.contextmanager
def reference(model):
    """The reference model, in place: the "ref" adapter when loaded, else no adapter at all."""
    if REFERENCE_ADAPTER not in getattr(model, "peft_config", {}):
        with model.disable_adapter():
            yield
        return
    active = model.active_adapter
    model.set_adapter(REFERENCE_ADAPTER)
    try:
        yield
    finally:
        model.set_adapter(active)


def load_reference(model, start_adapter: str | None) -> str:
    """Load the adapter a DPO run started from (model.adapter) as "ref", as in training; returns what
    the reference is. An adapter no longer on disk leaves the base as the reference, and says so."""
    if start_adapter and (Path(start_adapter) / "adapter_config.json").is_file():
        model.load_adapter(start_adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        return start_adapter
    return "base" if not start_adapter else f"base ({start_adapter} is gone)"


def pair_logprobs(model, pairs: list[tuple[list[int], list[int], list[int]]], batch_size: int, progress=None):
    """Per pair {chosen_logp, chosen_tokens, rejected_logp, rejected_tokens}: log-likelihoods summed over
    each answer's tokens (the EOS included)."""
    sequences = []
    for prompt, chosen, rejected in pairs:
        for answer in (chosen, rejected):
            sequences.append((prompt + answer, [IGNORE] * len(prompt) + answer))
    sums, counts = [], []
    for batch in batches(sequences, 2 * batch_size):  # both sides of batch_size pairs
        s, c = sequence_logprobs(model, batch)
        sums += s
        counts += c
        if progress:
            progress(len(batch) // 2)
    return [
        {
            "chosen_logp": sums[i],
            "chosen_tokens": counts[i],
            "rejected_logp": sums[i + 1],
            "rejected_tokens": counts[i + 1],
        }
        for i in range(0, len(sums), 2)
    ]


def preference_metrics(policy: list[dict], ref: list[dict] | None, beta: float) -> dict[str, Any]:
    n = max(len(policy), 1)
    result: dict[str, Any] = {"pairs": len(policy), "preference_accuracy": sum(map(_prefers_chosen, policy)) / n}
    if ref is not None:
        margins = [
            beta * ((p["chosen_logp"] - r["chosen_logp"]) - (p["rejected_logp"] - r["rejected_logp"]))
            for p, r in zip(policy, ref, strict=True)
        ]
        result["reward_accuracy"] = sum(m > 0 for m in margins) / n
        result["reward_margin"] = sum(margins) / n
    return result


def _prefers_chosen(row: dict) -> bool:
    return row["chosen_logp"] / max(row["chosen_tokens"], 1) > row["rejected_logp"] / max(row["rejected_tokens"], 1)


def encode_pairs_for_scoring(examples: list[Example], tokenizer, max_length: int, truncation: str):
    """(token triples of the pairs that fit, one flag per example: did it fit?)."""
    triples, fits = [], []
    for example in examples:
        pair = encode_pair(example, tokenizer, max_length, truncation)
        fits.append(not pair.dropped)
        if not pair.dropped:
            triples.append((pair.prompt_ids, pair.chosen_ids, pair.rejected_ids))
    return triples, fits


def score_pairs(
    model, triples, beta: float, batch_size: int, compare_base: bool = False, progress: Progress | None = None
) -> tuple[dict[str, Any], list[dict]]:
    """(metrics, one row per pair): the model, its reference, and with compare_base the base alone."""
    policy = pair_logprobs(model, triples, batch_size, progress)
    with reference(model):
        ref = pair_logprobs(model, triples, batch_size, progress)
    metrics = preference_metrics(policy, ref, beta)
    rows = [{**p, **{f"ref_{k}": v for k, v in r.items()}} for p, r in zip(policy, ref, strict=True)]
    if compare_base:
        if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):  # the reference is an SFT adapter, not the base
            with model.disable_adapter():
                base = pair_logprobs(model, triples, batch_size, progress)
        else:
            base = ref
        metrics["base_preference_accuracy"] = preference_metrics(base, None, beta)["preference_accuracy"]
        for row, b in zip(rows, base, strict=True):
            row.update({f"base_{k}": v for k, v in b.items()})
    return metrics, rows
