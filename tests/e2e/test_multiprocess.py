"""`finetune train --nproc 2`: torchrun, gloo on the CPU, DDP over two processes, one run directory."""

import json
import math

import pytest
from typer.testing import CliRunner

from finetune.cli import app
from tests.conftest import ROOT, train_run

QUICK = ROOT / "recipes" / "quickstart.yaml"
# One epoch of the quickstart's 16 training rows at 2 rows a micro-batch: 8 steps on one process, 4 on two
ONE_EPOCH = ("train.epochs=1", "train.micro_batch_size=2")


def test_two_processes_train_one_run_with_half_the_steps(tmp_path):
    result = CliRunner().invoke(
        app,
        ["train", str(QUICK), "-o", str(tmp_path / "ddp"), "--nproc", "2", "-q", *[f"--set={o}" for o in ONE_EPOCH]],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["world_size"] == 2 and ddp["effective_batch_size"] == 4

    # The same recipe on one process takes twice the steps (each rank sees half of every global batch).
    single = json.loads((train_run(tmp_path / "single", QUICK, *ONE_EPOCH) / "metrics.json").read_text())
    trained = single["tokenization"]["train"]
    rows = trained["examples"] - trained["dropped_too_long"] - trained["dropped_no_target"]
    assert single["global_step"] == math.ceil(rows / 2) and ddp["global_step"] == math.ceil(rows / 4)
    assert single["epochs_completed"] == ddp["epochs_completed"] == 1.0
    # Both saw the training split once: the token count is summed over the ranks (the sampler repeats
    # an example to split the rows evenly, hence not exactly equal).
    assert ddp["throughput"]["train_tokens"] == pytest.approx(single["throughput"]["train_tokens"], rel=1e-2)
    # With the same global batch (2 x 2 accumulation on one process), the validation loss is close.
    same_batch = train_run(tmp_path / "same", QUICK, *ONE_EPOCH, "train.gradient_accumulation=2")
    reference = json.loads((same_batch / "metrics.json").read_text())
    assert reference["global_step"] == ddp["global_step"]
    assert ddp["best_eval_loss"] == pytest.approx(reference["best_eval_loss"], rel=2e-2)


def test_nproc_must_be_positive(tmp_path):
    result = CliRunner().invoke(app, ["train", str(QUICK), "-o", str(tmp_path / "r"), "--nproc", "0"])
    assert result.exit_code == 2 and "--nproc must be at least 1" in result.output


def test_the_first_failing_rank_leaves_the_message(tmp_path, monkeypatch):
    from finetune.train.launch import USER_ERROR_FILE, report_user_error

    assert report_user_error("anything") is False  # not under `--nproc`: the worker prints it itself
    monkeypatch.setenv(USER_ERROR_FILE, str(tmp_path / "user-error"))
    monkeypatch.setenv("RANK", "1")  # any rank, not only rank 0 (free memory differs per GPU)
    assert report_user_error("rank 1 failed") is True
    monkeypatch.setenv("RANK", "0")
    assert report_user_error("rank 0 failed later") is True
    assert (tmp_path / "user-error").read_text() == "rank 1 failed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user-error"]  # no staging files left

    # Unwritable (the full disk may be this one): the worker prints the message itself.
    monkeypatch.setenv(USER_ERROR_FILE, str(tmp_path / "missing-folder" / "user-error"))
    assert report_user_error("disk full") is False


def test_bad_input_found_by_the_workers_exits_2(tmp_path, capfd):
    """A UserError raised inside the torchrun workers (here: nothing to resume) is exit 2, said once."""
    from finetune.train.launch import relaunch

    code = relaunch(2, [str(QUICK), "-o", str(tmp_path / "none"), "--resume", "-q"])
    assert code == 2
    assert capfd.readouterr().err.count("nothing to resume") == 1
