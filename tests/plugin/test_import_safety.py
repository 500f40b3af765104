"""Loading the plugin is cheap and safe everywhere: no numpy or libc at import, inactive where it cannot measure."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _environment() -> dict[str, str]:
    # A clean interpreter loading the plugin by its entry point name, and no other plugin installed here
    # (some fail on a platform that is only pretended).
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    return env | {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTEST_ADDOPTS": "-p pagemap"}


def _python(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
    )


def test_loading_the_plugin_imports_neither_numpy_nor_ctypes_nor_psutil() -> None:
    result = _python(
        """
        import sys
        import pytest
        import pagewalk
        import pytest_pagemap.plugin
        heavy = sorted(name for name in ("numpy", "ctypes", "psutil", "pickle") if name in sys.modules)
        print("loaded:", heavy)
        pagewalk.parse_size("1 MiB")  # a light name loads only its light module
        print("numpy after parse_size:", "numpy" in sys.modules)
        pagewalk.Snapshot  # a heavy one loads numpy, on first use
        print("numpy after Snapshot:", "numpy" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout
    assert "numpy after parse_size: False" in result.stdout
    assert "numpy after Snapshot: True" in result.stdout


# All a session that never measures may load of this project: what registers the options (whose help quotes
# the metrics and the threshold grammar), the hooks, the marker and the fixture. Measuring (numpy, /proc),
# baselines, the gate's comparisons and reports load when a session uses them.
LIGHT_MODULES = {
    "pagewalk",
    "pagewalk._lazy",
    "pagewalk.metrics",
    "pagewalk.thresholds",
    "pagewalk.units",
    "pytest_pagemap",
    "pytest_pagemap.fixtures",
    "pytest_pagemap.gate_options",
    "pytest_pagemap.hookspecs",
    "pytest_pagemap.markers",
    "pytest_pagemap.plugin",
}
HEAVY_PACKAGES = ("numpy", "psutil", "pickle", "ctypes")

RECORD_MODULES = """
import sys

def pytest_unconfigure(config):
    with open({path!r}, "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
"""

# One test measures: deselected, or only collected, it loads nothing heavy.
TESTS = """
def test_plain():
    pass

def test_measures(pagemap):
    assert pagemap.run(len, "abc").value == 3
"""


def _modules_after_session(tmp_path: Path, tests: str, *args: str) -> set[str]:
    """The modules loaded by the end of a pytest session run in a fresh interpreter, with the plugin active."""
    modules_file = tmp_path / "modules.txt"
    (tmp_path / "conftest.py").write_text(RECORD_MODULES.format(path=str(modules_file)))
    (tmp_path / "test_inner.py").write_text(tests)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return set(modules_file.read_text().split())


def _ours(modules: set[str]) -> set[str]:
    return {name for name in modules if name.split(".")[0] in ("pagewalk", "pytest_pagemap")}


def _heavy(modules: set[str]) -> set[str]:
    return {name for name in modules if name.split(".")[0] in HEAVY_PACKAGES}


@pytest.mark.parametrize("args", [["--co"], ["-k", "not measures"]], ids=["collect-only", "run"])
def test_a_session_that_does_not_measure_loads_only_the_light_modules(tmp_path: Path, args: list[str]) -> None:
    modules = _modules_after_session(tmp_path, TESTS, *args)
    assert "pytest_pagemap.plugin" in modules  # the plugin was active
    assert _ours(modules) - LIGHT_MODULES == set()
    assert _heavy(modules) == set()


def test_a_session_that_measures_loads_the_measuring_code(tmp_path: Path) -> None:
    # The other side of the test above: the same check sees the heavy modules once the test measures and the
    # session writes a report.
    modules = _modules_after_session(tmp_path, TESTS, "--pagemap", f"--pagemap-json={tmp_path / 'report.json'}")
    assert {"numpy", "pagewalk.snapshot", "pagewalk.measure", "pagewalk.capabilities", "pagewalk.procfs"} <= modules
    assert {"pagewalk.baseline", "pagewalk.ci_reports", "pytest_pagemap.gates", "pytest_pagemap.maps"} <= modules
    assert {"psutil", "pytest_pagemap.pagemap", "pytest_pagemap.processes", "pytest_pagemap.report"} <= modules


def test_the_package_exports_the_functions_not_the_submodules_of_the_same_name() -> None:
    result = _python(
        """
        import pagewalk.measure, pagewalk.snapshot
        import pagewalk
        print(callable(pagewalk.measure), callable(pagewalk.snapshot))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("True True"), result.stdout


# Where pagewalk cannot measure: another OS (sys.platform, and no fcntl module as on Windows), or Linux
# without procfs (the probe's path moved away). pytest and psutil are imported first, as they work there.
UNSUPPORTED = {
    "another OS": """sys.platform = "darwin"; sys.modules["fcntl"] = None""",
    "no procfs": """import pagewalk.procfs; pagewalk.procfs.PROC = "/nonexistent-proc\"""",
}

INNER_TESTS = """
def test_plain():
    pass

def test_measures(pagemap):
    raise AssertionError("not reached: the fixture skips")
"""


@pytest.mark.parametrize("platform", list(UNSUPPORTED))
def test_where_it_cannot_measure_the_plugin_is_inactive_and_skips_its_fixture(tmp_path: Path, platform: str) -> None:
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    result = _python(
        f"""
        import sys
        import pytest, psutil
        assert not any(name.startswith(("pagewalk", "pytest_pagemap")) for name in sys.modules)
        {UNSUPPORTED[platform]}
        sys.exit(pytest.main(sys.argv[1:]))
        """,
        "--pagemap",
        "-rs",
        "-p",
        "no:cacheprovider",
        cwd=tmp_path,
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    reason = "pagewalk reads Linux page tables; this platform is 'darwin'" if platform == "another OS" else "procfs"
    header = [line for line in output.splitlines() if line.startswith("pagemap:")]
    assert len(header) == 1 and header[0].startswith("pagemap: inactive, tests using the pagemap fixture are skipped")
    assert reason in header[0]
    assert "1 passed, 1 skipped" in output
    skipped = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1 and "test_inner.py" in skipped[0] and reason in skipped[0]


def test_without_pagemap_an_unsupported_platform_prints_nothing(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    result = _python(
        f"""
        import sys
        import pytest, psutil
        {UNSUPPORTED["another OS"]}
        sys.exit(pytest.main(sys.argv[1:]))
        """,
        "-p",
        "no:cacheprovider",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pagemap:" not in result.stdout
    assert "1 passed, 1 skipped" in result.stdout


def test_one_version_source() -> None:
    # pyproject.toml takes the version from pagewalk.__version__; the installed metadata must agree.
    from importlib.metadata import version

    import pagewalk

    assert version("pytest-pagemap") == pagewalk.__version__
