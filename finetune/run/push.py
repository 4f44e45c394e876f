"""`finetune push`: upload a run's adapter (or its merged model, or the GGUF) with its card to the Hub.

Only the chosen folder's own files go up: never checkpoints, staging or temporary files, never anything
outside it. Private by default. The token comes from HF_TOKEN or the hub's login and is never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.errors import UserError
from finetune.paths import go_offline_if_unreachable
from finetune.run import card, run_dir
from finetune.run.inference import TrainedRun

# What a merged model's folder may hold besides its card: the model, the tokenizer, configs, GGUF + Modelfile.
MERGED_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt", ".gguf")


def select(run: TrainedRun, merged: Path | None, gguf: bool) -> tuple[Path, list[str]]:
    """(folder, the files to upload, relative to it)."""
    if gguf and merged is None:
        raise UserError("--gguf uploads the GGUF that `finetune merge --gguf` wrote: pass --merged DIR too")
    folder = run.path / run_dir.ADAPTER if merged is None else merged
    if merged is not None and not (merged / run_dir.MERGE_MARKER).is_file():
        raise UserError(f"{merged}: not a folder `finetune merge` wrote (no {run_dir.MERGE_MARKER}); merge first")
    files = sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file()
        and not path.is_symlink()  # a link could point anywhere on the machine
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)  # markers, staging, temp
        and _wanted(path.name, merged is not None, gguf)
    )
    if gguf and not any(name.endswith(".gguf") for name in files):
        raise UserError(f"{merged}: no .gguf file; run `finetune merge RUN -o {merged} --gguf` first")
    if not files:
        raise UserError(f"{folder}: nothing to upload")
    return folder, files


def _wanted(name: str, merged: bool, gguf: bool) -> bool:
    if not merged:  # the adapter folder holds only what finetune saved there
        return True
    if gguf:
        return name.endswith(".gguf") or name in ("Modelfile", card.CARD)
    return name == card.CARD or (name.endswith(MERGED_SUFFIXES) and not name.endswith(".gguf"))


def push(
    run: TrainedRun, repo: str, *, private: bool, merged: Path | None, gguf: bool, dry_run: bool
) -> dict[str, Any]:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise UserError(f"--repo {repo!r}: not a Hub repository id; use NAME or OWNER/NAME") from err
    folder, files = select(run, merged, gguf)
    plan = {"repo": repo, "private": private, "folder": str(folder), "files": files}
    if dry_run:
        return {**plan, "uploaded": False}
    from huggingface_hub import HfApi, get_token

    token = get_token()  # HF_TOKEN, or the login's stored token
    if not token:
        raise UserError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (it is never printed or saved)")
    if not go_offline_if_unreachable():
        raise UserError(
            "the Hugging Face Hub cannot be reached from this machine (or HF_HUB_OFFLINE is set); try --dry-run"
        )
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=folder, repo_id=repo, allow_patterns=files, commit_message=f"finetune push of {run.path.name}"
        )
    except Exception as err:  # HTTP errors (401, 403, 404), timeouts, a lost connection: all the user's to fix
        reason = (str(err).splitlines() or [err.__class__.__name__])[0].replace(token, "***")[:200]
        raise UserError(f"upload to {repo} failed ({err.__class__.__name__}: {reason})") from None
    return {**plan, "uploaded": True, "url": str(url)}
