"""`finetune doctor`: the real probes on this (CPU) machine, the guard around each probe, and the CLI contract."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
from typer.testing import CliRunner

from finetune.cli import app
from finetune.doctor import probes
from finetune.doctor.checks import DEADLINE_S, FAIL, OK, WARN, Check, Probe, run_probes
from finetune.doctor.gpu import driver_compat, has_kernels

ORDER = [
    "python",
    "torch",
    "cuda",
    "driver",
    "bitsandbytes",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "unsloth",
    "flash-attn",
    "hub cache",
    "hub",
    "hf token",
]


@pytest.fixture(scope="module")
def real() -> tuple[list[Check], float]:
    start = time.monotonic()
    checks = run_probes(probes.default_probes())
    return checks, time.monotonic() - start


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_every_probe_answers_in_order_within_ten_seconds(real):
    import torch

    checks, seconds = real
    # < 10 s on the CPU dev/CI machines (~4 s). A GPU machine may take longer in imports alone (15 s
    # measured on an H200 container with a slow filesystem), bounded by the doctor's deadline.
    assert seconds < (DEADLINE_S + 1 if torch.cuda.is_available() else 10)
    assert all(check.status in (OK, WARN, FAIL) and check.detail for check in checks)
    names = [check.name for check in checks if not check.name.startswith("gpu ")]
    assert names == ORDER
    assert all(check.fix for check in checks if check.status != OK), "every WARN/FAIL line says how to fix it"
    assert not [check for check in checks if "skipped" in check.detail], "no probe should hit its budget here"


def test_bitsandbytes_runs_a_real_4bit_matmul_on_cpu(real):
    import torch

    check = by_name(real[0])["bitsandbytes"]
    assert check.status == OK, check
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"NF4 matmul on {device}" in check.detail


def test_no_gpu_is_a_warning_with_a_fix(real):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    check = by_name(real[0])["cuda"]
    assert check.status == WARN and "--gpus all" in check.fix


def test_libraries_meet_the_pyproject_minimums(real):
    checks = by_name(real[0])
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "datasets"):
        assert checks[name].status == OK, checks[name]
    assert ">=" in checks["peft"].detail  # the minimum comes from the package metadata (pyproject.toml)


def test_a_probe_that_raises_becomes_a_fail_line():
    def broken() -> Check:
        raise RuntimeError("libcudart.so.12: cannot open shared object file\nmore lines")

    fine = Probe("fine", lambda: Check("fine", OK, "all good"))
    checks = run_probes([Probe("broken", broken), Probe("returns nothing", lambda: None), fine])
    assert [c.name for c in checks] == ["broken", "returns nothing", "fine"]
    assert checks[1].status == FAIL and "TypeError" in checks[1].detail
    assert checks[0].status == FAIL and checks[0].fix
    assert checks[0].detail == "probe raised RuntimeError: libcudart.so.12: cannot open shared object file"
    assert checks[2].status == OK


def test_a_probe_that_hangs_is_skipped_with_a_warning():
    start = time.monotonic()
    checks = run_probes(
        [Probe("hangs", lambda: time.sleep(30), budget_s=0.3), Probe("late", lambda: Check("late", OK, "x"))],
        deadline_s=0.5,
    )
    assert time.monotonic() - start < 2
    assert checks[0].status == WARN and "skipped" in checks[0].detail
    assert checks[1].status == WARN and "budget" in checks[1].detail  # 0.2 s left: not started


def test_json_prints_exactly_one_object():
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # the whole of stdout is one object
    assert payload["ok"] is True
    assert [c["name"] for c in payload["checks"] if not c["name"].startswith("gpu ")] == ORDER
    assert set(payload["checks"][0]) == {"name", "status", "detail", "fix", "seconds"}


def test_human_table_and_exit_codes(monkeypatch):
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "bitsandbytes" in result.stdout
    if importlib.util.find_spec("unsloth") is None:  # the fix names the extra
        assert "finetune[unsloth]" in result.stdout  # markup escaped, not eaten

    def broken() -> Check:
        raise ImportError("no module named bitsandbytes")

    monkeypatch.setattr(probes, "default_probes", lambda: [Probe("bitsandbytes", broken)])
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 1  # a FAIL: scripts can gate on the exit code
    assert json.loads(result.stdout)["ok"] is False


def test_the_token_is_never_printed(monkeypatch):
    secret = "hf_doctorTestSecretValue123"
    monkeypatch.setenv("HF_TOKEN", secret)
    check = probes.probe_token()
    assert check.status == OK and secret not in check.detail
    monkeypatch.setattr(probes, "default_probes", lambda: [Probe("hf token", probes.probe_token)])
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert secret not in result.output


@pytest.mark.parametrize(
    ("driver", "driver_cuda", "runtime", "status"),
    [
        ("570.86", "12.8", "12.8", OK),
        ("550.54", "12.4", "12.8", WARN),  # same major, older minor: minor version compatibility
        ("570.86", "12.8", "13.0", FAIL),  # older major: the CUDA 13 runtime cannot start
        ("535.104", None, "12.4", OK),  # no CUDA version known: the per-major driver floor (525.60)
        ("470.82", None, "12.4", FAIL),
        (None, None, "12.8", WARN),  # CUDA torch, no driver: a CPU machine or a container without --gpus
        (None, None, None, OK),  # CPU torch, no driver: nothing to match
    ],
)
def test_driver_rule(driver, driver_cuda, runtime, status):
    got, detail, fix = driver_compat(driver, driver_cuda, runtime)
    assert got == status, detail
    assert bool(fix) == (status != OK)


def test_kernel_coverage_of_the_torch_build():
    arches = ["sm_75", "sm_80", "sm_86", "sm_90", "compute_90"]
    assert has_kernels((8, 9), arches)  # sm_86 SASS runs on sm_89
    assert has_kernels((12, 0), arches)  # PTX for compute_90 JIT-compiles on Blackwell
    assert not has_kernels((6, 1), arches)  # Pascal: nothing older than sm_75
    assert not has_kernels((7, 0), ["sm_75", "sm_80"])


def test_a_cuda_build_on_a_machine_without_a_gpu_names_the_cpu_build(monkeypatch):
    import shutil

    import torch

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    check = probes.probe_torch()
    assert check.status == WARN and "no NVIDIA GPU" in check.detail and "whl/cpu" in check.fix
