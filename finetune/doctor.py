"""`finetune doctor`: the facts that decide whether a run will work, each as OK, WARN or FAIL with a fix.

Every probe is guarded: one that raises becomes a FAIL line, one that hangs past its budget (a
wedged driver, a network mount) is skipped with a WARN, so the doctor itself never crashes and always
answers. Probes run in a fixed order and import heavy libraries inside themselves.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

OK, WARN, FAIL = "OK", "WARN", "FAIL"
GiB = 1024**3
# Budgets guard against hangs; they are not the speed target. About 4 s on the CPU dev machine; 16 s on an
# H200 container with a slow filesystem, nearly all imports (bitsandbytes 7.9 s; its 4-bit proof 0.4 s).
# Skipping the proof to stay under 10 s would defeat the doctor.
DEADLINE_S = 30.0


@dataclass
class Check:
    name: str
    status: str  # OK | WARN | FAIL
    detail: str
    fix: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Probe:
    name: str
    run: Callable[[], Check | list[Check]]
    budget_s: float = 3.0  # skipped with WARN past this (or past what is left of DEADLINE_S): a hang guard


def run_probes(probes: list[Probe] | None = None, deadline_s: float = DEADLINE_S) -> list[Check]:
    """Run each probe in order, in a daemon thread so a hang cannot block the doctor."""
    start, checks = time.monotonic(), []
    for probe in default_probes() if probes is None else probes:
        left = deadline_s - (time.monotonic() - start)
        if left < 0.2:
            checks.append(Check(probe.name, WARN, "skipped: the doctor's time budget was spent",
                                "run `finetune doctor` again; a slow import or GPU start-up used the time"))  # fmt: skip
            continue
        checks.extend(_guarded(probe, min(probe.budget_s, left)))
    return checks


def _guarded(probe: Probe, timeout_s: float) -> list[Check]:
    result: list = []
    began = time.monotonic()

    def target() -> None:
        try:
            found = probe.run()
            found = found if isinstance(found, list) else [found]
            if not found or not all(isinstance(check, Check) for check in found):
                raise TypeError(f"the probe returned {found!r}, not a Check")
            result.append(found)
        except BaseException as err:  # noqa: BLE001  a probe must never take the doctor down
            first = (str(err).splitlines() or [""])[0][:300]
            result.append([Check(probe.name, FAIL, f"probe raised {err.__class__.__name__}: {first}",
                                 "a broken installation is the usual cause: reinstall the package the error names")])  # fmt: skip

    thread = threading.Thread(target=target, name=f"doctor-{probe.name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    seconds = round(time.monotonic() - began, 2)
    if not result:  # still running: leave the daemon thread behind, say so
        return [Check(probe.name, WARN, f"skipped: no answer within {timeout_s:.1f} s",
                      "run the step by hand to see where it hangs (a wedged GPU driver or a network mount)", seconds)]  # fmt: skip
    for check in result[0]:
        check.seconds = seconds
    return result[0]


@contextlib.contextmanager
def stdout_to_stderr():
    """Libraries that print while loading must not corrupt `--json` on stdout (Python and C level)."""
    saved = fd = None
    try:
        sys.stdout.flush()
        fd = sys.stdout.fileno()
        saved = os.dup(fd)
        os.dup2(sys.stderr.fileno(), fd)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        saved = None  # a captured stream (tests): swapping sys.stdout below is enough
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            sys.stdout.flush()
            os.dup2(saved, fd)
            os.close(saved)


# --------------------------------------------------------------------------------------------
# Versions and minimums


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def minimums() -> dict[str, str]:
    """The lower bounds this package declares (pyproject.toml -> installed metadata), e.g. {"peft": ">=0.17"}."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    try:
        lines = requires("finetune") or []
    except PackageNotFoundError:
        return {}
    found = {}
    for line in lines:
        req = Requirement(line)
        if req.marker is None:
            found[req.name.lower()] = str(req.specifier)
    return found


def _meets(installed: str, spec: str) -> bool:
    from packaging.specifiers import SpecifierSet

    return SpecifierSet(spec).contains(installed, prereleases=True)


# --------------------------------------------------------------------------------------------
# Probes, in the order they are shown


def probe_python() -> Check:
    return Check("python", OK, f"Python {platform.python_version()} ({sys.executable})")  # pip enforces >= 3.10


