"""Trust at the edges: never delete what the user owns, readable files, resume that does what it says,
and a run that wrecks the model is caught (issue 11)."""

from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from finetune.cli import app
from finetune.run import run_dir
from tests.conftest import ROOT, train_run, write_jsonl
from tests.e2e.test_resilience import start, wait_for

QUICK = ROOT / "recipes" / "quickstart.yaml"
SHORT = {"train": {"max_steps": 4, "eval_steps": 2}}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_overwrite_never_deletes_the_users_own_folder(tmp_path, write_recipe):
    folder = tmp_path / "mine"
    folder.mkdir()
    recipe = write_recipe(SHORT, name="my_recipe.yaml")
    own = folder / "my_recipe.yaml"
    own.write_text(recipe.read_text())
    (folder / "NOTES.txt").write_text("mine")
    result = invoke("train", own, "-o", folder, "--overwrite", "-q")
    assert result.exit_code == 2 and "lies inside the output directory" in result.stderr, result.output
    # the same folder, the recipe elsewhere: still not finetune's, so --overwrite refuses and names the files
    result = invoke("train", recipe, "-o", folder, "--overwrite", "-q")
    assert result.exit_code == 2 and "NOTES.txt" in result.stderr and "my_recipe.yaml" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["NOTES.txt", "my_recipe.yaml"]


def test_overwrite_replaces_a_run_finetune_made_but_not_files_added_to_it(tmp_path, write_recipe):
    recipe = write_recipe(SHORT)
    run = train_run(tmp_path / "run", recipe)
    assert (run / run_dir.MARKER).is_file()
    (run / "analysis.ipynb").write_text("{}")
    refused = invoke("train", recipe, "-o", run, "--overwrite", "-q")
    assert refused.exit_code == 2 and "analysis.ipynb" in refused.stderr
    (run / "analysis.ipynb").unlink()
    assert invoke("train", recipe, "-o", run, "--overwrite", "-q").exit_code == 0
    # an input inside a run finetune made is refused too
    data = run / "data.jsonl"
    data.write_text((ROOT / "data" / "finance_qa.jsonl").read_text())
    inside = invoke("train", recipe, "-o", run, "--overwrite", "-q", "--set", f"data.path={data}")
    assert inside.exit_code == 2 and "lies inside the output directory" in inside.stderr
    assert data.is_file()


def test_files_are_readable_as_the_umask_says(tmp_path, write_recipe):
    old = os.umask(0o022)
    try:
        run = train_run(tmp_path / "run", write_recipe(SHORT))
        merged = tmp_path / "merged"
        assert invoke("merge", run, "-o", merged).exit_code == 0
    finally:
        os.umask(old)
    for path in [
        run / "metrics.json",
        run / "recipe.yaml",
        run / run_dir.MARKER,
        *(run / "adapter").iterdir(),
        *merged.iterdir(),
    ]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    for folder in (run, run / "adapter", merged):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder


def test_merge_never_replaces_the_run_or_a_folder_it_did_not_make(tmp_path, quickstart_run):
    run = tmp_path / "run"
    shutil.copytree(quickstart_run, run)
    before = sorted(p.name for p in run.iterdir())
    for out, message in [
        (run, "lies inside the run"),
        (run / "merged", "lies inside the run"),
        (tmp_path, "holds the run"),
    ]:
        result = invoke("merge", run, "-o", out, "--overwrite")
        assert result.exit_code == 2 and message in result.stderr, result.output
    assert sorted(p.name for p in run.iterdir()) == before
    a_file = tmp_path / "model.bin"
    a_file.write_text("x")
    result = invoke("merge", run, "-o", a_file)
    assert result.exit_code == 2 and "is a file" in result.stderr
    foreign = tmp_path / "other"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    result = invoke("merge", run, "-o", foreign, "--overwrite")
    assert result.exit_code == 2 and "earlier `finetune merge`" in result.stderr and (foreign / "keep.txt").exists()
    merged = tmp_path / "merged"
    assert invoke("merge", run, "-o", merged).exit_code == 0
    assert invoke("merge", run, "-o", merged, "--overwrite").exit_code == 0  # an earlier merge's folder


def test_metrics_json_is_always_valid_json(tmp_path):
    run_dir.write_json(tmp_path / "m.json", {"loss": float("nan"), "rows": [{"x": float("inf")}], "ok": 1.5})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": None, "rows": [{"x": None}], "ok": 1.5}


def test_resume_of_a_finished_run_trains_nothing(tmp_path, write_recipe):
    run = train_run(tmp_path / "run", write_recipe(SHORT))
    before = (run / "metrics.json").read_bytes()
    result = invoke("train", "--resume", "-o", run, "-q")
    assert result.exit_code == 0 and "is finished" in result.output
    assert (run / "metrics.json").read_bytes() == before


