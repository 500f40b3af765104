#!/usr/bin/env python3
"""Benchmark what the installed, unused plugin adds to pytest's start-up.

Runs `pytest --co -q` on a small generated test folder with the plugin loaded by its entry point but not
asked for (no `--pagemap`, no gate option), and with `-p no:pagemap`, in a shuffled order each round, and
prints for each the min and median wall time and CPU time (the child's user + system), their difference,
and the median of the differences within a round (both runs of a round see about the same machine load).
Every other installed plugin loads in both; `--no-other-plugins` turns autoloading off and loads this
plugin alone (through `PYTEST_PLUGINS`, as `-p pagemap` would make pytest read every installed package's
entry points), which takes the other plugins' start-up out of the noise.

Each round also times `import pytest_pagemap.plugin` in a fresh interpreter that has imported pytest (the
import alone, without the noise of a whole pytest run). Last, one `-X importtime` run of each lists the
modules the plugin's run imports and the other's does not (the entry point's own module is not listed:
pytest loads it through `importlib`, which `-X importtime` does not report).

    python3 benchmarks/bench_startup.py                  # 30 rounds
    python3 benchmarks/bench_startup.py --rounds 60 --no-other-plugins
    PYTHONPATH=/tmp/old:/tmp/old/src python3 benchmarks/bench_startup.py   # another checkout of the plugin

The machine is shared and noisy: compare the columns of one run, prefer the minimum, the CPU time and the
paired difference, and the import time to the whole run's.
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
WITH_PLUGIN, WITHOUT = "plugin installed, unused", "-p no:pagemap"
IMPORT_PLUGIN = """
import time
import pytest
start = time.perf_counter()
import pytest_pagemap.plugin
print(time.perf_counter() - start)
"""


def child_environment(*, other_plugins: bool) -> dict[str, str]:
    """The caller's environment, without what would change which plugins load or whether bytecode is cached."""
    drop = {"PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTHONDONTWRITEBYTECODE"}
    env = {key: value for key, value in os.environ.items() if key not in drop}
    if not other_plugins:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return env


def timed(command: list[str], folder: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of `command`, and its output; exits with its output if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stdout


def imported_modules(command: list[str], folder: Path, env: dict[str, str]) -> dict[str, int]:
    """Module name -> self import time in microseconds, from one `-X importtime` run of `command`."""
    python, *rest = command
    result = subprocess.run([python, "-X", "importtime", *rest], cwd=folder, env=env, capture_output=True, text=True)
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
    parser.add_argument(
        "--no-other-plugins", action="store_true", help="load no other plugin: autoloading off, PYTEST_PLUGINS"
    )
    parser.add_argument("--top", type=int, default=12, help="modules listed by import time (default 12)")
    args = parser.parse_args()
    env = child_environment(other_plugins=not args.no_other_plugins)
    pytest_co = [args.python, "-m", "pytest", "--co", "-q"]
    commands = {WITH_PLUGIN: pytest_co, WITHOUT: [*pytest_co, "-p", "no:pagemap"]}
    environments = {WITH_PLUGIN: env, WITHOUT: env}
    if args.no_other_plugins:
        environments[WITH_PLUGIN] = {**env, "PYTEST_PLUGINS": "pytest_pagemap.plugin"}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as name:
        folder = Path(name)
        (folder / "test_small.py").write_text(TESTS)
        (folder / "pytest.ini").write_text("[pytest]\n")  # the rootdir: no project configuration above it
        for variant, command in commands.items():  # warm-up: bytecode caches written, files in the page cache
            _, _, output = timed(command, folder, environments[variant])
            if "20 tests collected" not in output:
                raise SystemExit(f"{' '.join(command)} did not collect the 20 tests:\n{output}")
        walls: dict[str, list[float]] = {variant: [] for variant in commands}
        cpus: dict[str, list[float]] = {variant: [] for variant in commands}
        imports: list[float] = []
        for _ in range(args.rounds):
            order = [*commands, "import"]
            random.shuffle(order)
            for variant in order:
                if variant == "import":
                    _, _, output = timed([args.python, "-c", IMPORT_PLUGIN], folder, env)
                    imports.append(float(output))
                    continue
                wall, cpu, _ = timed(commands[variant], folder, environments[variant])
                walls[variant].append(wall)
                cpus[variant].append(cpu)
        modules = {
            variant: imported_modules(command, folder, environments[variant]) for variant, command in commands.items()
        }

    others = "no other plugin" if args.no_other_plugins else "every installed plugin"
    print(f"pytest --co -q, 20 tests, {others}, {args.rounds} rounds, shuffled ({args.python})")
    print(f"{'ms':<12}{WITH_PLUGIN:>26}{WITHOUT:>18}{'difference':>14}")
    for what, samples in (("wall", walls), ("cpu", cpus)):
        for statistic in (min, statistics.median):
            with_plugin, without = (statistic(samples[variant]) for variant in commands)
            row = f"{what} {statistic.__name__}"
            print(
                f"{row:<12}{milliseconds(with_plugin):>26}{milliseconds(without):>18}"
                f"{milliseconds(with_plugin - without):>14}"
            )
    for what, samples in (("wall", walls), ("cpu", cpus)):
        paired = statistics.median(a - b for a, b in zip(samples[WITH_PLUGIN], samples[WITHOUT], strict=True))
        print(f"{what + ' paired':<12}{'':>44}{milliseconds(paired):>14}  (median of the differences in a round)")
    print(
        f"\nimport pytest_pagemap.plugin after pytest: min {milliseconds(min(imports)).strip()} ms, "
        f"median {milliseconds(statistics.median(imports)).strip()} ms"
    )
    added = {name: micros for name, micros in modules[WITH_PLUGIN].items() if name not in modules[WITHOUT]}
    print(
        f"modules the plugin's run imports and the other's does not: {len(added)}, "
        f"{sum(added.values()) / 1000:.1f} ms of self import time (one -X importtime run)"
    )
    for name, micros in sorted(added.items(), key=lambda item: -item[1])[: args.top]:
        print(f"  {micros / 1000:6.1f} ms  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
