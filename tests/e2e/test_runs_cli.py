"""`finetune runs` and `finetune compare` through the CLI, on run directories shaped like real ones."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from finetune.cli import app
from finetune.run.compare import PNG_SIGNATURE, written_by_compare
from tests.run.fake_runs import EVAL_CURVE, RECIPE, RESULTS, make_run, metrics

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def lines_of(output: str, name: str) -> list[str]:
    return [line for line in output.splitlines() if f" {name} " in line]


def test_runs_lists_every_run_with_its_state(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "lr-3e-3", metrics=metrics(), started=1_000_000)
    better = [{"step": s, "eval_loss": v - 0.1 * (s > 0)} for s, v in EVAL_CURVE]
    make_run(runs, "lr-5e-3", metrics=metrics(history=better, best_eval_loss=3.9907), started=2_000_000)
    make_run(runs, "killed", checkpoints={40: True}, started=3_000_000)
    result = invoke("runs", runs)
    assert result.exit_code == 0, result.output
    (row,) = lines_of(result.stdout, "lr-3e-3")  # one line per run, whole, when piped
    for cell in ("finished", "builtin:tiny-llama", "sft", "117", "5.8745 → 4.0907", "loss 4.0697 ppl 58.5", "27.7 s"):
        assert cell in row, (cell, row)
    assert "5.8745 → 3.9907" in lines_of(result.stdout, "lr-5e-3")[0]
    assert (
        "unfinished" in lines_of(result.stdout, "killed")[0] and "checkpoint 40" in lines_of(result.stdout, "killed")[0]
    )
    order = [result.stdout.index(f" {name} ") for name in ("killed", "lr-5e-3", "lr-3e-3")]
    assert order == sorted(order)  # newest first

    by_name = invoke("runs", runs, "--sort", "name", "--json")
    assert by_name.exit_code == 0, by_name.output
    data = json.loads(by_name.stdout)  # exactly one JSON object on stdout
    assert data["sort"] == "name" and [r["name"] for r in data["runs"]] == ["killed", "lr-3e-3", "lr-5e-3"]
    finished = data["runs"][1]
    assert finished["state"] == "finished" and finished["objective"] == "sft" and finished["improved"] is True
    assert finished["base_eval_loss"] == RESULTS["base_eval_loss"] and finished["global_step"] == 117
    assert finished["timings"]["total_s"] == 27.718 and finished["test_macro_f1"] is None
    assert data["runs"][0]["state"] == "unfinished" and data["runs"][0]["checkpoint_step"] == 40


def test_runs_of_an_empty_or_missing_folder(tmp_path):
    empty = invoke("runs", tmp_path)
    assert empty.exit_code == 0 and "no run directories in" in empty.stderr and empty.stdout == ""
    assert json.loads(invoke("runs", tmp_path, "--json").stdout)["runs"] == []
    missing = invoke("runs", tmp_path / "runs")
    assert missing.exit_code == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'runs'}: does not exist; give the folder that holds your run directories (default: runs)"
    ]


def test_compare_writes_one_png_and_prints_the_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = make_run(tmp_path / "runs", "a", metrics=metrics())
    b = make_run(tmp_path / "runs", "b", partial={**RESULTS, "events": [{"type": "interrupted", "step": 117}]})
    result = invoke("compare", a, b)
    assert result.exit_code == 0, result.output
    png = tmp_path / "compare.png"  # the default: in the working directory
    assert png.read_bytes()[:8] == PNG_SIGNATURE and written_by_compare(png)
    assert "finished" in lines_of(result.stdout, "a")[0] and "interrupted" in lines_of(result.stdout, "b")[0]
    assert "plot written to compare.png" in result.stderr

    again = invoke("compare", a, b, "--json")  # compare's own plot: replaced
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)
    assert data["plot"] == "compare.png" and [r["name"] for r in data["runs"]] == ["a", "b"]
    assert data["warnings"] == []


def test_compare_never_overwrites_a_file_of_yours_silently(tmp_path):
    a, b = (make_run(tmp_path, name, metrics=metrics()) for name in ("a", "b"))
    mine = tmp_path / "figure.png"
    mine.write_bytes(PNG_SIGNATURE + b"my own figure")
    refused = invoke("compare", a, b, "-o", mine)
    assert refused.exit_code == 2 and mine.read_bytes() == PNG_SIGNATURE + b"my own figure"
    assert (
        refused.stderr.strip()
        == f"error: {mine}: exists and `finetune compare` did not write it; pass --force to replace it"
    )
    forced = invoke("compare", a, b, "-o", mine, "--force")
    assert forced.exit_code == 0, forced.output
    assert written_by_compare(mine)


def test_compare_errors_are_one_line_and_exit_2(tmp_path):
    good = make_run(tmp_path, "good", metrics=metrics())
    broken = make_run(tmp_path, "broken", metrics_text='{"history": [')
    for args, message in (
        ([good], "compare needs at least two runs (got 1)"),
        ([good, tmp_path], "is not a run directory"),
        ([good, broken], f"{broken / 'metrics.json'}: not valid JSON"),
        ([good, good.parent / "other"], "does not exist"),
    ):
        result = invoke("compare", *args, "-o", tmp_path / "plot.png")
        assert result.exit_code == 2, result.output
        (line,) = result.stderr.strip().splitlines()  # no traceback
        assert line.startswith("error: ") and message in line, line
        assert not (tmp_path / "plot.png").exists()


def test_compare_warns_on_stderr_when_the_losses_are_not_the_same_measure(tmp_path):
    sft = make_run(tmp_path, "sft", metrics=metrics())
    dpo = make_run(tmp_path, "dpo", metrics=metrics(), recipe={**RECIPE, "train": {"objective": "dpo"}})
    result = invoke("compare", sft, dpo, "-o", tmp_path / "plot.png")
    assert result.exit_code == 0, result.output
    assert "warning: the runs differ in objectives: dpo, sft" in result.stderr and "warning" not in result.stdout
