"""Scores: language-modelling loss/perplexity on answer tokens, and classification by label ranking.

Classification ranks the log-likelihood of each label's answer given the prompt, as
lm-evaluation-harness does for multiple choice: no free-text parsing, and every prediction is a
valid label. The answer is scored exactly as it was trained (the template's assistant turn with its
EOS), so "neutral" is not confused with a prefix of a longer label. `generate_labels` offers free
generation with normalisation for open label sets. Metrics come from scikit-learn.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from finetune.data.read import Example
from finetune.data.tokenize import IGNORE, encode

Progress = Callable[[int], None]  # called with the number of sequences just processed


def batches(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sequence_logprobs(model, batch: list[tuple[list[int], list[int]]]) -> tuple[list[float], list[int]]:
    """Per sequence: sum of log p(label token) over positions whose label is not -100, and their count."""
    import torch

    device = next(model.parameters()).device
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.zeros(len(batch), width, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):  # right padding: positions stay as in training
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    targets = labels[:, 1:].to(device)  # token t is predicted from positions < t
    sums = []
    with torch.no_grad():
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        for row in range(len(batch)):  # one row at a time: fp32 scores of seq x vocab, not batch x seq x vocab
            nll = torch.nn.functional.cross_entropy(
                logits[row, :-1].float(), targets[row], ignore_index=IGNORE, reduction="sum"
            )
            sums.append(-float(nll))
    return sums, (targets != IGNORE).sum(dim=1).tolist()


def lm_loss(
    model, encoded: list[tuple[list[int], list[int]]], batch_size: int, progress: Progress | None = None
) -> dict:
    """Token-weighted mean negative log-likelihood of the answer tokens, and its perplexity; `per_example`
    holds each sequence's own mean loss and answer-token count, in order."""
    total_logprob, total_tokens, per_example = 0.0, 0, []
    for batch in batches(encoded, batch_size):
        sums, counts = sequence_logprobs(model, batch)
        total_logprob += sum(sums)
        total_tokens += sum(counts)
        per_example += [{"loss": -s / max(c, 1), "tokens": c} for s, c in zip(sums, counts, strict=True)]
        if progress:
            progress(len(batch))
    loss = -total_logprob / max(total_tokens, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "tokens": total_tokens,
        "examples": len(encoded),
        "per_example": per_example,
    }


def rank_labels(
    model,
    tokenizer,
    examples: list[Example],
    labels: list[str],
    max_length: int,
    batch_size: int,
    progress: Progress | None = None,
) -> list[dict[str, float]]:
    """For each example, the summed log-likelihood of every label as the assistant's answer."""
    pairs = []
    for example in examples:
        prompt = [m for m in (example.messages or [])][:-1]  # drop the gold answer
        for label in labels:
            candidate = Example(messages=prompt + [{"role": "assistant", "content": label}])
            encoded = encode(candidate, tokenizer, max_length, completion_only_loss=True)
            pairs.append((encoded.input_ids, encoded.labels))
    scores: list[float] = []
    for batch in batches(pairs, batch_size * len(labels)):
        sums, _ = sequence_logprobs(model, batch)
        scores += sums
        if progress:
            progress(len(batch) // len(labels))
    return [dict(zip(labels, scores[i : i + len(labels)], strict=False)) for i in range(0, len(scores), len(labels))]


def normalise(text: str) -> str:
    return re.sub(r"[^\w\s-]", "", text).strip().lower()


def match_label(generated: str, labels: list[str]) -> str:
    """Map free text to a label: exact match after normalisation, else the label it starts with."""
    text = normalise(generated)
    by_norm = {normalise(label): label for label in labels}
    if text in by_norm:
        return by_norm[text]
    for norm, label in sorted(by_norm.items(), key=lambda kv: -len(kv[0])):
        if norm and text.startswith(norm):
            return label
    return "(other)"


def generate_labels(
    model, tokenizer, examples: list[Example], labels: list[str], batch_size: int, progress: Progress | None = None
) -> tuple[list[str], list[str]]:
    """Greedy generation of the answer, normalised and matched to the label set ("(other)" if none):
    (the matched labels, the generated texts)."""
    import torch

    device = next(model.parameters()).device
    longest = max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels)
    tokenizer.padding_side = "left"  # generation continues from the right end
    predictions, generated = [], []
    for batch in batches(examples, batch_size):
        prompts = [
            tokenizer.apply_chat_template(e.messages[:-1], tokenize=False, add_generation_prompt=True) for e in batch
        ]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            out = model.generate(
                **inputs, max_new_tokens=longest + 4, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        predictions += [match_label(text, labels) for text in texts]
        generated += texts
        if progress:
            progress(len(batch))
    return predictions, generated


def classification_metrics(gold: list[str], predicted: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, per-label and macro precision/recall/F1, support and the confusion matrix (rows = gold)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(gold, predicted, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(gold, predicted, labels=labels, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro": {"precision": float(macro[0]), "recall": float(macro[1]), "f1": float(macro[2])},
        "per_label": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=False)
        },
        "labels": labels,
        "confusion_matrix": confusion_matrix(gold, predicted, labels=labels).tolist(),
        "examples": len(gold),
    }


def plot_confusion(matrix: list[list[int]], labels: list[str], path, title: str = "confusion matrix") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 1.2 * len(labels) + 2.5), dpi=110)
    import numpy as np

    ConfusionMatrixDisplay(np.array(matrix), display_labels=labels).plot(ax=ax, colorbar=False, cmap="Blues")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
