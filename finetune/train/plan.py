"""The shape of a run: how many steps, when to validate. Pure arithmetic over the recipe and split sizes.

plan = make_plan(recipe, train_rows=..., validation_rows=..., test_rows=..., world_size=...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from finetune.config import Recipe


@dataclass
class Plan:
    """The shape of the run, computed from the recipe and the split sizes alone (no weights loaded)."""

    train_rows: int  # sequences per epoch: examples, or packed sequences when packing
    validation_rows: int
    test_rows: int
    world_size: int
    effective_batch: int  # examples per optimizer step, all processes together
    steps_per_epoch: int
    total_steps: int
    eval_steps: int  # evaluation and checkpoint interval: the same number, so they always line up


def make_plan(recipe: Recipe, *, train_rows: int, validation_rows: int, test_rows: int, world_size: int = 1) -> Plan:
    t = recipe.train
    effective = t.micro_batch_size * t.gradient_accumulation * world_size
    batches_per_rank = math.ceil(train_rows / (t.micro_batch_size * world_size))
    steps_per_epoch = max(1, math.ceil(batches_per_rank / t.gradient_accumulation))
    total = t.max_steps or max(1, math.ceil(steps_per_epoch * t.epochs))
    # auto: about five validations per epoch, enough for early stopping to react within an epoch
    eval_steps = t.eval_steps if isinstance(t.eval_steps, int) else max(1, round(steps_per_epoch / 5))
    return Plan(
        train_rows=train_rows,
        validation_rows=validation_rows,
        test_rows=test_rows,
        world_size=world_size,
        effective_batch=effective,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        eval_steps=min(eval_steps, total),
    )


def warnings_for(recipe: Recipe) -> list[str]:
    notes = []
    if recipe.train.epochs > 3 and recipe.train.max_steps is None:
        notes.append(f"train.epochs is {recipe.train.epochs:g}: above 3 epochs LoRA fine-tunes usually overfit")
    return notes
