"""Steady-state training speed and peak memory on a GPU: finetune (hf), finetune (unsloth), plain TRL + peft.

    python benchmarks/gpu_steady_state.py --json out.json            # Llama-3.2-1B shape, seq 1024 and 2048
    python benchmarks/gpu_steady_state.py --profile                  # + torch.profiler's top kernels (hf)
    python benchmarks/gpu_steady_state.py --smoke                    # the tiny model on any machine, to try it

Every cell trains a random-weight model of the catalogue architecture (scripts/random_model.py: speed and
memory depend on the shape, not the weights) in 4-bit NF4 with LoRA r=16 on all linear layers, bf16, micro-batch
4 x 1, on rows of exactly `seq` random tokens, every position trained: no padding, so no batching strategy
matters and what is measured is the model's own forward, backward and update. Each cell runs in a process
of its own (Unsloth patches transformers when imported; peak memory is per process).

  hf       finetune's loading and trainer (finetune.model.loading, finetune.train.trainer): model.kernels auto
           (Liger when installed), gradient checkpointing as the cell says
  unsloth  the same through model.backend: unsloth (skipped when Unsloth is not importable)
  plain    SFTTrainer(peft_config=LoraConfig(...)) with TRL's defaults, gradient checkpointing as the cell says

tokens/s = tokens of the timed steps / their seconds (CUDA synchronised), after --warmup steps; no validation,
no checkpoint in any cell. Peak memory: torch.cuda.max_memory_allocated/reserved over the whole cell. Not run
on a GPU yet (no device was lent when it was written); --smoke runs it on the CPU with the tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
MICRO_BATCH, LORA_R = 4, 16


def timer_callback(warmup: int):
    """Seconds from the end of the warmup steps to the end of the last step, synchronised with the GPU."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        start = end = None

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if state.global_step == warmup:
                self.start = time.perf_counter()
            self.end = time.perf_counter()

    return StepTimer()


def profiler_callback(first: int, steps: int = 3):
    """torch.profiler over `steps` optimizer steps from step `first`: the top kernels by their own CUDA time."""
    import torch
    from transformers import TrainerCallback

    class Profile(TrainerCallback):
        table = ""

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == first:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self.profiler = torch.profiler.profile(activities=activities)
                self.profiler.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == first + steps and hasattr(self, "profiler"):
                self.profiler.__exit__(None, None, None)
                key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
                self.table = self.profiler.key_averages().table(sort_by=key, row_limit=15)

    return Profile()


def run_cell(setup: str, seq: int, checkpointing: bool, model_dir: str, steps: int, warmup: int, profile: bool) -> dict:
    if setup == "unsloth":
        import unsloth  # noqa: F401 - before transformers, which it patches
    import torch
    from datasets import Dataset

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    total = warmup + steps + (3 if profile else 0)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(3, 261, (MICRO_BATCH * total, seq), generator=generator).tolist()  # byte-level ids
    data = Dataset.from_dict({"input_ids": rows, "labels": rows})
    trainer = (plain_trainer if setup == "plain" else finetune_trainer)(
        setup, model_dir, seq, checkpointing, total, data
    )
    timer = timer_callback(warmup)
    trainer.add_callback(timer)
    profiler = profiler_callback(warmup + steps) if profile else None
    if profiler:
        trainer.add_callback(profiler)
    trainer.train()
    seconds = timer.end - timer.start
    result = {
        "setup": setup,
        "seq_len": seq,
        "gradient_checkpointing": checkpointing,
        "timed_steps": steps,
        "tokens_per_s": round(MICRO_BATCH * seq * steps / seconds, 1),
        "kernels": getattr(trainer.model, "finetune_kernels", None),
    }
    if profiler is not None:  # the profiled steps come after the timed ones: the timing is not slowed by it
        result["profile"] = profiler.table
    if cuda:
        result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
        result["gpu"] = torch.cuda.get_device_name()
    return result


