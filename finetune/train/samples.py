"""See the model learn: greedy answers to a few fixed validation prompts at every validation.

Rows go to RUN/samples.jsonl ({step, prompt, reference, generation}), one line per prompt, appended at
each validation (step 0 is the base model); to TensorBoard as text when train.report_to names it, and
to W&B as a table when it names wandb. Only rank 0 generates; under FSDP (sharded weights) there are no
samples. Costs train.sample_prompts x sample_max_new_tokens decoding steps per validation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetune.data.read import Example
from finetune.run.generation import fitted_prompt_ids
from finetune.run.run_dir import SAMPLES


def sample_prompts(examples: list[Example], count: int) -> list[tuple[list[dict[str, str]], str]]:
    """(prompt messages, reference answer) of the first `count` conversations (plain text has no prompt)."""
    chosen = []
    for example in examples:
        if len(chosen) == count:
            break
        messages = example.messages or []
        if messages and messages[-1]["role"] == "assistant":
            chosen.append((messages[:-1], messages[-1]["content"]))
    return chosen


class SampleWriter(TrainerCallback):
    def __init__(self, prompts, tokenizer, run: Path, max_new_tokens: int, max_length: int, trackers: list[str]):
        self.handler = None  # the trainer's callback handler, set once the trainer exists (tracker writers)
        self.prompts = prompts
        self.tokenizer = tokenizer
        self.path = run / SAMPLES
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self.trackers = trackers

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not (self.prompts and state.is_world_process_zero and model is not None):
            return
        rows = [
            {
                "step": state.global_step,
                "prompt": messages[-1]["content"],
                "reference": reference,
                "generation": self.generate(model, messages),
            }
            for messages, reference in self.prompts
        ]
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self.report(rows, state.global_step)

    def generate(self, model, messages: list[dict[str, str]]) -> str:
        import torch

        budget = max(1, self.max_length - self.max_new_tokens)
        ids = torch.tensor([fitted_prompt_ids(self.tokenizer, messages, budget)], device=model.device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    eos_token_id=self.tokenizer.eos_token_id,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
        finally:
            model.train(was_training)
        return self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    def report(self, rows: list[dict[str, Any]], step: int) -> None:
        """Into the experiment trackers the recipe names (their callbacks own the writers)."""
        callbacks = list(getattr(self.handler, "callbacks", []))
        if "tensorboard" in self.trackers:
            writer = next((c.tb_writer for c in callbacks if getattr(c, "tb_writer", None) is not None), None)
            if writer is not None:
                text = "\n\n".join(f"**prompt** {r['prompt'][-300:]}\n\n**model** {r['generation']}" for r in rows)
                writer.add_text("samples", text, step)
        if "wandb" in self.trackers:
            import wandb

            if wandb.run is not None:
                columns = ["step", "prompt", "reference", "generation"]
                wandb.log({"samples": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])})
