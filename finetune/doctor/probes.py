"""The software probes of `finetune doctor` (Python, torch, libraries, hub) and the order of all probes."""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import shutil
import sys
from collections.abc import Callable

from finetune.doctor.checks import FAIL, OK, WARN, Check, GiB, Probe, installed_version, meets, minimums
from finetune.doctor.gpu import probe_bitsandbytes, probe_cuda, probe_driver
from finetune.paths import hub_reachable


def probe_python() -> Check:
    return Check("python", OK, f"Python {platform.python_version()} ({sys.executable})")  # pip enforces >= 3.10


def probe_torch() -> Check:
    import torch

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    detail, need = f"torch {torch.__version__}, {build}", minimums().get("torch", "")
    if need and not meets(torch.__version__.split("+")[0], need):
        return Check("torch", FAIL, detail, f"pip install -U 'torch{need}'")
    if not torch.version.cuda and shutil.which("nvidia-smi"):
        return Check(
            "torch",
            WARN,
            detail + ", but an NVIDIA driver is present",
            "install a CUDA build: pip install torch --index-url https://download.pytorch.org/whl/cu128",
        )
    if torch.version.cuda and not shutil.which("nvidia-smi") and not torch.cuda.is_available():
        return Check(
            "torch",
            WARN,
            detail + " on a machine with no NVIDIA GPU: several GB of CUDA libraries that cannot be used",
            "the CPU build is ~10x smaller: pip install torch --index-url https://download.pytorch.org/whl/cpu",
        )
    return Check("torch", OK, detail)


LIBRARIES = {
    "transformers": "transformers",
    "peft": "peft",
    "trl": "trl.SFTTrainer",
    "accelerate": "accelerate",
    "datasets": "datasets",
}


def probe_libraries() -> list[Check]:
    """Installed versions against pyproject's minimums, and that each one imports (trl pulls the Trainer in)."""
    needs, checks = minimums(), []
    for dist, target in LIBRARIES.items():
        need, found = needs.get(dist, ""), installed_version(dist)
        fix = f"pip install -U '{dist}{need}'"
        if found is None:
            checks.append(Check(dist, FAIL, "not installed", fix))
            continue
        module, _, attr = target.partition(".")
        loaded = importlib.import_module(module)
        if attr:
            getattr(loaded, attr)
        ok = not need or meets(found, need)
        checks.append(
            Check(dist, OK if ok else FAIL, f"{dist} {found}" + (f" (needs {need})" if need else ""), "" if ok else fix)
        )
    return checks


def probe_optional(name: str, module: str, fix: str) -> Callable[[], Check]:
    def probe() -> Check:  # find_spec only: importing unsloth patches transformers for the whole process
        if importlib.util.find_spec(module) is None:
            return Check(name, WARN, "not installed", fix)
        return Check(name, OK, f"{name} {installed_version(name) or '(version unknown)'} is importable")

    return probe


def probe_hub_cache() -> Check:
    from huggingface_hub import constants

    cache = constants.HF_HUB_CACHE
    existing = cache
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free / GiB
    detail = f"{cache}: {free:.0f} GiB free"
    if not os.access(existing, os.W_OK):
        return Check(
            "hub cache", WARN, detail + ", not writable", "set HF_HOME to a writable folder (or fix the volume's owner)"
        )
    if free < 10:  # an 8B model is ~16 GB in bf16
        return Check("hub cache", WARN, detail, "free disk space or point HF_HOME at a larger disk")
    return Check("hub cache", OK, detail)


def probe_hub() -> Check:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return Check(
            "hub",
            WARN,
            "offline mode (HF_HUB_OFFLINE is set): only cached models load",
            "unset HF_HUB_OFFLINE to download",
        )
    if hub_reachable():  # a 2 s TCP connect, cached for the process
        return Check("hub", OK, f"{endpoint} is reachable")
    return Check(
        "hub",
        WARN,
        f"{endpoint} not reachable (2 s TCP probe): only cached models load",
        "check the network or proxy (HTTPS_PROXY), or set HF_ENDPOINT to a mirror",
    )


def probe_token() -> Check:
    from huggingface_hub import constants, get_token

    if not get_token():  # read, never printed
        return Check(
            "hf token",
            WARN,
            "no Hugging Face token",
            "gated models (meta-llama/*) need one: `hf auth login` or set HF_TOKEN",
        )
    where = "HF_TOKEN" if os.environ.get("HF_TOKEN") else constants.HF_TOKEN_PATH
    return Check("hf token", OK, f"token found ({where}); not shown")


UNSLOTH_FIX = "optional, CUDA GPU only: pip install 'finetune[unsloth]'; without it the hf backend is used"
FLASH_FIX = "optional, Ampere or newer: pip install flash-attn --no-build-isolation; sdpa attention is used otherwise"


def default_probes() -> list[Probe]:
    """Every probe, in the order shown."""
    return [
        # Budgets are hang guards, about 10x the slowest time seen: a busy machine (a build, a training run,
        # other containers) makes imports several times slower, and a skipped probe is a wrong answer.
        Probe("python", probe_python, 10),
        Probe("torch", probe_torch, 60),  # a cold import from a container's disk: 3.7 s (H200), 4.3 s (busy CPU)
        Probe("cuda", probe_cuda, 60),  # CUDA start-up: 1-3 s, more per extra GPU
        Probe("driver", probe_driver, 15),  # nvidia-smi has a 3 s timeout of its own
        Probe("bitsandbytes", probe_bitsandbytes, 90),  # its CUDA library, cuBLAS, 3 kernels: 7.9 s (H200)
        Probe("libraries", probe_libraries, 60),  # five imports: 4.3 s (H200), 7.2 s (busy 2-core CPU)
        Probe("unsloth", probe_optional("unsloth", "unsloth", UNSLOTH_FIX), 15),
        Probe("flash-attn", probe_optional("flash-attn", "flash_attn", FLASH_FIX), 15),
        Probe("hub cache", probe_hub_cache, 15),
        Probe("hub", probe_hub, 15),  # the TCP probe gives up after 2 s (+ DNS)
        Probe("hf token", probe_token, 15),
    ]
