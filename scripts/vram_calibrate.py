#!/usr/bin/env python
"""Measure peak GPU memory of real QLoRA/LoRA training steps and set it beside finetune.vram's estimate.

    python scripts/vram_calibrate.py --out DIR [--quick] [--dry-run] [--budget-s 270]
    python scripts/vram_calibrate.py --out DIR --rescore OLD/vram_calibration.json   # new formulas, old measurements

Grid: Llama-3.2-1B and Qwen2.5-0.5B architectures (random weights from the built-in catalogue, no network) x
qlora/lora x seq_len 512/2048 x gradient checkpointing on/off x micro-batch 1/4. Each cell loads the model the way
the project does (4-bit NF4 double-quant, compute bf16, from_pretrained of a saved random-weights checkpoint;
prepare_model_for_kbit_training; peft LoRA all-linear r=16), trains 3 optimizer steps with TRL's SFTTrainer (its
fused loss) on random token rows of exactly seq_len tokens, and records torch.cuda.max_memory_allocated /
max_memory_reserved. Cells share one process: between cells every reference is dropped, the cache emptied and
the peak stats reset, and the allocation left over (should be ~0) is subtracted. Writes DIR/vram_calibration.md
and DIR/vram_calibration.json. --dry-run prints the grid's estimates without torch/CUDA. Four extra cells run
transformers' Trainer (the model's own loss over full logits) to check --loss-impl full.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finetune.vram.architectures import load_spec  # noqa: E402
from finetune.vram.catalogue import lookup  # noqa: E402
from finetune.vram.estimator import TrainingSetup, estimate  # noqa: E402

MODELS = ("meta-llama/Llama-3.2-1B", "Qwen/Qwen2.5-0.5B")
GiB = 1024**3


def grid(quick: bool) -> list[dict]:
    cells = []
    for model, method, seq, gc_on, batch in itertools.product(
        MODELS, ("qlora", "lora"), (512, 2048), (True, False), (1, 4)
    ):
        if quick and not (batch == 4 or (seq == 512 and gc_on)):
            continue
        cells.append(
            {"model": model, "method": method, "seq_len": seq, "gradient_checkpointing": gc_on, "batch": batch}
        )
    for model, batch in itertools.product(MODELS, (1, 4)):  # transformers' own loss: materialised fp32 logits
        if not quick or batch == 4:
            cells.append(
                {
                    "model": model,
                    "method": "qlora",
                    "seq_len": 2048,
                    "gradient_checkpointing": True,
                    "batch": batch,
                    "loss_impl": "full",
                }
            )
    # Cheapest first, so a time cap drops the slowest cells.
    return sorted(cells, key=lambda c: (c["batch"] * c["seq_len"], c["gradient_checkpointing"] is False))


def setup_for(cell: dict) -> TrainingSetup:
    return TrainingSetup(
        method=cell["method"],
        lora_r=16,
        lora_targets="all-linear",
        lora_dropout=0.05,
        micro_batch_size=cell["batch"],
        seq_len=cell["seq_len"],
        gradient_checkpointing=cell["gradient_checkpointing"],
        optimizer="adamw_torch",
        dtype="bf16",
        double_quant=True,
        loss_impl=cell.get("loss_impl", "fused"),
        attn_implementation="sdpa",
    )


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# The real thing (CUDA)


def build_checkpoints(tmp: Path) -> dict[str, Path]:
    """Random bf16 weights for each catalogue architecture, saved once (initialised on the GPU: seconds, not minutes)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    paths = {}
    for model_id in MODELS:
        path = tmp / model_id.replace("/", "__")
        config = AutoConfig.for_model(**lookup(model_id))
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(path)
        del model
        torch.cuda.empty_cache()
        paths[model_id] = path
        log(f"saved random {model_id} to {path}")
    return paths


