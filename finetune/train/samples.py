"""See the model learn: greedy answers to a few fixed validation prompts at every validation.

Rows go to RUN/samples.jsonl ({step, prompt, reference, generation}), one line per prompt, appended at
each validation (step 0 is the base model); to TensorBoard as text when train.report_to names it, and
to W&B as a table when it names wandb. Only rank 0 generates; under FSDP (sharded weights) there are no
samples. Costs train.sample_prompts x sample_max_new_tokens decoding steps per validation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetune.data.read import Example
from finetune.run.answers import fit_prompt
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
        self.table_rows: list[list[Any]] = []  # every W&B sample row so far

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

        # the prompt gets what the answer leaves of max_length, and at least half of it (long samples run past it)
        budget = max(self.max_length - self.max_new_tokens, self.max_length // 2, 1)
        # cut as eval's answers cut a prompt; one that cannot be cut enough keeps its last tokens
        ids = torch.tensor([fit_prompt(self.tokenizer, messages, budget, "prompt")], device=model.device)
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
        """Into the experiment trackers the recipe names, through the writers their trainer callbacks own
        (both exist by the base's validation at step 0: the callbacks set them up at the first log)."""
        callbacks = list(getattr(self.handler, "callbacks", []))
        if "tensorboard" in self.trackers:
            writer = next((c.tb_writer for c in callbacks if getattr(c, "tb_writer", None) is not None), None)
            if writer is not None:  # the text summary, rendered as markdown in TensorBoard's Text tab
                writer.add_text("samples", "\n\n---\n\n".join(map(_markdown, rows)), step)
                writer.flush()
        if "wandb" in self.trackers:
            import wandb

            if wandb.run is not None:
                # one table growing over the run (a logged table is immutable: log a new one each time),
                # on the trainer's step axis (WandbCallback defines train/global_step as every metric's x)
                self.table_rows += [[r[c] for c in TABLE_COLUMNS] for r in rows]
                table = wandb.Table(columns=list(TABLE_COLUMNS), data=list(self.table_rows))
                wandb.log({"samples": table, "train/global_step": step})


TABLE_COLUMNS = ("step", "prompt", "reference", "generation")


def _markdown(row: dict[str, Any]) -> str:
    """One sample as markdown, each text verbatim in a fenced block (newlines kept, nothing interpreted)."""

    def block(text: str) -> str:
        longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
        fence = "`" * max(3, longest + 1)  # longer than any backtick run inside, so the text cannot close it
        return f"{fence}\n{text}\n{fence}"

    return "\n\n".join(
        f"**{name}**\n\n{block(text)}"
        for name, text in (
            ("prompt", row["prompt"][-300:]),
            ("reference", row["reference"][:300]),
            ("model", row["generation"]),
        )
    )
