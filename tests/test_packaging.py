"""The shipped recipes and their data travel in the package: `finetune recipes` and `finetune train quickstart`
work from any folder, from an editable install and from an installed wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune.cli import app
from finetune.errors import UserError
from finetune.paths import find_recipe, shipped_recipes
from tests.conftest import ROOT

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
DATA = sorted(path for path in (ROOT / "data").iterdir() if path.is_file())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built offline from a copy of what the Dockerfile's wheel stage copies (about 2 s)."""
    source = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "finetune", source / "finetune", symlinks=True, ignore=skip)  # shipped/* stay links
    for name in ("recipes", "data"):
        shutil.copytree(ROOT / name, source / name, ignore=skip)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            out,
            source,
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return next(out.glob("finetune-*.whl"))


def test_the_package_ships_every_recipe_and_data_file_of_the_repository():
    assert RECIPES and DATA
    assert list(shipped_recipes()) == [path.stem for path in RECIPES]  # a new recipes/*.yaml is shipped as is
    for name in ("recipes", "data"):
        assert (ROOT / "finetune" / "shipped" / name).resolve() == (ROOT / name).resolve()


def test_the_wheel_carries_every_recipe_and_data_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
    for folder, files in (("recipes", RECIPES), ("data", DATA)):
        for path in files:
            name = f"finetune/shipped/{folder}/{path.name}"
            assert sizes.get(name) == path.stat().st_size, f"{name} is not in {wheel.name} (or not the same file)"


@pytest.mark.slow
def test_an_installed_wheel_lists_and_runs_shipped_recipes_from_an_empty_folder(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)  # what pip install puts in site-packages
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the editable install's finder

    def finetune(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "finetune", *args], cwd=empty, env=env, capture_output=True, text=True
        )

    where = subprocess.run(
        [sys.executable, "-c", "import finetune; print(finetune.__file__)"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    listed = finetune("recipes")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [path.stem for path in RECIPES]
    run = finetune("train", "quickstart", "--dry-run", "-q")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "dry run: recipe and data are valid" in run.stderr + run.stdout
    assert "output    runs/quickstart" in run.stderr + run.stdout  # under the working directory
    unknown = finetune("train", "no-such-recipe")
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
    assert "quickstart" in unknown.stderr and "Traceback" not in unknown.stderr
    assert sorted(p.name for p in empty.iterdir()) == []  # a dry run writes nothing


def test_a_recipe_argument_is_a_file_first_then_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = shipped_recipes()
    assert find_recipe("quickstart") == shipped["quickstart"]
    assert find_recipe("quickstart.yaml") == shipped["quickstart"]
    Path("quickstart.yaml").write_text("model: {name: builtin:tiny-llama}\ndata: {path: d.jsonl}\n")
    assert find_recipe("quickstart.yaml") == Path("quickstart.yaml")  # an existing file wins
    Path("quickstart").write_text("")
    assert find_recipe("quickstart") == Path("quickstart")
    assert find_recipe("sub/missing.yaml") == Path("sub/missing.yaml")  # a path: the loader says "not found"
    with pytest.raises(UserError, match=r"^no-such: no such recipe file .*shipped: .*quickstart"):
        find_recipe("no-such")


def test_validate_and_vram_estimate_take_a_shipped_name_and_refuse_an_unknown_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["validate", "quickstart"])
    assert result.exit_code == 0 and result.output.startswith("quickstart: valid ("), result.output
    result = runner.invoke(app, ["vram-estimate", "llama-3.2-1b-finance", "--json"])
    assert result.exit_code == 0, result.output
    for command in (["validate", "quickstat"], ["vram-estimate", "quickstat"], ["train", "quickstat"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [
            f"error: quickstat: no such recipe file and no shipped recipe of that name; shipped: {', '.join(shipped_recipes())}"
        ]
