"""`finetune runs`: run directories found, their state read from disk, the cells of the table."""

from __future__ import annotations

import pytest

from finetune.errors import UserError
from finetune.run import listing, run_dir
from tests.run.fake_runs import EVAL_CURVE, RECIPE, RESULTS, make_run, metrics


def cells(summary) -> dict[str, str]:
    return dict(zip(listing.COLUMNS, listing.table_row(summary), strict=True))


def test_a_finished_run_reads_as_its_metrics_say(tmp_path):
    run = make_run(tmp_path, "quick", metrics=metrics(), checkpoints={112: True, 117: True})
    summary = listing.summarize(run)
    assert summary.state == "finished" and summary.objective == "sft"  # no train.objective: sft
    assert summary.global_step == 117 and summary.best_step == 112 and summary.checkpoint_step == 117
    assert summary.improved is True and summary.seconds == 27.718
    assert summary.history == [{"step": s, "eval_loss": v} for s, v in EVAL_CURVE]  # train rows left out
    assert cells(summary) == {
        "run": "quick",
        "state": "finished",
        "model": "builtin:tiny-llama",
        "objective": "sft",
        "steps": "117",
        "val loss (base → best)": "5.8745 → 4.0907",
        "test": "loss 4.0697 ppl 58.5",
        "improved": "yes",
        "time": "27.7 s",
    }
    data = summary.to_json()
    assert data["test_loss"] == pytest.approx(4.0697, abs=1e-4) and data["test_accuracy"] is None
    assert data["timings"]["train_s"] == 26.037 and data["started"][:2] == "20"  # ISO date


def test_classification_dpo_early_stop_and_no_improvement_show_in_the_row(tmp_path):
    recipe = {**RECIPE, "model": {"name": "/models/llama-local"}, "train": {"objective": "dpo"}}
    scores = {"test_accuracy": 0.8333, "test_macro_f1": 0.7917, "stopped_early": True, "improved": False}
    summary = listing.summarize(make_run(tmp_path, "sentiment", metrics=metrics(**scores), recipe=recipe))
    row = cells(summary)
    assert row["objective"] == "dpo" and row["model"] == "…/llama-local"
    assert row["state"] == "finished (stopped early)" and row["improved"] == "no"
    assert row["test"] == "loss 4.0697 ppl 58.5 acc 0.833 F1 0.792"


def test_fsdp_runs_have_no_base_loss(tmp_path):
    summary = listing.summarize(make_run(tmp_path, "fsdp", metrics=metrics(base_eval_loss=None, improved=None)))
    assert cells(summary)["val loss (base → best)"] == "- → 4.0907" and cells(summary)["improved"] == "-"


def test_runs_stopped_or_crashed_say_so(tmp_path):
    interrupted = {**RESULTS, "events": [{"type": "interrupted", "step": 40, "signal": 2}], "global_step": 40}
    diverged = {**RESULTS, "events": [{"type": "spike", "step": 9}, {"type": "rollback", "step": 12}]}
    runs = {
        "stopped": make_run(tmp_path, "stopped", partial=interrupted, checkpoints={40: True}),
        "diverged": make_run(tmp_path, "diverged", partial=diverged),
        "crashed": make_run(tmp_path, "crashed", checkpoints={40: True, 48: False}),  # 48: unsealed
        "early": make_run(tmp_path, "early", recipe=None, lock_file=False),  # killed while loading the model
        "broken": make_run(tmp_path, "broken", metrics_text='{"global_step": 117,'),
        "list": make_run(tmp_path, "list", metrics_text="[1, 2]"),
    }
    found = {name: listing.summarize(run) for name, run in runs.items()}
    assert {name: s.state for name, s in found.items()} == {
        "stopped": "interrupted",
        "diverged": "diverged",
        "crashed": "unfinished",
        "early": "unfinished",
        "broken": "broken",
        "list": "broken",
    }
    assert cells(found["stopped"])["steps"] == "40"
    assert cells(found["crashed"])["steps"] == "checkpoint 40" and cells(found["crashed"])["test"] == "-"
    assert cells(found["early"])["model"] == "-" and found["early"].objective is None
    assert "metrics.json: not valid JSON" in found["broken"].problem and "line 1" in found["broken"].problem
    assert found["list"].problem.endswith("not a JSON object (a list)")


def test_a_run_being_trained_is_told_by_its_lock_not_by_the_lock_file(tmp_path):
    run = make_run(tmp_path, "live", metrics=metrics())  # the lock file of a finished run stays behind
    assert listing.summarize(run).state == "finished"
    held = run_dir.lock(run)  # what `finetune train` holds, e.g. during --overwrite or --resume
    try:
        assert listing.summarize(run).state == "training" and listing.is_locked(run)
    finally:
        held.close()
    assert not listing.is_locked(run)
    run_dir.lock(run).close()  # the probe left no lock behind: the trainer can still take it


def test_runs_are_found_one_level_down_newest_first_or_by_name(tmp_path):
    make_run(tmp_path, "b-old", metrics=metrics(), started=1_000_000)
    make_run(tmp_path, "a-new", metrics=metrics(), started=3_000_000)
    make_run(tmp_path, "C-mid", started=2_000_000)
    make_run(tmp_path / "group", "nested", metrics=metrics())  # two levels down: not listed
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "metrics.json").write_text("{}")  # no marker: not a run
    (tmp_path / "README.md").write_text("mine")
    assert [s.name for s in listing.list_runs(tmp_path)] == ["a-new", "C-mid", "b-old"]
    assert [s.name for s in listing.list_runs(tmp_path, sort="name")] == ["a-new", "b-old", "C-mid"]
    assert [s.name for s in listing.list_runs(tmp_path / "a-new")] == ["a-new"]  # DIR itself is a run
    assert listing.list_runs(tmp_path / "notes") == []
    with pytest.raises(UserError, match="does not exist"):
        listing.list_runs(tmp_path / "missing")
    with pytest.raises(UserError, match="is not a folder"):
        listing.list_runs(tmp_path / "README.md")
    with pytest.raises(UserError, match="--sort must be one of newest, name"):
        listing.list_runs(tmp_path, sort="loss")


def test_durations_read_at_a_glance():
    assert [listing.duration(s) for s in (None, 27.718, 59.97, 71.0, 3599.4, 3599.6, 7384)] == [
        "-",
        "27.7 s",
        "1 min 00 s",
        "1 min 11 s",
        "59 min 59 s",
        "1 h 00 min",
        "2 h 03 min",
    ]


def test_the_checkpoint_seal_is_the_one_training_writes():
    from finetune.train.resume import MARKER

    assert listing.CHECKPOINT_SEAL == MARKER


def test_a_preference_run_shows_its_preference_accuracy_against_the_base():
    test = {"test_loss": 0.006, "test_preference_accuracy": 0.968, "test_base_preference_accuracy": 0.452}
    assert listing.test_text(test) == "loss 0.0060 pref acc 0.968 (base 0.452)"
    assert listing.test_text({}) == "-"