def make_tokenizer():
    """A tiny local tokenizer: the data is pre-tokenized, SFTTrainer only needs pad/eos ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def load_model(path: Path, method: str, gc_on: bool):
    """The project's loading path: bnb NF4 double-quant, compute bf16, k-bit preparation, LoRA all-linear r=16."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = dict(dtype=torch.bfloat16, device_map={"": 0}, attn_implementation="sdpa")
    if method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.config.use_cache = False
    ckpt = {"use_reentrant": False}  # as finetune.modeling.attach_lora
    if method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gc_on, gradient_checkpointing_kwargs=ckpt
        )
    elif gc_on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt)
        model.enable_input_require_grads()
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def run_cell(cell: dict, path: Path, tokenizer, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model = load_model(path, cell["method"], cell["gradient_checkpointing"])
    loaded = torch.cuda.memory_allocated() - baseline
    load_peak = {
        "load_peak_allocated": torch.cuda.max_memory_allocated() - baseline,
        "load_peak_reserved": torch.cuda.max_memory_reserved(),
        "reserved_after_load": torch.cuda.memory_reserved(),
    }
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(3, vocab, (cell["batch"] * 3, cell["seq_len"]), generator=g).tolist()
    data = Dataset.from_dict({"input_ids": rows})
    args = SFTConfig(
        output_dir=str(workdir),
        max_steps=3,
        per_device_train_batch_size=cell["batch"],
        gradient_accumulation_steps=1,
        gradient_checkpointing=cell["gradient_checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=True,
        learning_rate=2e-4,
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        max_length=cell["seq_len"],
        packing=False,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    steps: list[dict] = []

    class PeakPerStep(TrainerCallback):
        def on_step_end(self, *_, **__):
            steps.append(
                {
                    "allocated": torch.cuda.max_memory_allocated() - baseline,
                    "reserved": torch.cuda.max_memory_reserved(),
                }
            )

    if cell.get("loss_impl") == "full":  # plain Trainer: the model's own ForCausalLMLoss over full logits
        from transformers import DataCollatorForLanguageModeling, Trainer

        args.remove_unused_columns = False
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data,
            callbacks=[PeakPerStep()],
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        )
    else:
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[PeakPerStep()]
        )
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.time()
    trainer.train()
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    result = {
        "measured_allocated": torch.cuda.max_memory_allocated() - baseline,
        "measured_reserved": torch.cuda.max_memory_reserved(),
        "measured_loaded": loaded,
        "device_used_end": total - free,
        "reserved_end": torch.cuda.memory_reserved(),
        "per_step": steps,
        "train_seconds": round(time.time() - start, 2),
        "baseline_allocated": baseline,
        **load_peak,
    }
    trainer.accelerator.free_memory()
    del trainer, model
    gc.collect()
    torch.cuda.empty_cache()
    return result


def compare(cell: dict, measured: dict | None) -> dict:
    spec = load_spec(cell["model"])
    est = estimate(spec, setup_for(cell), cell["model"])
    row = {
        **cell,
        "est_allocated": est.peak_allocated_bytes,
        "est_reserved": est.peak_reserved_bytes,
        "est_total": est.total_bytes,
        "est_loaded": sum(v.bytes for k, v in est.components.items() if k.startswith("weights") or k == "lora_params"),
        "components": {k: v.bytes for k, v in est.components.items()},
    }
    if measured:
        row.update(measured)
        row["err_allocated_pct"] = round(100 * (est.peak_allocated_bytes / measured["measured_allocated"] - 1), 1)
        row["err_reserved_pct"] = round(100 * (est.peak_reserved_bytes / measured["measured_reserved"] - 1), 1)
        row["err_loaded_pct"] = round(100 * (row["est_loaded"] / max(measured["measured_loaded"], 1) - 1), 1)
    return row


def markdown(rows: list[dict], header: dict) -> str:
    lines = [
        "# VRAM estimator calibration",
        "",
        *(f"- {k}: {v}" for k, v in header.items()),
        "",
        "Error = estimate / measured - 1 (positive: the estimate is above the measurement).",
        "",
        "| model | method | loss | seq | ckpt | batch | est alloc GiB | meas alloc GiB | err % | est reserved GiB | meas reserved GiB | err % | weights err % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        meas = "measured_allocated" in r
        lines.append(
            f"| {r['model'].split('/')[-1]} | {r['method']} | {r.get('loss_impl', 'fused')} | {r['seq_len']} | {'on' if r['gradient_checkpointing'] else 'off'} "
            f"| {r['batch']} | {r['est_allocated'] / GiB:.2f} | {r['measured_allocated'] / GiB:.2f} | {r['err_allocated_pct']:+.1f} "
            f"| {r['est_reserved'] / GiB:.2f} | {r['measured_reserved'] / GiB:.2f} | {r['err_reserved_pct']:+.1f} | {r['err_loaded_pct']:+.1f} |"
            if meas
            else f"| {r['model'].split('/')[-1]} | {r['method']} | {r.get('loss_impl', 'fused')} | {r['seq_len']} | {'on' if r['gradient_checkpointing'] else 'off'} "
            f"| {r['batch']} | {r['est_allocated'] / GiB:.2f} | - | - | {r['est_reserved'] / GiB:.2f} | - | - | - |"
        )
    errs = [r["err_allocated_pct"] for r in rows if "err_allocated_pct" in r]
    if errs:
        lines += [
            "",
            f"Allocated: median |error| {statistics.median(abs(e) for e in errs):.1f}%, worst underestimate "
            f"{min(errs):+.1f}%, worst overestimate {max(errs):+.1f}% over {len(errs)} cells.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--quick", action="store_true", help="a third of the grid (batch 4, plus short checkpointed runs)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the estimates only; no torch, no GPU")
    parser.add_argument(
        "--rescore", type=Path, help="re-estimate the measurements of an earlier vram_calibration.json (no GPU)"
    )
    parser.add_argument("--budget-s", type=float, default=270, help="stop starting new cells after this many seconds")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cells = grid(args.quick)
    started = time.time()
    header: dict = {"date": datetime.date.today().isoformat(), "cells": len(cells)}
    rows = []
    if args.rescore:
        old = json.loads(args.rescore.read_text())
        header = {**old["header"], "rescored": header["date"]}
        measured_keys = (
            "measured_",
            "device_used_end",
            "reserved_end",
            "per_step",
            "train_seconds",
            "baseline_",
            "load_peak",
            "reserved_after",
        )
        for r in old["rows"]:
            cell = {
                k: r[k]
                for k in ("model", "method", "seq_len", "gradient_checkpointing", "batch", "loss_impl")
                if k in r
            }
            rows.append(compare(cell, {k: v for k, v in r.items() if k.startswith(measured_keys)}))
    elif args.dry_run:
        header["mode"] = "dry run (estimates only)"
        for cell in cells:
            rows.append(compare(cell, None))
            r = rows[-1]
            log(f"{cell} -> allocated {r['est_allocated'] / GiB:.2f} GiB, reserved {r['est_reserved'] / GiB:.2f} GiB")
    else:
        import bitsandbytes
        import peft
        import torch
        import transformers
        import trl

        if not torch.cuda.is_available():
            sys.exit("vram_calibrate: no CUDA device (use --dry-run to print the estimates)")
        header.update(
            gpu=torch.cuda.get_device_name(0),
            torch=torch.__version__,
            cuda=torch.version.cuda,
            transformers=transformers.__version__,
            peft=peft.__version__,
            trl=trl.__version__,
            bitsandbytes=bitsandbytes.__version__,
        )
        with tempfile.TemporaryDirectory() as tmp:
            paths = build_checkpoints(Path(tmp))
            tokenizer = make_tokenizer()
            for i, cell in enumerate(cells):
                if time.time() - started > args.budget_s:
                    log(f"time budget spent: skipping {len(cells) - i} cells")
                    header["skipped"] = len(cells) - i
                    break
                log(f"cell {i + 1}/{len(cells)}: {cell}")
                try:
                    measured = run_cell(cell, paths[cell["model"]], tokenizer, Path(tmp) / "run")
                except torch.cuda.OutOfMemoryError as err:
                    log(f"  OOM: {err}")
                    gc.collect()
                    torch.cuda.empty_cache()
                    continue
                rows.append(compare(cell, measured))
                r = rows[-1]
                log(
                    f"  allocated est {r['est_allocated'] / GiB:.2f} / meas {r['measured_allocated'] / GiB:.2f} GiB "
                    f"({r['err_allocated_pct']:+.1f}%), reserved est {r['est_reserved'] / GiB:.2f} / meas "
                    f"{r['measured_reserved'] / GiB:.2f} GiB ({r['err_reserved_pct']:+.1f}%), {r['train_seconds']} s"
                )
                (args.out / "vram_calibration.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    header["seconds"] = round(time.time() - started, 1)
    (args.out / "vram_calibration.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    (args.out / "vram_calibration.md").write_text(markdown(rows, header))
    print(markdown(rows, header), flush=True)


if __name__ == "__main__":
    main()