def probe_torch() -> Check:
    import torch

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    detail, need = f"torch {torch.__version__}, {build}", minimums().get("torch", "")
    if need and not _meets(torch.__version__.split("+")[0], need):
        return Check("torch", FAIL, detail, f"pip install -U 'torch{need}'")
    if not torch.version.cuda and shutil.which("nvidia-smi"):
        return Check("torch", WARN, detail + ", but an NVIDIA driver is present",
                     "install a CUDA build: pip install torch --index-url https://download.pytorch.org/whl/cu128")  # fmt: skip
    return Check("torch", OK, detail)


LIBRARIES = {"transformers": "transformers", "peft": "peft", "trl": "trl.SFTTrainer",
             "accelerate": "accelerate", "datasets": "datasets"}  # fmt: skip


def probe_libraries() -> list[Check]:
    """Installed versions against pyproject's minimums, and that each one imports (trl pulls the Trainer in)."""
    needs, checks = minimums(), []
    for dist, target in LIBRARIES.items():
        need, found = needs.get(dist, ""), _version(dist)
        fix = f"pip install -U '{dist}{need}'"
        if found is None:
            checks.append(Check(dist, FAIL, "not installed", fix))
            continue
        module, _, attr = target.partition(".")
        loaded = importlib.import_module(module)
        if attr:
            getattr(loaded, attr)
        ok = not need or _meets(found, need)
        checks.append(
            Check(dist, OK if ok else FAIL, f"{dist} {found}" + (f" (needs {need})" if need else ""), "" if ok else fix)
        )
    return checks


def probe_optional(name: str, module: str, fix: str) -> Callable[[], Check]:
    def probe() -> Check:  # find_spec only: importing unsloth patches transformers for the whole process
        if importlib.util.find_spec(module) is None:
            return Check(name, WARN, "not installed", fix)
        return Check(name, OK, f"{name} {_version(name) or '(version unknown)'} is importable")

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
        return Check("hub cache", WARN, detail + ", not writable", "set HF_HOME to a writable folder (or fix the volume's owner)")
    if free < 10:  # an 8B model is ~16 GB in bf16
        return Check("hub cache", WARN, detail, "free disk space or point HF_HOME at a larger disk")
    return Check("hub cache", OK, detail)


def probe_hub() -> Check:
    from finetune.hub import hub_reachable

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return Check(
            "hub", WARN, "offline mode (HF_HUB_OFFLINE is set): only cached models load", "unset HF_HUB_OFFLINE to download"
        )
    if hub_reachable():  # a 2 s TCP connect, cached for the process
        return Check("hub", OK, f"{endpoint} is reachable")
    return Check("hub", WARN, f"{endpoint} not reachable (2 s TCP probe): only cached models load",
                 "check the network or proxy (HTTPS_PROXY), or set HF_ENDPOINT to a mirror")  # fmt: skip


def probe_token() -> Check:
    from huggingface_hub import constants, get_token

    if not get_token():  # read, never printed
        return Check("hf token", WARN, "no Hugging Face token",
                     "gated models (meta-llama/*) need one: `hf auth login` or set HF_TOKEN")  # fmt: skip
    where = "HF_TOKEN" if os.environ.get("HF_TOKEN") else constants.HF_TOKEN_PATH
    return Check("hf token", OK, f"token found ({where}); not shown")


UNSLOTH_FIX = "optional, CUDA GPU only: pip install 'finetune[unsloth]'; without it the hf backend is used"
FLASH_FIX = "optional, Ampere or newer: pip install flash-attn --no-build-isolation; sdpa attention is used otherwise"


def default_probes() -> list[Probe]:
    """Every probe, in the order shown. (doctor_gpu imports Check from here, so it is imported late.)"""
    from finetune.doctor_gpu import probe_bitsandbytes, probe_cuda, probe_driver

    return [
        Probe("python", probe_python, 1),
        Probe("torch", probe_torch, 15),  # a cold import from a container's disk: 5+ s
        Probe("cuda", probe_cuda, 10),  # CUDA start-up: 1-3 s, more per extra GPU
        Probe("driver", probe_driver, 5),  # nvidia-smi has a 3 s timeout of its own
        Probe("bitsandbytes", probe_bitsandbytes, 15),  # loads its CUDA library, cuBLAS, runs 3 kernels
        Probe("libraries", probe_libraries, 10),
        Probe("unsloth", probe_optional("unsloth", "unsloth", UNSLOTH_FIX), 2),
        Probe("flash-attn", probe_optional("flash-attn", "flash_attn", FLASH_FIX), 2),
        Probe("hub cache", probe_hub_cache, 3),
        Probe("hub", probe_hub, 4),  # the TCP probe gives up after 2 s (+ DNS)
        Probe("hf token", probe_token, 2),
    ]
