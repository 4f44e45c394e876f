"""Padding-free sub-batches on the CPU (finetune/train/subbatch.py): the regrouping, and that a regrouped
micro-batch trains exactly like the padded one (same loss, same gradients) without its padding and mask."""

from __future__ import annotations

import pytest
import torch

from finetune.train.subbatch import (
    RowCost,
    SubBatches,
    plan_groups,
    regroup,
    right_padded_lengths,
    without_padding_mask,
)

FREE = RowCost(weights=1_000_000, attention=0)  # a weight-bound model, where a call's overhead is ~230 tokens
HEAVY = RowCost(weights=10**8, attention=0)  # a call costs ~2 tokens: every length apart


def padded(lengths: list[int], vocab: int = 50, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch as TRL's collator makes it: right padding, labels -100 on the padding and on a 2-token prompt."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(1, vocab, (len(lengths), width), generator=generator)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_right_padding_is_recognised_and_left_padding_is_not():
    batch = padded([5, 3, 7])
    assert right_padded_lengths(batch["attention_mask"]) == [5, 3, 7]
    assert right_padded_lengths(batch["attention_mask"].flip(1)) is None


def test_groups_cover_every_row_once_longest_first():
    lengths = [30, 2000, 1990, 400, 35]
    groups = plan_groups(lengths, FREE)
    assert sorted(row for group in groups for row in group) == list(range(5))
    assert groups == [[1, 2], [3], [4, 0]], "similar lengths share a group; the overhead keeps short rows together"
    assert plan_groups(lengths, RowCost(weights=1, attention=0)) == [[1, 2, 3, 4, 0]], "overhead-bound: one call"


def test_the_attention_term_splits_long_rows_sooner():
    lengths = [4000, 3000]
    assert len(plan_groups(lengths, RowCost(weights=10_000_000, attention=0))) == 2
    assert len(plan_groups(lengths, RowCost(weights=10, attention=0))) == 1
    assert len(plan_groups(lengths, RowCost(weights=10, attention=100_000))) == 2


def test_regroup_trims_each_group_and_drops_the_mask():
    batch = padded([40, 700, 690, 300])
    groups = regroup(batch, FREE)
    assert [tuple(g["input_ids"].shape) for g in groups] == [(2, 700), (1, 300), (1, 40)]
    for group in groups:
        assert bool(group["attention_mask"].all()), "no mask: fused causal attention"
    # every real token and label is kept once, in its row
    kept = sorted(tuple(row[row != -100].tolist()) for g in groups for row in g["labels"])
    assert kept == sorted(tuple(row[row != -100].tolist()) for row in batch["labels"])


@pytest.mark.parametrize(
    "batch",
    [
        {**padded([8, 8]), "attention_mask": torch.ones(2, 8, dtype=torch.long)},  # no padding
        {**padded([8, 5]), "attention_mask": padded([8, 5])["attention_mask"].flip(1)},  # left padding
        {**padded([8, 5]), "position_ids": torch.zeros(2, 8, dtype=torch.long)},  # packed
        {"input_ids": torch.ones(2, 8, dtype=torch.long)},  # no mask at all
    ],
)
def test_batches_that_stay_as_they_are(batch):
    assert regroup(batch, FREE) == []
    assert regroup(padded([30, 500]), None) == [], "an architecture without a cost model"


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).float()


def summed_loss(model, batch, items: int) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / items


def test_sub_batches_train_exactly_like_the_padded_batch():
    model = tiny_llama()
    batch = padded([12, 90, 88, 40], vocab=50, seed=1)
    items = int((batch["labels"][:, 1:] != -100).sum())

    model.zero_grad()
    whole = summed_loss(model, batch, items)
    whole.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}

    model.zero_grad()
    assert len(regroup(batch, RowCost.of(model.config))) == 1, "a model this small is bound by the call overhead"
    groups = regroup(batch, HEAVY)
    assert len(groups) == 3
    parts = []
    for group in groups:
        part = summed_loss(model, group, items)
        part.backward()
        parts.append(part.detach())
    assert float(sum(parts)) == pytest.approx(float(whole.detach()), rel=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_validation_batches_lose_only_their_mask():
    model = tiny_llama().eval()
    batch = padded([12, 60, 33], seed=2)
    items = int((batch["labels"][:, 1:] != -100).sum())
    plain = without_padding_mask(batch)
    assert bool(plain["attention_mask"].all()) and plain["input_ids"] is batch["input_ids"]
    with torch.no_grad():
        assert float(summed_loss(model, plain, items)) == pytest.approx(float(summed_loss(model, batch, items)), 1e-5)


class Base:
    def __init__(self):
        self.calls = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.calls.append(tuple(inputs["input_ids"].shape))
        return torch.tensor(1.0)


def trainer(world_size: int = 1, device: str = "cpu", sampling: str = "batch_rebalance"):
    class Trainer(SubBatches, Base):
        pass

    t = Trainer()
    args = {"world_size": world_size, "device": torch.device(device), "train_sampling_strategy": sampling}
    t.args = type("Args", (), args)()
    t.accelerator = type("Accelerator", (), {"unwrap_model": staticmethod(lambda m: m)})()
    return t


def test_the_trainer_mixin_regroups_only_on_one_cpu_process():
    model = tiny_llama()
    batch = padded([12, 90, 88, 40])
    t = trainer()
    t.row_cost = HEAVY
    assert float(t.training_step(model, batch, num_items_in_batch=100)) == len(t.calls) == 3
    t = trainer()  # the cost model comes from the model's config: the tiny model is overhead-bound
    t.training_step(model, batch, num_items_in_batch=100)
    assert t.calls == [(4, 90)] and t.row_cost == RowCost.of(model.config)
    for other in (trainer(world_size=2), trainer(device="meta"), trainer(sampling="random")):  # DDP, GPU, packing: off
        other.training_step(model, batch, num_items_in_batch=100)
        assert other.calls == [(4, 90)]
    t = trainer()
    t.training_step(model, batch, num_items_in_batch=None)  # per-call normalisation: would change the loss
    assert t.calls == [(4, 90)]
