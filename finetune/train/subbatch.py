"""Padding-free micro-batches on the CPU: a padded micro-batch is trained as a few sub-batches of rows of
similar length, without an attention mask.

    groups = regroup(inputs, cost)     the micro-batch's rows, regrouped; [] when it must stay as it is
    cost = RowCost.of(model.config)    what a forward + backward of n rows of L tokens costs, relatively

Why. A padded micro-batch costs what its longest row costs, times its rows: padding is computed and
thrown away. On the CPU, padding also costs a second time: any padding makes transformers pass an
explicit mask to PyTorch's attention, which then leaves its fused causal kernel for the slower masked
one (docs/throughput.md). With gradient accumulation the length-grouped sampler (data/batching.py)
already sorts each optimizer step's rows into similar micro-batches; with one micro-batch per step
(gradient_accumulation: 1) there is nothing to sort, and rows of a few hundred and a few thousand
tokens share one padded batch.

What. TRL's collator pads on the right and labels padding -100. With right padding a causal model
never lets a real token attend to padding (it comes after), so the mask can go: the padding positions
compute values no label reads, and transformers then uses the fused causal kernel (it drops a mask of
all ones). The rows are sorted by length and cut into consecutive groups that minimise the modelled
cost (a fixed cost per forward/backward, plus every computed position, plus attention's quadratic
term); each group is trimmed to its longest row and trained by the trainer's own training_step. The
loss is the step's summed token loss divided by the step's answer-token count (num_items_in_batch),
so the gradients of the groups add up to the micro-batch's, up to float rounding: the same examples
in the same steps with the same loss, without the padding and the mask.

Where. One process on the CPU, SFT with grouped batches (data.packing: auto without flash-attention;
packing has no padding, and data.packing: off asks for plain padded batches). Not under DDP/FSDP (each
group's backward would all-reduce) and not on a GPU: not measured there, so nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The fixed cost of one forward + backward (Python, hooks, dequantizing the 4-bit weights, the loss head) in
# units of one token through one weight: measured on 2 CPU cores with the benchmark model (docs/throughput.md):
# ~24 ms a call against ~0.34 ms a token for its 3.2M linear weights, i.e. ~70 tokens there, ~2,000 for the
# 2-layer quickstart model.
CALL_OVERHEAD = 2.3e8


@dataclass(frozen=True)
class RowCost:
    """Relative cost of training n rows padded to L tokens: overhead + n * L * (weights + L * attention)."""

    weights: int  # linear weights a token passes through (layers and head)
    attention: int  # per position attended to: layers * query heads * head dim (scores and values)

    @classmethod
    def of(cls, config) -> RowCost | None:
        """From a transformers config of a decoder; None when its shape is not the usual one."""
        try:
            h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
            heads = config.num_attention_heads
            kv = getattr(config, "num_key_value_heads", None) or heads
            d = getattr(config, "head_dim", None) or h // heads
            vocab = config.vocab_size
        except AttributeError:
            return None
        per_layer = h * heads * d * 2 + 2 * h * kv * d + 3 * h * i  # q, o; k, v; gate, up, down
        return cls(weights=layers * per_layer + vocab * h, attention=layers * heads * d)

    def __call__(self, rows: int, length: int) -> float:
        return CALL_OVERHEAD + rows * length * (self.weights + length * self.attention)


def right_padded_lengths(mask) -> list[int] | None:
    """Row lengths of a right-padded attention mask [batch, length]; None for any other layout."""
    import torch

    lengths = mask.sum(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask.bool(), positions[None, :] < lengths[:, None]):
        return None
    return lengths.tolist()


def plan_groups(lengths: list[int], cost: RowCost) -> list[list[int]]:
    """Row indices in groups of consecutive lengths (longest first) that minimise the summed cost.

    best[j] = min over i < j of best[i] + cost(j - i, longest of rows i..j-1): O(n^2) for n rows."""
    order = sorted(range(len(lengths)), key=lambda row: -lengths[row])
    n = len(order)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            total = best[i] + cost(j - i, lengths[order[i]])  # sorted: row i is the longest of i..j-1
            if total < best[j]:
                best[j], cut[j] = total, i
    groups, j = [], n
    while j:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def regroup(inputs: dict[str, Any], cost: RowCost | None) -> list[dict[str, Any]]:
    """The micro-batch as sub-batches without padding masks; [] when it must be trained as it is (not a
    right-padded batch of input_ids/attention_mask/labels, packed, or nothing to gain)."""
    mask = inputs.get("attention_mask")
    if cost is None or mask is None or "position_ids" in inputs or mask.dim() != 2:
        return []
    lengths = right_padded_lengths(mask)
    if lengths is None:
        return []
    import torch

    batch, width = mask.shape
    if min(lengths) == width:
        return []  # no padding: transformers already drops the mask
    out = []
    for rows in plan_groups(lengths, cost):
        longest = max(lengths[row] for row in rows)
        index = None if len(rows) == batch else torch.tensor(sorted(rows), device=mask.device)
        sub = {}
        for key, value in inputs.items():
            if hasattr(value, "dim") and value.dim() >= 2 and tuple(value.shape[:2]) == (batch, width):
                value = value if index is None else value.index_select(0, index)
                value = value[:, :longest]
            sub[key] = value
        sub["attention_mask"] = sub["attention_mask"].new_ones(sub["attention_mask"].shape)
        out.append(sub)
    return out


def without_padding_mask(inputs: dict[str, Any]) -> dict[str, Any]:
    """A right-padded batch with its attention mask made all ones (the same loss; see the module docstring)."""
    mask = inputs.get("attention_mask")
    if mask is None or "position_ids" in inputs or mask.dim() != 2 or right_padded_lengths(mask) is None:
        return inputs
    return {**inputs, "attention_mask": mask.new_ones(mask.shape)}


class SubBatches:
    """Trainer mixin (SFT): on one CPU process, padded micro-batches are trained as regroup() makes them and
    validation batches are scored without their padding mask."""

    row_cost: RowCost | None = None

    def _on_one_cpu(self) -> bool:
        """One process on the CPU, grouped batches (data.packing: off keeps plain padded batches)."""
        grouped = getattr(self.args, "train_sampling_strategy", None) == "batch_rebalance"
        return grouped and self.args.world_size == 1 and self.args.device.type == "cpu"

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if self._on_one_cpu() and prediction_loss_only:
            inputs = without_padding_mask(inputs)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if num_items_in_batch is None or not self._on_one_cpu():
            return super().training_step(model, inputs, num_items_in_batch)
        if self.row_cost is None:
            self.row_cost = RowCost.of(self.accelerator.unwrap_model(model).config)
        groups = regroup(inputs, self.row_cost)
        if not groups:
            return super().training_step(model, inputs, num_items_in_batch)
        return sum(super(SubBatches, self).training_step(model, sub, num_items_in_batch) for sub in groups)
