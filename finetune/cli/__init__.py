"""The `finetune` command line: parse flags, call one function, map errors to exit codes.

Importing this package registers every command group on `app` (the console script's entry point).
"""

from finetune.cli import data, doctor, run, train, vram
from finetune.cli.app import app

__all__ = ["app", "data", "doctor", "run", "train", "vram"]
