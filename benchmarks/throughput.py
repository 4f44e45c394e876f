"""Trained tokens per second: finetune's defaults against a plain TRL SFTTrainer + peft script.

    python benchmarks/throughput.py            # ~4 minutes on 2 CPU cores
    python benchmarks/throughput.py --quick    # a quarter of the rows, to try the script

Both runs train the same randomly initialised Llama (hidden 256, 4 layers, ~3.3M parameters, the
project's 261-token byte-level tokenizer, 4-bit NF4 base + LoRA r=16 on all linear layers, lr 2e-4,
micro-batch 4 x 4 accumulation, gradient checkpointing, fp32 compute) for one epoch over the same
training rows, so both process the same tokens. The rows are the finance Q&A sample with every 8th
answer stretched to ~1,500 bytes: the length mix that makes padded batches wasteful.

  finetune  prepare() + finetune.train.loop.train() with a recipe that sets only the model, the data and epochs: 1
            (on a CPU that means length-grouped batches; flash-attention packing needs a GPU).
  plain     SFTTrainer(peft_config=LoraConfig(...)) on prompt-completion rows, TRL's defaults except
            the shared settings above (bf16 off: finetune computes in fp32 on a CPU), random batches.

Trained tokens are the non-padding tokens fed to the model (TRL's own count, prompt included).
tokens/s divides them by the time spent in optimizer steps (forward, backward, update), measured
by the same callback in both runs; evaluation and checkpointing are left out and the whole
trainer.train() time is printed beside it. Quality: the mean training loss over the second half
of the run and the loss of the final adapters on the same tokenized validation and test rows
(finetune.run.scoring.lm_loss), so a speed-up cannot come from training on less.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
LONG_EVERY, LONG_BYTES = 8, 1500  # every 8th answer stretched to ~1,500 bytes (= tokens, byte-level)
SEED = 42


def build_model(directory: Path) -> None:
    """Random Llama + byte-level tokenizer with finetune's default chat template, seed 0."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetune.data.tokenize import DEFAULT_CHAT_TEMPLATE
    from finetune.model.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE  # both runs render the same text
    config = LlamaConfig(
        **MODEL,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def build_data(path: Path, fraction: float) -> None:
    rows = [json.loads(line) for line in (ROOT / "data" / "finance_qa.jsonl").read_text().splitlines() if line.strip()]
    rows = rows[: int(len(rows) * fraction)]
    for i, row in enumerate(rows):
        if i % LONG_EVERY == LONG_EVERY - 1:
            answer = row["output"]
            while len(answer.encode()) < LONG_BYTES:
                answer += " " + row["output"]
            row["output"] = answer
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def step_timer():
    """A callback adding up the seconds spent inside optimizer steps (not evaluation, not saving); it
    keeps the trained model and the log history at the end, for the quality numbers."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        seconds = 0.0
        model = None
        log: list = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds += time.perf_counter() - self._start

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.model, self.log = model, list(state.log_history)

    return StepTimer()


def run_finetune(model_dir: Path, data: Path, work: Path, packing: str = "auto") -> dict:
    """finetune's own path: prepare() then the training loop, with the step timer as an extra callback."""
    from rich.console import Console

    from finetune.config import validate_recipe
    from finetune.data.read import load_splits
    from finetune.train import loop
    from finetune.train.prepare import prepare

    recipe = validate_recipe(
        {"model": {"name": str(model_dir)}, "data": {"path": str(data), "packing": packing}, "train": {"epochs": 1}}
    )
    prepared = prepare(recipe, load_splits(recipe.data))
    timer = step_timer()
    start = time.perf_counter()
    quiet = Console(file=io.StringIO())
    metrics = loop.train(recipe, work / f"run-{packing}", quiet, prepared, progress=False, callbacks=(timer,))
    wall = time.perf_counter() - start
    return {
        "mode": prepared.batching,
        "model": timer.model,
        "datasets": prepared.datasets,
        "tokens": metrics["throughput"]["train_tokens"],  # non-padding tokens, counted by finetune's trainer
        "step_s": timer.seconds,
        "train_s": metrics["timings"]["train_s"],
        "wall_s": wall,
        "steps": metrics["global_step"],
        "log": timer.log,
    }


def run_plain(model_dir: Path, splits, work: Path, packing: bool = False) -> dict:
    """What a user writes from TRL's docs: prompt-completion rows, a LoraConfig, SFTConfig defaults.

    packing=True (--packed-sdpa) turns on TRL's BFD padding-free packing with sdpa attention, to show
    why finetune does not pack without flash-attention.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    def rows(examples):
        return Dataset.from_list([{"prompt": e.messages[:-1], "completion": e.messages[-1:]} for e in examples])

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quant, dtype=torch.float32, device_map={"": "cpu"}
    )
    args = SFTConfig(
        output_dir=str(work / "plain"),
        num_train_epochs=1,
        learning_rate=2e-4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=SEED,
        packing=packing,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=rows(splits.train),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=lora,
    )
    timer = step_timer()
    trainer.add_callback(timer)
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    return {
        "mode": "packed (sdpa)" if packing else "padded (random batches)",
        "model": trainer.model,
        "tokens": trainer._total_train_tokens,
        "step_s": timer.seconds,
        "train_s": train_s,
        "wall_s": train_s,
        "steps": trainer.state.global_step,
        "log": trainer.state.log_history,
    }


def second_half_loss(log: list[dict], steps: int) -> float:
    """Mean logged training loss over the second half of the steps, weighted by each log's window."""
    total = weight = 0.0
    previous = 0
    for entry in (e for e in log if "loss" in e):
        window = entry["step"] - previous
        if entry["step"] > steps / 2:
            total, weight = total + entry["loss"] * window, weight + window
        previous = entry["step"]
    if not weight:  # fewer steps than TRL's logging_steps: only the run's mean was logged
        return next(e["train_loss"] for e in reversed(log) if "train_loss" in e)
    return total / weight


def held_out_losses(result: dict, datasets: dict) -> dict:
    from finetune.model.loading import keep_cpu_weights_differentiable
    from finetune.run.scoring import lm_loss

    model = result["model"]
    keep_cpu_weights_differentiable(model)  # the same dequantizing path for both (see docs/design.md)
    model.eval()
    return {
        name: lm_loss(model, list(zip(datasets[name]["input_ids"], datasets[name]["labels"], strict=False)), 4)["loss"]
        for name in ("validation", "test")
    }


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {cpu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the rows (a smoke test, ~1 minute)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--packed-sdpa", action="store_true", help="another run: TRL packing with sdpa (+~1 min)")
    parser.add_argument(
        "--padded", action="store_true", help="another run: finetune with data.packing: off (+~1.5 min)"
    )
    options = parser.parse_args()

    import torch

    from finetune.config import DataSection
    from finetune.data.read import load_splits
    from finetune.train.loop import package_versions

    load_before = os.getloadavg()[0]
    if load_before > 0.5:  # two busy processes on 2 cores slow PyTorch's threads down 10-50x
        print(
            f"warning: load average {load_before:.1f}: other processes use the CPU; timings will be off",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="finetune-throughput-") as tmp:
        work = Path(tmp)
        os.environ["FINETUNE_HOME"] = str(work / "home")  # a cold token cache, nothing left behind
        build_model(work / "model")
        build_data(work / "rows.jsonl", 0.25 if options.quick else 1.0)
        splits = load_splits(DataSection(path=str(work / "rows.jsonl")))  # the split finetune makes (seed 42)

        ours = run_finetune(work / "model", work / "rows.jsonl", work)
        plain = run_plain(work / "model", splits, work)
        runs = [("plain TRL + peft", plain), ("finetune defaults", ours)]
        if options.padded:
            runs.append(("finetune, data.packing: off", run_finetune(work / "model", work / "rows.jsonl", work, "off")))
        if options.packed_sdpa:
            runs.append(("plain TRL + peft, packing=True", run_plain(work / "model", splits, work, packing=True)))

        tokenized = ours["datasets"]  # every run is scored on finetune's tokenization of the held-out rows
        results = {}
        for name, result in runs:
            results[name] = {
                "batching": result["mode"],
                "optimizer_steps": result["steps"],
                "trained_tokens": int(result["tokens"]),
                "step_seconds": round(result["step_s"], 1),
                "trainer_train_seconds": round(result["train_s"], 1),
                "tokens_per_s": round(result["tokens"] / result["step_s"], 1),
                "train_loss_second_half": round(second_half_loss(result["log"], result["steps"]), 4),
                **{f"{k}_loss": round(v, 4) for k, v in held_out_losses(result, tokenized).items()},
            }
    a, b = results["finetune defaults"], results["plain TRL + peft"]
    summary = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": round(load_before, 2),
        "versions": package_versions(),
        "rows": splits.sizes(),
        "runs": results,
        "speedup_tokens_per_s": round(a["tokens_per_s"] / b["tokens_per_s"], 2),
        "speedup_trainer_train_time": round(b["trainer_train_seconds"] / a["trainer_train_seconds"], 2),
    }
    print(json.dumps(summary, indent=2))
    print(
        f"\nfinetune {a['tokens_per_s']:.0f} tokens/s ({a['batching']}) vs plain TRL {b['tokens_per_s']:.0f} tokens/s: "
        f"{summary['speedup_tokens_per_s']:.2f}x; validation loss {a['validation_loss']:.4f} vs {b['validation_loss']:.4f}"
    )
    if options.json:
        options.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
