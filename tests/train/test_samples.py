"""SampleWriter.report: samples go to the trackers train.report_to names, and only to those.

TensorBoard is exercised for real in tests/e2e/test_trackers.py. W&B needs an account or a local server
to read a run back, so here a stand-in `wandb` module records what the writer asks of wandb's API
(wandb.run, wandb.Table, wandb.log); it fails the same way if the writer stops calling it."""

import sys
import types
from pathlib import Path

import pytest

from finetune.train.samples import SampleWriter, _markdown

ROWS = [
    {"step": 0, "prompt": "What is a bond?", "reference": "A loan to an issuer.", "generation": "a ```loan``` x"},
    {"step": 0, "prompt": "What is a stock?", "reference": "A share of a company.", "generation": "line 1\nline 2"},
]


class FakeWandb(types.ModuleType):
    def __init__(self, active: bool):
        super().__init__("wandb")
        self.run = object() if active else None
        self.logged: list[dict] = []

        class Table:
            def __init__(self, columns, data):
                self.columns, self.data = columns, data

        self.Table = Table

    def log(self, payload):
        self.logged.append(payload)


def writer(trackers: list[str], tmp_path: Path, callbacks=()) -> SampleWriter:
    sample_writer = SampleWriter([], None, tmp_path, max_new_tokens=8, max_length=64, trackers=trackers)
    sample_writer.handler = types.SimpleNamespace(callbacks=list(callbacks))
    return sample_writer


def test_wandb_gets_one_table_that_grows_on_the_trainers_step_axis(tmp_path, monkeypatch):
    fake = FakeWandb(active=True)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    sample_writer = writer(["wandb"], tmp_path)
    sample_writer.report(ROWS, 0)
    later = [dict(row, step=5, generation=f"better {i}") for i, row in enumerate(ROWS)]
    sample_writer.report(later, 5)
    assert [entry["train/global_step"] for entry in fake.logged] == [0, 5]
    first, second = (entry["samples"] for entry in fake.logged)
    assert first.columns == second.columns == ["step", "prompt", "reference", "generation"]
    assert first.data == [[r["step"], r["prompt"], r["reference"], r["generation"]] for r in ROWS]
    assert second.data == first.data + [[5, r["prompt"], r["reference"], r["generation"]] for r in later]


@pytest.mark.parametrize(("trackers", "active"), [(["wandb"], False), (["tensorboard"], True), ([], True)])
def test_wandb_is_left_alone_unless_named_and_running(trackers, active, tmp_path, monkeypatch):
    fake = FakeWandb(active=active)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    writer(trackers, tmp_path).report(ROWS, 0)
    assert fake.logged == []


def test_tensorboard_text_goes_through_the_trainers_writer_only_when_named(tmp_path, monkeypatch):
    class Writer:
        def __init__(self):
            self.texts, self.flushed = [], 0

        def add_text(self, tag, text, step):
            self.texts.append((tag, text, step))

        def flush(self):
            self.flushed += 1

    tb = types.SimpleNamespace(tb_writer=Writer())  # what transformers' TensorBoardCallback holds
    writer(["tensorboard"], tmp_path, [types.SimpleNamespace(), tb]).report(ROWS, 3)
    ((tag, text, step),) = tb.tb_writer.texts
    assert (tag, step, tb.tb_writer.flushed) == ("samples", 3, 1)
    assert all(row["generation"] in text and row["prompt"] in text for row in ROWS)
    silent = types.SimpleNamespace(tb_writer=Writer())
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(active=True))
    writer(["wandb"], tmp_path, [silent]).report(ROWS, 3)
    writer([], tmp_path, [silent]).report(ROWS, 3)
    assert silent.tb_writer.texts == []


def test_markdown_keeps_each_text_verbatim_in_a_fence_it_cannot_close():
    text = _markdown(ROWS[0])
    assert "````\na ```loan``` x\n````" in text  # a longer fence than the text's own backticks
    assert "```\nline 1\nline 2\n```" in _markdown(ROWS[1])
