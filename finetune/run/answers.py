"""Greedy answers beside the reference answers in `finetune eval`'s predictions.jsonl (lm task).

A loss says how much better the fine-tune is; the answers show what it says. evaluate.py checks the
options with `new_tokens` before scoring, `pick`s the rows once scored, then calls `add` for the fine-tune
and again, adapter off, for the base (--compare-base).

rows      the first SHOWN (3) scored rows by default, every scored row with --generate, none with
          --no-generate. A row dropped from scoring (does not fit max_length) and a plain-text row (no
          prompt) get no answer.
prompt    the conversation before its last assistant turn, rendered with the training chat template
          (generation.prompt_ids). With max_new_tokens it must fit the context (data.max_length, at most
          the model's positions), as prompt + answer did in training. A longer prompt is cut as
          data.truncation cuts one: `start` keeps its last tokens; `prompt`, `end` and `drop` cut the
          prompt itself as `finetune generate` does (data/truncate.py: earlier exchanges, then the middle of
          the longest user turn), since cutting the end of a prompt would cut where the answer starts.
          A prompt that even cut down does not fit keeps its last tokens.
decoding  greedy, at most max_new_tokens (default train.sample_max_new_tokens, as in samples.jsonl), ends
          at EOS; batches of the eval batch size, left-padded.
keys      `reference` (the gold answer), `generated`, and `base_generated` with --compare-base.
"""

from __future__ import annotations

from typing import Any

from finetune.config import DataSection, Recipe
from finetune.data.read import Example
from finetune.errors import UserError
from finetune.run.generation import fitted_prompt_ids, prompt_ids
from finetune.run.scoring import Progress

SHOWN = 3  # rows answered without --generate: enough to see what the model says, cheap on any set


def new_tokens(task: str, generate: bool | None, max_new_tokens: int | None, recipe: Recipe) -> int:
    """Tokens per answer (the recipe's train.sample_max_new_tokens by default); checked before any scoring."""
    if task != "lm":
        if generate or max_new_tokens is not None:
            hint = "; classification generates with --method generate" if task == "classification" else ""
            raise UserError(f"--generate and --max-new-tokens apply to lm eval, not to {task}{hint}")
        return 0
    tokens = recipe.train.sample_max_new_tokens if max_new_tokens is None else max_new_tokens
    if tokens < 1:
        raise UserError(f"--max-new-tokens must be positive (got {tokens})")
    return tokens


def pick(task: str, examples: list[Example], rows: list[dict[str, Any]], generate: bool | None) -> list[int]:
    """Indices of the rows to answer: the first SHOWN scored rows with a prompt, all of them, or none."""
    if task != "lm" or generate is False:
        return []
    scored = [i for i, (e, row) in enumerate(zip(examples, rows, strict=True)) if "dropped" not in row and _split(e)]
    return scored if generate else scored[:SHOWN]


def add(
    rows: list[dict[str, Any]],
    key: str,
    chosen: list[int],
    examples: list[Example],
    model,
    tokenizer,
    data: DataSection,
    max_new_tokens: int,
    batch_size: int,
    progress: Progress | None = None,
) -> None:
    """Write `reference` and `key` (generated or base_generated) into the chosen rows."""
    if not chosen:
        return
    positions = getattr(model.config, "max_position_embeddings", None) or data.max_length
    context = max(min(data.max_length, positions), max_new_tokens + 16)  # as `finetune generate`
    budget = context - max_new_tokens
    prompts = []
    for i in chosen:
        messages, reference = _split(examples[i])
        rows[i].setdefault("reference", reference)
        prompts.append(fit_prompt(tokenizer, messages, budget, data.truncation))
    for i, text in zip(chosen, greedy(model, tokenizer, prompts, max_new_tokens, batch_size, progress), strict=True):
        rows[i][key] = text


def _split(example: Example) -> tuple[list[dict[str, str]], str] | None:
    """(the prompt messages, the reference answer), or None without a final assistant turn."""
    messages = example.messages or []
    if not messages or messages[-1]["role"] != "assistant":
        return None
    return messages[:-1], messages[-1]["content"]


def fit_prompt(tokenizer, messages: list[dict[str, str]], budget: int, truncation: str) -> list[int]:
    """The prompt's token ids, at most `budget` of them, cut as the module docstring says."""
    ids = prompt_ids(tokenizer, messages)
    if len(ids) <= budget:
        return ids
    if truncation != "start":
        try:
            return fitted_prompt_ids(tokenizer, messages, budget)
        except UserError:
            pass  # the prompt cannot be cut enough (a long system prompt): its last tokens, below
    return ids[-budget:]


def greedy(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int, progress: Progress | None
) -> list[str]:
    """Greedy continuations of token-id prompts, in batches (left padding, masked), each cut at its EOS."""
    import torch

    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    texts = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        for new in out[:, width:].tolist():
            new = new[: new.index(eos)] if eos in new else new  # a finished row is padded after its EOS
            texts.append(tokenizer.decode(new, skip_special_tokens=True))
        if progress:
            progress(len(batch))
    return texts
