"""`finetune doctor`: will a run work on this machine?"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from finetune.cli.app import Debug, app, console, handle_errors, out, stdout_to_stderr
from finetune.doctor import probes
from finetune.doctor.checks import run_probes

STYLE = {"OK": "green", "WARN": "yellow", "FAIL": "bold red"}


@app.command()
@handle_errors
def doctor(
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    debug: Debug = False,
) -> None:
    """Check Python, torch, CUDA, the GPU, the driver, a real bitsandbytes 4-bit matmul, libraries and the hub.

    Each line says OK, WARN or FAIL with the fix. Exit code 1 when a check FAILs, else 0 (warnings included).

    Example: finetune doctor --json
    """
    start = time.monotonic()
    with stdout_to_stderr():  # a library printing while it loads must not reach stdout (--json)
        if json_output:
            checks = run_probes(probes.default_probes())
        else:
            with console.status("checking..."):
                checks = run_probes(probes.default_probes())
    failed = any(check.status == "FAIL" for check in checks)
    if json_output:
        typer.echo(json.dumps({"checks": [check.to_json() for check in checks], "ok": not failed}))
    else:
        table = Table(title="finetune doctor")
        for column in ("check", "status", "detail", "fix"):
            table.add_column(column, overflow="fold")
        for check in checks:
            table.add_row(
                check.name, f"[{STYLE[check.status]}]{check.status}[/]", escape(check.detail), escape(check.fix)
            )  # "finetune[unsloth]" is not markup
        out.print(table)
        warns = sum(check.status == "WARN" for check in checks)
        verdict = (
            "[bold red]some checks FAILED[/]"
            if failed
            else "[green]ready[/]" + (f" ({warns} warnings)" if warns else "")
        )
        out.print(f"{verdict} in {time.monotonic() - start:.1f} s")
    if failed:
        raise typer.Exit(1)
