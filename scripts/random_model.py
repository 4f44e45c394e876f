#!/usr/bin/env python
"""Save a random-weights model of a catalogue architecture (no network), with finetune's byte tokenizer.

    python scripts/random_model.py meta-llama/Llama-3.2-1B /tmp/llama-1b

For GPU checks on machines that cannot download weights: memory and speed depend on the architecture,
not on the values of the weights. The byte-level tokenizer's 261 ids all exist in any catalogue vocabulary.
"""

import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from finetune.model.tiny import build_tokenizer  # noqa: E402
from finetune.vram.catalogue import lookup  # noqa: E402


def main(model_id: str, out: str) -> None:
    config = AutoConfig.for_model(**lookup(model_id))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):  # initialising on the GPU takes seconds instead of minutes
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    print(f"saved random {model_id} ({sum(p.numel() for p in model.parameters()):,} parameters) to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
