"""`finetune doctor`'s verdicts (Check), probes and the guarded runner, and the version minimums.

The probes themselves live in probes.py (software, hub) and gpu.py (CUDA, driver, bitsandbytes).
Every probe is guarded: one that raises becomes a FAIL line, one that hangs past its budget (a
wedged driver, a network mount) is skipped with a WARN, so the doctor itself never crashes and always
answers. Probes run in a fixed order and import heavy libraries inside themselves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

OK, WARN, FAIL = "OK", "WARN", "FAIL"
GiB = 1024**3
# Budgets guard against hangs; they are not the speed target. About 4 s on the CPU dev machine; 16 s on an
# H200 container with a slow filesystem, nearly all imports (bitsandbytes 7.9 s; its 4-bit proof 0.4 s);
# 13-18 s in the CPU image on a 2-core machine busy with other work (2026-12-03). Skipping the proof to
# stay under 10 s would defeat the doctor, and so would a budget that a busy machine runs past: the
# whole run stops starting probes after 3 minutes, each probe's own budget is about 10x its slowest time.
DEADLINE_S = 180.0


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


def run_probes(probes: list[Probe], deadline_s: float = DEADLINE_S) -> list[Check]:
    """Run each probe in order, in a daemon thread so a hang cannot block the doctor."""
    start, checks = time.monotonic(), []
    for probe in probes:
        left = deadline_s - (time.monotonic() - start)
        if left < 0.2:
            checks.append(
                Check(
                    probe.name,
                    WARN,
                    "skipped: the doctor's time budget was spent",
                    "run `finetune doctor` again; a slow import or GPU start-up used the time",
                )
            )
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
            result.append(
                [
                    Check(
                        probe.name,
                        FAIL,
                        f"probe raised {err.__class__.__name__}: {first}",
                        "a broken installation is the usual cause: reinstall the package the error names",
                    )
                ]
            )

    thread = threading.Thread(target=target, name=f"doctor-{probe.name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    seconds = round(time.monotonic() - began, 2)
    if not result:  # still running: leave the daemon thread behind, say so
        return [
            Check(
                probe.name,
                WARN,
                f"skipped: no answer within {timeout_s:.1f} s",
                "run the step by hand to see where it hangs (a wedged GPU driver or a network mount)",
                seconds,
            )
        ]
    for check in result[0]:
        check.seconds = seconds
    return result[0]


# --------------------------------------------------------------------------------------------
# Versions and minimums


def installed_version(dist: str) -> str | None:
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


def meets(installed: str, spec: str) -> bool:
    from packaging.specifiers import SpecifierSet

    return SpecifierSet(spec).contains(installed, prereleases=True)
