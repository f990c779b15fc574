"""How a long-lived local Ray's background CPU grows with the worker processes that have come and gone.

    python bench/ray_aging.py [--waves 3] [--actors 100]

Starts a Ray as the test suite's shared one (dashboard on, 4 logical CPUs), measures the CPU that all processes on
the machine use over 20 s while it idles, then after each wave of `--actors` short-lived actors (each a worker
process, killed once it answered) again. Run it on a machine doing nothing else; with
RAY_LOG_MONITOR_MANY_FILES_THRESHOLD=1 in the environment to see Ray's log monitor list its folder less often.
"""
from __future__ import annotations

import argparse
import os
import time

IDLE_S = 20


def _cpu_ticks() -> dict[str, tuple[int, str]]:
    """{pid: (user + system ticks, short command)} of every process."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline") as f:
                cmd = " ".join(part.rsplit("/", 1)[-1] for part in f.read().split("\0")[:3])[:40]
        except OSError:
            continue
        out[pid] = (int(stat[11]) + int(stat[12]), cmd)
    return out


def idle_cpu(label: str) -> None:
    before = _cpu_ticks()
    time.sleep(IDLE_S)
    after = _cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    rows = sorted(((t - before[p][0], cmd) for p, (t, cmd) in after.items() if p in before), reverse=True)
    total = sum(d for d, _ in rows) / hz / IDLE_S
    top = ", ".join(f"{cmd} {d / hz / IDLE_S:.1%}" for d, cmd in rows[:4])
    print(f"{label}: {total:.1%} of a core ({top})", flush=True)


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
