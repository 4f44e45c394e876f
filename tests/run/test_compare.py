"""`finetune compare`: which runs it draws, the figure (one line per run, best steps starred), the PNG."""

from __future__ import annotations

import re
import stat

import pytest

from finetune.errors import UserError
from finetune.run import compare, run_dir
from tests.run.fake_runs import EVAL_CURVE, RECIPE, RESULTS, make_run, metrics


def test_compare_draws_one_line_per_run_with_each_best_step_starred(tmp_path):
    low = [(step, loss - 0.2 * (step > 0)) for step, loss in EVAL_CURVE]
    runs = [
        make_run(tmp_path, "lr-3e-3", metrics=metrics()),
        make_run(tmp_path, "lr-5e-3", metrics=metrics(history=[{"step": s, "eval_loss": v} for s, v in low])),
        make_run(tmp_path / "other", "lr-3e-3", partial={**RESULTS, "best_step": 40, "best_eval_loss": 4.4063}),
    ]
    summaries = compare.open_for_compare(runs)
    fig = compare.compare_figure(summaries)
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 3 and ax.get_ylabel() == "validation loss (nats/token)"
    assert [list(line.get_xdata()) for line in lines] == [[s for s, _ in EVAL_CURVE]] * 3
    assert list(lines[1].get_ydata()) == [v for _, v in low]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == [
        f"{runs[0]} (best 4.0907 at step 112)",  # two runs named lr-3e-3: told apart by their paths
        "lr-5e-3 (best 4.0907 at step 112)",
        f"{runs[2]} (best 4.4063 at step 40)",
    ]
    stars = [tuple(collection.get_offsets()[0]) for collection in ax.collections]
    assert stars == [(112, pytest.approx(4.0907, abs=1e-4)), (112, pytest.approx(4.0907, abs=1e-4)), (40, 4.4063)]


def test_compare_refuses_what_it_cannot_draw(tmp_path):
    good = make_run(tmp_path, "good", metrics=metrics())
    cases = {
        "needs at least two runs (got 1)": [good],
        "is not a run directory": [good, tmp_path],
        "does not exist": [good, tmp_path / "nope"],
        "given twice": [good, tmp_path / "good" / ".." / "good"],
        "not valid JSON": [good, make_run(tmp_path, "broken", metrics_text="{")],
        "nothing to draw: it is unfinished": [good, make_run(tmp_path, "crashed", checkpoints={8: True})],
        "has no validation loss": [good, make_run(tmp_path, "empty", metrics=metrics(history=[]))],
    }
    for message, paths in cases.items():
        with pytest.raises(UserError, match=re.escape(message)) as caught:
            compare.open_for_compare(paths)
        assert "\n" not in str(caught.value)


def test_compare_warns_when_the_curves_measure_different_things(tmp_path):
    same = [make_run(tmp_path, n, metrics=metrics()) for n in ("a", "b")]
    assert compare.compare_warnings(compare.open_for_compare(same)) == []
    dpo = {**RECIPE, "train": {"objective": "dpo"}}
    other = make_run(tmp_path, "c", metrics=metrics(data_hash="f" * 64), recipe=dpo)
    mixed = compare.open_for_compare([same[0], other])
    warnings = compare.compare_warnings(mixed)
    assert len(warnings) == 2
    assert compare.compare_figure(mixed).axes[0].get_ylabel() == "validation loss"  # a DPO loss is not per token
    assert "objectives: dpo, sft" in warnings[0] and "data" in warnings[1]


def test_the_plot_replaces_only_its_own_png(tmp_path):
    summaries = compare.open_for_compare([make_run(tmp_path, n, metrics=metrics()) for n in ("a", "b")])
    png = tmp_path / "out" / "compare.png"
    compare.check_plot_target(png, force=False)
    compare.save_plot(compare.compare_figure(summaries), png)
    data = png.read_bytes()
    assert data[:8] == compare.PNG_SIGNATURE and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    assert stat.S_IMODE(png.stat().st_mode) == 0o666 & ~_umask()
    assert compare.written_by_compare(png)
    compare.check_plot_target(png, force=False)  # compare's own plot: replaced without --force

    import matplotlib

    matplotlib.use("Agg")
    run_dir.plot_loss(metrics()["history"], 112, tmp_path / "loss.png")  # a PNG, but not compare's
    theirs = tmp_path / "loss.png"
    assert not compare.written_by_compare(theirs)
    (tmp_path / "notes.png").write_text("not a png")
    for path in (theirs, tmp_path / "notes.png"):
        with pytest.raises(UserError, match="pass --force to replace it"):
            compare.check_plot_target(path, force=False)
        compare.check_plot_target(path, force=True)
    with pytest.raises(UserError, match="ending in .png"):
        compare.check_plot_target(tmp_path / "compare.pdf", force=True)
    (tmp_path / "plots.png").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        compare.check_plot_target(tmp_path / "plots.png", force=True)


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
