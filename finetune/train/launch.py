"""`finetune train --nproc N`: re-run the same command under torchrun, one process per device.

Nothing here is a launcher of our own: torchrun (torch.distributed.run) starts the processes and
sets RANK/LOCAL_RANK/WORLD_SIZE; the trainer (accelerate) then initialises NCCL on GPUs or gloo on
the CPU, wraps the model in DDP, and shards the batches. Each rank loads its own 4-bit model on
cuda:LOCAL_RANK. Only rank 0 writes the run directory and prints.
For several machines use torchrun's rendezvous or `accelerate launch` directly (docs/multi-gpu.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from finetune.errors import UserError
from finetune.model.devices import under_torchrun

# A worker that stops on bad input writes its one-line message here (the first rank to fail wins), so
# the launching process can print it and exit 2 like a single-process run: torchrun reports any worker
# failure as exit code 1, and the failing rank need not be rank 0 (free memory differs per GPU).
USER_ERROR_FILE = "FINETUNE_USER_ERROR_FILE"


def report_user_error(message: str) -> bool:
    """Leave the message for `relaunch`; False when the worker must print it itself (not launched by
    `relaunch`, or the message cannot be written: the disk may be the full one)."""
    path = os.environ.get(USER_ERROR_FILE)
    if not path:
        return False
    try:
        staged = f"{path}.{os.getpid()}"
        Path(staged).write_text(message, encoding="utf-8")
        try:
            os.link(staged, path)  # atomic, and fails if another rank's message is already there
        except FileExistsError:
            pass
        finally:
            os.unlink(staged)
    except OSError:
        return False
    return True


def check_fsdp(fsdp: bool, nproc: int, dry_run: bool = False) -> str | None:
    """train.fsdp needs CUDA GPUs (accelerate shards only across GPUs); returns a note when it is moot."""
    if not fsdp:
        return None
    if nproc == 1 and not under_torchrun():
        return "train.fsdp has no effect in one process; pass --nproc N to shard the model over N GPUs"
    import torch

    if not torch.cuda.is_available():
        if dry_run:
            return "train.fsdp needs CUDA GPUs and none is visible here"
        raise UserError("train.fsdp: FSDP shards the model across CUDA GPUs and none is visible; remove train.fsdp")
    return None


def all_ranks_max(value: float, device) -> float:
    """The largest `value` over all processes (itself when not distributed): ranks must agree to
    skip a step or to stop, or DDP replicas drift apart or deadlock in the next collective."""
    return _all_reduce(value, device, "max")


def all_ranks_sum(value, device) -> int:
    """The sum of a count (an int or a 0-d tensor) over all processes."""
    return int(_all_reduce(value, device, "sum"))


def _all_reduce(value, device, op: str) -> float:
    import torch
    import torch.distributed as dist

    tensor = torch.as_tensor(value, dtype=torch.float64, device=device).reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op={"max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}[op])
    return float(tensor.item())


def finish() -> None:
    """Leave the process group cleanly (NCCL warns about leaked resources otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def relaunch(nproc: int, train_args: list[str]) -> int:
    """Run `finetune train ...train_args` under torchrun with `nproc` processes; return its exit code."""
    import torch

    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise UserError(f"--nproc {nproc}: only {torch.cuda.device_count()} GPUs are visible")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "finetune",
        "train",
        *train_args,
    ]
    error_file = Path(tempfile.mkdtemp(prefix="finetune-")) / "user-error"  # created by the first failing rank
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), USER_ERROR_FILE: str(error_file)}
    child = subprocess.Popen(command, env=env)
    received: list[int] = []

    def forward(signum, frame):  # Ctrl-C / docker stop reach the workers, which checkpoint and stop
        received.append(signum)
        child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        user_error = error_file.read_text(encoding="utf-8") if error_file.exists() else ""
        shutil.rmtree(error_file.parent, ignore_errors=True)
    if received and code != 0:  # an interruption keeps its conventional code
        return 128 + received[0]
    if user_error and code != 0:
        print(f"error: {user_error}", file=sys.stderr)
        return 2
    return code
