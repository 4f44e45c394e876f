"""Where things live: finetune's cache home, the shipped recipes, "local path or hub id?", and whether the hub
is reachable.

The hub is asked once, quickly, before any hub call.

huggingface_hub retries a failed connection five times with back-off (~25 s); on an offline
machine or in a locked-down container that is 25 s of noise before a one-line error. A 2 s TCP
probe answers the question first; when it fails we switch the process to offline mode, so hub
calls fail at once and cached files still load.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from finetune.errors import UserError


def cache_home() -> Path:
    """$FINETUNE_HOME, default ~/.cache/finetune: the tiny model and the token cache."""
    return Path(os.environ.get("FINETUNE_HOME", Path.home() / ".cache" / "finetune"))


def umask_mode(directory: bool) -> int:
    """The mode a plain open()/mkdir() would give under the user's umask (mkstemp/mkdtemp give 0600/0700,
    which a host outside a container, or another user, cannot read)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def looks_like_path(name: str) -> bool:
    """Whether a model name is meant as a local path rather than a hub id (org/name).

    ./x, ../x, /x, ~/x, or more than one slash (a hub id has exactly one).
    """
    return name.startswith((".", "/", "~")) or name.count("/") > 1


@functools.cache
def hub_reachable(timeout_s: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def go_offline_if_unreachable() -> bool:
    """Set HF_HUB_OFFLINE when the hub cannot be reached; returns whether it is reachable."""
    reachable = hub_reachable()
    if not reachable:
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:  # huggingface_hub reads the variable at import; update the live constant too
            from huggingface_hub import constants

            constants.HF_HUB_OFFLINE = True
        except ImportError:
            pass
    return reachable


def looks_like_file(value: str) -> bool:
    """A data path the user clearly meant as a file: a data-file suffix, or starts with ./ ../ / ~."""
    suffixes = (".jsonl", ".json", ".csv", ".parquet", ".yaml", ".yml")
    return value.startswith((".", "/", "~")) or value.endswith(suffixes)


def shipped_recipes_dir() -> Path:
    """The recipes shipped in the package, beside the sample data they read (../data/...).

    In the repository finetune/shipped/recipes and finetune/shipped/data are symlinks to recipes/ and data/
    (an editable install reads those); a wheel carries copies (pyproject.toml's package-data).
    """
    return Path(__file__).parent / "shipped" / "recipes"


def shipped_recipes() -> dict[str, Path]:
    """Shipped recipe name (the file name without .yaml) -> its file, sorted by name."""
    return {path.stem: path for path in sorted(shipped_recipes_dir().glob("*.yaml"))}


def find_recipe(value: str | Path) -> Path:
    """A recipe argument: an existing file wins; else a bare name (`quickstart`, `quickstart.yaml`) is a shipped
    recipe. A path with a folder in it is returned as given, for the loader to report when it is missing."""
    path = Path(value)
    text = str(value)
    if path.is_file() or "/" in text or os.sep in text or text.startswith("~"):
        return path
    shipped = shipped_recipes()
    name = text.removesuffix(".yaml").removesuffix(".yml")
    if name in shipped:
        return shipped[name]
    names = ", ".join(shipped) or "none"
    raise UserError(f"{text}: no such recipe file and no shipped recipe of that name; shipped: {names}")
