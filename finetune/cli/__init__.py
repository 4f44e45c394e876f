"""The `finetune` command line: parse flags, call one function, map errors to exit codes.

Importing this package registers every command group on `app` (the console script's entry point), in
the order `finetune --help` lists them: train first, the machine last.
"""

# isort: skip_file
from finetune.cli import train, vram, run, runs, data, doctor
from finetune.cli.app import app

__all__ = ["app", "data", "doctor", "run", "runs", "train", "vram"]
