"""Trained tokens per second: finetune's defaults against a plain TRL SFTTrainer + peft script.

    python benchmarks/throughput.py                      # finance Q&A, micro-batch 4 x 4: ~4 minutes on 2 cores
    python benchmarks/throughput.py --quick              # a quarter of the rows, to try the script
    python benchmarks/throughput.py --cases finance long --accumulation 4 1   # both cases, both batchings

Both runs train the same randomly initialised Llama (hidden 256, 4 layers, ~3.3M parameters, the
project's 261-token byte-level tokenizer, 4-bit NF4 base + LoRA r=16 on all linear layers, lr 2e-4,
micro-batch 4 x 4 accumulation, fp32 compute) for one epoch over the same
training rows, so both process the same tokens. The rows are the finance Q&A sample with every 8th
answer stretched to ~900 bytes: the length mix that makes padded batches wasteful.

  finetune  prepare() + finetune.train.loop.train() with a recipe that sets only the model, the data and epochs: 1
            (on a CPU that means length-grouped batches; flash-attention packing needs a GPU; gradient
            checkpointing auto, off here: the model fits without it; --checkpointed adds a run with it on).
  plain     SFTTrainer(peft_config=LoraConfig(...)) on prompt-completion rows, TRL's defaults except
            the shared settings above (bf16 off: finetune computes in fp32 on a CPU), random batches,
            gradient checkpointing on (TRL's default).

The long-documents case (--cases long, benchmarks/long_documents.py): 120 made-up report extracts of
~400 to ~10,000 characters (= tokens, byte-level), tables then a question, with a one-sentence answer,
data.max_length 2048 in both runs (TRL's max_length: 2048); longer rows are cut by each tool's own rule
(finetune cuts the prompt's middle and keeps the answer, TRL cuts the end, answer included).
--accumulation 1 runs micro-batch 4 x 1 (one micro-batch per optimizer step) in both runs.

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
# Every 8th answer stretched to ~900 bytes (= tokens, byte-level), and every row capped at ROW_BYTES of text so
# that it fits max_length 1024 with the chat template: both runs then train the same rows and tokens (finetune
# would drop a row whose answer alone does not fit, TRL would cut its end).
LONG_EVERY, LONG_BYTES, ROW_BYTES = 8, 900, 950
SEED = 42
LONG_ROWS, LONG_SEED, LONG_MAX_LENGTH = 120, 7, 2048  # the long-documents case


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
        room = ROW_BYTES - len(row["instruction"].encode()) - len(row.get("input", "").encode())
        row["output"] = row["output"].encode()[:room].decode(errors="ignore")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def step_timer():
    """A callback adding up the seconds spent inside optimizer steps (not evaluation, not saving); it
    keeps the trained model and the log history at the end, for the quality numbers."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        seconds = 0.0
        cpu_seconds = 0.0  # process CPU time in the same steps: less sensitive to other processes' load
        model = None
        log: list = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._start, self._cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds += time.perf_counter() - self._start
            self.cpu_seconds += time.process_time() - self._cpu

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.model, self.log = model, list(state.log_history)

    return StepTimer()