def test_resume_after_a_kill_while_the_adapter_was_written_only_finishes(tmp_path, write_recipe):
    run = train_run(tmp_path / "run", write_recipe(SHORT))
    expected = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    staging = run / ".adapter-k1ll3d"  # what staged_directory leaves behind when killed
    (run / "adapter").rename(staging)
    result = invoke("train", "--resume", "-o", run, "-q")
    assert result.exit_code == 0, result.output
    done = json.loads((run / "metrics.json").read_text())
    assert done["global_step"] == expected["global_step"] == 4, "no step trained after the last one"
    assert done["best_eval_loss"] == expected["best_eval_loss"]
    assert done["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-5)
    assert done["history"] == expected["history"] and done["base_eval_loss"] == expected["base_eval_loss"]
    assert not staging.exists() and (run / "adapter" / "adapter_model.safetensors").is_file()


def test_resume_before_the_first_checkpoint_starts_over_in_the_same_folder(tmp_path, write_recipe):
    recipe = write_recipe(SHORT)
    run = train_run(tmp_path / "run", recipe)
    for name in ("checkpoints", "adapter", "metrics.json", "loss.png"):  # as if killed while loading the model
        path = run / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    stuck = invoke("train", recipe, "-o", run, "-q")
    assert stuck.exit_code == 2 and "--resume" in stuck.stderr
    result = invoke("train", "--resume", "-o", run, "-q")
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and metrics["events"][0] == {"type": "resume", "step": 0, "checkpoint": None}


def test_the_printed_resume_command_works_verbatim_with_overrides(tmp_path):
    run = tmp_path / "run"
    process = start(run)  # the quickstart with --set overrides (test_resilience.SETTINGS)
    wait_for(run / "checkpoints" / "checkpoint-8" / "finetune-complete.json", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    printed = stderr.split("resume with: ", 1)[1].strip()
    assert printed == f"finetune train --resume -o {run}"
    resumed = subprocess.run([sys.executable, "-m", *shlex.split(printed)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == metrics["planned_steps"] > 8 and metrics["epochs_completed"] == 1.0


def test_one_run_directory_one_training_process(tmp_path, write_recipe):
    recipe = write_recipe(SHORT)
    run = train_run(tmp_path / "run", recipe)
    (run / "metrics.json").unlink()
    held = run_dir.lock(run)  # another process training into it
    try:
        for args in (["--resume"], ["--overwrite"]):
            result = invoke("train", recipe, "-o", run, "-q", *args)
            assert result.exit_code == 2 and "another finetune process" in result.stderr, result.output
    finally:
        held.close()
    assert invoke("train", recipe, "-o", run, "-q", "--resume").exit_code == 0


def test_a_learning_rate_that_wrecks_the_model_is_caught(tmp_path, write_recipe):
    recipe = write_recipe({"train": {"learning_rate": 1000, "max_steps": 30, "eval_steps": 10}})
    run = tmp_path / "run"
    result = invoke("train", recipe, "-o", run, "-q")
    assert result.exit_code == 1 and "collapsed to predicting nothing" in result.stderr, result.output
    events = json.loads((run / "metrics.partial.json").read_text())["events"]
    assert [e["type"] for e in events].count("collapse") == 3 and events[-1]["type"] == "diverged"
    assert not (run / "adapter").exists() and not (run / "metrics.json").exists()


def test_a_run_that_does_not_beat_the_base_says_so_and_exits_3(tmp_path, write_recipe):
    # Training answers are all "a", validation answers all "z": every step makes validation worse.
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"Q{i}", "completion": "a" * 20} for i in range(32)])
    val = write_jsonl(tmp_path / "val.jsonl", [{"prompt": f"Q{i}", "completion": "z" * 20} for i in range(8)])
    worse = {
        "data": {"path": None, "train": str(train), "validation": str(val)},
        "train": {"learning_rate": 1e-2, "max_steps": 4, "eval_steps": 2},
    }
    run = tmp_path / "run"
    result = invoke("train", write_recipe(worse), "-o", run, "-q")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_eval_loss"] >= metrics["base_eval_loss"]
    assert result.exit_code == 3 and metrics["improved"] is False, result.output
    assert "not improved" in result.stderr and (run / "adapter").is_dir()
    assert {"step": 0, "eval_loss": metrics["base_eval_loss"]} in metrics["history"]


def test_a_full_finetune_home_is_exit_2_naming_it(tmp_path):
    home = tmp_path / "home"

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # the tiny model's weights need more

    env = {**os.environ, "FINETUNE_HOME": str(home)}
    command = [sys.executable, "-m", "finetune", "train", str(QUICK), "-o", str(tmp_path / "run"), "--dry-run"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, preexec_fn=small_files)
    assert result.returncode == 2, result.stderr
    assert f"error: {home}: cannot build the tiny model in finetune's cache" in result.stderr


def test_checkpoints_follow_the_umask_too(tmp_path, write_recipe):
    old = os.umask(0o022)
    try:
        run = train_run(tmp_path / "run", write_recipe(SHORT))
    finally:
        os.umask(old)
    files = [p for p in (run / "checkpoints").rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in files), files


def test_overwrite_counts_finetunes_own_leftovers_of_a_killed_write_as_its_own(tmp_path, write_recipe):
    recipe = write_recipe(SHORT)
    run = train_run(tmp_path / "run", recipe)
    (run / ".metrics.json.k1ll3d").write_text("{")  # write_atomic's temporary file, killed mid-write
    (run / ".adapter-k1ll3d").mkdir()  # staged_directory's folder
    assert invoke("train", recipe, "-o", run, "--overwrite", "-q").exit_code == 0
    (run / ".my-notes").write_text("mine")  # a hidden file of the user's is still theirs
    refused = invoke("train", recipe, "-o", run, "--overwrite", "-q")
    assert refused.exit_code == 2 and ".my-notes" in refused.stderr
