"""Everything a run needs before any weight is loaded: model path, tokenizer, tokenized splits, plan, notes.

    prepared = prepare(recipe, splits, world_size)

One path, used by `finetune train` (and its `--dry-run`), `vram-estimate --measure`, the
throughput benchmark and the tests, so what they show is what training does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from finetune.config import Recipe
from finetune.data import batching
from finetune.data.leakage import exact_leaks
from finetune.data.read import Splits
from finetune.data.token_cache import cached_encode
from finetune.data.tokenize import EncodingReport, check_special_tokens, ensure_chat_template, special_token_notes
from finetune.errors import UserError
from finetune.model.loading import load_tokenizer, resolve_model_path
from finetune.train.plan import Plan, make_plan, warnings_for
from finetune.train.trainer import check_trackers

SPLITS = ("train", "validation", "test")


@dataclass
class Prepared:
    splits: Splits  # the rows as read (train/validation/test) with the data hash
    model_path: str  # what from_pretrained loads: a local directory or a hub id
    tokenizer: Any
    datasets: dict[str, Any]  # split -> datasets.Dataset with input_ids/labels, or None when the split is empty
    reports: dict[str, EncodingReport]  # split -> truncation and drop counts
    plan: Plan
    batching: str  # "packed" | "grouped" | "padded" (data/batching.py)
    notes: list[str] = field(default_factory=list)  # for the user: special tokens, leaks, truncation, settings
    seconds: float = 0.0  # wall time of prepare(): tokenizer load and tokenization (cache hits are fast)


def prepare(recipe: Recipe, splits: Splits, world_size: int = 1, model_path: str | None = None) -> Prepared:
    """Resolve the model, load and check the tokenizer, tokenize every split (cached) and plan the steps.

    `model_path`: resolve_model_path's answer when the caller already has it (a hub id costs a request)."""
    started = time.perf_counter()
    mode = batching.batching_mode(recipe)  # data.packing: on with an unsuitable kernel fails here
    check_trackers(recipe.train.report_to)
    model_path = model_path or resolve_model_path(recipe.model)
    tokenizer = load_tokenizer(model_path, recipe.model)
    notes = check_special_tokens(tokenizer)
    ensure_chat_template(tokenizer, recipe.data.chat_template)
    datasets, reports = tokenize_splits(splits, tokenizer, recipe)
    # Packing merges several examples into one sequence: count steps over what the trainer will see.
    # The rows actually trained (after drops), so `epochs: 1` is exactly one pass.
    train_rows = (
        batching.packed_sequences(datasets["train"], recipe.data.max_length)
        if mode == "packed"
        else len(datasets["train"])
    )
    plan = make_plan(
        recipe,
        train_rows=train_rows,
        validation_rows=len(datasets["validation"]) if datasets["validation"] is not None else 0,
        test_rows=len(datasets["test"]) if datasets["test"] is not None else 0,
        world_size=world_size,
    )
    notes += leak_notes(splits) + warnings_for(recipe) + truncation_notes(reports, recipe.data.max_length)
    notes += special_token_notes(tokenizer, {name: getattr(splits, name) for name in SPLITS})
    return Prepared(splits, model_path, tokenizer, datasets, reports, plan, mode, notes, time.perf_counter() - started)


def tokenize_splits(splits: Splits, tokenizer, recipe: Recipe) -> tuple[dict[str, Any], dict[str, EncodingReport]]:
    import datasets as hf_datasets

    out, reports = {}, {}
    for name in SPLITS:
        examples = getattr(splits, name)
        if not examples:
            out[name] = None
            continue
        # from $FINETUNE_HOME/token-cache when this split was tokenised the same way before
        data = recipe.data
        columns, report = cached_encode(
            examples, tokenizer, data.max_length, data.completion_only_loss, splits.data_hash, data.truncation
        )
        fitted = next(iter(columns.values()))  # input_ids, or prompt_ids for preference pairs
        if not fitted and data.truncation == "prompt":
            raise UserError(
                f"data: no {name} example fits in data.max_length={data.max_length} even with its prompt cut "
                "(the answers alone are longer); raise data.max_length"
            )
        if not fitted:
            raise UserError(
                f"data: every {name} example is longer than data.max_length={data.max_length} before its answer "
                f"ends (data.truncation: {data.truncation}); raise data.max_length, or set data.truncation: prompt"
            )
        out[name] = hf_datasets.Dataset.from_dict(columns)
        reports[name] = report
    return out, reports


def leak_notes(splits: Splits) -> list[str]:
    """Exact duplicates (case and whitespace normalised) of training rows in the held-out splits."""
    notes = []
    for name in ("validation", "test"):
        leaked = exact_leaks(splits.train, getattr(splits, name))
        if leaked:
            notes.append(
                f"{leaked} {name} examples also occur in the training split, so the {name} score is optimistic; "
                "see `finetune data inspect RECIPE`"
            )
    return notes


def truncation_notes(reports: dict[str, EncodingReport], max_length: int) -> list[str]:
    notes = []
    for name, report in reports.items():
        if report.prompts_cut:
            notes.append(
                f"{report.prompts_cut} of {report.examples} {name} examples exceed data.max_length={max_length}: "
                f"their prompts were cut by {report.prompt_tokens_cut} tokens in all, every answer kept"
            )
        elif report.truncated and report.truncated > report.dropped_too_long:
            notes.append(
                f"{report.truncated - report.dropped_too_long} of {report.examples} {name} examples exceed "
                f"data.max_length={max_length} and were truncated"
            )
        if report.dropped_too_long:
            notes.append(
                f"{report.dropped_too_long} {name} examples do not fit in data.max_length={max_length} "
                "(their answer alone, or data.truncation: drop) and were dropped"
            )
        if report.dropped_no_target:
            notes.append(
                f"{report.dropped_no_target} {name} examples had no answer token left after truncation and were dropped"
            )
        notes += empty_answer_notes(name, report)
    return notes


def empty_answer_notes(name: str, report: EncodingReport) -> list[str]:
    """Examples whose assistant answer is empty are trained (a split of nothing else is refused by load_splits)."""
    if not report.empty_answers:
        return []
    one = report.empty_answers == 1
    where = f" (e.g. {report.empty_answer_sources[0]})" if report.empty_answer_sources else ""
    if name == "train":
        effect = ("it teaches" if one else "they teach") + " the model to answer with nothing"
    else:
        effect = ("it rewards" if one else "they reward") + f" answering with nothing in the {name} loss"
    examples = f"{report.empty_answers} {name} example{'' if one else 's'} {'has' if one else 'have'}"
    return [f"{examples} an empty assistant answer{where}; {effect}"]
