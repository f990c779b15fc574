"""A pytest plugin: each test's wall time and the machine's busy CPU seconds over it, one JSON line per test.

    python -m pytest -q tests -p bench.suite_cpu            # lines in suite_cpu.jsonl (SUITE_CPU_OUT to change)
    python bench/suite_cpu.py suite_cpu.jsonl               # totals, the slowest tests, each module

Busy CPU is read from /proc/stat (all processes: Ray's daemons, actors and the jobs' subprocesses too), so on a
machine doing nothing else it says how much of its cores the suite keeps busy, and whether running tests side by
side could help or only more work cut would.
"""
from __future__ import annotations

import collections
import json
import os
import sys
import time

OUT = os.environ.get("SUITE_CPU_OUT", "suite_cpu.jsonl")
HZ = os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> int:
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait


try:
    import pytest
except ImportError:  # the report below needs no pytest
    pytest = None

if pytest is not None:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        started, busy = time.monotonic(), _busy_ticks()
        yield
        with open(OUT, "a") as f:
            f.write(json.dumps({"test": item.nodeid, "wall": round(time.monotonic() - started, 2),
                                "busy_cpu_s": round((_busy_ticks() - busy) / HZ, 2)}) + "\n")


def report(path: str, top: int = 25) -> None:
    rows = [json.loads(line) for line in open(path)]
    wall, busy = sum(r["wall"] for r in rows), sum(r["busy_cpu_s"] for r in rows)
    cores = os.cpu_count() or 1
    print(f"{len(rows)} tests: {wall:.0f} s of wall time, {busy:.0f} s of busy CPU, {busy / wall / cores:.0%} of "
          f"{cores} cores")
    print(f"{'wall s':>7} {'CPU s':>7}  test")
    for r in sorted(rows, key=lambda r: -r["wall"])[:top]:
        print(f"{r['wall']:7.1f} {r['busy_cpu_s']:7.1f}  {r['test']}")
    modules: dict = collections.defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        modules[r["test"].split("::")[0]][0] += r["wall"]
        modules[r["test"].split("::")[0]][1] += r["busy_cpu_s"]
    for name, (w, b) in sorted(modules.items(), key=lambda kv: -kv[1][0]):
        print(f"{w:7.1f} {b:7.1f}  {name}")


if __name__ == "__main__":
    report(sys.argv[1] if len(sys.argv) > 1 else OUT)
