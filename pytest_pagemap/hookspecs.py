"""Hooks other plugins and conftest.py files may implement; pytest-pagemap ships a default for each.

They are registered through `pytest_addhooks`, so a conftest.py implements them like any pytest hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pagewalk.measure import Limits, Measurement


@pytest.hookspec()
def pytest_pagemap_measurement(item: pytest.Item, measurement: Measurement) -> None:
    """Called when a measurement made through the `pagemap` fixture has finished.

    `measurement` has its `before`, `after` and `delta` snapshots, and the verdicts of the limits in force
    (marker and ini limits; `assert_*` calls made later in the test add theirs afterwards). Called whether or
    not `--pagemap` is given, before a limit failure is raised.

    Example: keep every measurement as JSON next to the test run::

        # conftest.py
        import json

        def pytest_pagemap_measurement(item, measurement):
            with open("measurements.jsonl", "a") as out:
                out.write(json.dumps({"test": item.nodeid, **measurement.to_dict()}) + "\\n")
    """


@pytest.hookspec(firstresult=True)
def pytest_pagemap_limits(item: pytest.Item, limits: Limits) -> Limits | None:
    """Return the limits to check the measurements of `item` against, or None to leave them as they are.

    `limits` are the test's `@pytest.mark.pagemap` limits over the session defaults (`--pagemap-limit`
    options and `pagemap_limits` ini lines). Consulted when `--pagemap` is active, once per test, at its
    first finished measurement. The first non-None result wins; the default implementation returns `limits`.

    Example: give a slower-to-settle CI machine more room::

        # conftest.py
        import os
        from types import MappingProxyType
        from pagewalk.measure import Limits

        def pytest_pagemap_limits(item, limits):
            if os.environ.get("CI"):
                scaled = {metric: limit * 2 for metric, limit in limits.below.items()}
                return Limits(MappingProxyType(scaled), limits.no_flag_gain)
            return None
    """
