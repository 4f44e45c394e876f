"""GPU probes for `finetune doctor`: CUDA devices, driver vs CUDA runtime, a real 4-bit matmul with bitsandbytes.

The probe order lives in probes.py, the runner in checks.py.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess

from finetune.doctor.checks import FAIL, OK, WARN, Check, GiB, minimums


def probe_cuda() -> list[Check]:
    import torch

    if not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if not torch.version.cuda else "torch cannot see a GPU"
        fix = (
            "QLoRA on CPU is for tiny models only (recipes/quickstart.yaml); on a GPU machine install the NVIDIA "
            "driver and a CUDA build of torch; in Docker run with --gpus all (NVIDIA Container Toolkit)"
        )
        return [Check("cuda", WARN, f"no CUDA GPU: {why}", fix)]
    arches = torch.cuda.get_arch_list()  # what this torch build has kernels for, e.g. sm_80, compute_90
    checks = [Check("cuda", OK, f"{torch.cuda.device_count()} GPU(s), CUDA runtime {torch.version.cuda}")]
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        cc = (props.major, props.minor)
        free, total = torch.cuda.mem_get_info(index)
        bf16 = "bf16 yes" if cc >= (8, 0) else "bf16 no: fp16 is used (dtype: auto)"
        detail = f"{props.name}, sm_{cc[0]}{cc[1]}, {free / GiB:.1f} of {total / GiB:.1f} GiB free, {bf16}"
        status, fix = OK, ""
        if not has_kernels(cc, arches):
            status, fix = (
                FAIL,
                f"this torch has no kernels for sm_{cc[0]}{cc[1]} ({' '.join(arches)}): install a build that does",
            )
        elif free < 0.75 * total:  # the CUDA context itself takes ~0.5 GiB; much more is another process
            status, fix = (
                WARN,
                "another process holds GPU memory: see nvidia-smi and stop it, or plan with --gpu-memory",
            )
        checks.append(Check(f"gpu {index}", status, detail, fix))
    return checks


def has_kernels(cc: tuple[int, int], arches: list[str]) -> bool:
    """SASS for sm_XY runs on the same major with minor >= Y; PTX (compute_XY) JIT-compiles for any newer GPU."""
    for arch in arches:
        kind, _, digits = arch.partition("_")
        if not digits[:-1].isdigit():
            continue
        major, minor = int(digits[:-1]), int(digits[-1])
        if (kind == "sm" and major == cc[0] and minor <= cc[1]) or (kind == "compute" and (major, minor) <= cc):
            return True
    return not arches  # an empty list means torch did not say: do not guess


# Minimum Linux driver for each CUDA major under "minor version compatibility": a driver from the
# first release of a major runs every later minor of it, except PTX JIT of newer code.
MIN_DRIVER = {11: (450, 80), 12: (525, 60), 13: (580, 65)}


def driver_compat(driver: str | None, driver_cuda: str | None, runtime: str | None) -> tuple[str, str, str]:
    """The rule: the driver's CUDA version (what nvidia-smi shows as "CUDA Version") must be >= the CUDA
    torch was built with: OK. Same major but older: WARN (minor version compatibility runs it, PTX JIT
    of newer kernels fails). Older major: FAIL. Without the driver's CUDA version, use MIN_DRIVER."""
    if runtime is None:
        return (
            WARN if driver else OK,
            f"driver {driver or 'not found'}; torch is CPU-only: nothing to match",
            "install a CUDA build of torch to use the GPU" if driver else "",
        )
    if driver is None and driver_cuda is None:
        return (
            WARN,
            f"no NVIDIA driver found (torch built for CUDA {runtime})",
            "install the NVIDIA driver; in Docker use --gpus all with the NVIDIA Container Toolkit",
        )
    need = tuple(int(p) for p in runtime.split(".")[:2])
    upgrade = (
        f"upgrade the NVIDIA driver to one for CUDA {runtime}, or install a torch built for the driver's CUDA: "
        "pip install torch --index-url https://download.pytorch.org/whl/cuXYZ"
    )
    if driver_cuda:
        has = tuple(int(p) for p in driver_cuda.split(".")[:2])
        detail = f"driver {driver or '?'} supports CUDA {driver_cuda}; torch uses CUDA {runtime}"
        if has >= need:
            return OK, detail, ""
        if has[0] == need[0]:
            return WARN, detail + " (minor version compatibility)", upgrade
        return FAIL, detail, upgrade
    floor = MIN_DRIVER.get(need[0])
    if floor is None:
        return WARN, f"driver {driver}; torch uses CUDA {runtime}, a CUDA major this check does not know", upgrade
    has = tuple(int(p) for p in re.findall(r"\d+", driver or "")[:2])
    detail = f"driver {driver}; torch uses CUDA {runtime} (needs driver >= {floor[0]}.{floor[1]})"
    return (OK, detail, "") if has >= floor else (FAIL, detail, upgrade)