def run_finetune(
    model_dir: Path,
    data: Path,
    work: Path,
    packing: str = "auto",
    accumulation: int = 4,
    max_length: int | None = None,
    checkpointing: bool | None = None,
) -> dict:
    """finetune's own path: prepare() then the training loop, with the step timer as an extra callback.
    Only what the case sets is in the recipe (gradient_accumulation 4 and max_length 1024 are the defaults;
    `checkpointing` None leaves train.gradient_checkpointing at auto)."""
    from rich.console import Console

    from finetune.config import validate_recipe
    from finetune.data.read import load_splits
    from finetune.train import loop
    from finetune.train.prepare import prepare

    data_section = {"path": str(data), "packing": packing, **({"max_length": max_length} if max_length else {})}
    train = {"epochs": 1, **({"gradient_accumulation": accumulation} if accumulation != 4 else {})}
    if checkpointing is not None:
        train["gradient_checkpointing"] = checkpointing
    recipe = validate_recipe({"model": {"name": str(model_dir)}, "data": data_section, "train": train})
    prepared = prepare(recipe, load_splits(recipe.data))
    timer = step_timer()
    start = time.perf_counter()
    quiet = Console(file=io.StringIO())
    run = work / f"run-{packing}-{accumulation}-{checkpointing}-{data.stem}"
    metrics = loop.train(recipe, run, quiet, prepared, progress=False, callbacks=(timer,))
    wall = time.perf_counter() - start
    return {
        "mode": prepared.batching + (", checkpointing" if metrics["gradient_checkpointing"] else ""),
        "model": timer.model,
        "datasets": prepared.datasets,
        "tokens": metrics["throughput"]["train_tokens"],  # non-padding tokens, counted by finetune's trainer
        "step_s": timer.seconds,
        "cpu_s": timer.cpu_seconds,
        "train_s": metrics["timings"]["train_s"],
        "wall_s": wall,
        "steps": metrics["global_step"],
        "log": timer.log,
        "over_max_length": prepared.reports["train"].prompts_cut,  # rows whose prompt was cut to keep the answer
        "rows": len(prepared.datasets["train"]),  # training rows after tokenization (a row is dropped only when
        # its answer alone does not fit)
    }


def run_plain(
    model_dir: Path,
    splits,
    work: Path,
    packing: bool = False,
    accumulation: int = 4,
    max_length: int = 1024,
    tokenized=None,
) -> dict:
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
        gradient_accumulation_steps=accumulation,
        max_length=max_length,  # TRL's default is 1024, finetune's data.max_length too
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
        # `tokenized`: finetune's own training rows (input_ids + labels, prompts already cut to fit), so that
        # both runs train the very same tokens and only the batching differs
        train_dataset=tokenized if tokenized is not None else rows(splits.train),
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
        "rows": len(trainer.train_dataset),  # TRL drops rows whose answer its truncation removed entirely
        "tokens": trainer._total_train_tokens,
        "step_s": timer.seconds,
        "cpu_s": timer.cpu_seconds,
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


