"""How examples are put into micro-batches: packed, grouped by length, or padded.

Every example is padded to the longest one in its micro-batch, and padding is computed and thrown
away. With a mix of short and long answers most of a random batch is padding. Three modes:

  packed   TRL's padding-free BFD packing: examples are packed best-fit into sequences of up to
           data.max_length tokens, a micro-batch is flattened into one row without padding, and the
           position ids restart at 0 for every example. A varlen kernel (flash_attention_2) keeps
           attention within each example at the cost of the real tokens. sdpa/eager stay correct
           in training (transformers 5 turns the restarting position ids into a block-diagonal
           mask when there is no cache) but attend over the whole flattened micro-batch:
           (micro_batch x max_length)^2 work, mostly masked out. So packing needs flash-attn.
  grouped  transformers' BatchRebalanceSampler: each optimizer step gets the same random examples
           as plain random batches, sorted by length into its micro-batches (their sizes vary so
           each costs about the same), so a micro-batch pads little. The loss is that of random
           batches (gradients are summed over the step, token-weighted); only padding goes away.
           We prefer it to "group_by_length", which sorts mega-batches of up to 50 steps: faster
           still, but consecutive steps then see similar lengths, which shifts the loss curve and
           could look like spikes to the spike guard (docs/throughput.md). Works with every kernel.
  padded   plain random batches (data.packing: off).

Nothing here loads a model: the decision is a pure function of the recipe (and whether flash-attn
is installed), so it is testable and `--dry-run` could show it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from finetune.config import Recipe
from finetune.errors import UserError

# Kernels that take cu_seqlens / position_ids and attend within each packed example at no extra cost.
VARLEN_ATTENTION = ("flash_attention_2",)


def flash_attn_installed() -> bool:
    """Whether the flash-attn package can be imported (checked without importing it: it loads CUDA)."""
    return importlib.util.find_spec("flash_attn") is not None


def batching_mode(recipe: Recipe, flash_available: bool | None = None) -> str:
    """ "packed" | "grouped" | "padded" for this recipe; data.packing: on with an unsuitable kernel is an error."""
    choice = recipe.data.packing
    if recipe.train.objective != "sft":  # a pair's two sides are collated together by TRL: never packed
        if choice == "on":
            raise UserError(f"data.packing: on is for sft; train.objective {recipe.train.objective} pads its pairs")
        return "padded"
    if choice == "off":
        return "padded"
    attn = recipe.model.attn_implementation
    installed = flash_attn_installed() if flash_available is None else flash_available
    if attn in VARLEN_ATTENTION and installed:
        return "packed"
    if choice == "on":
        why = "the flash-attn package is not installed" if attn in VARLEN_ATTENTION else f"it is {attn}"
        raise UserError(
            f"data.packing: on needs model.attn_implementation: flash_attention_2 (other kernels attend over the "
            f"whole packed micro-batch) but {why}; install flash-attn on a GPU, or set data.packing: auto"
        )
    return "grouped"


def sft_kwargs(mode: str) -> dict[str, Any]:
    """SFTConfig arguments for a mode (transformers 5.24 / TRL 1.16 names)."""
    if mode == "packed":
        # bfd keeps every example whole (ours are already truncated to max_length); padding_free is
        # implied by bfd in TRL but spelled out: the collator then sends position_ids and cu_seq_lens.
        return {"packing": True, "packing_strategy": "bfd", "padding_free": True}
    if mode == "grouped":
        # Lengths are read from input_ids by the sampler (one pass over the split, ~20 us per row).
        return {"packing": False, "train_sampling_strategy": "batch_rebalance"}
    if mode == "padded":
        return {"packing": False, "train_sampling_strategy": "random"}
    raise ValueError(f"unknown batching mode {mode!r}")


def packed_sequences(train_dataset, max_length: int) -> int:
    """How many sequences TRL's BFD packing makes of the training split (the same call TRL makes)."""
    from trl.data_utils import pack_dataset

    return len(pack_dataset(train_dataset.select_columns(["input_ids"]), max_length, "bfd"))