def _driver_versions() -> tuple[str | None, str | None]:
    """(driver version, highest CUDA it supports) from NVML if installed, else nvidia-smi."""
    if importlib.util.find_spec("pynvml"):
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()  # e.g. 12040
        return (driver.decode() if isinstance(driver, bytes) else driver), f"{cuda // 1000}.{cuda % 1000 // 10}"
    if shutil.which("nvidia-smi"):
        text = subprocess.run(["nvidia-smi"], check=False, capture_output=True, text=True, timeout=3).stdout
        driver, cuda = re.search(r"Driver Version:\s*([\d.]+)", text), re.search(r"CUDA Version:\s*([\d.]+)", text)
        return (driver and driver.group(1)), (cuda and cuda.group(1))
    return None, None


def probe_driver() -> Check:
    import torch

    status, detail, fix = driver_compat(*_driver_versions(), torch.version.cuda)
    return Check("driver", status, detail, fix)


def probe_bitsandbytes() -> Check:
    """Quantize a random weight to NF4 and run forward and backward on the device against the dequantized fp32 matmul."""
    import logging

    import torch

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "kernels-community" notice on CPU
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    device = "cuda" if torch.cuda.is_available() else "cpu"
    compute = torch.float16 if device == "cuda" else torch.float32
    fix = (
        "pip install -U 'bitsandbytes" + minimums().get("bitsandbytes", "") + "'; on a GPU it needs a CUDA torch build "
        "and BNB_CUDA_VERSION unset"
    )
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 256, generator=gen)
    layer = bnb.nn.Linear4bit(256, 64, bias=False, compute_dtype=compute, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    layer = layer.to(device)  # quantizes here
    state = layer.weight.quant_state
    if state is None or layer.weight.dtype != torch.uint8:
        return Check(
            "bitsandbytes", FAIL, f"bitsandbytes {bnb.__version__}: the weight was not quantized on {device}", fix
        )
    dequant = dequantize_4bit(layer.weight.data, state).float().cpu()
    worst = 0.0
    # 1 row without grad: the fused 4-bit GEMV kernel (inference); 8 rows with grad: dequantize + matmul + backward,
    # the path QLoRA trains through (the gradient must flow through the frozen 4-bit layer to the adapters).
    for rows, grad in ((1, False), (8, True)):
        x = torch.randn(rows, 256, generator=gen).to(device, compute).requires_grad_(grad)
        y = layer(x)
        ref = x.detach().float().cpu() @ dequant.t()
        worst = max(worst, _rel(y.detach().float().cpu(), ref))
        if grad:
            y.float().sum().backward()
            worst = max(worst, _rel(x.grad.float().cpu(), dequant.sum(0).expand(rows, -1)))
    quant_err = _rel(dequant, weight)  # NF4 itself: ~0.1 relative error on Gaussian weights
    detail = f"bitsandbytes {bnb.__version__}: NF4 matmul on {device} matches fp32 (rel. error {worst:.1e}, NF4 {quant_err:.2f})"
    if worst > 2e-2 or quant_err > 0.25:
        return Check("bitsandbytes", FAIL, detail.replace("matches", "differs from"), fix)
    return Check("bitsandbytes", OK, detail)


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
