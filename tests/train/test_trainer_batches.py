"""What the trainer really feeds the model: our labels survive SFTTrainer's preparation and collation."""

from pathlib import Path

import torch

from finetune.config import load_recipe
from finetune.data.read import load_splits
from finetune.data.tokenize import IGNORE
from finetune.model import loading
from finetune.train.prepare import prepare
from finetune.train.trainer import trainer_class, trainer_config


def test_collated_batches_keep_the_prompt_masked(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe({"train": {"max_steps": 1}}))
    prepared = prepare(recipe, load_splits(recipe.data))
    tokenizer, datasets = prepared.tokenizer, prepared.datasets
    model = loading.load_for_training(prepared.model_path, recipe, torch.device("cpu"), torch.float32)
    args = trainer_config(recipe, prepared.plan, Path(tmp_path), torch.float32, torch.device("cpu"))
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"],
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assistant = tokenizer("### Assistant:\n", add_special_tokens=False)["input_ids"]
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=False):
        # the answer starts right after the last "### Assistant:\n": everything before it is masked
        start = max(i for i in range(len(ids)) if ids[i : i + len(assistant)] == assistant) + len(assistant)
        assert all(label == IGNORE for label in labels[:start])
        trained = [i for i, label in enumerate(labels) if label != IGNORE]
        assert trained and trained[0] == start
        if trained[-1] < recipe.data.max_length - 1:  # not truncated: the answer ends with a trained EOS
            assert labels[trained[-1]] == tokenizer.eos_token_id
