"""The trainer: recipe -> TRL's config, and TRL's trainer with the hooks finetune needs.

trainer_config(recipe, plan, run, dtype, device)  SFTConfig, DPOConfig or ORPOConfig: evaluation,
                                                  checkpoints, batching, the preference settings
trainer_class(objective)                          SFTTrainer, DPOTrainer or ORPOTrainer + spike-guard
                                                  loss feed + exact resume + our own tokens
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from finetune.config import Recipe
from finetune.data import batching
from finetune.data.tokenize import IGNORE
from finetune.errors import UserError
from finetune.model.devices import fsdp_active
from finetune.train.plan import Plan
from finetune.train.subbatch import SubBatches

# tracker -> packages that provide it (any one will do)
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def check_trackers(trackers: list[str]) -> None:
    """A tracker named in train.report_to must be installed, or the trainer fails after loading the model."""
    for tracker in trackers:
        if not any(importlib.util.find_spec(p) for p in TRACKER_PACKAGES[tracker]):
            raise UserError(f"train.report_to: {tracker} is not installed; pip install {TRACKER_PACKAGES[tracker][0]}")


def check_loss_kernel() -> None:
    """TRL 1.15 computes the SFT loss with a Triton kernel and has no fallback (1.16 adds one in torch):
    without Triton (no CUDA GPU) it would fail at the first step, after loading the model."""
    from importlib.metadata import version

    from trl.trainer import utils

    if getattr(utils, "_ChunkedLogProbFunction", True) is None:
        raise UserError(f"trl {version('trl')} needs Triton (a CUDA GPU) for its SFT loss: pip install 'trl>=1.16'")


def trainer_config(recipe: Recipe, plan: Plan, run: Path, dtype, device):
    """recipe.train + early_stopping (+ preference) -> TRL's config for the recipe's objective."""
    objective = recipe.train.objective
    common = training_arguments(recipe, plan, run, dtype, device)
    if objective == "sft":
        from trl import SFTConfig

        # packed (flash-attention), length-grouped or padded micro-batches: see batching.py
        return SFTConfig(**common, **batching.sft_kwargs(batching.batching_mode(recipe)))
    p = recipe.preference
    if objective == "dpo":
        from trl import DPOConfig

        return DPOConfig(
            **common,
            beta=p.beta,
            loss_type=[p.loss_type],
            precompute_ref_log_probs=p.precompute_ref_log_probs,
            padding_free=False,  # TRL 1.16 has it switched off ("temporarily unavailable")
        )
    return orpo_classes()[1](**common, beta=p.beta)


def training_arguments(recipe: Recipe, plan: Plan, run: Path, dtype, device) -> dict:
    """What every objective shares: the TrainingArguments part of TRL's configs."""
    import torch

    t = recipe.train
    check_trackers(t.report_to)
    if "tensorboard" in t.report_to:  # transformers 5 reads the TensorBoard folder from the environment
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run / "tb")
    return dict(
        output_dir=str(run / "checkpoints"),
        num_train_epochs=t.epochs,
        max_steps=plan.total_steps,
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a fraction of the total steps
        optim=t.optimizer,
        optim_args=f"momentum={t.momentum}" if t.optimizer == "sgd" else None,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        bf16=device.type == "cuda" and dtype == torch.bfloat16,
        fp16=device.type == "cuda" and dtype == torch.float16,
        use_cpu=device.type == "cpu",
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        eval_strategy="steps",
        eval_steps=plan.eval_steps,
        save_strategy="steps",
        save_steps=plan.eval_steps,
        save_total_limit=recipe.output.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=min(t.logging_steps, plan.eval_steps),
        report_to=list(t.report_to) or "none",
        disable_tqdm=True,
        max_length=recipe.data.max_length,  # our data already fits (data/tokenize.py, data/preference.py)
        dataset_num_proc=None,
        ddp_find_unused_parameters=False,
        **fsdp_kwargs(fsdp_active(recipe)),
    )


def orpo_classes():
    """(ORPOTrainer, ORPOConfig): in trl.experimental since TRL 1.x (tested with 1.16)."""
    from importlib.metadata import version

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # we chose it knowingly: no warning per run
    try:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    except ImportError:
        try:
            from trl import ORPOConfig, ORPOTrainer  # TRL < 1.0
        except ImportError as err:
            raise UserError(
                f"train.objective orpo: trl {version('trl')} has no ORPO trainer (tested with trl 1.16, where it is "
                "trl.experimental.orpo); pip install 'trl>=1.16,<2' or use train.objective: dpo"
            ) from err
    return ORPOTrainer, ORPOConfig


