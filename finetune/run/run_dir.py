"""The run directory: created safely, written atomically, recognisable as finetune's and as finished.

RUN/.finetune-run    marker: finetune made this folder (+ the recipe and data hashes it was made for)
RUN/recipe.yaml      resolved recipe          RUN/metrics.json   written last: its presence = finished
RUN/adapter/         PEFT adapter + tokenizer RUN/loss.png       train/validation loss, best step marked
RUN/checkpoints/     trainer checkpoints      RUN/tb/            TensorBoard logs (when chosen)

`--overwrite` empties a folder only when it carries the marker and holds nothing but what finetune
writes there; a folder with the user's own files, or one holding an input of the run, is refused.
Everything is written with the user's umask, so a host outside a container can read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from finetune.errors import UserError
from finetune.paths import umask_mode

METRICS = "metrics.json"
ADAPTER = "adapter"
MARKER = ".finetune-run"
MERGE_MARKER = ".finetune-merge"
LOCK = ".finetune-lock"
SAMPLES = "samples.jsonl"
TRAIN_LOG = "train.log"  # one line per logged step and validation: `tail -f RUN/train.log`  # generations for a few validation prompts at each validation (train/samples.py)
# What finetune writes into a run directory (eval/ is `finetune eval`'s default output); dot-prefixed
# names are its temporary files and staging folders (write_atomic, staged_directory).
RUN_ENTRIES = {
    MARKER,
    LOCK,
    "recipe.yaml",
    ADAPTER,
    METRICS,
    "metrics.partial.json",
    "loss.png",
    "checkpoints",
    "tb",
    "eval",
    SAMPLES,
    "train.log",
}


def is_finished(run: Path) -> bool:
    return (run / METRICS).is_file() and (run / ADAPTER / "adapter_config.json").is_file()


def foreign_entries(folder: Path) -> list[str]:
    """Names in `folder` that finetune did not write there. Its own leftovers of a killed write count as
    its own: write_atomic's `.NAME.xxxx` temporary files and staged_directory's `.NAME-xxxx` folders."""
    own = tuple(f".{name}{sep}" for name in RUN_ENTRIES for sep in ".-")
    return sorted(c.name for c in folder.iterdir() if c.name not in RUN_ENTRIES and not c.name.startswith(own))


def check_output(run: Path, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse, before any data is read, an output that would mix two runs or delete what is not ours."""
    if run.exists() and not run.is_dir():
        raise UserError(f"{run}: output path exists and is a file; choose another -o/--output")
    inside = [path for path in inputs if _within(path, run)]
    if inside:
        raise UserError(f"{inside[0]}: an input of this run lies inside the output directory {run}; choose another -o")
    if not run.is_dir() or not any(run.iterdir()):
        return
    if not overwrite:
        raise UserError(
            f"{run}: output directory is not empty; pass --resume to continue its run, --overwrite to replace "
            "it, or choose another -o"
        )
    if not (run / MARKER).is_file():
        raise UserError(
            f"{run}: --overwrite only replaces run directories finetune made, and this one holds "
            f"{_listing(sorted(p.name for p in run.iterdir()))}; choose another -o"
        )
    foreign = foreign_entries(run)
    if foreign:
        raise UserError(
            f"{run}: --overwrite would delete files finetune did not write ({_listing(foreign)}); "
            "move them out or choose another -o"
        )
    check_unlocked(run)


def prepare(run: Path, overwrite: bool, fingerprint: dict[str, Any], inputs: Iterable[Path] = ()) -> None:
    """Create RUN (or empty a run finetune made, with --overwrite) and mark it as finetune's."""
    check_output(run, overwrite, inputs)
    if run.is_dir():
        for child in run.iterdir():  # check_output allowed only finetune's own entries
            if child.name != LOCK:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    try:
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / MARKER, {"created_by": "finetune", **fingerprint})
    except OSError as err:
        if err.errno is not None and err.strerror and "No space" in err.strerror:
            raise
        raise UserError(f"{run}: cannot write to the output directory ({err.strerror}); choose another -o") from err


def reset(run: Path) -> None:
    """Empty a run that died before its first checkpoint, to start it over in place: finetune's own
    entries go (an unsealed checkpoint, partial metrics); its marker, lock and anything else stay."""
    for name in RUN_ENTRIES - {MARKER, LOCK}:
        path = run / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    remove_staging(run)