def measure_case(case: str, accumulation: int, model: Path, work: Path, options) -> dict:
    """Both runs (and the optional extra ones) of one case at micro-batch 4 x `accumulation`."""
    from finetune.config import DataSection
    from finetune.data.read import load_splits

    sys.path.insert(0, str(Path(__file__).parent))
    import long_documents

    data = work / f"{case}.jsonl"
    if case == "finance":
        build_data(data, 0.25 if options.quick else 1.0)
        max_length = None  # finetune's default, 1024, as TRL's
    else:
        long_documents.write(data, LONG_ROWS // 4 if options.quick else LONG_ROWS, LONG_SEED)
        max_length = LONG_MAX_LENGTH
    splits = load_splits(DataSection(path=str(data)))  # the split finetune makes (seed 42)
    ours = run_finetune(model, data, work, accumulation=accumulation, max_length=max_length)
    plain = run_plain(model, splits, work, accumulation=accumulation, max_length=max_length or 1024)
    runs = [("plain TRL + peft", plain), ("finetune defaults", ours)]
    if options.padded:
        padded = run_finetune(model, data, work, "off", accumulation=accumulation, max_length=max_length)
        runs.append(("finetune, data.packing: off", padded))
    if options.checkpointed:
        checkpointed = run_finetune(
            model, data, work, accumulation=accumulation, max_length=max_length, checkpointing=True
        )
        runs.append(("finetune, gradient_checkpointing: true", checkpointed))
    if options.packed_sdpa:
        packed = run_plain(model, splits, work, packing=True, accumulation=accumulation, max_length=max_length or 1024)
        runs.append(("plain TRL + peft, packing=True", packed))
    if options.same_rows:
        same = run_plain(
            model,
            splits,
            work,
            accumulation=accumulation,
            max_length=max_length or 1024,
            tokenized=ours["datasets"]["train"],
        )
        runs.append(("plain TRL + peft, finetune's rows", same))

    tokenized = ours["datasets"]  # every run is scored on finetune's tokenization of the held-out rows
    results = {}
    for name, result in runs:
        results[name] = {
            "batching": result["mode"],
            "optimizer_steps": result["steps"],
            "training_rows": result["rows"],
            "trained_tokens": int(result["tokens"]),
            "step_seconds": round(result["step_s"], 1),
            "step_cpu_seconds": round(result["cpu_s"], 1),
            "trainer_train_seconds": round(result["train_s"], 1),
            "tokens_per_s": round(result["tokens"] / result["step_s"], 1),
            "tokens_per_cpu_s": round(result["tokens"] / result["cpu_s"], 1),
            "train_loss_second_half": round(second_half_loss(result["log"], result["steps"]), 4),
            **{f"{k}_loss": round(v, 4) for k, v in held_out_losses(result, tokenized).items()},
        }
    a, b = results["finetune defaults"], results["plain TRL + peft"]
    return {
        "micro_batch": 4,
        "gradient_accumulation": accumulation,
        "max_length": max_length or 1024,
        "rows": splits.sizes(),
        "train_rows_over_max_length": ours["over_max_length"],  # finetune cut their prompts, TRL their answers
        "runs": results,
        "speedup_tokens_per_s": round(a["tokens_per_s"] / b["tokens_per_s"], 2),
        "speedup_tokens_per_cpu_s": round(a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"], 2),
        "speedup_trainer_train_time": round(b["trainer_train_seconds"] / a["trainer_train_seconds"], 2),
        **same_rows_speedup(a, results.get("plain TRL + peft, finetune's rows")),
    }


def same_rows_speedup(ours: dict, same: dict | None) -> dict:
    if same is None:
        return {}
    return {
        "speedup_same_rows_tokens_per_s": round(ours["tokens_per_s"] / same["tokens_per_s"], 2),
        "speedup_same_rows_tokens_per_cpu_s": round(ours["tokens_per_cpu_s"] / same["tokens_per_cpu_s"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the rows (a smoke test)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument(
        "--cases", nargs="+", choices=("finance", "long"), default=["finance"], help="finance Q&A, long documents"
    )
    parser.add_argument(
        "--accumulation", nargs="+", type=int, default=[4], help="gradient accumulation steps (micro-batch 4)"
    )
    parser.add_argument("--packed-sdpa", action="store_true", help="another run: TRL packing with sdpa (+~1 min)")
    parser.add_argument(
        "--same-rows", action="store_true", help="another run: plain TRL on finetune's tokenized rows (same tokens)"
    )
    parser.add_argument(
        "--padded", action="store_true", help="another run: finetune with data.packing: off (+~1.5 min)"
    )
    parser.add_argument(
        "--checkpointed",
        action="store_true",
        help="another run: finetune with train.gradient_checkpointing: true (TRL's default; auto turns it off here)",
    )
    options = parser.parse_args()

    import torch

    from finetune.train.loop import package_versions

    load_before = os.getloadavg()[0]
    if load_before > 0.5:  # two busy processes on 2 cores slow PyTorch's threads down 10-50x
        print(
            f"warning: load average {load_before:.1f}: other processes use the CPU; timings will be off",
            file=sys.stderr,
        )
    cases = {}
    with tempfile.TemporaryDirectory(prefix="finetune-throughput-") as tmp:
        work = Path(tmp)
        os.environ["FINETUNE_HOME"] = str(work / "home")  # a cold token cache, nothing left behind
        build_model(work / "model")
        for case in options.cases:
            for accumulation in options.accumulation:
                name = f"{case}, micro-batch 4 x {accumulation}"
                cases[name] = measure_case(case, accumulation, work / "model", work, options)
                print(f"{name}: {json.dumps(cases[name])}", file=sys.stderr, flush=True)
    summary = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "versions": package_versions(),
        "cases": cases,
    }
    print(json.dumps(summary, indent=2))
    for name, case in cases.items():
        a, b = case["runs"]["finetune defaults"], case["runs"]["plain TRL + peft"]
        print(
            f"\n{name}: finetune {a['tokens_per_s']:.0f} tokens/s ({a['batching']}) vs plain TRL "
            f"{b['tokens_per_s']:.0f}: {case['speedup_tokens_per_s']:.2f}x ({case['speedup_tokens_per_cpu_s']:.2f}x "
            f"per CPU second); validation loss {a['validation_loss']:.4f} vs {b['validation_loss']:.4f}"
        )
    if options.json:
        options.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
