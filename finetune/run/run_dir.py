"""The run directory: created safely, written atomically, recognisable as finished.

RUN/recipe.yaml      resolved recipe          RUN/metrics.json   written last: its presence = finished
RUN/adapter/         PEFT adapter + tokenizer RUN/loss.png       train/validation loss, best step marked
RUN/checkpoints/     trainer checkpoints      RUN/tb/            TensorBoard logs (when chosen)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from finetune.errors import UserError

METRICS = "metrics.json"
ADAPTER = "adapter"


def is_finished(run: Path) -> bool:
    return (run / METRICS).is_file() and (run / ADAPTER / "adapter_config.json").is_file()


def prepare(run: Path, overwrite: bool) -> None:
    """Create RUN, refusing to mix two runs in one folder unless --overwrite says so."""
    if run.exists() and not run.is_dir():
        raise UserError(f"{run}: output path exists and is a file; choose another -o/--output")
    if run.is_dir() and any(run.iterdir()):
        if not overwrite:
            raise UserError(
                f"{run}: output directory is not empty; pass --resume to continue its run, --overwrite to replace "
                "it, or choose another -o"
            )
        for child in run.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{run}: cannot write to the output directory ({err.strerror}); choose another -o") from err


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


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
        model.save_pretrained(staging, state_dict=state_dict, **convert)
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
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_metrics(run: Path) -> dict[str, Any]:
    return json.loads((run / METRICS).read_text(encoding="utf-8"))


def plot_loss(history: list[dict], best_step: int | None, path: Path) -> None:
    """Train and validation loss against optimizer step, the best step marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display in containers and CI
    import matplotlib.pyplot as plt

    train = [(row["step"], row["loss"]) for row in history if "loss" in row]
    val = [(row["step"], row["eval_loss"]) for row in history if "eval_loss" in row]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=False), label="train loss", color="#4c72b0", alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=False), label="validation loss", color="#dd8452", marker="o", markersize=3)
    if best_step is not None:
        ax.axvline(best_step, color="#55a868", linestyle="--", label=f"best (step {best_step})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
