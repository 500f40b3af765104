#!/usr/bin/env python3
"""Benchmark what the installed, unused plugin adds to pytest's start-up.

Runs `pytest --co -q` on a small generated test folder, with the plugin loaded by its entry point (and not
asked for: no `--pagemap`, no gate option) and with `-p no:pagemap`, alternating in a shuffled order each
round, and prints the min and median of each (wall time and the child's CPU time) and their difference.
Every other installed plugin loads in both. Then it lists the modules the plugin's run imports that the
other's does not, with their `-X importtime` self times.

    python3 benchmarks/bench_startup.py                  # 30 rounds
    python3 benchmarks/bench_startup.py --rounds 60 --python .venv/bin/python

The machine is shared and noisy: compare the two columns of one run, and prefer the minimum and CPU time.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = "".join(f"def test_{number}():\n    assert {number} == {number}\n\n\n" for number in range(20))
VARIANTS = {"plugin installed, unused": [], "-p no:pagemap": ["-p", "no:pagemap"]}


def child_environment() -> dict[str, str]:
    """The caller's environment, without what would change which plugins load or whether bytecode is cached."""
    drop = {"PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTHONDONTWRITEBYTECODE"}
    return {key: value for key, value in os.environ.items() if key not in drop}


def run_once(python: str, folder: Path, extra: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one `pytest --co -q` in `folder`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(
        [python, "-m", "pytest", "--co", "-q", *extra], cwd=folder, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0 or "20 tests collected" not in result.stdout:
        raise SystemExit(f"pytest --co {' '.join(extra)} failed:\n{result.stdout}{result.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def imported_modules(python: str, folder: Path, extra: list[str], env: dict[str, str]) -> dict[str, int]:
    """Module name -> self import time in microseconds, from one `-X importtime` run."""
    result = subprocess.run(
        [python, "-X", "importtime", "-m", "pytest", "--co", "-q", *extra],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    modules = {}
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            self_time, _, name = line.removeprefix("import time:").split("|")
            if self_time.strip().isdigit():
                modules[name.strip()] = int(self_time)
    return modules


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="runs of each variant (default 30)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter with the plugin installed")
    parser.add_argument("--top", type=int, default=12, help="modules listed by import time (default 12)")
    args = parser.parse_args()
    env = child_environment()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as name:
        folder = Path(name)
        (folder / "test_small.py").write_text(TESTS)
        (folder / "pytest.ini").write_text("[pytest]\n")  # the rootdir: no project configuration above it
        for extra in VARIANTS.values():  # warm-up: bytecode caches written, files in the page cache
            run_once(args.python, folder, extra, env)
        walls: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        cpus: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for _ in range(args.rounds):
            order = list(VARIANTS)
            random.shuffle(order)
            for variant in order:
                wall, cpu = run_once(args.python, folder, VARIANTS[variant], env)
                walls[variant].append(wall)
                cpus[variant].append(cpu)
        modules = {variant: imported_modules(args.python, folder, extra, env) for variant, extra in VARIANTS.items()}

    with_plugin, without = VARIANTS
    print(f"pytest --co -q, 20 tests, {args.rounds} rounds each, alternating ({args.python})")
    print(f"{'ms':<12}{with_plugin:>26}{without:>18}{'difference':>14}")
    for what, samples in (("wall", walls), ("cpu", cpus)):
        for statistic in (min, statistics.median):
            values = [statistic(samples[variant]) for variant in VARIANTS]
            row = f"{what} {statistic.__name__:<7}"
            print(
                f"{row:<12}{milliseconds(values[0]):>26}{milliseconds(values[1]):>18}"
                f"{milliseconds(values[0] - values[1]):>14}"
            )

    added = {name: micros for name, micros in modules[with_plugin].items() if name not in modules[without]}
    print(
        f"\nmodules the plugin's run imports and the other's does not: {len(added)}, "
        f"{sum(added.values()) / 1000:.1f} ms of self import time (one -X importtime run)"
    )
    for name, micros in sorted(added.items(), key=lambda item: -item[1])[: args.top]:
        print(f"  {micros / 1000:6.1f} ms  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
