#!/usr/bin/env python
"""GGUF types against f16: file size, tensor types, and logits measured by llama.cpp itself.

    python scripts/gguf_quant_check.py meta-llama/Llama-3.2-1B /tmp/gguf-check      # random weights, 1B's shape
    python scripts/gguf_quant_check.py builtin:tiny-llama /tmp/gguf-check-tiny
    python scripts/gguf_quant_check.py /path/to/merged /tmp/gguf-check-real          # a `finetune merge` folder

MODEL is a catalogue id (random weights in that architecture, scripts/random_model.py, with finetune's
byte tokenizer and default chat template), builtin:tiny-llama, or a merged model directory. Each type is
written by finetune's own export (finetune.run.gguf.write_gguf, what `finetune merge --gguf --gguf-type T`
runs on the merged folder), then llama-cpp-python evaluates a few fixed prompts (logits_all) in a
subprocess per file, so a crash in llama.cpp is reported instead of ending the check. Each type's logits
are compared with the f16 file's over every position: max and mean absolute difference, mean KL(f16 || T)
of the next-token distributions, and top-1 agreement; f16 itself is compared with transformers (fp32).

Random weights are not trained weights: their logits are small and nearly flat, so the absolute errors and
the top-1 agreement here say how faithfully each type stores these matrices, not how a trained model's
answers change. Needs the gguf-quant extra (llama-cpp-python) and about 3x the f16 size in WORKDIR.
Prints a markdown table and writes WORKDIR/report.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TYPES = ("f16", "q8_0", "q4_k_m", "q5_k_m", "q6_k")
PROMPTS = [  # fixed, so the numbers are reproducible; the byte tokenizer makes one token per byte
    "What is the difference between a stock and a bond?",
    "Net income was 12.5 million on revenue of 80 million; the net margin is",
    "### User:\nExplain compound interest in one sentence.\n\n### Assistant:\n",
    "EBITDA, free cash flow and working capital",
]


def prepare_model(model: str, workdir: Path) -> Path:
    """A merged-model folder for MODEL: the folder itself, or one built under WORKDIR/model."""
    if Path(model).is_dir():
        return Path(model)
    target = workdir / "model"
    if (target / "config.json").is_file():
        return target  # built by an earlier run of this script
    from transformers import AutoTokenizer

    from finetune.data.tokenize import ensure_chat_template

    if model == "builtin:tiny-llama":
        from finetune.model.tiny import tiny_llama_path

        shutil.copytree(tiny_llama_path(), target)
    else:
        sys.path.insert(0, str(ROOT / "scripts"))
        from random_model import main as build_random  # noqa: PLC0415 - a sibling script

        build_random(model, str(target))
    tokenizer = AutoTokenizer.from_pretrained(target)
    ensure_chat_template(tokenizer, None)  # as `finetune merge` saves it: the template goes into the GGUF
    tokenizer.save_pretrained(target)
    return target


def tensor_summary(path: Path) -> dict:
    """Types of the weight matrices, and how many have rows that do not split into 256-blocks."""
    import gguf

    matrices = [t for t in gguf.GGUFReader(path).tensors if len(t.shape) == 2]
    return {
        "types": dict(Counter(t.tensor_type.name.lower() for t in matrices)),
        "matrices": len(matrices),
        "rows_not_256": sorted({int(t.shape[0]) for t in matrices if int(t.shape[0]) % 256}),
    }


def evaluate(gguf_file: Path, out: Path, extra_bufts: bool) -> dict:
    """In a subprocess: logits of every prompt position; {"ok": bool, "returncode", "stderr_tail"}."""
    cmd = [sys.executable, __file__, "--eval", str(gguf_file), str(out)] + ([] if extra_bufts else ["--no-extra-bufts"])
    done = subprocess.run(cmd, capture_output=True, text=True)
    return {"ok": done.returncode == 0, "returncode": done.returncode, "stderr_tail": done.stderr[-400:]}


def eval_child(gguf_file: str, out: str, extra_bufts: bool) -> None:
    import llama_cpp
    import llama_cpp.llama

    if not extra_bufts:
        # llama.cpp's --no-repack: weights stay in the file's layout, no AMX/AVX repacked copies.
        # llama-cpp-python 0.3.36's Llama() has no argument for it: patch its default model params.
        default = llama_cpp.llama.llama_cpp.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = False
            return p

        llama_cpp.llama.llama_cpp.llama_model_default_params = params
    llm = llama_cpp.Llama(model_path=gguf_file, n_ctx=256, logits_all=True, verbose=False, seed=0)
    arrays = {}
    for i, prompt in enumerate(PROMPTS):
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        llm.reset()
        llm.eval(tokens)
        arrays[f"tokens{i}"] = np.array(tokens)
        arrays[f"logits{i}"] = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    llm.close()
    np.savez(out, **arrays)


def load(npz: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    data = np.load(npz)
    n = len(PROMPTS)
    return [data[f"tokens{i}"] for i in range(n)], [data[f"logits{i}"] for i in range(n)]


def compare(reference: list[np.ndarray], other: list[np.ndarray]) -> dict:
    ref, oth = np.concatenate(reference).astype(np.float64), np.concatenate(other).astype(np.float64)
    diff = np.abs(ref - oth)

    def log_softmax(x):
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(oth)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    return {
        "positions": int(ref.shape[0]),
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "mean_kl": float(kl.mean()),
        "top1_agree": float((ref.argmax(-1) == oth.argmax(-1)).mean()),
    }


def transformers_logits(model_dir: Path, tokens: list[np.ndarray]) -> list[np.ndarray]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        out = [model(torch.tensor([t.tolist()])).logits[0].numpy() for t in tokens]
    del model
    return out


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    import os

    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--types", default=",".join(TYPES), help="comma-separated; f16 is always included")
    parser.add_argument("--no-transformers", action="store_true", help="skip the f16-vs-transformers row")
    args = parser.parse_args()
    from finetune.run.gguf import quant_note, write_gguf

    types = ["f16"] + [t for t in args.types.split(",") if t and t != "f16"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_model(args.model, args.workdir)
    rows = []
    for kind in types:
        path = args.workdir / f"model-{kind}.gguf"
        row = {"type": kind, "write_s": None}  # None: written by an earlier run
        if not path.is_file():
            t0 = time.perf_counter()
            write_gguf(model_dir, path, kind)
            row["write_s"] = round(time.perf_counter() - t0, 1)
        row["bytes"] = path.stat().st_size
        row.update(tensor_summary(path))
        row["note"] = quant_note(path, kind)
        npz, status = args.workdir / f"logits-{kind}.npz", args.workdir / f"eval-{kind}.json"
        if npz.is_file() and status.is_file():  # measured by an earlier run on the same files
            row.update(json.loads(status.read_text(encoding="utf-8")))
        else:
            runs = {"eval": evaluate(path, npz, extra_bufts=True)}
            if not runs["eval"]["ok"]:  # e.g. ggml's AMX kernels on a CPU that has AMX: retry in the plain layout
                runs["eval_no_extra_bufts"] = evaluate(path, npz, extra_bufts=False)
            status.write_text(json.dumps(runs), encoding="utf-8")
            row.update(runs)
        rows.append(row)
        print(f"{kind}: {row['bytes']:,} B, eval {row['eval']['returncode']}", file=sys.stderr, flush=True)

    reference = load(args.workdir / "logits-f16.npz") if rows[0]["eval"]["ok"] else None
    for row in rows:
        npz = args.workdir / f"logits-{row['type']}.npz"
        if reference is not None and npz.is_file() and row["type"] != "f16":
            row["vs_f16"] = compare(reference[1], load(npz)[1])
    if reference is not None:
        logits = np.sort(np.concatenate(reference[1]), axis=-1)
        rows[0]["logit_std"] = float(logits.std())  # the scale the differences are to be read against
        rows[0]["median_top1_margin"] = float(np.median(logits[:, -1] - logits[:, -2]))
        if not args.no_transformers:
            rows[0]["vs_transformers"] = compare(transformers_logits(model_dir, reference[0]), reference[1])

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    report = {
        "model": args.model,
        "shape": {
            k: getattr(config, k, None)
            for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        }
        | {"num_key_value_heads": config.num_key_value_heads, "vocab_size": config.vocab_size},
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "versions": {p: version(p) for p in ("llama_cpp_python", "gguf", "torch", "transformers")},
        "prompts": PROMPTS,
        "rows": rows,
    }
    (args.workdir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(report))


def table(report: dict) -> str:
    f16 = report["rows"][0]
    lines = [
        f"{report['model']}: {report['shape']}; f16 logits: std {f16.get('logit_std', float('nan')):.3g}, "
        f"median top-1 margin {f16.get('median_top1_margin', float('nan')):.3g}",
        "",
        "| type | file size | of f16 | weight matrices | max abs | mean abs | mean KL | top-1 agree | loads as is |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        cmp = row.get("vs_f16") or row.get("vs_transformers")
        label = row["type"] + (" vs transformers fp32" if "vs_transformers" in row else "")
        types = ", ".join(f"{n} {t}" for t, n in sorted(row["types"].items(), key=lambda kv: -kv[1]))
        numbers = (
            f"{cmp['max_abs']:.3g} | {cmp['mean_abs']:.3g} | {cmp['mean_kl']:.3g} | {cmp['top1_agree']:.1%}"
            if cmp
            else "- | - | - | -"
        )
        code = row["eval"]["returncode"]
        loads = "yes" if code == 0 else f"no (exit {code}); measured without extra buffers"
        if code != 0 and not row.get("eval_no_extra_bufts", {}).get("ok"):
            loads = f"no (exit {code}), nor without extra buffers"
        size = f"{row['bytes']:,} B | {row['bytes'] / f16['bytes']:.1%}"
        lines.append(f"| {label} | {size} | {types} | {numbers} | {loads} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--eval":
        eval_child(sys.argv[2], sys.argv[3], extra_bufts="--no-extra-bufts" not in sys.argv)
    else:
        main()