def finetune_trainer(backend, model_dir, seq, checkpointing, steps, data):
    """finetune's own model and trainer for a recipe that sets only what the cell sets."""
    import dataclasses

    from transformers import AutoTokenizer

    from finetune.config import validate_recipe
    from finetune.model import loading
    from finetune.model.devices import compute_dtype, device_for_this_process
    from finetune.train.plan import Plan
    from finetune.train.trainer import trainer_class, trainer_config

    recipe = validate_recipe(
        {
            "model": {"name": model_dir, "backend": backend},
            "data": {"path": "unused.jsonl", "max_length": seq},
            "train": {
                "micro_batch_size": MICRO_BATCH,
                "gradient_accumulation": 1,
                "gradient_checkpointing": checkpointing,
            },
        }
    )
    device = device_for_this_process()
    dtype = compute_dtype(recipe.model.dtype, device)
    model = loading.load_for_training(model_dir, recipe, device, dtype, backend)
    plan = Plan(
        len(data),
        0,
        0,
        world_size=1,
        effective_batch=MICRO_BATCH,
        steps_per_epoch=steps,
        total_steps=steps,
        eval_steps=steps,
    )
    args = trainer_config(recipe, plan, Path(tempfile.mkdtemp()), dtype, device)
    args = dataclasses.replace(args, eval_strategy="no", save_strategy="no", load_best_model_at_end=False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return trainer_class("sft")(model=model, args=args, train_dataset=data, processing_class=tokenizer)


def plain_trainer(_, model_dir, seq, checkpointing, steps, data):
    """What a user writes from TRL's docs, as benchmarks/throughput.py's plain run, on a GPU."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=dtype)
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=steps,
        per_device_train_batch_size=MICRO_BATCH,
        max_length=seq,
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=checkpointing,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    lora = LoraConfig(
        r=LORA_R, lora_alpha=2 * LORA_R, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=lora,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="meta-llama/Llama-3.2-1B", help="a catalogue architecture")
    parser.add_argument("--seq", nargs="+", type=int, default=[1024, 2048])
    parser.add_argument("--setups", nargs="+", choices=("hf", "unsloth", "plain"), default=["hf", "unsloth", "plain"])
    parser.add_argument("--checkpointing", nargs="+", choices=("on", "off"), default=["on", "off"])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=5, help="optimizer steps before the timing starts")
    parser.add_argument("--profile", action="store_true", help="torch.profiler's top kernels of the hf cells")
    parser.add_argument("--smoke", action="store_true", help="the tiny model, seq 64, 2 steps: tries the script")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--cell", nargs=4, metavar=("SETUP", "SEQ", "CHECKPOINTING", "MODEL_DIR"), help=argparse.SUPPRESS
    )
    options = parser.parse_args()
    if options.cell:  # one cell, in this process: print its result as the last line
        setup, seq, checkpointing, model_dir = options.cell
        profile = options.profile and setup == "hf"
        cell = run_cell(setup, int(seq), checkpointing == "on", model_dir, options.steps, options.warmup, profile)
        print(json.dumps(cell))
        return

    import importlib.util

    work = Path(tempfile.mkdtemp(prefix="finetune-gpu-bench-"))
    if options.smoke:
        from finetune.model.tiny import tiny_llama_path

        os.environ.setdefault("FINETUNE_HOME", str(work / "home"))
        model_dir, seqs, steps, warmup = str(tiny_llama_path()), [64], 2, 1
    else:
        model_dir, seqs, steps, warmup = str(work / "model"), options.seq, options.steps, options.warmup
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "random_model.py"), options.model, model_dir], check=True
        )
    setups = [s for s in options.setups if s != "unsloth" or importlib.util.find_spec("unsloth")]
    cells = []
    for seq in seqs:
        for setup in setups:
            for checkpointing in options.checkpointing:
                command = [sys.executable, __file__, "--cell", setup, str(seq), checkpointing, model_dir]
                command += ["--steps", str(steps), "--warmup", str(warmup)] + (["--profile"] if options.profile else [])
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    cell = {"setup": setup, "seq_len": seq, "gradient_checkpointing": checkpointing == "on"}
                    cell["error"] = (done.stderr.strip().splitlines() or ["no output"])[-1]
                else:
                    cell = json.loads(done.stdout.strip().splitlines()[-1])
                cells.append(cell)
                print(json.dumps({k: v for k, v in cell.items() if k != "profile"}), flush=True)
    for cell in cells:
        if cell.get("profile"):
            print(
                f"\n== {cell['setup']} seq {cell['seq_len']} checkpointing {cell['gradient_checkpointing']}\n{cell['profile']}"
            )
    if options.json:
        from finetune.train.loop import package_versions

        summary = {
            "date": time.strftime("%Y-%m-%d"),
            "model": options.model,
            "versions": package_versions(),
            "cells": cells,
        }
        options.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