def fsdp_kwargs(enabled: bool) -> dict:
    """FSDP over the decoder layers, version 1: its flat parameters keep bitsandbytes' packed 4-bit
    weights intact (FSDP2 turns Params4bit into plain tensors, accelerate#3874). Transformers adds
    peft's wrap policy (each LoRA layer in a unit of its own: they stay fp32) and the quant-storage
    mixed precision (update_fsdp_plugin_peft)."""
    if not enabled:
        return {}
    return {
        "fsdp": True,
        "fsdp_config": {"version": 1, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "use_orig_params": False},
    }


def trainer_class(objective: str = "sft"):
    """TRL's trainer for the objective, with finetune's hooks (FinetuneHooks) in front of it."""
    if objective == "sft":
        from trl import SFTTrainer

        # SubBatches: padded micro-batches without padding or mask on one CPU process (train/subbatch.py)
        return type("FinetuneTrainer", (FinetuneHooks, SubBatches, SFTTrainer), {})
    if objective == "dpo":
        from trl import DPOTrainer

        class FinetuneDPOTrainer(FinetuneHooks, DPOTrainer):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                return dataset  # already prompt_ids/chosen_ids/rejected_ids (data/preference.py)

        return FinetuneDPOTrainer
    return orpo_trainer_class()


class FinetuneHooks:
    """What finetune adds to TRL's trainers: the spike guard's loss feed, a token count, exact resume."""

    spike_guard = None
    trained_tokens = 0  # non-padding tokens this process trained on since it started (a tensor once counted)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # The trainer would call peft's `load_adapter`, which rebuilds the adapter and (peft 0.21)
        # changes the next gradients by ~2e-3 relative although every weight is equal. Loading the
        # weights into the adapter already in memory makes a resumed run match an uninterrupted one.
        # Under FSDP each rank holds shards: the trainer's own FSDP loader places them.
        if self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(Path(resume_from_checkpoint) / "adapter_model.safetensors")
        result = set_peft_model_state_dict(model or self.model, weights)
        if result.unexpected_keys:
            raise UserError(f"{resume_from_checkpoint}: the adapter does not match this recipe's LoRA settings")

    def training_step(self, model, inputs, num_items_in_batch=None):
        # Counted here rather than read from TRL's num_tokens: Unsloth's trainer does not log it, and
        # after a resume it includes the tokens of the interrupted process. Stays on the device: no sync.
        self.trained_tokens += count_tokens(inputs)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.spike_guard is not None:
            self.spike_guard.observe_loss(loss)
        return loss


def count_tokens(inputs: dict):
    """Non-padding tokens of a batch (a device tensor, or an int for a packed batch)."""
    masks = [
        inputs[key] for key in ("attention_mask", "chosen_attention_mask", "rejected_attention_mask") if key in inputs
    ]
    if masks:
        return sum(mask.sum() for mask in masks)
    return inputs["input_ids"].numel()  # packed: no padding


def orpo_trainer_class():
    """ORPOTrainer fed our tokens, with the NLL term over the chosen answer only."""
    import torch

    ORPOTrainer, _ = orpo_classes()

    class FinetuneORPOTrainer(FinetuneHooks, ORPOTrainer):
        def tokenize_row(self, feature, model=None):
            # Our prompt_ids/chosen_ids/rejected_ids -> the columns ORPO collates; labels mask the prompt.
            prompt = feature["prompt_ids"]
            row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
            for side in ("chosen", "rejected"):
                answer = feature[f"{side}_ids"]
                row[f"{side}_input_ids"] = prompt + answer
                row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
                row[f"{side}_labels"] = [IGNORE] * len(prompt) + answer
            return row

        def concatenated_forward(self, model, batch):
            out = super().concatenated_forward(model, batch)
            # TRL's ORPO takes its NLL term over the prompt and the answer; finetune trains answers only
            # (as SFT does and the ORPO paper states): the same term over the chosen answer's tokens.
            chosen_logits = out[2]  # [batch, length - 1, vocab]: position t predicts token t + 1
            labels = batch["chosen_labels"][:, 1:]
            labels = torch.nn.functional.pad(labels, (0, chosen_logits.shape[1] - labels.shape[1]), value=IGNORE)
            nll = torch.nn.functional.cross_entropy(
                chosen_logits.flatten(0, 1), labels.flatten().to(chosen_logits.device), ignore_index=IGNORE
            )
            return (*out[:4], nll, *out[5:])

    return FinetuneORPOTrainer
