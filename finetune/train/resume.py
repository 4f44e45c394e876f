"""`--resume`: which checkpoint to continue from, after checking it is of this very recipe and data.

Plain Python (no transformers), so `finetune train --resume` answers before any data is tokenized.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from finetune.errors import UserError
from finetune.run import run_dir

MARKER = "finetune-complete.json"  # written last into a checkpoint folder: the checkpoint is complete


def latest_complete(run: Path) -> Path | None:
    """The newest sealed checkpoint of a run, or None."""
    folder = run / "checkpoints"
    sealed = [p for p in folder.glob("checkpoint-*") if (p / MARKER).is_file()] if folder.is_dir() else []
    return max(sealed, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


@dataclass
class ResumePoint:
    checkpoint: Path | None  # None: the run died before its first checkpoint; start at step 0 in its folder
    seal: dict[str, Any]  # the checkpoint's seal (events, base_eval_loss, final), {} without a checkpoint


def check_resumable(run: Path, fingerprint: dict[str, str], resolved: dict[str, Any] | None = None) -> ResumePoint:
    """Where to resume, after checking the checkpoint (or the run's marker) is of this recipe and data."""
    checkpoint = latest_complete(run)
    marker = run_dir.read_marker(run)
    if checkpoint is None and marker is None:
        raise UserError(
            f"{run}: not a run directory finetune made, so there is nothing to resume; start without --resume"
        )
    saved = json.loads((checkpoint / MARKER).read_text()) if checkpoint else marker
    if saved.get("fsdp"):  # measured: the trainer's FSDP loading made a resumed run diverge (docs/multi-gpu.md)
        raise UserError(f"{run}: a train.fsdp run cannot be resumed yet; start it over with --overwrite")
    for key, what in (("recipe_hash", "recipe"), ("data_hash", "data")):
        if saved.get(key) != fingerprint[key]:
            changed = changed_keys(run, resolved) if what == "recipe" and resolved is not None else []
            which = f" ({', '.join(changed)})" if changed else ""
            since = checkpoint.name if checkpoint else "the run started"
            raise UserError(
                f"{run}: the {what} changed{which} since {since}; resuming would mix two runs. "
                "Resume with `finetune train --resume -o RUN` alone (it reads RUN/recipe.yaml), restore the "
                "data, or start over with --overwrite"
            )
    return ResumePoint(checkpoint, saved if checkpoint else {})


def changed_keys(run: Path, resolved: dict[str, Any]) -> list[str]:
    """Dotted keys whose value differs between RUN/recipe.yaml and `resolved` (output.* ignored)."""
    try:
        before = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []
    old, new = _flatten(before), _flatten(resolved)
    return sorted(
        key for key in old.keys() | new.keys() if old.get(key) != new.get(key) and not key.startswith("output.")
    )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
