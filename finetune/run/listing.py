"""Runs side by side: what `finetune runs` lists and `finetune compare` draws.

A run directory is a folder with finetune's marker (RUN/.finetune-run). Its state comes from what is on
disk, never from a guess:

  training      another process holds RUN/.finetune-lock (the file itself stays after a run; the lock does not)
  finished      metrics.json exists (written last, atomically: its presence means finished)
  interrupted   metrics.partial.json with an `interrupted` event (Ctrl-C/SIGTERM): `--resume` continues it
  diverged      metrics.partial.json without one: the spike guard stopped the run
  unfinished    none of these: killed or crashed; the newest sealed checkpoint says how far it got
  broken        metrics.json (or metrics.partial.json) is not a JSON object

Nothing here writes into a run, and reading one never fails the listing: a broken run is a row that says
so. `finetune compare` (run/compare.py) is stricter: every run it draws must have a validation history.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetune.errors import UserError
from finetune.run import run_dir

PARTIAL = "metrics.partial.json"
CHECKPOINT_SEAL = "finetune-complete.json"  # train/resume.py MARKER: written last into a complete checkpoint
TEST_METRICS = (
    "test_loss",
    "test_perplexity",
    "test_accuracy",
    "test_macro_f1",
    "test_preference_accuracy",
    "test_base_preference_accuracy",
)
SORTS = ("newest", "name")


@dataclass
class RunSummary:
    """One row of `finetune runs`: what a run directory says about itself."""

    path: Path
    state: str
    started: float  # the marker's modification time: when the run (or its --overwrite) began, seconds since epoch
    model: str | None = None
    objective: str | None = None
    description: str | None = None
    global_step: int | None = None
    planned_steps: int | None = None
    checkpoint_step: int | None = None  # newest sealed checkpoint (what --resume would continue from)
    best_step: int | None = None
    base_eval_loss: float | None = None
    best_eval_loss: float | None = None
    improved: bool | None = None
    stopped_early: bool | None = None
    test: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    data_hash: str | None = None
    problem: str | None = None  # why the run is `broken`
    history: list[dict[str, float]] = field(default_factory=list)  # {step, eval_loss} rows, in step order

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def seconds(self) -> float | None:
        return self.timings.get("total_s", self.timings.get("train_s"))

    def to_json(self) -> dict[str, Any]:
        started = datetime.datetime.fromtimestamp(self.started).astimezone().isoformat(timespec="seconds")
        return {
            "name": self.name,
            "path": str(self.path),
            "state": self.state,
            "started": started,
            "model": self.model,
            "objective": self.objective,
            "description": self.description,
            "global_step": self.global_step,
            "planned_steps": self.planned_steps,
            "checkpoint_step": self.checkpoint_step,
            "best_step": self.best_step,
            "base_eval_loss": self.base_eval_loss,
            "best_eval_loss": self.best_eval_loss,
            "improved": self.improved,
            "stopped_early": self.stopped_early,
            **{key: self.test.get(key) for key in TEST_METRICS},
            "seconds": self.seconds,
            "timings": self.timings,
            "problem": self.problem,
        }


def is_run(path: Path) -> bool:
    return path.is_dir() and (path / run_dir.MARKER).is_file()


def find_runs(folder: Path) -> list[Path]:
    """FOLDER itself when it is a run, else the run directories directly inside it (one level down)."""
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UserError(f"{folder}: {what}; give the folder that holds your run directories (default: runs)")
    if is_run(folder):
        return [folder]
    try:
        return [child for child in folder.iterdir() if is_run(child)]
    except OSError as err:
        raise UserError(f"{folder}: cannot list the folder ({err.strerror})") from err


def list_runs(folder: Path, sort: str = "newest") -> list[RunSummary]:
    """Every run under `folder`, newest first (by when it started) or by name."""
    if sort not in SORTS:
        raise UserError(f"--sort must be one of {', '.join(SORTS)} (got {sort!r})")
    summaries = [summarize(run) for run in find_runs(folder)]
    if sort == "name":
        return sorted(summaries, key=lambda s: (s.name.casefold(), str(s.path)))
    return sorted(summaries, key=lambda s: (-s.started, s.name.casefold(), str(s.path)))


def summarize(run: Path) -> RunSummary:
    """What `run` says about itself. Never raises for a broken run: its state says `broken`."""
    summary = RunSummary(path=run, state="unfinished", started=_mtime(run / run_dir.MARKER))
    _read_recipe(run, summary)
    summary.checkpoint_step = newest_checkpoint_step(run)
    metrics_file = run / run_dir.METRICS
    partial_file = run / PARTIAL
    source = metrics_file if metrics_file.is_file() else partial_file if partial_file.is_file() else None
    if source is not None:
        try:
            metrics = read_json_object(source)
        except UserError as err:
            summary.state, summary.problem = "broken", str(err)
        else:
            _read_metrics(metrics, summary)
            if source is metrics_file:
                summary.state = "finished"
            else:
                events = metrics.get("events") if isinstance(metrics.get("events"), list) else []
                stopped = any(isinstance(e, dict) and e.get("type") == "interrupted" for e in events)
                summary.state = "interrupted" if stopped else "diverged"
    if is_locked(run):  # a --resume or --overwrite in progress outranks what the files said
        summary.state = "training"
    return summary


def read_json_object(path: Path) -> dict[str, Any]:
    """A metrics file as a dict, or a one-line UserError naming the file and what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start})") from err
    except ValueError as err:
        reason = getattr(err, "msg", str(err))
        where = f" at line {err.lineno}" if hasattr(err, "lineno") else ""
        raise UserError(f"{path}: not valid JSON ({reason}{where})") from err
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object (a {type(data).__name__})")
    return data


