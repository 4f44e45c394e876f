"""How long `finetune --help` takes, against an empty Python start in the same run.

    python benchmarks/cli_startup.py            # 15 runs of each, alternating; ~10 s
    python benchmarks/cli_startup.py --runs 31 --json out.json

The target is `finetune --help` under 0.3 s on the development machine (2 cores). An absolute time
depends on the machine and on what else runs on it, so the script also prints the ratio to
`python -c pass` (the interpreter's own start) measured in the same run, alternating the two so
that a change of load hits both: the ratio is the number to compare across machines and days.
Not a test: timing assertions fail on loaded machines; tests/test_layout.py checks instead that
the CLI imports no heavy library (torch, transformers, ...), which is what keeps it fast.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

TARGET_S = 0.3


def finetune_command() -> list[str]:
    """The `finetune` console script next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("finetune")
    found = str(beside) if beside.exists() else shutil.which("finetune")
    if not found:
        raise SystemExit("no `finetune` command found: pip install -e . first")
    return [found, "--help"]


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each command (median reported)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    options = parser.parse_args()

    cli, bare = finetune_command(), [sys.executable, "-c", "pass"]
    seconds(cli), seconds(bare)  # warm the file cache: the first start reads every module from disk
    load = os.getloadavg()[0]
    times: dict[str, list[float]] = {"finetune --help": [], "python -c pass": []}
    for _ in range(options.runs):  # alternating, so a change of load hits both
        times["finetune --help"].append(seconds(cli))
        times["python -c pass"].append(seconds(bare))
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "date": date.today().isoformat(),
        "runs": options.runs,
        "load_average_before": round(load, 2),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "median_s": {name: round(value, 3) for name, value in median.items()},
        "min_s": {name: round(min(values), 3) for name, values in times.items()},
        "ratio": round(median["finetune --help"] / median["python -c pass"], 1),
        "target_s": TARGET_S,
    }
    print(json.dumps(result, indent=2))
    verdict = "within" if median["finetune --help"] < TARGET_S else "OVER"
    print(
        f"\nfinetune --help: {median['finetune --help']:.3f} s median ({result['ratio']}x python -c pass, "
        f"{median['python -c pass']:.3f} s), {verdict} the {TARGET_S} s target; load average {load:.1f}"
    )
    if options.json:
        options.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
