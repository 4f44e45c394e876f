"""`finetune compare`: the validation-loss curves of several runs on one axis, each best step starred.

The PNG goes where -o says (default compare.png in the working directory). An existing file there is
replaced only when an earlier `finetune compare` wrote it (the PNG's Software text says so) or with
--force: a figure of the user's is never overwritten silently.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from finetune.errors import UserError
from finetune.paths import umask_mode
from finetune.run import run_dir
from finetune.run.listing import PARTIAL, RunSummary, is_run, summarize

PLOT_SOFTWARE = "finetune compare"  # the PNG's Software text: compare may replace only a plot it wrote itself
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def open_for_compare(paths: list[Path]) -> list[RunSummary]:
    """The runs `finetune compare` draws: at least two distinct run directories, each with a readable
    validation history (finished, or stopped with metrics.partial.json)."""
    if len(paths) < 2:
        raise UserError(f"compare needs at least two runs (got {len(paths)}); to look at one, open RUN/loss.png")
    seen: dict[Path, Path] = {}
    summaries = []
    for path in paths:
        if not is_run(path):
            what = "does not exist" if not path.exists() else f"is not a run directory (no {run_dir.MARKER} in it)"
            raise UserError(f"{path}: {what}; give run directories written by `finetune train`")
        key = path.resolve()
        if key in seen:
            raise UserError(f"{path}: given twice (as {seen[key]} too); give each run once")
        seen[key] = path
        summary = summarize(path)
        if summary.state == "broken":
            raise UserError(summary.problem or f"{path}: unreadable metrics")
        if not summary.history:
            why = (
                f"it is {summary.state} (no {run_dir.METRICS} yet)"
                if summary.state in ("training", "unfinished")
                else f"its {run_dir.METRICS if summary.state == 'finished' else PARTIAL} has no validation loss"
            )
            raise UserError(f"{path}: nothing to draw: {why}")
        summaries.append(summary)
    return summaries


def compare_warnings(summaries: list[RunSummary]) -> list[str]:
    """Why two curves on one axis may not measure the same thing."""
    warnings = []
    for what, values in (
        ("objectives", [s.objective for s in summaries]),
        ("models (different tokenizers: loss per token differs)", [s.model for s in summaries]),
        ("data (data hashes)", [s.data_hash for s in summaries]),
    ):
        known = {v for v in values if v is not None}
        if len(known) > 1:
            shown = ", ".join(sorted(known)) if "hash" not in what else f"{len(known)} different"
            warnings.append(f"the runs differ in {what}: {shown}; their validation losses are not directly comparable")
    return warnings


def labels_for(summaries: list[RunSummary]) -> list[str]:
    """Each run's folder name, or its path where two runs share a name."""
    names = [s.name for s in summaries]
    return [s.name if names.count(s.name) == 1 else str(s.path) for s in summaries]


def compare_figure(summaries: list[RunSummary]):
    """One axes: each run's validation loss against step, one line per run, its best step starred."""
    from matplotlib.figure import Figure  # no pyplot: no global state, never a window

    fig = Figure(figsize=(8, 4.5), dpi=110)
    ax = fig.add_subplot()
    for summary, label in zip(summaries, labels_for(summaries), strict=True):
        steps = [row["step"] for row in summary.history]
        losses = [row["eval_loss"] for row in summary.history]
        best = summary.best_step, summary.best_eval_loss
        if best[0] is not None and best[1] is not None:
            label = f"{label} (best {best[1]:.4f} at step {best[0]})"
        (line,) = ax.plot(steps, losses, marker="o", markersize=3, label=label)
        if best[0] is not None and best[1] is not None:
            ax.scatter([best[0]], [best[1]], marker="*", s=160, color=line.get_color(), edgecolors="black", zorder=3)
    ax.set_title("validation loss (step 0: the base model)")
    ax.set_xlabel("optimizer step")
    preference = any(s.objective not in (None, "sft") for s in summaries)  # DPO/ORPO: not a loss per token
    ax.set_ylabel("validation loss" if preference else "validation loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def check_plot_target(path: Path, force: bool) -> None:
    """Before any work: a .png path that is no folder, and no existing file unless an earlier `finetune
    compare` wrote it (its PNG says so) or --force."""
    if path.suffix.lower() != ".png":
        raise UserError(f"{path}: the plot is a PNG; give -o a path ending in .png")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give -o a file path such as {path / 'compare.png'}")
    if (path.exists() or path.is_symlink()) and not force and not written_by_compare(path):
        raise UserError(f"{path}: exists and `finetune compare` did not write it; pass --force to replace it")


def written_by_compare(path: Path) -> bool:
    """Whether `path` is a PNG whose Software text chunk is `finetune compare` (read up to the image data)."""
    try:
        with open(path, "rb") as handle:
            if handle.read(8) != PNG_SIGNATURE:
                return False
            for _ in range(64):  # the text chunks come before the image data
                header = handle.read(8)
                if len(header) < 8:
                    return False
                length, kind = int.from_bytes(header[:4], "big"), header[4:]
                if kind in (b"IDAT", b"IEND") or length > 1 << 20:
                    return False
                data = handle.read(length)
                handle.seek(4, os.SEEK_CUR)  # the chunk's CRC
                if kind == b"tEXt" and data.startswith(b"Software\0"):
                    return data.removeprefix(b"Software\0").decode("latin-1") == PLOT_SOFTWARE
    except OSError:
        return False
    return False


def save_plot(fig, path: Path) -> Path:
    """The figure as a PNG marked as compare's, written atomically (temporary file + rename), umask modes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": PLOT_SOFTWARE})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode(directory=False))
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
