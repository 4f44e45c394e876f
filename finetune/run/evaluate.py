"""`finetune eval`: pick the examples, score the fine-tune (and the base), write RUN/eval/.

examples  the run's own test split, recreated from its recipe and seed, or --data FILE
task      lm (loss/perplexity on answer tokens) or classification (label ranking or generation)
output    eval/metrics.json, eval/predictions.jsonl, eval/confusion.png (classification)
answers   lm: greedy answers beside the references for a few rows, or all (answers.py)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from finetune.data.read import Example, load_examples, load_splits
from finetune.data.tokenize import IGNORE, encode
from finetune.errors import UserError
from finetune.run import answers, card, preference, run_dir, scoring
from finetune.run.inference import TrainedRun, load_model


def choose_examples(run: TrainedRun, data: str | None, split: str, task: str, labels: list[str] | None):
    """(examples, task, labels, source description)."""
    section = run.recipe.data.model_copy(deep=True)
    if labels:
        section.classification.labels = labels
    if task == "classification":
        section.format = "classification"
    if data:
        examples, fmt, found_labels = load_examples(data, section)
        source = data
    else:
        if split not in ("train", "validation", "test"):
            raise UserError(f"--split must be train, validation or test (got {split!r})")
        splits = load_splits(section)
        examples, fmt, found_labels = getattr(splits, split), splits.format, splits.labels
        source = f"{split} split of {run.path / 'recipe.yaml'}"
        if not examples:
            raise UserError(f"{run.path}: the run has no {split} split; pass --data FILE or --split validation")
    if task == "auto":
        task = {"classification": "classification", "preference": "preference"}.get(fmt, "lm")
    if (task == "preference") != (fmt == "preference"):
        raise UserError(f"--task {task} does not fit {fmt} data; preference pairs are scored with --task auto")
    if task == "classification":
        labels = labels or found_labels
        if not labels:  # rows whose label is outside the set were already refused by the data loader
            raise UserError("classification needs a label set: use the classification format or pass --labels a,b,c")
    return examples, task, labels or [], source


def evaluate_run(
    run: TrainedRun,
    *,
    data: str | None,
    split: str,
    task: str,
    labels: list[str] | None,
    compare_base: bool,
    limit: int | None,
    batch_size: int | None,
    method: str,
    out_dir: Path,
    console: Console,
    progress: bool = True,
    generate: bool | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:

    examples, task, labels, source = choose_examples(run, data, split, task, labels)
    new_tokens = answers.new_tokens(task, generate, max_new_tokens, run.recipe)  # lm: greedy answers' length
    if limit is not None:
        if limit <= 0:
            raise UserError(f"--limit must be positive (got {limit})")
        examples = examples[:limit]
    batch_size = batch_size or run.recipe.train.eval_batch_size or run.recipe.train.micro_batch_size
    if batch_size <= 0:
        raise UserError(f"--batch-size must be positive (got {batch_size})")
    max_length = run.recipe.data.max_length
    model, tokenizer = load_model(run)
    if task == "preference":
        results, rows = _score_preferences(run, model, tokenizer, examples, batch_size, compare_base, console, progress)
        results["source"] = source
        _finish(run, out_dir, results, rows, labels)
        return results

    def score(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        with _progress_bar(console, name, len(examples), progress) as advance:
            start = time.perf_counter()
            if task == "lm":
                data = run.recipe.data  # the training run's truncation rule: the same tokens as its test score
                encoded = [
                    encode(e, tokenizer, max_length, data.completion_only_loss, data.truncation) for e in examples
                ]
                fits = [not x.dropped and set(x.labels) != {IGNORE} for x in encoded]
                usable = [(x.input_ids, x.labels) for x, ok in zip(encoded, fits, strict=True) if ok]
                result = scoring.lm_loss(model, usable, batch_size, advance)
                result["dropped_too_long"] = len(examples) - len(usable)
                result["prompts_cut"] = sum(x.prompt_tokens_cut > 0 for x in encoded)
                scored = iter(result.pop("per_example"))  # one row per example: its own loss and token count
                rows = [
                    {"input": _prompt_text(e), **(next(scored) if ok else {"dropped": "does not fit max_length"})}
                    for e, ok in zip(examples, fits, strict=True)
                ]
            else:
                result, rows = _classify(model, tokenizer, examples, labels, max_length, batch_size, method, advance)
            result["seconds"] = round(time.perf_counter() - start, 3)
            result["examples_per_s"] = round(len(examples) / max(result["seconds"], 1e-9), 2)
        return result, rows

    finetuned, rows = score("fine-tuned")
    chosen = answers.pick(task, examples, rows, generate)

    def answer(name: str, key: str) -> None:  # lm: greedy answers beside the references (answers.py)
        with _progress_bar(console, name, len(chosen), progress and bool(chosen), "generating") as advance:
            answers.add(rows, key, chosen, examples, model, tokenizer, run.recipe.data, new_tokens, batch_size, advance)

    answer("fine-tuned", "generated")
    unmatched = finetuned.get("unmatched", 0)
    if unmatched > len(examples) / 5:
        console.print(
            f"[yellow]warning:[/] {unmatched} of {len(examples)} generated answers name no label (shown as "
            "(other)): the model has not learned to answer with a label name; see the `generated` column of "
            "predictions.jsonl, or score with --method rank (the default), which needs no exact wording"
        )
    results: dict[str, Any] = {"task": task, "source": source, "examples": len(examples), "finetuned": finetuned}
    if task == "classification":
        results["method"] = method
    elif task == "lm":
        results["answers"] = {"rows": len(chosen), "max_new_tokens": new_tokens}  # greedy, in predictions.jsonl
    if compare_base:
        with model.disable_adapter():
            base, base_rows = score("base")
            answer("base", "base_generated")
        results["base"] = base
        for row, base_row in zip(rows, base_rows, strict=True):
            if task == "lm":
                row["base_loss"] = base_row.get("loss")
            else:
                row["base_prediction"] = base_row.get("prediction")
    _finish(run, out_dir, results, rows, labels)
    return results


def _finish(run: TrainedRun, out_dir: Path, results: dict[str, Any], rows: list[dict[str, Any]], labels) -> None:
    _write(out_dir, results, rows, labels)
    if out_dir.resolve() == (run.path / "eval").resolve():  # the card reads RUN/eval: keep it current
        card.write_card(run.path, run.recipe, run.metrics, run.path / run_dir.ADAPTER)


def _score_preferences(run: TrainedRun, model, tokenizer, examples, batch_size, compare_base, console, progress):
    """DPO/ORPO runs: preference and reward accuracy, reward margin (run/preference.py)."""
    data, beta = run.recipe.data, run.recipe.preference.beta
    triples, fits = preference.encode_pairs_for_scoring(examples, tokenizer, data.max_length, data.truncation)
    if not triples:
        raise UserError(
            f"no pair fits data.max_length={data.max_length} (data.truncation: {data.truncation}); nothing to score"
        )
    reference = preference.load_reference(model, run.recipe.model.adapter)
    own_reference = preference.REFERENCE_ADAPTER in model.peft_config  # then --compare-base is a third pass
    passes = 3 if compare_base and own_reference else 2
    with _progress_bar(console, "pairs", passes * len(triples), progress) as advance:
        start = time.perf_counter()
        scores, scored = preference.score_pairs(model, triples, beta, batch_size, compare_base, advance)
    tuned = {k: v for k, v in scores.items() if k != "base_preference_accuracy"}
    tuned["seconds"] = round(time.perf_counter() - start, 3)
    tuned["dropped_too_long"] = len(examples) - len(triples)
    results: dict[str, Any] = {"task": "preference", "examples": len(examples), "reference": reference}
    results["finetuned"] = tuned
    if compare_base:
        results["base"] = {"preference_accuracy": scores["base_preference_accuracy"]}
    pairs = iter(scored)
    rows = [
        {"input": _prompt_text(e), **(next(pairs) if ok else {"dropped": "does not fit max_length"})}
        for e, ok in zip(examples, fits, strict=True)
    ]
    return results, rows


def _classify(model, tokenizer, examples: list[Example], labels, max_length, batch_size, method, advance):
    gold = [e.label or (e.messages or [{}])[-1].get("content", "") for e in examples]
    generated: list[str] = []
    if method == "rank":
        scores = scoring.rank_labels(model, tokenizer, examples, labels, max_length, batch_size, advance)
        predicted = [max(labels, key=lambda label, s=s: s[label]) for s in scores]
    elif method == "generate":
        scores = [{} for _ in examples]
        predicted, generated = scoring.generate_labels(model, tokenizer, examples, labels, batch_size, advance)
    else:
        raise UserError(f"--method must be rank or generate (got {method!r})")
    result = scoring.classification_metrics(gold, predicted, labels)
    if method == "generate":
        result["unmatched"] = predicted.count("(other)")  # generated text that names no label
    rows = [
        {"input": _prompt_text(e), "label": g, "prediction": p, **({"scores": s} if s else {})}
        for e, g, p, s in zip(examples, gold, predicted, scores, strict=True)
    ]
    for row, text in zip(rows, generated, strict=False):
        row["generated"] = text
    return result, rows


def _prompt_text(example: Example) -> str:
    if example.text is not None:
        return example.text
    return next((m["content"] for m in reversed(example.messages[:-1]) if m["role"] == "user"), "")


def _write(out_dir: Path, results: dict[str, Any], rows: list[dict[str, Any]], labels: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir.write_atomic(out_dir / "predictions.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    if results["task"] == "classification":
        scoring.plot_confusion(results["finetuned"]["confusion_matrix"], labels, out_dir / "confusion.png")
    run_dir.write_json(out_dir / "metrics.json", results)


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:.1f} ex/s")


class _progress_bar:
    """A rich progress bar with throughput, as a context manager yielding an `advance(n)` callback."""

    def __init__(self, console: Console, name: str, total: int, enabled: bool, verb: str = "scoring"):
        self.progress = Progress(
            TextColumn(f"[bold]{verb} {name}"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )
        self.total = total

    def __enter__(self):
        self.progress.start()
        task = self.progress.add_task("eval", total=self.total)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc):
        self.progress.stop()
        return False