def is_locked(run: Path) -> bool:
    """Whether a process trains into `run` now: a shared, non-blocking probe of the trainer's flock, released
    at once (the test `--overwrite` makes too); a run that never trained has no lock file. The probe holds
    the lock for microseconds: a `finetune train` into this very folder starting in that instant is refused
    with "another finetune process" and can simply be rerun."""
    try:
        handle = open(run / run_dir.LOCK, "rb")  # noqa: SIM115 - closed below, whatever happens
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # a file system without locks: nothing can hold one either
    finally:
        handle.close()  # releases the probe's lock, if taken
    return False


def newest_checkpoint_step(run: Path) -> int | None:
    """The step of the newest sealed checkpoint (RUN/checkpoints/checkpoint-N/finetune-complete.json)."""
    steps = []
    for seal in (run / "checkpoints").glob(f"checkpoint-*/{CHECKPOINT_SEAL}"):
        number = seal.parent.name.removeprefix("checkpoint-")
        if number.isdigit():
            steps.append(int(number))
    return max(steps, default=None)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read_recipe(run: Path, summary: RunSummary) -> None:
    """model.name, train.objective (sft when absent) and the description from RUN/recipe.yaml, read as plain
    YAML: a run written by another finetune version still lists, whatever its schema."""
    try:
        recipe = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return
    if not isinstance(recipe, dict):
        return
    model = recipe.get("model")
    train = recipe.get("train")
    summary.model = _text(model.get("name")) if isinstance(model, dict) else None
    summary.objective = (_text(train.get("objective")) if isinstance(train, dict) else None) or "sft"
    summary.description = _text(recipe.get("description"))


def _read_metrics(metrics: dict[str, Any], summary: RunSummary) -> None:
    summary.global_step = _integer(metrics.get("global_step"))
    summary.planned_steps = _integer(metrics.get("planned_steps"))
    summary.best_step = _integer(metrics.get("best_step"))
    summary.base_eval_loss = _number(metrics.get("base_eval_loss"))
    summary.best_eval_loss = _number(metrics.get("best_eval_loss"))
    improved, stopped = metrics.get("improved"), metrics.get("stopped_early")
    summary.improved = improved if isinstance(improved, bool) else None
    summary.stopped_early = stopped if isinstance(stopped, bool) else None
    summary.test = {key: value for key in TEST_METRICS if (value := _number(metrics.get(key))) is not None}
    timings = metrics.get("timings")
    if isinstance(timings, dict):
        summary.timings = {key: value for key, raw in timings.items() if (value := _number(raw)) is not None}
    summary.data_hash = _text(metrics.get("data_hash"))
    history = metrics.get("history")
    rows = history if isinstance(history, list) else []
    points = {}
    for row in rows:
        if not isinstance(row, dict):
            continue
        step, loss = _integer(row.get("step")), _number(row.get("eval_loss"))
        if step is not None and loss is not None:
            points[step] = loss
    summary.history = [{"step": step, "eval_loss": points[step]} for step in sorted(points)]


def _number(value: Any) -> float | None:
    """A finite number, or None (metrics.json writes a diverged loss as null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- the table both commands print ---------------------------------------------------------------------

COLUMNS = ("run", "state", "model", "objective", "steps", "val loss (base → best)", "test", "improved", "time")


def table_row(summary: RunSummary) -> list[str]:
    """The cells of one run, in COLUMNS order; '-' where the run does not say."""
    return [
        summary.name,
        state_text(summary),
        short_model(summary.model),
        summary.objective or "-",
        steps_text(summary),
        loss_text(summary),
        test_text(summary.test),
        {True: "yes", False: "no", None: "-"}[summary.improved],
        duration(summary.seconds),
    ]


def state_text(summary: RunSummary) -> str:
    if summary.state == "finished" and summary.stopped_early:
        return "finished (stopped early)"
    return summary.state


def short_model(model: str | None) -> str:
    """A hub id or builtin name as written; a local model directory by its last part."""
    if model is None:
        return "-"
    return f"…/{Path(model).name}" if model.startswith(("/", "~", ".")) else model


def steps_text(summary: RunSummary) -> str:
    if summary.global_step is not None:
        return str(summary.global_step)
    if summary.checkpoint_step is not None:
        return f"checkpoint {summary.checkpoint_step}"
    return "-"


def loss_text(summary: RunSummary) -> str:
    base, best = summary.base_eval_loss, summary.best_eval_loss
    if base is None and best is None:
        return "-"
    return f"{_loss(base)} → {_loss(best)}"


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def test_text(test: dict[str, float]) -> str:
    parts = [
        f"{label} {test[key]:{spec}}"
        for key, label, spec in (
            ("test_loss", "loss", ".4f"),
            ("test_perplexity", "ppl", ".1f"),
            ("test_accuracy", "acc", ".3f"),
            ("test_macro_f1", "F1", ".3f"),
            ("test_preference_accuracy", "pref acc", ".3f"),
        )
        if key in test
    ]
    if "test_base_preference_accuracy" in test:
        parts.append(f"(base {test['test_base_preference_accuracy']:.3f})")
    return " ".join(parts) or "-"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 59.95:  # what rounds to "60.0 s" reads as a minute
        return f"{seconds:.1f} s"
    if seconds < 3599.5:
        minutes, secs = divmod(round(seconds), 60)
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"
