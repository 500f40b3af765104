"""Time loading a large baseline with the strict reader, next to a plain `json.loads` of the same bytes.

    python benchmarks/bench_baseline_load.py [--measurements 20000] [--rounds 5]

The record holds every metric of every measurement, under parametrized test ids; the times are the best of
`--rounds`, and the ratio says what checking costs over parsing alone (the machine's load cancels out).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from pagewalk import baseline
from pagewalk.measure import METRICS


def build(count: int) -> baseline.SessionRecord:
    metrics = {name: (-123_456 if spec.growth else 123_456_789) for name, spec in METRICS.items()}
    return baseline.SessionRecord(
        context=baseline.collect_context(),
        measurements=tuple(
            baseline.MeasurementRecord(
                key=f"tests/test_service.py::test_request[case{index}]",
                test=f"tests/test_service.py::test_request[case{index}]",
                label="server",
                metrics=metrics,
            )
            for index in range(count)
        ),
    )


def best(rounds: int, work: object) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measurements", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = baseline.save_record(build(options.measurements), directory, "large")
        data = Path(path).read_bytes()
        loaded = best(options.rounds, lambda: baseline.load_record(path))
        parsed = best(options.rounds, lambda: json.loads(data))
    print(f"{options.measurements} measurements, {len(data) / 2**20:.1f} MiB")
    print(f"  load_record (strict):  {loaded:.3f} s")
    print(f"  json.loads (no check): {parsed:.3f} s")
    print(f"  ratio: {loaded / parsed:.1f}x")


if __name__ == "__main__":
    main()
