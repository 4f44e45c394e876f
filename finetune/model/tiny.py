"""builtin:tiny-llama: a randomly initialised 2-layer Llama with a byte-level tokenizer, built locally.

It exists so the quickstart and the tests run offline on a CPU in seconds. It knows nothing: it
only exercises the real pipeline (4-bit quantization, LoRA, SFTTrainer, early stopping, export).
The build is deterministic (seed 0) and cached under $FINETUNE_HOME (default ~/.cache/finetune).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from finetune.errors import UserError, disk_full
from finetune.paths import cache_home, umask_mode
from finetune.vram.architectures import TINY_LLAMA_CONFIG

VERSION = "v1"  # bump when the build below changes, so caches rebuild
SPECIAL_TOKENS = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|unk|>", "<|reserved|>"]


def tiny_llama_path() -> Path:
    """The model folder, built on first use; a plain transformers directory (config + safetensors)."""
    target = cache_home() / "models" / f"tiny-llama-{VERSION}"
    if (target / "model.safetensors").is_file():
        return target
    staging = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=target.parent))
        staging.chmod(umask_mode(directory=True))
        build_tiny_llama(staging)
        with contextlib.suppress(OSError):  # OSError: another process won the race
            os.replace(staging, target)  # atomic: a concurrent build or a crash never leaves half a model
    except Exception as err:
        reason = disk_full(err) or (err.strerror if isinstance(err, OSError) else None)
        if reason is None:
            raise
        raise UserError(
            f"{cache_home()}: cannot build the tiny model in finetune's cache ({reason}); free space there "
            "or set FINETUNE_HOME to a writable folder with ~10 MB free"
        ) from err
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tokenizer():
    """Byte-level: 256 byte tokens + 5 special tokens (ids 0-4), no merges, so it needs no training data."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in bytes_to_unicode().values():
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        unk_token="<|unk|>",
        model_max_length=TINY_LLAMA_CONFIG["max_position_embeddings"],
    )


def build_tiny_llama(directory: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    assert len(tokenizer) == TINY_LLAMA_CONFIG["vocab_size"], "tokenizer and config disagree on the vocabulary"
    config = LlamaConfig(
        **TINY_LLAMA_CONFIG,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # std 0.1 instead of Llama's 0.02: random features rich enough that LoRA visibly learns
        initializer_range=0.1,
    )
    with torch.random.fork_rng(devices=[]):  # seed 0 for the weights without touching the caller's RNG
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(directory)  # safetensors
    tokenizer.save_pretrained(directory)
