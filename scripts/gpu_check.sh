#!/usr/bin/env bash
# GPU check, for a CUDA machine with no network:
#   bash scripts/gpu_check.sh [OUTDIR]
# Builds a random-weights Llama-3.2-1B-architecture model, runs 30 QLoRA steps with `finetune train`
# on the finance sample (tokens/s and peak memory land in metrics.json), then `vram-estimate --measure`
# on the same recipe: the estimate beside the measured peaks.
set -euo pipefail
out=${1:-${OUT:-gpu_check_out}}
work=$(mktemp -d)
mkdir -p "$out"
python -m finetune --version
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python scripts/random_model.py meta-llama/Llama-3.2-1B "$work/llama-1b"
sets=(--set "model.name=$work/llama-1b" --set train.max_steps=30 --set train.eval_steps=10
      --set train.micro_batch_size=4 --set train.gradient_accumulation=1)
python -m finetune train recipes/llama-3.2-1b-finance.yaml -o "$work/run" "${sets[@]}" 2>&1 | tee "$out/train.log"
cp "$work/run/metrics.json" "$out/metrics.json"
python -m finetune vram-estimate recipes/llama-3.2-1b-finance.yaml --set "model.name=$work/llama-1b" \
    --batch-size 4 --measure 2>&1 | tee "$out/measure.txt"
python -m finetune vram-estimate recipes/llama-3.2-1b-finance.yaml --set "model.name=$work/llama-1b" \
    --batch-size 4 --measure --json > "$out/measure.json"
