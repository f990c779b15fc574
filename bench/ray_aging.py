"""How a long-lived local Ray's background CPU grows with the worker processes that have come and gone.

    python bench/ray_aging.py [--waves 3] [--actors 100]

Starts a Ray as the test suite's shared one (dashboard on, 4 logical CPUs), measures the CPU that all processes on
the machine use over 20 s while it idles, then after each wave of `--actors` short-lived actors (each a worker
process, killed once it answered) again. Run it on a machine doing nothing else; with
RAY_LOG_MONITOR_MANY_FILES_THRESHOLD=1 in the environment to see Ray's log monitor list its folder less often.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.process_cpu import snapshot  # noqa: E402

IDLE_S = 20


def idle_cpu(label: str) -> None:
    """All processes' CPU over IDLE_S seconds of idling, in total and for the four busiest."""
    before = snapshot()
    time.sleep(IDLE_S)
    after = snapshot()
    rows = sorted(((cpu - before[key][1], title) for key, (title, cpu) in after.items() if key in before),
                  reverse=True)
    total = sum(d for d, _ in rows) / IDLE_S
    top = ", ".join(f"{_short(title)} {d / IDLE_S:.1%}" for d, title in rows[:4])
    print(f"{label}: {total:.1%} of a core ({top})", flush=True)


def _short(title: str) -> str:
    """A process title without its paths: `python -u log_monitor.py`, `ray::DashboardAgent`."""
    return " ".join(part.rsplit("/", 1)[-1] for part in title.split()[:3])[:40]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--waves", type=int, default=3)
    ap.add_argument("--actors", type=int, default=100)
    args = ap.parse_args()
    import ray

    from gan.ray_runtime import DASHBOARD
    ray.init(address="local", num_cpus=4, include_dashboard=DASHBOARD, dashboard_host="127.0.0.1")

    @ray.remote(num_cpus=0.1)
    class ShortLived:
        def ping(self) -> int:
            return 1

    time.sleep(10)  # past the start
    idle_cpu("fresh")
    for wave in range(1, args.waves + 1):
        for _ in range(max(1, args.actors // 20)):  # 20 at a time
            actors = [ShortLived.remote() for _ in range(20)]
            ray.get([a.ping.remote() for a in actors])
            for a in actors:
                ray.kill(a)
        time.sleep(5)
        idle_cpu(f"after {wave * args.actors} actors")
    ray.shutdown()


if __name__ == "__main__":
    main()