def remove_staging(run: Path) -> None:
    """Staging folders of an adapter write that a kill interrupted (staged_directory names them .adapter-*)."""
    for stale in run.glob(f".{ADAPTER}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def apply_umask(folder: Path) -> None:
    """Give everything under `folder` the modes the umask gives: the libraries write some files 0600
    (safetensors, through a renamed temporary file) and mkdtemp makes folders 0700."""
    for parent, _, names in os.walk(folder):
        os.chmod(parent, umask_mode(directory=True))
        for name in names:
            os.chmod(os.path.join(parent, name), umask_mode(directory=False))


def read_marker(run: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def lock(run: Path):
    """Hold an exclusive lock on RUN while training into it (released when the process ends, however it
    ends): two processes never train into one folder. Returns the open file that holds it."""
    handle = open(run / LOCK, "a+")  # noqa: SIM115 - kept open for the lifetime of the run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(
            f"{run}: another finetune process is training into this folder; wait for it or choose another -o"
        ) from None
    return handle


def check_unlocked(run: Path) -> None:
    if (run / LOCK).is_file():
        lock(run).close()


def _within(path: Path, folder: Path) -> bool:
    return path.resolve() == folder.resolve() or folder.resolve() in path.resolve().parents


def _listing(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode(directory=False))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Valid JSON always: a NaN or infinite number (a diverged loss) is written as null."""
    write_atomic(path, json.dumps(finite(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


def finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_recipe(run: Path, resolved: dict[str, Any]) -> None:
    write_atomic(run / "recipe.yaml", yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))


INITIAL_ADAPTER = "checkpoints/initial-adapter"  # pissa/olora: the adapter before training


def save_initial_adapter(run: Path, model) -> Path:
    """PiSSA/OLoRA rewrite the base weights when they initialise the adapter. Keeping the initial
    adapter lets peft convert the final one into a plain LoRA on the *original* base (rank 2r), which
    is what every loader of RUN/adapter uses (peft's documented recipe)."""
    config = model.peft_config["default"]
    init, config.init_lora_weights = config.init_lora_weights, True
    try:
        model.save_pretrained(run / INITIAL_ADAPTER)
    finally:
        config.init_lora_weights = init
    return run / INITIAL_ADAPTER


def save_adapter(run: Path, model, tokenizer, state_dict: dict | None = None) -> Path:
    """Save the PEFT adapter and tokenizer into RUN/adapter via a staging folder and a rename.

    `state_dict`: the full model weights gathered from FSDP shards (None: read them off `model`).
    """
    import torch
    from peft import get_peft_model_state_dict

    adapter = get_peft_model_state_dict(model, state_dict=state_dict)
    broken = [
        name for name, tensor in adapter.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    if broken:  # the spike guard should make this impossible; never write such an adapter anyway
        raise RuntimeError(f"refusing to save an adapter with non-finite weights ({broken[0]}, ...)")
    target = run / ADAPTER
    initial = run / INITIAL_ADAPTER
    convert = {"path_initial_model_for_weight_conversion": str(initial)} if initial.is_dir() else {}
    with staged_directory(target) as staging:
        # only the trained adapter: DPO after SFT also holds a frozen copy, "ref" (model/loading.py)
        model.save_pretrained(staging, state_dict=state_dict, selected_adapters=["default"], **convert)
        tokenizer.save_pretrained(staging)
    return target


@contextlib.contextmanager
def staged_directory(target: Path):
    """Yield a staging folder beside `target`; on success it replaces `target`, on failure it vanishes,
    so a half-written folder never sits at `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        apply_umask(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_metrics(run: Path) -> dict[str, Any]:
    return json.loads((run / METRICS).read_text(encoding="utf-8"))


def plot_loss(history: list[dict], best_step: int | None, path: Path) -> None:
    """Train and validation loss against optimizer step, the best step marked; for DPO/ORPO a second
    panel with the validation reward accuracy and margin."""
    import matplotlib

    matplotlib.use("Agg")  # no display in containers and CI
    import matplotlib.pyplot as plt

    train = [(row["step"], row["loss"]) for row in history if "loss" in row]
    val = [(row["step"], row["eval_loss"]) for row in history if "eval_loss" in row]
    rewards = [row for row in history if "eval_rewards/accuracies" in row]
    if rewards:
        fig, (ax, lower) = plt.subplots(2, 1, figsize=(7, 6.5), dpi=110, sharex=True)
        _plot_rewards(lower, rewards, best_step)
    else:
        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=False), label="train loss", color="#4c72b0", alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=False), label="validation loss", color="#dd8452", marker="o", markersize=3)
    if best_step is not None:
        ax.axvline(best_step, color="#55a868", linestyle="--", label=f"best (step {best_step})")
    if not rewards:
        ax.set_xlabel("optimizer step")
    ax.set_ylabel("preference loss" if rewards else "loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_rewards(ax, rows: list[dict], best_step: int | None) -> None:
    steps = [row["step"] for row in rows]
    ax.plot(
        steps, [row["eval_rewards/accuracies"] for row in rows], label="reward accuracy", color="#4c72b0", marker="o"
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel("validation reward accuracy")
    ax.set_xlabel("optimizer step")
    margins = ax.twinx()
    margins.plot(
        steps, [row.get("eval_rewards/margins", 0.0) for row in rows], color="#c44e52", marker="s", markersize=3
    )
    margins.set_ylabel("reward margin (chosen - rejected)", color="#c44e52")
    if best_step is not None:
        ax.axvline(best_step, color="#55a868", linestyle="--")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
