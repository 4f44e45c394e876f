"""The package's architecture, checked: no import cycles, arrows that point down only, small modules.

Every import is counted, the lazy ones inside functions included (they still make a dependency).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "finetune"
BASE = {"config", "errors", "paths", "strict_yaml"}  # the bottom: what every part may use
# part -> the parts it may import (besides itself and BASE); cli is the top and nothing imports it
ALLOWED = {
    "cli": {"train", "run", "doctor", "model", "data", "vram"},
    "train": {"run", "model", "data", "vram"},
    "run": {"model", "data", "vram"},
    "doctor": {"model", "data", "vram"},
    "model": {"data", "vram"},
    "data": set(),
    "vram": set(),
    "base": set(),
}
HEAVY = {"torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "unsloth", "accelerate"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(finetune modules imported, third-party top-level packages imported), lazy imports included."""
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (ours if alias.name.startswith("finetune") else theirs).add(
                    alias.name if alias.name.startswith("finetune") else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import; write the absolute path"
            if not node.module.startswith("finetune"):
                theirs.add(node.module.split(".")[0])
                continue
            for alias in node.names:  # `from finetune.data import batching` imports the module finetune.data.batching
                sub = f"{node.module}.{alias.name}"
                ours.add(sub if sub in known else node.module)
    return ours, theirs


def part(module: str) -> str:
    name = module.split(".")[1] if "." in module else ""
    return "base" if name in BASE else name


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found))[0] - {name} for name, path in found.items()}


def test_the_tree_has_its_parts_and_no_flat_modules():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "__main__", *BASE}
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(ALLOWED) - {"base"}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_arrows_point_down_only():
    wrong = []
    for module, targets in graph().items():
        if module == "finetune.__main__":
            continue
        source = part(module)
        for target in targets:
            goal = part(target)
            if goal not in ("", source, "base") and goal not in ALLOWED[source]:
                wrong.append(f"{module} -> {target}")
            if goal == "" and target != "finetune":  # `finetune` itself: the version string
                wrong.append(f"{module} -> {target}")
    assert not wrong, "forbidden imports:\n" + "\n".join(sorted(wrong))


def test_the_estimator_never_imports_torch_or_the_stack():
    for name, path in modules().items():
        if part(name) == "vram":
            _, theirs = imports(path, set())
            assert not theirs & HEAVY, f"{name} imports {theirs & HEAVY}"


def test_modules_stay_readable():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 450}
    assert not long, f"modules over 450 lines: {long}"


def test_the_command_line_loads_no_heavy_library():
    """`finetune --help` stays fast: the app and every command module import without torch & co."""
    code = "import sys, finetune.cli; print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in %r)))"
    slow = HEAVY | {"numpy", "pydantic", "yaml"}  # pydantic alone doubles the start-up time (cli/app.py)
    loaded = subprocess.run([sys.executable, "-c", code % (slow,)], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == ""
