"""Experiment trackers: with train.report_to [tensorboard] a run writes TensorBoard events under RUN/tb,
and the sample answers of every validation (the base's at step 0 included) arrive there as text.

Read back with TensorBoard's own EventAccumulator; skipped where tensorboard is not installed (it is in
the dev extra)."""

import json

import pytest
from typer.testing import CliRunner

from finetune.cli import app

pytest.importorskip("tensorboard", reason="tensorboard is not installed (the dev extra has it)")


def tensorboard_texts(tb_dir) -> dict[str, dict[int, str]]:
    """{tag: {step: text}} over every event file under tb_dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    texts: dict[str, dict[int, str]] = {}
    for events in sorted(tb_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["tensors"]:
            for event in accumulator.Tensors(tag):
                value = event.tensor_proto.string_val[0].decode("utf-8")
                texts.setdefault(tag, {})[event.step] = value
    return texts


def test_samples_reach_tensorboard_at_every_validation(tmp_path, write_recipe):
    recipe = write_recipe(
        {"train": {"max_steps": 4, "eval_steps": 2, "sample_prompts": 2, "report_to": ["tensorboard"]}}
    )
    result = CliRunner().invoke(app, ["train", str(recipe), "-o", str(tmp_path / "run"), "-q"])
    assert result.exit_code in (0, 3), result.output  # 3: trained, but no better than the base
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted({row["step"] for row in rows}) == [0, 2, 4]

    texts = tensorboard_texts(run / "tb")
    samples = {tag: by_step for tag, by_step in texts.items() if tag.startswith("samples")}
    assert len(samples) == 1, f"one samples tag expected, got {sorted(texts)}"
    (by_step,) = samples.values()
    assert sorted(by_step) == [0, 2, 4], "the base's samples (step 0) and every validation's"
    for step, text in by_step.items():
        for row in (r for r in rows if r["step"] == step):
            assert row["prompt"][-100:] in text and row["generation"] in text
    # the trainer's own scalars are in the same folder: one TensorBoard run, not two
    assert len({p.parent for p in (run / "tb").rglob("events.out.tfevents.*")}) == 1
