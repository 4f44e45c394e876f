#!/usr/bin/env bash
# GPU check, for a CUDA machine with no network:
#   bash scripts/gpu_check.sh [OUTDIR]
# Builds a random-weights Llama-3.2-1B-architecture model and runs 30 QLoRA steps of
# recipes/llama-3.2-1b-finance.yaml with `finetune train`:
#   hf       transformers + peft + bitsandbytes
#   unsloth  Unsloth's FastLanguageModel (skipped when Unsloth is not importable)
#   fsdp     the hf backend under torchrun with train.fsdp. With one process FSDP runs NO_SHARD: the
#            4-bit storage, CPU loading, wrapping and the gathered save run, nothing is sharded;
#            several GPUs: pass NPROC=N)
# RUNS picks some of them (default: all three).
# Each run's metrics.json (tokens/s, peak allocated/reserved memory) lands in OUTDIR/<name>.json, its
# log in OUTDIR/<name>.log; summary.txt sets them beside the VRAM estimate. A failing run does not
# stop the others; the script exits 1 if any failed. MODEL (a catalogue id) and STEPS change the defaults;
# CHECKPOINTING (true, the setting the estimate is compared at) can be false or auto.
set -uo pipefail
out=${1:-${OUT:-gpu_check_out}}
nproc=${NPROC:-1}
work=$(mktemp -d)
mkdir -p "$out"
python -m finetune --version
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python scripts/random_model.py "${MODEL:-meta-llama/Llama-3.2-1B}" "$work/llama-1b" || exit 1
recipe=recipes/llama-3.2-1b-finance.yaml
sets=(--set "model.name=$work/llama-1b" --set "train.max_steps=${STEPS:-30}" --set train.eval_steps=10
      --set train.micro_batch_size=4 --set train.gradient_accumulation=1
      --set "train.gradient_checkpointing=${CHECKPOINTING:-true}")
failed=()

run() {  # run NAME COMMAND...: the run directory is $work/NAME
    local name=$1; shift
    echo "== $name"
    if "$@" -o "$work/$name" "${sets[@]}" >"$out/$name.log" 2>&1; then
        cp "$work/$name/metrics.json" "$out/$name.json"
    else
        failed+=("$name"); tail -25 "$out/$name.log"
    fi
}

runs=" ${RUNS:-hf unsloth fsdp} "
[[ $runs == *" hf "* ]] && run hf python -m finetune train "$recipe" --set model.backend=hf
if [[ $runs == *" unsloth "* ]]; then
    if python -c "import unsloth" >"$out/unsloth-import.log" 2>&1; then
        run unsloth python -m finetune train "$recipe" --set model.backend=unsloth
    else
        echo "== unsloth: not importable (see unsloth-import.log)"; tail -5 "$out/unsloth-import.log"
    fi
fi
[[ $runs == *" fsdp "* ]] && run fsdp python -m torch.distributed.run --standalone --nproc_per_node "$nproc" \
    -m finetune train "$recipe" --set model.backend=hf --set train.fsdp=true
python -m finetune vram-estimate "$recipe" "${sets[@]}" --json >"$out/estimate.json" \
    || failed+=(vram-estimate)
python -m finetune doctor --json >"$out/doctor.json" || failed+=(doctor)

python - "$out" <<'EOF' || failed+=(summary)
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
estimate = json.loads((out / "estimate.json").read_text())
GiB = 2**30
lines = [f"estimate: peak allocated {estimate['peak_allocated_bytes'] / GiB:.2f} GiB, "
         f"total {estimate['total_bytes'] / GiB:.2f} GiB "
         f"(checkpointing {'on' if estimate['setup']['gradient_checkpointing'] else 'off'})"]
if "without_checkpointing_total_bytes" in estimate:  # CHECKPOINTING=auto: the run may have turned it off
    lines.append(f"estimate without checkpointing: total {estimate['without_checkpointing_total_bytes'] / GiB:.2f} GiB")
for name in ("hf", "unsloth", "fsdp"):
    path = out / f"{name}.json"
    if not path.exists():
        lines.append(f"{name}: no metrics")
        continue
    m = json.loads(path.read_text())
    t = m["throughput"]
    lines.append(
        f"{name}: backend {m['backend']}, world {m['world_size']}, {m['global_step']} steps, "
        f"checkpointing {'on' if m.get('gradient_checkpointing', True) else 'off'}, "
        f"best eval {m['best_eval_loss']}, test {m.get('test_loss')}, {t['tokens_per_s']:.0f} tokens/s, "
        f"peak allocated {t.get('peak_allocated_bytes', 0) / GiB:.2f} GiB, "
        f"reserved {t.get('peak_reserved_bytes', 0) / GiB:.2f} GiB, "
        f"train {m['timings']['train_s']:.1f} s"
    )
(out / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
if ((${#failed[@]})); then echo "failed: ${failed[*]}"; exit 1; fi
